"""What Dovecot's "move to Junk" pipe hands `spambridge train`, against what was delivered and
what Dovecot stored: are they one message to `train` (one key, one token set)? A differential
over a deterministic sample of the SpamAssassin corpus and hand-made odd messages, through a
real Dovecot 2.3 with the contrib/dovecot IMAPSieve recipe, driven over IMAP.

Not a test (no assertions): it counts. Run as root (Dovecot switches to the mail user) from the
repository root, a few minutes:

    .venv/bin/python bench/dovecot_junk_pipe.py [--sample 300] [--back 10] [--store maildir|mbox]
                                                [--port 40500] [--show 3] [--only-odd] [--keep]

1. One private Dovecot (imap and lmtp on 127.0.0.1, `--port` and the next one), the user's
   mail in `--store` (Maildir, or mbox files: the format where Dovecot keeps its own state
   fields in the stored message), contrib/dovecot-2.3.conf and the contrib sieve scripts as
   shipped, as tests/integration/test_dovecot_imapsieve.py runs them. The pipe scripts keep
   their `spambridge train` line (this checkout's, `--db` in the work directory) with one
   change: the message on stdin is first written to a capture file, and `train` reads that
   file. So what is compared is exactly what the pipe was given, and it is trained for real.
2. Each message is delivered over LMTP (raw bytes, dot-stuffed: LMTP takes the line ends as
   they come), the odd ones also through dovecot-lda (the "deliver tool" Postfix's
   mailbox_command runs) and IMAP APPEND (a client moving mail between accounts). The file
   Dovecot stored is read right after each delivery.
3. Each delivered message is moved INBOX -> Junk with UID MOVE, one at a time (the pipe runs
   while the MOVE waits); then every k-th of them and all odd ones are moved Junk -> INBOX.
4. Per message, what `train` keys and learns (normalise.stripped, keys, tokenize, with the
   default config: no subject tag) is compared between (a) the bytes delivered, (b) the stored
   file as `train` reads it (spambridge.train.sources.read_path: a Maildir file, or the
   message an mbox adds), (c) what the pipe was given on the move to Junk, (d) what it was
   given on the move back. (c) vs (d) must agree, or the move back is learned as a new ham
   instead of moving the spam; (b) vs (c) must agree, or a nightly `train --spam` over the
   Junk folder learns what the pipe learned once more; (a) vs (b) differ by the delivery
   lines Dovecot writes on top (Return-Path, Delivered-To, Received), which `train` keys.
5. The database the pipes wrote: totals after each move (+1 spam; then -1 spam +1 ham), each
   message's key labelled as its last move says, and the token counts equal to those of a
   database trained in-process with the final class of each piped copy. Last, a nightly
   `train --spam` over the Junk folder and `--ham` over INBOX (each on a copy of the
   database) must find everything in them trained already.

On 2026-11-28 (Dovecot 2.3.19.1, Debian 12, 2 cores, --sample 600: 600 corpus messages and
20 odd ones delivered 3 ways, about 3 min per store):
* The pipe's copy is the stored one to `train` for all 660, Maildir and mbox: (b) vs (c) and
  (c) vs (d) same key and token set for every message. Dovecot pipes CRLF, and hides the
  state fields of its mbox files (Status, X-UID, X-Keywords, Content-Length, which it writes
  itself, dropping a message's own), neither of which train keys. Every move to Junk added
  one spam, every move back took one off spam and added one ham: 0 double learns, 0 left as spam, the token
  counts those of each piped copy learned once in its last class.
* (a) vs (b): the key differs for the 620 delivered over LMTP by the delivery lines Dovecot
  writes on top (dovecot-lda and APPEND add none), and for APPEND of the lone-CR message,
  whose CR imaplib sends as CRLF; token sets never.
* Before the fixes of that day, with --store mbox: the nightly `train --spam` over Junk said
  "Learned 10 of 584 messages (572 already trained, 2 not mail)" for 580 messages, and
  `--ham` over INBOX "Learned 5 of 83 (77 already trained, 1 not mail)" for 80: messages
  with ">From " lines (3 of the 600 corpus messages) learned again under another key, those
  with a body line "From <word> <date>" cut in two (Dovecot does not escape it; its
  Content-Length ends the message), and the "FOLDER INTERNAL DATA" message Dovecot writes
  into an emptied folder learned as mail. After them: 0 of 580 and 0 of 80.
* Not spambridge's: Dovecot 2.3 itself does not always keep such a "From <word> <date>"
  message whole in an mbox: as the last message of a file, a MOVE of it fails (SERVERBUG,
  "Cached message size larger than expected") or the copy in Junk, and the pipe's, ends at
  that line. Here they were delivered among others and kept whole.
"""

