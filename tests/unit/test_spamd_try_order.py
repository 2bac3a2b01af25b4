"""[spamd] servers: which server a message tries, in which order, after which failures and at
which time (try_order, a pure function), and what the scanner does with a pool of fake spamd
servers on 127.0.0.1: the next server only when the connection itself failed, never the
message sent twice."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from aiospamc.exceptions import ClientTimeoutException
from harness import free_port
from spamdfakes import BlackHole, SwitchableSpamd, spamd_reply
from stalls import Stalled, Timed, outcome

from spambridge import defaults
from spambridge.config import SpamdConfig
from spambridge.scanners.fallback import FallbackScanner
from spambridge.scanners.spamd import SpamdScanner, try_order
from spambridge.verdict import ErrorKind, ScanError

MSG = b"Subject: x\r\n\r\nhello\r\n"
RETRY = defaults.SPAMD_RETRY_AFTER


@pytest.mark.parametrize(("retry_at", "now", "order"), [
    ([0.0, 0.0, 0.0], 100.0, [0, 1, 2]),  # as listed
    ([100.0 + RETRY, 0.0, 0.0], 100.0, [1, 2, 0]),  # the first failed just now: last
    ([0.0, 120.0, 0.0], 100.0, [0, 2, 1]),
    ([100.0, 0.0, 0.0], 100.0, [0, 1, 2]),  # its time is up: back in its place
    ([90.0, 0.0], 100.0, [0, 1]),
    ([110.0, 120.0, 0.0], 100.0, [2, 0, 1]),  # two failed: still tried, in listed order
    ([110.0, 120.0], 100.0, [0, 1]),  # all failed: all tried, as listed
    ([0.0], 100.0, [0]),
])
def test_try_order(retry_at: list[float], now: float, order: list[int]) -> None:
    assert try_order(retry_at, now) == order


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool(*ports: int, clock: Clock | None = None, total: float = 5.0) -> SpamdScanner:
    cfg = SpamdConfig(servers=tuple(("127.0.0.1", p) for p in ports), connect_timeout=0.5)
    return SpamdScanner(cfg, total, clock or Clock())


def ask(scanner: SpamdScanner, cap: float = 5.0) -> float:
    """The score one SYMBOLS request gets, within `cap` (as the pipeline caps a scan).

    The caller's timeout is set later than `cap`: a pool ends its scan 50 ms before the cap
    so the log names the server, and that end is what these tests check; both coming due at
    once (a loop held up) is test_a_loop_held_up_at_the_pools_end_still_says_which_server's
    subject. A scanner overrunning the cap still fails the test (TimeoutError, not
    ScanError)."""

    async def go() -> float:
        async with asyncio.timeout(cap + 0.5):
            resp = await scanner.request("SYMBOLS", MSG)
        assert resp.headers.spam is not None
        return float(resp.headers.spam.score)

    return asyncio.run(go())


def test_a_refused_first_server_goes_last_for_its_time(
        caplog: pytest.LogCaptureFixture) -> None:
    """The first server refuses: the second answers, and for RETRY seconds the first is not
    asked first (a spamd back by then gets no request), then it is again."""
    dead_port = free_port()
    second = SwitchableSpamd()
    clock = Clock()
    scanner = pool(dead_port, second.port, clock=clock)
    revived: SwitchableSpamd | None = None
    try:
        with caplog.at_level(logging.WARNING, "spambridge"):
            assert ask(scanner) == 1.5
        assert second.requests == 1
        assert [r.getMessage() for r in caplog.records] == [
            f"spamd server 127.0.0.1:{dead_port} does not connect (Connection refused): the "
            f"other servers are tried first, it again every {RETRY:g}s until it connects"]
        revived = SwitchableSpamd(port=dead_port)  # back, but its time is not up
        clock.now += RETRY - 1
        assert ask(scanner) == 1.5
        assert (revived.requests, second.requests) == (0, 2)
        clock.now += 1
        caplog.clear()
        with caplog.at_level(logging.WARNING, "spambridge"):
            assert ask(scanner) == 1.5
        assert (revived.requests, second.requests) == (1, 2)
        assert [r.getMessage() for r in caplog.records] == [
            f"spamd server 127.0.0.1:{dead_port} connects again"]
    finally:
        second.close()
        if revived is not None:
            revived.close()


def test_a_black_hole_first_costs_connect_timeout_once() -> None:
    """A first server that takes no connection (a host that is off) is given up after
    connect_timeout; the second answers, and the next message goes to it first."""
    hole, second = BlackHole(), SwitchableSpamd()
    scanner = pool(hole.port, second.port)
    try:
        assert ask(scanner, cap=2.0) == 1.5
        assert second.requests == 1
        assert try_order([s.retry_at for s in scanner.servers], scanner.clock()) == [1, 0]
        assert scanner.servers[0].down and not scanner.servers[1].down
    finally:
        hole.close()
        second.close()


@pytest.mark.parametrize(("mode", "ended"), [("die_before_reply", "closed"),
                                             ("reset_before_reply", "reset")])
def test_a_connection_ended_without_a_byte_is_spamd_going_away_not_garbage(
        mode: str, ended: str) -> None:
    """A spamd child killed with the message (a stop, or the reload Debian's daily sa-update
    does) closes the connection with no reply: that was aiospamc's BadResponse b'', an
    error, and with on_error = reject good mail got a 550 at every spamd reload. spamd
    closing at once on a client its --allowed-ips does not list, our request unread, resets
    it: that line said only "[Errno 104] Connection reset by peer", for every message, and
    spamd's own "unauthorized connection" was in another log. Both name both causes."""
    ending = SwitchableSpamd(mode)
    try:
        with pytest.raises(ScanError) as e:
            ask(pool(ending.port))
    finally:
        ending.close()
    assert e.value.kind is ErrorKind.UNAVAILABLE
    assert e.value.detail == (f"127.0.0.1:{ending.port}: ConnectionResetError: {ended} the "
                              "connection without a reply (spamd stopping or reloading, or "
                              "not allowing this host: its --allowed-ips)")


