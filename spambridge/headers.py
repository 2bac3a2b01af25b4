"""X-Spam-* rendering (SpamAssassin-compatible), the owned-header rule for anti-spoofing, and
the tagged Subject.

Values are built only from numbers, our own words and symbol names filtered to a safe alphabet,
so nothing a spammer or a broken spamd sends can inject CR/LF or a new header; the Subject's
own text goes into the tagged one with its control characters made spaces.
"""

from __future__ import annotations

import email.errors
import email.header
import re

from spambridge import __version__, defaults
from spambridge.config import Thresholds
from spambridge.verdict import Band, ErrorKind, ScoreResult

FLAG = "X-Spam-Flag"
SCORE = "X-Spam-Score"
LEVEL = "X-Spam-Level"
STATUS = "X-Spam-Status"
CHECKER = "X-Spam-Checker-Version"
OURS = frozenset(n.lower() for n in (FLAG, SCORE, LEVEL, STATUS, CHECKER))  # what we write
# what readers, Sieve scripts and SpamAssassin's own setups act on besides ours (its report,
# relay and virus fields): like ours, removed however many junk X-Spam-* names come first
KNOWN = OURS | frozenset(f"x-spam-{n}" for n in (
    "report", "virus", "prev-subject", "languages", "relays-external", "relays-internal",
    "relays-trusted", "relays-untrusted"))

_SAFE_SYMBOL = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_FOLD_AT = 76
_WORD = re.compile(r"[^ ,]+,?|[ ]")  # fold()'s units: a word with its comma, or a blank
MAX_TESTS = 200  # a spamd that reports thousands of symbols still gets a bounded header
_PREFIX = defaults.HEADER_PREFIX.lower()  # is_owned runs on every field of every message


def is_owned(name: str) -> bool:
    """Every incoming header we would write is a possible forgery and is removed."""
    return name.lower().startswith(_PREFIX)


def format_score(engine: str, score: float) -> str:
    return f"{score:.4f}" if engine == "bayes" else f"{score:.1f}"


def shown_score(engine: str, score: float, t: Thresholds, band: Band) -> str:
    """The score as the headers and the log line give it. Rounded, a score just under a
    threshold would read as reaching it: `No, score=0.9000 required=0.9000`, which Sieve's
    spamtest (comparing the two) files as spam though we did not tag it, or a tagged
    `score=0.9900` in the log beside a reject_cutoff of 0.99. It reads one step under the
    threshold its band ends at, as SpamAssassin writes it (its bug 6419); rounding up to the
    threshold a band starts at is right already."""
    shown = format_score(engine, score)
    # the band's upper end (none for REJECT); `is` tests, not a dict of Enum keys per call
    if band is Band.HAM:
        ceiling: float | None = t.ham if t.ham < t.tag else t.tag
    elif band is Band.UNSURE:
        ceiling = t.tag
    elif band is Band.SPAM:
        ceiling = t.reject
    else:
        ceiling = None
    if ceiling is not None and float(shown) >= (needed := float(format_score(engine, ceiling))):
        return format_score(engine, needed - (0.0001 if engine == "bayes" else 0.1))
    return shown


def level_stars(engine: str, score: float) -> str:
    """One star per SpamAssassin point (max 50, as SA); Bayes 0..1 maps to 0..10 stars."""
    points = score * 10 if engine == "bayes" else score
    return "*" * max(0, min(50, int(points)))


def safe_symbols(tests: tuple[str, ...]) -> list[str]:
    return [t for t in tests[:MAX_TESTS] if _SAFE_SYMBOL.fullmatch(t)]


def fold(value: str, first_line_used: int) -> str:
    """Fold a long value at spaces or commas into `\\n\\t` continuation lines."""
    if (first_line_used + len(value) <= _FOLD_AT and value[:1] not in (" ", ",")
            and not value[-1:].isspace() and ",," not in value and " ," not in value):
        # it fits, and the loop below would give it back as it is (it drops only leading
        # blanks, trailing whitespace and a comma that follows no word): most X-Spam-Status
        return value
    out: list[str] = []
    line = ""
    used = first_line_used
    for word in _WORD.findall(value):
        if word == " ":
            if line:
                line += " "
            continue
        if line and used + len(line) + len(word) > _FOLD_AT:
            out.append(line.rstrip())
            line, used = "", 1
        line += word
    out.append(line.rstrip())
    return "\n\t".join(s for s in out if s)


