"""RFC 5322's header field name, written once: the milter's message buffer (where Postfix
ends a header), the Bayes tokenizer and `train`'s mail sniffing all match it, and five copies
of one character class could drift apart (a message split as one thing and tokenized or
trained as another).

A module of its own that imports nothing: the tokenizer and `train -` (a Dovecot pipe, one
process per message) get it without message.py's imports (headers, config, email)."""

from __future__ import annotations

# field-name = 1*ftext; ftext = %d33-57 / %d59-126: printable US-ASCII except ":" (3.6.8).
# Each pattern adds what it needs after it: most allow blanks before the colon, the obsolete
# syntax (obs-optional, 4.5.8) that Postfix's is_header() accepts too.
FIELD_NAME = rb"[!-9;-~]+"