@pytest.mark.parametrize("bayes_share", [False, True])
def test_a_black_hole_first_cut_by_the_cap_goes_last_all_the_same(
        caplog: pytest.LogCaptureFixture, bayes_share: bool) -> None:
    """connect_timeout longer than the time a scan has (the cap, or spamd+bayes's share of
    it): every message tried the black-holed first server, ran out of time on it and never
    asked the live one after it. Given up while connecting, it now goes last as a refusing
    one does, so the next message gets the live server's verdict."""
    hole, live = BlackHole(), SwitchableSpamd()
    cfg = SpamdConfig(servers=(("127.0.0.1", hole.port), ("127.0.0.1", live.port)),
                      connect_timeout=3.0)
    scanner = SpamdScanner(cfg, 0.5)

    async def scan_within(seconds: float) -> float:
        if bayes_share:  # the fallback gives up on spamd at its share: a plain cancel
            task = asyncio.ensure_future(scanner.request("SYMBOLS", MSG))
            done, _ = await asyncio.wait([task], timeout=seconds)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ScanError):
                    await task
                return -1.0
            resp = task.result()
        else:
            try:
                resp = await scanner.request("SYMBOLS", MSG)
            except ScanError:
                return -1.0
        assert resp.headers.spam is not None
        return float(resp.headers.spam.score)

    try:
        with caplog.at_level(logging.WARNING, "spambridge"):
            assert asyncio.run(scan_within(0.3)) == -1.0  # the first, out of time on the hole
            assert asyncio.run(scan_within(2.0)) == 1.5  # the next: the live server first
    finally:
        hole.close()
        live.close()
    assert live.requests == 1
    assert scanner.servers[0].down
    assert f"spamd server {hole.address} does not connect (still connecting when the scan ran " \
        "out of time)" in caplog.text


