#!/bin/sh
# Dovecot IMAPSieve pipe (report-spam.sieve): one message on stdin; $1 = the IMAP user.
# Runs as the IMAP user (each one's own uid, or e.g. vmail for virtual users), which must be
# able to write the Bayes database: see contrib/dovecot/README.md (mail_access_groups).
# It must return fast: Dovecot gives up on slow pipes.
# SQLite gives its -wal/-shm files the database's mode (0660 in a group-writable directory);
# umask 007 keeps anything else this creates private to the group too.
umask 007
# Per-user Bayes on the spamd side instead (engine = "spamd", spamd --allow-tell):
#   exec /usr/bin/spambridge train --spam --quiet --engine spamd --user "$1" -
exec /usr/bin/spambridge train --spam --quiet -
