"""A bounded message buffer: header bytes in order, body spooled to disk past a size,
and the one place that rebuilds the exact bytes a scanner sees.
"""

from __future__ import annotations

import codecs
import contextlib
import re
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime

from spambridge import defaults, headers
from spambridge.rfc5322 import FIELD_NAME

_CTL = re.compile(rb"[\x00-\x1f\x7f]")
# a header field's start as Postfix's is_header() sees it (RFC 5322 field name, obsolete
# blanks before the colon allowed)
_FIELD = re.compile(FIELD_NAME + rb"[ \t]*:")
# what Postfix writes as "?" in the HELO of its Received line: a HELO is the client's own
# words, and "EHLO x (localhost [127.0.0.1])" must not read as a comment naming another relay
_NOT_A_WORD = str.maketrans(" ()", "???")


def clean(value: str | bytes | None, limit: int = 255, log: bool = False) -> str:
    """Make an MTA- or client-supplied string safe for a header or log line: no CR/LF,
    no control bytes, bounded length (`limit` bytes). 8-bit bytes are kept as backslash
    escapes; in a log line (`log`) valid UTF-8 is kept as text, as Postfix logs an SMTPUTF8
    sender, so that one grep finds both lines (and a path under /srv/почта reads as one);
    what is not printable there (C1 controls, line separators, bidi overrides) becomes "?"."""
    if value is None:
        return ""
    # the common case, about ten times a message: printable ASCII (no controls, no 8-bit, one
    # byte a character) within the limit comes out as it went in, either way
    if value.__class__ is str and len(value) <= limit and value.isascii() and (
            value.isprintable()):
        return value
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    cut = len(raw) > limit
    raw = _CTL.sub(b"?", raw[:limit])
    if log:
        # a cut inside a character drops its first bytes: an escape there names no real byte
        text = codecs.getincrementaldecoder("utf-8")("backslashreplace").decode(raw, not cut)
        return text if text.isascii() else "".join(c if c.isprintable() else "?" for c in text)
    return raw.decode("ascii", "backslashreplace")


@dataclass
class Envelope:
    """What the MTA told us about the SMTP session (macros and commands), per message."""

    client_name: str = ""
    client_addr: str = ""
    helo: str = ""
    mta_host: str = ""  # macro j
    daemon_name: str = ""  # macro {daemon_name}
    sender: str = ""
    recipients: list[str] = field(default_factory=list)  # the first MAX_RECIPIENTS
    rcpt_count: int = 0
    auth_user: str = ""  # macro {auth_authen}, captured at MAIL FROM
    queue_id: str = ""  # macro i, known from DATA on
    tls: bool = False
    # submitted with sendmail(1) (Postfix's pickup, or Sendmail's submission program relaying
    # it over loopback): refusing it would bounce it to its sender, or lose it
    local: bool = False
    # `check` on a mailbox file: the receiving MTA's Received line is already in it
    delivered: bool = False

    @property
    def log_id(self) -> str:
        """How a log line names the message: Postfix's queue id, or NOQUEUE as Postfix says
        before it has one."""
        return clean(self.queue_id) or "NOQUEUE"

    def trace_fields(self, when: datetime | None = None) -> bytes:
        """What the scanner gets on top of the message: X-Envelope-From and our Received line.
        SpamAssassin reads the envelope sender from the Received line of the last hop it does
        not trust; when the client is trusted (a backup MX or relay in trusted_networks, any
        loopback client) and the message came over the internet before, that hop is an
        earlier one, where a Postfix names no sender, and then X-Envelope-From on top, as
        spamass-milter wrote it, is its EnvelopeFrom: without it no SPF check of MAIL FROM, no
        HEADER_FROM_DIFFERENT_DOMAINS. Our Bayes tokenizer ignores X-Envelope-From (and reads
        only the client of our line). Nothing for a delivered message: its Return-Path says it."""
        if self.delivered:
            return b""
        envfrom = (f"X-Envelope-From: <{_utf8_word(self.sender).strip('<>')}>\r\n"
                   if self.sender else "")
        return envfrom.encode("utf-8", "replace") + self.received_header(when)

    def received_header(self, when: datetime | None = None) -> bytes:
        """The Received line Postfix would have written (Postfix hides its own from milters).
        SpamAssassin needs it for the relay/trust path; a wrong date causes false positives.
        Nothing for a delivered message: a second one would count a hop that never was."""
        if self.delivered:
            return b""
        proto = "ESMTP" + ("S" if self.tls else "") + ("A" if self.auth_user else "")
        name = clean(self.client_name).translate(_NOT_A_WORD)
        # a HELO and addresses as Postfix writes them in an SMTPUTF8 session: UTF-8 text
        helo = _utf8_word(self.helo) or name or "unknown"
        # Postfix passes "[addr]" as the name when reverse DNS failed, and writes "unknown"
        if not name or name.startswith("["):
            name = "unknown"
        addr = clean(self.client_addr)
        rcpt = (f"\r\n\tfor {_utf8_word(self.recipients[0])}" if len(self.recipients) == 1
                else "")
        qid = f" id {clean(self.queue_id)}" if self.queue_id else ""
        by = clean(self.mta_host) or "localhost"
        # the envelope sender, where spamass-milter wrote it for SpamAssassin (Sendmail's
        # "(envelope-from <…>)" after the date): its EnvelopeFrom, which SPF checks, the
        # From-domain rules and welcomelist_auth read; Postfix's own line has none
        envfrom = (f"\r\n\t(envelope-from <{_utf8_word(self.sender).strip('<>')}>)"
                   if self.sender else "")
        line = (
            f"Received: from {helo} ({name} [{addr}])\r\n"
            f"\tby {by} (Postfix) with {proto}{qid}{rcpt};\r\n"
            f"\t{_date(time.localtime()) if when is None else format_datetime(when)}{envfrom}\r\n"
        )
        return line.encode("utf-8", "replace")


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _date(t: time.struct_time) -> str:
    """What format_datetime(datetime.now().astimezone()) gives, read off the one localtime()
    that call makes: a third of its cost, every message (no two datetimes, no strftime).
    The offset is "+HHMM", with seconds only when it has some, as datetime's %z writes it."""
    sign = "-" if t.tm_gmtoff < 0 else "+"
    hours, rest = divmod(abs(t.tm_gmtoff), 3600)
    minutes, seconds = divmod(rest, 60)
    zone = f"{sign}{hours:02d}{minutes:02d}" + (f"{seconds:02d}" if seconds else "")
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {zone}")


