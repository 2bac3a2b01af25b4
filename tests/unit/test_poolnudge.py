"""The pool nudger connects to the milter's own socket only when libmilter's workers may all be
inside scans: never while idle, never for a lone scan, and periodically only once no worker
has been free for `stall_after` seconds. A real unix socket counts the connections.

Nothing here depends on a thread of the test having run in time: the connections wait in the
socket's accept queue until the test counts them, and when a poke was made is taken in the
nudger's own thread. A loaded machine (a CI run, a collection of the test process's heap)
may hold any thread up for a while; what these tests check must not depend on it."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import full_unix_queue

from spambridge.milter import poolnudge
from spambridge.milter.poolnudge import PoolNudger
from spambridge.socketspec import parse_socket_spec


class FakeActivity:
    """The pipeline's side, driven by the test."""

    def __init__(self) -> None:
        self.inflight = 0
        self.last_free = time.monotonic()
        self.woken = False
        self._cond = threading.Condition()
        self.idle = threading.Event()  # the nudger is back asleep with nothing in flight

    def set(self, inflight: int, free_now: bool = False) -> None:
        with self._cond:
            self.inflight = inflight
            if free_now:
                self.last_free = time.monotonic()
            if inflight:
                self.idle.clear()
            self._cond.notify_all()

    def wait_busy(self, timeout: float | None) -> bool:
        with self._cond:
            if not self.inflight and not self.woken:
                self.idle.set()  # whatever it was doing when the scans ended is done
            return self._cond.wait_for(lambda: self.inflight > 0 or self.woken, timeout)

    def wake(self) -> None:
        with self._cond:
            self.woken = True
            self._cond.notify_all()


class Listener:
    """A unix socket that counts the connections made to it. A unix connect() returns once
    the connection is in the accept queue, so every poke made so far is there when `count`
    is read, and is counted then: a thread accepting them was counted late when the machine
    held it up past a test's wait, and a poke that had been made looked like none."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(128)  # more than any test here makes
        self.sock.setblocking(False)
        self._count = 0

    @property
    def count(self) -> int:
        if self.sock.fileno() != -1:  # closed: counted as it closed
            self._drain()
        return self._count

    def _drain(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return
            conn.close()
            self._count += 1

    def close(self) -> None:
        self._drain()
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[Listener, str]]:
    path = tmp_path / "m.sock"
    lst = Listener(path)
    yield lst, f"unix:{path}"
    lst.close()


def settle(lst: Listener, seconds: float) -> int:
    time.sleep(seconds)
    return lst.count


@pytest.fixture
def poke_times(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """When each of the nudger's connections was made (time.monotonic(), which its stall check
    reads), taken in the nudger's thread as it connects: how late the test looks does not
    change what it sees."""
    times: list[float] = []
    real = poolnudge.poke_error

    def timed(target: poolnudge.Target | None, timeout: float = 0.05) -> int:
        times.append(time.monotonic())
        return real(target, timeout)

    monkeypatch.setattr(poolnudge, "poke_error", timed)
    return times


@contextlib.contextmanager
def running(spec: str, act: FakeActivity, stall_after: float) -> Iterator[PoolNudger]:
    n = PoolNudger(parse_socket_spec(spec), act, interval=0.02, stall_after=stall_after).start()
    try:
        yield n
    finally:
        n.stop()


def test_scan_start_pokes_only_when_another_scan_is_in_flight(
        listener: tuple[Listener, str]) -> None:
    lst, spec = listener
    act = FakeActivity()
    n = PoolNudger(parse_socket_spec(spec), act)  # not started: only the scan-start hook
    act.set(1)
    n.poke()
    assert settle(lst, 0.2) == 0
    act.set(2)
    n.poke()
    assert settle(lst, 0.2) == 1


def test_no_connection_while_idle_or_while_workers_come_free(
        listener: tuple[Listener, str]) -> None:
    lst, spec = listener
    act = FakeActivity()
    with running(spec, act, stall_after=0.3):
        assert settle(lst, 0.5) == 0  # idle
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:  # busy, but a scan finishes every 50 ms
            act.set(3, free_now=True)
            time.sleep(0.05)
        assert lst.count == 0


def test_periodic_connections_once_no_worker_was_free_for_stall_after(
        listener: tuple[Listener, str], poke_times: list[float]) -> None:
    lst, spec = listener
    act = FakeActivity()
    with running(spec, act, stall_after=0.15):
        act.set(4, free_now=True)  # four scans hang from now on
        freed = act.last_free
        got = settle(lst, 0.7)
        assert got >= 5, got  # stalled from 0.15 s: one every 20 ms or so
        # not yet stalled before then (as the nudger reckons it: last_free + stall_after)
        assert all(freed + 0.15 - t <= 0 for t in poke_times), [t - freed for t in poke_times]
        act.set(0, free_now=True)
        # back asleep with nothing in flight: a poke it was making as the scans ended is made
        assert act.idle.wait(10)
        before = lst.count
        assert settle(lst, 0.4) == before  # idle again: no more


def test_a_host_name_in_the_socket_spec_is_resolved_once() -> None:
    """`inet:PORT@localhost`: the pokes connect to the address, with no DNS lookup on the
    milter's thread before each scan."""
    n = PoolNudger(parse_socket_spec("inet:11332@localhost"), FakeActivity())
    assert n.target == (socket.AF_INET, ("127.0.0.1", 11332))
    wildcard = PoolNudger(parse_socket_spec("inet:11332@0.0.0.0"), FakeActivity())
    assert wildcard.target == (socket.AF_INET, ("127.0.0.1", 11332))
    unresolvable = PoolNudger(parse_socket_spec("inet:11332@no-such-host.invalid"),
                              FakeActivity())
    assert unresolvable.target is None  # no pokes, no lookups per scan (the stall check warns)


