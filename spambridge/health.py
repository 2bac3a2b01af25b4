"""Scanner incidents in the log: an engine that starts failing is said once, with the cause and
what mail gets meanwhile; every few minutes while it keeps failing, once more with the count;
and once when it answers again. The per-message decision lines still say, each, what happened
to that message, at INFO: as warnings, a 10-minute spamd outage at 20 msg/s was 12,000 of
them (a fresh, untrained Bayes database one per message for days), and no line said when it
ended. The warnings are what an admin must act on; the lines between them are the evidence.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from spambridge.message import clean

log = logging.getLogger("spambridge")

REMIND = 300.0  # seconds between warnings about one engine: an outage's reminders, and a flap's
DETAIL_CHARS = 300  # of the cause on an incident line (the decision lines carry each message's)


@dataclass
class _Incident:
    since: float  # clock() at the first failure
    level: int  # of its first line, and so of its last
    cause: str  # "kind: detail" of the first failure
    last: str  # of the latest
    said: float  # clock() when it was last said
    kinds: Counter[str] = field(default_factory=Counter)


def duration(seconds: float) -> str:
    """1.3s, 42s, 10m02s, 2h05m: how long an incident lasted, as an admin reads it."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _counts(kinds: Counter[str]) -> str:
    n = sum(kinds.values())
    by_kind = ", ".join(f"{k} {c}" for k, c in kinds.most_common())
    return f"{n} message{'s' if n != 1 else ''} ({by_kind})"


class Health:
    """Which engines are failing now. Fed every decision by the pipeline (from all of
    libmilter's threads at once); logs only when an engine's state changes, or at most every
    `remind` seconds about one engine."""

    def __init__(self, remind: float = REMIND,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.remind, self.clock = remind, clock
        self._open: dict[str, _Incident] = {}
        self._warned: dict[str, tuple[float, str]] = {}  # engine → clock(), cause last warned
        self._lock = threading.Lock()

    def failed(self, engine: str, kind: str, detail: str, meanwhile: str) -> None:
        """`engine` gave no verdict (`kind`: unavailable, timeout, error); `meanwhile`: what
        mail gets instead ("mail gets on_timeout = accept", "Bayes decides")."""
        now = self.clock()
        cause = clean(f"{kind}: {detail}", DETAIL_CHARS, log=True)
        with self._lock:
            inc = self._open.get(engine)
            if inc is None:
                # a flapping engine (one timeout now and then) warns of the same cause at most
                # every `remind` seconds; the incidents in between are said at INFO, start and
                # end. Another cause (the database deleted after it was corrupt) is news.
                when, what = self._warned.get(engine, (now - self.remind, ""))
                warn = cause != what or now - when >= self.remind
                inc = self._open[engine] = _Incident(
                    now, logging.WARNING if warn else logging.INFO, cause, cause, now)
                if warn:
                    self._warned[engine] = now, cause
                inc.kinds[kind] += 1
                log.log(inc.level, "%s failing: %s; %s until it answers again",
                        engine, cause, meanwhile)
                return
            inc.kinds[kind] += 1
            inc.last = cause
            if now - inc.said < self.remind:
                return
            inc.said = now
            inc.level = logging.WARNING  # long enough to be told, whatever its start was
            self._warned[engine] = now, cause
            same = cause == inc.cause
            log.warning("%s still failing after %s: %s so far%s; %s", engine,
                        duration(now - inc.since), _counts(inc.kinds),
                        "" if same else f", the latest {cause}", meanwhile)

    def answered(self, *engines: str) -> None:
        """A verdict came from these: whatever incident they had is over."""
        if not any(e in self._open for e in engines):  # the common path takes no lock
            return
        now = self.clock()
        with self._lock:
            for engine in engines:
                inc = self._open.pop(engine, None)
                if inc is not None:
                    log.log(inc.level, "%s answers again after %s failing: %s got no verdict "
                            "from it", engine, duration(now - inc.since), _counts(inc.kinds))

    def close(self) -> None:
        """At the stop: an incident still open is said with its count. Otherwise the log of a
        restart during an outage ends with the last reminder, and the messages since it, and
        how long it had lasted, are told nowhere."""
        now = self.clock()
        with self._lock:
            for engine, inc in self._open.items():
                log.log(inc.level, "%s still failing at the stop, after %s: %s got no verdict "
                        "from it", engine, duration(now - inc.since), _counts(inc.kinds))
            self._open.clear()