from __future__ import annotations

import argparse
import grp
import hashlib
import imaplib
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bayes_accuracy import DATA, fetch_corpus  # noqa: E402
from harness import python_for, running_dovecot  # noqa: E402

from spambridge.bayes import store  # noqa: E402
from spambridge.bayes.tokenizer import DEFAULT_LIMITS, tokenize  # noqa: E402
from spambridge.train.learn import Trainer  # noqa: E402
from spambridge.train.normalise import _MAILBOX_STATE, keys, stripped  # noqa: E402
from spambridge.train.sources import DEFAULT_MAX_SIZE, Item, read_path  # noqa: E402

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
SIEVEC = shutil.which("sievec") or "/usr/bin/sievec"
LDA = "/usr/lib/dovecot/dovecot-lda"
CONTRIB = ROOT / "contrib" / "dovecot"
MAIL_UID = 65534  # nobody, as the integration test
DB_GROUP = next((g for g in ("users", "mail", "daemon") if g in {e.gr_name for e in grp.getgrall()}),
                "users")
SENDER = "alice@example.org"
RCPT = "user@example.net"

# hand-made messages the corpus lacks (all LF unless said): name -> bytes
_HEAD = (b"From: Winner <prize@lottery.example>\nTo: user@example.net\n"
         b"Subject: You WON the prize\nMessage-ID: <%s@lottery.example>\n"
         b"Date: Wed, 25 Nov 2026 10:00:00 +0000\n")
_BODY = b"Claim your free casino prize now, click here!\n"


def _odd(name: str, head: bytes = b"", body: bytes = _BODY, top: bytes = b"") -> bytes:
    return top + (_HEAD % name.encode()) + head + b"\n" + body


ODD: dict[str, bytes] = {
    "crlf": _odd("crlf").replace(b"\n", b"\r\n"),
    "state-fields": _odd("state", b"Status: RO\nX-Status: A\nX-UID: 17\n"
                         b"X-Keywords: $Junk NonJunk\nContent-Length: 47\nLines: 1\n"),
    "lone-cr": _odd("lonecr", body=b"Claim your free\rcasino prize now,\r click here!\n"
                    b"second line\r\nthird line\n"),
    "8bit-headers": _odd("8bit", "X-Name: Jos\u00e9 M\u00fcller\n".encode()
                         + b"X-Latin1: caf\xe9 cr\xe8me\nComments: \xff\xfe raw\n"),
    "8bit-subject": _odd("8bitsubj").replace(b"Subject: You WON the prize",
                                             "Subject: Gewinn f\u00fcr Sie \u20ac".encode()),
    "long-header": _odd("long", b"X-Long: " + b" ".join(b"w%04d" % i for i in range(1500))
                        + b"\n"),
    "long-header-unbroken": _odd("longu", b"X-Blob: " + b"x" * 12000 + b"\n"),
    "no-final-newline": _odd("nonl", body=b"Claim your free casino prize now, click here!"),
    "no-final-newline-crlf": _odd("nonlcrlf", body=b"Claim your prize!\nNow").replace(
        b"\n", b"\r\n"),
    "from-line-in-body": _odd("frombody", body=b"Hello,\n\nFrom bob@example.org Thu Nov 26 "
                              b"02:58:17 2026\nFrom the desk of the CEO: claim your prize.\n"
                              b">From quoted already\n"),
    "quoted-from-in-body": _odd("gtfrom", body=b"Hello,\n>From the desk of the CEO.\n"
                                b">>From deeper\n"),
    "format-patch-attachment": _odd("patch", b"MIME-Version: 1.0\nContent-Type: multipart/"
                                    b"mixed; boundary=\"b1\"\n", body=b"--b1\nContent-Type: "
                                    b"text/plain\n\nSee the patch.\n--b1\nContent-Type: text/x-"
                                    b"patch\n\nFrom 3f2a9c1e Mon Sep 17 00:00:00 2001\nFrom: Dev "
                                    b"<dev@example.org>\nSubject: [PATCH] fix\n\n+fixed\n--b1--\n"),
    "mbox-from-on-top": b"From alice@example.org Thu Nov 26 02:58:17 2026\n" + _odd("mboxtop"),
    "trailing-blank-lines": _odd("blanks", body=_BODY + b"\n\n\n"),
    "dot-lines": _odd("dots", body=b"line\n.\n..\n.hidden\nend\n"),
    "no-body": _HEAD % b"nobody" + b"\n",
    "no-blank-line": _HEAD % b"noblank",
    "return-path-already": _odd("rp", top=b"Return-Path: <forged@example.com>\n"
                                b"Delivered-To: someone@example.com\n"),
    "nul-byte": _odd("nul", body=b"Claim your\x00 prize now\n"),
    "whitespace-line-in-head": _odd("wsline", b"X-A: 1\n \nX-B: 2\n"),
}


