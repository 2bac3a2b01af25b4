"""Keep libmilter's worker pool from sitting on a ready session while scans are in flight.

Debian builds libmilter with `_FFR_WORKERS_POOL`: a controller thread polls idle sessions and
hands each ready one to an idle worker with a condition signal. When several sessions become
ready in one poll round, its idle count is stale (a signalled worker has not run yet), so later
signals find no waiter and are lost; the session sits in "ready to run" until some worker
finishes its current task. With every worker inside an end-of-message scan, that is up to a
whole `scan_timeout` — measured: 17 of 400 replies at twice the cap, 50 connections, hung spamd.

A connection to our own socket that closes at once makes libmilter start (or wake) a worker;
that worker sees EOF, finishes, and then takes any session left waiting. So while messages are
being scanned, one such connection every `interval` seconds bounds the stall to about that.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

from spambridge.milter.bridge import signals_blocked
from spambridge.milter.socketspec import SocketSpec

log = logging.getLogger("spambridge")

INTERVAL = 0.05  # seconds between nudges while a scan is in flight


def _target(spec: SocketSpec) -> tuple[int, str | tuple[str, int]]:
    if spec.family == "unix":
        return socket.AF_UNIX, spec.path
    if spec.family == "inet6":
        return socket.AF_INET6, ("::1" if spec.host in ("::", "") else spec.host, spec.port)
    return socket.AF_INET, ("127.0.0.1" if spec.host in ("0.0.0.0", "") else spec.host,
                            spec.port)


def poke(spec: SocketSpec, timeout: float = 0.05) -> bool:
    """Open and close one connection to the milter's own socket. Never waits on a full
    accept queue (a unix connect would block): new connections are arriving anyway then,
    and each of them gets libmilter to start or wake a worker too."""
    family, address = _target(spec)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            if family == socket.AF_UNIX:
                s.setblocking(False)
            else:
                s.settimeout(timeout)
            s.connect(address)
        return True
    except OSError:
        return False


class PoolNudger:
    def __init__(self, spec: SocketSpec, busy: Callable[[], bool],
                 interval: float = INTERVAL) -> None:
        self.spec, self.busy, self.interval = spec, busy, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spambridge-nudge", daemon=True)
        self._warned = False

    def start(self) -> PoolNudger:
        with signals_blocked():
            self._thread.start()
        return self

    def poke(self) -> None:
        """Called as each scan starts: the worker this wakes takes over a waiting session, and
        that session's own scan pokes again, so a burst of lost wake-ups drains in a chain."""
        poke(self.spec)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1.0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.busy() and not poke(self.spec) and not self._warned and not self._stop.is_set():
                self._warned = True  # e.g. the socket's mode keeps our own user out
                log.warning("cannot connect to our own socket %s; replies may wait for a free "
                            "libmilter worker beyond the cap", self.spec.libmilter)
