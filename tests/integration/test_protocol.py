"""What the milter negotiates with the MTA (read by the MTA-side client, as Postfix would)."""

from __future__ import annotations

import re
import socket
import struct
from collections.abc import Callable

from harness import RunningMilter, message, wait_until
from milterclient import MilterClient, send_one, split_message
from miltertest import constants
from spamdfakes import SwitchableSpamd, spamd_reply

from spambridge.defaults import MAX_OWNED

Start = Callable[..., RunningMilter]
NO_REPLY = {
    "connect": constants.SMFIP_NR_CONN, "helo": constants.SMFIP_NR_HELO,
    "mail": constants.SMFIP_NR_MAIL, "rcpt": constants.SMFIP_NR_RCPT,
    "header": constants.SMFIP_NR_HDR, "eoh": constants.SMFIP_NR_EOH,
}


def test_stages_before_the_body_need_no_reply(start_milter: Start,
                                              fake: SwitchableSpamd) -> None:
    """The MTA streams envelope and headers without waiting for a reply to each (some 25
    round trips per message, most of a milter's own latency); body chunks keep theirs, so
    an oversize body can still be cut short with SKIP."""
    m = start_milter({"milter": {"engine": "spamd", "max_scan_size": 4096},
                      "spamd": {"host": "127.0.0.1", "port": fake.port}})
    with MilterClient(m.socket_path) as c:
        missing = [stage for stage, bit in NO_REPLY.items() if not c.protocol & bit]
        assert not missing, f"stages the MTA must wait on: {missing} (0x{c.protocol:x})"
        assert not c.protocol & constants.SMFIP_NR_BODY
        r = c.send(message(body="x" * 200_000))
    assert r.action == "accept" and r.header("X-Spam-Status") == "No, unchecked=oversize"
    assert "Traceback" not in m.log


def test_an_oversize_body_is_cut_short(start_milter: Start, fake: SwitchableSpamd) -> None:
    """Once a body is past max_scan_size, the milter answers SKIP to the chunk: the MTA
    stops sending the rest of a 20 MB message it would otherwise stream to the milter in
    full (Postfix honours SKIP); the message is still answered on_oversize."""
    m = start_milter({"milter": {"engine": "spamd", "max_scan_size": 100_000},
                      "spamd": {"host": "127.0.0.1", "port": fake.port}})
    chunk = b"x" * 60_000 + b"\n"
    with MilterClient(m.socket_path) as c:
        c.connect()
        c.helo()
        c.mail()
        c.rcpt()
        c.data("4BBBBBBBBB1")
        c.header("Subject", "big")
        c.eoh("4BBBBBBBBB1")
        replies = [c.conn.send_get(constants.SMFIC_BODY, buf=chunk)[0] for _ in range(2)]
        r = c.eom("4BBBBBBBBB1")
    assert replies[0] == constants.SMFIR_CONTINUE
    assert replies[1] == constants.SMFIR_SKIP, replies  # past 100,000 bytes
    assert r.action == "accept" and r.header("X-Spam-Status") == "No, unchecked=oversize"
    assert fake.requests == 0


def test_forged_field_flood_without_a_queue_id_is_logged_as_noqueue(start_milter: Start) -> None:
    """Every log line names the message, NOQUEUE when the MTA gave no queue id (Sendmail
    before its queue file, a client that sends none), as Postfix's own log does: the
    warning about forged fields left in place was the one line that printed an empty id."""
    m = start_milter()  # the default engine; an untrained database is fine here
    forged = "X-Spam-Flag: YES\n" * (MAX_OWNED + 5)
    r = send_one(m.socket_path, message(extra_headers=forged), queue_id="")
    assert r.action == "accept"
    assert (f"NOQUEUE: {MAX_OWNED + 5} forged X-Spam-* fields, only the first {MAX_OWNED} "
            "removed") in m.log



def test_a_forged_field_flood_is_warned_of_only_where_the_mail_is_delivered(
        start_milter: Start, fake: SwitchableSpamd) -> None:
    """The warning that forged X-Spam-* fields stay, and ours go on top, is for mail that is
    delivered with them. A refused flood changes nothing and delivers nothing: a WARNING
    saying its fields were "removed" and ours put "on top" sent the admin looking for forged
    verdicts in mailboxes. Mail not scanned (trusted) gets none of ours to put on top."""
    fake.reply = spamd_reply(score=20.0)
    m = start_milter({"milter": {"engine": "spamd", "trusted_networks": ["192.0.2.99/32"]},
                      "spamd": {"host": "127.0.0.1", "port": fake.port},
                      "policy": {"tag_at": 5.0, "reject_at": 15.0}})
    raw = message(extra_headers="X-Spam-Flag: YES\n" * (MAX_OWNED + 5))
    r = send_one(m.socket_path, raw, queue_id="FLOODREJ1")
    assert r.action == "reject" and r.changed == [] and r.added == []
    r = send_one(m.socket_path, raw, queue_id="FLOODTRU1", client_addr="192.0.2.99")
    assert r.action == "accept" and len(r.deleted("X-Spam-Flag")) == MAX_OWNED and not r.added
    wait_until(lambda: " FLOODTRU1: " in m.log, 10, "the trusted message's lines")
    assert "FLOODREJ1: " in m.log and "forged" not in log_lines(m, "FLOODREJ1")
    assert (f"FLOODTRU1: {MAX_OWNED + 5} forged X-Spam-* fields, only the first {MAX_OWNED} "
            "removed\n") in m.log


