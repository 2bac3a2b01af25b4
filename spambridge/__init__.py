"""spambridge: spam-check mail at SMTP time, as a milter in front of Postfix or Sendmail."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("spambridge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