@dataclass
class Msg:
    name: str
    spam: bool
    raw: bytes  # as handed to LMTP / dovecot-lda
    via: str = "lmtp"
    stored: bytes | None = None  # the stored copy, as train reads it (None: not found)
    uid: int = 0  # in INBOX after delivery
    junk_uid: int = 0
    piped: dict[str, bytes] = field(default_factory=dict)  # "junk" / "back" -> pipe's stdin
    totals: dict[str, tuple[int, int]] = field(default_factory=dict)  # after each move
    back: bool = False


@dataclass
class Learned:
    msg: bytes
    key: bytes
    tokens: frozenset[str]


def learned(raw: bytes) -> Learned:
    """What `train` (default config, no subject tag) keys and learns of `raw`."""
    msg, _ = stripped(raw, b"", True)
    return Learned(msg, keys(msg)[0], frozenset(tokenize(msg, DEFAULT_LIMITS)))


def corpus(sample: int) -> list[Msg]:
    """The first `sample` corpus messages in a fixed order (a hash of the file names), their
    mbox "From " line off (not part of what an MTA hands Dovecot)."""
    paths = sorted(DATA.glob("*/*.txt"), key=lambda p: hashlib.sha256(p.name.encode()).digest())
    out = []
    for p in paths[:sample]:
        data = p.read_bytes()
        if data.startswith(b"From "):
            data = data.partition(b"\n")[2]
        out.append(Msg(str(p.relative_to(DATA)), p.parent.name.startswith("spam"), data))
    return out


# ------------------------------------------------------------------------------------------------
# the Dovecot


@dataclass
class Server:
    top: Path
    imap: int
    lmtp: int
    conf: Path
    db: Path
    capture: Path
    home: Path
    store: str

    def totals(self) -> tuple[int, int]:
        if not self.db.exists():
            return (0, 0)
        with closing(sqlite3.connect(self.db)) as c:
            spam, ham = c.execute("SELECT nspam, nham FROM totals").fetchone()
            return int(spam), int(ham)

    def labels(self) -> dict[bytes, str]:
        with closing(sqlite3.connect(self.db)) as c:
            return {bytes(k): v for k, v in c.execute("SELECT digest, label FROM messages")}

    def errors(self) -> list[str]:
        log = self.top / "dovecot.log"
        return [ln for ln in log.read_text(errors="replace").splitlines() if "Error:" in ln]

    def inbox_path(self) -> Path:
        return self.home / ("Maildir" if self.store == "maildir" else "mail/inbox")

    def junk_path(self) -> Path:
        return self.home / ("Maildir/.Junk" if self.store == "maildir" else "mail/Junk")


