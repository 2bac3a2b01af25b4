"""The same mail through Postfix and through Sendmail, the same milter behind each: does what
the milter does arrive the same? A differential; not a test (no assertions): it counts and
shows. Run as root from the repository root (a throwaway Postfix and Sendmail,
tests/postfix_instance.py and tests/sendmail_instance.py):

    .venv/bin/python bench/mta_differential.py [--sample 300] [--port 40400] [--show 3]
                                               [--macros] [--dump DIR]

1. A Bayes database is trained with `spambridge train` on the 80 % split of the SpamAssassin
   corpus (bench/bayes_accuracy.py), spam then ham, as bench/delivered_vs_original.py does.
2. The messages: a deterministic sample of `--sample` messages of the 20 % split (by a hash of
   the file name), plus hand-made hostile variants of one spam and one ham message of it
   (VARIANTS: forged X-Spam-* fields on top, in the middle, at the end, in odd case, several
   copies, folded, empty, a flood past MAX_OWNED; two Subjects, a lowercase name, 8-bit, 1,000
   octets, none, ...).
3. Each message goes over SMTP to a Postfix (virtual delivery to a Maildir: "postfix") and to
   a Sendmail with two recipients, one local (its local mailer, one file per message:
   "sendmail") and one relayed over its esmtp mailer (L=990) to an SMTP server that keeps the
   bytes as Sendmail sent them ("relay"). `spambridge run` is behind each (engine bayes,
   `subject_tag = "[SPAM]"`): a pass with `tag_only = true` (everything delivered), then a
   pass with the default policy (some refused: the replies of the two MTAs are compared).
4. What arrives is compared with what was sent and across the MTAs: the fields each MTA adds
   (Received, Return-Path, Delivered-To, X-Original-To, Message-Id, Date: named with where
   they stand, then left out of the comparison), our X-Spam-* fields (each once, our values,
   the first X-Spam-Flag ours, where they stand), forged X-Spam-* fields delivered, the
   Subject against headers.subject_rewrite of the one sent (as the MTA took it in), the
   other fields in order, and the body bytes.
   "wrong" is what an admin or user would see as wrong; "style" is each MTA's own rewriting.
`--macros`: also one message through each MTA to a probe milter that prints the macros it
was sent at each step and the header values as it got them (leading blanks, folds, 8-bit).
Ports: Postfix `--port`, Sendmail +1, the next hop +2, all on 127.0.0.1.

On 2026-11-28 (Postfix 3.7.11, Sendmail 8.17.1.9, --sample 300 --macros: 360 messages a pass,
35 s in all on 2 cores): nothing wrong in any copy, in either pass. Our X-Spam-* fields arrived
once each, with the same values in all three copies but one (an X-Spam-Level a star apart:
Postfix's cleanup rewrote that message's `To:` before the milter saw it, Sendmail rewrites
after); every forged variant was removed (top, middle, end, odd case, two spellings, copies,
folded, empty, a blank before the colon, 8-bit, 1,200 octets); a flood past MAX_OWNED keeps
its last 5 and ours go on top, first, in both; Subjects tagged alike (a lowercase name kept,
8-bit not UTF-8 left, a tag line folded within 990). With the default policy the same 109
were refused by both, with the same reply (and the 2 with a CR alone by Sendmail, below).
Deleting forged fields lowest index first (tried by hand) left some in Postfix only: Postfix
renumbers a name's fields after a deletion, Sendmail counts the deleted ones until the next
milter; highest first, as the milter does, is right for both. Each MTA's own (listed as
style, not changed):
- Postfix adds Return-Path, X-Original-To, Delivered-To and Received on top, and a missing
  Message-Id, Date or From at the end of the header, which the milter sees. Sendmail adds
  Return-Path (local mailer) and Received on top, and a missing Date, From or Message-Id
  under its Received, unseen by the milter; its local mailer adds nothing else.
- Postfix rewrites addresses (`To:`) before the milter sees them; Sendmail rewrites To, Cc
  and From (qualified, refolded) on the way out.
- Sendmail relaying to a next hop without 8BITMIME converts 8-bit bodies to quoted-printable
  (X-MIME-Autoconverted, Content-Transfer-Encoding moved after our fields); it closes an
  unclosed MIME multipart; it breaks a line over 990 octets with "!" (a Subject the milter
  did not write, or one word of 990 octets or more).
- A CR alone: Sendmail refuses the message (421 4.5.0), Postfix takes it as a blank. A NUL
  in a field: Postfix ends the field there, Sendmail drops it; both before the milter.
- Macros: Postfix sends j, _, v, {daemon_name} (myhostname), {daemon_addr}, i from DATA on;
  Sendmail j, _, {daemon_name} (the DAEMON_OPTIONS Name), {if_name}, i from MAIL on and
  {msg_id} at the end; both {mail_*} and {rcpt_*}. Header values come from both without one
  leading blank (a tab kept), folded as "\n\t", 8-bit as sent, names as spelled.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import re
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bayes_accuracy import fetch_corpus, split  # noqa: E402
from delivered_vs_original import train_database  # noqa: E402
from milterload import MilterProcess, stop_pid  # noqa: E402
from postfix_instance import PostfixInstance  # noqa: E402
from postfix_instance import destroy as destroy_postfix  # noqa: E402
from postfix_instance import make_instance as make_postfix  # noqa: E402
from sendmail_instance import HOSTNAME, SendmailInstance  # noqa: E402
from sendmail_instance import destroy as destroy_sendmail  # noqa: E402
from sendmail_instance import make_instance as make_sendmail  # noqa: E402

from spambridge import defaults, headers  # noqa: E402

TAG = "[SPAM]"
SENDER = "alice@example.net"
PF_RCPT = "bob@test.example"
SM_RCPTS = (f"root@{HOSTNAME}", "bob@elsewhere.example")  # local mailer, esmtp relay
DESTS = ("postfix", "sendmail", "relay")
MARK = b"FORGED"  # in every forged value of the variants
# what an MTA adds on its own and the comparison leaves out (their count beyond the sent one);
# a Return-Path the sender wrote is dropped by both (Sendmail writes its own on local delivery)
MTA_OWN = (b"received", b"return-path", b"delivered-to", b"x-original-to", b"message-id",
           b"date")
OURS = frozenset(n.lower().encode() for n in (headers.FLAG, headers.SCORE, headers.LEVEL,
                                              headers.STATUS, headers.CHECKER))
_FIELD = re.compile(rb"([^:\n]*):[^\n]*(?:\n[ \t][^\n]*)*")
_ID = re.compile(rb"\bid ([0-9A-Za-z]{6,})\b")

Field = tuple[bytes, bytes]  # (name as spelled, the whole field: name, colon, value, folds)


@dataclass
class Msg:
    name: str
    raw: bytes  # LF line ends; sent as CRLF
    variant: str = ""


# -- the messages ----------------------------------------------------------------------------

def sample(n: int) -> list[Msg]:
    """The first `n` (0: all) messages of the 20 % split in an order fixed by a hash of the
    names."""
    _, test = split()
    out = []
    for m in sorted(test, key=lambda m: hashlib.sha256(m.path.name.encode()).digest())[:n or None]:
        data = m.path.read_bytes().replace(b"\r\n", b"\n")
        if data.startswith(b"From "):  # the mbox line is no part of what an MTA is sent
            data = data.partition(b"\n")[2]
        out.append(Msg(f"{m.path.parent.name}/{m.path.name}", data))
    return out


def fields(head: bytes) -> list[Field]:
    return [(m[1].strip(), m[0]) for m in _FIELD.finditer(head) if m[0].strip()]


def parts(raw: bytes) -> tuple[list[Field], bytes]:
    """(header fields, body) of a message as it arrived: CRLF made LF, an mbox line gone."""
    raw = raw.replace(b"\r\n", b"\n")
    if raw.startswith(b"From "):
        raw = raw.partition(b"\n")[2]
    head, _, body = raw.partition(b"\n\n")
    return fields(head + b"\n"), body


def value(f: Field) -> bytes:
    return f[1].partition(b":")[2]


def lower(f: Field) -> bytes:
    return f[0].lower()


def x_spam(f: Field) -> bool:
    return lower(f).startswith(b"x-spam-")


def subject_form(f: Field) -> bool:
    return lower(f) == b"subject"


SUBJECT = b"Subject: Special offer for you"
WORDS_1000 = b"Subject: " + b" ".join(b"w%03d" % i for i in range(199))[:991]


def _forged(name: str, v: str = "YES FORGED") -> bytes:
    return f"{name}: {v}".encode()


STATUS_F = _forged("X-Spam-Status", "Yes, score=99.0 required=5.0 tests=FORGED")
# name → (fields on top, in the middle, at the end; the Subject field(s), none for none)
VARIANTS: dict[str, tuple[list[bytes], list[bytes], list[bytes], list[bytes]]] = {
    "plain": ([], [], [], [SUBJECT]),
    "forged-first": ([_forged("X-Spam-Flag"), STATUS_F], [], [], [SUBJECT]),
    "forged-middle": ([], [_forged("X-Spam-Flag"), STATUS_F], [], [SUBJECT]),
    "forged-end": ([], [], [_forged("X-Spam-Flag"), STATUS_F], [SUBJECT]),
    "forged-oddcase": ([], [_forged("x-spam-flag")], [_forged("X-SPAM-STATUS", "FORGED")],
                       [SUBJECT]),
    "forged-two-spellings": ([], [_forged("x-spam-flag")], [_forged("X-Spam-Flag")],
                             [SUBJECT]),
    "forged-copies": ([_forged("X-Spam-Flag")],
                      [_forged("X-Spam-Flag"), STATUS_F, _forged("X-Spam-Score", "99 FORGED"),
                       _forged("X-Spam-Level", "** FORGED")],
                      [_forged("X-Spam-Flag"), STATUS_F], [SUBJECT]),
    "forged-folded": ([], [b"X-Spam-Status: Yes, score=99.0 required=5.0\n\ttests=FORGED,\n"
                           b"\tFORGED_TOO autolearn=no",
                           b"X-Spam-Report:\n\t* 99 FORGED report\n\t* line two"],
                      [b"X-Spam-Flag:\n YES FORGED"], [SUBJECT]),
    "forged-empty": ([], [b"X-Spam-Flag:", b"X-Spam-Status: "], [b"X-Spam-Score:"], [SUBJECT]),
    "forged-other-names": ([], [_forged("X-Spam-Report", "FORGED report"),
                                _forged("X-Spam-Prev-Subject", "FORGED prev"),
                                _forged("X-Spam-Foo", "FORGED foo")],
                           [_forged("X-Spam-Virus", "FORGED")], [SUBJECT]),
    "forged-blank-before-colon": ([], [b"X-Spam-Flag : YES FORGED"],
                                  [b"X-Spam-Status\t: Yes, FORGED"], [SUBJECT]),
    "forged-8bit-value": ([], [b"X-Spam-Flag: YES FORGED caf\xc3\xa9 \xe9"], [], [SUBJECT]),
    "forged-long-line": ([], [b"X-Spam-Status: Yes, FORGED tests=" + b"A" * 1200], [],
                         [SUBJECT]),
    # the line ends the header in both MTAs: the forged field after it is body
    "forged-after-junk-line": ([], [], [b"this line has no colon", _forged("X-Spam-Flag")],
                               [SUBJECT]),
    "forged-flood": ([], [_forged("X-Spam-Flag", f"YES FORGED {i}")
                          for i in range(defaults.MAX_OWNED + 5)], [], [SUBJECT]),
    "two-subjects": ([], [], [b"Subject: the second Subject"], [b"Subject: the first Subject"]),
    "subject-lowercase": ([], [], [], [b"subject: Special offer for you"]),
    "subject-uppercase": ([], [], [], [b"SUBJECT: Special offer for you"]),
    "subject-folded": ([], [], [], [b"Subject: Special offer\n\tfor you"]),
    "subject-utf8": ([], [], [], ["Subject: Café spécial for you".encode()]),
    "subject-latin1": ([], [], [], [b"Subject: Caf\xe9 sp\xe9cial for you"]),
    "subject-encoded": ([], [], [], [b"Subject: =?UTF-8?Q?Caf=C3=A9?= special for you"]),
    "subject-1000": ([], [], [], [WORDS_1000]),
    "subject-1000-one-word": ([], [], [], [b"Subject: " + b"x" * 991]),
    "subject-empty": ([], [], [], [b"Subject:"]),
    "subject-2100": ([], [], [], [b"Subject: " + b" ".join(b"w%03d" % i for i in range(420))]),
    "subject-nul": ([], [], [], [b"Subject: Special\x00offer for you"]),
    "subject-cr": ([], [], [], [b"Subject: Special\roffer for you"]),
    "no-subject": ([], [], [], []),
    "no-date-from-message-id": ([], [_forged("X-Spam-Flag")], [], [SUBJECT]),
}
# the variant's base fields left out besides the Subject and X-Spam-* (the MTA adds its own)
WITHOUT = {"no-date-from-message-id": {b"date", b"from", b"message-id"}}


def variants(msgs: list[Msg]) -> list[Msg]:
    """Each VARIANTS form of the first spam and the first ham message of `msgs` (the whole
    split, so --sample does not change them): their own Subject and X-Spam-* fields taken
    off, the variant's put in."""
    out = []
    for m in [next(m for m in msgs if m.name.startswith(k)) for k in ("spam", "easy-ham")]:
        kind = "spam" if m.name.startswith("spam") else "ham"
        head, _, body = m.raw.partition(b"\n\n")
        for name, (top, middle, end, subject) in VARIANTS.items():
            drop = WITHOUT.get(name, set())
            base = [f[1] for f in fields(head + b"\n")
                    if not (x_spam(f) or subject_form(f) or lower(f) in drop)]
            mid = len(base) // 2
            head_fields = top + base[:mid] + middle + base[mid:] + subject + end
            out.append(Msg(f"{kind} {name}", b"\n".join(head_fields) + b"\n\n" + body, name))
    return out


