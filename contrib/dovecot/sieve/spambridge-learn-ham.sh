#!/bin/sh
# Dovecot IMAPSieve pipe (report-ham.sieve): one message on stdin; $1 = the IMAP user.
# Runs as the IMAP user (each one's own uid, or e.g. vmail for virtual users), which must be
# able to write the Bayes database: see contrib/dovecot/README.md (mail_access_groups).
# It must return fast: Dovecot gives up on slow pipes.
# SQLite gives its -wal/-shm files the database's mode (0660 in a group-writable directory);
# umask 007 keeps anything else this creates private to the group too.
umask 007
# It teaches what the config's engine scores with: the Bayes database, or with engine =
# "spamd" spamd's Bayes over TELL as [spamd] user (spamd --allow-tell), or both for
# "spamd+bayes". Each IMAP user's own Bayes on the spamd side instead:
#   exec /usr/bin/spambridge train --ham --quiet --engine spamd --user "$1" -
exec /usr/bin/spambridge train --ham --quiet -
