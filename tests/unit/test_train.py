"""`spambridge train` and `spambridge check` as an admin runs them (the real CLI, a real SQLite
database): every input kind, dedupe, class moves, forget, bad inputs, and the store's
guarantees under a concurrent reader and a killed writer."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import re
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

from spambridge import check, cli, defaults, headers, permissions, train
from spambridge.bayes import store
from spambridge.bayes.tokenizer import tokenize
from spambridge.config import BayesConfig, Config
from spambridge.scanners.bayes import BayesScanner
from spambridge.verdict import ErrorKind, ScanError

SPAM_WORDS = ["viagra", "cheap", "pills", "casino", "winner", "lottery", "prize", "mortgage",
              "refinance", "bitcoin"]
HAM_WORDS = ["meeting", "agenda", "minutes", "review", "budget", "quarterly", "project",
             "deadline", "lunch", "draft"]


def mail(n: int, spam: bool, extra: str = "") -> bytes:
    words = SPAM_WORDS if spam else HAM_WORDS
    body = " ".join(words[(n + i) % len(words)] for i in range(40))
    sender = "promo@deals.example.com" if spam else "colleague@example.org"
    return (f"From: {sender}\nTo: user@example.net\nSubject: {'WIN' if spam else 'notes'} "
            f"{n}\nMessage-ID: <{n}.{int(spam)}@example>\n{extra}\n{body} unique{n}x{int(spam)}\n"
            ).encode()


def run(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def totals(db: Path) -> tuple[int, int]:
    with sqlite3.connect(db) as c:
        n = c.execute("SELECT nspam, nham FROM totals").fetchone()
        return int(n[0]), int(n[1])


def tokens(db: Path) -> dict[str, tuple[int, int]]:
    with sqlite3.connect(db) as c:
        return {t: (s, h) for t, s, h in c.execute("SELECT token, spam, ham FROM tokens")}


def folder(d: Path, msgs: list[bytes]) -> Path:
    """A directory of message files, one per message."""
    d.mkdir()
    for i, m in enumerate(msgs):
        (d / f"{i}.eml").write_bytes(m)
    return d


def maildir(root: Path, msgs: list[bytes]) -> Path:
    for d in ("cur", "new", "tmp"):
        (root / d).mkdir(parents=True)
    for i, m in enumerate(msgs):
        (root / ("cur" if i % 2 else "new") / f"{i}.host:2,S").write_bytes(m)
    return root


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "var" / "bayes.sqlite"


def test_train_from_maildir_mbox_directory_file_and_stdin(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    md = maildir(tmp_path / "Junk", [mail(i, True) for i in range(4)])
    mbox = tmp_path / "spam.mbox"
    mbox.write_bytes(b"".join(b"From x@y Mon Jan  1 00:00:00 2026\n" + mail(i, True) + b"\n"
                              for i in range(10, 13)))
    files = tmp_path / "hamdir"
    files.mkdir()
    for i in range(5):
        (files / f"{i}.eml").write_bytes(mail(i, False))
    single = tmp_path / "one.eml"
    single.write_bytes(mail(99, False))

    code, out, _ = run("train", "--db", str(db), "--spam", str(md), str(mbox), capsys=capsys)
    assert code == 0 and "Learned 7 of 7 messages as spam" in out
    code, out, _ = run("train", "--db", str(db), "--ham", str(files), str(single), capsys=capsys)
    assert code == 0 and "Learned 6 of 6 messages as ham" in out
    proc = subprocess.run([sys.executable, "-m", "spambridge", "train", "--db", str(db),
                           "--ham", "-"], input=mail(100, False), capture_output=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert b"<stdin>: learned as ham" in proc.stdout
    assert totals(db) == (7, 7)
    assert tokens(db)["viagra"] == (7, 0)
    assert tokens(db)["unique12x1"] == (1, 0)  # the last message of the mbox
    # created private: the database holds the vocabulary of people's mail
    assert not os.stat(db).st_mode & stat.S_IROTH
    assert store.is_private(str(db))


def mbox_of(msgs: list[bytes]) -> bytes:
    return b"".join(b"From x@y Mon Jan  1 00:00:00 2026\n" + m + b"\n" for m in msgs)


def test_an_mbox_on_stdin_is_split_with_mbox(db: Path) -> None:
    """`--mbox -` was learned as one message (or dropped as too large, exit 0)."""
    proc = subprocess.run([sys.executable, "-m", "spambridge", "train", "--db", str(db),
                           "--spam", "--mbox", "-"],
                          input=mbox_of([mail(i, True) for i in range(5)]),
                          capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert b"Learned 5 of 5 messages as spam" in proc.stdout
    assert totals(db) == (5, 0) and tokens(db)["unique4x1"] == (1, 0)


def test_an_mbox_on_stdin_teaches_the_database_whole_with_spamd_bayes(db: Path) -> None:
    """engine spamd+bayes keeps stdin for its second reading: it was cut at one message's
    limit, so a 3,000-message mbox taught the database its first few hundred, the last cut
    short, and the database's half said nothing (exit 1 came from spamd alone)."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: spamd refuses
    with dead:
        proc = subprocess.run([sys.executable, "-m", "spambridge", "train", "--db", str(db),
                               "--engine", "spamd+bayes", "--spamd",
                               f"127.0.0.1:{dead.getsockname()[1]}", "--spam", "--mbox", "-"],
                              input=mbox_of([mail(i, True) for i in range(3000)]),
                              capture_output=True, check=False, timeout=300)
    assert b"Learned 3000 of 3000 messages as spam" in proc.stdout, proc.stdout[-500:]
    assert totals(db) == (3000, 0) and tokens(db)["unique2999x1"] == (1, 0)
    assert proc.returncode == 1 and b"spamd" in proc.stderr  # its half failed, and says so


def test_an_mbox_on_stdin_without_mbox_is_refused_not_learned_as_one(db: Path) -> None:
    """`xzcat box.xz | train --spam -` learned five messages as one, or dropped a big archive
    as too large, with exit 0."""
    for box in (mbox_of([mail(i, True) for i in range(5)]),
                mbox_of([mail(i, True) for i in range(3000)])):  # over --max-size
        proc = subprocess.run([sys.executable, "-m", "spambridge", "train", "--db", str(db),
                               "--spam", "-"], input=box, capture_output=True, check=False)
        assert proc.returncode == 1
        assert b"<stdin>: not mail but several messages (an mbox): give --mbox" in proc.stderr
        assert b"Learned 0 of 1 messages as spam (1 not mail)" in proc.stdout
    assert not db.exists() or totals(db) == (0, 0)


def test_one_message_on_stdin_with_an_mda_from_line_stays_one(db: Path) -> None:
    """A procmail-style pipe sends the From_ line; a body paragraph opening with "From 9:00"
    looks like the next separator, so without --mbox stdin is one message, as the pipe
    means it (a review of a first version that split it: the message was learned cut)."""
    msg = (b"From a@b Mon Jan  1 00:00:00 2026\n" + mail(1, True)
           + b"\nFrom 9:00 to 17:00 we are open.\n")
    proc = subprocess.run([sys.executable, "-m", "spambridge", "train", "--db", str(db),
                           "--spam", "-"], input=msg, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert b"<stdin>: learned as spam" in proc.stdout
    assert b"Learned 1 of 1 messages as spam" in proc.stdout
    assert tokens(db)["17:00"] == (1, 0)  # the whole body, past the "From 9:00" line


TOO_LARGE_ON_STDIN = ("spambridge train: <stdin>: too large (over --max-size, 512000 bytes): "
                      "not learned")


@pytest.mark.parametrize("engine", ["bayes", "spamd", "spamd+bayes"])
def test_a_message_over_max_size_on_stdin_is_taken_whole_and_said_with_quiet(
        tmp_path: Path, db: Path, engine: str) -> None:
    """Dovecot's pipe (`train --spam --quiet -`) given a message over --max-size: train read
    max_size + 1 bytes of it and exited 0, so Dovecot's write failed (Broken pipe) and it logged
    "failed to pipe message" for a skip; and with --quiet nothing said "too large" (with
    spamd+bayes, once it did, it said so twice: once per engine)."""
    big = mail(1, True) + b"lottery winner " * 200_000  # 3 MB: far more than a pipe holds
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: never asked (a skip is not told)
    out, err = tmp_path / "out", tmp_path / "err"
    with dead, out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "spambridge", "train", "--db", str(db),
                                 "--engine", engine, "--spamd",
                                 f"127.0.0.1:{dead.getsockname()[1]}", "--spam", "--quiet", "-"],
                                stdin=subprocess.PIPE, stdout=o, stderr=e)
        assert proc.stdin is not None
        try:
            proc.stdin.write(big)
            proc.stdin.close()
        except BrokenPipeError:
            pytest.fail("train left the message unread: its writer got EPIPE")
        assert proc.wait(timeout=60) == 0
    assert out.read_text() == ""
    assert err.read_text().splitlines() == [TOO_LARGE_ON_STDIN]  # once, with two engines too
    assert not db.exists() or totals(db) == (0, 0)


class Endless(io.RawIOBase):
    """A stream that never ends (a writer gone wrong): a header, then the same byte for ever.
    Counts the bytes read of it."""

    def __init__(self) -> None:
        self.head, self.count = b"Subject: endless\n\n", 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        n = len(view)
        head, self.head = self.head[:n], self.head[n:]
        view[:len(head)] = head
        view[len(head):] = b"x" * (n - len(head))
        self.count += n
        return n


def test_stdin_is_drained_after_a_too_large_message_but_not_for_ever(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The rest of a message over --max-size on stdin is read and dropped (its writer must
    not get EPIPE), but at most DRAIN_LIMIT bytes of it: an endless stream ends the run too."""
    rest = io.BytesIO(mail(1, True) + b"x" * 300_000)
    assert [i.problem for i in train.read_path("-", 1000, stdin=rest)] == ["too large"]
    assert rest.read() == b""  # all of it taken
    monkeypatch.setattr(train.sources, "DRAIN_LIMIT", 1 << 20)
    endless = Endless()
    assert [i.problem for i in train.read_path("-", 1000, stdin=endless)] == ["too large"]
    # the message's 1001 bytes (and what a buffer read ahead of them), then the limit
    assert (1 << 20) < endless.count < (1 << 20) + 1001 + (64 << 10)
    endless = Endless()
    train.drain(endless)
    assert endless.count == 1 << 20


def test_an_mbox_in_a_folder_is_split_and_folders_in_it_are_named(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A directory of monthly .mbox exports: each file is split as it would be named alone,
    the big one (over --max-size as a whole) too; it used to be one message, or dropped."""
    d = folder(tmp_path / "exports", [mail(1, False)])
    (d / "2026-01.mbox").write_bytes(mbox_of([mail(i, False) for i in range(10, 15)]))
    (d / "2026-02.mbox").write_bytes(mbox_of([mail(i, False) for i in range(20, 60)]))
    code, out, err = run("train", "--db", str(db), "--ham", "--max-size", "2k", str(d),
                         capsys=capsys)
    assert code == 0, err
    assert "Learned 46 of 46 messages as ham" in out and totals(db) == (0, 46)
    tree = tmp_path / "tree"
    tree.mkdir()
    folder(tree / "a", [mail(70, True)])
    code, _, err = run("train", "--db", str(db), "--spam", str(tree), capsys=capsys)
    assert code == 0 and totals(db) == (0, 46)  # never walked into
    assert (f"{tree}: no messages found (the folders in it are not read: name them, as "
            f"{tree / 'a'})") in err


@pytest.mark.parametrize("content", [
    b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n",
    b"key: value\nother: thing\n\nsome text\n",
    # a gzip of something that is not mail (a tarball), bigger than --max-size unpacked
    gzip.compress(b"ustar\x00" + bytes(range(256)) * 40),
])
def test_text_with_colons_and_archives_are_not_mail(tmp_path: Path, db: Path, content: bytes,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Named by mistake, they were learned (a first line with a colon was enough) or counted
    as too large with exit 0."""
    f = tmp_path / "file"
    f.write_bytes(content)
    code, out, err = run("train", "--db", str(db), "--spam", "--max-size", "2k", str(f),
                         capsys=capsys)
    assert code == 1 and f"{f}: not mail" in err and "(1 not mail)" in out
    assert totals(db) == (0, 0)


@pytest.mark.parametrize("content", [
    b"From the desk of the CEO\n\nDear all, we are moving offices.\n",
    b"From 9:00 to 17:00 we are open.\n",
    b"From a@b Mon Jan  1 00:00:00 2024\n",  # a separator line and nothing else
    b"From a@b Mon Jan  1 00:00:00 2024\nnotes\n\nFrom a@b Mon Jan  1 00:00:00 2024\nx\n",
])
@pytest.mark.parametrize("in_memory", [True, False])
def test_a_named_file_opening_with_from_but_holding_no_message_is_not_mail(
        tmp_path: Path, db: Path, content: bytes, in_memory: bool,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """It reads as an mbox, and its pieces were counted as strays met inside one: exit 0
    and nothing on stderr, where any other named file that is not mail is an error."""
    if not in_memory:
        monkeypatch.setattr(train.sources, "MBOX_IN_MEMORY", 10)
    f = tmp_path / "letter.txt"
    f.write_bytes(content)
    code, out, err = run("train", "--db", str(db), "--spam", str(f), capsys=capsys)
    assert code == 1 and f"{f}: not mail" in err and "(1 not mail)" in out, (out, err)
    # said to be an mbox (--mbox): its pieces are counted as any mbox's junk
    code, out, err = run("train", "--db", str(db), "--spam", "--mbox", str(f), capsys=capsys)
    assert code == 0 and "not mail" not in err and "not mail)" in out, (out, err)
    # an mbox with a stray piece among its messages: the piece is only counted, as before
    box = tmp_path / "box.mbox"
    box.write_bytes(content + b"\nFrom x@y Mon Jan  1 00:00:00 2026\n" + mail(1, True))
    code, out, err = run("train", "--db", str(db), "--spam", str(box), capsys=capsys)
    assert code == 0 and "Learned 1 of" in out and "not mail" not in err, (out, err)


@pytest.mark.parametrize("in_memory", [True, False])
def test_a_body_line_opening_with_from_does_not_split_a_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_memory: bool) -> None:
    """Only a real separator line ("From " sender and a date) starts a new message; an
    unescaped paragraph opening with "From" belongs to the body (the big-file reader, which
    streams, agrees with the in-memory split)."""
    chatty = mail(2, False).replace(b"\n\n", b"\n\nFrom what I hear, it moved.\n\n", 1) + (
        b"\nFrom Bob's desk: see you at 10.\n")
    box = tmp_path / "box.mbox"
    box.write_bytes(b"".join(b"From x@y Mon Jan  1 00:00:00 2026\n" + m + b"\n"
                             for m in (mail(1, False), chatty, mail(3, False))))
    if not in_memory:
        monkeypatch.setattr(train.sources, "MBOX_IN_MEMORY", 100)
    items = list(train.read_path(str(box), 0))
    assert [i.where for i in items] == [f"{box}#{n}" for n in (1, 2, 3)]
    assert all(i.data for i in items)
    assert b"From what I hear" in items[1].data and b"From Bob's desk" in items[1].data
    assert items[1].data.startswith(b"From: colleague@example.org")

    one = tmp_path / "one.eml"  # a single saved message with its envelope line
    one.write_bytes(b"From x@y Mon Jan  1 00:00:00 2026\n" + chatty)
    assert [i.data for i in train.read_path(str(one), 0)] == [chatty]


def test_repeat_is_a_noop_even_after_our_markup_was_added(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "m.eml"
    f.write_bytes(mail(1, True))
    assert run("train", "--db", str(db), "--spam", str(f), capsys=capsys)[0] == 0
    before = tokens(db)
    # the same message as delivered: our X-Spam-* headers added, CRLF line ends
    tagged = (b"X-Spam-Flag: YES\nX-Spam-Status: Yes, score=1.0000 required=0.9000\n\ttests=none\n"
              + mail(1, True)).replace(b"\n", b"\r\n")
    f.write_bytes(tagged)
    code, out, _ = run("train", "--db", str(db), "--spam", str(f), capsys=capsys)
    assert code == 0 and "1 already trained" in out
    assert tokens(db) == before and totals(db) == (1, 0)
    assert "x-spam-flag" not in " ".join(before).lower()
    # field names are case-insensitive: a filter writing them in lower case marks it up too
    f.write_bytes(b"x-spam-flag: YES\nx-spam-status: Yes, score=7.1\n" + mail(1, True))
    code, out, _ = run("train", "--db", str(db), "--spam", str(f), capsys=capsys)
    assert code == 0 and "1 already trained" in out and totals(db) == (1, 0)


def test_the_subject_tag_the_milter_added_is_not_learned(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Spam the milter tagged ([policy] subject_tag) and a user moved to Junk: learned as it
    lies there, the tag taught "subject:SPAM" as spam, and a false positive moved back taught
    it as ham, though live mail never carries it. train takes it off, as SpamAssassin undoes
    its own rewrite from X-Spam-Prev-Subject."""
    cfg = tmp_path / "sb.toml"
    cfg.write_text('[policy]\nsubject_tag = "[SPAM]"\n')
    original = mail(1, True)
    subject = re.search(rb"^Subject: (.*)$", original, re.M)
    assert subject is not None
    new = headers.subject_rewrite("[SPAM]", subject.group(1))[0]
    assert new is not None
    flagged = b"X-Spam-Flag: YES\nX-Spam-Status: Yes, score=0.9500 engine=bayes\n"
    delivered = flagged + original.replace(subject.group(0), b"Subject: " + new.encode())
    f = tmp_path / "m.eml"
    f.write_bytes(delivered)
    code, out, _ = run("train", "--config", str(cfg), "--db", str(db), "--spam", str(f),
                       capsys=capsys)
    assert code == 0 and "Learned 1 of 1" in out
    learned = tokens(db)
    assert not [t for t in learned if "SPAM" in t], learned
    f.write_bytes(original)  # the very message: the same key, the same tokens
    code, out, _ = run("train", "--config", str(cfg), "--db", str(db), "--spam", str(f),
                       capsys=capsys)
    assert code == 0 and "1 already trained" in out and tokens(db) == learned

    # the milter added the Subject (there was none), and SpamAssassin's rewrite
    nosubject = original.replace(subject.group(0) + b"\n", b"")
    f.write_bytes(flagged + b"Subject: [SPAM]\n" + nosubject)
    assert train.strip_markup(f.read_bytes(), b"[SPAM]") == nosubject
    # an empty Subject, tagged where it stands: "[SPAM] " goes back to empty, not to none
    # (learned as "noheader:subject", empty-Subject spam taught what live mail never carries)
    empty = original.replace(subject.group(0), b"Subject: ")
    delivered = flagged + empty.replace(b"Subject: ", b"Subject: [SPAM] ", 1)
    assert train.strip_markup(delivered, b"[SPAM]") == empty
    sa = (b"X-Spam-Flag: YES\nX-Spam-Prev-Subject: " + subject.group(1) + b"\n"
          + original.replace(subject.group(0), b"Subject: *****SPAM***** WIN 1"))
    assert train.strip_markup(sa) == original
    # a Subject the tag would have pushed over 990 octets a line (Sendmail's SMTP mailers'
    # limit) is folded after the tag: 974 characters stay on one line, 975 and 990 fold
    for n, fold in ((974, "[SPAM] "), (975, "[SPAM]\n "), (990, "[SPAM]\n ")):
        long_subject = b"Subject: " + b"W" * n
        long_original = original.replace(subject.group(0), long_subject)
        tagged = headers.subject_rewrite("[SPAM]", long_subject[len(b"Subject: "):])[0]
        assert tagged == fold + "W" * n
        delivered = long_original.replace(long_subject, b"Subject: " + tagged.encode())
        assert train.strip_markup(flagged + delivered, b"[SPAM]") == long_original
    # a Subject that opens with the tag on mail no filter flagged is the sender's own
    own = original.replace(subject.group(0), b"Subject: [SPAM] " + subject.group(1))
    assert train.strip_markup(own, b"[SPAM]") == own
    # on flagged mail, a Subject the tag opens with no space after it ("[SPAM]WIN 1") is not
    # one the milter wrote (it leaves such a Subject alone): learned whole, not cut to "IN 1"
    glued = original.replace(subject.group(0), b"Subject: [SPAM]" + subject.group(1))
    assert headers.subject_rewrite("[SPAM]", b"[SPAM]" + subject.group(1))[0] is None
    assert train.strip_markup(flagged + glued, b"[SPAM]") == glued


def as_postfix_tags(original: bytes, tag: str = "[SPAM]") -> bytes:
    """`original` as Postfix delivers it after the milter tagged its Subject: Postfix passes
    the value without its first blank (a space only), and writes the new one after ": "."""
    field = re.search(rb"(?im)^(subject)[ \t]*:(.*(?:\n[ \t].*)*)$", original)
    assert field is not None
    value = field[2].removeprefix(b" ")
    new = headers.subject_rewrite(tag, value)[0]
    assert new is not None
    flagged = b"X-Spam-Flag: YES\nX-Spam-Status: Yes, score=0.9500 engine=bayes\n"
    return flagged + original.replace(field[0], field[1] + b": " + new.encode())


@pytest.mark.parametrize("field", [b"Subject:\tWIN 1", b"Subject:WIN 1", b"Subject:  WIN 1",
                                   b"Subject:\n WIN 1", b"Subject: \n\tWIN 1", b"SUBJECT:\tWIN 1"],
                         ids=["tab", "no-blank", "two-blanks", "fold", "blank-fold", "name"])
def test_a_subject_tagged_over_another_blank_is_the_message_that_came(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str], field: bytes) -> None:
    """The milter's tagged Subject has one blank after the colon whatever the message had
    ("Subject:\tWIN 1" is delivered as "Subject: [SPAM] WIN 1"): the tag taken off, train
    keyed it as "Subject: WIN 1", and the message as it came, trained next, was learned a
    second time instead of "already trained". A database keyed before keeps its keys."""
    cfg = tmp_path / "sb.toml"
    cfg.write_text('[policy]\nsubject_tag = "[SPAM]"\n')
    original = mail(1, True).replace(b"Subject: WIN 1", field)
    f = tmp_path / "m.eml"
    f.write_bytes(as_postfix_tags(original))
    code, out, _ = run("train", "--config", str(cfg), "--db", str(db), "--spam", str(f),
                       capsys=capsys)
    assert code == 0 and "Learned 1 of 1" in out
    learned = tokens(db)
    f.write_bytes(original)
    code, out, _ = run("train", "--config", str(cfg), "--db", str(db), "--spam", str(f),
                       capsys=capsys)
    assert code == 0 and "1 already trained" in out, out
    assert tokens(db) == learned and totals(db) == (1, 0)

    # learned by an earlier spambridge as it came, keyed with its Subject as it lay (and,
    # before 2026-11-26, its mailbox state fields): found, and the key carried over, so the
    # tagged copy is the same message from then on
    for state in (b"", b"Status: RO\n"):
        old = tmp_path / f"old{len(state)}.sqlite"
        msg = original.replace(b"\n\n", b"\n" + state + b"\n", 1)
        learned_as_before(old, msg)
        for copy in (msg, msg, as_postfix_tags(msg)):
            f.write_bytes(copy)
            code, out, _ = run("train", "--config", str(cfg), "--db", str(old), "--spam",
                               str(f), capsys=capsys)
            assert code == 0 and "1 already trained" in out and totals(old) == (1, 0), out
        with sqlite3.connect(old) as c:
            assert c.execute("SELECT count(*) FROM messages").fetchone()[0] == 1


def on_a_terminal(cmd: list[str]) -> tuple[subprocess.Popen[bytes], str, bytes]:
    """Run `cmd` with stderr on a pseudo-terminal (where the progress bar is drawn): the
    finished process, its stdout, and everything the terminal received."""
    import pty

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave,
                                stdin=subprocess.DEVNULL,
                                env={**os.environ, "TERM": "xterm", "COLUMNS": "100"})
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        out = proc.communicate(timeout=120)[0].decode()
    finally:
        os.close(master)
    return proc, out, seen


