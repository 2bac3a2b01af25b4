"""How aiospamc's failures map onto the policy's failure classes, and what an admin reads about
them (a fake spamd on 127.0.0.1 for the hang a real one can't be made to do)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from aiospamc.exceptions import AIOSpamcConnectionFailed, BadResponse, ClientTimeoutException
from aiospamc.responses import (
    ServerTimeoutException,
    TemporaryFailureException,
    UnavailableException,
)
from harness import free_port
from spamdfakes import SwitchableSpamd, spamd_reply

from spambridge.config import SpamdConfig
from spambridge.scanners.spamd import SpamdScanner, classify_exception
from spambridge.verdict import ErrorKind, ScanError


@pytest.mark.parametrize(("exc", "kind"), [
    # no connection within connect_timeout (a host that is off, a firewall that drops):
    # down, as a refused connection is — not a slow scan
    (ClientTimeoutException(), ErrorKind.UNAVAILABLE),
    (AIOSpamcConnectionFailed(), ErrorKind.UNAVAILABLE),
    (ConnectionResetError(), ErrorKind.UNAVAILABLE),
    (UnavailableException("down", None), ErrorKind.UNAVAILABLE),
    (TemporaryFailureException("busy", None), ErrorKind.UNAVAILABLE),
    (TimeoutError(), ErrorKind.TIMEOUT),  # the total timeout: spamd took too long
    (ServerTimeoutException("timeout", None), ErrorKind.TIMEOUT),
    (BadResponse(b"a reply of more than 32768 bytes"), ErrorKind.ERROR),
    # any other socket failure (a unix socket spamd's group may not reach): not there for us
    (PermissionError(13, "Permission denied"), ErrorKind.UNAVAILABLE),
])
def test_failure_classes(exc: BaseException, kind: ErrorKind) -> None:
    assert classify_exception(exc) is kind


def _error_of(scanner: SpamdScanner) -> ScanError:
    with pytest.raises(ScanError) as e:
        asyncio.run(scanner.request("SYMBOLS", b"Subject: x\r\n\r\nhello\r\n"))
    return e.value


def test_a_hung_spamd_is_named_with_the_time_it_had() -> None:
    fake = SwitchableSpamd("hang")
    try:
        e = _error_of(SpamdScanner(SpamdConfig(host="127.0.0.1", port=fake.port), 0.3))
    finally:
        fake.close()
    assert e.kind is ErrorKind.TIMEOUT
    assert str(e) == f"spamd timeout: no answer from 127.0.0.1:{fake.port} within 0.3s"


def test_a_missing_unix_socket_is_named(tmp_path: Path) -> None:
    sock = tmp_path / "spamd.sock"
    e = _error_of(SpamdScanner(SpamdConfig(socket=str(sock)), 1.0))
    assert e.kind is ErrorKind.UNAVAILABLE
    assert str(e).startswith(f"spamd unavailable: {sock}: ")


def test_no_connection_in_time_names_the_address_and_the_limit() -> None:
    """aiospamc's connect timeout carries no text at all (a black-holed host)."""
    scanner = SpamdScanner(SpamdConfig(host="::1", port=783, connect_timeout=2.0), 10.0)
    assert scanner.describe(ClientTimeoutException()) == (
        "no connection to [::1]:783 within connect_timeout 2s")


def test_train_stops_at_a_spamd_that_hangs(tmp_path: Path) -> None:
    """A spamd that takes the message and never answers would cost every message of a folder
    the whole timeout: TELL stops at the first, and says the rest was not sent."""
    import io

    from spambridge import train
    from spambridge.config import Config, MilterConfig

    for n in range(3):
        (tmp_path / f"{n}.eml").write_bytes(
            f"From: a@example.org\nSubject: report {n}\n\nbody {n}\n".encode())
    fake = SwitchableSpamd("hang")
    try:
        cfg = Config(milter=MilterConfig(scan_timeout=0.3),
                     spamd=SpamdConfig(host="127.0.0.1", port=fake.port))
        out, err = io.StringIO(), io.StringIO()
        code = train.run_spamd(cfg, "ham", [str(tmp_path)], out=out, err=err)
    finally:
        fake.close()
    assert code == 1 and err.getvalue().count("timeout") == 1
    assert "Learned 0 of 1 messages as ham (1 spamd error, stopped there" in out.getvalue()


