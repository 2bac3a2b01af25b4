# IMAPSieve: a message was moved or copied OUT OF Junk -> learn it as ham,
# unless it went to a trash folder (deleting spam is not saying it was ham), to a folder
# inside Junk (kept spam), or stayed in Junk: a COPY or MOVE from Junk to Junk also runs
# report-spam.sieve, and this one runs after it.
require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];

if environment :matches "imap.mailbox" "*" {
  set "mailbox" "${1}";
}
# (i;octet: the names as written, as the config's mailbox names; Sieve's default ignores case)
# The trash names of the usual clients; add your users' own trash and spam-archive folders
# here (a folder not listed is ham: a spam moved there is learned as ham).
if anyof (string :comparator "i;octet" "${mailbox}"
                 ["Junk", "Trash", "Deleted Items", "Deleted Messages", "INBOX.Trash"],
          string :matches :comparator "i;octet" "${mailbox}" ["Junk/*", "Junk.*"]) {
  stop;
}

if environment :matches "imap.user" "*" {
  set "username" "${1}";
}

pipe :copy "spambridge-learn-ham.sh" [ "${username}" ];
