# IMAPSieve: a message was moved or copied OUT OF Junk -> learn it as ham,
# unless it went to Trash (deleting spam is not saying it was ham) or stayed in Junk:
# a COPY or MOVE from Junk to Junk also runs report-spam.sieve, and this one runs after it.
require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];

if environment :matches "imap.mailbox" "*" {
  set "mailbox" "${1}";
}
# (i;octet: the names as written, as the config's mailbox names; Sieve's default ignores case)
if string :comparator "i;octet" "${mailbox}" ["Trash", "Junk"] {
  stop;
}

if environment :matches "imap.user" "*" {
  set "username" "${1}";
}

pipe :copy "spambridge-learn-ham.sh" [ "${username}" ];