# -- sending and collecting ------------------------------------------------------------------

@dataclass
class Sent:
    reply: str  # "250", or the refusal: "550 5.7.1 Message rejected as spam"
    qid: str = ""


def smtp_send(port: int, raw: bytes, rcpts: tuple[str, ...]) -> Sent:
    """One SMTP session; the reply to the data (the queue id of a 250)."""
    data = raw.replace(b"\n", b"\r\n")  # Sendmail refuses bare LF; both get the same bytes
    text: bytes | str
    try:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example.net",
                          timeout=120) as s:
            s.ehlo()
            s.mail(SENDER)
            for r in rcpts:
                s.rcpt(r)
            code, text = s.data(data)
    except smtplib.SMTPResponseException as e:
        code, text = e.smtp_code, e.smtp_error
    except (smtplib.SMTPException, OSError) as e:
        return Sent(f"no reply: {e}")
    t = text.decode(errors="replace") if isinstance(text, bytes) else text
    if code != 250:
        return Sent(f"{code} {' '.join(t.split())}")
    qid = re.search(r"queued as ([0-9A-Za-z]+)", t) or re.match(r"\S+ ([0-9A-Za-z]+)", t)
    return Sent("250", qid[1] if qid else "")


def send_all(port: int, msgs: list[Msg], rcpts: tuple[str, ...], threads: int = 2
             ) -> list[Sent]:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda m: smtp_send(port, m.raw, rcpts), msgs))


