"""SMTP sessions shaped as real clients shape them — several messages per connection, RSET,
refused recipients, pipelining, BDAT, clients that vanish mid-DATA — through a real Postfix in
front of the real milter. Each message must get its own verdict, its own headers and its own
log line with Postfix's queue id, whatever came before it on the connection."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import GTUBE, RunningMilter, Spamd, log_line, message
from postfix_instance import Delivered, PostfixInstance
from spamdfakes import SwitchableSpamd

pytestmark = pytest.mark.postfix

Start = Callable[..., RunningMilter]


def spamd_config(pf: PostfixInstance, host: str, port: int,
                 **policy: object) -> dict[str, dict[str, object]]:
    return {"milter": {"socket": f"unix:{pf.milter_socket}", "engine": "spamd"},
            "spamd": {"host": host, "port": port},
            "policy": {"tag_at": 5.0, "reject_at": 15.0, **policy}}


def queued_id(reply: bytes | str) -> str:
    text = reply.decode() if isinstance(reply, bytes) else reply
    found = re.search(r"queued as ([0-9A-F]+)", text)
    assert found, text
    return found[1]


def only_our_headers(got: Delivered, spam: bool) -> None:
    """One set of our X-Spam-* fields, the verdict of this message and nothing forged."""
    assert got.all("X-Spam-Flag") == (["YES"] if spam else [])
    [status] = got.all("X-Spam-Status")
    assert status.startswith("Yes, score=" if spam else "No, score="), status
    assert ("GTUBE" in status) is spam
    assert len(got.all("X-Spam-Score")) == len(got.all("X-Spam-Level")) == 1
    assert [v.split()[0] for v in got.all("X-Spam-Checker-Version")] == ["spambridge"]
    assert b"forged" not in got.raw


def crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@pytest.mark.spamd
def test_one_session_of_ham_spam_rset_and_refused_recipients(
        postfix: PostfixInstance, spamd: Spamd, start_milter: Start) -> None:
    """One connection carries ham, GTUBE (refused), a RSET, a transaction dropped before
    DATA, a refused recipient next to a good one, and ham with forged X-Spam-* fields: the
    spam is refused and the client carries on; every delivered message has exactly its own
    verdict; each log line has that message's queue id and the recipients Postfix took."""
    m = start_milter(spamd_config(postfix, spamd.host, spamd.port))
    forged = "X-Spam-Flag: YES\nX-Spam-Status: Yes, score=99.0 forged\nX-Spam-Level: ****\n"
    with postfix.smtp() as s:
        s.mail("first@example.net")
        s.rcpt("bob@test.example")
        s.rcpt("carol@test.example")
        first = queued_id(s.data(message(subject="ham before spam"))[1])

        s.mail("spammer@example.net")
        s.rcpt("bob@test.example")
        code, text = s.data(message(subject="GTUBE mid-session", body=f"x\n{GTUBE}\n"))
        assert (code, text) == (550, b"5.7.1 Message rejected as spam")
        assert s.rset()[0] == 250

        s.mail("dropped@example.net")
        s.rcpt("bob@test.example")
        assert s.rset()[0] == 250  # before DATA: no message, no line

        s.mail("third@example.net")
        assert s.rcpt("bob@test.example@elsewhere")[0] == 550  # Postfix refuses this one
        s.rcpt("bob@test.example")
        third = queued_id(s.data(message(subject="ham after spam"))[1])

        s.mail("fourth@example.net")
        s.rcpt("bob@test.example")
        fourth = queued_id(s.data(message(subject="ham with fake fields", extra_headers=forged))[1])

    for qid in (first, third, fourth):
        only_our_headers(postfix.wait_delivered(qid), spam=False)
    assert postfix.wait_delivered(third).all("Subject") == ["ham after spam"]
    assert "from=<first@example.net> rcpts=2 " in log_line(m, first)
    assert "from=<third@example.net> rcpts=1 " in log_line(m, third)
    assert "from=<fourth@example.net> rcpts=1 " in log_line(m, fourth)
    [rejected] = re.findall(r"\]: ([0-9A-F]+): milter-reject: END-OF-MESSAGE .*"
                            r"from=<spammer@example\.net>", postfix.log)
    assert "action=reject" in log_line(m, rejected)
    assert "dropped@" not in m.log
    assert len([x for x in m.log.splitlines() if " rcpts=" in x]) == 4


