"""spambridge: spam-check mail at SMTP time, as a milter in front of Postfix or Sendmail."""

# A literal, not importlib.metadata: every `spambridge train -` from a Dovecot pipe pays for the
# import (about 24 ms). tests/unit/test_version.py keeps it equal to pyproject.toml's.
__version__ = "0.1.0"