def queue_id(raw: bytes) -> str:
    """The queue id in the first Received field (the MTA's own)."""
    for f in parts(raw)[0]:
        if lower(f) == b"received":
            m = _ID.search(f[1].replace(b"\n", b" "))
            return m[1].decode() if m else ""
    return ""


def collect(dirs: dict[str, Path], want: dict[str, set[str]], timeout: float
            ) -> dict[str, dict[str, bytes]]:
    """dest → queue id → the bytes that arrived, waiting up to `timeout` for all of `want`;
    the files are removed, so the next pass finds its own."""
    got: dict[str, dict[str, bytes]] = {d: {} for d in dirs}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for d, path in dirs.items():
            for p in sorted(path.glob("*")) if path.is_dir() else ():
                if p.suffix == ".part" or not p.is_file():
                    continue
                raw = p.read_bytes()
                got[d][queue_id(raw)] = raw
                p.unlink()
        if all(want[d] <= set(got[d]) for d in dirs):
            break
        time.sleep(1)
    for d in dirs:
        if missing := want[d] - set(got[d]):
            print(f"  {d}: {len(missing)} not arrived within {timeout:.0f}s", file=sys.stderr)
    return got


# -- comparing -------------------------------------------------------------------------------

@dataclass
class Seen:
    """One arrived copy, as the comparison sees it."""

    kept: list[Field]  # the fields, less what the MTA added on its own (MTA_OWN)
    added: list[str]  # what the MTA added: "Received (top)"
    body: bytes