def _scan(reply: bytes) -> object:
    """What the milter gets from one SYMBOLS request answered with `reply`: a ScoreResult, or
    the ScanError."""
    from spambridge.message import Envelope

    fake = SwitchableSpamd("good", reply=reply)
    try:
        scanner = SpamdScanner(SpamdConfig(host="127.0.0.1", port=fake.port), 5.0)
        try:
            return asyncio.run(scanner.scan(b"Subject: x\r\n\r\nhello\r\n", Envelope()))
        except ScanError as e:
            return e
    finally:
        fake.close()


def test_the_rule_names_are_read_whatever_the_line_ends() -> None:
    """spamd ends the SYMBOLS list with CRLF (some versions), or lists one per line: the
    X-Spam-Status tests= list holds the rule names and nothing empty or with a CR."""
    for symbols in (b"SYM_A,SYM_B\r\n", b"SYM_A\r\nSYM_B", b",SYM_A,,SYM_B,"):
        result = _scan(spamd_reply(2.5, 5.0, symbols))
        assert not isinstance(result, ScanError)
        assert result.score == 2.5 and result.tests == ("SYM_A", "SYM_B"), symbols


def test_scores_beyond_any_spamd_rule_are_bounded_both_ways() -> None:
    """A broken or hostile spamd's -1e6 must not write a header a later filter chokes on, nor
    outweigh every other engine; spamd's own (whitelist_from -100) pass through."""
    for score, want in ((-1e6, -10_000.0), (1e6, 10_000.0), (-100.0, -100.0)):
        result = _scan(spamd_reply(score, 5.0))
        assert not isinstance(result, ScanError)
        assert result.score == want


def test_a_reply_without_a_finite_threshold_is_an_error() -> None:
    """"Spam: False ; 1.0 / inf" tells nothing usable: an error, as a missing header is."""
    for reply in (spamd_reply(1.0, float("inf"), spam=False), spamd_reply(float("nan"), 5.0)):
        result = _scan(reply)
        assert isinstance(result, ScanError) and result.kind is ErrorKind.ERROR
        assert "reply without a usable Spam header" in str(result)


def test_a_reply_without_a_usable_spam_header_names_the_server_that_sent_it() -> None:
    """In a pool nobody could tell which spamd sent it: the one that answered is named (the
    first here does not connect, so the second answers)."""
    from spambridge.message import Envelope

    dead = free_port()
    for reply in (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n",
                  spamd_reply(1.0, float("inf"), spam=False), spamd_reply(float("nan"), 5.0)):
        fake = SwitchableSpamd("good", reply=reply)
        try:
            cfg = SpamdConfig(servers=(("127.0.0.1", dead), ("127.0.0.1", fake.port)))
            with pytest.raises(ScanError) as e:
                asyncio.run(SpamdScanner(cfg, 5.0).scan(b"Subject: x\r\n\r\nhi\r\n", Envelope()))
        finally:
            fake.close()
        assert e.value.kind is ErrorKind.ERROR
        assert str(e.value) == (
            f"spamd error: 127.0.0.1:{fake.port}: reply without a usable Spam header"), reply


def test_spamd_giving_up_itself_is_not_told_as_our_time_running_out() -> None:
    """spamd's own limit (--timeout-child, --timeout-tcp) answers status 79 at once: it was
    told as "no answer within 3s" with spamd's reason dropped. Still a timeout."""
    fake = SwitchableSpamd("good", reply=b"SPAMD/1.0 79 Timeout: (30 second timeout while "
                                         b"trying to CHECK)\r\n\r\n")
    try:
        e = _error_of(SpamdScanner(SpamdConfig(host="127.0.0.1", port=fake.port), 3.0))
    finally:
        fake.close()
    assert e.kind is ErrorKind.TIMEOUT
    assert str(e) == (f"spamd timeout: 127.0.0.1:{fake.port}: spamd gave up on the message "
                      "itself, at its own time limit (spamd --timeout-child, --timeout-tcp): "
                      "Timeout: (30 second timeout while trying to CHECK)")