def test_an_inet6_wildcard_is_poked_on_the_ipv6_loopback() -> None:
    """`inet6:PORT@::` listens on every address: the pokes go to ::1 (an IPv4 loopback has no
    IPv6 address to resolve to, and no pokes would mean replies waiting on busy workers)."""
    n = PoolNudger(parse_socket_spec("inet6:11332@::"), FakeActivity())
    assert n.target is not None and n.target[0] == socket.AF_INET6
    assert n.target[1][:2] == ("::1", 11332)


def _stalled_warnings(spec: str, caplog: pytest.LogCaptureFixture) -> list[str]:
    act = FakeActivity()
    with caplog.at_level(logging.WARNING, logger="spambridge"), \
            running(spec, act, stall_after=0.05):
        act.set(3, free_now=True)  # three scans hang from now on
        time.sleep(0.4)
        act.set(0, free_now=True)
    return [r.getMessage() for r in caplog.records if "our own socket" in r.getMessage()]


@pytest.mark.parametrize("removed", [False, True], ids=["as-root", "as-its-user"])
def test_a_listener_that_stopped_accepting_is_no_reason_to_warn(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, removed: bool) -> None:
    """On a stop request libmilter closes its listener while scans still finish: connections
    are refused from then on (as root the socket file stays until the process exits; as the
    milter's own user libmilter removes it at once). That is not a socket the milter cannot
    reach, and the warning must not send the admin hunting for a permission problem after
    every restart under load."""
    path = tmp_path / "m.sock"
    lst = Listener(path)
    lst.close()  # nothing listens: ECONNREFUSED, or ENOENT once the file is gone too
    if removed:
        path.unlink()
    assert _stalled_warnings(f"unix:{path}", caplog) == []


def test_a_socket_that_answers_is_no_reason_to_warn(
        listener: tuple[Listener, str], caplog: pytest.LogCaptureFixture) -> None:
    lst, spec = listener
    assert _stalled_warnings(spec, caplog) == []
    assert lst.count > 0  # the pokes did connect


def test_a_socket_out_of_reach_is_still_warned_about(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The milter listens, but not where its own user can connect (here its directory moved
    away; in the field, a mode or directory that keeps the user out)."""
    (tmp_path / "run").mkdir()
    lst = Listener(tmp_path / "run" / "m.sock")
    try:
        (tmp_path / "run").rename(tmp_path / "moved")
        warned = _stalled_warnings(f"unix:{tmp_path / 'run' / 'm.sock'}", caplog)
    finally:
        lst.close()
    assert len(warned) == 1 and "cannot connect to our own socket" in warned[0]
    assert lst.count == 0


def test_stopping_an_idle_nudger_does_not_wait_out_its_sleep(
        listener: tuple[Listener, str]) -> None:
    """The milter stops only after the nudger has: its idle sleep was not cut short, so each
    stop or restart left the MTA without a milter for up to that long more."""
    n = PoolNudger(parse_socket_spec(listener[1]), FakeActivity()).start()
    time.sleep(0.1)  # asleep in wait_busy
    n.stop()  # joins for at most 1 s
    assert not n._thread.is_alive()


def test_no_connection_while_no_thread_can_be_started(listener: tuple[Listener, str]) -> None:
    """At the thread limit (limits.Watch), libmilter cannot start a worker for a poke: the
    poke's session is never served and keeps its descriptor for good (41 to 47 of them in a
    2-second stall under RLIMIT_NPROC 30). Neither the scan-start poke nor the stalled ones."""
    lst, spec = listener
    act = FakeActivity()
    ok = [False]
    n = PoolNudger(parse_socket_spec(spec), act, interval=0.02, stall_after=0.05,
                   may_poke=lambda: ok[0]).start()
    try:
        act.set(3, free_now=True)  # three scans hang from now on: stalled after 50 ms
        n.poke()
        assert settle(lst, 0.4) == 0
        ok[0] = True  # threads free again: the pokes resume
        assert settle(lst, 0.4) > 0
    finally:
        n.stop()


def test_a_full_accept_queue_is_no_reason_to_warn(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Under a burst the listener's accept queue fills (EAGAIN on a unix socket): new
    connections are arriving anyway, and libmilter still listens there, so "cannot connect to
    our own socket" would send the admin hunting for a permission problem that is not there."""
    path = tmp_path / "full.sock"
    with full_unix_queue(str(path)):
        assert _stalled_warnings(f"unix:{path}", caplog) == []