# a host name as an MTA's macro j gives it (Postfix's myhostname, Sendmail's $j): anything
# else (a missing macro, an address literal, junk) is left out of the field
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63}){0,126}\.?")
HOST_MAX = 253


def _is_host(name: str) -> bool:
    return len(name) <= HOST_MAX and _HOST.fullmatch(name) is not None


def checker(host: str = "") -> tuple[str, str]:
    """SpamAssassin's "… on HOST": the MTA that wrote the Received line the milter never saw,
    by which `check` finds that line in a delivered copy (message.mta_received) behind a
    second relay, where the first Received line is the other relay's."""
    on = f" on {host}" if _is_host(host) else ""
    return CHECKER, f"spambridge {__version__}{on}"


def checked_on(value: bytes) -> str:
    """The host in a Checker-Version field spambridge wrote (checker), or ""."""
    words = value.split()
    if len(words) == 4 and words[0] == b"spambridge" and words[2] == b"on":
        host = words[3].decode("ascii", "replace")
        if _is_host(host):
            return host
    return ""


def render_score(result: ScoreResult, t: Thresholds, band: Band, score: str = "",
                 host: str = "") -> tuple[tuple[str, str], ...]:
    """`score`: the shown_score the caller has already (policy keeps it for the log line);
    `host`: the MTA's macro j (checker)."""
    spam = band in (Band.SPAM, Band.REJECT)
    score = score or shown_score(result.engine, result.score, t, band)
    tests = safe_symbols(result.tests) or ["none"]
    parts = [
        "Yes," if spam else "No,",
        f"score={score}",
        f"required={format_score(result.engine, t.tag)}",
        "tests=" + ",".join(tests),
        f"engine={result.engine}",
    ]
    if band is Band.UNSURE:
        parts.append("unsure=yes")
    if result.unread:
        parts.append(f"unread={result.unread}")
    if result.note and _SAFE_SYMBOL.fullmatch(result.note.replace("=", "_")):
        parts.append(result.note)
    out: list[tuple[str, str]] = [checker(host)]
    if spam:
        out.append((FLAG, "YES"))
    out.append((SCORE, score))
    out.append((LEVEL, level_stars(result.engine, result.score)))
    out.append((STATUS, fold(" ".join(parts), len(STATUS) + 2)))
    return tuple(out)


def render_unchecked(kind: ErrorKind, host: str = "") -> tuple[tuple[str, str], ...]:
    """Mail accepted without a verdict says so, so no Sieve rule mistakes it for clean ham."""
    return (checker(host), (STATUS, f"No, unchecked={kind.value}"))


# a fold (line break + blank) is kept; any other C0/C1 control, DEL, or a bare CR/LF that
# could end the header early (header injection on the way out) becomes a space. ESC stays
# where it starts an ISO-2022 designation (ESC $ or ESC (): a raw ISO-2022-JP Subject, as
# older Japanese mailers send it, is text in those, and lost its Japanese as spaces; a
# terminal's sequences (ESC [, ESC ]) still go
_FOLD_OR_CONTROL = re.compile(r"\n[ \t]|\x1b(?![$(])|[\x00-\x08\x0a-\x1a\x1c-\x1f\x7f-\x9f]")


LINE_MAX = 998  # RFC 5322 2.1.1: octets in a line, CRLF not counted
# Sendmail's SMTP mailers (smtp, esmtp, smtp8, dsmtp in the stock cf: L=990) break a longer
# line, headers too, with "!", a line end and a blank: a tagged Subject of 991-998 octets a
# line, relayed by Sendmail, reached the user as "…win b! ig w…". Postfix does not break
# lines; folding at 990 costs it nothing (unfolded, the Subject reads the same).
SENDMAIL_LINE_MAX = 990
_SUBJECT = len("Subject: ")  # before the value on the first line, as the MTA writes it
# why a Subject is left as it came (what `check` prints, and the milter's log line)
ALREADY_TAGGED = "the Subject has it already"
NOT_UTF8 = "the Subject is 8-bit text that is not UTF-8, left as it is"
TOO_LONG = (f"a line of the Subject would pass RFC 5322's {LINE_MAX} octets, and no blank "
            "in it can fold it shorter")


