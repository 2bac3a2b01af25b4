"""spambridge.limits: which process limits are too low for Postfix's default load, and what
an admin is told to raise."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest

from spambridge import limits
from spambridge.limits import FDS_BASE, FDS_PER_SESSION, SESSIONS, THREADS_BASE, Limits, problems
from spambridge.socketspec import parse_socket_spec

MIB = 1 << 20
ROOMY = Limits(nofile=524288, nproc=None, tasks=4915, address_space=None, stack=8 * MIB,
               vm_size=300 * MIB)


def test_systemds_defaults_raised_soft_limit_and_tasks_are_enough() -> None:
    assert problems(ROOMY, 1 << 20) == []


def test_each_low_limit_names_its_unit_setting_and_the_sessions_it_allows() -> None:
    low = Limits(nofile=64, nproc=40, tasks=30, address_space=512 * MIB, stack=8 * MIB,
                 vm_size=300 * MIB)
    said = problems(low, 1 << 20)
    assert len(said) == 4
    nofile, tasks, nproc, space = said
    assert "RLIMIT_NOFILE) is 64" in nofile and "LimitNOFILE=" in nofile
    assert f"about {(64 - FDS_BASE) // FDS_PER_SESSION} SMTP sessions" in nofile
    assert "pids.max) is 30" in tasks and "TasksMax=" in tasks
    assert f"about {30 - THREADS_BASE} SMTP sessions" in tasks
    assert "RLIMIT_NPROC) is 40" in nproc and "LimitNPROC=" in nproc
    assert "RLIMIT_AS) is 512 MiB" in space and "MemoryMax=" in space


def test_the_thresholds_are_what_the_sessions_need() -> None:
    need_fds = FDS_BASE + FDS_PER_SESSION * SESSIONS
    need_threads = THREADS_BASE + SESSIONS
    at = Limits(nofile=need_fds, nproc=need_threads, tasks=need_threads, address_space=None,
                stack=8 * MIB, vm_size=0)
    assert problems(at, 1 << 20) == []
    under = Limits(nofile=need_fds - 1, nproc=need_threads - 1, tasks=need_threads - 1,
                   address_space=None, stack=8 * MIB, vm_size=0)
    assert len(problems(under, 1 << 20)) == 3


def test_the_address_space_needed_grows_with_max_scan_size() -> None:
    space = Limits(nofile=None, nproc=None, tasks=None, address_space=4096 * MIB,
                   stack=8 * MIB, vm_size=300 * MIB)
    assert problems(space, 1 << 20) == []  # 300 + 100 x (8 + 3) MiB fit in 4 GiB
    assert len(problems(space, 32 << 20)) == 1  # 100 x 96 MiB of messages do not


def test_only_a_thread_that_cannot_start_is_said_to_be_one() -> None:
    """The start's other RuntimeErrors stop it as what they are, not as a limit reached
    that the admin would raise in the unit for nothing."""
    other = RuntimeError("dictionary changed size during iteration")
    with pytest.raises(RuntimeError) as raised, limits.thread_failure_named():
        raise other
    assert raised.value is other
    with (pytest.raises(OSError, match=r"^cannot start a thread: "),
          limits.thread_failure_named()):
        raise RuntimeError("can't start new thread")


def test_a_failure_from_a_limit_is_named_once_every_few_minutes(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """'spamd failing: unavailable: ... [Errno 24] Too many open files' reads as spamd's
    fault; one more line says it is the milter's own limit, and which setting raises it."""
    monkeypatch.setattr(limits, "_said", {})
    spamd = "127.0.0.1:783: AIOSpamcConnectionFailed: [Errno 24] Too many open files"
    with caplog.at_level(logging.WARNING, logger="spambridge"):
        limits.note(spamd)
        limits.note("spool_dir /var/tmp: [Errno 24] Too many open files: '/var/tmp/x'")
        limits.note("127.0.0.1:783: MemoryError")
        limits.note("127.0.0.1:783: AIOSpamcConnectionFailed: [Errno 111] Connection refused")
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2, said  # the second descriptor failure: within REMIND of the first
    assert said[0].startswith("out of file descriptors") and "LimitNOFILE=" in said[0]
    assert said[1].startswith("out of memory") and "max_scan_size" in said[1]


def test_a_session_whose_mta_hung_up_longer_than_a_scan_counts_as_unserved(
        tmp_path: Path) -> None:
    """An accepted session of our socket, its peer gone for more than `grace`: libmilter never
    looked at it again. Open sessions, and ones closed since, do not count."""
    path = str(tmp_path / "m.sock")
    spec = parse_socket_spec(f"unix:{path}")
    now = [100.0]
    hung: dict[tuple[int, int], float] = {}
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen(4)
        gone, alive = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)
        gone.connect(path)
        stuck, _ = listener.accept()
        alive.connect(path)
        served, _ = listener.accept()
        gone.close()  # the MTA gave up on `stuck`
        with stuck, served, alive:
            assert limits.unserved(spec, hung, 7.0, lambda: now[0]) == 0  # just hung up
            now[0] += 5
            assert limits.unserved(spec, hung, 7.0, lambda: now[0]) == 0  # could be scanning
            now[0] += 5
            assert limits.unserved(spec, hung, 7.0, lambda: now[0]) == 1
        assert limits.unserved(spec, hung, 7.0, lambda: now[0]) == 0  # closed: forgotten
        assert hung == {}