def test_every_server_refusing_is_unavailable_with_each_named() -> None:
    a, b = free_port(), free_port()
    with pytest.raises(ScanError) as e:
        ask(pool(a, b))
    assert e.value.kind is ErrorKind.UNAVAILABLE
    assert e.value.detail == f"127.0.0.1:{a}: Connection refused; 127.0.0.1:{b}: Connection refused"


@pytest.mark.parametrize(("mode", "kind"), [("garbage", ErrorKind.ERROR),
                                            ("die_mid_reply", ErrorKind.ERROR),
                                            ("die_before_reply", ErrorKind.UNAVAILABLE)])
def test_a_server_that_took_the_message_is_the_answer(mode: str, kind: ErrorKind) -> None:
    """Garbage or a cut reply from the first server is its error: the message is not sent
    to the second (spamd may have learned from it, and it would cost the cap twice)."""
    first, second = SwitchableSpamd(mode), SwitchableSpamd()
    try:
        with pytest.raises(ScanError) as e:
            ask(pool(first.port, second.port))
        assert e.value.kind is kind
        assert e.value.detail.startswith(f"127.0.0.1:{first.port}: ")
        assert (first.requests, second.requests) == (1, 0)
    finally:
        first.close()
        second.close()


def test_a_hung_server_is_a_timeout_and_the_message_is_not_resent() -> None:
    """A server that has the message and does not answer: a timeout, said with its name
    just before the caller's cap (whose own text names no server), and not resent."""
    first, second = SwitchableSpamd("hang"), SwitchableSpamd()
    try:
        with pytest.raises(ScanError) as e:
            ask(pool(first.port, second.port, total=0.5), cap=0.5)
        assert e.value.kind is ErrorKind.TIMEOUT
        assert e.value.detail == f"no answer from 127.0.0.1:{first.port} within 0.5s"
        assert (first.requests, second.requests) == (1, 0)
    finally:
        first.close()
        second.close()


def test_a_loop_held_up_at_the_pools_end_still_says_which_server() -> None:
    """The milter's loop held up from just before the pool's own end of the cap to past the
    caller's: both come due at once and the caller's cancellation runs first. The scan still
    ends as the pool's end says it: a hung server's timeout, named; and with every member
    off, nobody had the message — on_unavailable, not the caller's "no verdict" timeout
    (on_timeout, which an admin may have set otherwise)."""
    first, second = SwitchableSpamd("hang"), SwitchableSpamd()
    try:
        r = outcome(Stalled(pool(first.port, second.port, total=0.5), 0.5, 0.06, 0.1), 0.5)
    finally:
        first.close()
        second.close()
    assert isinstance(r, ScanError), r
    assert (r.kind, r.detail) == (ErrorKind.TIMEOUT,
                                  f"no answer from 127.0.0.1:{first.port} within 0.5s")
    holes = [BlackHole(), BlackHole()]
    cfg = SpamdConfig(servers=tuple(("127.0.0.1", h.port) for h in holes), connect_timeout=1.0)
    try:
        r = outcome(Stalled(SpamdScanner(cfg, 1.5), 1.5, 0.06, 0.1), 1.5)
    finally:
        for h in holes:
            h.close()
    assert isinstance(r, ScanError), r
    assert (r.kind, r.detail) == (ErrorKind.UNAVAILABLE, (
        f"no connection to {holes[0].address} within connect_timeout 1s; "
        f"no connection to {holes[1].address} within the 1.5s cap"))


def test_a_pool_behind_bayes_held_up_at_its_end_leaves_no_unread_failure(
        caplog: pytest.LogCaptureFixture) -> None:
    """spamd+bayes over a pool, Bayes unable to cover, the loop held up at the end: the pool's
    request, cancelled as its own end came, ends with its failure; nothing awaits it then,
    and asyncio must not log it as "Task exception was never retrieved"."""
    first, second = SwitchableSpamd("hang"), SwitchableSpamd()
    untrained = Timed("bayes", 0.0, ErrorKind.UNAVAILABLE)
    scanner = FallbackScanner(pool(first.port, second.port, total=0.5), untrained, 0.1, 0.5)
    try:
        with caplog.at_level(logging.ERROR, "asyncio"):
            for before in (0.06, 0.03, 0.012):  # the pool's end, between, FallbackScanner's
                r = outcome(Stalled(scanner, 0.5, before, 0.1), 0.5)
                assert isinstance(r, ScanError) and r.engine == "spamd", r
            gc.collect()
    finally:
        first.close()
        second.close()
    assert not caplog.records


