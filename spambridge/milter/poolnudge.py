"""Keep libmilter's worker pool from sitting on a ready session while scans are in flight.

Debian builds libmilter with `_FFR_WORKERS_POOL`: a controller thread polls idle sessions and
hands each ready one to an idle worker with a condition signal. When several sessions become
ready in one poll round, its idle count is stale (a signalled worker has not run yet), so later
signals find no waiter and are lost; the session sits in "ready to run" until some worker
finishes its current task. With every worker inside an end-of-message scan, that is up to a
whole `scan_timeout` — measured: 17 of 400 replies at twice the cap, 50 connections, hung spamd.

A connection to our own socket that closes at once makes libmilter start (or wake) a worker;
that worker sees EOF, finishes, and then takes any session left waiting. So we connect when a
scan is still running `interval` seconds after it started (the pipeline's slow_scan), and every
`interval` seconds once scans are in flight and none has finished for `stall_after` seconds:
the stall is bounded by about their sum. A scan that finishes frees its worker, which takes a
waiting session itself, so healthy traffic needs no connection: a quick scan makes none; with
nothing in flight the thread sleeps on the pipeline's condition. (Measured: a fixed 50 ms tick
cost 2.5 ms of CPU a second on an idle milter; a connection as each scan started beside another
made 5,389 connections for 6,300 messages at C=4 with engine=bayes, none now.)
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from spambridge.bridge import signals_blocked
from spambridge.socketspec import SocketSpec, find_listener

log = logging.getLogger("spambridge")

INTERVAL = 0.05  # seconds between nudges while stalled
STALL_AFTER = 0.2  # seconds without a free worker, scans in flight, before nudging


class Activity(Protocol):
    """What the nudger needs to know of the pipeline."""

    @property
    def inflight(self) -> int: ...

    @property
    def last_free(self) -> float: ...

    def wait_busy(self, timeout: float | None) -> bool: ...

    def wake(self) -> None: ...


Target = tuple[int, str | tuple[Any, ...]]


def _target(spec: SocketSpec) -> Target | None:
    """Where to connect, resolved once: a host name in the spec (`inet:PORT@mail.example`)
    must not cost a DNS lookup on the milter's thread before every scan. None when it does
    not resolve: no pokes then (the stall check warns once)."""
    if spec.family == "unix":
        return socket.AF_UNIX, spec.path
    family = socket.AF_INET6 if spec.family == "inet6" else socket.AF_INET
    host = spec.host
    if host in ("", "0.0.0.0", "::"):
        host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    try:
        return family, socket.getaddrinfo(host, spec.port, family, socket.SOCK_STREAM)[0][4]
    except OSError:
        return None


# a connection these refuse is no sign of a socket out of our reach: refused, our listener is
# closed (libmilter stops accepting as soon as a stop is requested, while the last scans
# finish); a full accept queue (EAGAIN, or a TCP connect timing out), connections are
# arriving anyway; no descriptor for the poke itself (the open-files limit, which limits.py
# names)
_NOT_UNREACHABLE = frozenset({errno.ECONNREFUSED, errno.EAGAIN, errno.ETIMEDOUT, errno.EMFILE,
                              errno.ENFILE})


def poke(target: Target | None, timeout: float = 0.05) -> bool:
    """Open and close one connection to the milter's own socket. Never waits on a full
    accept queue (a unix connect would block): new connections are arriving anyway then,
    and each of them gets libmilter to start or wake a worker too."""
    return poke_error(target, timeout) == 0


def poke_error(target: Target | None, timeout: float = 0.05) -> int:
    """poke(), saying why it failed: 0 when it connected, else the errno (ENOENT for a host
    name that did not resolve)."""
    if target is None:
        return errno.ENOENT
    family, address = target
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            if family == socket.AF_UNIX:
                s.setblocking(False)
            else:
                s.settimeout(timeout)
            s.connect(address)
        return 0
    except TimeoutError:
        return errno.ETIMEDOUT
    except OSError as e:
        return e.errno or errno.EIO


class PoolNudger:
    def __init__(self, spec: SocketSpec, activity: Activity, interval: float = INTERVAL,
                 stall_after: float = STALL_AFTER,
                 may_poke: Callable[[], bool] = lambda: True) -> None:
        """`may_poke`: False while libmilter could not start a thread for a poke (limits.Watch):
        the poke's session would never be served and its descriptor never closed."""
        self.spec, self.activity, self.interval = spec, activity, interval
        self.may_poke = may_poke
        self.target = _target(spec)
        self.stall_after = stall_after
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spambridge-nudge", daemon=True)
        self._warned = False

    def start(self) -> PoolNudger:
        with signals_blocked():
            self._thread.start()
        return self

    def poke(self) -> None:
        """Called when a scan is still running `interval` seconds after it started: the worker
        this wakes takes over a waiting session, and that session's own scan pokes again, so a
        burst of lost wake-ups drains in a chain. A lone scan leaves the other workers free
        (and the stall check covers it): no poke."""
        if self.activity.inflight >= 2 and self.may_poke():
            poke(self.target)

    def stop(self) -> None:
        self._stop.set()
        self.activity.wake()  # asleep in wait_busy: the MTA meets no milter while we stop
        self._thread.join(1.0)

    def quiet_left(self) -> float:
        """Seconds until the pipeline counts as stalled (every worker may be in a scan); 0 when
        it is."""
        return max(0.0, self.activity.last_free + self.stall_after - time.monotonic())

    def _run(self) -> None:
        while not self._stop.is_set():
            # idle: asleep until a scan starts or stop() wakes it (no periodic wake-up, which
            # cost an idle milter 0.2 ms of CPU a second on the standard VM)
            if not self.activity.wait_busy(None) or self._stop.is_set():
                continue
            left = self.quiet_left()
            if left > 0:  # a worker was free lately: sleep until that could have changed
                self._stop.wait(left)
                continue
            err = poke_error(self.target) if self.activity.inflight and self.may_poke() else 0
            if err and err not in _NOT_UNREACHABLE and not self._warned:
                try:
                    listener = find_listener(self.spec)
                except OSError:  # /proc unreadable now (descriptors short): look next time
                    self._stop.wait(self.interval)
                    continue
                if listener is None:
                    # libmilter closed its listener: a stop, the last scans finishing (not as
                    # root it removes the socket file too: ENOENT). Nothing left to wake.
                    return
                self._warned = True  # e.g. the socket's mode keeps our own user out
                log.warning("cannot connect to our own socket %s; replies may wait for a free "
                            "libmilter worker beyond the cap", self.spec.libmilter)
            self._stop.wait(self.interval)
