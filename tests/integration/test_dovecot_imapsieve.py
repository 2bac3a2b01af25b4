"""contrib/dovecot end to end: a real Dovecot 2.3 IMAP server with IMAPSieve, configured with
contrib/dovecot/dovecot-2.3.conf and the contrib sieve and pipe scripts (paths changed to a
temporary directory, the pipe calling this checkout's `spambridge train --db ...`), driven over
IMAP as a mail client does. Moving a message into Junk must teach the database spam, moving it
out of Junk ham, under the README's permission advice (the mail user, not the database's owner,
writes it through a group, a setgid 2770 directory and a 0660 file); and a pipe that fails or is
killed must never fail the user's MOVE."""

from __future__ import annotations

import grp
import imaplib
import os
import re
import shutil
import smtplib
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import dovecot_conf, free_port, python_for, running_dovecot

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
SIEVEC = shutil.which("sievec") or "/usr/bin/sievec"
IMAP = "/usr/lib/dovecot/imap"
LDA = "/usr/lib/dovecot/dovecot-lda"
IMAPSIEVE = "/usr/lib/dovecot/modules/sieve/lib90_sieve_imapsieve_plugin.so"
CONTRIB = Path(__file__).resolve().parents[2] / "contrib" / "dovecot"
MAIL_UID = 65534  # nobody: the mail user, who does not own the database
# the database's group, which the mail user joins through Dovecot's mail_access_groups (the
# README's advice, system or virtual users): one every Debian system has, other than nobody's own
DB_GROUP = next((g for g in ("users", "mail", "daemon") if g in {e.gr_name for e in grp.getgrall()}),
                "users")

