"""A message as it was before any spam filter touched it (strip_markup), and the keys `train`
knows it by (keys): the same message again is a no-op, and the fields a mail program keeps its
state in (read, flagged...) are no part of it, so reading it does not make it another."""

from __future__ import annotations

import hashlib
import re

from spambridge import defaults, headers
from spambridge.bayes.tokenizer import (
    DEFAULT_LIMITS,
    content_type,
    parse_headers,
    split_head,
    split_multipart,
)

# our fields (defaults.HEADER_PREFIX), each with its folded lines
_PREFIX = defaults.HEADER_PREFIX.encode()
_OWNED = re.compile(rb"^" + re.escape(_PREFIX) + rb"[^:\n]*:.*(?:\n[ \t].*)*\n", re.I | re.M)


def _field(names: bytes) -> re.Pattern[bytes]:
    """A whole header field (folded lines included) whose name matches `names`; group 1 its
    value."""
    return re.compile(rb"^(?:" + names + rb")[ \t]*:[ \t]*(.*(?:\n[ \t].*)*)\n", re.I | re.M)


_SUBJECT = _field(rb"subject")
_PREV_SUBJECT = _field(rb"x-spam-prev-subject")
_SPAM_FLAG = re.compile(rb"^x-spam-flag[ \t]*:[ \t]*yes\b", re.I | re.M)


MAX_UNWRAP = 8  # report_safe wrappers undone (one per SpamAssassin pass; more is a bomb)


def strip_markup(data: bytes, subject_tag: bytes = b"", *, subject: bool = True,
                 keep_end: bool = False) -> bytes:
    """The message as it was before any spam filter touched it: line endings as LF, no mbox
    "From " line, no X-Spam-* headers, the Subject as it came (`subject_tag`, the milter's
    [policy] one, taken off a message flagged spam; SpamAssassin's rewrite undone from its
    X-Spam-Prev-Subject), and SpamAssassin's report_safe wrapper undone (a bounded number of
    times: a crafted message can nest thousands), ending in one newline. `subject=False`: the
    Subject as it lies, as spambridge before 2026-11-26 learned and keyed it. `keep_end`: the
    end as it came, blank lines and all, for spamd: SpamAssassin knows a learned message by
    its To, Date and body bytes, as sa-learn, spamc -L and autolearn gave them to it."""
    return stripped(data, subject_tag, subject, keep_end)[0]


def stripped(data: bytes, subject_tag: bytes, subject: bool, keep_end: bool = False
             ) -> tuple[bytes, bool]:
    """strip_markup, and whether a Subject was put back (only then can the message have been
    learned under another key: the caller looks that one up only then)."""
    restored = False
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    for _ in range(MAX_UNWRAP + 1):
        if data.startswith(b"From "):
            data = data.partition(b"\n")[2]
        end = data.find(b"\n\n")
        head = data if end < 0 else data[:end]
        if not (_PREFIX in head or _PREFIX.lower() in head.lower()):
            break
        head, sep, body = data.partition(b"\n\n")
        head += b"\n"
        if subject:
            untagged = _untagged(head, subject_tag)
            restored = restored or untagged is not head
            head = untagged
        head = _OWNED.sub(b"", head).rstrip(b"\n")
        original = _report_safe_original(head, body)
        if original is None:
            data = head + sep + body
            break
        data = original
    return (data if keep_end else data.rstrip() + b"\n"), restored


def _untagged(head: bytes, tag: bytes) -> bytes:
    """`head` (LF-terminated fields) with the Subject a filter rewrote put back. Learned as
    it was, the tag taught "subject:SPAM" as spam from every tagged message moved to Junk,
    and as ham from every false positive moved out, while live mail never carries it."""
    subject = _SUBJECT.search(head)
    prev = _PREV_SUBJECT.search(head)
    if prev is not None:  # SpamAssassin's rewrite_header Subject keeps the original there
        if subject is None:
            return head
        return head[: subject.start(1)] + prev.group(1) + head[subject.end(1):]
    if not tag or subject is None or not _SPAM_FLAG.search(head):
        return head
    value = subject.group(1)
    came = headers.subject_untagged(tag, value)
    if came is None:  # the message had no Subject: the milter added one
        return head[: subject.start()] + head[subject.end():]
    if came == value:
        return head
    return head[: subject.start(1)] + came + head[subject.end(1):]


def _report_safe_original(head: bytes, body: bytes) -> bytes | None:
    """SpamAssassin's report_safe wraps spam as message/rfc822 "original message before
    SpamAssassin"; learn the original, not the report."""
    if b"original message before SpamAssassin" not in body:
        return None
    ctype, prm = content_type(parse_headers(head + b"\n", DEFAULT_LIMITS.max_headers))
    if not ctype.startswith(b"multipart/") or b"boundary" not in prm:
        return None
    for part in split_multipart(body, prm[b"boundary"]):
        phead, pbody = split_head(part)
        if b"original message before SpamAssassin" in phead:
            return pbody
    return None


def digest(normalised: bytes) -> bytes:
    return hashlib.sha256(normalised).digest()[:16]