def test_one_server_keeps_its_error_text() -> None:
    """No pool: the error reads as before (host/port alone, no list)."""
    port = free_port()
    with pytest.raises(ScanError) as e:
        ask(SpamdScanner(SpamdConfig(port=port), 5.0))
    assert e.value.detail == (f"127.0.0.1:{port}: AIOSpamcConnectionFailed: [Errno 111] "
                              f"Connect call failed ('127.0.0.1', {port})")


def test_a_certificate_that_does_not_verify_is_named_so(tmp_path: Path) -> None:
    """A pool member over TLS whose certificate the CA did not sign: its connection failed
    (the next server is tried), said with OpenSSL's words, not os.strerror of its number."""
    cert, key = tmp_path / "c.pem", tmp_path / "c.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    stop = threading.Event()

    def serve(ls: socket.socket) -> None:
        ls.settimeout(0.2)
        while not stop.is_set():  # bounded by the test's end
            try:
                conn, _ = ls.accept()
            except OSError:
                continue
            with contextlib.suppress(OSError), conn:
                conn.settimeout(5)
                server_ctx.wrap_socket(conn, server_side=True).close()

    threads = [threading.Thread(target=serve, args=(ls,), daemon=True) for ls in listeners]
    for t in threads:
        t.start()
    try:
        ports = [ls.getsockname()[1] for ls in listeners]
        cfg = SpamdConfig(servers=tuple(("127.0.0.1", p) for p in ports), tls=True,
                          connect_timeout=5.0)  # the system's CAs: not this certificate
        with pytest.raises(ScanError) as e:
            ask(SpamdScanner(cfg, 5.0))
    finally:
        stop.set()
        for t in threads:
            t.join(2)
        for ls in listeners:
            ls.close()
    assert e.value.kind is ErrorKind.UNAVAILABLE
    parts = e.value.detail.split("; ")
    assert [p.split(": ", 1)[0] for p in parts] == [f"127.0.0.1:{p}" for p in ports]
    assert all("CERTIFICATE_VERIFY_FAILED" in p for p in parts), e.value.detail


def test_a_server_still_connecting_at_the_cap_is_not_taken_for_back(
        caplog: pytest.LogCaptureFixture) -> None:
    """A black-holed server put last, tried again when the cap runs out during its connect:
    unavailable (nobody had the message), and it stays put last (no "connects again": it
    never connected)."""
    hole = BlackHole()
    dead = free_port()
    clock = Clock()
    cfg = SpamdConfig(servers=(("127.0.0.1", hole.port), ("127.0.0.1", dead)),
                      connect_timeout=0.3)
    scanner = SpamdScanner(cfg, 5.0, clock)
    try:
        with pytest.raises(ScanError):
            ask(scanner)  # both fail to connect: both put last
        clock.now += RETRY  # time is up: the black hole first again, with a cap it cannot meet
        scanner.total_timeout = 0.2
        with caplog.at_level(logging.WARNING, "spambridge"), pytest.raises(ScanError) as e:
            ask(scanner)
    finally:
        hole.close()
    assert e.value.kind is ErrorKind.UNAVAILABLE
    assert "connects again" not in caplog.text
    assert scanner.servers[0].down