def _utf8_word(value: str) -> str:
    """A HELO or an envelope address for our Received line: valid UTF-8 kept as text, other
    8-bit bytes as escapes, no controls, and blanks and parentheses as "?" (a HELO or a quoted
    local part must not open a comment naming another relay)."""
    return clean(value, log=True).translate(_NOT_A_WORD)


def spool_problem(spool_dir: str) -> str:
    """Why this process could not spool a body past `spool_memory` into `spool_dir` ("" = the
    system's temporary directory), or "" when it can. Checked at start: found per message,
    every big message would be accepted unchecked (on_error) while small ones pass the test."""
    try:
        with tempfile.TemporaryFile(dir=spool_dir or None, prefix="spambridge-"):
            pass
    except OSError as e:
        return (f"{spool_dir or 'the temporary directory'}: {e.strerror or e}; a message above "
                "spool_memory would get on_error")
    return ""


class MessageBuffer:
    """Headers (as bytes, in arrival order) and body chunks of one message.

    Bounded: past `max_scan_size` the message is marked oversize and no more body is kept,
    past MAX_HEADERS fields no more fields are kept (the message is still scanned), and the
    body lives in RAM only up to `spool_memory` bytes before spilling to a temp file.
    """

    def __init__(self, max_scan_size: int, spool_memory: int, spool_dir: str = "") -> None:
        self.max_scan_size = max_scan_size
        self.headers: list[tuple[str, bytes]] = []
        self.owned: dict[str, tuple[str, int]] = {}  # lower name → (name, count)
        self.owned_total = 0  # every X-Spam-* field seen, remembered or not
        self.size = 0
        self.oversize = False
        self.unscanned = 0  # header fields past MAX_HEADERS, counted but not kept
        self._subject: bool | None = None  # a Subject is kept (None: not looked up)
        # parse_raw: the MTA a delivered copy's Checker-Version names (headers.checked_on)
        self.mta_host = ""
        self._body = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - closed by close()
            max_size=spool_memory, dir=spool_dir or None, prefix="spambridge-"
        )
        if spool_memory <= 0:  # max_size 0 is "never roll over": every body would stay in RAM
            self._body.rollover()  # (an OSError here: Session.start_message's spool failure)

    def add_header(self, name: str, value: bytes) -> None:
        """Past MAX_HEADERS fields the rest are counted (size, owned) but not kept: memory
        stays bounded and the message is still scanned, since a flood of cheap fields must
        not buy a spammer on_oversize. The first Subject is kept wherever it comes: the one
        the scanner reads and a tag rewrites (without it a second Subject would be added)."""
        if headers.is_owned(name):
            self.owned_total += 1
            key = name.lower()
            if key in self.owned:
                first, n = self.owned[key]
                self.owned[key] = (first, n + 1)
            elif len(self.owned) < defaults.MAX_OWNED_NAMES or key in headers.KNOWN:
                self.owned[key] = (name, 1)
        self.size += len(name) + len(value) + 4
        if self.size > self.max_scan_size:
            self._mark_oversize()
        if self.oversize:
            return
        if len(self.headers) < defaults.MAX_HEADERS:
            self.headers.append((name, value))
        elif name.lower() == "subject" and not self._kept_subject():
            self.headers.append((name, value))
            self._subject = True
        else:
            self.unscanned += 1

    def _kept_subject(self) -> bool:
        """Whether a Subject is among the fields kept: looked up when the first Subject past
        the limit comes, not tracked field by field on every message's path."""
        if self._subject is None:
            self._subject = any(n.lower() == "subject" for n, _ in self.headers)
        return self._subject

    def add_body(self, chunk: bytes) -> bool:
        """Keep a body chunk; False once the message is too large to scan (stop sending)."""
        self.size += len(chunk)
        if self.size > self.max_scan_size:
            self._mark_oversize()
        if self.oversize:
            return False
        self._body.write(chunk)
        if self.spilled:  # a full disk must fail here, not later in render() or close()
            self._body.flush()
        return True

    def _mark_oversize(self) -> None:
        if not self.oversize:
            self.oversize = True
            self._body.seek(0)
            self._body.truncate()

    def owned_headers(self) -> list[tuple[str, int]]:
        """(name, index) pairs to delete, highest index first per name (CVE-2022-48521): the
        first occurrences, at most MAX_OWNED in all (a flood of forged fields is a hostile
        message, and Postfix could not apply more edits; the rest stay, and are logged). The
        names we write, and the others readers act on (headers.KNOWN), share the budget first,
        evenly (a flood of one cannot shield another), so no junk X-Spam-* name can use it up
        before a forged X-Spam-Flag, X-Spam-Status or X-Spam-Report."""
        if not self.owned:  # the message came with no X-Spam-* field: nearly all mail
            return []
        known = [v for k, v in self.owned.items() if k in headers.KNOWN]
        rest = [v for k, v in self.owned.items() if k not in headers.KNOWN]
        kept = _shares([n for _, n in known], defaults.MAX_OWNED)
        kept += _shares([n for _, n in rest], defaults.MAX_OWNED - sum(kept))
        return [(name, i) for (name, _), k in zip(known + rest, kept, strict=True)
                for i in range(k, 0, -1)]

    def delivered(self) -> bool:
        """Whether this is a message as a mailbox stores it: delivery writes Return-Path, and
        Postfix drops a Return-Path the sender wrote before any milter sees it, so live mail
        never has one. (Not Delivered-To: Postfix keeps it, and mail forwarded or sent through a
        list arrives live with the one an earlier hop wrote.) Such a file already carries the
        Received line the receiving MTA wrote, the one a milter never sees."""
        return is_delivered(self.headers)

    def header_value(self, name: str) -> bytes | None:
        field = self.header_field(name)
        return None if field is None else field[1]

    def header_field(self, name: str) -> tuple[str, bytes] | None:
        """The first `name` field kept: its name as the message spells it, and its value."""
        key = name.lower()
        for n, v in self.headers:
            if n.lower() == key:
                return n, v
        return None

    def render(self, received: bytes = b"") -> bytes:
        """The message as the scanner sees it: our trace fields (Envelope.trace_fields),
        headers, CRLF, body.
        Header values keep their folding; every line ending becomes CRLF."""
        parts = [received]
        for name, value in self.headers:
            value = value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            parts.append(name.encode("ascii", "replace") + b": " + value + b"\r\n")
        parts.append(b"\r\n")
        self._body.seek(0)
        # no name for what is read: each copy is freed as the next is made, so a big body
        # peaks at twice its size here, not three times
        parts.append(self._body.read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
        return b"".join(parts)

    @property
    def spilled(self) -> bool:
        return bool(getattr(self._body, "_rolled", False))

    def close(self) -> None:
        """Drop the body. A spool that already failed (disk full) fails again flushing on
        close; the message has its outcome by then, so that must not become an exception
        in a milter callback (pymilter would answer 451 "untrapped exception")."""
        with contextlib.suppress(OSError):
            self._body.close()


def _shares(counts: list[int], budget: int) -> list[int]:
    """Split `budget` over `counts` evenly, none getting more than its count: the smallest
    first, each taking an equal part of what is left."""
    shares = [0] * len(counts)
    order = sorted(range(len(counts)), key=counts.__getitem__)
    for j, i in enumerate(order):
        shares[i] = min(counts[i], budget // (len(order) - j))
        budget -= shares[i]
    return shares


_SPAM_FLAG = re.compile(rb"[ \t]*yes\b", re.I)


def is_delivered(fields: list[tuple[str, bytes]]) -> bool:
    """Whether `fields` are a message as a mailbox stores it (MessageBuffer.delivered)."""
    return any(n.lower() == "return-path" for n, _ in fields)


def _as_it_arrived(fields: list[tuple[str, bytes]], tag: bytes) -> list[tuple[str, bytes]]:
    """A delivered message's `fields` (MessageBuffer.delivered) as the milter got them: its
    X-Spam-* fields are the milter's own, written after the scan (it removed the forged
    ones), so they are no fields the message came with; and on mail it flagged spam, the
    first Subject is the one it tagged (`tag`, when the milter has one)."""
    names = [n.lower() for n, _ in fields]
    if "return-path" not in names:
        return fields
    flagged = any(n == "x-spam-flag" and _SPAM_FLAG.match(v) for n, (_, v) in zip(
        names, fields, strict=True))
    kept = [f for f in fields if not headers.is_owned(f[0])]
    if not tag or not flagged:
        return kept
    i = next((i for i, (n, _) in enumerate(kept) if n.lower() == "subject"), None)
    if i is None:
        return kept
    came = headers.subject_untagged(tag, kept[i][1])
    return kept[:i] + ([] if came is None else [(kept[i][0], came)]) + kept[i + 1:]


def _checked_on(fields: list[tuple[str, bytes]]) -> str:
    """On a delivered message, the MTA the milter ran on, as its Checker-Version names it
    (headers.checker; a SpamAssassin's beside it names another). "" when none says. The
    first of spambridge's, naming a host or not: the milter removes every forged X-Spam-*
    field but, in a flood of them, the first MAX_OWNED only, and then puts its own on top
    (milter.actions.apply): a forged one left below, read instead, named a host whose
    Received line the sender wrote."""
    if not is_delivered(fields):
        return ""
    name = headers.CHECKER.lower()
    for n, v in fields:
        if n.lower() == name and v.split(None, 1)[:1] == [b"spambridge"]:
            return headers.checked_on(v)
    return ""


def _delivery_size(fields: list[tuple[str, bytes]], host: str = "") -> int:
    """The size (as MessageBuffer counts it) of the fields on top of a delivered message that
    the milter never had: those delivery wrote (Return-Path, Delivered-To, X-Original-To, an
    LMTP server's Received) down to the Received line our MTA wrote, which it hides from
    milters. 0 for live mail, or when no such line is found."""
    i = mta_received(fields, host)
    return 0 if i is None else sum(len(n) + len(v) + 4 for n, v in fields[:i + 1])


def mta_received(fields: list[tuple[str, bytes]], host: str = "") -> int | None:
    """Where in a delivered message's fields (MessageBuffer.delivered) the Received line our
    MTA wrote is: the first that is not an LMTP server's (a delivery hop) and, when `host`
    (MessageBuffer.mta_host) names the MTA the milter ran on, the first of those that MTA
    wrote ("by HOST"): behind a second relay the first is that relay's, whose client is ours.
    Without such a line (a copy from before spambridge wrote the host), the first. It says
    what the milter learned from the connection (the client's address, whether it
    authenticated). None for live mail, or when there is none."""
    if not is_delivered(fields):
        return None
    from spambridge.bayes.tokenizer import lmtp_hop  # check only: not loaded by a milter

    hops = [i for i, (name, value) in enumerate(fields)
            if name.lower() == "received" and not lmtp_hop(value)]
    if host:
        ours = host.encode().lower().rstrip(b".")
        for i in hops:
            if _received_by(fields[i][1]).lower().rstrip(b".") == ours:
                return i
    return hops[0] if hops else None


# a Received line: "from HELO (NAME [ADDR])" (the HELO the client's to write, words and all:
# Postfix takes out only parentheses and a few more), then "by HOST", then the protocol, the
# id and "for <RCPT>", the recipient as RCPT TO spelt it ("u+ by mx.example"@example.org)
_RECEIVED_FROM = re.compile(rb"\s*from\s[^()]*\([^()]*")
_RECEIVED_BY = re.compile(rb"(?:^|\s)by\s+([^\s();]+)")


def _received_by(value: bytes) -> bytes:
    """The HOST of a Received field's "by HOST" clause (b"" when it has none): looked for
    past the client's part and no further than the first, so neither a HELO nor a recipient
    a sender wrote can name a host a line was written by."""
    line = value.partition(b";")[0]  # not the date
    start = m.end() if (m := _RECEIVED_FROM.match(line)) else 0
    return by[1] if (by := _RECEIVED_BY.search(line, start)) else b""


def split_message(data: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    """A raw message (LF line ends) as Postfix hands it to a milter: the header fields as
    (name, value) — the value without the space after the colon, folding kept — and the body.
    The header block ends where Postfix ends it: at the blank line, or at the first line that
    is neither a field (a name of printable ASCII, blanks allowed before the colon) nor a
    continuation of one. Postfix hands that line and all that follows to the milter as body
    (and writes a blank line before it on delivery), so here it is body too: the Content-Type
    after a stray line, or after a field whose name has 8-bit bytes, is text to the milter."""
    fields: list[list[bytes]] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        nxt = len(data) if end < 0 else end + 1
        line = data[pos:nxt].rstrip(b"\n")
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        elif _FIELD.match(line):
            fields.append([line])
        else:
            if not line:  # the blank line between header and body is neither
                pos = nxt
            break
        pos = nxt
    headers = []
    for f in fields:
        name, _, first = f[0].partition(b":")
        value = b"\n".join([first[1:] if first.startswith(b" ") else first, *f[1:]])
        headers.append((name.strip().decode("latin-1"), value))
    return headers, data[pos:]


def parse_raw(raw: bytes, max_scan_size: int = defaults.MAX_SCAN_SIZE, *,
              complete: bool = True, subject_tag: str = "") -> MessageBuffer:
    """A raw RFC 5322 message (from a file or stdin) in a buffer, as the milter would have it
    from Postfix (split_message; the body with CRLF line ends, as Postfix sends it, so that
    the sizes compare with the milter's).

    `complete=False`: `raw` is only the first bytes of a message longer than max_scan_size
    (a reader stopped there), so the buffer is oversize whatever those bytes add up to once
    an mbox "From " line and CRs are gone: a prefix must not be scored as the message.

    A delivered message (one with a Return-Path) is given back as the milter got it: without
    its own X-Spam-* fields and, on mail flagged spam, with the Subject it came with, not the
    one the milter tagged with `subject_tag` ([policy] subject_tag) after its scan; and the
    fields delivery wrote on top count toward no max_scan_size (_delivery_size)."""
    data = raw.replace(b"\r\n", b"\n")
    if data.startswith(b"From ") and b"\n" in data:  # mbox separator line
        data = data.split(b"\n", 1)[1]
    fields, body = split_message(data)
    host = _checked_on(fields)
    fields = _as_it_arrived(fields, subject_tag.encode())
    # what delivery wrote on top is scanned (our MTA's Received line stands for the one the
    # milter writes from the connection) but counts toward no limit: the milter never had it
    buf = MessageBuffer(max_scan_size + _delivery_size(fields, host),
                        spool_memory=max_scan_size + 1)
    buf.mta_host = host
    if not complete:
        buf._mark_oversize()
    for name, value in fields:
        buf.add_header(name, value)
    buf.add_body(body.replace(b"\n", b"\r\n"))
    return buf