# fields a mail program keeps a stored message's state in (read, answered, flagged, keywords,
# IMAP UIDs, the mbox length): mutt, Thunderbird and Dovecot's mbox rewrite them while the
# message stays the same, and Dovecot hides them from IMAP, so its pipes never see them. The
# tokenizer does not read them; the key must not either, or reading a message in an mbox makes
# it a new one to `train` (learned twice, or once as each class after a move)
_MAILBOX_STATE = _field(rb"status|x-status|x-keywords|x-uid|x-imap|x-imapbase|content-length"
                        rb"|lines|x-mozilla-status2?|x-mozilla-keys")


# how those fields' names start: most mail has none of them, and a search from the line ends
# (found as a literal) costs a third of the regex above over the whole header
_STATE_NAME = rb"(?:x-(?:status|keywords|uid|imap|mozilla-)|status|content-length|lines)"
_MAILBOX_STATE_FIRST = re.compile(_STATE_NAME, re.I)
_MAILBOX_STATE_LATER = re.compile(rb"\n" + _STATE_NAME, re.I)


# the first Subject's name, and the blanks and folds from its colon to its text. Postfix
# passes a milter the value without its first blank, and writes the tagged value back after
# ": ", so the milter's tagged Subject has one blank there whatever the message had (a tab,
# none, two, a fold first); `_untagged` gives back that one. Keyed as "<name>: <text>", the
# tagged copy and the message as it came are one message
_SUBJECT_GAP = re.compile(rb"subject[ \t]*:[ \t]*(?:\n[ \t]+)*", re.I)


def _subject_spaced(head: bytes) -> bytes:
    """`head` with its first Subject's text one blank after the colon (see _SUBJECT_GAP)."""
    low = head.lower()  # and a literal search: a case-blind regex from each line costs 3x
    at = -1
    while (at := low.find(b"subject", at + 1)) >= 0:
        if at and low[at - 1] != 10:  # not a field's name: inside a line
            continue
        gap = _SUBJECT_GAP.match(head, at)
        if gap is None:  # "Subjects:", "Subject-Line:"
            continue
        name = at + 7
        if head[name:gap.end()] == b": ":
            return head  # "Subject: text" already: nearly all mail
        return head[:name] + b": " + head[gap.end():]
    return head


# fields the hosts a message passes through write about its passage (RFC 5322's trace fields,
# SPF's, the authentication results, ARC's, what delivery writes on top, milter-greylist's
# delay, rspamd's queue id): one message sent to two mailboxes differs in them, Postfix's
# Received line has its queue id and `for <rcpt>`, Delivered-To its mailbox, Exim's
# Delivery-date the time, X-Greylist each transaction's delay. Matched from the line end
# before the name, a literal search
_TRACE = re.compile(rb"\n(?:received|return-path|delivered-to|x-original-to|x-delivered-to"
                    rb"|envelope-to|delivery-date|x-envelope-to|x-envelope-from|received-spf"
                    rb"|authentication-results|arc-seal|arc-message-signature"
                    rb"|arc-authentication-results|x-greylist|x-rspamd-queue-id)"
                    rb"[ \t]*:[^\n]*(?:\n[ \t][^\n]*)*", re.I)
# a line end with more than one CR before it (\r\r\n): an mbox read whole turns one CRLF into
# LF and strip_markup the next, one read line by line only the one; and a CR alone, the line
# end of a file with CR-only line ends (which had no line end at all, and all such files
# beginning with a trace field one key, that of nothing)
_CRS = re.compile(rb"\r*\n|\r")

KEYS_VERSION = 4  # the key below; a database first trained with it has no earlier keys


def keys(normalised: bytes, earlier: bool = True) -> tuple[bytes, tuple[bytes, ...]]:
    """The key of a message (strip_markup's output): the digest of the message as its sender
    wrote it, so that a copy delivered to another mailbox is the same message to `train`,
    as it is to sa-learn — each line end one LF (_CRS), without trace fields (_TRACE) and
    mailbox state fields, its Subject's text one blank after the colon (_SUBJECT_GAP). With
    `earlier`, also the keys earlier spambridges gave it, when they differ, to look up when
    it is not found under its key: until late on 2026-11-28 the trace fields and CRs kept,
    before that the Subject as it lay, before 2026-11-26 the state fields kept too."""
    text = _CRS.sub(b"\n", normalised) if b"\r" in normalised else normalised
    head, body = _head_body(text)
    kept = _stateless(head)
    spaced = _subject_spaced(kept)
    key = digest(_TRACE.sub(b"", b"\n" + spaced)[1:] + body)
    if not earlier:
        return key, ()
    if text is not normalised:  # the earlier keys kept the CRs
        head, body = _head_body(normalised)
        kept = _stateless(head)
        spaced = _subject_spaced(kept)
    heads = dict.fromkeys((spaced, kept, head))  # those that differ, newest first
    return key, tuple(d for d in dict.fromkeys(digest(h + body) for h in heads) if d != key)


def _head_body(text: bytes) -> tuple[bytes, bytes]:
    """The header (its fields LF-terminated; all of `text` without a blank line) and the
    body."""
    end = text.find(b"\n\n")
    head = text if end < 0 else text[: end + 1]
    return head, text[len(head):]


def _stateless(head: bytes) -> bytes:
    """`head` without its mailbox state fields (_MAILBOX_STATE)."""
    if _MAILBOX_STATE_FIRST.match(head) or _MAILBOX_STATE_LATER.search(head):
        return _MAILBOX_STATE.sub(b"", head)
    return head
