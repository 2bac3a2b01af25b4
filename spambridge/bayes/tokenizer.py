"""Email → tokens, after the SpamBayes method (notes/spambayes.md §2), over bytes.

The message is read as Latin-1 bytes and only A–Z are folded (`bytes.lower()`), as SpamBayes did
on Python 2, so the token strings match an existing SpamBayes database. We parse MIME ourselves
instead of using the `email` package: it is several times faster, and a hand-rolled walker can be
bounded (bytes looked at, parts, depth, decoded text, distinct tokens) so a hostile message costs
at most a few milliseconds — the milter's time cap depends on it. Nothing here raises: a stage
that trips over broken input emits a `control:` token and the rest of the message still counts.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from math import log2
from typing import Protocol

from spambridge.rfc5322 import FIELD_NAME

# Bumped whenever token spellings change: counts learned with another version do not match.
TOKENIZER_VERSION = 1

# The caps that only a message built to hide its text reaches (no message of the SpamAssassin
# corpus does): what is past them goes unread, so the scanner never calls such a message ham
# on what it did read (verdict.ScoreResult.unread). The byte, text and token caps are not
# among them: a long newsletter or a big attachment reaches those.
HIDING = {
    "control: too many parts": "parts",
    "control: too deep": "depth",
    "control: too many delimiter lookalikes": "delimiters",
    "control: too many entities": "entities",
    "control: too many urls": "urls",
    "control: too many header fields": "headers",
}


def unread(tokens: list[str]) -> str:
    """Why part of the message went unread (HIDING's word, "" when nothing did): one C-level
    pass, the tokens' hashes then cached for the store lookup."""
    if HIDING.keys().isdisjoint(tokens):
        return ""
    return next(word for token, word in HIDING.items() if token in tokens)


@dataclass(frozen=True, slots=True)
class Limits:
    """Work bounds. Defaults keep a worst-case message (5 MB, one giant line, 1,000 parts)
    well under 50 ms while leaving ordinary mail untouched."""

    max_bytes: int = 512 * 1024  # of the raw message looked at
    max_text: int = 256 * 1024  # decoded text/* bytes tokenized, all parts together
    max_tokens: int = 5000  # distinct tokens returned (headers first, then a sample: _capped)
    max_parts: int = 100
    # Each nesting level is a part too, so max_parts already bounds the work: nine nested
    # multiparts (the cut was at eight) hid a spam's every word. This only keeps the walk's
    # recursion far below Python's limit should max_parts be raised.
    max_depth: int = 100
    max_headers: int = 500  # header fields parsed per part


DEFAULT_LIMITS = Limits()


class _Caps(Protocol):
    @property
    def max_bytes(self) -> int: ...

    @property
    def max_tokens(self) -> int: ...


def limits_for(cfg: _Caps) -> Limits:
    """Limits from the [bayes] config keys (half the bytes looked at may be decoded text)."""
    return Limits(max_bytes=cfg.max_bytes, max_text=cfg.max_bytes // 2,
                  max_tokens=cfg.max_tokens)

# header names counted as `header:<Name>:<n>` and recorded as `noheader:<name>` when absent.
# SpamBayes' list without Return-Path: delivery writes that one, and Postfix drops any the
# sender sent before the milter sees the message (message_drop_headers), so a mailbox file
# always has it and live mail never does — counted, it told the files train learns from and
# `check` scores from the mail the milter scores (noheader:return-path on every message, with
# whatever odd mail without one had taught it), and nothing about spam.
SAFE_HEADERS = frozenset(
    b"abuse-reports-to date errors-to from importance in-reply-to message-id mime-version "
    b"organization received reply-to subject to user-agent x-abuse-info "
    b"x-complaints-to x-face".split()
)
# in a fixed order: set order varies per process
_NOHEADER = tuple((name, "noheader:" + name.decode()) for name in sorted(SAFE_HEADERS))
# SpamBayes tokenizer options (notes §2.4). The values are the ones measured best or neutral on
# the SpamAssassin corpus with bench/bayes_accuracy.py; changing one changes token spellings, so
# it needs a new TOKENIZER_VERSION and a retrained database.
COUNT_ALL_HEADERS = False  # header:<Name>:<n> for every header, not only SAFE_HEADERS
RECORD_ABSENCE = True  # noheader:<name> for each absent safe header (Tim's original meaning)
BASIC_HEADERS = False  # <name>:<word> for the words of other headers (corpus-bias prone)
BASIC_SKIP = frozenset(b"received date message-id content-type content-transfer-encoding "
                       b"content-disposition mime-version x-mailer".split())
MINE_RECEIVED = True  # received: host suffixes, IP prefixes and "(…)" phrases
ADDRESS_HEADERS = (b"from", b"to", b"cc", b"sender", b"reply-to")
_NONE = {field: field.decode() + ":none" for field in ADDRESS_HEADERS}
MAX_RECEIVED = 20  # Received lines mined per message
# per text part: each costs a Python call, so a flood of them (64,000 "ftp://a " in 512 kB)
# is cut off here (the SpamAssassin corpus' most, a link-list newsletter, has 3,131)
MAX_URLS = 5000
MAX_ENTITIES = 10_000
SKIP_MAX_WORD = 12

# a field's name and the blanks after its colon; the value runs to the first line break not
# followed by a blank (_FIELD_END). Not one pattern with `(?:\n[ \t].*)*` for the folded lines:
# CPython keeps ~100 bytes per repetition of a group until the match ends, so a field folded
# over 170,000 lines of 512 kB peaked at 33 MB (250 MB at 4 MB of max_bytes, GBs at 64 MB).
_HEADER = re.compile(rb"^(" + FIELD_NAME + rb")[ \t]*:[ \t]*", re.M)
_FIELD_END = re.compile(rb"\n(?![ \t])")
_LOOKS_LIKE_HEADER = re.compile(FIELD_NAME + rb"[ \t]*:")
_PARAM = re.compile(rb';\s*([^\s=;"]+)\s*=\s*("(?:[^"\\]|\\.)*"?|[^;]*)')
_ADDR_ITEM = re.compile(rb'(?:"(?:[^"\\]|\\.)*"?|\([^()]*\)?|<[^<>]*>?|[^,"(<])+')
_ADDR_ANGLE = re.compile(rb"<([^<>]*)>?")
_ADDR_COMMENT = re.compile(rb"\([^()]*\)?")
_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([QqBb])\?([^?\s]*)\?=")
_BETWEEN_ENCODED = re.compile(rb"(\?=)[ \t\n]+(=\?)")
_SUBJECT_WORD = re.compile(rb"[\w\x80-\xff$.%]+")
_SUBJECT_PUNCT = re.compile(rb"\W+")
_MESSAGE_ID = re.compile(rb"\s*<[^@>]+@([^>]+)>\s*$")
_RECEIVED_HOST = re.compile(rb"from\s+([a-z0-9._-]+[a-z])[)\s]")
_RECEIVED_IP = re.compile(rb"[\[(]((?:\d{1,3}\.){3}\d{1,3})[\])]")
# possessive runs: letters, blanks and ")" are disjoint, so giving a run back can never lead to a
# match, and each "(" of a Received line (most are "(qmail 123 invoked ...)", no match) is
# rejected without retrying every split of its words: half the instructions, same matches
_RECEIVED_COMPLAINT = re.compile(rb"\([a-z]++(?:\s++[a-z]++)+\)")
# the hop an LMTP server (Dovecot's, Cyrus') writes when it stores a message: "by HOST
# [(comment)] with LMTP" (LMTPA, LMTPS, LMTPSA) on a folded line of its own, so after a tab
# once unfolded. Only that: a client's HELO is in our own hop's "from" part (Postfix joins
# its words with single spaces, and no tab gets through), and "EHLO x by y with LMTP" must
# not make the hop the milter sees look like a delivery. Looked for before the first "<" or
# ";" only: the envelope addresses in "for <...>" are the sender's to choose.
# "A run of blanks with a tab in it, then by", looked for from the run's start only: "\t[ \t]*by"
# was tried from every tab of a run, each try reading to the run's end (2 kB of tabs: 14 ms a
# field, 500 such fields on top: 3.5 s). Same matches, one pass.
_LMTP_HOP = re.compile(rb"(?<![ \t]) *+\t[ \t]*+by\s+[^\s()]+(?:\s+\([^()]*\))?"
                       rb"\s+with\s+lmtps?a?\b", re.IGNORECASE)
_LMTP_HOP_END = re.compile(rb"[<;]")
_FNAME_COMP = re.compile(rb"[/\\:]")
_FNAME_PIECE = re.compile(rb"[;?:@&=+,$.]")
# a Content-Transfer-Encoding's mechanism: its first token. "base64 (x)", "base64;" and
# "Base64 x" are base64 to Thunderbird and Mutt, so they must be to us too, or the part's
# text is read as base64 letters (one skip: token) while the reader sees it
_CTE_TOKEN = re.compile(rb"\s*+([^\s;(,]*)")
# text charsets that are not ASCII-compatible → the codec their text is read with
# (wide_to_utf8); "ucs-2" is a label of UTF-16 in the WHATWG Encoding Standard
_WIDE_CHARSETS = {b"utf-16": "utf-16", b"utf-16le": "utf-16-le", b"utf-16be": "utf-16-be",
                  b"ucs-2": "utf-16", b"utf-32": "utf-32", b"utf-32le": "utf-32-le",
                  b"utf-32be": "utf-32-be"}
_NUMERIC_ENTITY = re.compile(rb"&#(x[0-9a-fA-F]{1,6}|\d{1,7});")
# possessive \s*+: "<" before a long run of blanks must not try every way of splitting it
# between two \s* (quadratic, with the GIL held, so every milter thread would wait)
_VIRUS_TAG = re.compile(rb"<\s*+(?:/\s*+)?(?:script|iframe)\b")
_VIRUS_CID = re.compile(rb"src=['\"]?cid:")
# found from the literal "=" (a pattern opening with an alternation is scanned byte by byte);
# the attribute name before it is checked after
_VIRUS_SIZE = re.compile(rb"=['\"]?0\b")
# from the literal "begin", the line start checked behind it: a pattern opening with "^" has no
# literal to search for, so it was tried at every byte of a text that says "begin " anywhere
_UUENCODE_BEGIN = re.compile(rb"begin(?<=^begin)[ \t]+([0-7]{3})[ \t]+([^\n]{1,255})$", re.M)
# searched from the literal "://" (5× faster than from the scheme); the scheme is checked after
_URL = re.compile(rb"://([^\s<>\"'\x7f-\xff]{1,1024})")
_SCHEMES = (b"http", b"https", b"ftp")  # the commonest first
_IP_HOST = re.compile(rb"\d{1,3}(?:\.\d{1,3}){3}")
PICK_APART_URLS = False  # url:ip addr / has user / port / %-escapes: no gain measured
_URL_SEP_TO_SLASH = bytes.maketrans(b";?:@&=+,$.", b"//////////")
# (opener, closer) of regions removed with no separator, so FR<!-- x -->EE reads FREE;
# None: an HTML comment, which has closers of its own (_strip_comments). SpamBayes also drops
# <comment>…</comment>, on purpose ("Nuke HTML comments"): old Internet Explorer hid it. HTML5
# has no such element, so browsers and mail clients show its text: dropped, it hid the words.
_STRIP_REGIONS = ((b"<style", b"</style"), (b"<!--", None), (b"<noframes", b"</noframes"))
_BREAKING = re.compile(rb"<\s*+(?:/\s*+)?(?:p|br)\b[^<>]{0,256}>")
_TAG = re.compile(rb"<(?![\s<>])[^<>]{0,256}>")
_BLANK_EOL = re.compile(rb"[ \t\r]*+(?:\n|\Z)")
# lines that start like a MIME delimiter but are not one, looked at per message
MAX_NEAR_DELIMITERS = 1000
_STR_SPACE_ONLY = (b"\x1c", b"\x1d", b"\x1e", b"\x1f", b"\x85", b"\xa0")  # space to str, not bytes
_HIGH_BYTES = bytes(range(128, 256))
# the lines of a base64 block (blank ones too) up to and with the first one that ends in padding.
# Found without a regex repeat of a group: Python before 3.11.5 (Debian 12 ships 3.11.2)
# matched a possessive `(?:line)*+` wrongly when the group failed part-way (CPython gh-106052),
# and the atomic `(?>(?:line)*)` that works everywhere keeps ~100 bytes per line until the match
# ends (a 512 kB part of empty lines: 40-60 MB, 2.5x the time, the GIL held). Instead each byte
# is mapped to its class (a: base64 letter, space: blank, r, n, x: anything else); a block line
# is ` *a* *r?n`, so the lines end at the first byte outside [ arn], or before the first line
# that has letters after a blank after letters, or a \r not before its \n: single-byte
# patterns and searches, one pass each, correct on every Python 3.11.
_B64_CLASS = bytes(
    ord("a") if c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    else ord(" ") if c in b" \t" else ord("r") if c == 13 else ord("n") if c == 10
    else ord("x") for c in range(256))
_B64_LINE_BYTES = re.compile(rb"[ arn]*+")
_B64_GAP = re.compile(rb"a  *a")  # literal prefix "a ": fast over lines of letters
_B64_LONE_CR = re.compile(rb"r(?!n)")
_B64_LAST_LINE = re.compile(rb"[ \t]*+[A-Za-z0-9+/]*+=*+[ \t]*+(?:\r?\n|\Z)")


def base64_block_end(payload: bytes) -> int:
    """Where the base64 block at the start of `payload` ends: its lines of letters and blanks
    (blank lines too), then the first line that ends in padding (or the unterminated last)."""
    classes = payload.translate(_B64_CLASS)
    run = _B64_LINE_BYTES.match(classes)
    end = classes.rfind(b"n", 0, run.end() if run else 0) + 1
    for broken in (_B64_GAP, _B64_LONE_CR):
        m = broken.search(classes, 0, end)
        if m:
            end = classes.rfind(b"n", 0, m.start()) + 1
    last = _B64_LAST_LINE.match(payload, end)
    return last.end() if last else end


_NOT_B64 = bytes(c for c in range(256)
                 if c not in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def tokenize(message: bytes, limits: Limits = DEFAULT_LIMITS) -> list[str]:
    """The distinct tokens of one raw RFC 5322 message, header tokens first, at most
    `limits.max_tokens` of them (see _capped). Never raises."""
    out: list[str] = []
    tokenizer = _Tokenizer(limits, out)
    try:
        tokenizer.message(message)
    except Exception:
        out.append("control: tokenizer error")
    distinct = list(dict.fromkeys(out))
    if len(distinct) > limits.max_tokens:
        before = out if tokenizer.body_start is None else out[: tokenizer.body_start]
        return _capped(distinct, len(dict.fromkeys(before)), limits.max_tokens)
    return distinct


def _capped(tokens: list[str], head: int, cap: int) -> list[str]:
    """`cap` of the distinct `tokens`, of which the first `head` came before the bodies: every
    control token (a hiding one is what makes `unread` say so), the header's first tokens,
    and an even sample of the body's words, which gets at least half the room when it has
    that many. Not the body's first words: 5,000 invisible numbers put before the text
    (66 kB) hid every word of a spam, and nor the header's all: the sender's attachment
    names alone (98 parts, 34 kB) filled the cap and hid every word of the text."""
    controls = [t for t in tokens if t.startswith("control: ")]
    if len(controls) >= cap:
        return controls[:cap]
    first, rest = tokens[:head], tokens[head:]
    if controls:
        first = [t for t in first if not t.startswith("control: ")]
        rest = [t for t in rest if not t.startswith("control: ")]
    room = cap - len(controls)
    k = min(len(rest), max(room // 2, room - len(first)))
    n = len(rest)
    return first[: room - k] + controls + [rest[i * n // k] for i in range(k)]


# ---------------------------------------------------------------------------------------------
# MIME structure


Headers = list[tuple[bytes, bytes]]  # (name as spelled, unfolded value)


def split_head(data: bytes) -> tuple[bytes, bytes]:
    """(header block, body) of LF-terminated text; a first line that is not a header means
    there is no header block at all."""
    head_end, body_start = _split_head_at(data, 0, len(data))
    return data[:head_end], data[body_start:]


def _split_head_at(data: bytes, start: int, end: int) -> tuple[int, int]:
    """split_head() of data[start:end] as offsets (where the header block ends, where the
    body starts), so that the MIME walk copies no part's body."""
    if not _LOOKS_LIKE_HEADER.match(data, start, end):
        return start, start + 1 if data.startswith(b"\n", start, end) else start
    i = data.find(b"\n\n", start, end)
    if i < 0:
        return end, end
    return i + 1, i + 2


def parse_headers(head: bytes, limit: int) -> Headers:
    """The first `limit` fields of a header block, (name, value unfolded); lines that are
    not a field or its continuation are skipped."""
    out: Headers = []
    pos = 0
    while len(out) < limit:
        m = _HEADER.search(head, pos)
        if m is None:
            break
        end = _FIELD_END.search(head, m.end())
        pos = end.start() if end else len(head)
        out.append((m.group(1), head[m.end() : pos].replace(b"\n", b"")))
    return out


def header_values(headers: Headers, name: bytes) -> list[bytes]:
    return [v for n, v in headers if n.lower() == name]


def content_type(headers: Headers) -> tuple[bytes, dict[bytes, bytes]]:
    """(maintype/subtype, params). Absent or unusable → text/plain, as the email package."""
    values = header_values(headers, b"content-type")
    return content_type_of(values[0] if values else None)


def content_type_of(value: bytes | None) -> tuple[bytes, dict[bytes, bytes]]:
    """content_type() from the first Content-Type value (None: there is none)."""
    if value is None:
        return b"text/plain", {}
    ctype = value.split(b";", 1)[0].strip().lower()
    if ctype.count(b"/") != 1 or b" " in ctype:
        ctype = b"text/plain"
    return ctype, params(value)


def params(value: bytes) -> dict[bytes, bytes]:
    """Header parameters, names lowercased; RFC 2231 `name*`/`name*0*` pieces joined."""
    out: dict[bytes, bytes] = {}
    for name, raw in _PARAM.findall(value[:4096]):
        v = raw.strip()
        if v.startswith(b'"'):
            v = v[1:-1] if v.endswith(b'"') and len(v) > 1 else v[1:]
            v = v.replace(b'\\"', b'"').replace(b"\\\\", b"\\")
        name = name.lower()
        if b"*" in name:
            base, _, rest = name.partition(b"*")
            if rest.endswith(b"*") or rest == b"":
                if rest in (b"", b"0*") and v.count(b"'") >= 2:
                    v = v.split(b"'", 2)[2]
                v = _unquote_percent(v)
            out[base] = out.get(base, b"") + v if rest not in (b"", b"0", b"0*") else v
        else:
            out.setdefault(name, v)
    return out


def _unquote_percent(v: bytes) -> bytes:
    if b"%" not in v:
        return v
    return re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), v)


def decode_words(value: bytes) -> tuple[bytes, list[bytes]]:
    """RFC 2047 encoded words → raw decoded bytes (no charset conversion), and the charsets."""
    if b"=?" not in value:
        return value, []
    charsets: list[bytes] = []

    def one(m: re.Match[bytes]) -> bytes:
        charset, enc, text = m.groups()
        charsets.append(charset.split(b"*", 1)[0].lower())
        try:
            if enc in b"Bb":
                return binascii.a2b_base64(text + b"=" * (-len(text) % 4))
            return binascii.a2b_qp(text.replace(b"_", b" "))
        except (binascii.Error, ValueError):
            return text

    value = _BETWEEN_ENCODED.sub(rb"\1\2", value)
    return _ENCODED_WORD.sub(one, value), charsets


def transfer_encoding(value: bytes) -> bytes:
    """A Content-Transfer-Encoding value's mechanism, lowercased: its first token (up to a
    blank, `;`, `(` or `,`), what mail clients go by when junk follows it."""
    m = _CTE_TOKEN.match(value)
    return m.group(1).lower() if m else b""


def wide_to_utf8(data: bytes, codec: str) -> bytes:
    """UTF-16/32 bytes (codec "utf-16", "utf-16-le", … "utf-32-be") as UTF-8; never raises,
    damage becomes U+FFFD. Without an order in the name: the BOM's, else the one in which the
    NUL bytes of ASCII text fall where they should (clients differ: RFC 2781 says big-endian
    for UTF-16, the WHATWG Encoding Standard little-endian)."""
    if codec in ("utf-16", "utf-32"):
        unit = 2 if codec == "utf-16" else 4
        le_bom, be_bom = (b"\xff\xfe", b"\xfe\xff") if unit == 2 else (b"\xff\xfe\0\0",
                                                                         b"\0\0\xfe\xff")
        if data.startswith(le_bom):
            le = True
        elif data.startswith(be_bom):
            le = False
        else:
            sample = data[:4096]
            le = sample[unit - 1 :: unit].count(0) >= sample[::unit].count(0)
        codec += "-le" if le else "-be"
    text = data.decode(codec, "replace")
    if text.startswith("\ufeff"):  # a BOM is not text
        text = text[1:]
    return text.encode("utf-8", "replace")


def decode_payload(payload: bytes, cte: bytes) -> tuple[bytes, bool]:
    """Undo the transfer encoding; (bytes, ok). Damaged base64 is repaired as far as it goes.
    Plain text after a base64 block (a mailing list's footer tacked onto the part) is kept as
    text, as SpamBayes meant to: the decoder would stop at the block's padding and drop it, or
    read its letters as more base64. What they decode to comes before them: the text cap
    cuts the end, and 256 kB of raw lines left none of a damaged part's text read."""
    if cte == b"base64":
        end = base64_block_end(payload)
        if 0 < end < len(payload) and not payload[end:].isspace():
            text, ok = _from_base64(payload[:end])
            rest = payload[end:]
            more = _more_base64(rest)
            return text + b"\n" + (more + b"\n" if more else b"") + rest, ok
        return _from_base64(payload)
    if cte == b"quoted-printable":
        try:
            return binascii.a2b_qp(payload), True
        except (binascii.Error, ValueError):
            return payload, False
    return payload, True


def _more_base64(rest: bytes) -> bytes:
    """What the lines after a base64 block decode to when they are more base64, else b"".
    A blank or a stray byte in a line ends the block (a footer starts so), and so does padding
    (a second block after it), but mail clients and the email package decode past both,
    skipping the strays: read as a footer only, a spam's whole text stayed hidden. A real
    footer's words decode to bytes that are neither ASCII text nor UTF-8, and are dropped."""
    data, _ = _from_base64(rest)
    if not data or data is rest:
        return b""
    if len(data.translate(None, _TEXT_BYTES)) * 10 <= len(data):  # 90 % ASCII text at least
        return data
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return b""
    return data


_TEXT_BYTES = bytes([9, 10, 13, *range(32, 127)])


def _from_base64(data: bytes) -> tuple[bytes, bool]:
    """Decode base64; damaged, what is left after dropping stray bytes and a partial quad."""
    try:
        return binascii.a2b_base64(data), True
    except (binascii.Error, ValueError):
        clean = data.translate(None, _NOT_B64)
        clean = clean[: len(clean) - len(clean) % 4]
        try:
            return binascii.a2b_base64(clean), False
        except (binascii.Error, ValueError):
            return data, False


# the field the milter writes on top of what its scanners get, for SpamAssassin
# (message.Envelope.trace_fields): one line, never folded
_TRACE_FIELD = b"x-envelope-from:"


def past_trace_field(raw: bytes) -> int:
    """Where the message starts past an X-Envelope-From line on top (0: none): the milter
    writes one above its Received line for SpamAssassin and `train`'s files have none, so it
    must cost nothing here. Its words were never read, but it took one of max_headers fields
    (a message of 499 lost its last and was unread: never ham) and bytes of max_bytes (the
    last words read). An offset, not a copy: the message may be megabytes."""
    if raw[: len(_TRACE_FIELD)].lower() != _TRACE_FIELD:
        return 0
    end = raw.find(b"\n", 0, 4096)
    if end < 0 or raw[end + 1 : end + 2] in (b" ", b"\t"):  # folded: not ours, left as it is
        return 0
    return end + 1


def without_delivery_hops(headers: Headers) -> Headers:
    """The header without the Received fields on top that an LMTP delivery wrote (Dovecot's
    LMTP server writes one by default). They come after the MTA, so the milter never sees
    them, while every message `train` reads from such a mailbox has one: kept, they would
    shift every trained message's `header:Received` count by one hop (on the SpamAssassin
    corpus, with such a line added to every trained message: 7-10 more unsure, one more
    false positive, of 6,046 in 5-fold cross-validation)."""
    drop: set[int] = set()
    for i, (name, value) in enumerate(headers):  # stops at the first other Received
        if name.lower() == b"received":
            if not lmtp_hop(value):
                break
            drop.add(i)
    return [h for i, h in enumerate(headers) if i not in drop] if drop else headers


def lmtp_hop(received: bytes) -> bool:
    """Whether a Received field's value is an LMTP server's ("by HOST (Dovecot) with LMTP"):
    a delivery's, written after the MTA and its milters."""
    return _LMTP_HOP.search(_LMTP_HOP_END.split(received[:2048], 1)[0]) is not None


# ---------------------------------------------------------------------------------------------
# the tokenizer proper


def _s(b: bytes) -> str:
    return b.decode("latin-1")


def _pow2(n: int) -> int:
    return round(log2(n)) if n > 0 else 0


class _Tokenizer:
    def __init__(self, limits: Limits, out: list[str]) -> None:
        self.limits = limits
        self.out = out
        self.emit = out.append
        self.extend = out.extend
        self.parts = 0
        self.misses = [MAX_NEAR_DELIMITERS]  # for _delimiter, all multiparts together
        self.text_left = limits.max_text
        # (payload, transfer encoding, codec of a UTF-16/32 part or None)
        self.text_parts: list[tuple[bytes, bytes, str | None]] = []
        self.body_start: int | None = None  # tokens out before the bodies (see _capped)

    def message(self, raw: bytes) -> None:
        start = past_trace_field(raw)
        data = raw[start : start + self.limits.max_bytes]
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        if data.startswith(b"From "):  # an mbox separator line is not a header
            data = data.partition(b"\n")[2]
        head, body = split_head(data)
        headers = without_delivery_hops(self.fields(head))
        self._guard(self.top_headers, headers)
        self._guard(self.walk, headers, body, 0)
        self.body_start = len(self.out)
        for payload, cte, wide in self.text_parts:
            if wide is None:
                self._guard(self.text, payload, cte)
            else:
                self._guard(self.wide_text, payload, cte, wide)

    def fields(self, head: bytes) -> Headers:
        """parse_headers() to max_headers, saying when fields were left unread: 500 junk
        fields put before Content-Transfer-Encoding (3.6 kB) left a base64 text unread, one
        skip: token, with nothing said."""
        limit = self.limits.max_headers
        headers = parse_headers(head, limit + 1)
        if len(headers) > limit:
            self.emit("control: too many header fields")
            del headers[limit:]
        return headers

    def _guard(self, stage: Callable[..., None], *args: object) -> None:
        try:
            stage(*args)
        except Exception:
            self.emit(f"control: {stage.__name__} failed")

    # -- headers ---------------------------------------------------------------------------
    def top_headers(self, headers: Headers) -> None:
        emit = self.emit
        by_name: dict[bytes, list[bytes]] = {}
        counts: dict[bytes, int] = {}  # of the names header:<Name>:<n> counts, as spelled
        for name, value in headers:
            low = name.lower()
            by_name.setdefault(low, []).append(value)
            if COUNT_ALL_HEADERS or low in SAFE_HEADERS:
                counts[name] = counts.get(name, 0) + 1
        # counted in the one pass over the fields: no Counter built over every name and no
        # second lower() per name; in the order each spelling first occurs, as Counter's
        self.extend([f"header:{name.decode('latin-1')}:{n}" for name, n in counts.items()])
        if RECORD_ABSENCE:
            self.extend([tok for name, tok in _NOHEADER if name not in by_name])
        if BASIC_HEADERS:
            for name, values in by_name.items():
                if name in BASIC_SKIP or name.startswith(b"x-spam") or name in SAFE_HEADERS:
                    continue
                for w in b" ".join(values)[:1024].lower().split():
                    if 2 < len(w) <= 40:
                        emit(f"h:{_s(name)}:{_s(w)}")

        for subject in by_name.get(b"subject", ())[:1]:
            self._guard(self.subject, subject)
        for field in ADDRESS_HEADERS:
            if field in by_name:
                self._guard(self.addresses, field, by_name[field])
            else:
                emit(_NONE[field])
        for field in (b"to", b"cc"):
            count = sum(len(v.split(b",")) for v in by_name.get(field, ()))
            if count:
                emit(f"{_s(field)}:2**{_pow2(count)}")

        mailers = by_name.get(b"x-mailer")
        if mailers:
            emit("x-mailer:" + _s(b" ".join(mailers[0].lower().split()))[:200])
        else:
            emit("x-mailer:none")

        m = _MESSAGE_ID.match(by_name.get(b"message-id", [b""])[0])
        emit("message-id:@" + _s(m.group(1))[:200] if m else "message-id:invalid")

        if MINE_RECEIVED:
            for received in by_name.get(b"received", ())[:MAX_RECEIVED]:
                self.received(received)

    def subject(self, value: bytes) -> None:
        emit = self.emit
        text, charsets = decode_words(value[:2048])
        for cs in charsets:
            emit("subjectcharset:" + _s(cs))
        for w in _SUBJECT_WORD.findall(text):
            if 2 < len(w) <= SKIP_MAX_WORD:  # word_tokens' commonest case, without two calls
                emit("subject:" + w.decode("latin-1"))
                continue
            for t in self.word_tokens(w):
                emit("subject:" + t)
        for run in _SUBJECT_PUNCT.findall(text):
            emit("subject:" + run.decode("latin-1"))

    def addresses(self, field: bytes, values: list[bytes]) -> None:
        emit = self.emit
        name = field.decode()
        if not values:
            emit(f"{name}:none")
            return
        noname = 0
        for real, addr in parse_addresses(b",".join(values)[:4096]):
            if real:
                decoded, charsets = decode_words(real)
                emit(f"{name}:name:{decoded.lower().decode('latin-1')}")
                for cs in charsets:
                    emit(f"{name}:charset:{cs.decode('latin-1')}")
            else:
                noname += 1
            if addr:
                for piece in addr.lower().split(b"@"):
                    emit(f"{name}:addr:{piece.decode('latin-1')}")
            else:
                emit(f"{name}:addr:none")
        if noname:
            emit(f"{name}:no real name:2**{_pow2(noname)}")

    def received(self, value: bytes) -> None:
        """received: tokens — the sending host's name suffixes (a.b.c, b.c, c), its IP
        prefixes (1, 1.2, 1.2.3, 1.2.3.4) and "(…)" remarks such as "(may be forged)"."""
        emit = self.emit
        text = value[:2048].lower()
        if b"(" in text:
            for phrase in _RECEIVED_COMPLAINT.findall(text):
                emit("received:" + b" ".join(phrase.split()).decode("latin-1"))
        m = _RECEIVED_HOST.search(text)
        if m:
            host = m.group(1).decode("latin-1")
            i = len(host)
            while i > 0:
                i = host.rfind(".", 0, i)
                emit("received:" + host[i + 1 :])
        m = _RECEIVED_IP.search(text)
        if m:
            a, b, c, d = m.group(1).decode().split(".")
            self.extend((f"received:{a}", f"received:{a}.{b}", f"received:{a}.{b}.{c}",
                         f"received:{a}.{b}.{c}.{d}"))

    # -- MIME walk -------------------------------------------------------------------------
    def walk(self, headers: Headers, data: bytes, depth: int, start: int = 0,
             end: int | None = None) -> None:
        """Structure tokens of one part, whose body is data[start:end] (a window of the
        message: nested parts are not copied), and its text queued; recurses into parts."""
        if end is None:
            end = len(data)
        self.parts += 1
        emit = self.emit
        mime: dict[bytes, bytes] = {}  # first value of each Content-* field, in one pass
        for n, v in headers:
            if n[:1] in b"Cc":
                ln = n.lower()
                if ln not in mime:
                    mime[ln] = v
        ctype, prm = content_type_of(mime.get(b"content-type"))
        emit("content-type:" + _s(ctype))
        if b"type" in prm:
            emit("content-type/type:" + _s(prm[b"type"].lower()))
        if b"charset" in prm:
            emit("charset:" + _s(prm[b"charset"].lower()))
        disp = mime.get(b"content-disposition")
        fname = prm.get(b"name")
        if disp is not None:
            emit("content-disposition:" + _s(b" ".join(disp.lower().split()))[:200])
            fname = params(disp).get(b"filename", fname)
        if fname:
            self.filename(fname)

        if ctype.startswith(b"multipart/"):
            boundary = prm.get(b"boundary")
            if boundary and (start == 0 or data[start - 1] != 0x0A):  # the top body only
                data, start, end = b"\n" + data[start:end], 1, end - start + 1
            parts = (_split_multipart_at(data, start, end, boundary, self.misses,
                                         self.limits.max_parts) if boundary else None)
            if not self.misses[0]:  # the rest of the message is not split any more
                emit("control: too many delimiter lookalikes")
            if not parts:  # no boundary or none found: do not let the content hide
                emit("control: broken multipart")
                self.add_text(data[start:end], b"")
                return
            if depth >= self.limits.max_depth:
                emit("control: too deep")
                return
            for part_start, part_end in parts:
                if self.parts >= self.limits.max_parts:
                    emit("control: too many parts")
                    return
                head_end, sub = _split_head_at(data, part_start, part_end)
                self.walk(self.fields(data[part_start:head_end]),
                          data, depth + 1, sub, part_end)
        elif ctype == b"message/rfc822":
            if depth >= self.limits.max_depth:
                emit("control: too deep")
                return
            # an attached message that opens with no header field is a body only, text/plain
            # (the email package reads it so): skipped, its text was hidden from the engine
            head_end, sub = _split_head_at(data, start, end)
            inner = self.fields(data[start:head_end])
            self.walk(inner, data, depth + 1, sub, end)
        elif ctype.startswith(b"text/"):
            cte = mime.get(b"content-transfer-encoding")
            self.add_text(data[start:end], b"" if cte is None else transfer_encoding(cte),
                          _WIDE_CHARSETS.get(prm.get(b"charset", b"").lower()))

    def filename(self, fname: bytes) -> None:
        emit = self.emit
        fname, _ = decode_words(fname[:255])
        fname = fname.lower()
        emit("filename:fname:" + _s(fname))
        for comp in _FNAME_COMP.split(fname):
            if comp:
                emit("filename:fname comp:" + _s(comp))
                for piece in _FNAME_PIECE.split(comp):
                    if piece:
                        emit("filename:fname piece:" + _s(piece))

    def add_text(self, payload: bytes, cte: bytes, wide: str | None = None) -> None:
        """Queue a text part; bodies are tokenized after all structure tokens are out, so the
        token cap can never crowd out the header and MIME clues. `wide`: the part is UTF-16
        or UTF-32 (_WIDE_CHARSETS)."""
        if self.text_left <= 0:
            self.emit("control: text cap")
            return
        # transfer encodings at most shrink text, so a raw slice bounds the decoded size
        slack = 4 * self.text_left // 3 + 4 if cte == b"base64" else self.text_left * 3
        self.text_parts.append((payload[:slack], cte, wide))
        self.text_left -= min(len(payload), self.text_left)

    # -- bodies ----------------------------------------------------------------------------
    def wide_text(self, payload: bytes, cte: bytes, wide: str) -> None:
        """A UTF-16/32 part: its decoded bytes as UTF-8, so that its words are the ones a
        UTF-8 part gives (read as Latin-1, every other byte is a NUL: the words all vanish).
        The input is the raw slice add_text bounded; text() cuts the output at the text cap."""
        text, ok = decode_payload(payload, cte)
        if not ok:
            self.emit("control: couldn't decode")
        self.text(wide_to_utf8(text, wide), b"")

    def text(self, payload: bytes, cte: bytes) -> None:
        emit = self.emit
        text, ok = decode_payload(payload, cte)
        if not ok:
            emit("control: couldn't decode")
        if not text or text.isspace():  # bytes.strip()'s whitespace, without the copy
            emit("control: payload is None")
            return
        text = text[: self.limits.max_text]
        if b"&#" in text:
            text, n = _NUMERIC_ENTITY.subn(_entity, text, MAX_ENTITIES)
            if n == MAX_ENTITIES and _NUMERIC_ENTITY.search(text):
                emit("control: too many entities")
        text = text.lower()
        if b"<" in text:
            if b"script" in text or b"iframe" in text:
                for m in _VIRUS_TAG.findall(text):
                    # blanks dropped: "<" + 200 kB of them + "script" is one short token
                    emit("virus:" + b"".join(m.split()).decode("latin-1"))
            if b"cid:" in text:
                for m in _VIRUS_CID.findall(text):
                    emit("virus:" + m.decode("latin-1"))
            if b"=" in text and (b"height" in text or b"width" in text):
                for m in _VIRUS_SIZE.finditer(text):
                    i = m.start()
                    for attr in (b"height", b"width"):
                        if text.endswith(attr, 0, i):
                            emit("virus:" + (attr + m.group()).decode("latin-1"))
        if b"begin " in text:
            text = self.uuencode(text)
        if b"://" in text:
            text = self.urls(text)
        if b"&nbsp;" in text:
            text = text.replace(b"&nbsp;", b" ")
        if b"<" in text:
            text = strip_regions(text)
            text = _BREAKING.sub(b" ", text)
            text = _TAG.sub(b"", text)
        if not any(c in text for c in _STR_SPACE_ONLY):  # six memchr scans
            # str.split() on the Latin-1 text splits exactly where bytes.split() would unless
            # one of the few bytes only str treats as space occurs; then one decode suffices
            swords = text.decode("latin-1").split()
            self.extend([w for w in swords if 2 < len(w) <= SKIP_MAX_WORD])
            for sw in [w for w in swords if len(w) > SKIP_MAX_WORD]:
                self.extend(self.long_word(sw))
            return
        words = text.split()
        short = [w for w in words if 2 < len(w) <= SKIP_MAX_WORD]
        if short:
            # one decode for all words: a word never contains "\n", so splitting on it is exact
            self.extend(b"\n".join(short).decode("latin-1").split("\n"))
        for w in [w for w in words if len(w) > SKIP_MAX_WORD]:
            self.extend(self.long_word(_s(w)))

    def word_tokens(self, w: bytes) -> list[str]:
        n = len(w)
        if n < 3:
            return []
        if n <= SKIP_MAX_WORD:
            return [_s(w)]
        return self.long_word(_s(w))

    def long_word(self, w: str) -> list[str]:
        """A word over SKIP_MAX_WORD characters (Latin-1 text): an address's name and domain,
        or a skip: token of its first character and length, with its share of 8-bit bytes.
        On str, as the words come from the text's split: most are plain ASCII junk."""
        n = len(w)
        if n < 40 and "." in w and w.count("@") == 1:
            name, _, domain = w.partition("@")
            return ["email name:" + name, "email addr:" + domain]
        out = [f"skip:{w[0]} {n // 10 * 10}"]
        if not w.isascii():
            high = n - len(w.encode("latin-1").translate(None, _HIGH_BYTES))
            out.append(f"8bit%:{int(100 * high / n + 0.5)}")
        return out

    def urls(self, text: bytes) -> bytes:
        """Emit proto:/url: tokens for each http(s)/ftp URL and cut it out of the text, so its
        pieces are not counted again as words."""
        out: list[bytes] = []
        # each URL as "<" + scheme + "/" + its guts: "<" is never in a URL (_URL), so once all
        # the URLs are split at once it marks where each one's tokens start. Per URL the loop
        # then only finds and cuts; the pieces take a few C calls per text instead of six a URL
        found: list[bytes] = []
        pos = 0
        for m in _URL.finditer(text):
            start = m.start()
            for proto in _SCHEMES:  # at most one matches: no scheme ends another
                if text.endswith(proto, 0, start):  # text[:start] ends with it
                    break
            else:
                continue  # "x://" junk does not count towards the cap: it cannot hide links
            if len(out) >= MAX_URLS:
                self.emit("control: too many urls")
                break
            guts = m.group(1).rstrip(b".:?!/")
            if PICK_APART_URLS:
                self.url_shape(guts)
            found.append(b"<" + proto + b"/" + guts)
            out.append(text[pos : start - len(proto)])
            pos = m.end()
        if not out:
            return text
        # split on "/" and on ; ? : @ & = + , $ . in one C call: map them all to "/"; every
        # non-empty piece is a url: token but the markers, proto: tokens ("\n" is never in a URL)
        pieces = filter(None, b"/".join(found).translate(_URL_SEP_TO_SLASH).split(b"/"))
        tokens = (b"url:" + b"\nurl:".join(pieces)).replace(b"url:<", b"proto:")
        self.extend(tokens.decode("latin-1").split("\n"))
        out.append(text[pos:])
        return b" ".join(out)

    def url_shape(self, guts: bytes) -> None:
        """What the URL's host part looks like: raw IP, user@, odd port, %-escapes (SpamBayes'
        x-pick_apart_urls)."""
        emit = self.emit
        host = guts.split(b"/", 1)[0]
        if b"@" in host:
            emit("url:has user")
            host = host.rpartition(b"@")[2]
        if b":" in host:
            host, _, port = host.partition(b":")
            if port not in (b"80", b"443", b""):
                emit("url:non-standard port")
        if _IP_HOST.fullmatch(host):
            emit("url:ip addr")
        else:
            emit("url-host:" + host.decode("latin-1"))
        escapes = guts.count(b"%")
        if escapes:
            emit(f"url:%{_pow2(escapes)}")

    def uuencode(self, text: bytes) -> bytes:
        """Replace uuencoded blocks by their mode and file-name tokens (linear: find, no regex
        backtracking over the block)."""
        out: list[bytes] = []
        pos = 0
        for _ in range(self.limits.max_parts):
            m = _UUENCODE_BEGIN.search(text, pos)
            if m is None:
                break
            mode, fname = m.group(1), m.group(2).strip()
            self.emit("uuencode mode:" + _s(mode))
            for comp in _FNAME_COMP.split(fname):
                for piece in _FNAME_PIECE.split(comp):
                    if piece:
                        self.emit("uuencode:" + _s(piece))
            end = text.find(b"\nend", m.end())
            out.append(text[pos : m.start()])
            pos = len(text) if end < 0 else end + 4
        out.append(text[pos:])
        return b" ".join(out)


def strip_regions(text: bytes) -> bytes:
    """Drop <style>, comments and <noframes> regions in one linear pass per kind."""
    for opener, closer in _STRIP_REGIONS:
        if opener not in text:
            continue
        if closer is None:
            text = _strip_comments(text)
            continue
        out: list[bytes] = []
        pos = 0
        while True:
            i = text.find(opener, pos)
            j = text.find(closer, i + len(opener)) if i >= 0 else -1
            if j < 0:
                break
            out.append(text[pos:i])
            k = text.find(b">", j + len(closer) - 1)
            pos = len(text) if k < 0 else k + 1
        out.append(text[pos:])
        text = b"".join(out)
    return text


def _strip_comments(text: bytes) -> bytes:
    """Drop HTML comments where a client's HTML parser ends them: at the first "-->" from the
    opener's "--" on ("<!-->" and "<!--->" are empty comments, and the text after them is
    shown, so it must not be swallowed up to a later "-->"), or "--!>" after the opener. An
    unclosed one is kept.
    Linear: the next place of each closer is remembered, not searched for again per comment."""
    out: list[bytes] = []
    pos = 0
    dash = bang = -2  # next "-->", "--!>" at or after the last search (-1: none left)
    find = text.find
    while True:
        i = find(b"<!--", pos)
        if i < 0:
            break
        i += 2
        if dash != -1 and dash < i:
            dash = find(b"-->", i)
        if bang != -1 and bang < i + 2:  # "<!--!>" and "<!---!>" do not close
            bang = find(b"--!>", i + 2)
        if bang >= 0 and (dash < 0 or bang < dash):
            end = bang + 4
        elif dash >= 0:
            end = dash + 3
        else:
            break
        out.append(text[pos : i - 2])
        pos = end
    out.append(text[pos:])
    return b"".join(out)


def parse_addresses(value: bytes, limit: int = 50) -> list[tuple[bytes, bytes]]:
    """(display name, address) pairs of an address-list header, like email.utils.getaddresses
    (a comment stands in for a missing name) but over bytes, linear, and about 5× faster."""
    out: list[tuple[bytes, bytes]] = []
    for item in _ADDR_ITEM.findall(value):
        if len(out) >= limit:
            break
        angle = _ADDR_ANGLE.search(item)
        comments = _ADDR_COMMENT.findall(item)
        rest = _ADDR_COMMENT.sub(b" ", item)
        if angle:
            addr = angle.group(1)
            real = _ADDR_ANGLE.sub(b" ", rest)
        else:
            addr, real = rest, b" ".join(c[1:-1] for c in comments)
        real = b" ".join(real.replace(b'"', b" ").replace(b"\\", b"").split())
        addr = b"".join(addr.split())
        if addr.startswith(b"<"):
            addr = addr.strip(b"<>")
        if real or addr:
            out.append((real, addr))
    return out


def split_multipart(body: bytes, boundary: bytes) -> list[bytes]:
    """The parts between `--boundary` lines; a missing close delimiter ends at the body's end
    (broken boundaries are common in spam). Empty if the boundary never occurs. A delimiter
    is a whole line, `--boundary` and optional `--`, then blanks only (RFC 2046, and what the
    email package reads): an inner part's boundary the outer one is a prefix of (outer "X",
    inner "XAA") does not cut the outer part."""
    data = b"\n" + body
    parts = _split_multipart_at(data, 1, len(data), boundary, [MAX_NEAR_DELIMITERS])
    return [data[s:e] for s, e in parts]


def _split_multipart_at(data: bytes, start: int, end: int, boundary: bytes,
                        misses: list[int], max_parts: int = DEFAULT_LIMITS.max_parts
                        ) -> list[tuple[int, int]]:
    """split_multipart() of data[start:end] as (start, end) offsets of the parts; the byte
    before `start` must be a line feed (a delimiter may open the body). Nested multiparts
    each split their own window of the one message, with no copy: copies made the work and
    memory grow with the nesting depth times the message size. `misses`: _delimiter's."""
    delim = b"\n--" + boundary.strip()
    parts: list[tuple[int, int]] = []
    at, closing = _delimiter(data, delim, start - 1, end, misses)
    while at >= 0 and not closing and len(parts) <= max_parts:
        line_end = data.find(b"\n", at + 1, end)
        if line_end < 0:
            break
        nxt, closing = _delimiter(data, delim, line_end, end, misses)
        parts.append((line_end + 1, nxt if nxt >= 0 else end))
        at = nxt
    return parts


def _delimiter(data: bytes, delim: bytes, pos: int, stop: int,
               misses: list[int]) -> tuple[int, bool]:
    """Where the next delimiter line starts in data[pos:stop] (-1: none), and whether it is
    the close delimiter. Lines that only start like one count against `misses` (a message
    made of them must not cost a Python step per line). The count is the message's, not one
    per multipart: each of 100 nested multiparts would count the same lines again."""
    while misses[0] > 0:
        start = data.find(delim, pos, stop)
        if start < 0:
            break
        end = start + len(delim)
        if data.startswith(b"--", end, stop):
            end += 2
        blanks = _BLANK_EOL.match(data, end, stop)
        if blanks:
            return start, end > start + len(delim)
        misses[0] -= 1
        pos = start + 1
    return -1, False


def _entity(m: re.Match[bytes]) -> bytes:
    ref = m.group(1)
    try:
        n = int(ref[1:], 16) if ref[:1] in b"xX" else int(ref)
    except ValueError:
        return b"?"
    return bytes([n]) if n < 256 else b"?"