def test_a_long_run_on_a_terminal_shows_a_progress_bar(tmp_path: Path, db: Path) -> None:
    """A bar (rich) on a terminal, from 200 messages; none in a pipe, a cron mail or a log:
    the summary line alone."""
    ham = folder(tmp_path / "ham", [mail(i, False) for i in range(600)])
    cmd = [sys.executable, "-m", "spambridge", "train", "--db", str(db), "--ham", str(ham)]
    proc, out, seen = on_a_terminal(cmd)
    assert proc.returncode == 0 and "Learned 600 of 600 messages as ham" in out
    assert b"training" in seen and b"/600" in seen, seen[-500:]
    piped = subprocess.run([*cmd[:-2], "--forget", str(ham)], capture_output=True, text=True,
                           timeout=120)
    assert piped.returncode == 0 and "Forgot 600 of 600" in piped.stdout
    assert "training" not in piped.stderr and "/600" not in piped.stderr


def test_an_error_during_the_progress_bar_is_printed_on_its_own_line(
        tmp_path: Path, db: Path) -> None:
    """A message that cannot be read, met while the bar is drawn, is named on a line of its
    own above the bar; it used to be written after the bar's text, on the bar's line
    ("training ━━━━ 250/601 0:00:01spambridge train: …"), and left there when the bar went."""
    ham = folder(tmp_path / "ham", [mail(i, False) for i in range(600)])
    (ham / "300-gone.eml").symlink_to(tmp_path / "expunged.eml")
    cmd = [sys.executable, "-m", "spambridge", "train", "--db", str(db), "--ham", str(ham)]
    proc, out, seen = on_a_terminal(cmd)
    assert proc.returncode == 1 and "Learned 600 of 601 messages as ham" in out
    assert b"training" in seen and b"/601" in seen, seen[-500:]
    error = f"spambridge train: {ham}/300-gone.eml: {train.SYMLINK}"
    at = seen.find(error.encode())
    assert at >= 0, seen[-1000:]
    # what the terminal keeps on that line before the error: nothing once escapes are dropped
    start = max(seen.rfind(b"\n", 0, at), seen.rfind(b"\r", 0, at)) + 1
    assert re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", seen[start:at]) == b"", seen[start:at + 200]
    assert seen.count(error.encode()) == 1


def learned_as_before(db: Path, msg: bytes) -> None:
    """`msg` learned as spam the way an earlier spambridge did: keyed by the digest of the
    message as strip_markup left it then (state fields and Subject tag kept)."""
    writer = store.SqliteWriter(str(db))
    batch = writer.begin()
    batch.learn(tokenize(msg), store.SPAM)
    batch.mark(train.digest(train.strip_markup(msg)), store.SPAM)
    writer.commit(batch)
    writer.close()


