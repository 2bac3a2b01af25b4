#!/bin/sh
# Dovecot IMAPSieve pipe (report-ham.sieve): one message on stdin; $1 = the IMAP user.
# Runs as the mail user (e.g. vmail), so that user must be able to write the Bayes database:
# see contrib/dovecot/README.md. It must return fast: Dovecot gives up on slow pipes.
# umask 007: files SQLite creates next to the database stay writable for group spambridge.
umask 007
# Per-user Bayes on the spamd side instead (engine = "spamd", spamd --allow-tell):
#   exec /usr/bin/spambridge train --ham --quiet --engine spamd --user "$1" -
exec /usr/bin/spambridge train --ham --quiet -