def configure(top: Path, port: int, store_kind: str) -> Server:
    sieve = top / "sieve"
    sieve.mkdir()
    capture = top / "capture"
    capture.mkdir()
    os.chown(capture, MAIL_UID, MAIL_UID)
    (capture / "current").write_text("none")
    python, path = python_for(top, MAIL_UID, MAIL_UID)
    db = top / "spambridge" / "bayes.sqlite"
    for f in (CONTRIB / "sieve").iterdir():
        text = f.read_text()
        if f.suffix == ".sh":
            # the shipped command, this checkout's, reading a copy of its stdin
            text, n = re.subn(
                r"(?m)^exec /usr/bin/spambridge train (.*)$",
                lambda m: (f"PYTHONPATH={path}; export PYTHONPATH\n"
                           f'f="{capture}/$(cat {capture}/current).$(basename "$0" .sh)"\n'
                           f'cat > "$f"\n'
                           f'exec {python} -m spambridge train --db {db} {m[1]} < "$f"'), text)
            assert n == 1, f.name
        (sieve / f.name).write_text(text)
        (sieve / f.name).chmod(0o755 if f.suffix == ".sh" else 0o644)
    recipe = (CONTRIB / "dovecot-2.3.conf").read_text()
    (top / "imapsieve.conf").write_text(recipe.replace("/etc/dovecot/sieve", str(sieve)))
    mail = top / "mail"
    mail.mkdir()
    os.chown(mail, MAIL_UID, MAIL_UID)
    home = mail / "user"
    db.parent.mkdir()
    os.chown(db.parent, 0, grp.getgrnam(DB_GROUP).gr_gid)
    db.parent.chmod(0o2770)
    (top / "users").write_text(f"user:{{PLAIN}}secret:{MAIL_UID}:{MAIL_UID}::{home}::\n")
    location = ("maildir:~/Maildir" if store_kind == "maildir"
                else "mbox:~/mail:INBOX=~/mail/inbox")
    conf = top / "dovecot.conf"
    conf.write_text(f"""\
base_dir = {top}/run
state_dir = {top}/state
protocols = imap lmtp
log_path = {top}/dovecot.log
ssl = no
first_valid_uid = 1
default_internal_user = root
default_login_user = dovenull
disable_plaintext_auth = no
auth_username_format = %Ln
mail_location = {location}
mail_access_groups = {DB_GROUP}
passdb {{
  driver = passwd-file
  args = {top}/users
}}
userdb {{
  driver = passwd-file
  args = {top}/users
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port + 1}
  }}
}}
service anvil {{
  chroot =
}}
!include {top}/imapsieve.conf
""")
    for s in ("report-spam.sieve", "report-ham.sieve"):
        subprocess.run([SIEVEC, "-c", str(conf), str(sieve / s)], check=True)
    return Server(top, port, port + 1, conf, db, capture, home, store_kind)


@contextmanager
def running(srv: Server) -> Iterator[None]:
    with running_dovecot(DOVECOT, srv.conf,
                         lambda: imaplib.IMAP4("127.0.0.1", srv.imap).shutdown(),
                         "Dovecot's IMAP listener"):
        yield


# ------------------------------------------------------------------------------------------------
# delivery


