"""A real Dovecot LMTP server stores a message the way the contrib/dovecot setup does, and the
stored file — what `train` reads from the mailbox, and Dovecot's "move to Junk" pipe sends —
must give the tokens the milter saw when the mail arrived: Dovecot writes Return-Path,
Delivered-To and a Received field of its own on top, none of which a milter sees."""

from __future__ import annotations

import shutil
import smtplib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import dovecot_conf, free_port, running_dovecot

from spambridge.bayes.tokenizer import tokenize

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"

LIVE = (b"Received: from desk.example.org (desk.example.org [198.51.100.7])\r\n"
        b"\tby mx.example.net (Postfix) with ESMTP id 1A2B3C\r\n"
        b"\tfor <user@example.net>; Wed, 25 Nov 2026 10:00:00 +0000 (UTC)\r\n"
        b"From: Someone <a@example.org>\r\nTo: user@example.net\r\nSubject: quarterly budget\r\n"
        b"Message-ID: <1@example.org>\r\n\r\nThe meeting agenda and the budget draft.\r\n")


@pytest.fixture
def lmtp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """Dovecot (lmtp only) in the foreground on 127.0.0.1, delivering to Maildirs under
    tmp_path as nobody; stopped by its PID."""
    # outside pytest's 0700 directories: the delivering user (nobody) must reach it
    top = Path(tempfile.mkdtemp(prefix="spambridge-dovecot-"))
    top.chmod(0o755)
    mail = top / "mail"
    mail.mkdir()
    mail.chmod(0o777)
    port = free_port()
    conf = tmp_path / "dovecot.conf"
    conf.write_text(dovecot_conf(tmp_path, "lmtp", port, f"""
mail_location = maildir:{mail}/%n
default_login_user = root
# as when Dovecot runs on the MTA's own host: its LMTP line says "by mx.example.net" too
hostname = mx.example.net
""", anyone_in=mail))
    try:
        with running_dovecot(DOVECOT, conf, lambda: smtplib.LMTP("127.0.0.1", port).quit(),
                             "Dovecot's LMTP listener"):
            yield port, mail
    finally:
        shutil.rmtree(top, ignore_errors=True)


def stored_by(lmtp: tuple[int, Path], raw: bytes) -> bytes:
    """`raw` delivered over LMTP to user@example.net; the file Dovecot stored."""
    port, mail = lmtp
    with smtplib.LMTP("127.0.0.1", port) as s:
        s.ehlo("mx.example.net")
        assert s.sendmail("s@example.org", ["user@example.net"], raw) == {}
    stored: list[Path] = []
    deadline = time.monotonic() + 10
    while not stored and time.monotonic() < deadline:
        stored = list((mail / "user" / "new").glob("*")) if (mail / "user").exists() else []
        time.sleep(0.05)
    assert len(stored) == 1
    return stored[0].read_bytes()


def test_a_message_stored_by_dovecot_lmtp_gives_the_tokens_it_had_live(
        lmtp: tuple[int, Path]) -> None:
    data = stored_by(lmtp, LIVE)
    # what Dovecot wrote on top: the test is about this, so say it if it ever changes
    assert data.startswith(b"Return-Path: <s@example.org>\nDelivered-To: user@example.net\n"
                           b"Received: from mx.example.net")
    assert b"with LMTP" in data.split(b"Received: from desk")[0]
    assert tokenize(data) == tokenize(LIVE)


def test_check_reads_our_mtas_line_under_dovecots_on_the_same_host(
        lmtp: tuple[int, Path]) -> None:
    """Dovecot on the MTA's host writes its LMTP line "by mx.example.net", the host the
    milter names in X-Spam-Checker-Version: `check` reads the client from the line our
    Postfix wrote under it (198.51.100.7, scanned), not Dovecot's (its client is Postfix,
    127.0.0.1, in trusted_networks)."""
    from dataclasses import replace

    from spambridge import check
    from spambridge.config import Config, parse_network
    from spambridge.message import parse_raw

    data = stored_by(lmtp, LIVE.replace(b"\r\n\r\n", b"\r\nX-Spam-Checker-Version: "
                                        b"spambridge 0.1.0 on mx.example.net\r\n\r\n", 1))
    lmtp_line = data.split(b"Received: from desk")[0]
    assert b"by mx.example.net with LMTP" in lmtp_line, lmtp_line
    cfg = Config()
    cfg = replace(cfg, milter=replace(cfg.milter, trusted_networks=(
        parse_network("127.0.0.0/8"),)))
    env, why = check._envelope(1, parse_raw(data), cfg)
    assert (env.client_addr, why, env.mta_host) == ("198.51.100.7", None, "mx.example.net")
