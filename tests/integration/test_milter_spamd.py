"""The real `spambridge run` process, driven over its unix socket by an MTA-side milter client,
scanning with a real spamd (and, only for faults a real spamd cannot produce, fake ones)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import (
    GTUBE,
    FakeSpamd,
    RunningMilter,
    Spamd,
    connectable,
    free_port,
    message,
    read_request,
    self_signed,
    start_spamd,
    stop_process,
    wait_until,
    write_config,
)
from milterclient import MilterClient, Result, send_one, status
from spamdfakes import SwitchableSpamd

pytestmark = pytest.mark.spamd

FORGED = "X-Spam-Flag: YES\nX-Spam-Score: -10.0\nX-Spam-Flag: YES\n"
Start = Callable[..., RunningMilter]
MakeFake = Callable[[Callable[[socket.socket], None]], FakeSpamd]


def spamd_cfg(spamd: Spamd | FakeSpamd | str, **policy: object) -> dict[str, dict[str, object]]:
    address = spamd if isinstance(spamd, str) else spamd.address
    host, port = address.rsplit(":", 1)
    return {
        "milter": {"engine": "spamd", "scan_timeout": 5.0},
        "spamd": {"host": host, "port": int(port)},
        "policy": dict(policy),
    }


# --- verdicts from the real spamd -----------------------------------------------------------


def test_gtube_is_rejected_with_the_configured_reply(spamd: Spamd, start_milter: Start) -> None:
    m = start_milter(spamd_cfg(spamd, reject_reply="554 5.7.1 Spam refused here (GTUBE)"))
    r = send_one(m.socket_path, message(body=GTUBE + "\n"))
    assert r.action == "reject"
    assert r.reply == "554 5.7.1 Spam refused here (GTUBE)"
    assert "4ABCDEF0123: from=<sender@example.net> rcpts=1" in m.log
    assert re.search(r"engine=spamd score=1\d{3}\.\d action=reject reason=reject ms=\d+", m.log)


def test_gtube_in_tag_only_mode_is_delivered_flagged(spamd: Spamd, start_milter: Start) -> None:
    m = start_milter(spamd_cfg(spamd), "--tag-only")
    r = send_one(m.socket_path, message(subject="Cheap stuff", body=GTUBE + "\n"))
    assert r.action == "accept"
    assert r.header("X-Spam-Flag") == "YES"
    assert status(r).startswith("Yes, score=100")
    assert "GTUBE" in status(r)
    assert "action=tag would=reject" in m.log


def test_ham_is_accepted_with_a_no_status(spamd: Spamd, start_milter: Start) -> None:
    m = start_milter(spamd_cfg(spamd))
    r = send_one(m.socket_path, message())
    assert r.action == "accept"
    assert r.header("X-Spam-Flag") is None
    assert status(r).startswith("No, score=")
    assert "required=5.0" in status(r) and "engine=spamd" in status(r)
    assert r.header("X-Spam-Score") is not None


def test_every_forged_copy_is_removed_last_first(spamd: Spamd, start_milter: Start) -> None:
    m = start_milter(spamd_cfg(spamd))
    r = send_one(m.socket_path, message(extra_headers=FORGED))
    assert r.action == "accept"
    assert [(n, i) for n, i, v in r.changed if v == ""] == [
        ("X-Spam-Flag", 2), ("X-Spam-Flag", 1), ("X-Spam-Score", 1)]
    assert status(r).startswith("No, score=")


def test_authenticated_sender_not_scanned_but_cleaned(spamd: Spamd, start_milter: Start) -> None:
    m = start_milter(spamd_cfg(spamd))
    r = send_one(m.socket_path, message(body=GTUBE + "\n", extra_headers=FORGED),
                 mail_macros={"{auth_authen}": "alice", "{auth_type}": "PLAIN"})
    assert r.action == "accept"  # GTUBE, yet not rejected: it was not scanned
    assert r.header("X-Spam-Status") is None
    assert sorted(r.deleted("X-Spam-Flag")) == [1, 2] and r.deleted("X-Spam-Score") == [1]
    assert "reason=authenticated" in m.log


def test_trusted_network_not_scanned_but_cleaned(spamd: Spamd, start_milter: Start) -> None:
    cfg = spamd_cfg(spamd)
    cfg["milter"]["trusted_networks"] = ["198.51.100.0/24", "2001:db8::/32"]
    m = start_milter(cfg)
    for addr in ("198.51.100.7", "2001:db8::25", "::ffff:198.51.100.9"):  # v4 via a v6 listener
        r = send_one(m.socket_path, message(body=GTUBE + "\n", extra_headers=FORGED),
                     client_addr=addr)
        assert r.action == "accept"
        assert r.header("X-Spam-Status") is None
        assert sorted(r.deleted("X-Spam-Flag")) == [1, 2]
    # a client outside the list is scanned as usual
    assert send_one(m.socket_path, message(body=GTUBE + "\n")).action == "reject"
    assert m.log.count("reason=trusted") == 3


def test_an_ipv6_client_is_known_by_its_address_without_the_client_macro(
        spamd: Spamd, start_milter: Start) -> None:
    """The address of an IPv6 client comes in the connect call itself, as an IPv4 one's does:
    an MTA whose connect macros leave out `_` (milter_connect_macros set by the admin) must not
    make it an address-less client, which is written as this host (127.0.0.1) in the Received
    line SpamAssassin trusts, and matches no trusted_networks entry of its own."""
    cfg = spamd_cfg(spamd)
    cfg["milter"]["trusted_networks"] = ["2001:db8::/32"]
    m = start_milter(cfg)
    with MilterClient(m.socket_path) as c:
        c.connect(addr="2001:db8::25", macros={"_": ""})
        c.helo()
        r = c.send(message(body=GTUBE + "\n"), connected=True)
    assert r.action == "accept" and "reason=trusted" in m.log, m.log


def test_folded_and_8bit_headers_survive(spamd: Spamd, start_milter: Start) -> None:
    m = start_milter(spamd_cfg(spamd))
    raw = (b"From: =?ISO-8859-1?Q?Andr=E9?= <andre@example.net>\n"
           b"To: bob@test.example\n"
           b"Subject: caf\xe9 cr\xe8me\n\tand a folded second line\n"
           b"X-Latin: \xff\xfe raw bytes\n"
           b"Date: Wed, 25 Nov 2026 10:00:00 +0000\n\nbonjour\n")
    r = send_one(m.socket_path, raw)
    assert r.action == "accept"
    assert status(r).startswith("No, score=")
    assert "Traceback" not in m.log


@pytest.mark.parametrize("eol", ["\n", "\r\n"], ids=["LF", "CRLF"])
def test_lf_and_crlf_bodies(spamd: Spamd, start_milter: Start, eol: str) -> None:
    m = start_milter(spamd_cfg(spamd))
    body = eol.join(["Hello,", GTUBE, "bye", ""])
    assert send_one(m.socket_path, message(body=body).replace(b"\n", eol.encode())
                    if eol == "\r\n" else message(body=body)).action == "reject"


def test_several_messages_on_one_connection(spamd: Spamd, start_milter: Start) -> None:
    m = start_milter(spamd_cfg(spamd))
    with MilterClient(m.socket_path) as c:
        c.connect()
        c.helo()
        first = c.send(message(body=GTUBE + "\n"), connected=True, queue_id="AAA111")
        second = c.send(message(extra_headers=FORGED), connected=True, queue_id="BBB222")
    assert first.action == "reject"
    assert second.action == "accept" and sorted(second.deleted("X-Spam-Flag")) == [1, 2]
    assert "AAA111: " in m.log and "BBB222: " in m.log


def test_recipients_past_the_kept_ones_are_still_counted(start_milter: Start,
                                                        fake_spamd: MakeFake) -> None:
    """Only the first 1,000 recipients are kept per message (memory); a message to more
    (an MTA with a higher smtpd_recipient_limit) is logged with all of them."""
    m = start_milter(spamd_cfg(fake_spamd(Recorder(score=1.0))))
    rcpts = tuple(f"<r{i}@test.example>" for i in range(1500))
    assert send_one(m.socket_path, message(), rcpts=rcpts, queue_id="CCC333").action == "accept"
    wait_until(lambda: "CCC333: " in m.log, 10, "the message's log line")
    assert " rcpts=1500 " in m.log, m.log


# --- failure classes ---------------------------------------------------------------------------


def test_oversize_is_not_scanned(spamd: Spamd, start_milter: Start) -> None:
    cfg = spamd_cfg(spamd, on_oversize="tempfail")
    cfg["milter"]["max_scan_size"] = 4096
    m = start_milter(cfg)
    r = send_one(m.socket_path, message(body=GTUBE + "\n" + "filler line\n" * 2000))
    assert r.action == "tempfail"
    assert r.smtp_code == "451"
    assert "reason=oversize" in m.log


def test_spamd_stopped_gives_on_unavailable_fast(tmp_path: Path, start_milter: Start) -> None:
    base = Path(tempfile.mkdtemp(prefix="sb-spamd-stop-"))
    own = start_spamd(base)
    try:
        m = start_milter(spamd_cfg(own, on_unavailable="tempfail"))
        assert send_one(m.socket_path, message(body=GTUBE + "\n")).action == "reject"
        stop_process(own.proc)
        r = send_one(m.socket_path, message(body=GTUBE + "\n"))
        assert r.action == "tempfail"
        assert r.reply.startswith("451 4.7.1")
        assert r.seconds < 1.0
        assert "reason=unavailable" in m.log
        assert "Traceback" not in m.log
    finally:
        stop_process(own.proc)
        shutil.rmtree(base, ignore_errors=True)


def test_a_spamd_outage_is_told_when_it_starts_and_when_it_ends(start_milter: Start) -> None:
    """What `journalctl -u spambridge -p warning` shows for spamd down a while: its cause once,
    then that it answers again with how many messages it missed; each of those messages has
    its own INFO line. It was a warning per message, each with the same error, and no line
    said that spamd was back."""
    spamd = SwitchableSpamd("good")
    m = start_milter(spamd_cfg(spamd))
    try:
        assert send_one(m.socket_path, message(), queue_id="4BEFORE").action == "accept"
        spamd.close()  # down: nothing listens on its port
        for i in range(30):
            r = send_one(m.socket_path, message(), queue_id=f"4DOWN{i:02d}")
            assert status(r) == "No, unchecked=unavailable"
        spamd = SwitchableSpamd("good", port=spamd.port)  # back
        assert status(send_one(m.socket_path, message(), queue_id="4AFTER")).startswith("No, s")
    finally:
        spamd.close()
    wait_until(lambda: "4AFTER: " in m.log, 10, "the last decision line")
    lines = m.log.splitlines()
    warned = [ln.split(" WARNING ", 1)[1] for ln in lines
              if " WARNING " in ln and "running as root" not in ln]
    assert len(warned) == 2, m.log
    assert warned[0].startswith(f"spamd failing: unavailable: {spamd.address}: ")
    assert warned[0].endswith("; mail gets on_unavailable = accept until it answers again")
    assert re.fullmatch(r"spamd answers again after [\d.]+s failing: 30 messages "
                        r"\(unavailable 30\) got no verdict from it", warned[1]), warned[1]
    down = [ln for ln in lines if "4DOWN" in ln]
    assert len(down) == 30 and all(" INFO 4DOWN" in ln and "reason=unavailable" in ln
                                   for ln in down)


def test_a_restart_during_a_spamd_outage_sums_it_up_at_the_stop(start_milter: Start) -> None:
    """Stopped while spamd is still down (a restart to "fix" it): the log's last word on the
    outage was its first line; now the stop says how long it lasted and how much mail missed
    spamd."""
    spamd = SwitchableSpamd("good")
    m = start_milter(spamd_cfg(spamd))
    spamd.close()
    for i in range(3):
        assert status(send_one(m.socket_path, message(), queue_id=f"4DOWN{i:02d}")) == (
            "No, unchecked=unavailable")
    m.proc.send_signal(signal.SIGTERM)
    assert m.proc.wait(20) == 0
    assert re.search(r" WARNING spamd still failing at the stop, after [\d.]+s: 3 messages "
                     r"\(unavailable 3\) got no verdict from it\n", m.log), m.log


def hang(conn: socket.socket) -> None:
    read_request(conn, 1.0)
    time.sleep(30)


def garbage(conn: socket.socket) -> None:
    read_request(conn, 1.0)
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>hi</html>")
    conn.close()


def test_hung_spamd_gives_on_timeout_within_the_cap(start_milter: Start,
                                                    fake_spamd: MakeFake) -> None:
    cfg = spamd_cfg(fake_spamd(hang))
    cfg["milter"]["scan_timeout"] = 1.0
    m = start_milter(cfg)
    r = send_one(m.socket_path, message())
    assert r.action == "accept"
    assert status(r) == "No, unchecked=timeout"
    assert 0.9 < r.seconds < 1.5
    assert "reason=timeout" in m.log


def test_garbage_from_spamd_gives_on_error(start_milter: Start, fake_spamd: MakeFake) -> None:
    m = start_milter(spamd_cfg(fake_spamd(garbage)))
    r = send_one(m.socket_path, message(extra_headers=FORGED))
    assert r.action == "accept"
    assert status(r) == "No, unchecked=error"
    assert sorted(r.deleted("X-Spam-Flag")) == [1, 2]  # forged copies go in this path too
    assert "reason=error" in m.log and "Traceback" not in m.log


@pytest.mark.parametrize("choice", ["accept", "tempfail", "reject"])
@pytest.mark.parametrize("fault", ["unavailable", "timeout", "error", "oversize"])
def test_each_failure_policy_value_is_honoured(start_milter: Start, fake_spamd: MakeFake,
                                               fault: str, choice: str) -> None:
    if fault == "unavailable":
        address = f"127.0.0.1:{free_port()}"  # nothing listens there
    else:
        address = fake_spamd(hang if fault == "timeout" else garbage).address
    cfg = spamd_cfg(address, **{f"on_{fault}": choice,
                                "reject_reply": "550 5.7.1 Spam",
                                "unchecked_reject_reply": "550 5.7.1 Refused by policy",
                                "tempfail_reply": "451 4.7.1 Try later please"})
    cfg["milter"]["scan_timeout"] = 0.5
    if fault == "oversize":
        cfg["milter"]["max_scan_size"] = 2048
    body = "x" * 5000 + "\n" if fault == "oversize" else "hello\n"
    m = start_milter(cfg)
    r = send_one(m.socket_path, message(body=body))
    assert r.action == choice
    if choice == "accept":
        assert status(r) == f"No, unchecked={fault}"
    elif choice == "tempfail":
        assert r.reply == "451 4.7.1 Try later please"
    else:
        assert r.reply == "550 5.7.1 Refused by policy"


# --- what spamd receives -----------------------------------------------------------------------


class Recorder:
    """A spamd stand-in that records the request and answers like spamd does."""

    def __init__(self, score: float = 2.0, delay: float = 0.0) -> None:
        self.requests: list[bytes] = []
        self.score, self.delay = score, delay

    def __call__(self, conn: socket.socket) -> None:
        self.requests.append(read_request(conn, 2.0))
        time.sleep(self.delay)
        body = b"RULE_ONE,RULE_TWO"
        spam = "True" if self.score >= 5 else "False"
        conn.sendall(b"SPAMD/1.1 0 EX_OK\r\nContent-length: %d\r\nSpam: %s ; %.1f / 5.0\r\n\r\n%s"
                     % (len(body), spam.encode(), self.score, body))
        conn.close()


def test_spamd_sees_exact_bytes_received_line_and_user(start_milter: Start,
                                                         fake_spamd: MakeFake) -> None:
    rec = Recorder()
    cfg = spamd_cfg(fake_spamd(rec))
    cfg["spamd"]["per_recipient_user"] = True
    m = start_milter(cfg)
    raw = (b"From: a@example.net\nTo: bob@test.example\n"
           b"Subject: caf\xe9\n\tsecond line\n\nline1\nline2\n")
    r = send_one(m.socket_path, raw)
    assert r.action == "accept"
    assert "tests=RULE_ONE,RULE_TWO" in status(r)
    req = rec.requests[0]
    head, _, message_bytes = req.partition(b"\r\n\r\n")
    assert head.startswith(b"SYMBOLS SPAMC/1.5")
    assert b"User: user@test.example" in head
    assert message_bytes.startswith(b"X-Envelope-From: <sender@example.net>\r\n"
                                    b"Received: from mail.example.net (mail.example.net "
                                    b"[192.0.2.10])\r\n\tby mx.test.example (Postfix) with ESMTP "
                                    b"id 4ABCDEF0123\r\n\tfor <user@test.example>;\r\n\t")
    assert b"Subject: caf\xe9\r\n\tsecond line\r\n" in message_bytes
    assert message_bytes.endswith(b"\r\n\r\nline1\r\nline2\r\n")


def test_spamd_user_and_received_for_only_for_a_message_to_one_recipient(
        start_milter: Start, fake_spamd: MakeFake) -> None:
    """per_recipient_user: a message to two recipients is scanned as spamd's default user
    and its Received line names no recipient (one user's preferences must not decide for
    the other); the next message on the connection, to one recipient, is that user's."""
    rec = Recorder()
    cfg = spamd_cfg(fake_spamd(rec))
    cfg["spamd"]["per_recipient_user"] = True
    m = start_milter(cfg)
    with MilterClient(m.socket_path) as c:
        c.connect()
        c.helo()
        both = c.send(message(), rcpts=("<bob@test.example>", "<carol@test.example>"),
                      connected=True, queue_id="DDD444")
        one = c.send(message(), rcpts=("<carol@test.example>",), connected=True,
                     queue_id="EEE555")
    assert both.action == one.action == "accept"
    heads = [req.partition(b"\r\n\r\n")[0] for req in rec.requests]
    received = [req.partition(b"\r\n\r\n")[2].split(b";", 1)[0] for req in rec.requests]
    assert b"User:" not in heads[0] and b"\tfor " not in received[0], rec.requests[0]
    assert b"User: carol@test.example" in heads[1]
    assert received[1].endswith(b"id EEE555\r\n\tfor <carol@test.example>"), received[1]