def test_looking_for_unserved_sessions_changes_no_descriptor(tmp_path: Path) -> None:
    """The watch reads libmilter's descriptors from another thread while libmilter uses them:
    it must not change one. Wrapping one in socket.socket(fileno=...) made it non-blocking
    whenever some library had set socket.setdefaulttimeout(): libmilter's listener and
    sessions, and stderr when it is journald's stream socket (a blocking write to it then
    fails with EAGAIN instead of waiting: log lines lost)."""
    path = str(tmp_path / "m.sock")
    spec = parse_socket_spec(f"unix:{path}")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen(4)
        mta = socket.socket(socket.AF_UNIX)
        mta.connect(path)
        session, _ = listener.accept()
        journal, other = socket.socketpair()
        mta.close()
        with session, journal, other:
            held = [listener, session, journal, other]
            before = [os.get_blocking(s.fileno()) for s in held]
            socket.setdefaulttimeout(5.0)
            try:
                limits.unserved(spec, {}, 7.0)
            finally:
                socket.setdefaulttimeout(None)
            assert [os.get_blocking(s.fileno()) for s in held] == before == [True] * 4


def test_a_tcp_session_whose_mta_hung_up_longer_than_a_scan_counts_as_unserved() -> None:
    """The same over inet: sessions on our port, not the listener or other connections."""
    now = [100.0]
    hung: dict[tuple[int, int], float] = {}
    with socket.socket() as listener, socket.socket() as elsewhere:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        elsewhere.bind(("127.0.0.1", 0))
        elsewhere.listen(4)
        spec = parse_socket_spec(f"inet:{listener.getsockname()[1]}@127.0.0.1")
        gone = socket.create_connection(listener.getsockname())
        stuck, _ = listener.accept()
        alive = socket.create_connection(listener.getsockname())
        served, _ = listener.accept()
        away = socket.create_connection(elsewhere.getsockname())
        theirs, _ = elsewhere.accept()  # hung up too, but not a session of our socket
        gone.close()
        away.close()
        with stuck, served, alive, theirs:
            assert limits.unserved(spec, hung, 7.0, lambda: now[0]) == 0
            now[0] += 10
            assert limits.unserved(spec, hung, 7.0, lambda: now[0]) == 1
        assert limits.unserved(spec, hung, 7.0, lambda: now[0]) == 0
        assert hung == {}


def test_a_look_that_cannot_read_the_tables_keeps_the_hang_ups_seen(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At RLIMIT_NOFILE /proc/net/unix may not open: the sessions seen hung up stay counted
    from when they were first seen, not forgotten and started over."""
    path = str(tmp_path / "m.sock")
    spec = parse_socket_spec(f"unix:{path}")
    hung: dict[tuple[int, int], float] = {}
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen(4)
        mta = socket.socket(socket.AF_UNIX)
        mta.connect(path)
        stuck, _ = listener.accept()
        mta.close()
        with stuck:
            assert limits.unserved(spec, hung, 7.0, lambda: 100.0) == 0
            def cannot(spec: object, listening: bool) -> set[int]:
                raise OSError(24, "Too many open files")

            monkeypatch.setattr(limits, "stream_inodes", cannot)
            assert limits.unserved(spec, hung, 7.0, lambda: 110.0) == 1
            assert len(hung) == 1


def test_the_systems_file_table_full_is_not_called_the_milters_limit(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENFILE ("Too many open files in system") is the kernel's table (fs.file-max) full, with
    the milter far below its RLIMIT_NOFILE: raising LimitNOFILE= does nothing for it. It was
    told as "the open files limit (RLIMIT_NOFILE) of 524288 is reached"."""
    monkeypatch.setattr(limits, "_said", {})
    with caplog.at_level(logging.WARNING, logger="spambridge"):
        limits.note("127.0.0.1:783: AIOSpamcConnectionFailed: [Errno 23] Too many open files "
                    "in system")
        limits.note("127.0.0.1:783: AIOSpamcConnectionFailed: [Errno 24] Too many open files")
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2, said
    assert not said[0].startswith("out of file descriptors"), said[0]
    assert "fs.file-max" in said[0] and "LimitNOFILE= does not help" in said[0]
    assert said[1].startswith("out of file descriptors") and "LimitNOFILE=" in said[1]