def subject_rewrite(prefix: str, subject: bytes | None) -> tuple[str | None, str]:
    """The new Subject and "", or None and why it is left as it came: tagged already, 8-bit
    bytes a rewrite would mangle, or a line too long to write. We write this header, so the
    message's control characters do not go into it. A missing Subject becomes the tag alone;
    an empty one (or blanks alone) the tag and a blank, as SpamAssassin's rewrite_header
    writes it: that blank is how `train` tells the two apart, and learns the empty Subject
    the message came with instead of none. Where the tag would push the first line past
    SENDMAIL_LINE_MAX octets the fold goes after the tag, at the blank that is ours: the
    sender's text stays as it came, and `train` takes the tag off to the very Subject that
    came."""
    if subject is None:
        return _fitted(prefix)
    try:
        text = subject.decode("utf-8")
    except UnicodeDecodeError:
        return None, NOT_UTF8
    if text.lstrip().startswith(prefix) or _shown(text).lstrip().startswith(prefix):
        return None, ALREADY_TAGGED  # rescanned mail (a tab or a fold after the colon stays)
    # the MTA's blanks after the colon, and a fold there, go; a blank that is text stays
    # (a Japanese Subject's ideographic space, U+3000): `train` gives back the very Subject
    text = _FOLD_OR_CONTROL.sub(lambda m: m[0] if len(m[0]) == 2 else " ", text).lstrip(" \t\n")
    new = f"{prefix} {text}"  # an empty one too: the blank tells it from a Subject we added
    if _SUBJECT + len(new.encode()) <= SENDMAIL_LINE_MAX:  # the whole field on one line: most
        return new, ""
    first = new.partition("\n")[0]
    if _SUBJECT + len(first.encode()) > SENDMAIL_LINE_MAX:
        new = f"{prefix}\n {text}"
    return _fitted(new)


def _fitted(value: str) -> tuple[str | None, str]:
    """`value` with each line over SENDMAIL_LINE_MAX octets (a line the sender sent so;
    Postfix takes up to 2,048) folded before its last blank that fits. A line no fold can
    bring within it (a word of 990 octets or more) is folded within LINE_MAX, or kept whole
    if it fits there: RFC 5322 allows it, Sendmail breaks the sender's word whether we tag
    or not, and leaving the spam untagged for it would help no one. None when a line over
    LINE_MAX has no blank to fold at: we would write a line RFC 5322 forbids."""
    lines = value.split("\n")
    out: list[str] = []
    used = _SUBJECT
    for line in lines:
        while (size := used + len(line.encode())) > SENDMAIL_LINE_MAX:
            cut = _fold_point(line, SENDMAIL_LINE_MAX - used)
            if cut is None:
                if size <= LINE_MAX:
                    break  # no blank to fold at before a word that ends past 990: whole
                if (cut := _fold_point(line, LINE_MAX - used)) is None:
                    return None, TOO_LONG
            out.append(line[:cut])
            line, used = line[cut:], 0
        out.append(line)
        used = 0
    return "\n".join(out), ""


def _fold_point(line: str, room: int) -> int | None:
    """Where `line` folds: before its last blank such that the line up to there fits in
    `room` octets and has text, and text follows the blank. Each line after a fold is then
    a blank and a word, never blanks alone (obsolete syntax, RFC 5322 4.2): word wrap's
    greedy fill, which fails only where a blank and one word cannot fit a line."""
    best = None
    size = 0
    text = False
    for i, c in enumerate(line):
        if size > room:
            break
        if c not in " \t":
            text = True
        elif text and line[i + 1:i + 2] not in ("", " ", "\t"):
            best = i
        size += 1 if c < "\x80" else len(c.encode())
    return best


def subject_untagged(tag: bytes, value: bytes) -> bytes | None:
    """The Subject a message came with, from the `value` subject_rewrite made of it with
    `tag`: None when it came without one (the tag alone was added), `value` itself when it
    does not start with the tag. Only for mail flagged spam by us: `train` learns the
    message, and `check` scores it, as the milter's engine read it, before the tag."""
    text = value.lstrip(b" \t")
    if text == tag:
        return None
    for blank in (b" ", b"\n "):  # the fold after the tag where the line is long
        if text.startswith(tag + blank):
            return text[len(tag) + len(blank):]
    return value


def _shown(subject: str) -> str:
    """The Subject as a mail client shows it, RFC 2047 encoded words decoded: a client that
    re-encodes a whole non-ASCII Subject ("=?UTF-8?Q?=5BSPAM=5D_caf=C3=A9?=") keeps the tag
    inside the word, and a second one would read "[SPAM] [SPAM] café"."""
    if "=?" not in subject:
        return subject
    try:
        return str(email.header.make_header(email.header.decode_header(subject)))
    except (email.errors.HeaderParseError, LookupError, UnicodeError, ValueError):
        return subject  # undecodable words are shown as they are