pytestmark = [
    pytest.mark.skipif(not all(os.path.exists(p) for p in (DOVECOT, SIEVEC, IMAP, IMAPSIEVE)),
                       reason="Dovecot's IMAP server and Pigeonhole are not installed "
                              "(apt-get install dovecot-imapd dovecot-sieve; scripts/setup --test)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="Dovecot switches to the mail user: needs root"),
]


def msg(n: int, spam: bool = True) -> bytes:
    if spam:
        return (f"From: Winner <prize@lottery.example>\r\nTo: user@example.net\r\n"
                f"Subject: You WON prize {n}\r\nMessage-ID: <spam{n}@lottery.example>\r\n"
                f"Date: Wed, 25 Nov 2026 10:00:00 +0000\r\n\r\n"
                f"Claim your free casino prize {n} now, click here!\r\n").encode()
    return (f"From: Colleague <c@example.org>\r\nTo: user@example.net\r\nSubject: budget {n}\r\n"
            f"Message-ID: <ham{n}@example.org>\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\n\r\n"
            f"The meeting agenda and the budget draft, version {n}.\r\n").encode()


def pipe_python(top: Path) -> tuple[str, str]:
    """An interpreter the mail user (nobody) can run, with this checkout's spambridge."""
    return python_for(top, MAIL_UID, MAIL_UID)


@dataclass
class Server:
    port: int
    top: Path
    db: Path
    log: Path

    def totals(self) -> tuple[int, int]:
        """(spam, ham) learned, as the milter reads them."""
        with closing(sqlite3.connect(self.db)) as c:
            spam, ham = c.execute("SELECT nspam, nham FROM totals").fetchone()
            return int(spam), int(ham)

    def labels(self) -> list[str]:
        with closing(sqlite3.connect(self.db)) as c:
            return sorted(r[0] for r in c.execute("SELECT label FROM messages"))

    def tokens(self) -> dict[str, tuple[int, int]]:
        """Each token's (spam, ham) counts."""
        with closing(sqlite3.connect(self.db)) as c:
            return {t: (s, h) for t, s, h in c.execute("SELECT token, spam, ham FROM tokens")}

    def errors(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if "Error:" in line]


def start(top: Path, extra: str = "") -> Generator[Server, None, None]:
    """Dovecot (imap only) in the foreground on 127.0.0.1 with the contrib IMAPSieve recipe;
    stopped by its PID."""
    sieve = top / "sieve"
    sieve.mkdir()
    python, path = pipe_python(top)
    db = top / "spambridge" / "bayes.sqlite"
    for f in (CONTRIB / "sieve").iterdir():
        text = f.read_text()
        if f.suffix == ".sh":
            # the shipped command, with this checkout instead of /usr/bin/spambridge
            text, n = re.subn(r"(?m)^exec /usr/bin/spambridge train ",
                              f"PYTHONPATH={path}; export PYTHONPATH\n"
                              f"exec {python} -m spambridge train --db {db} ", text)
            assert n == 1, f"{f.name}: no `exec /usr/bin/spambridge train` line"
        (sieve / f.name).write_text(text)
        (sieve / f.name).chmod(0o755 if f.suffix == ".sh" else 0o644)
    recipe = (CONTRIB / "dovecot-2.3.conf").read_text()
    assert "/etc/dovecot/sieve" in recipe
    (top / "imapsieve.conf").write_text(recipe.replace("/etc/dovecot/sieve", str(sieve)))
    mail = top / "mail"
    mail.mkdir()
    os.chown(mail, MAIL_UID, MAIL_UID)
    # the README's permissions: the database's directory setgid 2770 in its group, which the
    # mail user is given; the pipe creates the database itself (0660, the directory's group)
    db.parent.mkdir()
    os.chown(db.parent, 0, grp.getgrnam(DB_GROUP).gr_gid)
    db.parent.chmod(0o2770)
    # two users: one message delivered to both is one message to train
    (top / "users").write_text("".join(f"{u}:{{PLAIN}}secret:{MAIL_UID}:{MAIL_UID}::{mail}/{u}::\n"
                                       for u in ("user", "user2")))
    port = free_port()
    conf = top / "dovecot.conf"
    conf.write_text(dovecot_conf(top, "imap", port, f"""
disable_plaintext_auth = no
mail_location = maildir:~/Maildir
default_login_user = dovenull
mail_access_groups = {DB_GROUP}
""", f"{extra}\n!include {top}/imapsieve.conf\n", users=True))
    # the README's `sievec` step: the mail user cannot write the compiled scripts next to them
    for s in ("report-spam.sieve", "report-ham.sieve"):
        subprocess.run([SIEVEC, "-c", str(conf), str(sieve / s)], check=True)
    with running_dovecot(DOVECOT, conf, lambda: imaplib.IMAP4("127.0.0.1", port).shutdown(),
                         "Dovecot's IMAP listener"):
        yield Server(port, top, db, top / "dovecot.log")


@pytest.fixture
def dovecot() -> Iterator[Callable[[str], Server]]:
    """Starts one Dovecot with the given extra settings; stops it and removes its files."""
    # outside pytest's 0700 directories: the mail user (nobody) must reach the pipe scripts
    top = Path(tempfile.mkdtemp(prefix="spambridge-imapsieve-"))
    top.chmod(0o755)
    running: list[Generator[Server, None, None]] = []

    def run(extra: str = "") -> Server:
        gen = start(top, extra)
        running.append(gen)
        return next(gen)
    try:
        yield run
    finally:
        for gen in running:
            gen.close()
        shutil.rmtree(top, ignore_errors=True)


class Client:
    """An IMAP client moving mail as users do."""

    def __init__(self, port: int, user: str = "user") -> None:
        self.m = imaplib.IMAP4("127.0.0.1", port)
        assert self.m.login(user, "secret")[0] == "OK"
        for box in ("Junk", "Trash"):
            assert self.m.create(box)[0] == "OK"

    def append(self, box: str, data: bytes) -> int:
        typ, resp = self.m.append(box, None, None, data)
        assert typ == "OK", resp
        return int(re.search(rb"APPENDUID \d+ (\d+)", resp[0]).group(1))

    def move(self, src: str, uid: int, dst: str, *, copy: bool = False) -> tuple[int, float]:
        """MOVE, or COPY + \\Deleted + EXPUNGE as clients without MOVE do; the new UID and how
        long the user waited for it."""
        assert self.m.select(src)[0] == "OK"
        self.m.untagged_responses.pop("COPYUID", None)
        t = time.monotonic()
        if copy:
            assert self.m.uid("COPY", str(uid), dst)[0] == "OK"
            assert self.m.uid("STORE", str(uid), "+FLAGS.SILENT", r"(\Deleted)")[0] == "OK"
            assert self.m.expunge()[0] == "OK"
        else:
            typ, resp = self.m.uid("MOVE", str(uid), dst)
            assert typ == "OK", resp
        took = time.monotonic() - t
        return int(self.m.untagged_responses.pop("COPYUID")[-1].split()[-1]), took

    def count(self, box: str) -> int:
        typ, data = self.m.select(box, readonly=True)
        assert typ == "OK", data
        return int(data[0])

    def close(self) -> None:
        self.m.logout()


def test_moving_mail_into_and_out_of_junk_trains_the_database(
        dovecot: Callable[[str], Server]) -> None:
    srv = dovecot("")
    c = Client(srv.port)
    try:
        spam = c.append("INBOX", msg(1))
        assert not srv.db.exists()
        spam, took = c.move("INBOX", spam, "Junk")
        assert srv.totals() == (1, 0)
        assert took < 5, f"the MOVE waited {took:.2f}s for the pipe"
        # created by the mail user's pipe, as the README says: 0660 in the directory's group
        st = srv.db.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (
            MAIL_UID, grp.getgrnam(DB_GROUP).gr_gid, 0o660)

        # mail put straight into Junk (APPEND) is not a user's verdict, moving it out is
        ham = c.append("Junk", msg(2, spam=False))
        assert srv.totals() == (1, 0)
        ham, _ = c.move("Junk", ham, "INBOX")
        assert srv.totals() == (1, 1)

        # a mistake undone: the spam moved back out of Junk is moved to the ham side
        spam, _ = c.move("Junk", spam, "INBOX")
        assert (srv.totals(), srv.labels()) == ((0, 2), ["ham", "ham"])
        # ... and back in by a client without MOVE (COPY, \Deleted, EXPUNGE)
        spam, _ = c.move("INBOX", spam, "Junk", copy=True)
        assert (srv.totals(), srv.labels()) == ((1, 1), ["ham", "spam"])
        assert c.count("INBOX") == 1 and c.count("Junk") == 1

        # learned once: into Junk again (via Trash) changes nothing
        spam, _ = c.move("Junk", spam, "Trash")  # deleting spam does not make it ham
        assert srv.totals() == (1, 1)
        spam, _ = c.move("Trash", spam, "Junk")
        assert srv.totals() == (1, 1)
        # a copy within Junk runs both scripts: it must stay spam
        c.move("Junk", spam, "Junk")
        assert (srv.totals(), srv.labels()) == ((1, 1), ["ham", "spam"])
        # mail not touching Junk is left alone
        other = c.append("INBOX", msg(3, spam=False))
        c.move("INBOX", other, "Trash")
        assert srv.totals() == (1, 1)
    finally:
        c.close()
    # the recipe as shipped runs cleanly: no sieve, pipe or permission error
    assert srv.errors() == []


def test_spam_moved_to_another_trash_or_kept_inside_junk_is_not_learned_as_ham(
        dovecot: Callable[[str], Server]) -> None:
    """report-ham.sieve knew one trash, `Trash`: spam deleted by Outlook (into `Deleted
    Items`) or Apple Mail (`Deleted Messages`), or kept in a folder inside Junk, was
    unlearned as spam and learned as ham, silently."""
    srv = dovecot("")
    c = Client(srv.port)
    try:
        boxes = ("Deleted Items", "Deleted Messages", "Junk.Old")
        for box in boxes:
            assert c.m.create(f'"{box}"')[0] == "OK"
        spam = c.append("INBOX", msg(1))
        spam, _ = c.move("INBOX", spam, "Junk")
        assert srv.totals() == (1, 0)
        for box in boxes:
            spam, _ = c.move("Junk", spam, f'"{box}"')
            assert (box, srv.totals()) == (box, (1, 0))
            spam, _ = c.move(f'"{box}"', spam, "Junk")
        # any other folder is the user saying it was ham
        assert c.m.create("Work")[0] == "OK"
        c.move("Junk", spam, "Work")
        assert srv.totals() == (0, 1)
    finally:
        c.close()
    assert srv.errors() == []


def test_a_message_over_max_size_moved_into_junk_is_skipped_with_one_log_line(
        dovecot: Callable[[str], Server]) -> None:
    """Over `train`'s --max-size (500k, as sa-learn): the pipe read 500 KB of it and exited 0
    (a skip), and every such move logged "write(program stdin) failed: Broken pipe" and
    "failed to pipe message", while nothing said "too large" (the scripts pass --quiet)."""
    srv = dovecot("")
    c = Client(srv.port)
    try:
        big = msg(1) + b"Claim your free casino prize now, click here!\r\n" * 15_000  # 700 KB
        c.move("INBOX", c.append("INBOX", big), "Junk")
        assert c.count("Junk") == 1
    finally:
        c.close()
    assert not srv.db.exists() or srv.totals() == (0, 0)
    errors = srv.errors()
    assert len(errors) == 1, errors
    assert errors[0].endswith("spambridge train: <stdin>: too large (over --max-size, 512000 "
                              "bytes): not learned"), errors


def test_a_failing_or_slow_pipe_never_fails_the_move(dovecot: Callable[[str], Server]) -> None:
    """Each fault: the MOVE answers OK, the message is in Junk, nothing is learned and Dovecot
    logs why. The pipe time limit (10 s by default) is cut to 3 s to keep the test short."""
    srv = dovecot("plugin {\n  sieve_pipe_exec_timeout = 3s\n}")
    c = Client(srv.port)
    gid = grp.getgrnam(DB_GROUP).gr_gid
    n = 0

    def to_junk() -> float:
        nonlocal n
        n += 1
        before = c.count("Junk")
        _, took = c.move("INBOX", c.append("INBOX", msg(100 + n)), "Junk")
        assert c.count("Junk") == before + 1
        return took

    try:
        to_junk()
        assert srv.totals() == (1, 0)

        def hold_lock(seconds: float) -> threading.Thread:
            """Another writer (an admin's bulk `train`) holds the write lock."""
            locked = threading.Event()

            def hold() -> None:
                with closing(sqlite3.connect(srv.db, isolation_level=None)) as conn:
                    conn.execute("BEGIN IMMEDIATE")
                    locked.set()
                    time.sleep(seconds)
                    conn.rollback()
            t = threading.Thread(target=hold)
            t.start()
            assert locked.wait(5)
            return t

        # locked for a moment: the pipe waits for its turn and learns
        t = hold_lock(1.0)
        took = to_junk()
        t.join()
        assert srv.totals() == (2, 0)
        assert 0.5 < took < 3

        # locked for longer than Dovecot waits: the pipe is killed, the MOVE goes through
        t = hold_lock(5.0)
        took = to_junk()
        t.join()
        assert srv.totals() == (2, 0)
        assert 2.5 < took < 5
        # Dovecot stops it with SIGTERM: it says so in Dovecot's log, having kept nothing (it
        # was killed before, and Dovecot logged only "Forcibly terminated")
        assert any("spambridge train: stopped (SIGTERM); nothing was saved" in e
                   for e in srv.errors()), srv.errors()

        # the milter's database, 0640 as one made in a 0750 directory is: the group may read
        os.chown(srv.db, 0, gid)
        srv.db.chmod(0o640)
        seen = len(srv.errors())
        to_junk()
        srv.db.chmod(0o660)
        assert srv.totals() == (2, 0)
        # which file, whose, and what lets the group in (SQLite: "attempt to write a readonly
        # database", alike for the database, its -shm and its directory)
        assert any(f"user nobody may not write {srv.db} (root:{DB_GROUP}, mode 0640): its group "
                   f"{DB_GROUP} may not: chmod g+rw {srv.db}" in e
                   for e in srv.errors()[seen:]), srv.errors()[seen:]

        # no database directory at all (the mail user may not create it)
        away = srv.db.parent.with_name("away")
        srv.db.parent.rename(away)
        seen = len(srv.errors())
        to_junk()
        assert not srv.db.parent.exists()
        away.rename(srv.db.parent)
        assert srv.totals() == (2, 0)
        assert any(f"user nobody may not create {srv.db.parent.name} in {srv.db.parent.parent} "
                   "(root:root, mode 0755)" in e for e in srv.errors()[seen:]), srv.errors()[seen:]

        # and it works again once the fault is gone
        to_junk()
        assert srv.totals() == (3, 0)
        assert srv.db.stat().st_gid == gid
    finally:
        c.close()


def test_without_the_group_the_pipe_fails_and_dovecot_logs_it(
        dovecot: Callable[[str], Server]) -> None:
    """The README: with a passwd-file (virtual) userdb, the mail process gets the database's
    group only from mail_access_groups; without it the pipe exits 1, saying that the mail user
    may not enter the database's directory and is not in its group."""
    srv = dovecot("mail_access_groups =")
    c = Client(srv.port)
    try:
        c.move("INBOX", c.append("INBOX", msg(1)), "Junk")
        assert c.count("Junk") == 1
    finally:
        c.close()
    assert not srv.db.exists()
    errors = srv.errors()
    assert any(f"spambridge train: {srv.db}: cannot write the Bayes database: user nobody may "
               f"not enter {srv.db.parent} (root:{DB_GROUP}, mode 2770): user nobody is neither "
               f"its owner nor in its group {DB_GROUP}" in e for e in errors), errors
    assert any("spambridge-learn-spam.sh" in e for e in errors), errors


def test_the_pipe_and_a_nightly_train_agree_on_a_compressed_store(
        dovecot: Callable[[str], Server]) -> None:
    """With Dovecot's zlib plugin (`zlib_save = gz`) every file in Junk is a gzip stream. The
    pipe is given the message uncompressed (Dovecot decompresses what it pipes), and a nightly
    `train --spam ~/Maildir/.Junk` over the same folder must find that message trained and
    learn the one put there without a move; it read every file as "not mail" and exited 0."""
    srv = dovecot("mail_plugins = $mail_plugins zlib\nplugin {\n  zlib_save = gz\n}")
    c = Client(srv.port)
    try:
        c.move("INBOX", c.append("INBOX", msg(1)), "Junk")
        c.append("Junk", msg(2))  # APPENDed into Junk: no user's verdict, no pipe
    finally:
        c.close()
    assert srv.totals() == (1, 0)
    junk = srv.top / "mail" / "user" / "Maildir" / ".Junk"
    stored = [f for d in ("cur", "new") for f in (junk / d).iterdir()]
    assert len(stored) == 2 and all(f.read_bytes()[:2] == b"\x1f\x8b" for f in stored)
    r = subprocess.run([sys.executable, "-m", "spambridge", "train", "--db", str(srv.db),
                        "--spam", str(junk)], capture_output=True, text=True, timeout=120,
                       check=False)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.startswith("Learned 1 of 2 messages as spam (1 already trained) in ")
    assert srv.totals() == (2, 0)
    assert srv.errors() == []


def test_a_nightly_ham_run_passes_over_spam_copied_to_junk_and_not_expunged(
        dovecot: Callable[[str], Server]) -> None:
    """A client without IMAP MOVE copies a spam to Junk (the pipe learns it) and marks the
    original in INBOX \\Deleted; until it expunges, Dovecot keeps that file with flag T. A
    nightly `train --ham ~/Maildir` (INBOX) found it there and moved the spam to ham."""
    srv = dovecot("")
    c = Client(srv.port)
    try:
        c.append("INBOX", msg(2, spam=False))
        uid = c.append("INBOX", msg(1))
        assert c.m.select("INBOX")[0] == "OK"
        assert c.m.uid("COPY", str(uid), "Junk")[0] == "OK"
        assert c.m.uid("STORE", str(uid), "+FLAGS.SILENT", r"(\Deleted)")[0] == "OK"
    finally:
        c.close()  # LOGOUT: no EXPUNGE
    assert srv.totals() == (1, 0)
    inbox = srv.top / "mail" / "user" / "Maildir"
    assert [f.name for f in (inbox / "cur").iterdir() if re.search(r":2,[A-Z]*T", f.name)]
    r = subprocess.run([sys.executable, "-m", "spambridge", "train", "--db", str(srv.db),
                        "--ham", str(inbox)], capture_output=True, text=True, timeout=120,
                       check=False)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.startswith("Learned 1 of 2 messages as ham (1 marked deleted) in "), r.stdout
    assert srv.totals() == (1, 1)
    assert srv.errors() == []


def test_the_pipe_and_a_nightly_train_agree_on_an_mbox_store(
        dovecot: Callable[[str], Server]) -> None:
    """With mbox files (`mail_location = mbox:`), Dovecot writes a Content-Length on each
    message and neither escapes nor unescapes body lines: a nightly `train` over the user's
    Junk must read each message as the pipe gave it on the move. It read ">From " lines as
    "From ", learning such a message again under another key, and learned the "FOLDER
    INTERNAL DATA" message Dovecot puts first in a folder once it has been emptied. The mail
    comes through dovecot-lda, as Postfix's mailbox_command delivers it. (A body line such as
    "From 3f2a9c1e Mon Sep 17 00:00:00 2001" after a blank one is not used here: Dovecot 2.3
    itself cuts such a message there when it copies it, or fails the MOVE; the unit tests
    cover train's reading of it.)"""
    srv = dovecot("mail_location = mbox:~/mail:INBOX=~/mail/inbox")
    quoted = msg(2) + b">From the desk of the director\r\n>>From deeper\r\n"
    for m in (msg(1), quoted, msg(3)):
        subprocess.run([LDA, "-c", str(srv.top / "dovecot.conf"), "-d", "user", "-f",
                        "prize@lottery.example"], input=m.replace(b"\r\n", b"\n"), check=True,
                       timeout=60)
    c = Client(srv.port)
    try:
        assert c.m.select("INBOX")[0] == "OK"
        uids = [int(u) for u in c.m.uid("SEARCH", "ALL")[1][0].split()]
        assert len(uids) == 3
        moved = [c.move("INBOX", uid, "Junk")[0] for uid in uids]
        assert srv.totals() == (3, 0)
        c.move("Junk", moved[2], "INBOX")  # INBOX was emptied before: Dovecot's folder data
        assert srv.totals() == (2, 1)
    finally:
        c.close()
    home = srv.top / "mail" / "user" / "mail"
    assert b"FOLDER INTERNAL DATA" in (home / "inbox").read_bytes()
    assert b"\n>From the desk" in (home / "Junk").read_bytes()

    def nightly(label: str, box: str) -> str:
        r = subprocess.run([sys.executable, "-m", "spambridge", "train", "--db", str(srv.db),
                            label, str(home / box)], capture_output=True, text=True,
                           timeout=120, check=False)
        assert (r.returncode, r.stderr) == (0, "")
        return r.stdout

    assert nightly("--spam", "Junk").startswith(
        "Learned 0 of 2 messages as spam (2 already trained) in ")
    assert nightly("--ham", "inbox").startswith(
        "Learned 0 of 1 messages as ham (1 already trained) in ")
    assert srv.totals() == (2, 1)
    assert srv.errors() == []


def test_one_spam_delivered_over_lmtp_to_two_users_is_one_message_to_train(
        dovecot: Callable[[str], Server]) -> None:
    """Dovecot's LMTP server delivers one spam to two users, one transaction each (2.3.19
    gives both recipients of one transaction byte-identical copies: no Delivered-To, no "for"):
    each copy has its own Delivered-To and Received line ("with LMTP id … for <user>") on
    top, the message below them the same. The first user's move to Junk teaches it; the
    second user's copy moved to Junk was learned again (one spam counted twice), and taken
    back out of Junk it was learned as ham beside the first copy's spam. It is one message:
    "already trained", then moved from spam to ham."""
    lmtp = free_port()
    srv = dovecot(f"protocols = $protocols lmtp\nauth_username_format = %n\n"
                  f"service lmtp {{\n  inet_listener lmtp {{\n    address = 127.0.0.1\n"
                  f"    port = {lmtp}\n  }}\n}}")
    users = ("user", "user2")
    sent = msg(1)
    with smtplib.LMTP("127.0.0.1", lmtp) as s:  # one session, as Postfix's cached connection
        for u in users:
            assert s.sendmail("prize@lottery.example", [f"{u}@example.net"], sent) == {}
    # the premise: the copies differ on top, in what the LMTP delivery wrote, not below it
    raws = {}
    for u in users:
        [f] = (srv.top / "mail" / u / "Maildir" / "new").iterdir()
        raws[u] = f.read_bytes()
    first = sent.split(b"\r\n", 1)[0]
    tops = {u: raw[: raw.index(first)] for u, raw in raws.items()}
    assert {raw[raw.index(first):] for raw in raws.values()} == {sent.replace(b"\r\n", b"\n")}
    assert tops["user"] != tops["user2"]
    for u, top in tops.items():
        assert re.match(rb"Return-Path: <prize@lottery\.example>\nDelivered-To: "
                        + re.escape(f"{u}@example.net".encode())
                        + rb"\nReceived: from .*\n\tby .* with LMTP\n\tid [^\n]+\n"
                          rb"\t\(envelope-from <prize@lottery\.example>\)\n\tfor "
                        + re.escape(f"<{u}@example.net>".encode()) + rb"; [^\n]+\n\Z",
                        top), top

    one, two = Client(srv.port), Client(srv.port, "user2")
    try:
        one.move("INBOX", 1, "Junk")  # UID 1: the first message of a new mailbox
        assert (srv.totals(), srv.labels()) == ((1, 0), ["spam"])
        learned = srv.tokens()
        assert learned
        # the second user's copy into Junk: already trained, nothing learned again
        moved, _ = two.move("INBOX", 1, "Junk")
        assert (srv.totals(), srv.labels(), srv.tokens()) == ((1, 0), ["spam"], learned)
        # ... and out of Junk again, the user's "not spam": the one message is ham now
        two.move("Junk", moved, "INBOX")
        assert (srv.totals(), srv.labels()) == ((0, 1), ["ham"])
        assert srv.tokens() == {t: (h, s) for t, (s, h) in learned.items()}
    finally:
        one.close()
        two.close()
    assert srv.errors() == []