def test_replies_are_read_up_to_32_kilobytes() -> None:
    """A reply over the cap is an error (a port that is not spamd, a flood); one within it,
    to its last byte, a long rule list, is read."""
    head = len(spamd_reply(1.0, 5.0, b""))
    within = _scan(spamd_reply(1.0, 5.0, b"R" * (32 * 1024 - head - 100 - 8)))
    assert not isinstance(within, ScanError)
    body = b"R" * (32 * 1024 - head - 4)  # (its Content-length has 4 digits more than 0)
    assert len(spamd_reply(1.0, 5.0, body)) == 32 * 1024
    exact = _scan(spamd_reply(1.0, 5.0, body))  # 32768 bytes: still read
    assert not isinstance(exact, ScanError), exact
    over = _scan(spamd_reply(1.0, 5.0, b"R" * (32 * 1024 + 1)))
    assert isinstance(over, ScanError) and over.kind is ErrorKind.ERROR
    assert "a reply of more than 32768 bytes" in str(over)


def test_spamd_user_per_recipient_only_for_one_plain_recipient() -> None:
    """per_recipient_user asks spamd for the recipient's own settings only when there is
    exactly one, and it is a plain address: else the configured user."""
    from spambridge.message import Envelope

    scanner = SpamdScanner(SpamdConfig(user="filter", per_recipient_user=True), 1.0)
    assert scanner.user_for(Envelope(recipients=["<bob@example.org>"])) == "bob@example.org"
    assert scanner.user_for(Envelope(recipients=["<a@example.org>", "<b@example.org>"])) \
        == "filter"
    assert scanner.user_for(Envelope(recipients=["<b ob@example.org>"])) == "filter"
    assert scanner.user_for(Envelope(recipients=["<b\x7fob@example.org>"])) == "filter"


def test_spamd_user_per_recipient_local_part_as_spamass_milter_u() -> None:
    """"local-part": the single recipient's local part in lower case, as spamass-milter -u
    passed it to spamc (a Unix user name); two recipients, or a local part no Unix user can
    have (quoted, with a space), get the configured user."""
    from spambridge.message import Envelope

    scanner = SpamdScanner(SpamdConfig(user="filter", per_recipient_user="local-part"), 1.0)
    assert scanner.user_for(Envelope(recipients=["<Bob.Smith@Example.ORG>"])) == "bob.smith"
    assert scanner.user_for(Envelope(recipients=["<postmaster>"])) == "postmaster"
    assert scanner.user_for(Envelope(recipients=["<a@example.org>", "<b@example.org>"])) \
        == "filter"
    assert scanner.user_for(Envelope(recipients=['<"b ob"@example.org>'])) == "filter"
    assert scanner.user_for(Envelope(recipients=['<"bob"@example.org>'])) == "filter"
    assert scanner.user_for(Envelope(recipients=["<@example.org>"])) == "filter"


def test_an_error_text_is_one_short_line() -> None:
    """The decision line and the SMTP reply carry it: a peer's multi-line essay is cut to 200
    characters on one line."""
    from spambridge.scanners.spamd import _describe

    text = _describe(BadResponse(("x" * 100 + "\r\n") * 10))
    assert len(text) == 200 and "\n" not in text and "\r" not in text


def test_a_ca_file_that_is_a_fifo_is_named_as_no_file_of_certificates(tmp_path: Path) -> None:
    """A ca_file that is there but is neither a file nor a directory (a FIFO, a device):
    said so, not "no such file" for a path the admin can see with ls."""
    import os

    from spambridge.scanners.spamd import CaFileError, tls_context

    fifo = tmp_path / "ca.pem"
    os.mkfifo(fifo)
    with pytest.raises(CaFileError) as e:
        tls_context(str(fifo))
    assert str(e.value) == f"{fifo}: not a file of PEM certificates or a directory"


def _connections_to(port: int) -> int:
    """This process's TCP sockets whose peer is 127.0.0.1:`port` (the client side only)."""
    import os

    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    peer = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return len([r for r in rows if r[2] == peer and r[9] in inodes])


def test_a_scan_cut_at_the_cap_closes_its_connection_at_once() -> None:
    """A hung spamd: the cap cancels the request, and its connection is closed then (spamd's
    child sees the client gone), not left registered on the milter's long-lived loop, one more
    open socket with every hung scan, until the loop ends."""
    from milterload import collector_paused

    from spambridge.message import Envelope

    fake = SwitchableSpamd("hang")
    scanner = SpamdScanner(SpamdConfig(host="127.0.0.1", port=fake.port), 5.0)

    async def go() -> int:
        for _ in range(3):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.3):
                    await scanner.scan(b"Subject: x\r\n\r\nhello\r\n", Envelope())
        await asyncio.sleep(0.1)
        return _connections_to(fake.port)

    try:
        with collector_paused():
            assert asyncio.run(go()) == 0
    finally:
        fake.close()
