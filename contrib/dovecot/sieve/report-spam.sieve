# IMAPSieve: a message was moved or copied INTO Junk -> learn it as spam.
require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];

if environment :matches "imap.user" "*" {
  set "username" "${1}";
}

pipe :copy "spambridge-learn-spam.sh" [ "${username}" ];
