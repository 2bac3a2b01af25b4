"""How a run stops: SIGTERM as Ctrl-C does (Stopped), never between a batch's COMMIT and
its count, and not a second time while the run winds up (rolls back, folds the -wal back,
closes the database)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class Stopped(KeyboardInterrupt):
    """SIGTERM during a run (`timeout`, `kill`, a service stop): handled as Ctrl-C is, by
    whatever handles that."""


_deferred: list[int] | None = None  # inside stop_deferred: the signals that came meanwhile


def raise_stopped(signum: int, frame: object) -> None:
    """The handler a run puts on SIGTERM (and, inside stop_deferred, SIGINT): Stopped or
    KeyboardInterrupt now, or when stop_deferred ends."""
    if _deferred is not None:
        _deferred.append(signum)
        return
    raise Stopped if signum == signal.SIGTERM else KeyboardInterrupt


@contextlib.contextmanager
def stop_deferred() -> Iterator[None]:
    """A Ctrl-C or SIGTERM (once stop_on_sigterm routes it here) that comes inside is
    raised when it ends: a stop just after a batch's COMMIT, before the run counted it, made
    the run say "the first 250 of 501 messages were saved" of a database holding 500. Not
    raised over an error. Ctrl-C is routed here only meanwhile: asyncio.run (spamd's TELLs)
    handles it itself when Python's own handler is in place."""
    global _deferred
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only
        return
    outer, _deferred = _deferred, []
    sigint = signal.getsignal(signal.SIGINT)
    if sigint is signal.default_int_handler:
        signal.signal(signal.SIGINT, raise_stopped)
    try:
        yield
    finally:
        if sigint is signal.default_int_handler:
            signal.signal(signal.SIGINT, sigint)
        came, _deferred = _deferred, outer
    if came:
        raise_stopped(came[0], None)


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_on_sigterm() -> dict[int, Any] | None:
    """Make SIGTERM stop the run as Ctrl-C does: the open batch rolled back, the -wal folded
    back and the admin told what was kept. Python's default dies on the spot, silently, and
    leaves the run's pages in the -wal (the hazard docs/bayes.md warns of). Returns the
    handlers of SIGINT and SIGTERM to put back (None: not the main thread, nothing changed).
    A signal ignored by whoever started us stays ignored, and a handler not set from Python
    (None), which could not be put back, is left alone."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous: dict[int, Any] = {s: signal.getsignal(s) for s in _SIGNALS}
    if previous[signal.SIGTERM] not in (None, signal.SIG_IGN):
        signal.signal(signal.SIGTERM, raise_stopped)
    return previous


def hold_signals(previous: dict[int, Any] | None) -> None:
    """While the run winds up (roll back, fold, close), another Ctrl-C or SIGTERM must not cut
    it short: the fold would be left half done, the -wal full. They are ignored until
    restore_signals; the fold waits BUSY_TIMEOUT_FOLD at most."""
    for s, handler in (previous or {}).items():
        if handler not in (None, signal.SIG_IGN):
            signal.signal(s, signal.SIG_IGN)


def restore_signals(previous: dict[int, Any] | None) -> None:
    """Put back the handlers stop_on_sigterm found."""
    for s, handler in (previous or {}).items():
        if handler is not None:
            signal.signal(s, handler)