class Lmtp:
    """A plain LMTP client that sends the message's bytes as they are (smtplib makes every
    CR and LF a CRLF), dot-stuffed, with a CRLF added when the message has no line end last."""

    def __init__(self, port: int) -> None:
        self.s = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.f = self.s.makefile("rb")
        self.reply()
        self.cmd(b"LHLO mx.example.net")

    def reply(self) -> tuple[int, bytes]:
        lines = []
        while True:
            line = self.f.readline()
            if not line:
                raise ConnectionError("LMTP server closed")
            lines.append(line)
            if line[3:4] != b"-":
                return int(line[:3]), b"".join(lines)

    def cmd(self, line: bytes) -> tuple[int, bytes]:
        self.s.sendall(line + b"\r\n")
        return self.reply()

    def send(self, raw: bytes) -> tuple[int, bytes]:
        self.cmd(b"RSET")
        for c in (f"MAIL FROM:<{SENDER}>".encode(), f"RCPT TO:<{RCPT}>".encode(), b"DATA"):
            code, text = self.cmd(c)
            if code >= 400:
                return code, text
        body = re.sub(rb"(?m)^\.", b"..", raw)
        if not body.endswith(b"\n"):
            body += b"\r\n"
        self.s.sendall(body + b".\r\n")
        return self.reply()

    def close(self) -> None:
        self.cmd(b"QUIT")
        self.s.close()


def lda(srv: Server, raw: bytes) -> tuple[int, bytes]:
    r = subprocess.run([LDA, "-c", str(srv.conf), "-d", "user", "-f", SENDER], input=raw,
                       capture_output=True, timeout=60, check=False)
    return r.returncode, r.stderr


class Stored:
    """What each delivery added to INBOX, as train reads it."""

    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.seen: set[str] = set()
        self.size = 0

    def new(self) -> bytes | None:
        inbox = self.srv.inbox_path()
        if self.srv.store == "maildir":
            files = [p for d in ("new", "cur") if (inbox / d).is_dir()
                     for p in (inbox / d).iterdir() if p.name.split(":")[0] not in self.seen]
            self.seen.update(p.name.split(":")[0] for p in files)
            if len(files) != 1:
                print(f"  {len(files)} new files after one delivery", file=sys.stderr)
                return None
            items = list(read_path(str(files[0]), DEFAULT_MAX_SIZE))
        else:
            data = inbox.read_bytes() if inbox.exists() else b""
            chunk, self.size = data[self.size:], len(data)
            tmp = self.srv.top / "chunk.mbox"
            tmp.write_bytes(chunk)
            items = list(read_path(str(tmp), DEFAULT_MAX_SIZE, mbox=True))
        return one(items)


def one(items: list[Item]) -> bytes | None:
    if len(items) != 1 or items[0].data is None:
        print(f"  stored copy read as {len(items)} message(s)"
              + (f": {items[0].problem}" if items else ""), file=sys.stderr)
        return None
    return items[0].data


# ------------------------------------------------------------------------------------------------
# IMAP


class Client:
    def __init__(self, port: int) -> None:
        self.m = imaplib.IMAP4("127.0.0.1", port)
        self.m.login("user", "secret")
        for box in ("Junk",):
            self.m.create(box)

    def uids(self, box: str) -> list[int]:
        self.m.select(box)
        typ, data = self.m.uid("SEARCH", "ALL")
        assert typ == "OK", data
        return sorted(int(u) for u in data[0].split())

    def move(self, src: str, uid: int, dst: str) -> int:
        self.m.select(src)
        self.m.untagged_responses.pop("COPYUID", None)
        typ, resp = self.m.uid("MOVE", str(uid), dst)
        if typ != "OK":
            raise RuntimeError(f"MOVE {uid} {src} -> {dst}: {resp}")
        return int(self.m.untagged_responses.pop("COPYUID")[-1].split()[-1])

    def close(self) -> None:
        self.m.logout()


def moved(srv: Server, c: Client, m: Msg, src: str, dst: str, what: str) -> int:
    """MOVE `m` from `src` to `dst`, the pipe's copy kept as m.piped[what]."""
    tag = f"{hashlib.sha256(m.name.encode()).hexdigest()[:16]}-{what}"
    (srv.capture / "current").write_text(tag)
    uid = m.uid if src == "INBOX" else m.junk_uid
    new = c.move(src, uid, dst)
    script = "spambridge-learn-spam" if dst == "Junk" else "spambridge-learn-ham"
    f = srv.capture / f"{tag}.{script}"
    if f.exists():
        m.piped[what] = f.read_bytes()
    m.totals[what] = srv.totals()
    return new


# ------------------------------------------------------------------------------------------------
# comparison