def test_per_recipient_user_local_part_is_what_spamass_milter_u_passed(
        start_milter: Start, spamd: Spamd) -> None:
    """spamass-milter -u (Debian's default: -u spamass-milter) gave spamd the single
    recipient's local part, lowercased: the Unix user whose ~/.spamassassin prefs and Bayes
    database spamd then reads. per_recipient_user = "local-part" does the same; two
    recipients get [spamd] user, as -u's default user. The real spamd says whom it scanned for."""
    cfg = spamd_cfg(spamd)
    cfg["spamd"].update(user="spamass-milter", per_recipient_user="local-part")
    m = start_milter(cfg)
    tag = f"{os.getpid()}.{time.monotonic_ns()}"

    def mail(n: int) -> bytes:
        return message().replace(b"<20261125100000.1234@example.net>",
                                 f"<lp{n}.{tag}@example.net>".encode())

    one = send_one(m.socket_path, mail(1), rcpts=("<Bob.Smith@Test.Example>",))
    two = send_one(m.socket_path, mail(2), rcpts=("<bob@test.example>", "<carol@test.example>"))
    assert one.action == two.action == "accept"
    log = spamd.home.parent / "spamd.log"

    def users() -> dict[int, str]:
        found = re.findall(rf"result: .*,user=([^,]*),.*mid=<lp(\d)\.{re.escape(tag)}@",
                           log.read_text(errors="replace"))
        return {int(n): u for u, n in found}

    wait_until(lambda: len(users()) == 2, 10, "spamd's result lines")
    assert users() == {1: "bob.smith", 2: "spamass-milter"}