def seen(sent: bytes, arrived: bytes) -> Seen:
    sent_fields, _ = parts(sent)
    got, body = parts(arrived)
    sent_count = Counter(lower(f) for f in sent_fields if lower(f) != b"return-path")
    drop: set[int] = set()
    for name in MTA_OWN:
        extra = sum(lower(f) == name for f in got) - sent_count[name]
        for i, f in enumerate(got):
            if extra > 0 and lower(f) == name:
                drop.add(i)
                extra -= 1
    added = []
    for i in sorted(drop):
        if all(j in drop for j in range(i)):
            where = "top"
        elif all(j in drop or x_spam(got[j]) for j in range(i + 1, len(got))):
            where = "end"
        else:
            where = "middle"
        added.append(f"{got[i][0].decode('latin-1')} ({where})")
    return Seen([f for i, f in enumerate(got) if i not in drop], added, body)


def ours_ok(f: Field) -> bool:
    """Whether an X-Spam-* field is one the milter writes, with a value it writes."""
    v = b" ".join(value(f).split())
    name = lower(f)
    if name == b"x-spam-flag":
        return v == b"YES"
    if name == b"x-spam-status":
        return (v.startswith((b"Yes, score=", b"No, score=")) and b"engine=bayes" in v) or \
            v.startswith(b"No, unchecked=")
    if name == b"x-spam-score":
        return re.fullmatch(rb"-?\d+\.\d+", v) is not None
    if name == b"x-spam-level":
        return re.fullmatch(rb"\**", v) is not None
    if name == b"x-spam-checker-version":
        return v.startswith(b"spambridge ")
    return False


def unfold(v: bytes) -> bytes:
    return v.replace(b"\r\n", b"\n").replace(b"\n", b"").strip(b" \t")