def test_a_reply_on_a_connection_older_than_the_failure_is_not_taken_for_back(
        caplog: pytest.LogCaptureFixture) -> None:
    """spamd stopped while it scans a message: the next message is refused (it goes last,
    said once); the scan that was under way still answers, which is no news about the
    server: no "connects again", and the message after is not tried there first."""
    second = SwitchableSpamd()
    port = 0

    async def go() -> tuple[float, float, float]:
        nonlocal port
        got, release = asyncio.Event(), asyncio.Event()

        async def slow_spamd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")  # the message is under way: it is stopped
            got.set()
            await release.wait()
            writer.write(spamd_reply(score=2.5))
            writer.close()

        first = await asyncio.start_server(slow_spamd, "127.0.0.1", 0)
        port = first.sockets[0].getsockname()[1]
        scanner = pool(port, second.port)

        async def score() -> float:
            resp = await scanner.request("SYMBOLS", MSG)
            assert resp.headers.spam is not None
            return float(resp.headers.spam.score)

        async with asyncio.timeout(5):
            a = asyncio.ensure_future(score())
            await got.wait()
            first.close()  # no new connection is taken; the one it has goes on
            b = await score()
            release.set()
            answered = await a
            return answered, b, await score()

    try:
        with caplog.at_level(logging.WARNING, "spambridge"):
            assert asyncio.run(go()) == (2.5, 1.5, 1.5)
    finally:
        second.close()
    assert [r.getMessage() for r in caplog.records] == [
        f"spamd server 127.0.0.1:{port} does not connect (Connection refused): the other "
        f"servers are tried first, it again every {RETRY:g}s until it connects"]
    assert second.requests == 2  # the third message went to the second server, not refused


def test_a_connect_failing_after_a_later_one_worked_does_not_put_it_last(
        caplog: pytest.LogCaptureFixture) -> None:
    """Both servers down, then the first back: a message trying it since before (its SYN
    lost while the host rebooted) gives up after connect_timeout, when a later message (the
    second server refusing it) already had its answer there: the first is up, so it stays
    first and nothing says it went again."""
    clock = Clock()
    scanner = pool(free_port(), free_port(), clock=clock)
    first = scanner.servers[0]

    class Back:  # the first server as the clients see it once it is back
        def __init__(self) -> None:
            self.give_up = asyncio.Event()
            self.calls = 0

        async def request(self, req: object) -> str:
            self.calls += 1
            if self.calls == 1:  # the message that had started connecting before
                await self.give_up.wait()
                raise ClientTimeoutException
            return "answered"

    async def go() -> None:
        with pytest.raises(ScanError):  # nothing listens: both put last, each said once
            await scanner.request("PING", b"")
        clock.now += RETRY  # their time is up
        back = Back()
        first.client = back  # type: ignore[assignment]
        a = asyncio.ensure_future(scanner.request("SYMBOLS", MSG))
        for _ in range(100):  # bounded: until a is connecting there
            if back.calls:
                break
            await asyncio.sleep(0.01)
        assert await scanner.request("SYMBOLS", MSG) == "answered"  # type: ignore[comparison-overlap]
        back.give_up.set()
        with pytest.raises(ScanError):  # a goes on to the second, which still refuses
            await a

    with caplog.at_level(logging.WARNING, "spambridge"):
        asyncio.run(go())
    second = scanner.servers[1]
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        f"spamd server {first.target} does not connect",
        f"spamd server {second.target} does not connect",
        f"spamd server {first.target} connects again"], caplog.text
    assert try_order([s.retry_at for s in scanner.servers], clock()) == [0, 1]


