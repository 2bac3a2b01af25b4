"""Finding libmilter's listening socket by its address: the app's stop decision rests on it (a
listener found closed means a stop was asked for)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from harness import full_unix_queue
from milterload import collector_paused

from spambridge.socketspec import find_listener, parse_socket_spec


@pytest.mark.parametrize("family", ["unix", "inet"])
def test_a_closed_listener_is_found_closed_while_its_sessions_are_still_open(
        tmp_path: Path, family: str) -> None:
    """A stop request closes libmilter's listener while the sessions it accepted still finish
    their messages. Those sessions' sockets carry the listener's address too: taken for the
    listener, a stop request that met libmilter's listener between its stop check and its poll
    ("cannot run main") would end in a traceback and exit 1, not a clean stop, whenever a
    session was open."""
    if family == "unix":
        lst = socket.socket(socket.AF_UNIX)
        lst.bind(str(tmp_path / "m.sock"))
        spec = parse_socket_spec(f"unix:{tmp_path / 'm.sock'}")
    else:
        lst = socket.socket(socket.AF_INET)
        lst.bind(("127.0.0.1", 0))
        spec = parse_socket_spec(f"inet:{lst.getsockname()[1]}@127.0.0.1")
    lst.listen(8)
    with lst, socket.socket(lst.family) as mta:
        mta.connect(lst.getsockname())
        session, _ = lst.accept()
        with session:
            assert find_listener(spec) == lst.fileno()
            lst.close()  # what libmilter does at a stop request
            assert find_listener(spec) is None


def test_looking_for_the_listener_leaves_no_descriptor_behind(tmp_path: Path) -> None:
    """The milter looks for libmilter's listener at start (TCP_NODELAY), at a failed start of
    its listener and when a stop closes it. Each look used to leave a copy of every open file
    that is not a socket (log, database, pipes) open for the rest of the process, the copies
    of earlier looks included: the count doubled with each look."""
    spec = parse_socket_spec(f"unix:{tmp_path / 'm.sock'}")
    # The listings are of the whole test process. An event loop, socket or database an
    # earlier test left unclosed in a reference cycle (test_incidents' bridges, for one, are
    # never stopped) is closed by the cyclic collector whenever an allocation sets it off;
    # between the two listings, that takes away descriptors find_listener never touched (a
    # collection there fails the test after test_incidents: 12 gone, its 4 loops' 3 each).
    # Collect that garbage first, and keep the collector out of the window: a descriptor
    # find_listener leaks still fails the test.
    with collector_paused(), open(tmp_path / "some.log", "w"), \
            socket.socket(socket.AF_UNIX) as lst:
        lst.bind(str(tmp_path / "m.sock"))
        lst.listen(1)
        before = sorted(os.listdir("/proc/self/fd"))
        for _ in range(3):
            assert find_listener(spec) == lst.fileno()
        assert find_listener(parse_socket_spec("inet:1@127.0.0.1")) is None
        assert sorted(os.listdir("/proc/self/fd")) == before
        assert lst.getsockname() == str(tmp_path / "m.sock")  # a look never closes it


def test_the_listener_is_the_one_on_the_specs_port_not_another_of_the_process() -> None:
    """With [metrics] on, the process listens on a second TCP port, opened before libmilter's
    listener: taken for it, TCP_NODELAY went to the metrics socket, and a stop request that
    closed libmilter's listener during its start ("cannot run main") was taken for a crash."""
    with socket.socket(socket.AF_INET) as metrics, socket.socket(socket.AF_INET) as lst:
        metrics.bind(("127.0.0.1", 0))
        metrics.listen(1)
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        spec = parse_socket_spec(f"inet:{lst.getsockname()[1]}@127.0.0.1")
        assert metrics.fileno() < lst.fileno()
        assert find_listener(spec) == lst.fileno()
        lst.close()
        assert find_listener(spec) is None


def test_a_busy_milters_socket_is_not_taken_for_a_stale_one(tmp_path: Path) -> None:
    """A second `spambridge run` on the socket of one that is running is refused, and leaves
    the socket alone, also when the running milter's accept queue is full (a burst): the
    probe's connect then fails with EAGAIN at once, which is somebody listening, not nobody.
    Taken for stale, the live milter's socket was removed: it went on running, but Postfix
    could no longer reach it (milter_default_action for every message until a restart)."""
    from spambridge.socketspec import remove_stale_unix_socket

    path = str(tmp_path / "m.sock")
    with full_unix_queue(path):
        with pytest.raises(OSError, match="in use by another running milter"):
            remove_stale_unix_socket(path)
        assert os.path.exists(path)
    remove_stale_unix_socket(path)  # nobody listens now: stale, removed
    assert not os.path.exists(path)


def test_looking_for_the_listener_changes_no_descriptor(tmp_path: Path) -> None:
    """The nudger looks for libmilter's listener from its own thread while libmilter serves.
    Wrapping each descriptor in socket.socket(fileno=...) set O_NONBLOCK on every socket of
    the process (libmilter's listener and sessions, a journald stderr) whenever a library had
    called socket.setdefaulttimeout()."""
    spec = parse_socket_spec(f"unix:{tmp_path / 'm.sock'}")
    with socket.socket(socket.AF_UNIX) as lst:
        lst.bind(str(tmp_path / "m.sock"))
        lst.listen(1)
        mta = socket.socket(socket.AF_UNIX)
        mta.connect(str(tmp_path / "m.sock"))
        session, _ = lst.accept()
        journal, other = socket.socketpair()
        with mta, session, journal, other:
            held = [lst, session, journal, other]
            socket.setdefaulttimeout(5.0)
            try:
                assert find_listener(spec) == lst.fileno()
            finally:
                socket.setdefaulttimeout(None)
            assert [os.get_blocking(s.fileno()) for s in held] == [True] * 4