@dataclass
class Tally:
    compared: int = 0
    key: Counter[str] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)
    bytes_differ: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, name: str, a: bytes, b: bytes, shown: int) -> None:
        self.compared += 1
        la, lb = learned(a), learned(b)
        self.bytes_differ += a != b
        if la.key == lb.key and la.tokens == lb.tokens:
            return
        why = how_differ(la.msg, lb.msg, la.tokens, lb.tokens)
        if la.key != lb.key:
            self.key[why] += 1
        if la.tokens != lb.tokens:
            self.tokens[why] += 1
        got = self.examples.setdefault(why, [])
        if len(got) < shown:
            got.append(name)


_FIELD = re.compile(rb"([^:\n]*):[^\n]*(?:\n[ \t][^\n]*)*\n?")


def how_differ(a: bytes, b: bytes, ta: frozenset[str], tb: frozenset[str]) -> str:
    """The fields only one of two normalised messages has (not the mailbox state fields,
    which keys() leaves out), or "body"/"same bytes"."""
    if a == b:
        return "same bytes"
    ha, _, ba = a.partition(b"\n\n")
    hb, _, bb = b.partition(b"\n\n")
    ha, hb = _MAILBOX_STATE.sub(b"", ha + b"\n"), _MAILBOX_STATE.sub(b"", hb + b"\n")
    fa = Counter(m[0] for m in _FIELD.finditer(ha) if m[0])
    fb = Counter(m[0] for m in _FIELD.finditer(hb) if m[0])
    names = sorted({f.split(b":")[0].strip().lower().decode("latin-1")
                    for f in (fa - fb) + (fb - fa)})
    if names:
        return "header:" + ",".join(names)
    return "body" if ba != bb else "header (same fields, other bytes)"


def report(title: str, t: Tally) -> None:
    print(f"{title}: {t.compared} compared ({t.bytes_differ} differ in bytes); key differs "
          f"for {sum(t.key.values())}, token set for {sum(t.tokens.values())}")
    for why in sorted(set(t.key) | set(t.tokens), key=lambda w: -(t.key[w] + t.tokens[w])):
        print(f"  {why}: key {t.key[why]}, tokens {t.tokens[why]}   e.g. "
              f"{', '.join(t.examples.get(why, []))}")


def expected_tokens(msgs: list[Msg], work: Path) -> tuple[tuple[int, int], dict[str, tuple]]:
    """A database trained in-process with each piped copy's final class (the move back's
    copy as ham, else the move to Junk's as spam): its totals and token counts."""
    db = work / "expected.sqlite"
    writer = store.SqliteWriter(str(db))
    try:
        trainer = Trainer(writer, "spam")
        for m in msgs:
            if m.back and "back" in m.piped:
                trainer.add(Item(m.name, m.piped["back"]), "ham")
            elif "junk" in m.piped:
                trainer.add(Item(m.name, m.piped["junk"]), "spam")
        trainer.flush()
    finally:
        writer.close()
    return token_table(db)


def token_table(db: Path) -> tuple[tuple[int, int], dict[str, tuple]]:
    with closing(sqlite3.connect(db)) as c:
        totals = c.execute("SELECT nspam, nham FROM totals").fetchone()
        return (int(totals[0]), int(totals[1])), {
            t: (s, h) for t, s, h in c.execute("SELECT token, spam, ham FROM tokens")
            if s or h}


def nightly(srv: Server, work: Path, label: str, folder: Path) -> str:
    """`train` over a folder, as an admin's cron job, on a copy of the db."""
    copy = work / "nightly.sqlite"
    copy.unlink(missing_ok=True)
    with closing(sqlite3.connect(srv.db)) as src, closing(sqlite3.connect(copy)) as dst:
        src.backup(dst)
    r = subprocess.run([sys.executable, "-m", "spambridge", "train", "--db", str(copy),
                        label, str(folder)], capture_output=True, text=True,
                       timeout=300, check=False, cwd=ROOT)
    return (r.stdout.splitlines() or [""])[0] + (f" [stderr: {r.stderr.strip()}]"
                                                  if r.stderr.strip() else "")