def as_taken(dest: str, v: bytes) -> bytes:
    """A header value as the MTA takes it in, before any milter sees it: Postfix ends it at a
    NUL and makes a CR alone a blank; Sendmail drops a NUL (and refuses a CR alone)."""
    if dest == "postfix":
        return v.split(b"\0")[0].replace(b"\r", b" ")
    return v.replace(b"\0", b"")


def expected_subject(sent: list[Field], tagged: bool, dest: str) -> bytes | None:
    """The first Subject's value (unfolded) the milter means to leave: tagged by
    headers.subject_rewrite when the message is flagged, as the MTA took it otherwise;
    None: none."""
    first = next((f for f in sent if subject_form(f)), None)
    old = None if first is None else as_taken(dest, value(first).removeprefix(b" "))
    if tagged:
        new, _ = headers.subject_rewrite(TAG, old)
        if new is not None:
            return unfold(new.encode())
    return None if old is None else unfold(old)


def wrongs(msg: Msg, s: Seen, dest: str) -> list[str]:
    """What an admin or a user would see as wrong in one arrived copy."""
    sent, _ = parts(msg.raw)
    out = []
    spam = [f for f in s.kept if x_spam(f)]
    flood = msg.variant == "forged-flood"
    bad = [f for f in spam if not ours_ok(f)]
    if bad and (not flood or any(MARK not in f[1] for f in bad)):  # a flood's rest stays
        out.append("forged X-Spam-* delivered: " + ", ".join(
            sorted({f[0].decode("latin-1") for f in bad})))
    if doubled := [n for n in OURS if sum(1 for f in spam if lower(f) == n and ours_ok(f)) > 1]:
        out.append("ours doubled: " + b", ".join(sorted(doubled)).decode())
    for n in (b"x-spam-status", b"x-spam-checker-version"):
        if not any(lower(f) == n and ours_ok(f) for f in spam):
            out.append(f"ours missing: {n.decode()}")
    status = next((value(f) for f in spam if lower(f) == b"x-spam-status" and ours_ok(f)), b"")
    is_spam = status.strip().startswith(b"Yes,")
    flags = [f for f in spam if lower(f) == b"x-spam-flag"]
    if is_spam and not (flags and ours_ok(flags[0])):
        out.append("the first X-Spam-Flag is not ours" if flags else "ours missing: x-spam-flag")
    if not is_spam and flags and not flood:
        out.append("an X-Spam-Flag on mail we did not flag")
    subjects = [f for f in s.kept if subject_form(f)]
    want = expected_subject(sent, is_spam, dest)
    got = unfold(value(subjects[0])) if subjects else None
    if got != want and not broken_at_990(subjects, want):
        out.append(f"Subject {_short(got)} where {_short(want)} was meant")
    sent_subjects = [f for f in sent if subject_form(f)]
    if [f[0] for f in subjects] != [f[0] for f in sent_subjects] and not (
            not sent_subjects and [f[0] for f in subjects] == [b"Subject"]):
        out.append("Subject names " + b",".join(f[0] for f in subjects).decode("latin-1")
                   + " for " + b",".join(f[0] for f in sent_subjects).decode("latin-1"))
    if len(subjects) > max(1, len(sent_subjects)):
        out.append("a Subject added")
    return out


def broken_at_990(subjects: list[Field], want: bytes | None) -> bool:
    """Whether the first Subject is `want` with a line broken by Sendmail's SMTP mailers
    (L=990): its first 989 octets, "!", a line end, a blank, the rest."""
    return bool(subjects) and b"!\n " in subjects[0][1] and \
        unfold(value(subjects[0]).replace(b"!\n ", b"")) == want


def _short(v: bytes | None) -> str:
    if v is None:
        return "(none)"
    return repr(v[:40] + (b"..." if len(v) > 40 else b"") + (b" (%d)" % len(v)
                                                                if len(v) > 40 else b""))


