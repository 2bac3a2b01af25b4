"""Dovecot's zlib plugin (2.3: `mail_plugins = $mail_plugins zlib`, `zlib_save = gz | bz2 |
zstd | lz4`) stores each Maildir file compressed, under the name it would have anyway. A real
Dovecot LMTP server delivers mail that way, one user per format, and `train` must read the
gzip and bzip2 files as the messages they are, name the zstd and lz4 ones (which Python 3.11
cannot read) as errors without learning a byte of them, and the ways around that which
docs/bayes.md gives (Dovecot decompressing through `doveadm fetch`, `zstd -dc`) must teach
the same messages: the key of a message is the same whichever way it was read."""

from __future__ import annotations

import os
import shutil
import smtplib
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import dovecot_conf, free_port, running_dovecot, wait_until

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVEADM = shutil.which("doveadm") or "/usr/bin/doveadm"
ZLIB = "/usr/lib/dovecot/modules/lib20_zlib_plugin.so"
# zlib_save → what Dovecot's files then open with (lib-compression/compression.c)
FORMATS = {"gz": b"\x1f\x8b", "bz2": b"BZh9", "zstd": b"\x28\xb5\x2f\xfd",
           "lz4": b"Dovecot-LZ4\x0d\x2a\x9b\xc5"}