# ------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sample", type=int, default=300, help="corpus messages")
    ap.add_argument("--back", type=int, default=10,
                    help="move every k-th corpus message back to INBOX (odd ones: all)")
    ap.add_argument("--store", choices=("maildir", "mbox"), default="maildir")
    ap.add_argument("--port", type=int, default=40500, help="IMAP; LMTP on the next one")
    ap.add_argument("--show", type=int, default=3, help="example names per cause")
    ap.add_argument("--only-odd", action="store_true", help="the hand-made messages alone")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    fetch_corpus()
    msgs = [] if args.only_odd else corpus(args.sample)
    for i, m in enumerate(msgs):
        m.back = i % args.back == 0
    for name, raw in ODD.items():
        for via in ("lmtp", "lda", "append"):
            # back to INBOX those LMTP delivered; the others stay, for the nightly train. A
            # Message-ID of each one's own: dovecot-lda and APPEND add no delivery lines, so
            # their copies would be one message to train
            own = raw.replace(b"@lottery.example>", f".{via}@lottery.example>".encode(), 1)
            msgs.append(Msg(f"odd:{name} [{via}]", True, own, via, back=via == "lmtp"))
    # outside /root and /tmp's private dirs: the mail user must reach it
    top = Path(tempfile.mkdtemp(prefix="sb-junkpipe-"))
    top.chmod(0o755)
    t0 = time.monotonic()
    try:
        srv = configure(top, args.port, args.store)
        with running(srv):
            run_moves(srv, msgs)
            print(f"delivered and moved {len(msgs)} messages in {time.monotonic() - t0:.0f}s "
                  f"({args.store})", flush=True)
            night = [f"train {label} over {folder.name}: {nightly(srv, top, label, folder)}"
                     for label, folder in (("--spam", srv.junk_path()),
                                           ("--ham", srv.inbox_path()))]
            errors = srv.errors()
            labels = srv.labels()
            final = token_table(srv.db)
        summarise(msgs, labels, final, expected_tokens(msgs, top), night, errors, args.show)
    finally:
        if args.keep:
            print(f"kept {top}")
        else:
            shutil.rmtree(top, ignore_errors=True)
    return 0


def run_moves(srv: Server, msgs: list[Msg]) -> None:
    stored = Stored(srv)
    lm = Lmtp(srv.lmtp)
    c = Client(srv.imap)
    delivered: list[Msg] = []
    try:
        for m in msgs:
            if m.via == "append":  # an IMAP client's APPEND (a move between accounts)
                typ, resp = c.m.append("INBOX", None, None, m.raw)
                code, text = (0 if typ == "OK" else 1), resp
            else:
                code, text = lm.send(m.raw) if m.via == "lmtp" else lda(srv, m.raw)
            if code != (250 if m.via == "lmtp" else 0):
                print(f"  {m.name}: not delivered: {code} {text!r}", file=sys.stderr)
                continue
            m.stored = stored.new()
            delivered.append(m)
    finally:
        lm.close()
    try:
        uids = c.uids("INBOX")
        if len(uids) != len(delivered):
            raise RuntimeError(f"{len(uids)} in INBOX, {len(delivered)} delivered")
        for m, uid in zip(delivered, uids, strict=True):
            m.uid = uid
        for m in delivered:
            m.junk_uid = moved(srv, c, m, "INBOX", "Junk", "junk")
        for m in delivered:
            if m.back:
                moved(srv, c, m, "Junk", "INBOX", "back")
    finally:
        c.close()