def styles(msg: Msg, s: Seen, dest: str) -> list[str]:
    """Differences from what was sent that are the MTA's own (not ours, not wrong)."""
    sent, sent_body = parts(msg.raw)
    out = []
    spam_at = [i for i, f in enumerate(s.kept) if x_spam(f) and ours_ok(f)]
    if spam_at and spam_at != list(range(len(s.kept) - len(spam_at), len(s.kept))):
        out.append("ours not together at the end"
                   + (" (on top: a flood)" if msg.variant == "forged-flood" else ""))

    def rest(fs: list[Field]) -> list[bytes]:
        return [f[1] for f in fs if not (x_spam(f) or subject_form(f)
                                         or lower(f) == b"return-path")]

    a, b = rest(sent), rest(s.kept)
    if a != b:
        ca, cb = Counter(a), Counter(b)
        gone = {f.partition(b":")[0].decode("latin-1") for f in ca - cb}
        new = {f.partition(b":")[0].decode("latin-1") for f in cb - ca}
        if gone & new:
            out.append("rewritten: " + ",".join(sorted(gone & new)))
        if gone - new:
            out.append("dropped: " + ",".join(sorted(gone - new)))
        if new - gone:
            out.append("added: " + ",".join(sorted(new - gone)))
        if ca == cb:
            out.append("fields reordered")
    subjects = [f for f in s.kept if subject_form(f)]
    if subjects and b"!\n " in subjects[0][1]:
        out.append("Subject: a line over 990 octets broken with '!' (L=990)"
                   + (" as meant" if broken_at_990(subjects, expected_subject(
                       sent, any(lower(f) == b"x-spam-flag" for f in s.kept), dest)) else ""))
    sent_subject = next((value(f) for f in sent if subject_form(f)), b"")
    if as_taken(dest, sent_subject) != sent_subject:
        out.append("Subject: a NUL or a CR alone taken out before the milter saw it")
    if s.body != sent_body:
        out.append("body: " + body_change(sent_body, s.body))
    return out


def body_change(a: bytes, b: bytes) -> str:
    if a.rstrip(b"\n") == b.rstrip(b"\n"):
        return "line ends at its end"
    la, lb = a.split(b"\n"), b.split(b"\n")
    if any(len(x) > 990 for x in la) and b"!\n " in b:
        return "a line over 990 broken with '!'"
    if len(la) == len(lb):
        diff = [(x, y) for x, y in zip(la, lb, strict=True) if x != y]
        return f"{len(diff)} lines differ, first {diff[0][0][:30]!r} -> {diff[0][1][:30]!r}"
    return f"{len(la)} lines -> {len(lb)}"


def cross(a: Seen, b: Seen) -> str:
    """What first tells two arrived copies apart (less each MTA's own fields), or ""."""
    if a.kept == b.kept and a.body == b.body:
        return ""
    ours_a = [f for f in a.kept if x_spam(f)]
    ours_b = [f for f in b.kept if x_spam(f)]
    if ours_a != ours_b:
        if [lower(f) for f in ours_a] != [lower(f) for f in ours_b]:
            return "X-Spam-* names"
        diff = [lower(x).decode() for x, y in zip(ours_a, ours_b, strict=True) if x != y]
        return "X-Spam-* values: " + ",".join(diff)
    if [f for f in a.kept if subject_form(f)] != [f for f in b.kept if subject_form(f)]:
        return "Subject"
    if [lower(f) for f in a.kept] != [lower(f) for f in b.kept]:
        na, nb = Counter(lower(f) for f in a.kept), Counter(lower(f) for f in b.kept)
        if na == nb:
            return "field order"
        return "fields: " + ",".join(sorted(n.decode("latin-1") for n in (na - nb) + (nb - na)))
    names = sorted({lower(x).decode("latin-1") for x, y in zip(a.kept, b.kept, strict=True)
                    if x != y})
    if names:
        return "values: " + ",".join(names)
    return "body"