def test_every_message_of_a_session_has_its_helo_in_the_received_line(
        start_milter: Start, fake_spamd: MakeFake) -> None:
    """HELO comes once per connection; each message on it reaches spamd with a Received
    line naming that HELO beside the client's DNS name (SpamAssassin's HELO rules read it)."""
    rec = Recorder()
    m = start_milter(spamd_cfg(fake_spamd(rec)))
    with MilterClient(m.socket_path) as c:
        c.connect(hostname="client.example.net", addr="192.0.2.10")
        c.helo("pc1.lan")
        for qid in ("FFF661", "FFF662"):
            assert c.send(message(), connected=True, queue_id=qid).action == "accept"
    assert len(rec.requests) == 2
    for req in rec.requests:
        body = req.partition(b"\r\n\r\n")[2]
        assert body.split(b"\r\n", 2)[1] == (
            b"Received: from pc1.lan (client.example.net [192.0.2.10])"), body


def test_a_tls_session_is_esmtps_in_the_received_line_spamd_sees(start_milter: Start,
                                                                  fake_spamd: MakeFake) -> None:
    """Postfix writes "with ESMTPS" for a TLS session ({tls_version} at MAIL FROM); SpamAssassin
    reads the protocol from the line the milter writes in its place."""
    rec = Recorder()
    m = start_milter(spamd_cfg(fake_spamd(rec)))
    for macros in ({"{tls_version}": "TLSv1.3"}, {}):
        assert send_one(m.socket_path, message(), mail_macros=macros).action == "accept"
    tls, plain = (req.partition(b"\r\n\r\n")[2] for req in rec.requests)
    assert b"(Postfix) with ESMTPS id " in tls.split(b"\r\n\t", 2)[1]
    assert b"(Postfix) with ESMTP id " in plain.split(b"\r\n\t", 2)[1]