def test_a_pool_that_flaps_says_each_change_once_and_asks_the_one_that_answered_first(
        caplog: pytest.LogCaptureFixture) -> None:
    """Two servers going and coming back: each change of each server is one WARNING (not
    one per message that finds it still down), and the server that answered last is asked
    before one that was refused since, until that one's time is up."""
    b_port, a_port = free_port(), free_port()
    clock = Clock()
    scanner = pool(b_port, a_port, clock=clock)  # listed: B, then A
    up: dict[int, SwitchableSpamd] = {}

    def start(port: int) -> None:
        up[port] = SwitchableSpamd(port=port)

    def stop(port: int) -> None:
        up.pop(port).close()

    def requests(port: int) -> int:
        return up[port].requests

    try:
        with caplog.at_level(logging.WARNING, "spambridge"):
            start(a_port)
            assert ask(scanner) == 1.5  # B refuses: A answers
            stop(a_port)
            clock.now += 10
            with pytest.raises(ScanError):  # both refuse; B again, said once already
                ask(scanner)
            clock.now += 10
            start(a_port)
            assert ask(scanner) == 1.5  # both put last: B refuses again, A is back
            start(b_port)
            clock.now += 5  # neither one's time is up: A answered, B was refused
            assert ask(scanner) == 1.5
            assert (requests(a_port), requests(b_port)) == (2, 0)
            stop(a_port)
            assert ask(scanner) == 1.5  # A goes again: said again; B answers
            assert requests(b_port) == 1
    finally:
        for s in up.values():
            s.close()
    b, a = (f"spamd server 127.0.0.1:{p}" for p in (b_port, a_port))
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        f"{b} does not connect", f"{a} does not connect", f"{a} connects again",
        f"{a} does not connect", f"{b} connects again"], caplog.text


@pytest.fixture
def debian_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    """localhost as Debian's /etc/hosts has it, ::1 and 127.0.0.1 (this test machine's has
    127.0.0.1 alone): the resolver's answer, the connects are real."""
    real = socket.getaddrinfo

    def getaddrinfo(host: object, port: object, *args: object, **kw: object) -> list[object]:
        if host == "localhost":
            assert isinstance(port, int)
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, port, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.usefixtures("debian_localhost")
def test_a_name_with_two_addresses_that_both_refuse_is_said_in_few_words() -> None:
    """`localhost:PORT` (::1, then 127.0.0.1): a spamd on 127.0.0.1 alone answers; a stopped
    one is "Connection refused", as an address is, not Python's "Multiple exceptions: …"
    text with both addresses, which alone filled the decision line's 200 bytes."""
    live = SwitchableSpamd()
    dead, other = free_port(), free_port()
    try:
        cfg = SpamdConfig(servers=(("localhost", live.port), ("127.0.0.1", other)))
        assert ask(SpamdScanner(cfg, 5.0)) == 1.5
        cfg = SpamdConfig(servers=(("localhost", dead), ("127.0.0.1", other)))
        with pytest.raises(ScanError) as e:
            ask(SpamdScanner(cfg, 5.0))
    finally:
        live.close()
    assert e.value.detail == (f"localhost:{dead}: Connection refused; "
                              f"127.0.0.1:{other}: Connection refused")


def test_when_a_dead_servers_time_is_up_one_message_tries_it_not_all_at_once() -> None:
    """A host that is off, put last; its 30 s are up and four messages arrive together: one
    of them tries it (and waits connect_timeout), the others go to the second server at
    once, as they did the 30 s before. The dead server costs connect_timeout once per 30 s,
    not once per message that arrives while that one is waiting."""
    second = SwitchableSpamd()
    clock = Clock()
    scanner = pool(free_port(), second.port, clock=clock)

    class StillOff:  # the first server's client: a host that is off, until told
        def __init__(self) -> None:
            self.calls = 0
            self.give_up = asyncio.Event()

        async def request(self, req: object) -> object:
            self.calls += 1
            if self.calls == 1:  # (the others would wait as long: they fail at once here)
                await self.give_up.wait()
            raise ClientTimeoutException

    async def go() -> int:
        await scanner.request("PING", b"")  # refused: put last
        clock.now += RETRY
        off = StillOff()
        scanner.servers[0].client = off  # type: ignore[assignment]
        first = asyncio.ensure_future(scanner.request("SYMBOLS", MSG))
        for _ in range(100):  # bounded: until the first message is trying it
            if off.calls:
                break
            await asyncio.sleep(0.01)
        for _ in range(3):
            await scanner.request("SYMBOLS", MSG)
        off.give_up.set()
        await first
        return off.calls

    try:
        assert asyncio.run(go()) == 1
        assert second.requests == 5  # the PING, three at once, the one that tried the first
    finally:
        second.close()