@dataclass
class Tally:
    """Counts by kind, with a few example message names each."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, name: str, shown: int) -> None:
        self.counts[kind] += 1
        got = self.examples.setdefault(kind, [])
        if len(got) < shown:
            got.append(name)

    def print(self, indent: str = "    ") -> None:
        for kind, n in self.counts.most_common():
            print(f"{indent}{n:4d}  {kind}   e.g. {'; '.join(self.examples[kind])}")
        if not self.counts:
            print(f"{indent}none")


# -- running ---------------------------------------------------------------------------------

@dataclass
class Rig:
    pf: PostfixInstance
    sm: SendmailInstance
    work: Path
    sm_socket: Path
    milters: list[MilterProcess] = field(default_factory=list)

    def start_milters(self, db: Path, policy: dict[str, object]) -> None:
        for label, sock in (("postfix", self.pf.milter_socket), ("sendmail", self.sm_socket)):
            self.milters.append(MilterProcess.start(self.work / f"milter-{label}", {
                "milter": {"socket": f"unix:{sock}", "engine": "bayes"},
                "bayes": {"db": str(db)},
                "policy": policy,
            }, str(sock)))

    def stop_milters(self) -> None:
        while self.milters:
            self.milters.pop().stop()


def run_pass(rig: Rig, msgs: list[Msg], label: str, timeout: float, shown: int,
             dump: Path | None) -> None:
    t0 = time.monotonic()
    pf_sent = send_all(rig.pf.port, msgs, (PF_RCPT,))
    sm_sent = send_all(rig.sm.port, msgs, SM_RCPTS)
    assert rig.sm.next_hop is not None
    dirs = {"postfix": rig.pf.mail / "inbox" / "new", "sendmail": rig.sm.mail,
            "relay": rig.sm.next_hop.directory}
    want = {"postfix": {s.qid for s in pf_sent if s.qid},
            "sendmail": {s.qid for s in sm_sent if s.qid},
            "relay": {s.qid for s in sm_sent if s.qid}}
    got = collect(dirs, want, timeout)
    print(f"\n=== {label}: {len(msgs)} messages, "
          f"{sum(s.reply == '250' for s in pf_sent)} taken by Postfix, "
          f"{sum(s.reply == '250' for s in sm_sent)} by Sendmail, "
          f"{time.monotonic() - t0:.0f}s", flush=True)

    replies = Tally()
    for m, a, b in zip(msgs, pf_sent, sm_sent, strict=True):
        if a.reply != b.reply:
            replies.add(f"Postfix {a.reply!r}, Sendmail {b.reply!r}", m.name, shown)
        elif a.reply != "250":
            replies.add(f"both {a.reply!r}", m.name, shown)
    carried = [sum(x_spam(f) for f in parts(m.raw)[0]) for m in msgs if not m.variant]
    print(f"  {sum(map(bool, carried))} corpus messages came with X-Spam-* fields of their own "
          f"({sum(carried)} fields): removed unless said under wrong")
    print("  refused (compared):")
    replies.print()

    added = {d: Counter[str]() for d in DESTS}
    wrong = {d: Tally() for d in DESTS}
    style = {d: Tally() for d in DESTS}
    across = {"postfix vs sendmail": Tally(), "sendmail vs relay": Tally()}
    by_variant: dict[str, dict[str, list[str]]] = {}
    for i, (m, a, b) in enumerate(zip(msgs, pf_sent, sm_sent, strict=True)):
        copies: dict[str, Seen] = {}
        for d, s in (("postfix", a), ("sendmail", b), ("relay", b)):
            raw = got[d].get(s.qid) if s.qid else None
            if raw is None:
                continue
            if dump is not None:
                (dump / label).mkdir(parents=True, exist_ok=True)
                (dump / label / f"{i:04d}.{d}.eml").write_bytes(raw)
            c = copies[d] = seen(m.raw, raw)
            added[d].update(c.added)
            w = wrongs(m, c, d)
            for x in w:
                wrong[d].add(x, m.name, shown)
            for x in styles(m, c, d):
                style[d].add(x, m.name, shown)
            if m.variant:
                by_variant.setdefault(m.name, {})[d] = w
        for title, (x, y) in (("postfix vs sendmail", ("postfix", "sendmail")),
                              ("sendmail vs relay", ("sendmail", "relay"))):
            if x in copies and y in copies and (why := cross(copies[x], copies[y])):
                across[title].add(why, m.name, shown)
    if dump is not None:
        (dump / label / "names.txt").write_text(
            "".join(f"{i:04d} {m.name}\n" for i, m in enumerate(msgs)))

    for d in DESTS:
        n = len(want[d] & set(got[d]))
        print(f"  {d}: {n} arrived; fields the MTA added (left out below):")
        for what, k in added[d].most_common():
            print(f"    {k:4d}  {what}")
        print(f"  {d}: wrong (an admin or a user would see it):")
        wrong[d].print()
        print(f"  {d}: the MTA's own style (vs what was sent):")
        style[d].print()
    for title, t in across.items():
        print(f"  {title}: what first tells the copies apart")
        t.print()
    if by_variant:
        print("  hostile variants (wrong, per copy):")
        for name, per in by_variant.items():
            line = "; ".join(f"{d}: {', '.join(w) or 'ok'}" for d, w in per.items())
            print(f"    {name}: {line}")


PROBE = """\
import json, os, sys, Milter
os.umask(0)  # Postfix's smtpd (user postfix) must connect to the socket
NAMES = ("j _ v {daemon_name} {daemon_addr} {daemon_port} {if_name} {if_addr} {client_addr} "
         "{client_name} {client_port} {client_ptr} {client_resolve} {client_connections} i "
         "{auth_type} {auth_authen} {auth_author} {auth_ssf} {tls_version} {cipher} "
         "{cipher_bits} {cert_subject} {cert_issuer} {verify} {mail_mailer} {mail_host} "
         "{mail_addr} {rcpt_mailer} {rcpt_host} {rcpt_addr} {msg_id} {ntries} b r s").split()
OUT = sys.argv[2]

