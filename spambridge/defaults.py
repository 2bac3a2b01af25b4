"""Every default in one place, so the config, the CLI help and the docs agree."""

from __future__ import annotations

CONFIG_PATH = "/etc/spambridge/spambridge.toml"

# milter front end
SOCKET = "unix:/run/spambridge/spambridge.sock"
SOCKET_MODE = 0o660
MILTER_NAME = "spambridge"
ENGINE = "bayes"  # the embedded default: needs no other server
SCAN_TIMEOUT = 10.0  # seconds; the hard cap from end of message to final reply
SCAN_TIMEOUT_MAX = 120.0  # well below Postfix's 300 s milter_content_timeout
REPLY_MARGIN = 0.25  # seconds the libmilter thread allows beyond the cap
MAX_SCAN_SIZE = 1024 * 1024  # bytes; larger messages are not scanned (on_oversize)
SPOOL_MEMORY = 256 * 1024  # bytes of body kept in RAM before spilling to a temp file
MAX_HEADERS = 10_000  # header fields kept; the rest are not scanned (the message still is)
# forged X-Spam-* fields removed per message. Postfix's cleanup applies at most 10,000 edits
# to a message (more makes it panic and stalls all mail for a minute), each dearer than the
# last (8,000 deletions: 2 s); no honest message carries more than a few dozen
MAX_OWNED = 1000
MAX_OWNED_NAMES = 100  # distinct X-Spam-* names remembered (each is kept to delete it)
MAX_RECIPIENTS = 1000  # kept per message (Postfix's smtpd_recipient_limit); more are counted
SKIP_AUTHENTICATED = True

# policy (SpamAssassin points)
TAG_AT = 5.0
REJECT_AT = 15.0
REJECT_REPLY = "550 5.7.1 Message rejected as spam"
TEMPFAIL_REPLY = "451 4.7.1 Message could not be checked for spam, try again later"
# a failure class set to reject: the sender must not be told the mail was found to be spam
UNCHECKED_REJECT_REPLY = "550 5.7.1 Message could not be checked for spam"
FAIL_ACTION = "accept"

# Bayes bands (0..1), SpamBayes' cutoffs
HAM_CUTOFF = 0.20
SPAM_CUTOFF = 0.90
REJECT_CUTOFF = 0.99
BAYES_DB = "/var/lib/spambridge/bayes.sqlite"
# of each class before the classifier's verdict is used: SpamAssassin's and rspamd's figure; on
# the SpamAssassin corpus the ranking (1-AUC) is 5x worse at 50 of each and levels off by 200
BAYES_MIN_TRAINED = 200
BAYES_MAX_BYTES = 512 * 1024  # of a message the tokenizer looks at (bounds CPU per message)
BAYES_MAX_TOKENS = 5000  # distinct tokens per message looked up and scored
TRAIN_MAX_SIZE = 500 * 1024  # bytes, as sa-learn: `train` skips bigger messages (--max-size)
TRAIN_BATCH = 2000  # messages per `train` transaction (--batch-size)

# spamd
SPAMD_HOST = "127.0.0.1"
SPAMD_PORT = 783
SPAMD_CONNECT_TIMEOUT = 2.0
# [spamd] servers: a server whose connection failed (refused, unreachable, no connect within
# connect_timeout) is tried after the others for this long, so a dead first server of a pool
# does not cost connect_timeout on every message; then it is tried in its listed place again
SPAMD_RETRY_AFTER = 30.0
SPAMD_SHARE = 0.7  # spamd+bayes: fraction of the cap spamd gets before Bayes decides

HEADER_PREFIX = "X-Spam-"  # every incoming header with this prefix is ours and is removed