@pytest.mark.spamd
def test_a_pipelined_session_with_bdat_tags_only_the_spam(
        postfix: PostfixInstance, spamd: Spamd, start_milter: Start) -> None:
    """After EHLO, one write: a bounce (null sender, 8BITMIME) in one BDAT chunk, GTUBE in
    two, ham by DATA to 100 recipients. In tag-only mode with a Subject tag only the GTUBE
    message is flagged and tagged; the messages after it are not."""
    m = start_milter(spamd_config(postfix, spamd.host, spamd.port, tag_only=True,
                                  subject_tag="[SPAM]"))
    bounce = crlf(message(subject="bounce"))
    spam = crlf(message(subject="chunked spam", body=f"x\n{GTUBE}\n"))
    half = len(spam) // 2
    many = [f"r{i}@test.example" for i in range(100)]
    pipelined = (
        b"MAIL FROM:<> BODY=8BITMIME\r\nRCPT TO:<bob@test.example>\r\n"
        + b"BDAT %d LAST\r\n" % len(bounce) + bounce
        + b"MAIL FROM:<spammer@example.net>\r\nRCPT TO:<bob@test.example>\r\n"
        + b"BDAT %d\r\n" % half + spam[:half] + b"BDAT %d LAST\r\n" % (len(spam) - half)
        + spam[half:]
        + b"MAIL FROM:<list@example.net>\r\n"
        + b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in many)
        + b"DATA\r\n" + crlf(message(subject="ham to many")) + b".\r\nQUIT\r\n")
    with socket.create_connection(("127.0.0.1", postfix.port), timeout=60) as sock:
        f = sock.makefile("rb")
        f.readline()
        sock.sendall(b"EHLO client.example.net\r\n")
        ehlo = [f.readline()]
        while ehlo[-1][3:4] == b"-":
            ehlo.append(f.readline())
        assert b"250 CHUNKING\r\n" in ehlo
        sock.sendall(pipelined)
        replies = [line.decode().rstrip() for line in f]  # until Postfix closes after QUIT
    queued = [queued_id(r) for r in replies if "queued as" in r]
    assert len(queued) == 3 and replies[-1].startswith("221"), replies
    assert not [r for r in replies if not r.startswith(("2", "354"))], replies

    got = [postfix.wait_delivered(q) for q in queued]
    only_our_headers(got[0], spam=False)
    only_our_headers(got[1], spam=True)
    only_our_headers(got[2], spam=False)
    assert [g.all("Subject") for g in got] == [["bounce"], ["[SPAM] chunked spam"],
                                               ["ham to many"]]
    assert "from=<> rcpts=1 " in log_line(m, queued[0])
    assert "action=tag would=reject" in log_line(m, queued[1])
    assert "from=<list@example.net> rcpts=100 " in log_line(m, queued[2])


def fd_targets(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return out


def test_clients_that_vanish_mid_data_leave_nothing_behind(
        postfix: PostfixInstance, fake: SwitchableSpamd, start_milter: Start,
        tmp_path: Path) -> None:
    """30 clients hang up in the middle of DATA — after the header, or halfway through a body
    larger than spool_memory. No spool file stays open, descriptors and threads do not grow
    with the number of such clients, and the next message is still filtered: Postfix meets no
    milter timeout on it."""
    spool = tmp_path / "spool"
    spool.mkdir()
    cfg = spamd_config(postfix, "127.0.0.1", fake.port)
    cfg["milter"].update(spool_dir=str(spool), spool_memory=4096)
    m = start_milter(cfg)
    pid = m.proc.pid
    big = crlf(message(subject="big", body="lorem ipsum dolor sit amet\n" * 20_000))
    end_of_header = big.index(b"\r\n\r\n") + 2

    def vanish(n: int) -> None:
        for i in range(n):
            with socket.create_connection(("127.0.0.1", postfix.port), timeout=30) as sock:
                f = sock.makefile("rb")
                f.readline()
                sock.sendall(b"EHLO client.example.net\r\n")
                while f.readline()[3:4] == b"-":
                    pass
                sock.sendall(b"MAIL FROM:<gone@example.net>\r\n"
                             b"RCPT TO:<bob@test.example>\r\nDATA\r\n")
                assert [f.readline()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
                sock.sendall(big[:end_of_header] if i % 2 else big[: len(big) // 2])

    def counts() -> tuple[int, int]:
        return len(fd_targets(pid)), len(os.listdir(f"/proc/{pid}/task"))

    def settled() -> tuple[int, int]:
        """The counts once they hold still for half a second (within 10 s): a session whose
        client vanished ends on libmilter's and Postfix's own time, under load later."""
        last = counts()
        for _ in range(20):
            time.sleep(0.5)
            now, last = last, counts()
            if now == last:
                break
        return last

    postfix.wait_delivered(postfix.send(message(subject="before")))
    vanish(10)
    fds0, threads0 = settled()
    vanish(20)
    since = len(postfix.log)
    qid = postfix.send(message(subject="after the vanished clients"))
    got = postfix.wait_delivered(qid)
    # a milter still tied up by the vanished sessions shows in Postfix's log: a milter warning
    # (a connect or reply timeout), then default_action=accept without our header
    assert "warning: milter" not in postfix.log[since:]
    assert got.all("X-Spam-Status")[0].startswith("No, score=1.5")
    spilled = postfix.wait_delivered(postfix.send(big))  # the spool itself still works
    assert spilled.all("X-Spam-Status")[0].startswith("No, score=1.5")
    assert settled() == (fds0, threads0)
    assert not [t for t in fd_targets(pid) if t.startswith(str(spool))]
    assert os.listdir(spool) == []
    assert "gone@" not in m.log and "Traceback" not in m.log