def summarise(msgs: list[Msg], labels: dict[bytes, str],
              final: tuple[tuple[int, int], dict[str, tuple]],
              expected: tuple[tuple[int, int], dict[str, tuple]], night: list[str],
              errors: list[str], shown: int) -> None:
    ab, bc, ac, cd, bd = Tally(), Tally(), Tally(), Tally(), Tally()
    no_pipe: list[str] = []
    bad_totals: list[str] = []
    bad_label: list[str] = []
    prev = (0, 0)
    delivered = [m for m in msgs if m.uid]
    for m in delivered:  # the moves to Junk, in order
        if "junk" not in m.piped:
            no_pipe.append(f"{m.name} (to Junk)")
        got = m.totals.get("junk")
        if got != (prev[0] + 1, prev[1]):
            bad_totals.append(f"{m.name} to Junk: {prev} -> {got}")
        prev = got or prev
    for m in delivered:  # the moves back
        if not m.back:
            continue
        if "back" not in m.piped:
            no_pipe.append(f"{m.name} (back)")
        got = m.totals.get("back")
        if got != (prev[0] - 1, prev[1] + 1):
            bad_totals.append(f"{m.name} back: {prev} -> {got}")
        prev = got or prev
    for m in delivered:
        if m.stored is not None:
            ab.add(m.name, m.raw, m.stored, shown)
        if "junk" not in m.piped:
            continue
        c = m.piped["junk"]
        ac.add(m.name, m.raw, c, shown)
        if m.stored is not None:
            bc.add(m.name, m.stored, c, shown)
        want = "ham" if m.back else "spam"
        key = learned(c).key
        if labels.get(key) != want:
            bad_label.append(f"{m.name}: {labels.get(key)} (want {want})")
        if m.back and "back" in m.piped:
            cd.add(m.name, c, m.piped["back"], shown)
            if m.stored is not None:
                bd.add(m.name, m.stored, m.piped["back"], shown)
    odd = [m for m in delivered if m.name.startswith("odd:")]
    print(f"\n{len(delivered)} of {len(msgs)} delivered ({len(odd)} odd ones), "
          f"{sum(1 for m in delivered if 'junk' in m.piped)} piped on the move to Junk, "
          f"{sum(1 for m in delivered if 'back' in m.piped)} of "
          f"{sum(1 for m in delivered if m.back)} on the move back\n")
    report("(a) delivered vs (b) stored", ab)
    report("(b) stored vs (c) piped to Junk", bc)
    report("(a) delivered vs (c) piped to Junk", ac)
    report("(c) piped to Junk vs (d) piped back", cd)
    report("(b) stored vs (d) piped back", bd)
    print("\nodd messages, per pair (K: key differs, T: token set differs, b: bytes differ):")
    for m in odd:
        marks = []
        for pair, x, y in (("ab", m.raw, m.stored), ("bc", m.stored, m.piped.get("junk")),
                           ("cd", m.piped.get("junk"), m.piped.get("back"))):
            if x is None or y is None:
                marks.append(f"{pair}:-")
                continue
            lx, ly = learned(x), learned(y)
            mark = (("K" if lx.key != ly.key else "") + ("T" if lx.tokens != ly.tokens else "")
                    + ("b" if x != y else ""))
            marks.append(f"{pair}:{mark or '='}")
        print(f"  {m.name}: {' '.join(marks)}")
    print(f"\ndatabase after all moves: totals {final[0]}, expected {expected[0]}; token "
          f"counts {'equal to' if final[1] == expected[1] else 'DIFFERENT from'} a database "
          f"trained in-process with each piped copy's final class"
          + ("" if final[1] == expected[1] else
             f" ({len(set(final[1].items()) ^ set(expected[1].items()))} tokens differ)"))
    print(f"moves whose totals were not +1 spam (to Junk) / -1 spam +1 ham (back): "
          f"{len(bad_totals)}")
    for line in bad_totals[:10]:
        print(f"  {line}")
    print(f"messages not labelled as their last move says: {len(bad_label)}")
    for line in bad_label[:10]:
        print(f"  {line}")
    print(f"moves with no piped copy: {len(no_pipe)} {no_pipe[:10]}")
    print("nightly, each on a copy of the database (everything found already trained?):")
    for line in night:
        print(f"  {line}")
    print(f"Dovecot log errors: {len(errors)}")
    for line in errors[:10]:
        print(f"  {line}")


if __name__ == "__main__":
    raise SystemExit(main())