def test_reading_a_message_in_an_mbox_does_not_make_it_a_new_one(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """mutt and Thunderbird rewrite Status:/X-Mozilla-Status: in an mbox when a message is
    read; trained again, the mbox taught every read message a second time, and moving it to
    the other class left the first copy where it was. A database keyed the old way carries
    the key over."""
    def box(state: bytes) -> bytes:
        return b"".join(b"From x@example.org Thu Nov 26 02:58:17 2026\n"
                        + mail(n, False).replace(b"\n\n", b"\n" + state + b"\n\n", 1)
                        + b"\n" for n in range(3))

    f = tmp_path / "inbox"
    f.write_bytes(box(b"Status: O\nX-Mozilla-Status: 0000"))
    assert run("train", "--db", str(db), "--ham", str(f), capsys=capsys)[0] == 0
    f.write_bytes(box(b"Status: RO\nX-Status: A\nX-Mozilla-Status: 0001\nX-Keywords: $Label1\n"
                      b"Content-Length: 321\nLines: 4"))  # and what mutt writes when it saves
    code, out, _ = run("train", "--db", str(db), "--ham", str(f), capsys=capsys)
    assert code == 0 and "3 already trained" in out and totals(db) == (0, 3)
    code, out, _ = run("train", "--db", str(db), "--spam", str(f), capsys=capsys)
    assert code == 0 and "3 moved from ham" in out and totals(db) == (3, 0)
    # wherever the fields stand, in any case, folded; a body line that looks like one counts
    plain = train.strip_markup(mail(5, False))
    for variant in (b"STATUS: RO\n" + plain, plain.replace(b"\n\n", b"\nX-Keywords: a\n b\n\n", 1)):
        assert train.keys(variant) == (train.keys(plain)[0], (train.digest(variant),))
    body_line = plain + b"Status: RO\n"
    assert train.keys(body_line) == (train.digest(body_line), ())

    # a database an earlier spambridge filled: the message keyed with its state fields
    old = tmp_path / "old.sqlite"
    msg = mail(9, True).replace(b"\n\n", b"\nStatus: RO\n\n", 1)
    learned_as_before(old, msg)
    m = tmp_path / "m.eml"
    m.write_bytes(msg)
    code, out, _ = run("train", "--db", str(old), "--ham", str(m), capsys=capsys)
    assert code == 0 and "1 moved from spam" in out and totals(old) == (0, 1)
    m.write_bytes(msg.replace(b"Status: RO\n", b""))
    code, out, _ = run("train", "--db", str(old), "--ham", str(m), capsys=capsys)
    assert code == 0 and "1 already trained" in out and totals(old) == (0, 1)
    with sqlite3.connect(old) as c:
        assert c.execute("SELECT count(*) FROM messages").fetchone()[0] == 1


def test_a_tagged_message_learned_before_the_tag_was_taken_off_is_found(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tagged spam in Junk that an earlier spambridge learned (and keyed) with the tag: the
    false positive moved out of Junk after the upgrade was learned as ham while it stayed
    learned as spam (one message in both classes), and --forget said "not trained before"."""
    cfg = tmp_path / "sb.toml"
    cfg.write_text('[policy]\nsubject_tag = "[SPAM]"\n')
    original = mail(1, True)
    tagged = original.replace(b"Subject: WIN 1", b"Subject: [SPAM] WIN 1")
    delivered = b"X-Spam-Flag: YES\nX-Spam-Status: Yes, score=0.9500 engine=bayes\n" + tagged
    learned_as_before(db, tagged)  # as the earlier spambridge left it: tag kept
    f = tmp_path / "m.eml"
    f.write_bytes(delivered)
    code, out, _ = run("train", "--config", str(cfg), "--db", str(db), "--forget", str(f),
                       capsys=capsys)
    assert code == 0 and "Forgot 1 of 1" in out, out
    assert totals(db) == (0, 0) and not [t for t, n in tokens(db).items() if n != (0, 0)]
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(*) FROM messages").fetchone()[0] == 0

    writer = store.SqliteWriter(str(db))  # again, and this time moved to ham
    batch = writer.begin()
    batch.learn(tokenize(tagged), store.SPAM)
    batch.mark(train.digest(train.strip_markup(tagged)), store.SPAM)
    writer.commit(batch)
    writer.close()
    code, out, _ = run("train", "--config", str(cfg), "--db", str(db), "--ham", str(f),
                       capsys=capsys)
    assert code == 0 and "1 moved from spam" in out and totals(db) == (0, 1), out
    assert not [t for t, (s, _) in tokens(db).items() if s], "spam counts left behind"
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(*) FROM messages").fetchone()[0] == 1
    code, out, _ = run("train", "--config", str(cfg), "--db", str(db), "--ham", str(f),
                       capsys=capsys)
    assert code == 0 and "1 already trained" in out and totals(db) == (0, 1)


def report_safe(original: bytes, level: int) -> bytes:
    """SpamAssassin's report_safe wrapper around `original`, as spamd returns flagged spam."""
    return (f"From: spamd@example.net\nSubject: [SPAM] offer\nX-Spam-Flag: YES\n"
            f"Content-Type: multipart/mixed; boundary=\"b{level}\"\n\n"
            f"--b{level}\nContent-Type: text/plain\n\nSpam detection software... report\n"
            f"--b{level}\nContent-Type: message/rfc822; x-spam-type=original\n"
            f"Content-Description: original message before SpamAssassin\n\n").encode() + (
        original + f"\n--b{level}--\n".encode())


def test_spamassassin_report_is_unwrapped_and_a_nested_bomb_is_bounded(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A spam saved as spamd wrapped it teaches the original (so it dedupes against it); a
    message nesting thousands of wrappers is learned as what is left after a few, not a
    crash that stops the run."""
    f = tmp_path / "m.eml"
    f.write_bytes(mail(5, True))
    assert run("train", "--db", str(db), "--spam", str(f), capsys=capsys)[0] == 0
    wrapped = tmp_path / "wrapped.eml"
    wrapped.write_bytes(report_safe(mail(5, True), 1))
    code, out, _ = run("train", "--db", str(db), "--spam", str(wrapped), capsys=capsys)
    assert code == 0 and "1 already trained" in out
    assert "detection" not in tokens(db)

    bomb = mail(6, True)
    for level in range(1200):
        bomb = report_safe(bomb, level)
    d = folder(tmp_path / "junk", [mail(7, True), bomb, mail(8, True)])
    code, out, err = run("train", "--db", str(db), "--spam", str(d), capsys=capsys)
    assert code == 0 and "Learned 3 of 3 messages as spam" in out, err
    assert totals(db) == (4, 0)


def test_other_class_moves_and_forget_undoes(tmp_path: Path, db: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "m.eml"
    f.write_bytes(mail(3, False))
    other = tmp_path / "o.eml"
    other.write_bytes(mail(4, False))
    run("train", "--db", str(db), "--ham", str(f), str(other), capsys=capsys)
    assert totals(db) == (0, 2) and tokens(db)["unique3x0"] == (0, 1)

    code, out, _ = run("train", "--db", str(db), "--spam", str(f), capsys=capsys)
    assert code == 0 and "1 moved from ham" in out
    assert totals(db) == (1, 1) and tokens(db)["unique3x0"] == (1, 0)

    code, out, _ = run("train", "--db", str(db), "--forget", str(f), str(other), capsys=capsys)
    assert code == 0 and "Forgot 2 of 2" in out
    assert totals(db) == (0, 0) and tokens(db) == {}
    code, out, _ = run("train", "--db", str(db), "--forget", str(f), capsys=capsys)
    assert code == 0 and "not trained before" in out


def test_bad_inputs_are_reported_counted_and_skipped(tmp_path: Path, db: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "mixed"
    d.mkdir()
    (d / "good.eml").write_bytes(mail(1, True))
    (d / "notes.txt").write_bytes(b"just some text, no headers\n")
    (d / "blob.bin").write_bytes(b"\x00\x01\x02 binary")
    (d / "huge.eml").write_bytes(mail(2, True) + b"x" * 4096)
    code, out, err = run("train", "--db", str(db), "--spam", "--max-size", "2k", str(d),
                         capsys=capsys)
    assert code == 0, err  # junk inside a folder is skipped, not an error
    assert "Learned 1 of 4 messages as spam (1 too large, 2 not mail)" in out

    empty = tmp_path / "Maildir"  # the mail is one level down, in .Junk/
    maildir(empty / ".Junk", [mail(3, True)])
    for sub in ("cur", "new", "tmp"):
        (empty / sub).mkdir()
    code, out, err = run("train", "--db", str(db), "--spam", str(empty), capsys=capsys)
    assert code == 0 and f"{empty}: no messages found" in err
    assert "Learned 0 of 0 messages" in out

    code, out, err = run("train", "--db", str(db), "--spam", str(tmp_path / "nope"),
                         str(d / "notes.txt"), capsys=capsys)
    assert code == 1
    assert "nope: unreadable: no such file or directory" in err
    assert "notes.txt: not mail" in err
    assert "Learned 0 of 2 messages as spam (1 not mail, 1 unreadable)" in out

    proc = subprocess.run([sys.executable, "-m", "spambridge", "train", "--db", str(db),
                           "--spam"], input=b"", capture_output=True, check=False)
    assert proc.returncode == 1 and b"<stdin>: not mail" in proc.stderr


def test_check_prints_the_milter_decision(tmp_path: Path, db: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    spam, ham = tmp_path / "spam", tmp_path / "ham"
    spam.mkdir()
    ham.mkdir()
    for i in range(20):
        (spam / f"{i}").write_bytes(mail(i, True))
        (ham / f"{i}").write_bytes(mail(i, False))
    new_spam, new_ham = tmp_path / "s.eml", tmp_path / "h.eml"
    new_spam.write_bytes(mail(500, True))
    new_ham.write_bytes(mail(500, False, extra="X-Spam-Flag: NO\nX-Spam-Status: No, forged\n"))
    cfg = tmp_path / "sb.toml"  # 20 of each is enough here (the default waits for 200)
    cfg.write_text("[bayes]\nmin_trained = 20\n")

    code, out, _ = run("check", "--db", str(db), str(new_spam), capsys=capsys)
    assert code == 1 and "verdict=unchecked=unavailable" in out  # a script must notice
    assert "no Bayes database" in out and not db.exists()  # check never creates one

    code, out, _ = run("train", "--db", str(db), "--spam", str(spam), capsys=capsys)
    assert ("The database holds 20 spam and 0 ham; the milter scores with it once each class "
            "has 200 (min_trained).") in out
    code, out, _ = run("check", "--config", str(cfg), "--db", str(db), str(new_ham),
                       capsys=capsys)
    assert "not trained yet: 20 spam, 0 ham" in out
    code, out, _ = run("train", "--config", str(cfg), "--db", str(db), "--ham", str(ham),
                       capsys=capsys)
    assert "The database holds" not in out
    code, out, _ = run("check", "--db", str(db), str(new_ham), capsys=capsys)
    assert "not trained yet: 20 spam, 20 ham" in out  # the default min_trained: 200

    code, out, _ = run("check", "--config", str(cfg), "--db", str(db), "--explain",
                       str(new_spam), capsys=capsys)
    assert code == 0
    assert "verdict=reject action=reject" in out
    assert "SMTP reply: 550 5.7.1 Message rejected as spam" in out
    assert "headers added" not in out  # a refused message is not changed, as in the milter
    assert "strongest clues" in out and "'viagra'" in out

    code, out, _ = run("check", "--config", str(cfg), "--db", str(db), str(new_ham),
                       capsys=capsys)
    assert "verdict=ham action=accept" in out and "SMTP reply: 250" in out
    assert "X-Spam-Status: No, score=0.0000" in out
    assert "headers removed: X-Spam-Flag, X-Spam-Status" in out  # the forged ones
    assert "forged" not in out

    code, out, _ = run("check", "--config", str(cfg), "--db", str(db), "--tag-only",
                       str(new_spam), capsys=capsys)
    assert code == 0 and "action=tag (would reject without tag-only)" in out
    assert "X-Spam-Flag: YES" in out and "X-Spam-Status: Yes, score=1.0000" in out

    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    with dead:
        code, out, _ = run("check", "--config", str(cfg), "--db", str(db), "--explain",
                           "--engine", "spamd+bayes", "--spamd",
                           f"127.0.0.1:{dead.getsockname()[1]}", str(new_spam), capsys=capsys)
        assert code == 0 and "engine=bayes verdict=reject" in out
        assert "note: fallback=spamd-unavailable" in out
        code, out, err = run("check", "--config", str(cfg), "--db", str(db), "--batch",
                             "--engine", "spamd+bayes", "--spamd",
                             f"127.0.0.1:{dead.getsockname()[1]}", str(new_spam), str(new_ham),
                             capsys=capsys)
    # Bayes covered for spamd: scored, exit 0; the table's 0..1 scores are not spamd points,
    # and stderr says so
    assert code == 0 and out.splitlines()[0].endswith("\treject")
    assert ("2 messages scored by Bayes (0..1) instead of spamd: fallback=spamd-unavailable"
            in err)

    code, out, err = run("check", "--config", str(cfg), "--db", str(db), "--batch",
                         str(new_spam), str(new_ham), str(tmp_path / "missing"), capsys=capsys)
    lines = [ln.split("\t") for ln in out.splitlines()]
    assert lines[0][0] == str(new_spam) and float(lines[0][1]) > 0.99
    assert lines[0][2] == "reject"
    assert all(f[1] == repr(float(f[1])) for f in lines[:2])  # every digit, not "%.6g"
    assert lines[1][2] == "ham" and float(lines[1][1]) < 0.01
    assert lines[2] == [str(tmp_path / "missing"), "-", "unreadable"]  # a line per path
    assert code == 1 and "missing: cannot read" in err
    (tmp_path / "empty.eml").write_bytes(b"")
    code, out, err = run("check", "--config", str(cfg), "--db", str(db), "--batch",
                         str(tmp_path / "empty.eml"), capsys=capsys)
    assert code == 1 and "empty.eml: cannot read: empty" in err and "\tunreadable" in out


def test_check_explain_shows_a_utf8_word_as_the_mail_reads(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The tokenizer spells each byte as a Latin-1 character, and `--explain` printed that
    spelling: 'grÃ¼Ã\x9fe' for grüße, 'Ð¿Ñ\x80Ð¸Ð²ÐµÑ\x82' for привет. A UTF-8 word now
    reads as the mail does, a Latin-1 one as before; the database keeps its spelling."""
    words = "grüße привет".encode() + b" m\xfcnchen\n"  # the last in Latin-1
    for label, spam in (("spam", True), ("ham", False)):
        d = folder(tmp_path / label, [mail(i, spam) + (words if spam else b"")
                                      for i in range(20)])
        assert run("train", "--db", str(db), f"--{label}", "-q", str(d), capsys=capsys)[0] == 0
    cfg = tmp_path / "sb.toml"
    cfg.write_text("[bayes]\nmin_trained = 20\n")
    msg = tmp_path / "m.eml"
    msg.write_bytes(b"Subject: hallo\n\n" + words)
    code, out, _ = run("check", "--config", str(cfg), "--db", str(db), "--explain", str(msg),
                       capsys=capsys)
    assert code == 0
    clues = re.findall(r"^    \d\.\d{4}  (.*)$", out, re.M)
    assert sorted(clues) == ["'grüße'", "'münchen'", "'привет'"], out
    assert tokens(db)["grüße".encode().decode("latin-1")] == (20, 0)  # spelling unchanged


def test_check_shows_the_subject_tag_the_clues_and_what_bayes_stood_in_for(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for label, spam in (("spam", True), ("ham", False)):
        d = tmp_path / label
        d.mkdir()
        for i in range(20):
            (d / f"{i}").write_bytes(mail(i, spam))
        assert run("train", "--db", str(db), f"--{label}", "-q", str(d), capsys=capsys)[0] == 0
    new_spam, stranger = tmp_path / "s.eml", tmp_path / "x.eml"
    new_spam.write_bytes(mail(500, True))
    stranger.write_bytes(b"Zxqv: plugh\n\nfrobnitz quuxly wibblewobble\n")
    cfg = tmp_path / "sb.toml"
    cfg.write_text('[bayes]\nmin_trained = 20\n\n[policy]\nsubject_tag = "[SPAM]"\n')

    code, out, _ = run("check", "--config", str(cfg), "--db", str(db), "--tag-only",
                       str(new_spam), capsys=capsys)
    assert code == 0 and "Subject prefix: '[SPAM]'" in out
    assert re.search(r"score=[01]\.\d{4} engine=bayes", out), out  # 0..1: four places
    # a Subject the milter cannot tag without a line over RFC 5322's 998 octets: check
    # says so
    long_spam = tmp_path / "long.eml"
    long_spam.write_bytes(re.sub(rb"(?m)^Subject: .*$", b"Subject: " + b"W" * 1200,
                                 mail(501, True), count=1))
    code, out, _ = run("check", "--config", str(cfg), "--db", str(db), "--tag-only",
                       str(long_spam), capsys=capsys)
    assert code == 0 and f"Subject prefix: '[SPAM]' not added: {headers.TOO_LONG}" in out, out

    code, out, _ = run("check", "--config", str(cfg), "--db", str(db), "--explain",
                       str(new_spam), str(stranger), capsys=capsys)
    spam_part, _, stranger_part = out.partition(f"{stranger}:")
    assert "strongest clues" in spam_part and "'viagra'" in spam_part
    assert "no clues: no token of this message is known to the database" in stranger_part

    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    with dead:
        spamd = f"127.0.0.1:{dead.getsockname()[1]}"
        code, out, _ = run("check", "--config", str(cfg), "--db", str(db), "--engine",
                           "spamd+bayes", "--spamd", spamd, str(new_spam), capsys=capsys)
    assert code == 0 and "engine=bayes" in out
    assert f"  why: fallback=spamd-unavailable: {spamd}: " in out


def test_check_explain_shows_the_twenty_strongest_clues(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--explain lists the 20 strongest clues (EXPLAIN_CLUES) of a message that has more: what
    an admin reads to see why mail scored as it did."""
    words = [f"lure{n}" for n in range(30)]
    for label, vocabulary in (("spam", words), ("ham", [f"memo{n}" for n in range(30)])):
        msgs = [f"From: x{i}@{label}.example\nSubject: {label} {i}\n\n{' '.join(vocabulary)}\n"
                .encode() for i in range(3)]
        learned = folder(tmp_path / label, msgs)
        assert run("train", "--db", str(db), f"--{label}", "-q", str(learned),
                   capsys=capsys)[0] == 0
    cfg = tmp_path / "sb.toml"
    cfg.write_text("[bayes]\nmin_trained = 1\n")
    probe = tmp_path / "probe.eml"
    probe.write_bytes(f"From: y@elsewhere.example\nSubject: hello\n\n{' '.join(words)}\n"
                      .encode())
    code, out, _ = run("check", "--config", str(cfg), "--db", str(db), "--explain", str(probe),
                       capsys=capsys)
    clues = re.findall(r"^    ([01]\.\d{4})  '(.*)'$", out, re.M)
    assert code == 0 and "strongest clues (20 shown;" in out and len(clues) == 20, out
    assert all(word.startswith("lure") for _, word in clues)


def test_check_explain_names_the_rules_spamd_hit(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With spamd as the engine, --explain lists the SpamAssassin rules the message hit: the
    why of its score, as the X-Spam-Status tests= list gives it."""
    from spamdfakes import SwitchableSpamd

    msg = tmp_path / "m.eml"
    msg.write_bytes(mail(1, True))
    fake = SwitchableSpamd("good")
    try:
        code, out, _ = run("check", "--engine", "spamd", "--spamd", fake.address, "--explain",
                           str(msg), capsys=capsys)
    finally:
        fake.close()
    assert code == 0 and "engine=spamd verdict=ham" in out, out
    assert "\n  tests: SYM_A, SYM_B\n" in out, out


def test_check_says_a_dead_pool_member_in_its_own_words(tmp_path: Path) -> None:
    """A `[spamd] servers` pool with a dead member: `check` printed the milter's time-stamped
    warning, "... it again every 30s until it connects", meant for a running milter. It says
    it once, as its own plain line; the live server scores the messages."""
    from spamdfakes import SwitchableSpamd

    msg = tmp_path / "m.eml"
    msg.write_bytes(mail(1, True))
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    fake = SwitchableSpamd("good")
    try:
        cfg = tmp_path / "sb.toml"
        down = f"127.0.0.1:{dead.getsockname()[1]}"
        cfg.write_text(f'[milter]\nengine = "spamd"\n\n[spamd]\nservers = ["{down}", '
                       f'"{fake.address}"]\n')
        proc = subprocess.run([sys.executable, "-m", "spambridge", "check", "-c", str(cfg),
                               str(msg), str(msg)], capture_output=True, text=True, timeout=60)
    finally:
        fake.close()
        dead.close()
    assert proc.returncode == 0 and proc.stdout.count("engine=spamd verdict=ham") == 2
    assert proc.stderr == (f"spambridge check: spamd server {down} does not connect "
                           "(Connection refused): the other servers are tried first\n")


@pytest.mark.parametrize("spam", [False, True])
def test_with_min_trained_0_a_database_of_one_class_scores(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str], spam: bool) -> None:
    """`min_trained = 0` has the milter score as soon as anything is learned. A database of
    one class only (a first `train --ham` of the INBOX) gives scores, as SpamBayes' classifier
    does (an empty class's total counts as 1), not an internal error for every message."""
    cfg = tmp_path / "sb.toml"
    cfg.write_text("[bayes]\nmin_trained = 0\n")
    learned = folder(tmp_path / "learned", [mail(i, spam) for i in range(3)])
    assert run("train", "--db", str(db), "--spam" if spam else "--ham", str(learned),
               capsys=capsys)[0] == 0
    probe = tmp_path / "probe.eml"
    probe.write_bytes(mail(50, spam))
    code, out, _ = run("check", "--config", str(cfg), "--db", str(db), "--batch", str(probe),
                       capsys=capsys)
    assert code == 0 and out.split("\t")[2].strip() in (("spam", "reject") if spam else ("ham",))


def test_check_batch_says_why_messages_were_unchecked(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--batch turns the per-message warnings off: a mistyped --db, or a database not trained
    yet, gave a table of `unchecked=unavailable` and exit 1 with no word of why."""
    msgs = [tmp_path / f"{n}.eml" for n in range(3)]
    for n, f in enumerate(msgs):
        f.write_bytes(mail(n, False))
    missing = tmp_path / "typo.sqlite"
    code, out, err = run("check", "--db", str(missing), "--batch", *map(str, msgs),
                         capsys=capsys)
    assert code == 1 and out.count("\tunchecked=unavailable") == 3
    assert (f"3 messages unchecked=unavailable: {missing}: no Bayes database" in err), err
    assert not missing.exists()
    assert run("train", "--db", str(db), "--ham", str(msgs[0]), capsys=capsys)[0] == 0
    code, out, err = run("check", "--db", str(db), "--batch", str(msgs[1]), capsys=capsys)
    assert code == 1 and "1 message unchecked=unavailable: not trained yet: 0 spam, 1 ham" in err


def test_check_batch_names_the_five_commonest_reasons_for_unchecked_mail(
        tmp_path: Path, fake_spamd: Any) -> None:
    """spamd's errors can differ message by message: --batch names the five reasons most
    messages went unchecked for, the commonest first, and counts the rest in one line."""
    from spamdfakes import read_spamc_request

    codes = iter([76, 76, 76, 74, 74, 64, 65, 66, 67, 68])  # spamd's EX_* exit codes
    lock = threading.Lock()

    def answer(conn: socket.socket) -> None:
        if read_spamc_request(conn):
            with lock:
                code = next(codes)
            conn.sendall(f"SPAMD/1.5 {code} Bad\r\n\r\n".encode())
            conn.close()

    spamd = fake_spamd(answer)
    msgs = folder(tmp_path / "m", [mail(i, False) for i in range(10)])
    proc = subprocess.run([sys.executable, "-m", "spambridge", "check", "--batch", "--engine",
                           "spamd", "--spamd", spamd.address, *map(str, msgs.iterdir())],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout.count("\tunchecked=error\n") == 10
    said = [line.removeprefix("spambridge check: ").replace(f"{spamd.address}: ", "")
            for line in proc.stderr.splitlines()]
    assert said == ["3 messages unchecked=error: ProtocolException: Bad",
                    "2 messages unchecked=error: IOErrorException: Bad",
                    "1 message unchecked=error: UsageException: Bad",
                    "1 message unchecked=error: DataErrorException: Bad",
                    "1 message unchecked=error: NoInputException: Bad",
                    "2 more unchecked for other reasons"], proc.stderr


def test_check_shows_no_change_to_a_message_the_milter_refuses(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A message refused with a tempfail (here: no database, on_unavailable = tempfail) is not
    changed by the milter: `check` says the 451 and no forged X-Spam-* field removed, as it
    says none for a rejected one."""
    msg = tmp_path / "m.eml"
    msg.write_bytes(mail(1, False, extra="X-Spam-Flag: NO\nX-Spam-Status: No, forged\n"))
    cfg = tmp_path / "sb.toml"
    cfg.write_text('[policy]\non_unavailable = "tempfail"\n')
    code, out, _ = run("check", "--config", str(cfg), "--db", str(tmp_path / "none.db"),
                       str(msg), capsys=capsys)
    assert code == 1 and "verdict=unchecked=unavailable action=tempfail" in out, out
    assert "  SMTP reply: 451 4.7.1 " in out
    assert "headers removed" not in out and "headers added" not in out


def test_check_says_the_forged_fields_a_flood_leaves_in_the_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The milter removes at most MAX_OWNED forged X-Spam-* fields, of the first
    MAX_OWNED_NAMES names, and leaves the rest with ours on top: `check` said "headers
    removed: X-Spam-Flag" of a message that kept 500 forged `X-Spam-Flag: YES`."""
    flood = tmp_path / "flood.eml"
    flood.write_bytes(b"From: a@b\nSubject: hi\n" + b"X-Spam-Flag: YES\n" * 1500 + b"\nbody\n")
    names = tmp_path / "names.eml"
    names.write_bytes(b"From: a@b\nSubject: hi\n"
                      + b"".join(b"X-Spam-N%d: x\n" % i for i in range(150)) + b"\nbody\n")
    code, out, _ = run("check", "--db", str(tmp_path / "none.db"), str(flood), str(names),
                       capsys=capsys)
    assert code == 1 and out.count("  SMTP reply: 250 (accepted)") == 2, out  # (no database)
    assert ("  headers removed: X-Spam-Flag\n  headers left: 500 (1500 forged X-Spam-* fields, "
            "only the first 1000 removed; ours go on top)\n") in out
    assert ("  headers left: 50 (150 forged X-Spam-* fields, only the first 100 removed; ours "
            "go on top)\n") in out
    assert defaults.MAX_OWNED == 1000 and defaults.MAX_OWNED_NAMES == 100


def test_check_prints_each_path_on_one_line_whatever_its_name(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A newline in a file name split its --batch line in two, a tab added a column: a tab,
    newline, CR or backslash in a path is printed as a backslash escape, in every line of
    check; other names print as they are."""
    names = ["nl\nhere.eml", "tab\there.eml", "cr\rhere.eml", "back\\slash.eml", "plain.eml"]
    for name in names:
        (tmp_path / name).write_bytes(mail(1, False))
    shown = [f"{tmp_path}/{n}" for n in (r"nl\nhere.eml", r"tab\there.eml", r"cr\rhere.eml",
                                         r"back\\slash.eml", "plain.eml")]
    paths = [str(tmp_path / n) for n in names]
    db = str(tmp_path / "none.db")
    code, out, err = run("check", "--db", db, "--batch", *paths, str(tmp_path / "gone\n.eml"),
                         capsys=capsys)
    assert code == 1
    assert out.split("\n") == [*(f"{p}\t-\tunchecked=unavailable" for p in shown),
                               f"{tmp_path}/gone\\n.eml\t-\tunreadable", ""]
    assert f"spambridge check: {tmp_path}/gone\\n.eml: cannot read: " in err
    assert len(err.splitlines()) == 2, err  # that, and why the rest went unchecked
    code, out, _ = run("check", "--db", db, paths[0], capsys=capsys)
    assert out.startswith(f"{shown[0]}: score=- engine=bayes ") and "\r" not in out, out


def test_check_never_scores_a_file_cut_at_the_read_limit(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`check` reads max_scan_size + 16 KiB + 1 bytes of a file (room for what counts toward
    no limit: an mbox From line, what delivery wrote): that prefix is not the message. The
    milter would not scan a message that big (on_oversize); check must not score the prefix,
    even when dropping an mbox "From " line or CRLFs leaves it under max_scan_size."""
    cfg = tmp_path / "sb.toml"
    cfg.write_text("[milter]\nmax_scan_size = 1024\n")
    body = b"".join(b"line %d of a long message\r\n" % i for i in range(800))
    assert len(body) > 1024 + check.UNCOUNTED + 2
    mbox = tmp_path / "mbox.eml"  # a saved mailbox message: "From " line, CRLF line ends
    mbox.write_bytes(b"From a@example.org Mon Jan  1 00:00:00 2024\r\n"
                     b"From: a@example.org\r\nSubject: big\r\n\r\n" + body)
    code, out, _ = run("check", "--config", str(cfg), "--db", str(tmp_path / "none.db"),
                       "--batch", str(mbox), capsys=capsys)
    assert out.split("\t")[2].strip() == "unchecked=oversize"
    assert code == 0  # deliberately not scanned, as in the milter


def test_check_scores_a_whole_file_of_exactly_the_read_limit(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file of exactly max_scan_size + 16 KiB + 1 bytes is not cut: a message from a
    mailbox whose X-Spam-* fields (the milter's own, a long report) make up the rest is under
    max_scan_size for the milter, which scanned it, so check scans it too."""
    cfg = tmp_path / "sb.toml"
    cfg.write_text("[milter]\nmax_scan_size = 1024\n")
    head = b"Return-Path: <a@example.org>\nFrom: a@example.org\nX-Spam-Report: \n"
    body = b"\nline of a message\n" * 10
    limit = 1024 + 1 + check.UNCOUNTED
    report = b"".join(b"\t* 0.1 RULE_%d a rule\n" % i for i in range(limit // 20))
    msg = tmp_path / "exact.eml"
    msg.write_bytes(head + report[: limit - len(head) - len(body) - 1] + b"\n" + body)
    assert len(msg.read_bytes()) == limit
    _, out, _ = run("check", "--config", str(cfg), "--db", str(tmp_path / "none.db"),
                    "--batch", str(msg), capsys=capsys)
    assert out.split("\t")[2].strip() == "unchecked=unavailable"  # scanned: no database


def test_check_scores_a_whole_file_the_milter_finds_under_max_scan_size(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file of more than max_scan_size + 1 bytes is not cut there: with its mbox From line
    and CRs gone it is under max_scan_size for the milter, which would scan it, so check does
    too (it read max_scan_size + 2 bytes, and took a file past them for oversize)."""
    cfg = tmp_path / "sb.toml"
    cfg.write_text("[milter]\nmax_scan_size = 1024\n")
    head = b"From a@example.org Mon Jan  1 00:00:00 2024\r\nFrom: a@example.org\r\n\r\n"
    body = b"".join(b"line %d of a long message\r\n" % i for i in range(40))
    mbox = tmp_path / "exact.eml"
    mbox.write_bytes(head + body[: 1060 - len(head) - 2] + b"\r\n")
    assert len(mbox.read_bytes()) == 1060
    _, out, _ = run("check", "--config", str(cfg), "--db", str(tmp_path / "none.db"),
                    "--batch", str(mbox), capsys=capsys)
    assert out.split("\t")[2].strip() != "unchecked=oversize"


def test_check_counts_the_body_as_the_milter_does(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Postfix hands a milter the body with CRLF line ends, and the milter counts those bytes
    against max_scan_size: a message stored with LF ends that is just under the limit is over
    it in the milter (on_oversize), and so in `check`."""
    cfg = tmp_path / "sb.toml"
    cfg.write_text("[milter]\nmax_scan_size = 1024\n")
    msg = tmp_path / "near.eml"
    msg.write_bytes(b"From: a@example.org\nSubject: near\n\n" + b"123456789\n" * 95)
    assert len(msg.read_bytes()) < 1024
    code, out, _ = run("check", "--config", str(cfg), "--db", str(tmp_path / "none.db"),
                       "--batch", str(msg), capsys=capsys)
    assert out.split("\t")[2].strip() == "unchecked=oversize"
    assert code == 0


def test_check_batch_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`check --batch ... | head -1`: the reader goes away; no traceback, no "Broken pipe"
    error, the status of a tool killed by SIGPIPE."""
    msg = tmp_path / "m.eml"
    msg.write_bytes(mail(1, False))
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run([sys.executable, "-m", "spambridge", "check", "--db",
                               str(tmp_path / "none.db"), "--batch", str(msg), str(msg)],
                              stdout=w, stderr=subprocess.PIPE, check=False, timeout=60)
    finally:
        os.close(w)
    assert proc.returncode == 141 and proc.stderr == b""


def test_moves_and_forget_take_back_what_was_learned_after_the_limits_change(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A message learned under max_tokens = 100 and forgotten under 5000 took counts from
    every other message sharing its later tokens (a reviewer's run: all 1,000 tokens of
    another message gone, its total still counted). Training keeps to the limits the database
    was first trained with, and says so; forgetting A leaves exactly B's counts."""
    words = [f"w{i:04d}" for i in range(3000)]
    a, b = tmp_path / "a.eml", tmp_path / "b.eml"
    a.write_text("From: x@example.com\nSubject: a\n\n" + " ".join(words) + "\n")
    b.write_text("From: y@example.com\nSubject: b\n\n" + " ".join(words[::3]) + "\n")
    small, large = tmp_path / "small.toml", tmp_path / "large.toml"
    small.write_text("[bayes]\nmax_tokens = 100\n")
    large.write_text("[bayes]\nmax_tokens = 5000\n")
    db, alone = tmp_path / "x.sqlite", tmp_path / "alone.sqlite"
    assert run("train", "--config", str(small), "--db", str(db), "--spam", str(a),
               capsys=capsys)[0] == 0
    code, _, err = run("train", "--config", str(large), "--db", str(db), "--spam", str(b),
                       capsys=capsys)
    assert code == 0 and "first trained with max_bytes = 524288 and max_tokens = 100" in err
    assert run("train", "--config", str(large), "--db", str(db), "--forget", str(a),
               capsys=capsys)[0] == 0
    assert run("train", "--config", str(small), "--db", str(alone), "--spam", str(b),
               capsys=capsys)[0] == 0
    assert totals(db) == totals(alone) == (1, 0)
    assert tokens(db) == tokens(alone) and len(tokens(alone)) == 100


def test_a_stdin_that_cannot_be_read_is_reported_and_the_rest_learned(tmp_path: Path,
                                                                        db: Path) -> None:
    """fd 0 open for writing only: the run stopped with "[Errno 9] Bad file descriptor" and no
    summary, and the file named before it, already in the batch, was rolled back unsaid."""
    good = tmp_path / "good.eml"
    good.write_bytes(mail(1, True))
    with open(tmp_path / "wo.txt", "wb") as write_only:
        proc = subprocess.run([sys.executable, "-m", "spambridge", "train", "--db", str(db),
                               "--spam", str(good), "-"], stdin=write_only,
                              capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 1 and "<stdin>: unreadable: Bad file descriptor" in proc.stderr
    assert "Learned 1 of 2 messages as spam (1 unreadable)" in proc.stdout, proc.stdout
    assert totals(db) == (1, 0)


def test_pipes_devices_fifos_loops_and_a_closed_stdin(tmp_path: Path, db: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Inputs that are not plain files: read as streams within --max-size (an mbox through
    `<(...)` is split as it comes), a FIFO with no writer or a closed stdin reported instead
    of a hang or a traceback, a symlink loop in a folder named while the rest is learned."""
    d = tmp_path / "Junk"
    d.mkdir()
    (d / "good.eml").write_bytes(mail(1, True))
    (d / "x").symlink_to(d / "y")
    (d / "y").symlink_to(d / "x")
    (d / "gone.eml").symlink_to(tmp_path / "expunged.eml")  # a symlink to nothing
    code, out, err = run("train", "--db", str(db), "--spam", str(d), capsys=capsys)
    assert code == 1 and "Learned 1 of 4 messages as spam (3 unreadable)" in out
    assert f"{d / 'x'}: unreadable" in err and f"{d / 'gone.eml'}: unreadable" in err

    code, out, _ = run("train", "--db", str(db), "--spam", "--max-size", "2k", "/dev/zero",
                       capsys=capsys)
    # NULs: not mail (an error when named), told from the first 2k + 1 bytes, not from all
    # of memory
    assert code == 1 and "(1 not mail)" in out

    box = tmp_path / "box.mbox"
    box.write_bytes(b"".join(b"From x@y Mon Jan  1 00:00:00 2026\n" + mail(i, True) + b"\n"
                             for i in range(20, 23)))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "late.eml").write_bytes(mail(30, True))
    spambridge = f"{sys.executable} -m spambridge"
    script = (f"{spambridge} train --db {db} --spam <(cat {box}); echo rc=$?; "
              # its reader first, its writer a moment later, as `mkfifo p; train p & w > p`
              # (bounded: with no reader its open would wait for ever, past the test)
              f"{{ sleep 1; timeout 20 sh -c 'cat {tmp_path / 'late.eml'} > {fifo}'; }} & "
              f"{spambridge} train --db {db} --spam {fifo}; echo rc=$?; wait; "
              f"{spambridge} train --db {db} --spam - <&-; echo rc=$?; "
              f"{spambridge} check --db {db} - <&-; echo rc=$?; "
              f"{spambridge} check --db {db} {box} >&-; echo rc=$?")
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120,
                          check=False)
    assert "Learned 3 of 3 messages as spam" in proc.stdout
    assert "Learned 1 of 1 messages as spam" in proc.stdout, proc.stderr  # waited for it
    assert "<stdin>: unreadable: standard input is closed" in proc.stderr
    assert "-: cannot read: standard input is closed" in proc.stderr
    assert proc.stdout.count("rc=") == 5 and "Traceback" not in proc.stderr  # fd 1 closed too
    assert totals(db) == (5, 0)


def test_a_fifo_nothing_is_written_to_is_named_after_a_wait_not_a_hang(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    monkeypatch.setattr(train.sources, "STREAM_WAIT", 0.3)
    start = time.monotonic()
    items = list(train.read_path(str(fifo), 0))
    assert time.monotonic() - start >= 0.3
    assert [(i.problem, i.failure) for i in items] == [
        ("unreadable: a FIFO that nothing was written to within 0.3s", True)]


def root_only(tmp_path: Path) -> tuple[Path, Path]:
    """A message and an mbox only root may read (here: outside the folders trained), words
    unique7x0, unique8x0 and unique9x0 in them."""
    private = tmp_path / "root-only"
    private.mkdir(mode=0o700)
    secret = private / "secret.eml"
    secret.write_bytes(mail(7, False))
    box = private / "mbox"
    box.write_bytes(b"".join(b"From x@y Mon Jan  1 00:00:00 2026\n" + mail(i, False) + b"\n"
                             for i in (8, 9)))
    return secret, box


def test_a_symlink_in_a_folder_is_not_followed_one_named_is(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """root's cron trains from folders their users own (docs/bayes.md: ~jane/Maildir/.Junk):
    a symlink planted there to a file only root may read had root learn it as spam, its words
    in a database the milter's user and Dovecot's group read. Each is named, nothing learned
    from it; a symlink the admin names is still read."""
    secret, box = root_only(tmp_path)
    files = folder(tmp_path / "spam", [mail(1, True)])
    (files / "2.eml").symlink_to(secret)
    junk = maildir(tmp_path / "jane" / ".Junk", [mail(2, True), mail(3, True)])
    (junk / "cur" / "1700000000.M1P1.host:2,S").symlink_to(secret)
    (junk / "new" / "1700000001.M2P1.host").symlink_to(box)
    named = tmp_path / "named.eml"
    named.symlink_to(folder(tmp_path / "mine", [mail(4, True)]) / "0.eml")
    code, out, err = run("train", "--db", str(db), "--spam", str(files), str(junk), str(named),
                         capsys=capsys)
    assert code == 1
    assert "Learned 4 of 7 messages as spam (3 unreadable)" in out
    assert err.splitlines() == [
        f"spambridge train: {files / '2.eml'}: unreadable: a symbolic link, not followed",
        f"spambridge train: {junk / 'cur' / '1700000000.M1P1.host:2,S'}: unreadable: "
        "a symbolic link, not followed",
        f"spambridge train: {junk / 'new' / '1700000001.M2P1.host'}: unreadable: "
        "a symbolic link, not followed"]
    learned = tokens(db)
    assert totals(db) == (4, 0) and learned["unique4x1"] == (1, 0)
    assert not {"unique7x0", "unique8x0", "unique9x0"} & learned.keys()


@pytest.mark.parametrize("which", ["cur", "new"])
def test_a_maildirs_cur_or_new_that_is_a_symlink_is_refused(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str], which: str) -> None:
    """A .Junk/cur (or new) replaced by a symlink to a Maildir only root may read was read as
    the user's own: refused, named, and the other one still learned."""
    private = maildir(tmp_path / "root-only", [mail(7, False), mail(8, False)])
    junk = maildir(tmp_path / "jane" / ".Junk", [mail(1, True), mail(2, True)])
    shutil.rmtree(junk / which)
    (junk / which).symlink_to(private / which)
    code, out, err = run("train", "--db", str(db), "--spam", str(junk), capsys=capsys)
    assert code == 1
    assert err == f"spambridge train: {junk / which}: unreadable: a symbolic link, not followed\n"
    assert "Learned 1 of 2 messages as spam (1 unreadable)" in out
    learned = tokens(db)
    assert totals(db) == (1, 0) and ("unique1x1" if which == "cur" else "unique2x1") in learned
    assert not {"unique7x0", "unique8x0"} & learned.keys()


def test_store_rejects_a_foreign_or_newer_database(tmp_path: Path) -> None:
    p = tmp_path / "other.sqlite"
    with sqlite3.connect(p) as c:
        c.execute("PRAGMA user_version=99")
    with pytest.raises(store.StoreError, match="schema version 99"):
        store.SqliteReader(str(p))
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database" * 100)
    scanner = BayesScanner(BayesConfig(db=str(junk)), create=False)
    with pytest.raises(ScanError) as e:
        scanner.score_now(mail(1, True))
    assert e.value.kind is ErrorKind.UNAVAILABLE
    scanner.close()


def test_a_new_database_is_group_writable_in_a_group_writable_directory(tmp_path: Path) -> None:
    """The Dovecot pipe runs as the mail user, let in through the milter's group on a 2770
    directory (contrib/dovecot). SQLite gives -wal/-shm the database's mode, so the database
    must be 0660 there from birth — whatever the umask of whoever creates it first; in a
    private directory it stays 0640."""
    shared, private = tmp_path / "shared", tmp_path / "private"
    shared.mkdir()
    private.mkdir()
    os.chmod(shared, 0o2770)
    os.chmod(private, 0o750)
    old = os.umask(0o077)
    try:
        store.create(str(shared / "bayes.sqlite"))
        store.create(str(private / "bayes.sqlite"))
        w = store.SqliteWriter(str(shared / "bayes.sqlite"))
        w.commit(w.begin())
        assert stat.S_IMODE(os.stat(shared / "bayes.sqlite-wal").st_mode) == 0o660
        w.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(shared / "bayes.sqlite").st_mode) == 0o660
    assert stat.S_IMODE(os.stat(private / "bayes.sqlite").st_mode) == 0o640


def test_another_programs_database_is_left_as_it_was(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`--db` pointed at some other SQLite file by mistake: refused, not converted to WAL and
    given our tables; an emptied file is named as such when the milter reads it."""
    other = tmp_path / "users.sqlite"
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE users(name TEXT)")
    c.close()
    before = other.read_bytes()
    f = tmp_path / "m.eml"
    f.write_bytes(mail(1, True))
    code, _, err = run("train", "--db", str(other), "--spam", str(f), capsys=capsys)
    assert code == 1 and "not a spambridge Bayes database (it holds other tables)" in err
    with pytest.raises(store.StoreError, match="not a spambridge Bayes database"):
        store.SqliteReader(str(other))
    assert other.read_bytes() == before and not Path(f"{other}-wal").exists()

    emptied = tmp_path / "emptied.sqlite"
    emptied.write_bytes(b"")
    with pytest.raises(store.StoreError, match=r"empty, or another program's file"):
        store.SqliteReader(str(emptied))


def test_a_corrupt_database_is_reported_not_a_traceback(tmp_path: Path, db: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    d = folder(tmp_path / "spam", [mail(i, True) for i in range(300)])
    assert run("train", "--db", str(db), "--spam", "-q", str(d), capsys=capsys)[0] == 0
    with open(db, "r+b") as fh:  # clobber the pages after the first few
        fh.seek(5 * 4096)
        fh.write(os.urandom(40 * 4096))
    more = folder(tmp_path / "ham", [mail(i, False) for i in range(5)])
    code, _, err = run("train", "--db", str(db), "--ham", str(more), capsys=capsys)
    assert code == 1 and "Traceback" not in err
    assert f"{db}: " in err and "nothing was saved" in err

    assert run("train", "--db", str(tmp_path / "none.sqlite"), "--forget", str(more),
               capsys=capsys)[:2] == (0, f"No Bayes database at {tmp_path / 'none.sqlite'}: "
                                         "nothing to forget\n")
    assert not (tmp_path / "none.sqlite").exists()


def test_scoring_while_train_writes_in_another_process(tmp_path: Path, db: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    ham = tmp_path / "ham"
    ham.mkdir()
    for i in range(30):
        (ham / f"{i}").write_bytes(mail(i, False))
    run("train", "--db", str(db), "--ham", str(ham), capsys=capsys)
    spam = tmp_path / "spam.mbox"
    spam.write_bytes(b"".join(b"From x Mon Jan  1 00:00:00 2026\n" + mail(i, True) + b"\n"
                              for i in range(3000)))
    proc = subprocess.Popen([sys.executable, "-m", "spambridge", "train", "--db", str(db),
                             "--spam", "--batch-size", "100", str(spam)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    scanner = BayesScanner(BayesConfig(db=str(db), min_trained=1), create=False)
    scored = untrained = 0
    seen_spam: set[int] = set()
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            r = scanner.score_now(mail(7, True))
        except ScanError as e:
            assert e.kind is ErrorKind.UNAVAILABLE and "not trained yet" in e.detail
            untrained += 1
            continue
        assert 0.0 <= r.score <= 1.0
        scored += 1
        seen_spam.add(scanner.totals().nspam)
    out, err = proc.communicate(timeout=60)
    scanner.close()
    assert proc.returncode == 0, err
    assert b"Learned 3000 of 3000" in out
    assert scored + untrained > 0
    assert all(n % 100 == 0 for n in seen_spam)  # readers only ever see whole batches
    assert totals(db) == (3000, 30)


def small_db(path: Path, offset: int, capsys: pytest.CaptureFixture[str]) -> Path:
    """A database trained on 6 spam and 6 ham of its own (`offset` picks which)."""
    for label, spam in (("--spam", True), ("--ham", False)):
        d = path.parent / f"{path.name}-{label[2:]}"
        folder(d, [mail(offset + i, spam) for i in range(6)])
        assert run("train", "--db", str(path), label, str(d), capsys=capsys)[0] == 0
    return path


def test_a_database_copied_over_in_place_is_read_afresh(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`cp backup.sqlite bayes.sqlite` keeps the inode and does not change SQLite's
    data_version: the milter went on mixing its cached counts and pages of the old file with
    the new file's (an ops review: 17 of 60 scores matched neither database)."""
    live, old, new = (small_db(tmp_path / n, o, capsys) for n, o in
                      (("live.sqlite", 0), ("old.sqlite", 0), ("new.sqlite", 100)))
    probe = mail(103, True) + b"extra words agenda budget\n"

    def score(path: Path) -> float:
        s = BayesScanner(BayesConfig(db=str(path), min_trained=1), create=False)
        try:
            return s.score_now(probe).score
        finally:
            s.close()

    scanner = BayesScanner(BayesConfig(db=str(live), min_trained=1), create=False)
    try:
        assert scanner.score_now(probe).score == score(old) != score(new)
        shutil.copyfile(new, live)  # same inode
        assert scanner.score_now(probe).score == score(new)
        assert scanner.totals() == store.Totals(6, 6)
    finally:
        scanner.close()


@pytest.mark.parametrize("link", [False, True])
def test_a_moved_in_database_is_not_read_through_the_old_files_wal(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], link: bool) -> None:
    """The copy-in through SQLite as the docs first showed it, while the milter reads, left the
    copy in the -wal; a later `mv` of another file into place then read (and at the milter's
    stop folded) that -wal into the moved-in file: the admin's database silently became the
    old one. Now the moved-in file is not opened next to the -wal the old file had, and the
    reason is given; the milter's read-only connection folds nothing into it."""
    live = small_db(tmp_path / "live.sqlite", 0, capsys)
    copied = small_db(tmp_path / "copied.sqlite", 100, capsys)
    moved = small_db(tmp_path / "moved.sqlite", 200, capsys)
    probe = mail(201, True)
    db = live
    if link:  # the configured path a symlink: SQLite keeps the -wal beside the target
        db = tmp_path / "bayes.sqlite"
        db.symlink_to(live)
    scanner = BayesScanner(BayesConfig(db=str(db), min_trained=1), create=False)
    try:
        scanner.score_now(probe)
        src = sqlite3.connect(copied)
        dst = sqlite3.connect(db)
        src.backup(dst)  # the copy-in, as docs/bayes.md showed it (no checkpoint after)
        src.close()
        dst.close()
        wal = Path(f"{live}-wal")
        assert wal.stat().st_size > 0  # the milter's open connection kept it from being folded
        scanner.score_now(probe)  # mail goes on: the copy is used
        os.replace(moved, live)  # later, the `mv` deploy
        with pytest.raises(ScanError) as e:
            scanner.score_now(probe)
        assert e.value.kind is ErrorKind.UNAVAILABLE
        assert f"{live}-wal holds" in e.value.detail and "is not opened" in e.value.detail
        wal.unlink()
        Path(f"{live}-shm").unlink()
        assert scanner.score_now(probe).score > 0.9
    finally:
        scanner.close()
    assert totals(live) == (6, 6)
    with sqlite3.connect(live) as c:  # the moved-in file is the one in place: its own message
        assert c.execute("SELECT count(*) FROM messages").fetchone()[0] == 12
    assert tokens(live).get("unique201x1") == (1, 0)


def test_readers_fold_nothing_into_a_file_moved_in_beside_an_unmarked_wal(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What the marks cannot tell (docs/bayes.md): a copy-in through SQLite left its pages in
    the -wal, unfolded and unmarked, and another file was moved in while the milter was
    stopped. The milter started on it, and `check`, read through those pages, but only read:
    once the admin moves the -wal aside, the file in place is the one moved in. A reader that
    could write would have folded the copy's pages into it when it closed, for good."""
    live = small_db(tmp_path / "live.sqlite", 0, capsys)
    copied = small_db(tmp_path / "copied.sqlite", 100, capsys)
    moved = small_db(tmp_path / "moved.sqlite", 200, capsys)
    holder = sqlite3.connect(f"file:{live}?mode=ro", uri=True)  # a milter reading meanwhile
    holder.execute("SELECT count(*) FROM tokens").fetchone()
    src, dst = sqlite3.connect(copied), sqlite3.connect(live)
    src.backup(dst)  # the copy-in, without the checkpoint after it
    src.close()
    dst.close()
    holder.close()  # the milter stopped
    wal = Path(f"{live}-wal")
    assert wal.stat().st_size > 0
    os.replace(moved, live)  # the `mv` deploy, the -wal not folded first
    started = BayesScanner(BayesConfig(db=str(live), min_trained=1), create=False)
    try:
        started.score_now(mail(201, True))  # the milter, started on it
    finally:
        started.close()
    probe = tmp_path / "probe.eml"
    probe.write_bytes(mail(300, False))
    cfg = tmp_path / "sb.toml"
    cfg.write_text("[bayes]\nmin_trained = 1\n")
    assert run("check", "--config", str(cfg), "--db", str(live), str(probe),
               capsys=capsys)[0] == 0
    for suffix in ("-wal", "-shm"):  # aside, as the docs say (a reader that wrote took them)
        if Path(f"{live}{suffix}").exists():
            os.replace(f"{live}{suffix}", tmp_path / f"aside{suffix}")
    assert tokens(live).get("unique201x1") == (1, 0) and "unique101x1" not in tokens(live)


def test_a_database_made_afresh_at_the_path_is_not_taken_for_a_stale_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`rm bayes.sqlite*`, then a new database built at the live path by a run still at it:
    its own -wal holds pages older than its last checkpoint (SQLite's automatic ones). A first
    version of the stale -wal test compared those times and refused the new database, with
    advice to delete the -wal a running `train` was using."""
    live = small_db(tmp_path / "live.sqlite", 0, capsys)
    fresh = small_db(tmp_path / "fresh.sqlite", 100, capsys)
    scanner = BayesScanner(BayesConfig(db=str(live), min_trained=1), create=False)
    try:
        scanner.score_now(mail(1, True))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{live}{suffix}").unlink(missing_ok=True)
        writer = sqlite3.connect(live)  # the run building it, still open
        try:
            sqlite3.connect(fresh).backup(writer)
            writer.execute("INSERT INTO meta VALUES ('x', 'y')")
            writer.commit()
            writer.execute("PRAGMA wal_checkpoint(PASSIVE)")  # the file written after the -wal
            assert Path(f"{live}-wal").stat().st_size > 0
            assert scanner.score_now(mail(101, True)).score > 0.9  # fresh's spam: in use
        finally:
            writer.close()
    finally:
        scanner.close()


def test_the_documented_copy_in_folds_what_it_wrote(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/bayes.md's one-liner, run as written while the milter reads: the copy is used at
    once and leaves no -wal behind for a later `mv` to be read through."""
    docs = (Path(__file__).parents[2] / "docs" / "bayes.md").read_text()
    line = re.search(r"`(python3 -c '[^`]*backup[^`]*)`", docs)
    assert line, "the copy-in one-liner is gone from docs/bayes.md"
    live = small_db(tmp_path / "live.sqlite", 0, capsys)
    new = small_db(tmp_path / "new.sqlite", 100, capsys)
    scanner = BayesScanner(BayesConfig(db=str(live), min_trained=1), create=False)
    try:
        before = scanner.score_now(mail(101, True)).score
        cmd = line.group(1).replace("new.sqlite", str(new)).replace(
            "/var/lib/spambridge/bayes.sqlite", str(live))
        r = subprocess.run(cmd, shell=True, capture_output=True, text=True, check=False)
        assert (r.returncode, r.stdout.strip()) == (0, "(0, 0, 0)"), r.stderr
        assert Path(f"{live}-wal").stat().st_size == 0
        assert scanner.score_now(mail(101, True)).score != before
    finally:
        scanner.close()
    assert tokens(live).get("unique101x1") == (1, 0)


# a `train` that commits a batch and dies before it folds its -wal back (a kill, a reboot)
KILLED_TRAIN = """
import os, sys
from spambridge.bayes import store
w = store.SqliteWriter(sys.argv[1])
b = w.begin()
b.learn(["killedtoken"], "spam")
b.mark(b"k" * 16, "spam")
w.commit(b)
os._exit(0)
"""


def killed_train(db: Path) -> Path:
    """Leave `db` as a killed `train` does: its last batch committed to the -wal only."""
    subprocess.run([sys.executable, "-c", KILLED_TRAIN, str(db)], check=True)
    wal = Path(f"{db}-wal")
    assert wal.stat().st_size > 0
    return wal


@pytest.mark.parametrize("backup", [False, True])
def test_a_database_moved_over_a_killed_trains_wal_is_opened_by_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], backup: bool) -> None:
    """`train` killed, then a retrained database moved into place: the -wal still held the old
    file's last batch, and SQLite reads any -wal of the right name. The running milter's net
    (the -wal unchanged since its last message) missed it, being written after that message,
    and a milter started later, `check`, or a Dovecot pipe could not tell at all: the pipe
    folded the old pages into the new file. Now the -wal says whose it is, and every opener
    refuses it, changing nothing, with what to do. `backup`: what is moved in is an earlier
    copy of the very file, its attributes kept (`cp -a`)."""
    live = small_db(tmp_path / "live.sqlite", 0, capsys)
    moved = small_db(tmp_path / "moved.sqlite", 200, capsys)
    if backup:
        shutil.copy2(live, moved)
        assert os.getxattr(moved, store.FILE_MARK) == os.getxattr(live, store.FILE_MARK)
    scanner = BayesScanner(BayesConfig(db=str(live), min_trained=1), create=False)
    try:
        scanner.score_now(mail(1, True))  # the milter, running on the old file
        wal = killed_train(live)
        os.replace(moved, live)
        with pytest.raises(ScanError) as e:
            scanner.score_now(mail(201, True))
        assert e.value.kind is ErrorKind.UNAVAILABLE
        assert "holds pages a `train` wrote for the file that was there before" in \
            e.value.detail
    finally:
        scanner.close()
    ham = tmp_path / "ham.eml"
    ham.write_bytes(mail(300, False))
    code, out, _ = run("check", "--db", str(live), str(ham), capsys=capsys)
    assert code == 1 and "unchecked=unavailable" in out and f"Move {wal} and" in out
    code, _, err = run("train", "--db", str(live), "--ham", str(ham), capsys=capsys)
    assert code == 1 and "not opened" in err and "was there before" in err
    started = BayesScanner(BayesConfig(db=str(live), min_trained=1), create=False)  # a restart
    try:
        with pytest.raises(ScanError, match="was there before"):
            started.score_now(mail(201, True))
        os.replace(wal, tmp_path / "aside-wal")  # what the message says to do
        os.replace(f"{live}-shm", tmp_path / "aside-shm")
        started.score_now(mail(201, True))
    finally:
        started.close()
    assert totals(live) == (6, 6)  # the moved-in database, whole, and nothing of the old one
    assert "killedtoken" not in tokens(live)
    assert tokens(live).get("unique1x1" if backup else "unique201x1") == (1, 0)


@pytest.mark.parametrize("first_saved", [True, False])
def test_train_says_so_when_the_database_is_moved_over_while_it_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        first_saved: bool) -> None:
    """A retrained copy moved into place (`mv`) while a nightly `train` was at it: what the run
    learned after the move went into the file that was replaced, and `train` said "learned 2",
    exit 0. Now the run stops at the move, exit 1, saying what happened to what it saved and
    that rerunning it is safe; the file in place holds nothing of the run."""
    live = small_db(tmp_path / "live.sqlite", 0, capsys)
    moved = small_db(tmp_path / "moved.sqlite", 200, capsys)
    before = totals(moved), tokens(moved)
    a, b = tmp_path / "a.eml", tmp_path / "b.eml"
    a.write_bytes(mail(100, True))
    b.write_bytes(mail(101, True))
    real = train.learn.read_path

    def reading(path: str, *args: Any) -> Any:
        if path == str(b if first_saved else a):
            os.replace(moved, live)  # the admin's `mv`, while the run reads its input
        return real(path, *args)

    monkeypatch.setattr(train.learn, "read_path", reading)
    code, out, err = run("train", "--db", str(live), "--batch-size", "1", "--spam", str(a),
                         str(b), capsys=capsys)
    assert code == 1, out
    assert f"{live}: the database file was replaced by another file while this run" in err
    saved = "the 1 message(s) this run saved before went into that file, not into the one"
    assert (saved in err) is first_saved, err
    assert "Run the same train again" in err and "learned" not in out
    assert (totals(live), tokens(live)) == before  # the moved-in file, untouched
    monkeypatch.undo()
    code, out, err = run("train", "--db", str(live), "--spam", str(a), str(b), capsys=capsys)
    assert code == 0 and totals(live) == (8, 6), err  # run again: both learned into it


# a `train` that has the database open when a retrained copy is moved over it, commits a batch
# (to the -wal, which stays the old file's) and is killed. The writer refuses a batch once the
# path names another file (test_store.py), so the move comes in the one window left: after
# its last check, just before the COMMIT
MOVED_UNDER_A_TRAIN = """
import os, sys
from spambridge.bayes import store
w = store.SqliteWriter(sys.argv[1])
b = w.begin()
b.learn(["killedtoken"], "spam")
b.mark(b"k" * 16, "spam")
b.commit(lambda: os.replace(sys.argv[2], sys.argv[1]))
w._mark()
os._exit(0)
"""


def test_a_database_moved_in_while_a_train_writes_is_not_read_through_its_wal(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A retrained copy moved into place while a nightly `train` is still at it, and that
    `train` killed after its next commit: its pages are in the -wal beside the new file, and
    the new file must not be taken for the one they were written for (the mark goes on the
    -wal only), or the next opener reads them as the new file's and a `train` folds them in."""
    live = small_db(tmp_path / "live.sqlite", 0, capsys)
    moved = small_db(tmp_path / "moved.sqlite", 200, capsys)
    subprocess.run([sys.executable, "-c", MOVED_UNDER_A_TRAIN, str(live), str(moved)],
                   check=True)
    wal = Path(f"{live}-wal")
    assert wal.stat().st_size > 0
    ham = tmp_path / "ham.eml"
    ham.write_bytes(mail(300, False))
    code, _, err = run("train", "--db", str(live), "--ham", str(ham), capsys=capsys)
    assert code == 1 and "not opened" in err and "was there before" in err, err
    code, out, _ = run("check", "--db", str(live), str(ham), capsys=capsys)
    assert code == 1 and f"Move {wal} and" in out
    os.replace(wal, tmp_path / "aside-wal")  # what the message says to do
    os.replace(f"{live}-shm", tmp_path / "aside-shm")
    assert totals(live) == (6, 6) and "killedtoken" not in tokens(live)


@pytest.mark.parametrize("keep_attributes", [False, True])
def test_a_backup_restored_with_rm_then_cp_is_not_read_through_the_old_wal(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], keep_attributes: bool) -> None:
    """`rm bayes.sqlite; cp backup.sqlite bayes.sqlite` after a killed `train`: the copy is a
    new file (on ext4 with the freed inode number, every time), and SQLite read the old -wal's
    pages as its own. With `cp -a` the backup even carries the file's mark, but an older one:
    the -wal was started over since. (The `rm` alone is safe: SQLite deletes the -wal of the
    empty file it then creates.)"""
    live = small_db(tmp_path / "live.sqlite", 0, capsys)
    backup = tmp_path / "backup.sqlite"
    (shutil.copy2 if keep_attributes else shutil.copyfile)(live, backup)  # last night's
    assert run("train", "--db", str(live), "--ham", str(folder(
        tmp_path / "day", [mail(400, False)])), capsys=capsys)[0] == 0  # a day of training
    wal = killed_train(live)
    live.unlink()
    (shutil.copy2 if keep_attributes else shutil.copyfile)(backup, live)
    ham = folder(tmp_path / "more-ham", [mail(300, False)])
    code, _, err = run("train", "--db", str(live), "--ham", str(ham), capsys=capsys)
    assert code == 1 and "was there before" in err
    os.replace(wal, tmp_path / "aside-wal")
    os.replace(f"{live}-shm", tmp_path / "aside-shm")
    assert totals(live) == (6, 6) and "killedtoken" not in tokens(live)
    assert run("train", "--db", str(live), "--ham", str(ham), capsys=capsys)[0] == 0
    assert totals(live) == (6, 7)


def test_a_database_removed_after_a_killed_train_is_made_afresh(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`rm bayes.sqlite` to start over, after a `train` was killed: its marked -wal is still
    there, but with no file it has nothing to be taken for. The next `train` makes a new,
    empty database (SQLite drops the old pages), not a refusal to "move the -wal aside" from a
    file in place that is not there."""
    live = small_db(tmp_path / "live.sqlite", 0, capsys)
    wal = killed_train(live)
    live.unlink()
    assert wal.exists()
    ham = folder(tmp_path / "new-ham", [mail(300, False)])
    code, out, err = run("train", "--db", str(live), "--ham", str(ham), capsys=capsys)
    assert code == 0 and "Learned 1 of 1 messages as ham" in out, err
    assert totals(live) == (0, 1) and "killedtoken" not in tokens(live)


def test_a_killed_trains_own_wal_is_read_and_folded_by_the_next_train(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    live = small_db(tmp_path / "live.sqlite", 0, capsys)
    wal = killed_train(live)
    generation = store.wal_generation(str(wal))
    assert generation and os.getxattr(wal, store.FILE_MARK) == generation
    assert os.getxattr(live, store.FILE_MARK) == generation
    reader = store.SqliteReader(str(live))
    try:
        assert reader.totals() == store.Totals(7, 6)  # the killed run's committed batch counts
    finally:
        reader.close()
    ham = folder(tmp_path / "more-ham", [mail(300, False)])
    assert run("train", "--db", str(live), "--ham", str(ham), capsys=capsys)[0] == 0
    assert totals(live) == (7, 7) and wal.stat().st_size == 0


def test_a_database_restored_with_its_wal_from_one_backup_is_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Both files copied back together (new inodes): the -wal is the file's own, and so is
    its mark. A first version marked inodes and refused this."""
    live = small_db(tmp_path / "live.sqlite", 0, capsys)
    killed_train(live)
    restored = tmp_path / "restored"
    restored.mkdir()
    for suffix in ("", "-wal"):  # as `cp -a` would: copy2 keeps extended attributes
        shutil.copy2(f"{live}{suffix}", restored / f"bayes.sqlite{suffix}")
    db = restored / "bayes.sqlite"
    ham = folder(tmp_path / "more-ham", [mail(300, False)])
    assert run("train", "--db", str(db), "--ham", str(ham), capsys=capsys)[0] == 0
    assert totals(db) == (7, 7)  # the backup's last batch kept


def test_a_database_put_in_place_rightly_is_not_refused_for_a_later_write(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Folded (`0|0|0`), then `mv`: the emptied -wal kept the old file's mark, and a write that
    was no `train`'s (the documented copy-in, unfolded while a reader kept its snapshot; an
    admin's VACUUM) then filled it with the new file's own pages: a first version refused the
    database from then on, and said to move its pages aside. A mark counts only for the
    -wal's generation it was made in."""
    live = small_db(tmp_path / "live.sqlite", 0, capsys)
    new = small_db(tmp_path / "new.sqlite", 200, capsys)
    scanner = BayesScanner(BayesConfig(db=str(live), min_trained=1), create=False)
    try:
        scanner.score_now(mail(1, True))  # the milter keeps the -wal file there
        ham = folder(tmp_path / "more-ham", [mail(300, False)])
        assert run("train", "--db", str(live), "--ham", str(ham), capsys=capsys)[0] == 0
        wal = Path(f"{live}-wal")
        assert wal.stat().st_size == 0 and os.getxattr(wal, store.FILE_MARK)
        os.replace(new, live)
        scanner.score_now(mail(201, True))
        with sqlite3.connect(live) as c:  # another program's write, left in the -wal
            c.execute("INSERT INTO meta VALUES ('note', 'x')")
        assert wal.stat().st_size > 0
        code, _, err = run("train", "--db", str(live), "--ham", str(ham), capsys=capsys)
        assert code == 0, err
        assert scanner.score_now(mail(201, True)).score > 0.9
    finally:
        scanner.close()
    assert totals(live) == (6, 7)


LONG_RUN = 20000  # spam in the mbox of a train run stopped part-way


def long_train(tmp_path: Path, db: Path, *args: str, **popen: Any
               ) -> tuple[subprocess.Popen[Any], list[str]]:
    """`train --spam` (and `args`) of an mbox of LONG_RUN spam in batches of 250, started and
    left running once two batches are committed; the process and its command line."""
    spam = tmp_path / "spam.mbox"
    spam.write_bytes(b"".join(b"From x Mon Jan  1 00:00:00 2026\n" + mail(i, True) + b"\n"
                              for i in range(LONG_RUN)))
    cmd = [sys.executable, "-m", "spambridge", "train", *args, "--db", str(db), "--spam",
           "--batch-size", "250", str(spam)]
    proc = subprocess.Popen(cmd, **popen)

    def committed() -> int:
        try:
            return totals(db)[0]
        except sqlite3.Error:
            return 0

    deadline = time.monotonic() + 60
    while committed() < 500 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    return proc, cmd


def test_killed_train_leaves_a_consistent_database(tmp_path: Path, db: Path) -> None:
    proc, _ = long_train(tmp_path, db, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        nspam = c.execute("SELECT nspam FROM totals").fetchone()[0]
        rows = c.execute("SELECT count(*) FROM messages WHERE label='spam'").fetchone()[0]
        viagra = c.execute("SELECT spam FROM tokens WHERE token='viagra'").fetchone()[0]
    assert 0 < nspam < LONG_RUN
    assert nspam % 250 == 0 and rows == nspam and viagra == nspam


def test_a_train_stopped_by_sigterm_says_what_it_kept_and_folds_its_wal(
        tmp_path: Path, db: Path) -> None:
    """SIGTERM (`timeout`, `kill`, a systemd stop, cron's run-parts) stops a long run as Ctrl-C
    does: the open batch rolled back, the -wal folded back (a killed run leaves pages in it, the
    hazard docs/bayes.md warns of), the admin told how much was kept, exit status 143; and a
    rerun learns the rest. It used to die on the spot: nothing said, the -wal left full."""
    n = LONG_RUN
    proc, cmd = long_train(tmp_path, db, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, (proc.returncode, err)
    # the TERM comes once the test sees two batches committed: inside a batch, or (when it
    # lands while the second commit's mark is written, with the stop deferred) just after
    m = re.search(r"stopped \(SIGTERM\); (?:the first (\d+) of \d+ messages were saved|all "
                  r"(\d+) messages read so far were saved)", err)
    assert m, err
    kept = int(m.group(1) or m.group(2))
    assert 0 < kept < n and totals(db) == (kept, 0) and out == ""
    wal = Path(f"{db}-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert (f"Learned {n - kept} of {n} messages as spam ({kept} already trained)"
            in again.stdout)
    assert totals(db) == (n, 0)


def test_a_stop_that_comes_as_a_batch_commits_is_counted_with_it(
        tmp_path: Path, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGTERM just after a batch's COMMIT (while the -wal is marked, before the run had
    counted the batch saved) said "the first 250 of 501 messages were saved" of a database
    that held 500 (seen once in the long-run test above, whose SIGTERM follows the second
    commit). A commit and its count now go together: the stop is taken after both."""
    box = tmp_path / "spam.mbox"
    box.write_bytes(b"".join(b"From x Mon Jan  1 00:00:00 2026\n" + mail(i, True) + b"\n"
                             for i in range(600)))
    marked = store.SqliteWriter._mark
    commits: list[int] = []

    def mark_then_stop(writer: store.SqliteWriter) -> None:
        marked(writer)
        commits.append(1)
        if len(commits) == 2:  # the second batch is in the database: stopped right then
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(store.SqliteWriter, "_mark", mark_then_stop)
    out, err = io.StringIO(), io.StringIO()
    code = train.run(_cfg(db), "spam", [str(box)], batch_messages=250, out=out, err=err)
    assert code == 143, err.getvalue()
    m = re.search(r"(?:the first (\d+) of \d+|all (\d+)) messages (?:read so far )?were saved",
                  err.getvalue())
    assert m, err.getvalue()
    assert int(m.group(1) or m.group(2)) == totals(db)[0] == 500


def test_a_sigterm_ignored_by_whoever_started_train_does_not_stop_it(
        tmp_path: Path, db: Path) -> None:
    """A wrapper that ignores SIGTERM (`trap '' TERM`: what it starts must finish) passes that
    on to `train`: the run keeps to it, learning every message, and does not stop at a SIGTERM
    as a run started normally does (_stop_on_sigterm leaves an ignored signal ignored)."""
    proc, _ = long_train(tmp_path, db, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=lambda: signal.signal(signal.SIGTERM,
                                                                     signal.SIG_IGN))
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, (proc.returncode, err)
    assert f"Learned {LONG_RUN} of {LONG_RUN} messages as spam" in out and "stopped" not in err
    assert totals(db) == (LONG_RUN, 0)


@pytest.mark.parametrize("compress", [False, True])
def test_an_mbox_trickling_in_on_stdin_is_saved_batch_by_batch(db: Path, compress: bool
                                                               ) -> None:
    """An mbox on a slow pipe (an export written as it goes) is committed as its messages come,
    every BATCH_SECONDS, as docs/bayes.md says; gzipped too, when each message is flushed out.
    Stdin was read in 8 KiB pieces, each waiting for the whole 8 KiB (of what came out of the
    decompressor too): small messages sat unread, no batch was ever committed, and a SIGTERM
    said "nothing was saved"."""
    gz = zlib.compressobj(wbits=31)  # a gzip stream
    proc = subprocess.Popen([sys.executable, "-m", "spambridge", "train", "--db", str(db),
                             "--spam", "--mbox", "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None

    def committed() -> int:
        try:
            with sqlite3.connect(db) as c:
                return int(c.execute("SELECT count(*) FROM messages").fetchone()[0])
        except sqlite3.Error:
            return 0

    deadline = time.monotonic() + 60
    while not db.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # started: the messages' spacing is what train sees
    # a message every 0.5 s, over more than BATCH_SECONDS, 5 KiB in all; the pipe kept open
    for i in range(12):
        if committed():
            break
        data = mbox_of([mail(i, True)])
        proc.stdin.write(gz.compress(data) + gz.flush(zlib.Z_SYNC_FLUSH) if compress else data)
        proc.stdin.flush()
        time.sleep(0.5)
    deadline = time.monotonic() + 30
    while not committed() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, (proc.returncode, err)
    # (all of them, when the stop came right after a batch was saved)
    m = re.search(rb"stopped \(SIGTERM\); (?:the first (\d+) of \d+|all (\d+)) messages "
                  rb"(?:read so far )?were saved", err)
    assert m, err
    assert int(m.group(1) or m.group(2)) == committed() == totals(db)[0] > 0
    assert tokens(db)["unique0x1"] == (1, 0) and out == b""


def test_sigterm_in_the_local_half_of_spamd_plus_bayes_stops_the_whole_command(
        tmp_path: Path, db: Path) -> None:
    """`--engine spamd+bayes` teaches the database, then spamd. A SIGTERM (or Ctrl-C) during
    the first half used to end only that half: the command went on to spamd, so a Dovecot
    pipe or a `timeout` asking it to stop kept it running. No spamd listens on this socket:
    going on would say "spamd unavailable"."""
    proc, _ = long_train(tmp_path, db, "--engine", "spamd+bayes", "--spamd",
                         str(tmp_path / "no-spamd.sock"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, (proc.returncode, err)
    assert "stopped (SIGTERM); the first" in err
    assert "spamd" not in out + err, out + err


# `train --engine spamd` with a SIGTERM (or SIGINT) arriving while a TELL is on its way out:
# sent by the process itself from inside the task aiospamc runs the request in (a signal that
# lands there, not while the loop waits for spamd, is the case that went wrong)
SIGNAL_MID_TELL = """
import os, signal, sys
from spambridge import cli
from spambridge.scanners import spamd
send, sent = spamd._BoundedSend._send, []
async def signalled(self, data):
    sent.append(data)
    if len(sent) == 3:
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    return await send(self, data)
spamd._BoundedSend._send = signalled
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize(("sig", "code", "how"), [("SIGTERM", 143, "stopped (SIGTERM)"),
                                                  ("SIGINT", 130, "interrupted")])
def test_a_signal_during_a_tell_stops_spamd_training_with_one_line(
        tmp_path: Path, sig: str, code: int, how: str) -> None:
    """A SIGTERM that arrived while a TELL was being sent (rather than while waiting for
    spamd's answer) was raised inside aiospamc's task: the run still said "stopped" and exited
    143, but stderr (a Dovecot pipe's log) also got "ERROR asyncio: Task exception was never
    retrieved" and a 40-line traceback. It now stops as Ctrl-C always did: one line."""
    from spamdfakes import SwitchableSpamd

    for i in range(5):
        (tmp_path / f"{i}.eml").write_bytes(mail(i, True))
    fake = SwitchableSpamd("good")
    try:
        r = subprocess.run([sys.executable, "-c", SIGNAL_MID_TELL, sig, "train", "--engine",
                            "spamd", "--spamd", fake.address, "--spam", str(tmp_path)],
                           capture_output=True, text=True, timeout=60)
    finally:
        fake.close()
    assert (r.returncode, r.stdout) == (code, ""), r.stderr
    assert r.stderr == (f"spambridge train: {how}; spamd had answered for 2 of 3 messages, and "
                        "saved each as it answered; the rest was not sent\n")


def test_a_reader_keeping_its_snapshot_does_not_stall_the_dovecot_pipe(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A reader keeping its snapshot (an admin's `sqlite3` session, a `.dump` backup) kept a
    finished `train -` in its closing checkpoint for the whole 30 s write timeout, holding the
    write lock meanwhile, so every other `train` waited too: Dovecot kills its pipes after
    10 s, and those messages were never learned. Now the fold gives up after a short wait and
    says so; the messages are learned either way."""
    run("train", "--db", str(db), "--ham", str(folder(tmp_path / "ham", [mail(i, False)
                                                                         for i in range(3)])),
        capsys=capsys)
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM tokens").fetchone()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        start = time.monotonic()
        for i in range(2):  # the second while the first folds (or waits to)
            (tmp_path / f"{i}.eml").write_bytes(mail(i, True))
            with open(tmp_path / f"{i}.eml", "rb") as msg:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "spambridge", "train", "--db", str(db), "--spam",
                     "-q", "-"], stdin=msg, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            time.sleep(0.2)
        errs = [p.communicate(timeout=20)[1].decode() for p in procs]
        elapsed = time.monotonic() - start
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        reader.close()
    assert [p.returncode for p in procs] == [0, 0], errs
    assert elapsed < 8, f"the pipes took {elapsed:.1f}s"
    # one tells: the last to finish (the other may leave the fold to it, as it was writing)
    assert any("was not folded back" in e for e in errs) and "Traceback" not in "".join(errs)
    assert totals(db) == (2, 3)


def too_large_while_locked(db: Path) -> subprocess.CompletedProcess[bytes]:
    """A Dovecot pipe (`train --spam -q -`) with a message over its --max-size, while another
    connection holds the database's write lock, which a message not learned needs not wait
    for."""
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        return subprocess.run([sys.executable, "-m", "spambridge", "train", "--db", str(db),
                               "--spam", "-q", "--max-size", "100", "-"],
                              input=mail(1, True), capture_output=True, timeout=60)
    finally:
        writer.rollback()
        writer.close()


def test_a_pipe_leaves_the_fold_to_a_train_still_writing_without_a_warning(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A Dovecot pipe ending while another `train` holds the write lock (a bulk run's batch,
    here held from this test) cannot fold the -wal back; that writer folds it when it ends, so
    the pipe says nothing of it. The warning not to move a file over the database is for a
    -wal a reader kept full: said here, it would reach Dovecot's log from every pipe that ends
    during a long batch of a bulk run."""
    run("train", "--db", str(db), "--ham", str(folder(tmp_path / "ham", [mail(i, False)
                                                                         for i in range(3)])),
        capsys=capsys)
    pipe = too_large_while_locked(db)
    assert pipe.returncode == 0
    assert pipe.stderr.decode() == ("spambridge train: <stdin>: too large (over --max-size, 100 "
                                    "bytes): not learned\n")


def test_a_dovecot_pipe_is_not_held_up_by_a_bulk_train(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A user moves a message to Junk while the admin's bulk `train` runs. The bulk run holds
    SQLite's write lock for each batch and took it back within a millisecond of each commit,
    while a waiting writer, slowed by SQLite's busy handler to a try every 100 ms, never got
    in: the pipe waited for the whole bulk run (Dovecot kills it after 10 s, and the message
    is not learned). Now it gets the next turn between two batches."""
    run("train", "--db", str(db), "--ham", str(folder(tmp_path / "ham", [mail(i, False)
                                                                         for i in range(3)])),
        capsys=capsys)
    box = tmp_path / "bulk.mbox"
    with open(box, "wb") as f:  # enough that the bulk run lasts seconds on any machine
        for i in range(30_000):
            f.write(b"From x@example.org Wed Nov 25 10:00:00 2026\n" + mail(10 + i, True)
                    + b"\n")
    bulk = subprocess.Popen([sys.executable, "-m", "spambridge", "train", "--db", str(db),
                            "--spam", "-q", str(box)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pipes: list[tuple[subprocess.CompletedProcess[bytes], bool]] = []
    try:
        deadline = time.monotonic() + 30
        while totals(db)[0] == 0 and bulk.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # until its first batch is in: it is under way
        for i in range(3):  # one after another, as IMAPSieve runs a session's pipes
            pipe = subprocess.run([sys.executable, "-m", "spambridge", "train", "--db",
                                   str(db), "--ham", "-q", "-"],
                                  input=mail(i, False, extra=f"X-Moved: {i}\n"),
                                  capture_output=True, timeout=60, check=False)
            pipes.append((pipe, bulk.poll() is None))
        _, bulk_err = bulk.communicate(timeout=120)
    finally:
        if bulk.poll() is None:
            bulk.kill()
            bulk.wait()
    assert [p.returncode for p, _ in pipes] == [0, 0, 0], [p.stderr for p, _ in pipes]
    # a pipe that got in between two batches by luck (SQLite's first tries come quickly)
    # cannot make three in a row
    assert all(running for _, running in pipes), "a pipe waited for the bulk run to end"
    assert bulk.returncode == 0, bulk_err
    assert totals(db) == (30_000, 6)


def test_options_may_follow_paths(tmp_path: Path, db: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """sa-learn habits: `train --spam a.eml --mbox b.mbox` takes both paths."""
    one = tmp_path / "a.eml"
    one.write_bytes(mail(1, True))
    box = tmp_path / "b.mbox"
    box.write_bytes(mail(2, True))  # no leading "From " line: only --mbox makes it an mbox
    code, out, _ = run("train", "--db", str(db), "--spam", str(one), "--mbox", str(box),
                       capsys=capsys)
    assert code == 0 and "Learned 2 of 2 messages as spam" in out
    with pytest.raises(SystemExit):
        run("train", "--db", str(db), "--spam", str(one), "--bogus", capsys=capsys)


def test_a_message_renamed_in_a_live_maildir_during_the_run_is_not_an_error(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A nightly `train -q --spam .../.Junk` over a Maildir in use: Dovecot renames a message
    file when its flags change (read: `:2,S`) or moves it from new/ to cur/, so a file listed
    at the start may be gone under that name when its turn comes. That is no error (it is
    learned under its new name by the next run); it failed the run with "unreadable: no such
    file or directory" and exit status 1, a cron mail every time it happened."""
    box = maildir(tmp_path / "Junk", [mail(i, True) for i in range(4)])
    slurp = train.sources._slurp
    renamed = box / "cur" / "1.host:2,S"

    def read_while_the_user_reads(path: str, limit: int, named: bool, **kw: Any) -> object:
        if path == str(renamed):
            renamed.rename(box / "cur" / "1.host:2,RS")  # the user read and replied to it
        return slurp(path, limit, named, **kw)

    monkeypatch.setattr(train.sources, "_slurp", read_while_the_user_reads)
    code, out, err = run("train", "--db", str(db), "--spam", str(box), capsys=capsys)
    assert (code, err) == (0, "")
    assert out.startswith("Learned 3 of 4 messages as spam (1 moved or deleted during the run)")
    monkeypatch.setattr(train.sources, "_slurp", slurp)
    code, out, err = run("train", "--db", str(db), "--spam", str(box), capsys=capsys)
    assert (code, err) == (0, "")
    assert out.startswith("Learned 1 of 4 messages as spam (3 already trained)")


def test_maildir_messages_marked_deleted_are_not_learned(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A mail client without IMAP MOVE moves a message by copying it and marking the original
    deleted (Maildir flag T) until the folder is expunged. The nightly `train --ham INBOX`
    learned a spam the user had just moved to Junk as ham, as `train --spam Junk` learned it
    as spam: the run's order decided the class. sa-learn passes such files over in a Maildir;
    so does `train`, counting them. Named on the command line, such a file is learned."""
    box = maildir(tmp_path / "INBOX", [])
    flags = {"S": False, "ST": True, "FRST": True, "Sa": False, "Tab": True, "Sbt": False}
    for i, info in enumerate(flags):
        (box / "cur" / f"17000000{i:02d}.M{i}P1.host,S=999:2,{info}").write_bytes(
            mail(i, False))
    (box / "new" / "1700000099.M9P1.host").write_bytes(mail(9, False))
    code, out, err = run("train", "--db", str(db), "--ham", str(box), capsys=capsys)
    assert (code, err) == (0, "")
    assert out.startswith("Learned 4 of 7 messages as ham (3 marked deleted) in ")
    learned = {t for t in tokens(db) if t.startswith("unique")}
    assert learned == {f"unique{i}x0" for i, d in enumerate(flags.values()) if not d} | {
        "unique9x0"}
    deleted = box / "cur" / "1700000001.M1P1.host,S=999:2,ST"
    code, out, err = run("train", "--db", str(db), "--spam", str(deleted), capsys=capsys)
    assert (code, err) == (0, "") and totals(db) == (1, 4)


def test_a_maildirs_cur_named_as_a_folder_passes_over_messages_marked_deleted(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`train --spam ~/Maildir/.Junk/cur`, as sa-learn cron lines name it: a false positive
    the user rescued from Junk with a client without IMAP MOVE stays there marked deleted
    until expunged, and was learned as spam from cur/ named so (as from Junk it was not).
    A folder of another name is a plain one: every file in it learned."""
    junk = maildir(tmp_path / "Maildir" / ".Junk", [])
    (junk / "cur" / "1700000001.M1P1.host,S=999:2,S").write_bytes(mail(1, True))
    (junk / "cur" / "1700000002.M2P1.host,S=999:2,ST").write_bytes(mail(2, False))
    for named in (junk / "cur", str(junk / "cur") + "/"):
        code, out, err = run("train", "--db", str(db), "--spam", str(named), capsys=capsys)
        assert (code, err) == (0, ""), err
        assert "1 marked deleted)" in out, out
    assert totals(db) == (1, 0)
    plain = tmp_path / "saved"
    plain.mkdir()
    (plain / "x:2,ST").write_bytes(mail(3, False))
    code, out, _ = run("train", "--db", str(db), "--ham", str(plain), capsys=capsys)
    assert code == 0 and out.startswith("Learned 1 of 1 messages as ham"), out


def test_a_maildirs_new_named_as_a_folder_is_read_as_its_cur_is(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`train --spam ~/Maildir/.Junk/new` passes over a file marked deleted as naming the
    Maildir does; a folder named `new` in no Maildir (no cur/ beside it) is a plain folder,
    every file in it learned."""
    junk = maildir(tmp_path / "Maildir" / ".Junk", [])
    (junk / "new" / "1700000001.M1P1.host:2,").write_bytes(mail(1, True))
    (junk / "new" / "1700000002.M2P1.host:2,T").write_bytes(mail(2, False))
    code, out, err = run("train", "--db", str(db), "--spam", str(junk / "new"), capsys=capsys)
    assert (code, err) == (0, "") and "1 marked deleted)" in out, out
    assert totals(db) == (1, 0)
    plain = tmp_path / "saved" / "new"
    plain.mkdir(parents=True)
    (plain / "x:2,ST").write_bytes(mail(3, False))
    code, out, _ = run("train", "--db", str(db), "--ham", str(plain), capsys=capsys)
    assert code == 0 and out.startswith("Learned 1 of 1 messages as ham"), out


def test_a_fifo_or_subdirectory_in_a_folder_is_skipped_not_waited_on(
        tmp_path: Path, db: Path) -> None:
    folder = tmp_path / "ham"
    folder.mkdir()
    (folder / "1.eml").write_bytes(mail(1, False))
    os.mkfifo(folder / "2.fifo")  # opening it for reading would block until a writer comes
    (folder / "sub").mkdir()
    proc = subprocess.run([sys.executable, "-m", "spambridge", "train", "--db", str(db),
                           "--ham", str(folder)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Learned 1 of 1 messages as ham" in proc.stdout


def test_check_explain_and_batch_do_not_mix(capsys: pytest.CaptureFixture[str]) -> None:
    """--batch silently dropped --explain: a table line has no room for clues."""
    with pytest.raises(SystemExit) as e:
        cli.main(["check", "--explain", "--batch", "x.eml"])
    assert e.value.code == 2
    assert "--batch: not allowed with argument --explain" in capsys.readouterr().err


def test_a_database_path_that_is_not_utf8_is_still_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--db` can name any path; the read-only connection's URI was built from str, and every
    message came back unchecked=error for a Latin-1 directory name."""
    d = tmp_path / os.fsdecode(b"lat\xe9")
    d.mkdir()
    db = small_db(d / "bayes.sqlite", 0, capsys)
    cfg = tmp_path / "spambridge.toml"
    cfg.write_text("[bayes]\nmin_trained = 1\n")
    probe = tmp_path / "probe.eml"
    probe.write_bytes(mail(1, True))
    code, out, err = run("check", "--config", str(cfg), "--db", str(db), "--batch", str(probe),
                         capsys=capsys)
    assert code == 0, err
    assert out.split("\t")[2].strip() in ("spam", "reject")


def test_an_index_line_is_split_at_its_first_blank_only(tmp_path: Path) -> None:
    """A tab is taken for the space between class and path, but only there: the first tab
    anywhere on the line was replaced, so `spam a<TAB>b.eml` named `a b.eml`."""
    index = tmp_path / "index"
    index.write_text("spam a\tb.eml\nham\tc d.eml\nspam  e\tf g.eml\n")
    assert [(e.label, e.path) for e in train.read_index(str(index))] == [
        ("spam", str(tmp_path / "a\tb.eml")), ("ham", str(tmp_path / "c d.eml")),
        ("spam", str(tmp_path / "e\tf g.eml"))]


def test_an_index_file_that_cannot_be_read_is_named_as_any_path_is(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--index` naming no file said Python's "[Errno 2] No such file or directory: '...'";
    it now reads as train's other path errors do (exit status 1), and nothing is created."""
    missing, folder = tmp_path / "missing.idx", tmp_path / "corpus"
    folder.mkdir()
    code, out, err = run("train", "--db", str(db), "--index", str(missing), capsys=capsys)
    assert (code, out) == (1, "")
    assert err == f"spambridge train: {missing}: unreadable: no such file or directory\n"
    code, out, err = run("train", "--db", str(db), "--index", str(folder), capsys=capsys)
    assert (code, out) == (1, "")
    assert err == f"spambridge train: {folder}: unreadable: Is a directory\n"
    assert not db.exists()


def test_a_bug_in_the_bayes_engine_is_an_error_not_unavailable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug while scoring falls under on_error (X-Spam-Status `unchecked=error`), not
    on_unavailable, which an admin sets for a database not there yet or locked."""
    db = tmp_path / "bayes.sqlite"
    store.create(str(db))
    scanner = BayesScanner(BayesConfig(db=str(db), min_trained=0), create=False)

    def broken(message: bytes, limits: object) -> list[str]:
        raise KeyError("bug")

    monkeypatch.setattr("spambridge.scanners.bayes.tokenize", broken)
    try:
        with pytest.raises(ScanError) as e:
            scanner.score_now(mail(1, True))
    finally:
        scanner.close()
    assert e.value.kind is ErrorKind.ERROR and e.value.detail == "internal: KeyError"


def test_the_same_message_twice_in_one_run_is_learned_once(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder or an mbox holding one message twice (a copy in two folders exported
    together): the second is "already trained" even though the first is not committed yet
    (both are in one batch), so its tokens are not counted twice."""
    once = folder(tmp_path / "once", [mail(1, True)])
    assert run("train", "--db", str(tmp_path / "ref.sqlite"), "--spam", str(once),
               capsys=capsys)[0] == 0
    twice = folder(tmp_path / "twice", [mail(1, True), mail(1, True)])
    code, out, _ = run("train", "--db", str(db), "--spam", str(twice), capsys=capsys)
    assert code == 0 and "Learned 1 of 2 messages as spam (1 already trained)" in out
    assert totals(db) == (1, 0) and tokens(db) == tokens(tmp_path / "ref.sqlite")


def test_the_summary_line_counts_in_words_a_reader_expects() -> None:
    """One message gives no rate (a rate of one message means nothing), and one spamd error is
    "1 spamd error", not "1 spamd errors"."""
    one = train.Summary("spam", seen=1, learned=1)
    assert one.line(2.0) == "Learned 1 of 1 messages as spam in 2.0s"
    two = train.Summary("spam", seen=2, learned=2)
    assert two.line(2.0) == "Learned 2 of 2 messages as spam in 2.0s, 1 msg/s"
    failed = train.Summary("ham", seen=2, learned=1, spamd_errors=1, spamd=True)
    assert failed.line(0.1) == "Learned 1 of 2 messages as ham (1 spamd error) in 0.1s (spamd)"
    failed.spamd_errors = 2
    assert "(2 spamd errors)" in failed.line(0.1)


def _cfg(db: Path, **bayes: int) -> Config:
    return Config(bayes=BayesConfig(db=str(db), **bayes))


@pytest.mark.parametrize(("read", "said"), [
    # (nothing failed: "every batch before the one that failed" said so until 2026-11-26)
    (3, "interrupted; the first 2 of 3 messages were saved (every batch before the open one), "
        "the rest was not"),
    # right after a batch was saved: "the first 2 of 2 …, the rest was not" read as a loss
    (2, "interrupted; all 2 messages read so far were saved")])
def test_an_interrupted_train_says_how_many_messages_were_saved(
        read: int, said: str, tmp_path: Path, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after the second or in the third message of batches of two: the first batch is
    committed, and the admin is told exactly that much was kept, to know where to start
    again, and that nothing was lost when the stop came between two batches."""
    import io

    def some_then_ctrl_c(path: str, max_size: int, mbox: bool) -> object:
        for n in range(read):
            yield train.Item(f"m{n}", mail(n, True))
        raise KeyboardInterrupt

    monkeypatch.setattr(train.learn, "read_path", some_then_ctrl_c)
    out, err = io.StringIO(), io.StringIO()
    code = train.run(_cfg(db), "spam", ["box"], batch_messages=2, out=out, err=err)
    assert code == 130 and totals(db) == (2, 0)
    assert said in err.getvalue()
    assert ("the rest was not" in err.getvalue()) == (read == 3)


def test_a_second_ctrl_c_while_the_run_winds_up_does_not_cut_the_fold_short(
        tmp_path: Path, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An impatient admin presses Ctrl-C again while the interrupted run folds its -wal back
    (up to a second): that second one used to break off the fold, leaving the run's pages in
    the -wal (the state docs/bayes.md warns of) and ending without the run's own exit path.
    While it winds up, SIGINT and SIGTERM wait."""
    import io

    def three_then_ctrl_c(path: str, max_size: int, mbox: bool) -> object:
        for n in range(3):
            yield train.Item(f"m{n}", mail(n, True))
        raise KeyboardInterrupt

    fold = store.SqliteWriter._fold

    def ctrl_c_again(self: store.SqliteWriter) -> bool:
        os.kill(os.getpid(), signal.SIGINT)  # delivered to Python right after this call
        return fold(self)

    monkeypatch.setattr(train.learn, "read_path", three_then_ctrl_c)
    monkeypatch.setattr(store.SqliteWriter, "_fold", ctrl_c_again)
    out, err = io.StringIO(), io.StringIO()
    # Ctrl-C as in a terminal: pytest started as a background job (`nohup … &`, some CI
    # runners) inherits SIGINT ignored, which `train` rightly leaves ignored
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code: int | None = train.run(_cfg(db), "spam", ["box"], batch_messages=2, out=out,
                                     err=err)
    except KeyboardInterrupt:
        code = None
    finally:
        handler = signal.signal(signal.SIGINT, inherited)
    assert handler is signal.default_int_handler  # put back
    assert code == 130 and totals(db) == (2, 0)
    assert "interrupted; the first 2 of 3 messages were saved" in err.getvalue()
    wal = Path(f"{db}-wal")
    assert not wal.exists() or wal.stat().st_size == 0


def test_a_wal_sqlite_could_not_fold_back_fails_the_run(
        tmp_path: Path, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk at the closing checkpoint: what was learned is kept (in the -wal), but the
    exit status is 1 and the admin reads why, before moving anything over the database."""
    import io

    def disk_full(self: store.SqliteWriter) -> bool:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store.SqliteWriter, "_fold", disk_full)
    f = tmp_path / "m.eml"
    f.write_bytes(mail(1, True))
    out, err = io.StringIO(), io.StringIO()
    code = train.run(_cfg(db), "spam", [str(f)], out=out, err=err)
    assert code == 1 and "Learned 1 of 1 messages as spam" in out.getvalue()
    assert "the -wal file was not folded back (SQLite could not: database or disk is full)" \
        in err.getvalue()
    assert totals(db) == (1, 0)


class _FixedScore:
    """A scorer that puts every message at one score: the regime's edges, tried exactly."""

    def __init__(self, score: float) -> None:
        self.score = score

    def score_aligned(self, tokens: object, totals: object, values: object) -> object:
        return type("Verdict", (), {"score": self.score})()


@pytest.mark.parametrize(("label", "score", "learned"), [
    ("spam", 0.995, False), ("spam", 0.99, True), ("spam", 1.0, False),
    ("ham", 0.005, False), ("ham", 0.01, True), ("ham", 0.0, False), ("ham", 0.5, True)])
def test_selective_learns_all_but_what_is_at_or_beyond_spambayes_edges(
        db: Path, label: str, score: float, learned: bool) -> None:
    """SpamBayes' nonedge regime: spam the database puts at 0.995 or above and ham at 0.005 or
    below teach it nothing and are not learned; a ham at 0.01 is not certain and is."""
    writer = store.SqliteWriter(str(db))
    first = train.Trainer(writer, "index")
    for n in range(3):
        first.add(train.Item("m", mail(n, True)), "spam")
        first.add(train.Item("m", mail(n, False)), "ham")
    first.flush()
    trainer = train.Trainer(writer, label, selective=True, min_trained=1)
    trainer._scorer = _FixedScore(score)
    trainer.add(train.Item("m", mail(9, label == "spam")))
    trainer.flush()
    writer.close()
    assert (trainer.summary.learned, trainer.summary.recognised) == (
        (1, 0) if learned else (0, 1))


def test_selective_moves_a_message_learned_as_the_other_class(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A spam once learned as ham, then moved to Junk through `train --selective --spam`: the
    database, sure it is spam from the other spam, must still move it (unlearn it as ham), or
    the ham counts keep a spam for good while the summary says it was already recognised."""
    cfg = tmp_path / "sb.toml"
    cfg.write_text("[bayes]\nmin_trained = 1\n")
    base = ("--config", str(cfg), "--db", str(db))
    assert run("train", *base, "--spam", str(folder(tmp_path / "spam", [
        mail(i, True) for i in range(10)])), capsys=capsys)[0] == 0
    assert run("train", *base, "--ham", str(folder(tmp_path / "ham", [
        mail(i, False) for i in range(10)])), capsys=capsys)[0] == 0
    wrong = tmp_path / "wrong.eml"
    wrong.write_bytes(mail(20, True))
    assert run("train", *base, "--ham", str(wrong), capsys=capsys)[0] == 0
    code, out, _ = run("train", *base, "--selective", "--spam", str(wrong), capsys=capsys)
    assert code == 0 and "Learned 1 of 1 messages as spam (1 moved from ham)" in out, out
    assert totals(db) == (11, 10) and tokens(db)["unique20x1"] == (1, 0)


def test_selective_learns_everything_while_the_other_class_is_empty(db: Path) -> None:
    """With no ham at all every message scores as spam: a selective run on spam alone must not
    call them "already recognised" and leave the database with one spam (min_trained 1)."""
    writer = store.SqliteWriter(str(db))
    trainer = train.Trainer(writer, "spam", selective=True, min_trained=1)
    for n in range(5):
        trainer.add(train.Item("m", mail(n, True)))
    trainer.flush()
    writer.close()
    assert (trainer.summary.learned, trainer.summary.recognised) == (5, 0)
    assert totals(db) == (5, 0)


def test_a_subject_starting_with_the_tag_on_unflagged_mail_is_left_alone() -> None:
    """Only mail the milter flagged (X-Spam-Flag: YES) had the tag put on by it: a ham whose
    own Subject starts with "[SPAM] " (a thread about the filter) is learned as it came."""
    ham = (b"X-Spam-Flag: NO\nX-Spam-Status: No, score=0.1000\nFrom: a@example.org\n"
           b"Subject: [SPAM] filter too eager\n\nbody\n")
    assert b"Subject: [SPAM] filter too eager\n" in train.strip_markup(ham, b"[SPAM]")
    flagged = ham.replace(b"Flag: NO", b"Flag: YES")
    assert b"Subject: filter too eager\n" in train.strip_markup(flagged, b"[SPAM]")


def test_without_a_subject_tag_an_empty_subject_on_flagged_mail_is_kept() -> None:
    """No [policy] subject_tag (the default): nothing was put on the Subject, so nothing is
    taken off. Were the empty tag matched, flagged spam with an empty Subject (common)
    would lose its Subject field, as if the milter had added it, and be learned as none."""
    flagged = (b"X-Spam-Flag: YES\nFrom: a@example.org\nSubject: \nTo: b@example.org\n"
               b"\nbody\n")
    assert b"\nSubject: \nTo:" in train.strip_markup(flagged, b"")


def test_a_tag_the_sender_folded_with_a_tab_is_not_taken_off() -> None:
    """The milter folds after its tag with a space (headers.subject_rewrite) and tags no
    Subject that starts with the tag already: a flagged message whose Subject is the tag,
    a tab fold and text came so, and is learned as it came."""
    flagged = (b"X-Spam-Flag: YES\nFrom: a@example.org\nSubject: [SPAM]\n\tfilter too eager\n"
               b"\nbody\n")
    assert b"Subject: [SPAM]\n\tfilter too eager\n" in train.strip_markup(flagged, b"[SPAM]")


def test_an_mbox_is_split_only_at_from_lines_after_a_blank_line() -> None:
    """Read line by line (stdin with --mbox, an mbox too big for memory), a body line "From
    9:00 to 17:00 ..." in the middle of a paragraph is text, not the next message's
    separator: one message stays one."""
    import io

    body = mail(1, False).replace(b"\n\n", b"\n\nOpening hours:\nFrom 9:00 to 17:00 daily.\n", 1)
    box = b"From a@example.org Thu Nov 26 02:58:17 2026\n" + body + b"\n" + (
        b"From b@example.org Thu Nov 26 03:00:00 2026\n" + mail(2, False))
    items = list(train.read_path("-", 0, mbox=True, stdin=io.BytesIO(box)))
    assert [i.where for i in items] == ["<stdin>#1", "<stdin>#2"]
    assert items[0].data is not None and b"From 9:00 to 17:00 daily." in items[0].data


def test_a_message_from_an_mboxrd_is_the_same_message_as_its_file(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An mbox stores a body line "From ..." as ">From ...": unescaped on reading, the message
    is the one saved elsewhere as a file (the same key: already trained, not learned twice)."""
    msg = mail(1, True) + b"From the desk of the director\n"
    f = tmp_path / "m.eml"
    f.write_bytes(msg)
    box = tmp_path / "box.mbox"
    box.write_bytes(b"From a@example.org Thu Nov 26 02:58:17 2026\n"
                    + msg.replace(b"\nFrom the", b"\n>From the"))
    assert run("train", "--db", str(db), "--spam", str(f), capsys=capsys)[0] == 0
    learned = tokens(db)
    code, out, _ = run("train", "--db", str(db), "--spam", str(box), capsys=capsys)
    assert code == 0 and "1 already trained" in out
    assert tokens(db) == learned and totals(db) == (1, 0)


@pytest.mark.parametrize("kind", ["file", "mbox", "stdin", "folder"])
def test_a_message_of_exactly_max_size_is_learned(tmp_path: Path, kind: str) -> None:
    """--max-size is the largest message learned, as sa-learn's: one of exactly that many
    bytes is read, one byte more is "too large" (a file, an mbox, stdin, a folder's file)."""
    import io

    msg = mail(1, True)
    box = b"From a@example.org Thu Nov 26 02:58:17 2026\n" + msg
    src = tmp_path / "in"
    if kind == "folder":
        src.mkdir()
        (src / "1.eml").write_bytes(msg)
    else:
        src.write_bytes(box if kind == "mbox" else msg)

    def read(max_size: int) -> list[train.Item]:
        if kind == "stdin":
            return list(train.read_path("-", max_size, stdin=io.BytesIO(msg)))
        return list(train.read_path(str(src), max_size))

    size = len(msg)
    assert [i.data for i in read(size)] == [msg]
    assert [(i.data, i.problem) for i in read(size - 1)] == [(None, "too large")]


def test_a_message_with_an_mdas_from_line_on_stdin_is_sized_without_it(tmp_path: Path) -> None:
    """A procmail pipe gives the message with its From_ line, dropped before it is learned.
    It counted toward --max-size on stdin only: a message of exactly the limit was learned
    from a file (read as an mbox of one) and "too large" from the pipe."""
    import io

    msg = mail(1, True)
    data = b"From a@example.org Thu Nov 26 02:58:17 2026\n" + msg
    f = tmp_path / "m"
    f.write_bytes(data)
    for max_size, problem in ((len(msg), ""), (len(msg) - 1, "too large")):
        assert [i.problem for i in train.read_path(str(f), max_size)] == [problem]
        got = list(train.read_path("-", max_size, stdin=io.BytesIO(data)))
        assert [i.problem for i in got] == [problem], max_size
        if not problem:
            assert train.strip_markup(got[0].data or b"") == train.strip_markup(msg)


@pytest.mark.parametrize("kind", ["file", "big", "stdin"])
def test_an_mbox_message_of_exactly_max_size_is_learned_however_the_mbox_comes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        kind: str) -> None:
    """--max-size is on the message as a file of its own holds it, in an mbox too: without
    its separator line and the blank line after it. Two messages of exactly the limit, as
    mbox writers store them (a blank line after each): from a small mbox file the first was
    learned (its last newline not counted: one byte more would have been too) and the last
    "too large" (the blank line after it counted), and from the same mbox on stdin (`--mbox
    -`) or big enough to be streamed both were "too large": the same Junk folder learned 1
    or 0 messages by how it reached train."""
    first, second = mail(1, True), mail(2, True)
    assert len(first) == len(second)
    box = tmp_path / "box.mbox"
    box.write_bytes(b"".join(b"From a@example.org Thu Nov 26 02:58:17 2026\n" + m + b"\n"
                             for m in (first, second)))
    for max_size, said in ((len(first), "Learned 2 of 2 messages as spam in "),
                           (len(first) - 1, "Learned 0 of 2 messages as spam (2 too large) in ")):
        db = tmp_path / f"{max_size}.sqlite"
        args = ["train", "--db", str(db), "--spam", "--max-size", str(max_size)]
        if kind == "stdin":
            proc = subprocess.run([sys.executable, "-m", "spambridge", *args, "--mbox", "-"],
                                  input=box.read_bytes(), capture_output=True, check=False)
            code, out = proc.returncode, proc.stdout.decode()
        else:
            if kind == "big":  # streamed line by line
                monkeypatch.setattr(train.sources, "MBOX_IN_MEMORY", 100)
            code, out, _ = run(*args, str(box), capsys=capsys)
        assert code == 0 and said in out, (max_size, out)


def test_up_to_max_unwrap_report_safe_wrappers_are_undone() -> None:
    """Spam wrapped by SpamAssassin at each of several hops (a forwarder's spamd, then ours):
    every wrapper up to MAX_UNWRAP is taken off, so the original is learned and deduped."""
    original = mail(5, True)
    wrapped = original
    for level in range(train.MAX_UNWRAP):
        wrapped = report_safe(wrapped, level)
        assert train.strip_markup(wrapped) == train.strip_markup(original), level + 1


def test_a_file_with_a_nul_in_its_header_is_not_mail(tmp_path: Path) -> None:
    """A binary file whose first bytes happen to read like a header (a database dump, an
    image with text in front) is "not mail", not learned as a message."""
    f = tmp_path / "dump.bin"
    f.write_bytes(b"From: a@example.org\nSubject: x\x00\x01\x02\x00\n\nbody\n")
    assert [(i.data, i.problem) for i in train.read_path(str(f), 0)] == [(None, "not mail")]
    f.write_bytes(b"From: a@example.org\nSubject: x\n\nbody \x00 after the header\n")
    assert [i.problem for i in train.read_path(str(f), 0)] == [""]


def test_a_database_moved_in_beside_an_emptied_wal_is_used(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The documented deploy: `train` folded its -wal (left empty), mail was scored since, then
    a retrained copy is moved into place. The empty -wal holds no page of the old file: the
    milter opens the new database at once instead of refusing it."""
    live = small_db(tmp_path / "live.sqlite", 0, capsys)
    new = small_db(tmp_path / "new.sqlite", 200, capsys)
    scanner = BayesScanner(BayesConfig(db=str(live), min_trained=1), create=False)
    try:
        scanner.score_now(mail(1, True))
        assert Path(f"{live}-wal").stat().st_size == 0
        os.replace(new, live)
        assert scanner.score_now(mail(201, True)).score > 0.9
        assert scanner.totals() == store.Totals(6, 6)
    finally:
        scanner.close()


def test_the_milter_says_at_start_when_the_database_is_not_trained_yet(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Once at start-up, not first at some message: the database is there but too small, and
    what mail meets meanwhile."""
    db = tmp_path / "bayes.sqlite"
    scanner = BayesScanner(BayesConfig(db=str(db), min_trained=5))
    try:
        with caplog.at_level("WARNING", logger="spambridge"):
            scanner.probe()
    finally:
        scanner.close()
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"Bayes database {db} not trained yet (0 spam, 0 ham; min_trained 5): the Bayes "
        "engine answers on_unavailable until it is"]


def on_share(monkeypatch: pytest.MonkeyPatch, share: Path, fstype: str) -> None:
    """The mount table as this process reads it, with `share` mounted as `fstype` (the device
    the files under it are on)."""
    at = os.path.realpath(share)
    dev = os.stat(share).st_dev
    monkeypatch.setattr(permissions, "mountinfo", lambda: (
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        f"40 22 {os.major(dev)}:{os.minor(dev)} / {at} rw,relatime shared:9 - {fstype} "
        "fs.example.net:/export rw\n"))


def shared_db(db: Path, fstype: str) -> str:
    return (f"[bayes] db: {db} is on a network filesystem ({fstype}): SQLite's WAL mode needs "
            "every process using the database on one host, so milters or `train` runs on "
            "other hosts sharing it can corrupt it; keep one database per host (docs/bayes.md, "
            '"Several hosts")')


@pytest.mark.parametrize("fallback", [False, True])
def test_the_milter_says_at_start_when_the_database_is_on_a_network_filesystem(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
        fallback: bool) -> None:
    """`[bayes] db` on NFS, shared with another host's milter or Dovecot pipe: two hosts
    using one WAL database can corrupt it, and the milter started as if all were well. Not
    fatal (one host alone on NFS works): a warning at start, as the engine or as spamd's
    fallback, beside what else the start says of the database."""
    db = tmp_path / "bayes.sqlite"

    def said_at_start(fstype: str, min_trained: int) -> list[str]:
        on_share(monkeypatch, tmp_path, fstype)
        caplog.clear()
        scanner = BayesScanner(BayesConfig(db=str(db), min_trained=min_trained))
        try:
            with caplog.at_level("WARNING", logger="spambridge"):
                scanner.probe(fallback=fallback)
        finally:
            scanner.close()
        return [r.getMessage() for r in caplog.records]

    assert said_at_start("nfs4", 5) == [
        shared_db(db, "nfs4"),
        f"Bayes database {db} not trained yet (0 spam, 0 ham; min_trained 5): " + (
            "spamd has no fallback (a spamd failure gets its own on_* action)" if fallback
            else "the Bayes engine answers on_unavailable") + " until it is"]
    assert said_at_start("ext4", 0) == []


def test_train_says_when_the_database_is_on_a_network_filesystem(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The Dovecot pipe (`train --spam --quiet -`) on the IMAP host, writing over NFS the
    database an MX's milter reads: two hosts using one WAL database can corrupt it, and
    nothing said so. One line on stderr, --quiet or not (Dovecot logs what the pipe says
    there), before the training, whose outcome and exit status stay as they were."""
    share = tmp_path / "share"
    share.mkdir()
    db = share / "bayes.sqlite"
    on_share(monkeypatch, share, "nfs4")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(mail(1, True))))
    code, out, err = run("train", "--db", str(db), "--spam", "--quiet", "-", capsys=capsys)
    assert (code, out, err) == (0, "", f"spambridge train: {shared_db(db, 'nfs4')}\n")
    assert totals(db) == (1, 0)
    one = tmp_path / "a.eml"
    one.write_bytes(mail(2, False))
    code, out, err = run("train", "--db", str(db), "--ham", str(one), capsys=capsys)
    assert code == 0 and "Learned 1 of 1 messages as ham" in out
    assert err == f"spambridge train: {shared_db(db, 'nfs4')}\n"
    on_share(monkeypatch, share, "ext4")
    code, out, err = run("train", "--db", str(db), "--ham", str(one), capsys=capsys)
    assert code == 0 and err == ""


def test_a_message_found_under_its_old_key_stays_trained(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A message an earlier spambridge keyed with its mailbox state fields, trained again as the
    same class: "already trained", and its record is carried over to the new key, so a third
    run finds it too rather than learning it a second time."""
    old = tmp_path / "old.sqlite"
    msg = mail(9, True).replace(b"\n\n", b"\nStatus: RO\n\n", 1)
    learned_as_before(old, msg)
    m = tmp_path / "m.eml"
    m.write_bytes(msg)
    learned = tokens(old)
    for _ in range(2):
        code, out, _ = run("train", "--db", str(old), "--spam", str(m), capsys=capsys)
        assert code == 0 and "1 already trained" in out
    assert totals(old) == (1, 0) and tokens(old) == learned


def delivered_to(user: str, qid: str, msg: bytes) -> bytes:
    """`msg` as a Postfix and a Dovecot LMTP deliver it to `user`: what each copy of one
    message sent to several mailboxes has of its own, on top (and an SPF check's field)."""
    return (f"Return-Path: <promo@deals.example.com>\nDelivered-To: {user}@example.net\n"
            f"Received: from mx.example.net by imap.example.net with LMTP id abc{qid}\n"
            f"\tfor <{user}@example.net>; Sat, 28 Nov 2026 14:0{len(user)}:00 +0000\n"
            f"X-Original-To: {user}@example.net\n"
            f"Received-SPF: Pass (mailfrom) identity=mailfrom; client-ip=192.0.2.7; "
            f"receiver={user}@example.net\n"
            f"X-Greylist: delayed {len(user) * 100} seconds by milter-greylist-4.6.4\n"
            f"Delivery-date: Sat, 28 Nov 2026 14:0{len(user)}:30 +0000\n"
            f"X-Rspamd-Queue-Id: {qid}\n"
            f"Received: from bot.example.com (bot.example.com [192.0.2.7])\n"
            f"\tby mx.example.net (Postfix) with ESMTP id {qid}\n"
            f"\tfor <{user}@example.net>; Sat, 28 Nov 2026 14:00:0{len(user)} +0000 (UTC)\n"
            ).encode() + msg


def test_one_message_delivered_to_two_mailboxes_is_one_message(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A spam sent to two users, both of whom move it to Junk: the copy in the second Junk
    is the message already trained (it was learned twice, as two messages: the fields
    delivery writes on top differ), and training it as ham moves the message, as sa-learn
    does, keying by what the sender wrote."""
    msg = b"Received: from relay.example.com by bot.example.com; 1 Jan 2026\n" + mail(3, True)
    first, second = tmp_path / "alice.eml", tmp_path / "bob.eml"
    first.write_bytes(delivered_to("alice", "4AbC1", msg))
    second.write_bytes(delivered_to("bob", "4XyZ22", msg))
    code, out, _ = run("train", "--db", str(db), "--spam", str(first), capsys=capsys)
    assert code == 0 and "Learned 1 of 1 messages as spam" in out
    learned = tokens(db)
    code, out, _ = run("train", "--db", str(db), "--spam", str(second), capsys=capsys)
    assert code == 0 and "Learned 0 of 1 messages as spam (1 already trained)" in out, out
    assert tokens(db) == learned and totals(db) == (1, 0)
    code, out, _ = run("train", "--db", str(db), "--ham", str(second), capsys=capsys)
    assert code == 0 and "1 moved from spam" in out, out
    assert totals(db) == (0, 1)
    # what the sender wrote still tells two messages apart: another Subject, another body
    for other in (msg.replace(b"Subject: WIN", b"Subject: WON"), msg + b"P.S.\n"):
        second.write_bytes(delivered_to("bob", "4XyZ22", other))
        code, out, _ = run("train", "--db", str(db), "--spam", str(second), capsys=capsys)
        assert code == 0 and "Learned 1 of 1 messages as spam" in out, out


@pytest.mark.parametrize("end", [b"\r\r\n", b"\r\r\r\n"])
def test_a_message_with_cr_cr_lf_is_one_message_to_both_mbox_readers(
        tmp_path: Path, db: Path, end: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    """A message whose lines end in CR CR LF: the mbox read whole turned one CRLF into LF,
    the one read line by line (a big mbox, stdin) did not, so the same message was two, and
    learned twice. However many CRs there are, each line end is one."""
    msg = mail(4, True).replace(b"\n", end)
    box = tmp_path / "spam.mbox"
    box.write_bytes(mbox_of([msg]))
    code, out, _ = run("train", "--db", str(db), "--spam", str(box), capsys=capsys)
    assert code == 0 and "Learned 1 of 1 messages as spam" in out, out
    proc = subprocess.run([sys.executable, "-m", "spambridge", "train", "--db", str(db),
                           "--spam", "--mbox", "-"], input=mbox_of([msg]),
                          capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert b"Learned 0 of 1 messages as spam (1 already trained)" in proc.stdout, proc.stdout
    assert totals(db) == (1, 0)


def test_body_lines_of_a_message_with_cr_cr_lf_ends_are_part_of_its_key(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With CR CR LF line ends the header's end was looked for before the CRs were read as
    line ends: the whole message was taken for its header, and a body line reading like a
    trace field ("Received: ...") left out of the key, so two messages told apart only by
    it were one, the second "already trained"."""
    f = tmp_path / "m.eml"
    for n, line in enumerate((b"Received: the invoice", b"Received: the parcel")):
        f.write_bytes((mail(6, True) + line + b"\n").replace(b"\n", b"\r\r\n"))
        code, out, _ = run("train", "--db", str(db), "--spam", str(f), capsys=capsys)
        assert code == 0 and "Learned 1 of 1 messages as spam" in out, (n, out)
    assert totals(db) == (2, 0)


def test_files_with_cr_only_line_ends_are_each_a_message_of_their_own(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file with CR-only line ends (an old Mac's) that begins with a trace field was all
    one field to the key: every such file had the key of nothing, so the second was
    "already trained" (or, as ham, moved the first)."""
    f = tmp_path / "m.eml"
    for n in (7, 8):
        f.write_bytes((b"Received: from a by b; 1 Jan 2026\n" + mail(n, True))
                      .replace(b"\n", b"\r"))
        code, out, _ = run("train", "--db", str(db), "--spam", str(f), capsys=capsys)
        assert code == 0 and "Learned 1 of 1 messages as spam" in out, (n, out)
    assert totals(db) == (2, 0)


def test_every_trace_field_is_no_part_of_a_message(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two copies of one spam that differ in each field docs/reliability.md lists as written
    on the way (a VERP Return-Path first, as delivery puts it; Exim's Envelope-to, an MX's
    Authentication-Results and ARC set, fields in capitals, a blank before the colon as the
    obsolete syntax allows, a folded line) are one message: the second copy "already
    trained"."""
    def copy(user: str, n: int) -> bytes:
        return (f"Return-Path: <bounce+{user}=example.net@deals.example.com>\n"
                f"Delivered-To: {user}@example.net\n"
                f"X-Original-To: {user}@example.net\n"
                f"X-Delivered-To: {user}@example.net\n"
                f"Envelope-to: {user}@example.net\n"
                f"Delivery-date: Sat, 28 Nov 2026 14:0{n}:30 +0000\n"
                f"X-ENVELOPE-TO : <{user}@example.net>\n"
                f"X-Envelope-From: <bounce+{user}=example.net@deals.example.com>\n"
                f"Received-SPF: pass (mx{n}.example.net: domain of deals.example.com)\n"
                f"Authentication-Results: mx{n}.example.net;\n\tspf=pass smtp.mailfrom={user}\n"
                f"ARC-Seal: i=1; a=rsa-sha256; t=170000000{n}; cv=none;\n\tb={user}Seal\n"
                f"ARC-Message-Signature: i=1; a=rsa-sha256; t=170000000{n}; b={user}Sig\n"
                f"ARC-Authentication-Results: i=1; mx{n}.example.net; spf=pass\n"
                f"X-Greylist: delayed {n * 60} seconds by milter-greylist-4.6.4\n"
                f"X-Rspamd-Queue-Id: {user}{n}\n"
                f"Received: from bot.example.com by mx{n}.example.net\n\tfor <{user}@example.net>\n"
                ).encode() + mail(9, True)

    f = tmp_path / "m.eml"
    for n, (user, out_) in enumerate((("alice", "Learned 1 of 1"),
                                      ("bob", "1 already trained")), 1):
        f.write_bytes(copy(user, n))
        code, out, _ = run("train", "--db", str(db), "--spam", str(f), capsys=capsys)
        assert code == 0 and out_ in out, (user, out)
    assert totals(db) == (1, 0)


def test_a_delivered_message_trained_before_is_found_under_its_old_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A database from before the key left out the delivery fields: the message it learned
    is "already trained" (not learned again), its record moves to the new key, and from then
    on a copy delivered to another mailbox is that message too."""
    old = tmp_path / "old.sqlite"
    copy = delivered_to("alice", "4AbC1", mail(5, True))
    learned_as_before(old, copy)
    f = tmp_path / "m.eml"
    for each in (copy, copy, delivered_to("bob", "4XyZ22", mail(5, True))):
        f.write_bytes(each)
        code, out, _ = run("train", "--db", str(old), "--spam", str(f), capsys=capsys)
        assert code == 0 and "1 already trained" in out, out
    assert totals(old) == (1, 0)
    with sqlite3.connect(old) as c:
        assert c.execute("SELECT count(*) FROM messages").fetchone()[0] == 1


def test_two_copies_an_earlier_spambridge_learned_are_one_message_after_a_move(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before the key left out the delivery fields, the copies of one spam that alice and bob
    each moved to Junk were learned as two messages. A false positive both move out after the
    upgrade: alice's copy moves the message to ham; bob's was "already trained" and stayed
    learned as spam for good, where before it moved too (and --forget took back only one)."""
    old = tmp_path / "old.sqlite"
    alice, bob = (delivered_to(u, q, mail(6, True)) for u, q in (("alice", "4AbC1"),
                                                                    ("bob", "4XyZ22")))
    learned_as_before(old, alice)
    learned_as_before(old, bob)
    assert totals(old) == (2, 0)
    f = tmp_path / "m.eml"
    for copy in (alice, bob):
        f.write_bytes(copy)
        code, out, _ = run("train", "--db", str(old), "--ham", str(f), capsys=capsys)
        assert code == 0, out
    assert totals(old) == (0, 1)
    assert not [t for t, (s, _) in tokens(old).items() if s], "spam counts left behind"
    with sqlite3.connect(old) as c:
        assert c.execute("SELECT label FROM messages").fetchall() == [("ham",)]
    # and a database with both copies still learned as spam forgets the message whole
    older = tmp_path / "older.sqlite"
    learned_as_before(older, alice)
    learned_as_before(older, bob)
    f.write_bytes(alice)
    assert run("train", "--db", str(older), "--spam", str(f), capsys=capsys)[0] == 0
    f.write_bytes(bob)
    code, out, _ = run("train", "--db", str(older), "--forget", str(f), capsys=capsys)
    assert code == 0 and "Forgot 1 of 1" in out, out
    assert totals(older) == (0, 0) and not [t for t, n in tokens(older).items() if n != (0, 0)]


def test_a_message_with_crs_trained_before_is_found_under_its_old_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The keys before the trace fields left them kept the CRs a message's line ends had
    beyond one (CR CR LF): a message so learned is "already trained", not learned again."""
    old = tmp_path / "old.sqlite"
    msg = delivered_to("alice", "4AbC1", mail(10, True)).replace(b"\n", b"\r\r\n")
    learned_as_before(old, msg)
    f = tmp_path / "m.eml"
    f.write_bytes(msg)
    code, out, _ = run("train", "--db", str(old), "--spam", str(f), capsys=capsys)
    assert code == 0 and "1 already trained" in out, out
    assert totals(old) == (1, 0)


def test_a_read_message_trained_before_its_subject_was_spaced_is_found(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """From 2026-11-26 to 28 the key left the mailbox state fields out and kept the Subject's
    blanks as they lay: a message with a tab after "Subject:" in a read mbox (Status: RO)
    learned then is "already trained", not learned again."""
    old = tmp_path / "old.sqlite"
    msg = mail(11, True).replace(b"Subject: ", b"Subject:\t")
    learned_as_before(old, msg)  # as that key had it: without the Status field the box adds
    box = tmp_path / "spam.mbox"
    box.write_bytes(mbox_of([msg.replace(b"\n\n", b"\nStatus: RO\n\n", 1)]))
    code, out, _ = run("train", "--db", str(old), "--spam", str(box), capsys=capsys)
    assert code == 0 and "1 already trained" in out, out
    assert totals(old) == (1, 0)


def test_a_message_carrying_its_own_prev_subject_stays_trained(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A message whose X-Spam-Prev-Subject is its Subject (a sender may write any field), in
    a database an earlier spambridge trained: the Subject put back is the one it has, so its
    tagged key is its key, and a second `train` of it is a no-op, never a taking back of its
    own learning."""
    old = tmp_path / "old.sqlite"
    learned_as_before(old, mail(1, True))
    f = tmp_path / "m.eml"
    f.write_bytes(b"X-Spam-Flag: YES\nX-Spam-Prev-Subject: WIN 12\n" + mail(12, True))
    assert run("train", "--db", str(old), "--spam", str(f), capsys=capsys)[0] == 0
    learned = tokens(old)
    code, out, _ = run("train", "--db", str(old), "--spam", str(f), capsys=capsys)
    assert code == 0 and "1 already trained" in out, out
    assert totals(old) == (2, 0) and tokens(old) == learned


def test_a_new_database_records_that_its_messages_have_no_earlier_keys(
        db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/reliability.md: a database first trained by this spambridge records `keys = 4`
    in its meta table, and no `train` on it looks for the keys earlier ones gave."""
    f = tmp_path / "m.eml"
    f.write_bytes(mail(13, True))
    assert run("train", "--db", str(db), "--spam", str(f), capsys=capsys)[0] == 0
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT value FROM meta WHERE key = 'keys'").fetchall() == [("4",)]


@pytest.mark.parametrize("value", ["", "four", "-1", "²", "4.0"])
def test_a_database_whose_keys_record_is_damaged_is_taken_as_one_from_before(
        tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """What the `keys` meta row holds is read, not trusted: anything but a version number
    (a hand edit, a damaged file) is a database that may hold earlier keys, looked up as in
    one from before, never a traceback."""
    old = tmp_path / "old.sqlite"
    copy = delivered_to("alice", "4AbC1", mail(7, True))
    learned_as_before(old, copy)
    with sqlite3.connect(old) as c:
        c.execute("INSERT INTO meta VALUES ('keys', ?)", (value,))
    f = tmp_path / "m.eml"
    f.write_bytes(copy)
    code, out, err = run("train", "--db", str(old), "--spam", str(f), capsys=capsys)
    assert code == 0 and "1 already trained" in out, out + err
    assert totals(old) == (1, 0)


def test_a_damaged_database_from_before_is_named_not_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A database an earlier spambridge trained whose table of trained messages is damaged:
    `train` looks there first, to know whether to search earlier keys, and must say what it
    met and where (exit 1), as for a damage found later, never end in a traceback."""
    old = tmp_path / "old.sqlite"
    learned_as_before(old, mail(1, True))
    before = store.SqliteWriter(str(old))  # as its `train` recorded them
    before.training_limits((BayesConfig().max_bytes, BayesConfig().max_tokens))
    before.close()
    with sqlite3.connect(old) as c:
        root = c.execute("SELECT rootpage FROM sqlite_master WHERE name = 'messages'").fetchone()
        size = c.execute("PRAGMA page_size").fetchone()[0]
    with open(old, "r+b") as fh:
        fh.seek((root[0] - 1) * size)
        fh.write(b"\xff" * size)
    f = tmp_path / "m.eml"
    f.write_bytes(mail(2, True))
    code, _, err = run("train", "--db", str(old), "--spam", str(f), capsys=capsys)
    assert code == 1 and "Traceback" not in err, err
    assert err == (f"spambridge train: {old}: cannot record how messages are keyed: database "
                   "disk image is malformed\n"), err


def test_a_pipe_on_a_database_from_before_waits_for_no_lock_it_does_not_write_under(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On a database an earlier spambridge trained, every `train` took SQLite's write lock
    before its first message to see whether to look up earlier keys: a Dovecot pipe with a
    message it does not learn (over --max-size) waited for a bulk run's batch, and for a
    writer that kept the lock, failed after 30 s ("database is locked") where it had said
    only "too large"."""
    old = tmp_path / "old.sqlite"
    learned_as_before(old, delivered_to("alice", "4AbC1", mail(8, True)))
    before = store.SqliteWriter(str(old))  # as its `train` recorded them
    before.training_limits((BayesConfig().max_bytes, BayesConfig().max_tokens))
    before.close()
    pipe = too_large_while_locked(old)
    assert pipe.stderr.decode() == ("spambridge train: <stdin>: too large (over --max-size, 100 "
                                    "bytes): not learned\n")
    assert pipe.returncode == 0


def test_an_empty_maildir_is_said_to_hold_no_messages(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Its cur/, new/ and tmp/ are not folders of mail to name: the hint is only for folders
    one level down (Maildir++ .Junk)."""
    box = maildir(tmp_path / "Maildir", [])
    code, _, err = run("train", "--db", str(db), "--spam", str(box), capsys=capsys)
    assert code == 0 and err == f"spambridge train: {box}: no messages found\n"
    (box / ".Junk" / "cur").mkdir(parents=True)
    code, _, err = run("train", "--db", str(db), "--spam", str(box), capsys=capsys)
    assert err == (f"spambridge train: {box}: no messages found (the folders in it are not "
                   f"read: name them, as {box / '.Junk'})\n")


def test_forgetting_says_when_the_database_falls_below_min_trained(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """After --forget as after learning: if the milter no longer scores with the database
    (fewer than min_trained of a class), the admin is told so right there."""
    f = tmp_path / "m.eml"
    f.write_bytes(mail(1, True))
    assert run("train", "--db", str(db), "--spam", str(f), capsys=capsys)[0] == 0
    code, out, _ = run("train", "--db", str(db), "--forget", str(f), capsys=capsys)
    assert code == 0 and "Forgot 1 of 1 messages" in out
    assert "The database holds 0 spam and 0 ham; the milter scores with it once each class " \
        "has" in out


def test_a_run_that_learns_nothing_still_says_the_database_is_below_min_trained(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/bayes.md: train says so "after a run that leaves the database below" min_trained.
    A rerun that found everything already trained, or met only a message over --max-size, said
    nothing, as if the database were in use."""
    f, big = tmp_path / "m.eml", tmp_path / "big.eml"
    f.write_bytes(mail(1, True))
    big.write_bytes(mail(2, True, extra="X-Pad: " + "x" * 2000 + "\n"))
    note = ("The database holds 1 spam and 0 ham; the milter scores with it once each class "
            "has 200 (min_trained).\n")
    code, out, _ = run("train", "--db", str(db), "--spam", str(f), capsys=capsys)
    assert code == 0 and out.endswith(note)
    code, out, _ = run("train", "--db", str(db), "--spam", str(f), capsys=capsys)
    assert code == 0 and "(1 already trained)" in out and out.endswith(note)
    code, out, _ = run("train", "--db", str(db), "--spam", "--max-size", "1k", str(big),
                       capsys=capsys)
    assert code == 0 and "(1 too large)" in out and out.endswith(note)
    code, out, _ = run("train", "--db", str(db), "--forget", str(big), capsys=capsys)
    assert code == 0 and "(1 not trained before)" in out and out.endswith(note)
    code, out, _ = run("train", "-q", "--db", str(db), "--spam", str(f), capsys=capsys)
    assert (code, out) == (0, "")


def test_the_milter_logs_a_replaced_database_once_and_a_train_not_at_all(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    """A `train` writing the database in place is no replacement: nothing is logged. A file
    moved in that cannot be used is told about once, not at every message that meets it."""
    live = small_db(tmp_path / "live.sqlite", 0, capsys)
    scanner = BayesScanner(BayesConfig(db=str(live), min_trained=1), create=False)
    try:
        with caplog.at_level("INFO", logger="spambridge"):
            scanner.score_now(mail(1, True))
            more = folder(tmp_path / "more", [mail(300, False)])
            assert run("train", "--db", str(live), "--ham", str(more), capsys=capsys)[0] == 0
            scanner.score_now(mail(1, True))
            assert [r.getMessage() for r in caplog.records] == []
            junk = tmp_path / "junk.sqlite"
            junk.write_bytes(b"not a database" * 100)
            os.replace(junk, live)
            for _ in range(3):
                with pytest.raises(ScanError):
                    scanner.score_now(mail(1, True))
    finally:
        scanner.close()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith("Bayes database replaced, the new one not used")


# ---------------------------------------------------------------------------------------------
# Maildirs as Dovecot stores them, compressed by its zlib plugin (2.3) or mail_compress (2.4)


COMPRESS = {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}
# what zstd and lz4 files open with (Python 3.11 reads neither): enough to be told apart
ZSTD = b"\x28\xb5\x2f\xfd\x00\x58" + bytes(range(256))
DOVECOT_LZ4 = b"Dovecot-LZ4\x0d\x2a\x9b\xc5\x00\x01\x00\x00" + bytes(range(256))
LZ4_FRAME = b"\x04\x22\x4d\x18\x64\x40\xa7" + bytes(range(256))


def dovecot_maildir(root: Path, files: list[bytes], sizes: list[int] | None = None) -> Path:
    """A Maildir as Dovecot leaves it: its index, uidlist and list files beside cur/, new/ and
    tmp/, a message still being delivered in tmp/, and message files named with the size
    (,S=) and IMAP size (,W=) fields; `sizes` are the messages' own (uncompressed) sizes."""
    maildir(root, [])
    for name, data in (("dovecot-uidlist", b"3 V1795723972 N5 G3f0c\n1 1795723972.M1P1.vm\n"),
                       ("dovecot-uidvalidity", b"6b0892c4"), ("dovecot-uidvalidity.6b0892c4", b""),
                       ("dovecot.index.cache", b"\x08\x02\x00\x00" + bytes(200)),
                       ("dovecot.index.log", b"\x01\x03\x28\x00" + bytes(200)),
                       ("dovecot.list.index.log", b"\x01\x03\x28\x00" + bytes(100)),
                       ("dovecot-keywords", b"0 $Junk\n"), ("maildirfolder", b""),
                       ("subscriptions", b"V\t2\n\nJunk\n")):
        (root / name).write_bytes(data)
    (root / "tmp" / "1795723999.M9P9.vm").write_bytes(mail(999, True))  # not delivered yet
    for i, data in enumerate(files):
        size = sizes[i] if sizes else len(data)
        name = f"17957239{i:02d}.M{i}P1.vm,S={size},W={size + 40}" + (":2,S" if i % 2 else "")
        (root / ("cur" if i % 2 else "new") / name).write_bytes(data)
    return root


@pytest.mark.parametrize("fmt", ["gzip", "bzip2", "xz"])
def test_a_maildir_stored_compressed_is_learned_message_by_message(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    """Dovecot's zlib plugin (`zlib_save = gz`) stores every Maildir file compressed, named as
    any other: each was "not mail", so `train --spam ~/Maildir/.Junk` learned nothing and
    exited 0. Now the messages are learned as they read uncompressed, keyed as the messages
    they are (the same mail stored plain is already trained), --max-size is on the message,
    and tmp/ and Dovecot's own files are neither read nor counted."""
    pack = COMPRESS[fmt]
    msgs = [mail(i, True) for i in range(4)]
    big = mail(9, True) + b"x" * 4096  # a few hundred bytes packed, over --max-size unpacked
    junk = dovecot_maildir(tmp_path / ".Junk", [pack(m) for m in [*msgs, big]],
                           [len(m) for m in [*msgs, big]])
    code, out, err = run("train", "--db", str(db), "--spam", "--max-size", "2k", str(junk),
                         capsys=capsys)
    assert (code, err) == (0, "")
    assert out.startswith("Learned 4 of 5 messages as spam (1 too large) in ")
    plain = folder(tmp_path / "plain", msgs)
    plain_db = tmp_path / "plain.sqlite"
    assert run("train", "--db", str(plain_db), "--spam", str(plain), capsys=capsys)[0] == 0
    assert tokens(db) == tokens(plain_db)  # the messages, not their compressed bytes
    code, out, _ = run("train", "--db", str(db), "--spam", str(plain), capsys=capsys)
    assert code == 0 and out.startswith("Learned 0 of 4 messages as spam (4 already trained)")

    # named, on stdin, and an mbox archive, as the same file uncompressed would be
    one = tmp_path / "one.eml.z"
    one.write_bytes(pack(mail(50, True)))
    box = tmp_path / "2026-01.mbox.z"
    box.write_bytes(pack(mbox_of([mail(i, True) for i in range(60, 63)])))
    code, out, err = run("train", "--db", str(db), "--spam", str(one), str(box), capsys=capsys)
    assert (code, err) == (0, "") and out.startswith("Learned 4 of 4 messages as spam in")
    proc = subprocess.run([sys.executable, "-m", "spambridge", "train", "--db", str(db),
                           "--spam", "-"], input=pack(mail(51, True)), capture_output=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert b"<stdin>: learned as spam" in proc.stdout
    assert totals(db) == (9, 0) and tokens(db)["unique62x1"] == (1, 0)


def test_zstd_and_lz4_files_are_named_errors_never_learned(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`zlib_save = zstd` or `lz4` (Dovecot's own lz4 container; mailcow's default): Python 3.11
    reads neither. Each file was counted "not mail" with exit 0, the training silently not
    done; now each is an error that names the format and what to do, counted by format."""
    junk = dovecot_maildir(tmp_path / ".Junk", [mail(1, True), ZSTD, DOVECOT_LZ4, LZ4_FRAME])
    code, out, err = run("train", "--db", str(db), "--spam", str(junk), capsys=capsys)
    assert code == 1
    assert out.startswith("Learned 1 of 4 messages as spam (1 compressed with Dovecot's lz4, "
                          "1 compressed with lz4, 1 compressed with zstd) in ")
    files = {f.read_bytes()[:4]: f for f in (junk / "cur").iterdir()} | {
        f.read_bytes()[:4]: f for f in (junk / "new").iterdir()}
    for magic, fmt in ((ZSTD, "zstd"), (DOVECOT_LZ4, "Dovecot's lz4"), (LZ4_FRAME, "lz4")):
        assert (f"spambridge train: {files[magic[:4]]}: compressed with {fmt}: not supported "
                "(gzip, bzip2 and xz are); decompress it first (docs/bayes.md, \"Compressed "
                "mail\")\n") in err
    assert totals(db) == (1, 0) and "unique1x1" in tokens(db)
    assert len(tokens(db)) == len(tokens_of(mail(1, True)))  # nothing from the other three

    zstd = files[ZSTD[:4]]
    code, out, err = run("check", "--db", str(db), "--batch", str(zstd), capsys=capsys)
    assert code == 1 and out == f"{zstd}\t-\tunreadable\n"
    assert f"{zstd}: cannot read: compressed with zstd: not supported" in err


def tokens_of(msg: bytes) -> set[str]:
    from spambridge.bayes.tokenizer import tokenize

    return set(tokenize(train.strip_markup(msg)))


def test_damaged_compressed_files_are_named_and_the_rest_learned(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file cut short (a copy that ran out of disk) or corrupt: an error naming it, never
    a traceback, never the part that could be read learned as the message."""
    packed = gzip.compress(mail(2, True))
    corrupt = packed[:20] + bytes(b ^ 0x55 for b in packed[20:60]) + packed[60:]
    junk = dovecot_maildir(tmp_path / ".Junk", [gzip.compress(mail(1, True)), packed[:-30],
                                                corrupt, lzma.compress(mail(3, True))[:-40]])
    code, out, err = run("train", "--db", str(db), "--spam", str(junk), capsys=capsys)
    assert code == 1 and out.startswith("Learned 1 of 4 messages as spam (3 unreadable)")
    assert err.count("unreadable: compressed with gzip but cut short\n") == 1
    assert err.count("unreadable: compressed with gzip but damaged (") == 1
    assert err.count("unreadable: compressed with xz but cut short\n") == 1
    assert "Traceback" not in err and totals(db) == (1, 0)


# VmHWM, this program's own peak: getrusage's ru_maxrss keeps, across exec, the peak of the
# process it was forked from (pytest itself, 439 MiB after the whole suite in CI)
PEAK_RSS = """import sys
from spambridge import cli
try:
    code = cli.main(sys.argv[1:])
finally:
    with open("/proc/self/status") as status:
        hwm = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    print("peak-rss-kib", hwm, file=sys.stderr)
sys.exit(code)
"""


def run_measured(*argv: str) -> tuple[int, str, str, int]:
    """The CLI in a child process: (status, stdout, stderr, its peak RSS in MiB)."""
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, *argv], capture_output=True,
                          text=True, timeout=300, check=False)
    peak = re.search(r"peak-rss-kib (\d+)", proc.stderr)
    assert peak is not None, proc.stderr
    return proc.returncode, proc.stdout, proc.stderr[: peak.start()], int(peak.group(1)) // 1024


def test_a_gzip_bomb_is_too_large_at_once_in_bounded_memory(tmp_path: Path, db: Path) -> None:
    """A 2 MB gzip file that expands to 2 GiB (a header, then a body of 2,048 members of 1 MiB
    each): only --max-size + 1 bytes of it (check: max_scan_size + 16 KiB + 2) are ever
    decompressed, so it is too large (check: oversize) without gigabytes in memory or the
    time to make them. A bzip2 mbox that expands to gigabytes is split as it decompresses until it has
    given a thousand times the compressed bytes read, then named as a probable bomb, the
    message before it learned."""
    bomb = gzip.compress(b"From: a@example.org\nTo: b@example.org\nSubject: big\n\n") + (
        gzip.compress(b"x" * (1 << 20)) * 2048)
    assert len(bomb) < 3 << 20
    junk = maildir(tmp_path / "Junk", [mail(1, True), bomb])
    code, out, err, peak = run_measured("train", "--db", str(db), "--spam", str(junk))
    assert (code, err) == (0, "") and out.startswith("Learned 1 of 2 messages as spam (1 too "
                                                     "large)")
    assert peak < 200, f"{peak} MiB"
    named = tmp_path / "bomb.eml.gz"
    named.write_bytes(bomb)
    code, out, err, peak = run_measured("check", "--db", str(db), "--batch", str(named))
    assert out == f"{named}\t-\tunchecked=oversize\n" and peak < 200, (out, err, peak)

    head = mbox_of([mail(2, True)]) + b"From x@y Mon Jan  1 00:00:00 2026\nFrom: a@b.example\n\n"
    box = tmp_path / "box.mbox.bz2"
    box.write_bytes(bz2.compress(head) + bz2.compress(b"y\n" * (1 << 20)) * 2048)
    code, out, err, peak = run_measured("train", "--db", str(db), "--spam", str(box))
    assert code == 1 and out.startswith("Learned 1 of 2 messages as spam (1 unreadable)")
    assert err == (f"spambridge train: {box}: unreadable: compressed with bzip2 and expands "
                   "more than 1000-fold (a decompression bomb?): not read further\n")
    assert peak < 200, f"{peak} MiB"
    assert totals(db) == (2, 0)


def test_check_reads_a_compressed_message_as_the_milter_received_it(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`check` on a file from a compressed Maildir scored the compressed bytes as a message
    (a reject from clues such as '8bit%:65'); now it scores the message, and max_scan_size is
    on the message, as the milter counted it."""
    cfg = tmp_path / "sb.toml"
    cfg.write_text("[bayes]\nmin_trained = 20\n[milter]\nmax_scan_size = 2048\n")
    run("train", "--config", str(cfg), "--db", str(db), "--spam",
        str(folder(tmp_path / "spam", [mail(i, True) for i in range(20)])), capsys=capsys)
    run("train", "--config", str(cfg), "--db", str(db), "--ham",
        str(folder(tmp_path / "ham", [mail(i, False) for i in range(20)])), capsys=capsys)
    results = []
    for name, data in (("ham.eml", mail(500, False)), ("ham.eml.gz", gzip.compress(
            mail(500, False))), ("ham.eml.xz", lzma.compress(mail(500, False)))):
        (tmp_path / name).write_bytes(data)
        code, out, _ = run("check", "--config", str(cfg), "--db", str(db), "--explain",
                           str(tmp_path / name), capsys=capsys)
        assert code == 0
        results.append(re.sub(r"^\S+: | \(\d+ ms\)", "", out, flags=re.M))
    assert "verdict=ham action=accept" in results[0]
    assert results[1] == results[0] and results[2] == results[0]
    big = tmp_path / "big.eml.bz2"
    big.write_bytes(bz2.compress(mail(501, False) + b"y" * 4096))
    assert big.stat().st_size < 2048
    code, out, _ = run("check", "--config", str(cfg), "--db", str(db), "--batch", str(big),
                       capsys=capsys)
    assert (code, out) == (0, f"{big}\t-\tunchecked=oversize\n")


def test_a_maildir_that_lost_its_empty_new_is_still_read_as_one(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Dovecot takes a folder with cur/ for a Maildir (it makes new/ and tmp/ when missing); a
    copy that lost its empty new/ (kept in git, some backup tools) was read as a folder of
    files: Dovecot's uidlist, index and subscriptions files counted "not mail", the mail in
    cur/ never looked at, exit 0. Subfolders (Maildir++ .Junk.Sub beside it, or LAYOUT=fs
    Junk/Sub inside it) stay unread: they are other folders."""
    junk = dovecot_maildir(tmp_path / ".Junk", [mail(i, True) for i in range(4)])
    for f in (junk / "new").iterdir():
        f.rename(junk / "cur" / f.name)
    (junk / "new").rmdir()
    maildir(junk / "Sub", [mail(7, False)])  # LAYOUT=fs
    maildir(tmp_path / ".Junk.Sub", [mail(8, False)])  # Maildir++
    code, out, err = run("train", "--db", str(db), "--spam", str(junk), capsys=capsys)
    assert (code, err) == (0, "")
    assert out.startswith("Learned 4 of 4 messages as spam in ")
    assert totals(db) == (4, 0)


@pytest.mark.parametrize("kind", ["file", "--mbox", "folder", "big", "gzip", "pipe", "stdin"])
def test_blank_lines_before_an_mboxs_first_from_line_are_passed_over(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """An mbox export opening with a blank line was "not mail" (named: exit 1; in a folder of
    monthly exports: the whole file one "not mail", exit 0), or with --mbox lost its first
    message as "not mail" and learned the rest, exit 0."""
    box = tmp_path / "2026-01.mbox"
    box.write_bytes(b"\n" + mbox_of([mail(i, True) for i in range(10)]))
    args = ["train", "--db", str(db), "--spam", "--max-size", "2k"]
    if kind == "pipe":  # as `train --spam <(cat box)`: a stream, sniffed
        spambridge = f"{sys.executable} -m spambridge {' '.join(args)}"
        proc = subprocess.run(["bash", "-c", f"{spambridge} <(cat {box})"],
                              capture_output=True, text=True, timeout=60, check=False)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    elif kind == "stdin":
        proc = subprocess.run([sys.executable, "-m", "spambridge", *args, "--mbox", "-"],
                              input=box.read_bytes(), capture_output=True, check=False)
        code, out, err = proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    else:
        path = box
        if kind == "folder":
            path = folder(tmp_path / "exports", [])
            box.rename(path / box.name)
        elif kind == "gzip":
            path = tmp_path / "box.mbox.gz"
            path.write_bytes(gzip.compress(box.read_bytes()))
        elif kind == "big":  # over what is split in memory: streamed line by line
            monkeypatch.setattr(train.sources, "MBOX_IN_MEMORY", 100)
        code, out, err = run(*args, *(["--mbox"] if kind == "--mbox" else []), str(path),
                             capsys=capsys)
    assert (code, err) == (0, "")
    assert "Learned 10 of 10 messages as spam in " in out
    assert totals(db) == (10, 0) and tokens(db)["unique0x1"] == (1, 0)


@pytest.mark.parametrize("kind", ["file", "big", "gzip", "stdin"])
def test_a_body_line_from_9_00_after_a_blank_line_does_not_split_an_mbox(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """An unquoted paragraph "From 9:00 to 17:00 we are open." has what a separator line has
    (a word, a time): in an mbox file it cut its message in two, "Learned 2 of 3 messages (1
    not mail)", exit 0, the first learned without its end. Only a "From " line with a header
    after it starts a message, as on stdin (`train --spam -`) already."""
    hours = mail(1, True) + b"\nFrom 9:00 to 17:00 we are open.\nClosed on sundays.\n"
    data = mbox_of([hours, mail(2, True)])
    box = tmp_path / "box.mbox"
    box.write_bytes(data)
    args = ["train", "--db", str(db), "--spam"]
    if kind == "stdin":
        proc = subprocess.run([sys.executable, "-m", "spambridge", *args, "--mbox", "-"],
                              input=data, capture_output=True, check=False)
        code, out, err = proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    else:
        if kind == "gzip":
            box = tmp_path / "box.mbox.gz"
            box.write_bytes(gzip.compress(data))
        elif kind == "big":  # streamed line by line
            monkeypatch.setattr(train.sources, "MBOX_IN_MEMORY", 100)
            args += ["--max-size", "1k"]
        code, out, err = run(*args, str(box), capsys=capsys)
    assert (code, err) == (0, "")
    assert "Learned 2 of 2 messages as spam in " in out
    assert totals(db) == (2, 0)
    assert tokens(db)["17:00"] == (1, 0) and tokens(db)["sundays."] == (1, 0)


WRITTEN = b"From a@b Mon Jan  1 00:00:00 2024\n"  # a separator as mbox writers make it


def split_both_ways(data: bytes) -> tuple[list[bytes | None], list[bytes | None]]:
    """The messages of an mbox read whole in memory and read line by line (a pipe, stdin with
    --mbox, a file over MBOX_IN_MEMORY), normalised as training keys them."""
    def norm(items: list[train.Item]) -> list[bytes | None]:
        return [None if i.data is None else train.strip_markup(i.data) for i in items]

    return (norm(list(train.sources._split_mbox("box", data, 0))),
            norm(list(train.read_path("-", 0, mbox=True, stdin=io.BytesIO(data)))))


def test_a_message_with_a_broken_header_is_never_merged_into_the_one_before() -> None:
    """Since only a "From " line with a header after it started a message, one whose header
    was broken (a NUL, no field a message has, a second From_ line) was glued to the message
    before it: its text learned as that message's, under a new key. A separator as mbox
    writers make it starts a message whatever follows; the broken one is "not mail"."""
    for broken in (b"From: spam\0er@z\nSubject: win\n\nbuy now\n",
                   b"X-Nothing: known\n\nbuy now\n",
                   b">From a@b Mon Jan  1 00:00:00 2024\nFrom: x@y\nSubject: s\n\nbuy now\n"):
        data = WRITTEN + mail(1, False) + b"\n" + WRITTEN + broken + b"\n" + WRITTEN + mail(3, False)
        in_memory, streamed = split_both_ways(data)
        assert in_memory == streamed, broken
        assert len(in_memory) == 3 and b"buy now" not in (in_memory[0] or b""), broken
        first = in_memory[0]
        assert first is not None and first.endswith(b"unique1x0\n")


def test_a_one_line_header_after_a_separator_splits_alike_in_memory_and_streamed() -> None:
    """In memory the piece after a separator loses its last newline to the blank line before
    the next one, so a header of one line was "no header" there and a header streamed: the
    same mbox learned differently under and over 32 MiB."""
    for sep in (WRITTEN, b"From a 0:00\n"):  # written by a writer, or only a time on it
        data = WRITTEN + mail(1, True) + b"\n" + sep + b"Subject: two\n\n" + WRITTEN + mail(3, True)
        in_memory, streamed = split_both_ways(data)
        assert in_memory == streamed and len(in_memory) == 3, sep
    # streamed, a 300 kB separator line counted against the 256 kB of header looked at
    data = (WRITTEN + mail(1, True) + b"\nFrom a " + b"x" * 300_000 + b" 0:00\n"
            + b"X-Foo: a\nSubject: b\n\nbody\n")
    in_memory, streamed = split_both_ways(data)
    assert in_memory == streamed and len(in_memory) == 2


def test_crlf_blank_lines_before_an_mbox_straddling_the_sniffed_head() -> None:
    """The blank lines before an mbox's first "From " line were told by peeking two bytes, and
    where the 16 bytes read to sniff a compression format ended between a "\\r" and its
    "\\n" the peek saw one byte: the mbox became one message, "not mail"."""
    box = b"\n" + b"\r\n" * 8 + mbox_of([mail(i, True) for i in range(3)]).replace(b"\n", b"\r\n")
    items = list(train.sources._read_open(io.BufferedReader(io.BytesIO(box)), "<pipe>", 0, False))
    assert [i.problem for i in items] == ["", "", ""]


def test_mail_whose_first_field_is_long_or_far_down_is_mail(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only the first 8 kB were looked at: a first line `To:` with 600 addresses (12 kB) or 200
    X-Junk fields before From: were "not mail" (in a Maildir: counted, exit 0, while `check`
    scored the file), and such a message over --max-size "not mail" instead of too large."""
    to = b"To: " + b", ".join(b"user%d@example.net" % i for i in range(600)) + b"\n"
    junk = b"".join(b"X-Junk-%d: %s\n" % (i, b"x" * 50) for i in range(200))
    long_to = to + mail(1, True).replace(b"To: user@example.net\n", b"")
    far_down = junk + mail(2, True)
    assert len(to) > 12000 and len(junk) > 8192
    box = maildir(tmp_path / "Junk", [long_to, far_down, long_to + b"big body\n" * 2000])
    code, out, err = run("train", "--db", str(db), "--spam", "--max-size", "16k", str(box),
                         capsys=capsys)
    assert (code, err) == (0, "")
    assert "Learned 2 of 3 messages as spam (1 too large) in " in out
    assert totals(db) == (2, 0) and tokens(db)["unique2x1"] == (1, 0)


def test_a_big_file_of_a_folder_that_cannot_be_opened_is_named_and_the_rest_learned(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A file over --max-size is opened only when its turn comes (to tell an mbox from a big
    message); when that open failed (gone, or no permission), the error named the whole
    folder and the files after it were not read."""
    d = tmp_path / "Junk"
    d.mkdir()
    (d / "a.eml").write_bytes(mail(1, True))
    (d / "b.mbox").write_bytes(mbox_of([mail(i, True) for i in range(10, 40)]))  # over 2k
    (d / "c.eml").write_bytes(mail(2, True))
    real_open = open

    def refuse_b(path: Any, *args: Any, **kwargs: Any) -> Any:
        if os.fspath(path) == str(d / "b.mbox"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(train.sources, "open", refuse_b, raising=False)
    code, out, err = run("train", "--db", str(db), "--spam", "--max-size", "2k", str(d),
                         capsys=capsys)
    assert err == f"spambridge train: {d / 'b.mbox'}: unreadable: Permission denied\n"
    assert code == 1 and "Learned 2 of 3 messages as spam (1 unreadable) in " in out
    assert totals(db) == (2, 0)


def test_an_unreadable_cur_is_named_and_new_still_learned(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Maildir whose cur/ the trainer may not read (mode 700, another user's): the error
    named the Maildir, "Junk: unreadable: Permission denied", and new/ was not read at all.
    (Refused by os.open here, as root reads a directory whatever its mode.)"""
    box = maildir(tmp_path / "Junk", [mail(i, True) for i in range(4)])  # 2 in cur/, 2 in new/
    os_open = os.open

    def refuse_cur(path: Any, flags: int, *args: Any, **kw: Any) -> Any:
        if path == str(box / "cur"):
            raise PermissionError(13, "Permission denied", path)
        return os_open(path, flags, *args, **kw)

    monkeypatch.setattr(train.sources.os, "open", refuse_cur)
    code, out, err = run("train", "--db", str(db), "--spam", str(box), capsys=capsys)
    assert code == 1
    assert err == f"spambridge train: {box / 'cur'}: unreadable: Permission denied\n"
    assert "Learned 2 of 3 messages as spam (1 unreadable) in " in out
    assert totals(db) == (2, 0) and tokens(db)["unique0x1"] == (1, 0)  # 0.host:2,S in new/


def test_stdin_may_follow_options(tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`train --spam a.eml --mbox -`: the "-" after an option is stdin, as a PATH before
    it is, not an unrecognised argument."""
    one = tmp_path / "a.eml"
    one.write_bytes(mail(1, True))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(mail(2, True))))
    code, out, _ = run("train", "--db", str(db), "--spam", str(one), "--mbox", "-",
                       capsys=capsys)
    assert code == 0 and "Learned 2 of 2 messages as spam" in out


def test_selective_with_engine_spamd_is_a_usage_error(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """spamd learns what it is told: --selective there would be ignored in silence."""
    one = tmp_path / "a.eml"
    one.write_bytes(mail(1, True))
    code, out, err = run("train", "--engine", "spamd", "--spamd", "127.0.0.1:1", "--selective",
                         "--spam", str(one), capsys=capsys)
    assert code == 2 and out == ""
    assert err == ("spambridge train: --selective applies to the local Bayes database (engine "
                   "bayes or spamd+bayes)\n")


def dovecot_mbox(msgs: list[bytes]) -> bytes:
    """An mbox as Dovecot writes one (mboxcl2): its state fields and a Content-Length on each
    message, the body as it came ("From " lines in it not escaped), a blank line between."""
    out = []
    for uid, m in enumerate(msgs, 1):
        head, _, body = m.partition(b"\n\n")
        out.append(b"From alice@example.org  Sat Nov 28 08:50:13 2026\n" + head
                   + b"\nX-UID: %d\nStatus: \nX-Keywords:   \nContent-Length: %d\n\n"
                   % (uid, len(body)) + body)
    return b"\n".join(out)


def train_spam_mbox(kind: str, db: Path, mbox: Path, monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture[str], big_max_size: str = ""
                    ) -> tuple[int, str, str]:
    """`train --spam` of the mbox file `mbox` the way `kind` names: the file ("file"), the
    file streamed line by line ("big", with `--max-size big_max_size` if given), or the
    same bytes on stdin with `--mbox -` ("stdin"); exit status, stdout, stderr."""
    args = ["train", "--db", str(db), "--spam"]
    if kind == "stdin":
        proc = subprocess.run([sys.executable, "-m", "spambridge", *args, "--mbox", "-"],
                              input=mbox.read_bytes(), capture_output=True, check=False)
        return proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    if kind == "big":  # streamed line by line
        monkeypatch.setattr(train.sources, "MBOX_IN_MEMORY", 100)
        if big_max_size:
            args += ["--max-size", big_max_size]
    return run(*args, str(mbox), capsys=capsys)


def pipe_copy(msg: bytes) -> bytes:
    """The message as Dovecot's IMAPSieve pipe gives it: CRLF line ends, its state fields hid."""
    return msg.replace(b"\n", b"\r\n")


@pytest.mark.parametrize("kind", ["file", "big", "stdin"])
def test_a_separator_line_in_a_dovecot_mbox_body_does_not_cut_its_message(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """Dovecot does not escape a body's "From " lines in its mbox files: the Content-Length it
    writes says where each message ends. A body line "From bob@example.org Thu Nov 26 ..."
    (a `git format-patch` attachment opens with one) cut a message of a user's Junk in two:
    the nightly `train --spam ~/mail/Junk` said "Learned 3 of 3 messages", the message's
    first half and the patch each learned as a new spam, beside the whole message the move
    to Junk had learned (as the file, the streamed mbox and `--mbox -` alike)."""
    patch = mail(1, True) + (b"\n--- the patch ---\n\nFrom 3f2a9c1e Mon Sep 17 00:00:00 2001\n"
                             b"From: Dev <dev@example.org>\nSubject: [PATCH] fix\n\n+fixed\n")
    mbox = tmp_path / "Junk"
    mbox.write_bytes(dovecot_mbox([patch, mail(2, True)]))
    piped = tmp_path / "piped.eml"
    piped.write_bytes(pipe_copy(patch))
    assert run("train", "--db", str(db), "--spam", str(piped), capsys=capsys)[0] == 0
    code, out, err = train_spam_mbox(kind, db, mbox, monkeypatch, capsys, "1k")
    assert (code, err) == (0, "")
    assert "Learned 1 of 2 messages as spam (1 already trained) in " in out
    assert totals(db) == (2, 0) and tokens(db)["+fixed"] == (1, 0)


@pytest.mark.parametrize("kind", ["file", "big", "stdin"])
def test_a_quoted_from_line_in_a_dovecot_mbox_is_the_line_the_pipe_gave(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """Dovecot neither escapes nor unescapes ">From " lines in its mbox files (the
    Content-Length ends each message), so its IMAPSieve pipe gives a body line ">From the
    desk" as it came; train read the mbox as mboxrd and made it "From the desk": the
    nightly `train --spam ~/mail/Junk` learned the message the move to Junk had learned a
    second time, under another key ("Learned 1 of 1"; 1 % of the SpamAssassin corpus has
    such a line). An mbox without Content-Length is still unescaped (mboxrd)."""
    quoted = mail(1, True) + b">From the desk of the director\n>>From deeper\n"
    mbox = tmp_path / "Junk"
    mbox.write_bytes(dovecot_mbox([quoted, mail(2, True)]))
    piped = tmp_path / "piped.eml"
    piped.write_bytes(pipe_copy(quoted))
    assert run("train", "--db", str(db), "--spam", str(piped), capsys=capsys)[0] == 0
    code, out, err = train_spam_mbox(kind, db, mbox, monkeypatch, capsys, "1k")
    assert (code, err) == (0, "")
    assert "Learned 1 of 2 messages as spam (1 already trained) in " in out
    # what a database learns of the two messages as the pipe gives them, each once
    other = tmp_path / "other.eml"
    other.write_bytes(pipe_copy(mail(2, True)))
    alone = tmp_path / "alone.sqlite"
    assert run("train", "--db", str(alone), "--spam", str(piped), str(other),
               capsys=capsys)[0] == 0
    assert totals(db) == (2, 0) and tokens(db) == tokens(alone)


FOLDER_DATA = (b"From MAILER_DAEMON  Sat Nov 28 08:51:23 2026\nDate: Sat, 28 Nov 2026 08:51:23 +0000\n"
               b"From: Mail System Internal Data <MAILER-DAEMON@mx>\n"
               b"Subject: DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA\n"
               b"Message-ID: <1795855883@mx>\nX-IMAP: 1795855812 0000000384\nStatus: RO\n\n"
               b"This text is part of the internal format of your mail folder, and is not\n"
               b"a real message.  It is created automatically by the mail system software.\n"
               b"If deleted, important folder data will be lost, and it will be re-created\n"
               b"with the data reset to initial values.\n\n")


@pytest.mark.parametrize("kind", ["file", "big", "stdin"])
def test_the_folder_data_message_of_a_dovecot_mbox_is_not_learned(
        tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """Once a user empties a folder, Dovecot keeps its mbox file's state in a first message
    "DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA" (an X-IMAP field), as UW-IMAP does,
    and hides it from IMAP: no user moved it to Junk, yet the nightly `train --spam
    ~/mail/Junk` learned it as spam ("Learned 2 of 2 messages", for one in the folder)."""
    mbox = tmp_path / "Junk"
    mbox.write_bytes(FOLDER_DATA + dovecot_mbox([mail(1, True)]))
    code, out, err = train_spam_mbox(kind, db, mbox, monkeypatch, capsys)
    assert (code, err) == (0, "")
    assert "Learned 1 of 1 messages as spam in " in out
    assert totals(db) == (1, 0) and "internal" not in tokens(db)
    # the field only marks a folder's first message: a message carrying it later is mail
    mbox.write_bytes(dovecot_mbox([mail(1, True), FOLDER_DATA.partition(b"\n")[2]]))
    code, out, _ = run("train", "--db", str(db), "--spam", str(mbox), capsys=capsys)
    assert code == 0 and "Learned 1 of 2 messages as spam (1 already trained)" in out
    # nor a spam that came through an MTA posing as it, first in a folder
    posing = (b"Received: from mail.example.net (mail.example.net [203.0.113.5])\n\tby mx"
              b" (Postfix) with ESMTP id 4ABC; Sat, 28 Nov 2026 08:50:00 +0000\n"
              + FOLDER_DATA.partition(b"\n")[2].replace(b"Status: RO\n", b"")
              + b"cheap pills here posing\n")
    mbox.write_bytes(dovecot_mbox([posing]))
    code, out, _ = train_spam_mbox(kind, db, mbox, monkeypatch, capsys)
    assert code == 0 and "Learned 1 of 1 messages as spam in " in out
    assert "posing" in tokens(db)
