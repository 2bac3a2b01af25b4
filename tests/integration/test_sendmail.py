"""A real Sendmail (8.17, Debian's binary, see tests/sendmail_instance.py) with
contrib/sendmail/spambridge.mc added as an admin adds it, in front of the real
`spambridge run`: what contrib/sendmail/README promises."""

from __future__ import annotations

import re
import smtplib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import GTUBE, RunningMilter, Spamd, free_port, gtube_mail, message, wait_until
from sendmail_instance import HOSTNAME, NextHop, SendmailInstance, destroy, make_instance
from spamdfakes import SwitchableSpamd, spamd_reply

pytestmark = pytest.mark.sendmail

Start = Callable[..., RunningMilter]
QUEUE_ID = r"[0-9A-Za-z]{14}"  # Sendmail's: 6AQN5S8j021796


@pytest.fixture(scope="module")
def sendmail(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SendmailInstance]:
    sock = tmp_path_factory.mktemp("sendmail-milter") / "spambridge.sock"
    sm = make_instance(f"local:{sock}")
    yield sm
    destroy(sm)


def milter_socket(sm: SendmailInstance) -> str:
    """spambridge.toml's spelling of the S= Sendmail uses."""
    return "unix:" + sm.milter_socket.removeprefix("local:")


def spamd_config(sm: SendmailInstance, spamd: Spamd, **policy: object
                 ) -> dict[str, dict[str, object]]:
    return {"milter": {"socket": milter_socket(sm), "engine": "spamd"},
            "spamd": {"host": spamd.host, "port": spamd.port},
            "policy": {"tag_at": 5.0, "reject_at": 15.0, **policy}}


def log_line(m: RunningMilter, qid: str) -> str:
    return next(x for x in m.log.splitlines() if f" {qid}: " in x)


@pytest.mark.spamd
def test_spam_is_refused_at_end_of_data_and_ham_delivered_with_headers(
        sendmail: SendmailInstance, spamd: Spamd, start_milter: Start) -> None:
    m = start_milter(spamd_config(sendmail, spamd))
    with pytest.raises(smtplib.SMTPDataError) as exc:
        sendmail.send(gtube_mail("GTUBE over SMTP"))
    assert (exc.value.smtp_code, exc.value.smtp_error) == (550, b"5.7.1 Message rejected as spam")
    # the log line names Sendmail's queue id (macro i), not NOQUEUE
    assert re.search(rf"INFO {QUEUE_ID}: from=<alice@example.net> .*action=reject", m.log), m.log

    forged = b"X-Spam-Flag: YES\nX-Spam-Status: Yes, score=99.0\nX-Spam-Flag: YES\n"
    # between To and Subject, not last (where any placement of ours would look right)
    qid = sendmail.send(message(subject="lunch").replace(b"Subject:", forged + b"Subject:", 1))
    got = sendmail.wait_delivered(f"id {qid}".encode())
    assert got.all("X-Spam-Flag") == []  # the sender's forged fields are gone
    # ours together at the end, as Postfix puts them: Sendmail's addheader put each where a
    # removed forged field of its name had stood
    names = list(got.msg.keys())
    ours = [n for n in names if n.lower().startswith("x-spam-")]
    assert names[-len(ours):] == ours, names
    [status] = got.all("X-Spam-Status")
    assert status.startswith("No, score=") and "engine=spamd" in status, status
    [checker] = got.all("X-Spam-Checker-Version")
    assert checker.startswith("spambridge ")
    # and names the MTA (macro j) as the Received line Sendmail wrote does ("by HOST"), the
    # line `check` reads on a delivered copy
    host = checker.partition(" on ")[2]
    assert host and re.search(rf"\bby {re.escape(host)} \(", got.all("Received")[0]), (
        checker, got.all("Received"))
    # SpamAssassin parsed the Received line spambridge wrote from Sendmail's macros (Sendmail
    # shows milters no Received line of its own): a relay from 127.0.0.1, trusted
    assert "ALL_TRUSTED" in status and "UNPARSEABLE_RELAY" not in status, status
    assert "NO_RELAYS" not in status, status
    assert "action=accept reason=ham" in log_line(m, qid)


@pytest.mark.spamd
def test_subject_tag_in_tag_only_mode(sendmail: SendmailInstance, spamd: Spamd,
                                      start_milter: Start) -> None:
    m = start_milter(spamd_config(sendmail, spamd, tag_only=True, subject_tag="[SPAM]"))
    qid = sendmail.send(gtube_mail("cheap pills"))
    got = sendmail.wait_delivered(f"id {qid}".encode())
    assert got.all("Subject") == ["[SPAM] cheap pills"]
    assert got.all("X-Spam-Flag") == ["YES"]
    assert "action=tag would=reject" in log_line(m, qid)


@pytest.mark.spamd
def test_mail_from_sendmail_1_is_tagged_never_lost(
        sendmail: SendmailInstance, spamd: Spamd, start_milter: Start) -> None:
    """sendmail(1) hands mail to Sendmail's submission program (submit.cf), which relays it
    over SMTP to the daemon on 127.0.0.1, greeting with the host's name. Refused there, the
    submission program bounced it to its sender; the bounce carries the spam and was refused
    too, and the cron output ended as a "lost" queue file, delivered to nobody. It is tagged
    instead, while the same spam from an SMTP client is still refused."""
    m = start_milter(spamd_config(sendmail, spamd))
    cron = (b"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@mx> logwatch\n\n"
            b"logwatch saw this in a mail log:\n" + GTUBE.encode() + b"\n")
    r = sendmail.submit(cron, "-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root")  # as cron
    # before: exit 69 and ['Qf…', 'df…'] in the submission program's queue
    assert (r.returncode, sendmail.client_queued()) == (0, []), r.stderr
    got = sendmail.wait_delivered(b"Subject: Cron <root@mx> logwatch")
    assert got.all("X-Spam-Flag") == ["YES"]
    line = next(x for x in m.log.splitlines() if "from=<root@" + HOSTNAME in x)
    assert "action=tag would=reject" in line and "mode=local" in line, line

    # an SMTP client on the same host greeting with its name (swaks on the MX) is told 550
    with pytest.raises(smtplib.SMTPDataError) as exc:
        sendmail.send(gtube_mail("the same over SMTP"), helo=HOSTNAME)
    assert exc.value.smtp_code == 550