def test_a_full_tcp_accept_queue_is_no_reason_to_warn(caplog: pytest.LogCaptureFixture) -> None:
    """On TCP a full accept queue drops the SYN: the poke times out (ETIMEDOUT), which is
    connections arriving anyway, as EAGAIN is on a unix socket."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(0)
        port = lst.getsockname()[1]
        queued = []
        try:
            for _ in range(64):  # bounded: the kernel takes backlog + 1
                c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                c.settimeout(0.2)
                try:
                    c.connect(("127.0.0.1", port))
                except TimeoutError:
                    c.close()
                    break
                queued.append(c)
            else:
                pytest.fail("the accept queue never filled")
            assert _stalled_warnings(f"inet:{port}@127.0.0.1", caplog) == []
        finally:
            for c in queued:
                c.close()


def test_pokes_while_stalled_come_every_interval_not_in_a_busy_loop(
        listener: tuple[Listener, str]) -> None:
    """While every worker may be in a scan the nudger connects every `interval` seconds: a
    loop without its wait would flood libmilter with connections and burn a core."""
    lst, spec = listener
    act = FakeActivity()
    with running(spec, act, stall_after=0.0):
        act.set(3)
        time.sleep(0.3)
        act.set(0, free_now=True)
    assert 0 < lst.count <= 0.3 / 0.02 + 10


def test_a_socket_host_that_does_not_resolve_is_warned_about(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """`inet:PORT@mx.example` whose name does not resolve at start: libmilter listens there,
    the nudger has no address to poke, and says so once (replies may wait on busy workers)."""
    def no_name(*args: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(8)
        port = lst.getsockname()[1]
        monkeypatch.setattr(poolnudge.socket, "getaddrinfo", no_name)
        warned = _stalled_warnings(f"inet:{port}@mx.example", caplog)
    assert len(warned) == 1 and "cannot connect to our own socket" in warned[0], warned


@pytest.mark.parametrize("err", ["EMFILE", "ENFILE"])
def test_no_descriptor_for_a_poke_is_not_called_an_unreachable_socket(
        listener: tuple[Listener, str], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, err: str) -> None:
    """At the open-files limit the poke's own socket cannot be made ("Too many open files"):
    that is no permission problem with the socket (limits.py names the limit), and looking
    for the listener in /proc then fails the same way, which ended the nudger's thread with a
    traceback. It says nothing and keeps trying; the pokes resume once descriptors are free."""
    import errno

    lst, spec = listener
    short = [True]
    real = poolnudge.poke_error

    def poke_error(target: poolnudge.Target | None, timeout: float = 0.05) -> int:
        return getattr(errno, err) if short[0] else real(target, timeout)

    def find_listener(spec: object) -> int | None:
        raise OSError(getattr(errno, err), "Too many open files")

    monkeypatch.setattr(poolnudge, "poke_error", poke_error)
    monkeypatch.setattr(poolnudge, "find_listener", find_listener)
    act = FakeActivity()
    with caplog.at_level(logging.WARNING, logger="spambridge"), \
            running(spec, act, stall_after=0.05) as n:
        act.set(3, free_now=True)  # three scans hang from now on: stalled after 50 ms
        time.sleep(0.3)
        short[0] = False
        assert settle(lst, 0.4) > 0  # still poking: the thread lives on
        assert n._thread.is_alive()
        act.set(0, free_now=True)
    assert [r.getMessage() for r in caplog.records] == []


def test_a_listener_search_that_fails_is_tried_again_not_the_end_of_the_nudger(
        listener: tuple[Listener, str], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A poke refused for a reason worth a warning (EACCES: the socket's mode), while /proc
    cannot be read for the listener (descriptors short for a moment): the nudger looks again
    at its next poke, and warns then, instead of its thread ending with a traceback."""
    import errno

    _, spec = listener
    real = poolnudge.find_listener
    fails = [2]

    def find_listener(spec: object) -> int | None:
        if fails[0]:
            fails[0] -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return real(spec)  # type: ignore[arg-type]

    monkeypatch.setattr(poolnudge, "poke_error", lambda target, timeout=0.05: errno.EACCES)
    monkeypatch.setattr(poolnudge, "find_listener", find_listener)
    act = FakeActivity()
    with caplog.at_level(logging.WARNING, logger="spambridge"), \
            running(spec, act, stall_after=0.05) as n:
        act.set(3, free_now=True)
        time.sleep(0.4)
        assert n._thread.is_alive()
        act.set(0, free_now=True)
    warned = [r.getMessage() for r in caplog.records]
    assert fails == [0] and len(warned) == 1 and "cannot connect to our own socket" in warned[0]