pytestmark = [
    pytest.mark.skipif(not all(os.path.exists(p) for p in (DOVECOT, DOVEADM, ZLIB)),
                       reason="Dovecot's LMTP server is not installed (apt-get install "
                              "dovecot-lmtpd; scripts/setup --test)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="Dovecot switches to the mail user: needs root"),
]


def spam(n: int) -> bytes:
    return (f"Received: from relay.lottery.example (relay.lottery.example [203.0.113.9])\r\n"
            f"\tby mx.example.net (Postfix) with ESMTP id 4F{n:04X}\r\n"
            f"\tfor <user@example.net>; Wed, 25 Nov 2026 10:00:00 +0000 (UTC)\r\n"
            f"From: Winner <prize@lottery.example>\r\nTo: user@example.net\r\n"
            f"Subject: You WON prize {n}\r\nMessage-ID: <spam{n}@lottery.example>\r\n"
            f"Date: Wed, 25 Nov 2026 10:00:00 +0000\r\n\r\n"
            + f"Claim your free casino prize {n} now, click here! unique{n}\r\n" * 30).encode()


@dataclass
class Site:
    port: int
    conf: Path
    mail: Path
    db: Path

    def maildir(self, user: str) -> Path:
        return self.mail / user

    def files(self, user: str) -> list[Path]:
        box = self.maildir(user)
        return sorted(f for d in ("cur", "new") if (box / d).is_dir() for f in (box / d).iterdir())

    def totals(self) -> tuple[int, int]:
        with closing(sqlite3.connect(self.db)) as c:
            spam, ham = c.execute("SELECT nspam, nham FROM totals").fetchone()
            return int(spam), int(ham)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """Dovecot (LMTP, and the auth service doveadm asks) in the foreground on 127.0.0.1, with
    the zlib plugin: user `gz` gets `zlib_save = gz` from the userdb, and so on; stopped by
    its PID."""
    # outside pytest's 0700 directories: the delivering user (nobody) must reach it
    top = Path(tempfile.mkdtemp(prefix="spambridge-dovecot-zlib-"))
    top.chmod(0o755)
    mail = top / "mail"
    mail.mkdir()
    mail.chmod(0o777)
    (top / "users").write_text("".join(
        f"{u}:{{PLAIN}}secret:65534:65534::{mail}/{u}::userdb_zlib_save={u}\n" for u in FORMATS))
    port = free_port()
    conf = top / "dovecot.conf"
    conf.write_text(dovecot_conf(top, "lmtp", port, """
mail_location = maildir:~
mail_plugins = $mail_plugins zlib
auth_username_format = %n
default_login_user = root
""", users=True))
    try:
        with running_dovecot(DOVECOT, conf, lambda: smtplib.LMTP("127.0.0.1", port).quit(),
                             "Dovecot's LMTP listener"):
            yield Site(port, conf, mail, tmp_path / "bayes.sqlite")
    finally:
        shutil.rmtree(top, ignore_errors=True)


def spambridge(*argv: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spambridge", *argv], input=stdin,
                          capture_output=True, text=stdin is None, timeout=120, check=False)


def sh(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """A recipe from docs/bayes.md as an admin's shell runs it, `spambridge` being this
    checkout's."""
    path = Path(tempfile.mkdtemp(prefix="spambridge-bin-"))
    try:
        (path / "spambridge").write_text(f"#!/bin/sh\nexec {sys.executable} -m spambridge "
                                         '"$@"\n')
        (path / "spambridge").chmod(0o755)
        return subprocess.run(["sh", "-ec", script], capture_output=True, text=True, timeout=300,
                              check=False, env={**os.environ, **env,
                                                "PATH": f"{path}:{os.environ['PATH']}"})
    finally:
        shutil.rmtree(path, ignore_errors=True)


# the recipe docs/bayes.md gives for files spambridge cannot read: Dovecot decompresses
DOVEADM_RECIPE = """
doveadm -c "$CONF" search -u "$U" mailbox INBOX all | while read -r guid uid; do
  doveadm -c "$CONF" fetch -u "$U" text mailbox-guid "$guid" uid "$uid" | tail -n +2 |
    spambridge train --db "$DB" --spam -q -
done
"""


def test_train_reads_what_dovecot_stored_compressed_and_names_what_it_cannot(
        site: Site) -> None:
    with smtplib.LMTP("127.0.0.1", site.port) as s:
        s.ehlo("mx.example.net")
        for n in range(3):
            for user in FORMATS:  # (one recipient a time: LMTP answers DATA per recipient)
                assert s.sendmail("s@lottery.example", [f"{user}@example.net"], spam(n)) == {}
    wait_until(lambda: all(len(site.files(u)) == 3 for u in FORMATS), 20, "the deliveries")
    for user, magic in FORMATS.items():  # what Dovecot wrote: the test is about this
        for f in site.files(user):
            assert f.read_bytes().startswith(magic), (user, f.read_bytes()[:16])
            assert ",S=" in f.name  # the message's own size: the file's is less

    r = spambridge("train", "--db", str(site.db), "--spam", str(site.maildir("gz")),
                   str(site.maildir("bz2")))
    assert (r.returncode, r.stderr) == (0, "")
    # bz2's copies are the gzip ones' messages, delivered to another mailbox: read
    # decompressed, each is known as its message
    assert r.stdout.startswith("Learned 3 of 6 messages as spam (3 already trained) in ")

    r = spambridge("train", "--db", str(site.db), "--spam", str(site.maildir("zstd")),
                   str(site.maildir("lz4")))
    assert r.returncode == 1
    assert r.stdout.startswith("Learned 0 of 6 messages as spam (3 compressed with Dovecot's "
                               "lz4, 3 compressed with zstd) in ")
    for user, fmt in (("zstd", "zstd"), ("lz4", "Dovecot's lz4")):
        for f in site.files(user):
            assert (f"spambridge train: {f}: compressed with {fmt}: not supported (gzip, bzip2 "
                    "and xz are); decompress it first") in r.stderr
    assert site.totals() == (3, 0)

    # what Dovecot hands a pipe (the IMAPSieve one too) is the message the file holds: its
    # key is the one `train` gave the gzip file, and those are trained already
    r = sh(DOVEADM_RECIPE, CONF=str(site.conf), U="gz", DB=str(site.db))
    assert (r.returncode, r.stderr) == (0, "")
    assert site.totals() == (3, 0)
    # and the files Python cannot read are learned that way (into a database of their own:
    # they are the same three messages), lz4's copies the messages zstd's were
    piped = site.db.with_name("piped.sqlite")
    for user in ("zstd", "lz4"):
        r = sh(DOVEADM_RECIPE, CONF=str(site.conf), U=user, DB=str(piped))
        assert (r.returncode, r.stderr) == (0, "")
    with closing(sqlite3.connect(piped)) as c:
        assert c.execute("SELECT nspam, nham FROM totals").fetchone() == (3, 0)
    # zstd -dcf gives the same messages: trained already; and passes on, as it is, a message
    # stored before zlib_save was set (`zstd -dcq` made it an empty file: "1 not mail")
    plain = spam(99)
    (site.maildir("zstd") / "cur" / f"1700000000.M1P1.mx,S={len(plain)}:2,S").write_bytes(plain)
    r = sh("""
d=$(mktemp -d)
for f in "$BOX"/cur/* "$BOX"/new/*; do
  [ -f "$f" ] && zstd -dcqf "$f" > "$d/${f##*/}"
done
spambridge train --db "$DB" --spam "$d"; rm -r "$d"
""", BOX=str(site.maildir("zstd")), DB=str(site.db))
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.startswith("Learned 1 of 4 messages as spam (3 already trained) in ")