def test_milter_down_tempfails_with_the_contrib_flags(sendmail: SendmailInstance,
                                                      start_milter: Start) -> None:
    """F=T, as contrib/sendmail/spambridge.mc sets: 4xx while spambridge is not there."""
    m = start_milter({"milter": {"socket": milter_socket(sendmail), "engine": "bayes"}})
    qid = sendmail.send(message(subject="while the milter runs"))
    assert sendmail.wait_delivered(f"id {qid}".encode()).all("X-Spam-Status")
    assert m.stop() == 0
    with pytest.raises(smtplib.SMTPResponseException) as exc:
        sendmail.send(message(subject="while the milter is stopped"))
    assert exc.value.smtp_code == 451


def test_a_scan_that_takes_the_whole_cap_gets_its_own_answer(
        sendmail: SendmailInstance, start_milter: Start, fake: SwitchableSpamd) -> None:
    """Sendmail waits T=R for the end-of-message reply, and its default R (10 s) is
    spambridge's default scan_timeout: with the contrib T= values, a spamd that never answers
    gets on_timeout's answer at the 10 s cap, not Sendmail's 451."""
    fake.mode = "hang"
    m = start_milter({"milter": {"socket": milter_socket(sendmail), "engine": "spamd"},
                      "spamd": {"host": "127.0.0.1", "port": fake.port},
                      "policy": {"on_timeout": "accept"}})
    qid = sendmail.send(message(subject="spamd hangs"))
    got = sendmail.wait_delivered(f"id {qid}".encode())
    assert got.all("X-Spam-Status") == ["No, unchecked=timeout"]
    assert "reason=timeout" in log_line(m, qid)


def test_inet_socket_spelling(start_milter: Start) -> None:
    """S=inet:PORT@127.0.0.1 in Sendmail, the same string in spambridge.toml."""
    spec = f"inet:{free_port()}@127.0.0.1"
    m = start_milter({"milter": {"socket": spec, "engine": "bayes"}}, wait=False)
    sm = make_instance(spec)
    try:
        wait_until(lambda: "listening on" in m.log, 30, "the milter")
        qid = sm.send(message(subject="over TCP"))
        got = sm.wait_delivered(f"id {qid}".encode())
        assert got.all("X-Spam-Status") == ["No, unchecked=unavailable"]  # untrained Bayes
        assert f" {qid}: " in m.log
    finally:
        destroy(sm)


def test_a_tagged_subject_is_relayed_intact_past_the_esmtp_mailers_990_characters(
        start_milter: Start) -> None:
    """Sendmail's SMTP mailers (smtp, esmtp, smtp8, dsmtp: `L=990` in the stock cf) break a
    line over 990 characters, headers too: its first 989, `!`, a line end, a blank and the
    rest; the local mailer has no L= and does not. A Subject whose header line is 986 octets
    is 993 tagged: within RFC 5322's 998, and the hop after a Sendmail relay got it broken,
    the user reading `…win b! ig w…`. The tagged Subject is folded within 990."""
    fake = SwitchableSpamd(reply=spamd_reply(score=7.0))
    try:
        m = start_milter({"milter": {"engine": "spamd"},
                          "spamd": {"host": "127.0.0.1", "port": fake.port},
                          "policy": {"tag_at": 5.0, "reject_at": 15.0, "subject_tag": "[SPAM]"}})
        sm = make_instance(f"local:{m.socket_path}", relay=True)
        try:
            subject = ("win big " * 123)[:977]  # `Subject: ` and these: 986 octets
            qid = sm.send(message(subject=subject), rcpt="bob@elsewhere.example")
            got = sm.wait_relayed(f"id {qid}".encode())
        finally:
            destroy(sm)
        assert got.all("Subject") == ["[SPAM] " + subject]
        assert max(map(len, got.raw.split(b"\r\n"))) <= 990
        assert "action=tag" in log_line(m, qid)
    finally:
        fake.close()


def test_the_next_hop_takes_a_message_while_another_connection_is_open(tmp_path: Path) -> None:
    """Sendmail relays each message from a process of its own, so the next hop must serve a
    connection while another is open: served one at a time, a second waited for the first
    to end (30 s idle), and of 72 messages relayed at once 5 had not arrived 300 s later."""
    hop = NextHop(tmp_path / "relayed")
    try:
        with socket.create_connection(("127.0.0.1", hop.port), timeout=10) as idle:
            assert idle.recv(100).startswith(b"220 ")
            # before: no greeting for this one while `idle` stays open (SMTPServerDisconnected)
            with smtplib.SMTP("127.0.0.1", hop.port, timeout=10) as s:
                s.sendmail("alice@example.net", ["bob@elsewhere.example"],
                           b"Subject: second\r\n\r\nbody\r\n")
        [kept] = hop.directory.glob("*.eml")
        assert kept.read_bytes() == b"Subject: second\r\n\r\nbody\r\n"
    finally:
        hop.close()