def log_lines(m: RunningMilter, qid: str) -> str:
    return "\n".join(line for line in m.log.splitlines() if f" {qid}: " in line)

def test_an_8bit_helo_is_logged_as_a_log_line_and_the_message_still_judged(
        start_milter: Start) -> None:
    """Postfix with smtputf8_enable=no hands the client's EHLO argument to the milter as it
    came, 8-bit bytes and all; pymilter cannot make the text its HELO callback takes of them
    and prints the error itself: a bare "UnicodeDecodeError: ..." line on stderr, with no
    time, no process, no hint what it was about, which journald files as the milter's own
    error. The message must still get its verdict, and the log say what happened in a line
    of its own format."""
    m = start_milter()  # the default engine; an untrained database is fine here
    with MilterClient(m.socket_path) as c:
        c.connect()
        c.helo(b"mail\xff\xfe.example")
        r = c.send(message(), connected=True, queue_id="8BITHELO1")
    assert r.action == "accept" and r.header("X-Spam-Status")
    # every line is a log line: ours with its time, or libmilter's own (copied from syslog(3),
    # which writes no time there: "milter claimed not to reply in state 3", as pymilter
    # answered a HELO it declared no-reply)
    stray = [line for line in m.log.splitlines()
             if line and not re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line)
             and not line.startswith(f"spambridge[{m.proc.pid}]: spambridge: ")]
    assert not stray, stray
    assert "not UTF-8" in m.log and r"mail\xff\xfe.example" in m.log, m.log


def test_a_client_whose_host_name_is_not_utf8_is_still_known_by_its_address(
        start_milter: Start) -> None:
    """pymilter cannot make text of a reverse-DNS name that is not UTF-8 and skips the whole
    connect stage: the client was then taken for this host, 127.0.0.1, in trusted_networks
    and in the Received line spamd reads (which SpamAssassin trusts, so no RBL checked the
    real client). Its address comes from the macro `_` instead."""
    m = start_milter({"milter": {"trusted_networks": ["203.0.113.0/24"]}})
    for addr, qid in (("203.0.113.7", "8BITNAME1"), ("198.51.100.7", "8BITNAME2")):
        name = b"m\xe9il.example.net"
        with MilterClient(m.socket_path) as c:
            c.connect(hostname=name, addr=addr)  # and `_` = "m\xe9il.example.net [ADDR]"
            c.helo()
            r = c.send(message(), connected=True, queue_id=qid)
        assert r.action == "accept"
    assert re.search(r"8BITNAME1: .* reason=trusted", m.log), m.log
    assert not re.search(r"8BITNAME2: .* reason=trusted", m.log), m.log  # only its own net
    assert "not UTF-8" in m.log and r"m\xe9il.example.net" in m.log, m.log


def test_libmilters_own_errors_reach_the_milters_log(start_milter: Start) -> None:
    """libmilter logs its own errors (here: an MTA whose option negotiation is cut short) with
    syslog(3) and no openlog(): they went out as `python: ...` under facility user, outside
    mail.log and `journalctl -t spambridge`, and, with no syslog daemon, nowhere at all. They
    now carry the milter's name and pid, and are copied to its stderr unless that is the
    journal."""
    m = start_milter()
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(m.socket_path)
        s.sendall(struct.pack(">I", 4) + b"O\0\0\0")  # SMFIC_OPTNEG with 3 bytes, not 12
        s.settimeout(5)
        assert s.recv(100) == b""  # libmilter hangs up
    wait_until(lambda: "st_optionneg" in m.log, 10, "libmilter's complaint in the log")
    line = next(ln for ln in m.log.splitlines() if "st_optionneg" in ln)
    assert line == f"spambridge[{m.proc.pid}]: spambridge: st_optionneg[0]: len too short 3 < 12"


def test_a_queue_id_sent_only_at_end_of_message_names_the_message(start_milter: Start) -> None:
    """An MTA may send the queue id (macro i) only with the end of the message (its
    end-of-header macro list emptied): the decision line still names the message by it, so
    that one grep finds the MTA's lines and ours, not NOQUEUE."""
    m = start_milter()  # the default engine; an untrained database is fine here
    headers, body = split_message(message())
    with MilterClient(m.socket_path) as c:
        c.connect()
        c.helo()
        c.mail("<sender@example.net>", None)
        c.rcpt("<user@test.example>")
        c.data("")
        for name, value in headers:
            c.header(name, value)
        c.eoh("")
        c.body(body)
        assert c.eom("4EOMONLY1").action == "accept"
    wait_until(lambda: "4EOMONLY1: from=<sender@example.net>" in m.log, 5,
               "the decision line named by the end-of-message queue id")