# --- process behaviour ----------------------------------------------------------------------


def test_broken_config_exits_before_the_socket_opens(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    sock = tmp_path / "never.sock"
    cfg.write_text(f'[milter]\nsocket = "unix:{sock}"\n[policy]\ntag_at = 9\nreject_at = 3\n')
    p = subprocess.run([sys.executable, "-m", "spambridge", "run", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 78
    assert f"{cfg}:5: [policy] reject_at:" in p.stderr
    assert "Traceback" not in p.stderr
    assert not sock.exists()


def test_a_spool_dir_it_cannot_write_stops_the_start(tmp_path: Path) -> None:
    """Found per message instead, every message above spool_memory was accepted unchecked
    (on_error) while smaller ones were scanned."""
    cfg = tmp_path / "spool.toml"
    sock = tmp_path / "s.sock"
    missing = tmp_path / "no-such-spool"
    cfg.write_text(f'[milter]\nsocket = "unix:{sock}"\nengine = "spamd"\n'
                   f'spool_dir = "{missing}"\n')
    p = subprocess.run([sys.executable, "-m", "spambridge", "run", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 78
    assert f"{cfg}:4: [milter] spool_dir: {missing}: No such file or directory" in p.stderr
    assert "Traceback" not in p.stderr
    assert not sock.exists()  # the socket it had opened is gone again


@pytest.mark.parametrize(("below", "why"), [("/spambridge", "Not a directory"),
                                            ("", "File exists")])
def test_a_socket_directory_it_cannot_create_is_a_config_error(
        tmp_path: Path, below: str, why: str) -> None:
    """Exit 1 made systemd restart the milter every 2 s for ever (Restart=always), and a
    `systemctl start` wait for it, dpkg's at install included (the packaged unit on a host
    without Postfix: /var/spool/postfix cannot be made under ProtectSystem=strict). A
    directory that cannot be created is a lasting cause: exit 78, which systemd leaves.
    A regular file at the socket's directory itself (an admin's `touch`) is one too."""
    cfg = tmp_path / "sock.toml"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    sock_dir = f"{blocker}{below}"  # a regular file, or under one: never a directory
    cfg.write_text(f'[milter]\nsocket = "unix:{sock_dir}/s.sock"\nengine = "spamd"\n')
    p = subprocess.run([sys.executable, "-m", "spambridge", "run", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 78, p.stderr
    assert (f"{cfg}:2: [milter] socket: cannot create {sock_dir}: {why}; make it "
            f"before the milter starts (install -d -o USER -g postfix -m 2750 {sock_dir};"
            in p.stderr), p.stderr
    assert "Traceback" not in p.stderr


def test_a_dangling_symlink_on_the_socket_path_is_a_config_error_naming_it(
        tmp_path: Path) -> None:
    """A symlink to nothing above the socket (a link left pointing into a removed tree):
    `run` failed one level further down, "cannot create …/link/sub: No such file or
    directory; make it … (install -d … …/link/sub", which fails on the link as well
    ("File exists"). It names the link and its target, as check-config does."""
    cfg = tmp_path / "sock.toml"
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    cfg.write_text(f'[milter]\nsocket = "unix:{link}/sub/s.sock"\nengine = "spamd"\n')
    p = subprocess.run([sys.executable, "-m", "spambridge", "run", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 78, p.stderr
    assert (f"{cfg}:2: [milter] socket: cannot create {link}/sub: {link} is a symlink to "
            f"{tmp_path}/gone, which does not exist (make that, or point the link at a "
            "directory that is there)\n") in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


def test_help_documents_the_spamass_milter_style_flags() -> None:
    p = subprocess.run([sys.executable, "-m", "spambridge", "run", "--help"],
                       capture_output=True, text=True, timeout=30)
    for flag in ("--socket", "--spamd", "--scan-timeout", "--tag-at", "--reject-at", "--tag-only",
                 "--config"):
        assert flag in p.stdout
    # the config file's value comes before the built-in one: help must not claim otherwise
    text = " ".join(p.stdout.split())
    assert "(default: [milter] engine, else bayes)" in text
    assert "(default: [milter] scan_timeout, else 10)" in text
    top = subprocess.run([sys.executable, "-m", "spambridge", "--help"],
                         capture_output=True, text=True, timeout=30)
    assert "run" in top.stdout


def test_stale_socket_is_replaced_and_mode_applied(tmp_path: Path, spamd: Spamd,
                                                   start_milter: Start) -> None:
    path = tmp_path / "m0.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on, as a crashed milter leaves it
    cfg = spamd_cfg(spamd)
    cfg["milter"].update(socket=f"unix:{path}", socket_mode="0600")
    m = start_milter(cfg)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert send_one(m.socket_path, message()).action == "accept"


def test_a_file_or_a_live_socket_at_the_socket_path_is_left_alone(tmp_path: Path, spamd: Spamd,
                                                                  start_milter: Start) -> None:
    """Only a socket nobody listens on is stale: a mistyped path naming a file must not delete
    it, and a second instance must not take the socket of one that is running."""
    victim = tmp_path / "aliases.db"
    victim.write_text("keep me\n")
    cfg = spamd_cfg(spamd)
    cfg["milter"]["socket"] = f"unix:{victim}"
    m = start_milter(cfg, wait=False)
    assert m.proc.wait(30) == 78  # lasting: not restarted by systemd every 2 s
    assert "exists and is not a socket; refusing to remove it" in m.log
    assert victim.read_text() == "keep me\n"

    first = start_milter(spamd_cfg(spamd))
    cfg = spamd_cfg(spamd)
    cfg["milter"]["socket"] = f"unix:{first.socket_path}"
    second = start_milter(cfg, wait=False)
    assert second.proc.wait(30) != 0
    assert "is in use by another running milter" in second.log
    assert send_one(first.socket_path, message()).action == "accept"


def test_a_second_instance_on_a_tcp_port_in_use_says_why_it_cannot_start(
        start_milter: Start, fake_spamd: MakeFake) -> None:
    """libmilter reports only "cannot opensocket" (its reason goes to syslog, not to the
    milter's log): a second instance, or any other program on the port, must be named as the
    reason, as it is for a unix socket in use."""
    port = free_port()
    cfg = spamd_cfg(fake_spamd(Recorder(score=1.0)))
    cfg["milter"]["socket"] = f"inet:{port}@127.0.0.1"
    first = start_milter(cfg, wait=False)
    wait_until(lambda: first.proc.poll() is not None or milter_answers(port), 30, "the port")
    second = start_milter(cfg, wait=False)
    assert second.proc.wait(30) == 1
    assert f"cannot open milter socket inet:{port}@127.0.0.1: Address already in use" in \
        second.log, second.log
    assert send_one(("127.0.0.1", port), message()).action == "accept"  # the first serves on


def milter_answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_sigterm_lets_inflight_messages_finish(start_milter: Start, fake_spamd: MakeFake) -> None:
    rec = Recorder(score=9.0, delay=1.5)
    m = start_milter(spamd_cfg(fake_spamd(rec)))
    results: list[Result] = []
    t = threading.Thread(target=lambda: results.append(send_one(m.socket_path, message())))
    t.start()
    deadline = time.monotonic() + 10
    while not rec.requests and time.monotonic() < deadline:
        time.sleep(0.01)  # until the message is waiting on the slow spamd
    m.proc.send_signal(signal.SIGTERM)
    t.join(20)
    assert results and results[0].action == "accept"
    assert results[0].header("X-Spam-Flag") == "YES"
    assert m.proc.wait(20) == 0
    assert "spambridge stopped" in m.log


def test_a_stop_that_waits_for_a_scan_says_so_when_it_starts(start_milter: Start,
                                                              fake_spamd: MakeFake) -> None:
    """A stop waits for the messages being scanned, on a hung spamd up to the cap (10 s by
    default). The log must say so as the stop begins, not only "stopped" at the end: an admin
    who meets seconds of silence after Ctrl-C or `systemctl stop` takes the milter for hung and
    kills it, cutting off the very replies it was waiting to send."""
    rec = Recorder(score=1.0, delay=30)  # hung
    cfg = spamd_cfg(fake_spamd(rec))
    cfg["milter"]["scan_timeout"] = 2.0
    m = start_milter(cfg)
    results: list[Result] = []
    t = threading.Thread(target=lambda: results.append(send_one(m.socket_path, message())))
    t.start()
    wait_until(lambda: bool(rec.requests), 10, "the scan to reach spamd")
    m.proc.send_signal(signal.SIGTERM)
    assert m.proc.wait(20) == 0
    t.join(20)
    assert results and results[0].action == "accept"  # on_timeout
    lines = m.log.splitlines()
    stopping = [i for i, line in enumerate(lines) if "stopping: 1 message being scanned" in line]
    decided = [i for i, line in enumerate(lines) if "reason=timeout" in line]
    assert stopping and decided and stopping[0] < decided[0], m.log
    assert "up to 3s" in lines[stopping[0]]  # the cap, plus a second for the reply


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
def test_an_idle_milter_stops_at_once(start_milter: Start, fake_spamd: MakeFake,
                                      signum: signal.Signals) -> None:
    """A restart leaves Postfix without a milter until the old process is gone, so an idle
    milter must not sit out libmilter's 5-second poll after TERM (systemd's stop) or HUP.
    The message just before starts that poll afresh: the old code took 5 s here, every time."""
    m = start_milter(spamd_cfg(fake_spamd(Recorder(score=1.0))))
    assert send_one(m.socket_path, message()).action == "accept"
    m.proc.send_signal(signum)
    try:
        assert m.proc.wait(2.0) == 0
    except subprocess.TimeoutExpired:
        pytest.fail("still running 2 s after the stop signal")
    assert "spambridge stopped" in m.log
    assert not Path(m.socket_path).exists()


def test_an_idle_milter_stops_at_once_whatever_signal_mask_it_inherits(
        tmp_path: Path, fake_spamd: MakeFake) -> None:
    """A signal mask survives fork and exec: a launcher that blocks signals for itself and
    starts the milter without unblocking them must not bring libmilter's 5-second stop back."""
    sock = tmp_path / "m.sock"
    cfg = spamd_cfg(fake_spamd(Recorder(score=1.0)))
    cfg["milter"]["socket"] = f"unix:{sock}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "spambridge", "run", "--config",
         str(write_config(tmp_path / "m.toml", cfg))],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2}))
    try:
        wait_until(lambda: proc.poll() is not None or connectable(str(sock)), 30, "the socket")
        assert send_one(str(sock), message()).action == "accept"
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(2.0) == 0
        except subprocess.TimeoutExpired:
            pytest.fail("still running 2 s after TERM")
    finally:
        stop_process(proc)
    assert b"spambridge stopped" in (proc.stderr.read() if proc.stderr else b"")


def test_a_stopping_milter_leaves_its_successors_socket_alone(start_milter: Start,
                                                              fake_spamd: MakeFake) -> None:
    """A restart that does not wait: the old instance has closed its listener but still
    finishes a message when the new one starts on the same socket path. Exiting, the old one
    must remove only its own socket, not the one the new instance listens on."""
    rec = Recorder(score=1.0, delay=2.0)
    cfg = spamd_cfg(fake_spamd(rec))
    old = start_milter(cfg)
    results: list[Result] = []
    t = threading.Thread(target=lambda: results.append(send_one(old.socket_path, message())))
    t.start()
    deadline = time.monotonic() + 10
    while not rec.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    old.proc.send_signal(signal.SIGTERM)
    while connectable(old.socket_path) and time.monotonic() < deadline:
        time.sleep(0.01)  # libmilter stops listening at once; the reply still waits
    cfg["milter"]["socket"] = f"unix:{old.socket_path}"
    new = start_milter(cfg)
    assert old.proc.wait(20) == 0
    t.join(20)
    assert results and results[0].action == "accept"
    assert send_one(new.socket_path, message()).action == "accept"


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_systemd_is_told_ready_once_the_socket_answers(
        start_milter: Start, fake_spamd: MakeFake, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, abstract: bool) -> None:
    """Type=notify: systemd hands NOTIFY_SOCKET as a path, or as "@name" for a socket in the
    abstract namespace. Either way READY=1 arrives, and by then the milter answers (units
    ordered after it, and `systemctl start` itself, wait for this)."""
    name = f"sb-notify-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name if abstract else str(tmp_path / "notify"))
        listener.settimeout(30)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name if abstract else str(tmp_path / "notify"))
        m = start_milter(spamd_cfg(fake_spamd(Recorder(score=1.0))), wait=False)
        try:
            got = listener.recv(4096)
        except TimeoutError:
            pytest.fail(f"no READY=1 from the milter:\n{m.log}")
        assert got == b"READY=1"
        assert connectable(m.socket_path)
        assert send_one(m.socket_path, message()).action == "accept"


def test_sigterm_during_startup_is_a_clean_stop(tmp_path: Path) -> None:
    """systemd may stop a unit the moment it starts; that must be exit 0, not death by TERM."""
    sock = tmp_path / "early.sock"
    proc = subprocess.Popen([sys.executable, "-m", "spambridge", "run", "--engine", "spamd",
                             "--socket", f"unix:{sock}"], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    try:
        assert stop_process(proc) == 0
    finally:
        stop_process(proc)
    assert b"spambridge stopped" in (proc.stderr.read() if proc.stderr else b"")


def test_spamd_over_tls(start_milter: Start) -> None:
    base = Path(tempfile.mkdtemp(prefix="sb-spamd-tls-"))
    cert, key = self_signed(base, "spamd")
    other, _ = self_signed(base, "other")
    own = start_spamd(base, tls=(cert, key))
    try:
        cfg = spamd_cfg(own, on_unavailable="tempfail", on_error="tempfail")
        cfg["spamd"].update(tls=True, ca_file=str(cert))
        m = start_milter(cfg)
        r = send_one(m.socket_path, message(body=GTUBE + "\n"))
        assert r.action == "reject"  # scanned by spamd, over TLS, with the certificate checked
        # a certificate the configured CA did not sign is refused, never silently trusted
        cfg["spamd"]["ca_file"] = str(other)
        m2 = start_milter(cfg)
        r2 = send_one(m2.socket_path, message(body=GTUBE + "\n"))
        assert r2.action == "tempfail"
        assert "CERTIFICATE_VERIFY_FAILED" in m2.log or "certificate verify failed" in m2.log
    finally:
        stop_process(own.proc)
        shutil.rmtree(base, ignore_errors=True)


def test_spamd_on_a_unix_socket_from_the_command_line(start_milter: Start) -> None:
    base = Path(tempfile.mkdtemp(prefix="sb-spamd-unix-"))
    path = base / "spamd.sock"
    own = start_spamd(base, unix=path)
    try:
        m = start_milter({"milter": {"engine": "spamd"}}, "--spamd", str(path))
        r = send_one(m.socket_path, message(body=GTUBE + "\n"))
        assert r.action == "reject"
    finally:
        stop_process(own.proc)
        shutil.rmtree(base, ignore_errors=True)


def test_check_config_pings_spamd(spamd: Spamd, tmp_path: Path) -> None:
    """check-config said "all well" with spamd down or on another port, and every message
    then went out unchecked=unavailable: it asks spamd for a PING now."""
    def check_config(port: int, engine: str) -> subprocess.CompletedProcess[str]:
        cfg = write_config(tmp_path / f"{engine}-{port}.toml", {
            "milter": {"engine": engine}, "spamd": {"host": "127.0.0.1", "port": port}})
        return subprocess.run([sys.executable, "-m", "spambridge", "check-config", "--config",
                               str(cfg), "--no-postfix"], capture_output=True, text=True,
                              timeout=60)

    r = check_config(spamd.port, "spamd")
    assert r.returncode == 0 and f"spamd at 127.0.0.1:{spamd.port} answers" in r.stdout, r.stdout
    dead = free_port()
    r = check_config(dead, "spamd")
    assert r.returncode == 1
    assert (f"warning: [spamd] spamd at 127.0.0.1:{dead} does not answer a PING" in r.stdout
            and "every message would get on_unavailable" in r.stdout), r.stdout
    r = check_config(dead, "spamd+bayes")
    assert "the Bayes engine would decide every message" in r.stdout, r.stdout


def start_as_nobody(top: Path, sockdir: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """`spambridge run` started as nobody (as the packaged unit starts it) with its socket in
    `sockdir`, a directory only root writes, and its database in `top`: its config, and how
    the start ended."""
    cfg = write_config(top / "m.toml", {"milter": {"socket": f"unix:{sockdir}/m.sock"},
                                        "bayes": {"db": str(top / "b.sqlite")}})
    os.chmod(cfg, 0o644)
    os.chmod(top, 0o777)  # the database may be made here
    r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                        sys.executable, "-m", "spambridge", "run", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60, cwd="/", check=False)
    return cfg, r


@pytest.mark.skipif(os.geteuid() != 0, reason="starts the milter as nobody: needs root (as CI)")
def test_a_socket_directory_it_may_not_write_stops_the_start_saying_why(tmp_path: Path) -> None:
    """Started as the service's user with a socket directory only root writes (or, under
    ProtectSystem=strict, one outside ReadWritePaths=): "cannot opensocket" and exit 1, the
    reason only in libmilter's syslog line, and systemd restarting it every 2 s."""
    top = Path(tempfile.mkdtemp(prefix="sb-sockdir-", dir="/tmp"))
    try:
        os.chmod(top, 0o755)
        sockdir = top / "run"
        sockdir.mkdir(mode=0o755)  # root's
        cfg, r = start_as_nobody(top, sockdir)
        assert r.returncode == 78, r.stderr
        assert (f"{cfg}:2: [milter] socket: cannot listen on {sockdir}/m.sock: Permission "
                "denied") in r.stderr
        assert not (sockdir / "m.sock").exists()
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="starts the milter as nobody: needs root (as CI)")
def test_a_stale_socket_it_may_not_remove_stops_the_start_saying_why(tmp_path: Path) -> None:
    """The socket a milter left in a directory its user may not write (started as root with
    [milter] user set, which warns that it cannot remove it at the stop), met at the next start
    as that user: a bare "[Errno 13] Permission denied" and exit 1, which systemd retried every
    2 s; spambridge.8 says such a directory is a configuration error, 78, naming the key."""
    top = Path(tempfile.mkdtemp(prefix="sb-sockdir-", dir="/tmp"))
    try:
        os.chmod(top, 0o755)
        sockdir = top / "run"
        sockdir.mkdir(mode=0o755)  # root's
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(sockdir / "m.sock"))
        stale.close()  # nobody listens on it
        os.chmod(sockdir / "m.sock", 0o777)  # a connect is refused (ECONNREFUSED), not EACCES
        cfg, r = start_as_nobody(top, sockdir)
        assert r.returncode == 78, r.stderr
        assert (f"{cfg}:2: [milter] socket: {sockdir}/m.sock is a stale socket (nothing "
                "listens on it) this user may not remove: Permission denied") in r.stderr
        assert (sockdir / "m.sock").is_socket()
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="starts the milter as nobody: needs root (as CI)")
def test_a_live_socket_it_may_not_connect_to_is_not_called_stale(tmp_path: Path) -> None:
    """A socket this user may neither connect to (its mode) nor remove, with a milter still
    listening on it (one started by hand as root while the unit starts as its user): the
    start said it was "a stale socket (nothing listens on it)" and told the admin to remove
    it, which took the running milter's socket away (Postfix then tempfails every message)."""
    top = Path(tempfile.mkdtemp(prefix="sb-sockdir-", dir="/tmp"))
    live = socket.socket(socket.AF_UNIX)
    try:
        os.chmod(top, 0o755)
        sockdir = top / "run"
        sockdir.mkdir(mode=0o755)  # root's
        live.bind(str(sockdir / "m.sock"))
        live.listen()
        os.chmod(sockdir / "m.sock", 0o600)  # root's milter, socket_mode 0600
        cfg, r = start_as_nobody(top, sockdir)
        assert r.returncode == 78, r.stderr
        assert "nothing listens on it" not in r.stderr, r.stderr
        assert (f"{cfg}:2: [milter] socket: {sockdir}/m.sock is a socket this user may neither "
                "connect to nor remove (Permission denied): if no milter listens on it") \
            in r.stderr, r.stderr
        assert (sockdir / "m.sock").is_socket()
    finally:
        live.close()
        shutil.rmtree(top, ignore_errors=True)