def test_hosts_off_until_the_cap_runs_out_are_unavailable_not_a_timeout() -> None:
    """Every member a host that is off, and their connect_timeouts together longer than the
    cap: the cap cuts the last one while it is still connecting. Nobody had the message, so
    it is on_unavailable, and the text says no connection, not "no answer from" it."""
    holes = [BlackHole(), BlackHole()]
    cfg = SpamdConfig(servers=tuple(("127.0.0.1", h.port) for h in holes), connect_timeout=1.0)
    try:
        with pytest.raises(ScanError) as e:
            ask(SpamdScanner(cfg, 1.5), cap=1.5)
    finally:
        for h in holes:
            h.close()
    assert e.value.kind is ErrorKind.UNAVAILABLE
    assert e.value.detail == (f"no connection to {holes[0].address} within connect_timeout 1s; "
                              f"no connection to {holes[1].address} within the 1.5s cap")


def test_a_server_back_with_an_answer_that_is_no_use_is_back_all_the_same(
        caplog: pytest.LogCaptureFixture) -> None:
    """A server that was refusing connects again but sends garbage: it took the message, so
    its answer is the answer (on_error, not sent again elsewhere), and it is back: said once,
    and first in the order again, not left last for its retry time as if still refusing."""
    a_port = free_port()
    b = SwitchableSpamd()
    clock = Clock()
    scanner = pool(a_port, b.port, clock=clock)
    a: SwitchableSpamd | None = None
    try:
        assert ask(scanner) == 1.5  # A refuses: B answers
        a = SwitchableSpamd("garbage", port=a_port)
        clock.now += RETRY
        caplog.clear()
        with caplog.at_level(logging.WARNING, "spambridge"):
            for _ in range(2):
                with pytest.raises(ScanError) as e:
                    ask(scanner)
                assert e.value.kind is ErrorKind.ERROR
        assert (a.requests, b.requests) == (2, 1)
        assert [r.getMessage() for r in caplog.records] == [
            f"spamd server 127.0.0.1:{a_port} connects again"]
    finally:
        b.close()
        if a is not None:
            a.close()


def test_one_server_going_and_coming_back_is_not_told_as_a_pool_member(
        caplog: pytest.LogCaptureFixture) -> None:
    """With one server there are no others to try: its outage is the incident log's (spamd
    failing, then answering again), not a pool member's "does not connect" and "connects
    again" lines besides."""
    port = free_port()
    clock = Clock()
    scanner = pool(port, clock=clock)
    back: SwitchableSpamd | None = None
    try:
        with caplog.at_level(logging.WARNING, "spambridge"):
            with pytest.raises(ScanError):
                ask(scanner)
            back = SwitchableSpamd(port=port)
            clock.now += RETRY
            assert ask(scanner) == 1.5
        assert [r.getMessage() for r in caplog.records] == []
    finally:
        if back is not None:
            back.close()


def test_a_member_whose_name_does_not_resolve_is_said_in_few_words(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A pool member named by a host name that does not resolve (a typo, DNS down): the
    resolver's own words, as for an address that refuses, not aiospamc's exception text."""
    real = socket.getaddrinfo

    def getaddrinfo(host: object, port: object, *args: object, **kw: object) -> list[object]:
        if host == "spamd.example":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, port, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    live = SwitchableSpamd()
    try:
        cfg = SpamdConfig(servers=(("spamd.example", 783), ("127.0.0.1", live.port)))
        with caplog.at_level(logging.WARNING, "spambridge"):
            assert ask(SpamdScanner(cfg, 5.0)) == 1.5
    finally:
        live.close()
    assert [r.getMessage() for r in caplog.records] == [
        "spamd server spamd.example:783 does not connect (Name or service not known): the "
        f"other servers are tried first, it again every {RETRY:g}s until it connects"]