class Probe(Milter.Base):
    def __init__(self):
        self.rec = []
    def _m(self, stage):
        got = {}
        for n in NAMES:
            try:
                v = self.getsymval(n)
            except Exception as e:
                v = "<%s>" % type(e).__name__
            if v is not None:
                got[n] = v
        self.rec.append([stage, got])
    def connect(self, host, family, addr):
        self._m("connect"); return Milter.CONTINUE
    def hello(self, h):
        self._m("helo"); return Milter.CONTINUE
    def envfrom(self, f, *a):
        self._m("mail"); return Milter.CONTINUE
    def envrcpt(self, t, *a):
        self._m("rcpt"); return Milter.CONTINUE
    @Milter.decode("bytes")
    def header(self, name, value):
        self.rec.append(["header", repr((name, value))]); return Milter.CONTINUE
    def eoh(self):
        self._m("eoh"); return Milter.CONTINUE
    def eom(self):
        self._m("eom")
        with open(OUT, "a") as f:
            f.write(json.dumps(self.rec) + "\\n")
        return Milter.ACCEPT

Milter.factory = Probe
Milter.runmilter("probe", sys.argv[1], 60)
"""

PROBE_MSG = (b"From: alice@example.net\nTo: bob@test.example\n"
             b"Subject:  two blanks\nX-Tab:\tafter a tab\nX-Folded: one\n\ttwo\n"
             b"X-Empty:\nx-lower: case\nX-8bit: caf\xc3\xa9\n\nbody\n")


def probe_macros(rig: Rig) -> None:
    """One message through each MTA to a probe milter: the macros and header values it got."""
    out = rig.work / "probe.jsonl"
    procs = []
    for sock in (rig.pf.milter_socket, rig.sm_socket):
        procs.append(subprocess.Popen([sys.executable, "-c", PROBE, f"unix:{sock}", str(out)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (rig.pf.milter_socket.exists()
                                                   and rig.sm_socket.exists()):
            time.sleep(0.1)
        print("\n=== macros and header values a milter gets (probe milter)")
        for label, port, rcpts in (("postfix", rig.pf.port, (PF_RCPT,)),
                                   ("sendmail", rig.sm.port, SM_RCPTS)):
            before = out.read_text().count("\n") if out.exists() else 0
            sent = smtp_send(port, PROBE_MSG, rcpts)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and (
                    not out.exists() or out.read_text().count("\n") == before):
                time.sleep(0.1)
            lines = out.read_text().splitlines() if out.exists() else []
            print(f"  {label} ({sent.reply}):")
            for stage, what in json.loads(lines[-1]) if len(lines) > before else []:
                print(f"    {stage:8s} {what}")
    finally:
        for p in procs:
            stop_pid(p)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sample", type=int, default=300, help="corpus messages (20 %% split)")
    ap.add_argument("--port", type=int, default=40400,
                    help="Postfix's smtpd; Sendmail's is +1, the next hop's +2")
    ap.add_argument("--show", type=int, default=3, help="example names per kind")
    ap.add_argument("--timeout", type=float, default=300, help="seconds to wait for delivery")
    ap.add_argument("--no-default-pass", action="store_true",
                    help="only the tag_only pass")
    ap.add_argument("--macros", action="store_true", help="also run the probe milter")
    ap.add_argument("--dump", type=Path, help="write every arrived copy here")
    args = ap.parse_args()

    fetch_corpus()
    msgs = sample(args.sample)
    msgs += variants(sample(0))
    work = Path(tempfile.mkdtemp(prefix="sb-mtadiff-"))
    sock_dir = work / "sm"  # no group- or world-writable directory on the path (Sendmail)
    sock_dir.mkdir(mode=0o700)
    db = work / "bayes.sqlite"
    pf: PostfixInstance | None = None
    sm: SendmailInstance | None = None
    rig: Rig | None = None
    try:
        t0 = time.monotonic()
        train_database(db, work)
        print(f"trained {db} in {time.monotonic() - t0:.0f}s; {len(msgs)} messages "
              f"({len(msgs) - len(VARIANTS) * 2} corpus, {len(VARIANTS) * 2} variants)",
              flush=True)
        pf = make_postfix(args.port)
        pf.postconf("-e", "enable_long_queue_ids=yes")  # one id per message over both passes
        pf.postfix("reload")
        sm = make_sendmail(f"local:{sock_dir / 'spambridge.sock'}", relay=True,
                           port=args.port + 1, next_hop_port=args.port + 2)
        rig = Rig(pf, sm, work, sock_dir / "spambridge.sock")
        if args.macros:
            probe_macros(rig)
        passes: list[tuple[str, dict[str, object]]] = [
            ("tag_only", {"subject_tag": TAG, "tag_only": True})]
        if not args.no_default_pass:
            passes.append(("default policy", {"subject_tag": TAG}))
        for label, policy in passes:
            rig.start_milters(db, policy)
            try:
                run_pass(rig, msgs, label, args.timeout, args.show, args.dump)
            finally:
                rig.stop_milters()
    finally:
        if rig is not None:
            rig.stop_milters()
        if sm is not None:
            destroy_sendmail(sm)
        if pf is not None:
            destroy_postfix(pf)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
