"""The decision path shared by the milter and `spambridge check`:
message → scanner (under the hard cap) → outcome → policy → Decision, plus the one log line.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from spambridge import defaults, limits, policy
from spambridge.bridge import AsyncBridge, result_within
from spambridge.config import Config
from spambridge.health import Health
from spambridge.message import Envelope, MessageBuffer, clean
from spambridge.scanners import CAP_END, Scanner, ThreadedScanner
from spambridge.verdict import (
    Decision,
    ErrorKind,
    Outcome,
    ScanError,
    ScoreResult,
    Skipped,
    SkipReason,
)

log = logging.getLogger("spambridge")


@dataclass(frozen=True, slots=True)
class Evaluation:
    decision: Decision
    outcome: Outcome
    elapsed: float  # seconds from end of message to decision


class Pipeline:
    """Owns the scanner, the bridge to its loop and the config snapshot in use."""

    def __init__(self, scanner: Scanner, bridge: AsyncBridge, config: Config) -> None:
        self.scanner = scanner
        self.bridge = bridge
        self.config = config  # replaced whole on reload; read once per message
        self.observers: list[Callable[[Evaluation, MessageBuffer], None]] = []
        self.health = Health()
        self._inflight = 0
        self._answering = 0  # end-of-message callbacks between the decision and their return
        self._idle = threading.Condition()
        self._woken = False  # wake(): the nudger is stopping
        self._last_free = time.monotonic()
        # called once when a scan is not done after slow_after seconds (app.py:
        # PoolNudger.poke): a scan done sooner gives its libmilter worker back at once
        self.slow_scan: Callable[[], None] | None = None
        self.slow_after = 0.0
        self._submit = scanner.submit if isinstance(scanner, ThreadedScanner) else None
        # a long error is logged whole once, past the decision line's cut; `check` turns this
        # off: its `why:` line says every error whole already
        self.errors_in_full = True

    def scan(self, raw: bytes, envelope: Envelope, cap: float, spent: float = 0.0) -> Outcome:
        """The scanner's answer within `cap` seconds, whatever the scanner does: awaited on
        the bridge's loop, or, for a ThreadedScanner, waited on here in the milter's thread.
        `spent`: seconds of the cap already used since end of message (copying the message),
        so the reply still comes within the cap."""
        left = cap - spent
        if left <= 0:
            return ScanError(ErrorKind.TIMEOUT, self.scanner.name,
                             f"no verdict within {cap:g}s: copying the {len(raw)}-byte message "
                             f"for the scanner took {spent:.2f}s")

        async def capped() -> ScoreResult:
            CAP_END.set(asyncio.get_running_loop().time() + left)  # this task's context only
            async with asyncio.timeout(left):
                return await self.scanner.scan(raw, envelope)

        try:
            if self._submit is None:
                return self.bridge.run(capped(), left + defaults.REPLY_MARGIN,
                                       self.slow_scan, self.slow_after)
            fut = self._submit(raw, envelope)  # the scanner's own threads: no loop round trip
            try:
                return result_within(fut, left, self.slow_scan, self.slow_after)
            except TimeoutError:
                fut.cancel()  # still queued behind other scans: never starts
                raise
            except concurrent.futures.CancelledError:  # shut down with this scan queued
                raise ScanError(ErrorKind.UNAVAILABLE, self.scanner.name, "stopping") from None
        except ScanError as e:
            return e
        except TimeoutError:
            return ScanError(ErrorKind.TIMEOUT, self.scanner.name, f"no verdict within {cap:g}s")
        except Exception as e:  # a scanner bug must still end in a defined action
            log.exception("%s: internal scanner error: %r", envelope.log_id, e)
            return ScanError(ErrorKind.ERROR, self.scanner.name, f"internal: {type(e).__name__}")

    def evaluate(
        self,
        buf: MessageBuffer,
        envelope: Envelope,
        skip: SkipReason | None = None,
        failure: ScanError | None = None,
    ) -> Evaluation:
        cfg = self.config
        start = time.monotonic()
        with self._idle:
            self._inflight += 1
            if self._inflight == 1:  # the workers were idle until now
                self._last_free = time.monotonic()
                self._idle.notify_all()  # wakes wait_busy
        try:
            outcome: Outcome
            if skip is not None:
                outcome = Skipped(skip)
            elif failure is not None:
                outcome = failure
            elif buf.oversize:
                outcome = ScanError(ErrorKind.OVERSIZE, self.scanner.name,
                                    f"over max_scan_size {cfg.milter.max_scan_size}")
            else:
                outcome = self._render_and_scan(buf, envelope, cfg.milter.scan_timeout)
            decision = policy.decide(outcome, cfg.policy, local=envelope.local,
                                     authenticated=bool(envelope.auth_user),
                                     host=envelope.mta_host)
            ev = Evaluation(decision, outcome, time.monotonic() - start)
            self._report(ev, buf, envelope, cfg)
            return ev
        finally:
            with self._idle:
                self._inflight -= 1
                self._last_free = time.monotonic()
                self._idle.notify_all()

    def _report(self, ev: Evaluation, buf: MessageBuffer, envelope: Envelope,
                cfg: Config) -> None:
        """Say what was decided: the decision line, the incident log, the observers (metrics).
        The decision stands whatever fails here: raised to the end-of-message callback, a bug
        in one of them had the message decided again as on_error, so it was logged and counted
        twice and given an action its first decision line did not say."""
        try:
            log_decision(ev, buf, envelope, cfg.policy.tag_only, self.errors_in_full)
        except Exception:
            _report_failed(ev, envelope)
        try:
            self._track(ev)
        except Exception:
            _report_failed(ev, envelope)
        for observe in self.observers:
            try:
                observe(ev, buf)
            except Exception:
                _report_failed(ev, envelope)

    def _render_and_scan(self, buf: MessageBuffer, envelope: Envelope, cap: float) -> Outcome:
        """The message rebuilt for the scanner, and scanned. Out of memory for the copy (an
        address space limit, LimitAS=, with a big max_scan_size) is no bug: on_error, and
        limits.note names the limit, where it was an "internal error" with a traceback.
        The copy's time counts against the cap: milliseconds at the default max_scan_size, but
        about a second for a 200 MB message that a raised max_scan_size lets through."""
        start = time.monotonic()
        try:
            raw = buf.render(envelope.trace_fields())
        except MemoryError:
            return ScanError(ErrorKind.ERROR, "internal",
                             f"MemoryError: no memory to copy the {buf.size}-byte message")
        return self.scan(raw, envelope, cap, time.monotonic() - start)

    def _track(self, ev: Evaluation) -> None:
        """Tell the incident log whether the engines gave a verdict (health.py)."""
        out, d = ev.outcome, ev.decision
        failure = out.failed if isinstance(out, ScoreResult) else out
        if isinstance(failure, ScanError):
            limits.note(failure.detail)  # "Too many open files" is not spamd's fault
        if isinstance(out, ScoreResult):
            if out.failed is not None:
                self.health.failed(out.failed.engine, out.failed.kind.value, out.failed.detail,
                                   f"{out.engine} decides meanwhile (fallback)")
            self.health.answered(out.engine, self.scanner.name)
        elif isinstance(out, ScanError) and out.engine in INCIDENT_ENGINES and (
                out.kind is not ErrorKind.OVERSIZE):
            soft = f" (tag-only: {d.action.value})" if d.action is not d.intended else ""
            self.health.failed(out.engine, out.kind.value, out.detail,
                               f"mail gets {out.kind.policy_key} = {d.intended.value}{soft}")

    @property
    def inflight(self) -> int:
        """Messages between end of message and their decision right now."""
        return self._inflight

    @property
    def last_free(self) -> float:
        """The last moment (time.monotonic) a libmilter worker was known to be free: a
        message got its decision, or the first of a burst began after an idle spell."""
        return self._last_free

    def wait_busy(self, timeout: float | None) -> bool:
        """Sleep until a message is being decided (True), `timeout` passes (False), or wake()."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight > 0 or self._woken, timeout)

    def wake(self) -> None:
        """End every wait_busy, now and later: the thread waiting there is stopping, and a stop
        must not wait out its sleep (mail meets no milter meanwhile)."""
        with self._idle:
            self._woken = True
            self._idle.notify_all()

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """Around an end-of-message callback: decided and applied, the reply is libmilter's
        to write; shutdown (wait_idle) waits for this too, not only for the decision."""
        with self._idle:
            self._answering += 1
        try:
            yield
        finally:
            with self._idle:
                self._answering -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """At shutdown: let in-flight messages get their replies before the loop stops."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._inflight or self._answering:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True


# the engines whose failures are incidents (health.py): not the spool (a full disk fails only the
# messages too big for memory, each said at WARNING) nor an internal error (a bug: every one)
INCIDENT_ENGINES = frozenset({"spamd", "bayes", "spamd+bayes"})
DETAIL_CHARS = 200  # bytes of an error on a decision line; a longer one is also logged whole, once
_SAID_WHOLE: dict[str, None] = {}  # the long errors logged whole lately, oldest first
_SAID_WHOLE_MAX = 16  # two or three causes taking turns are each said once, not every time
_said_lock = threading.Lock()


def _first_time(detail: str) -> bool:
    """Whether `detail` was not logged whole lately (and note that it now is)."""
    with _said_lock:
        if detail in _SAID_WHOLE:
            return False
        _SAID_WHOLE[detail] = None
        if len(_SAID_WHOLE) > _SAID_WHOLE_MAX:
            del _SAID_WHOLE[next(iter(_SAID_WHOLE))]
        return True


def _report_failed(ev: Evaluation, envelope: Envelope) -> None:
    log.exception("%s: internal error reporting the decision (action=%s)", envelope.log_id,
                  ev.decision.action.value)


def log_decision(ev: Evaluation, buf: MessageBuffer, env: Envelope, tag_only: bool,
                 errors_in_full: bool = True) -> None:
    d = ev.decision
    score = d.shown or "-"
    would = f" would={d.intended.value}" if d.intended is not d.action else ""
    detail = whole = error = ""
    if isinstance(ev.outcome, ScanError) and ev.outcome.kind is not ErrorKind.OVERSIZE:
        error = ev.outcome.detail  # (an oversize message was skipped on purpose: no error)
    note = ev.outcome.note if isinstance(ev.outcome, ScoreResult) else ""
    fell_back = bool(note)  # e.g. fallback=spamd-timeout
    if fell_back:
        detail = f" {clean(note, 100, log=True)}"
        error = ev.outcome.why if isinstance(ev.outcome, ScoreResult) else ""  # why spamd failed
    if error:
        # always in double quotes, with a double quote in it escaped: repr() chose ' or " by
        # the text (grep 'error="' missed half the lines) and doubled every backslash
        quoted = clean(error, DETAIL_CHARS, log=True).replace('"', '\\"')
        detail += f' error="{quoted}"'
        cut = len(error.encode("utf-8", "surrogateescape")) > DETAIL_CHARS  # as clean
        # what to do is often at its end ("run as the milter's user"): said once, not per message
        if cut and errors_in_full and _first_time(error):
            whole = error
    # a message scanned without its fields past MAX_HEADERS says so here (one line per message)
    out = ev.outcome
    scanned = isinstance(out, ScoreResult) or (isinstance(out, ScanError) and (
        out.engine in INCIDENT_ENGINES and out.kind is not ErrorKind.OVERSIZE))
    if buf.unscanned and scanned:
        detail = f" unscanned_fields={buf.unscanned}{detail}"
    if isinstance(out, ScoreResult) and out.unread:  # built to hide text from the tokenizer
        detail = f" unread={out.unread}{detail}"
    # a scanner's failures are said as incidents (health.py), at WARNING; a message that failed
    # for another reason (its spool, a bug) is the admin's business on its own
    level = logging.WARNING if isinstance(ev.outcome, ScanError) and (
        ev.outcome.engine not in INCIDENT_ENGINES) else logging.INFO
    log.log(
        level,
        "%s: from=<%s> rcpts=%d size=%d engine=%s score=%s action=%s%s reason=%s ms=%d%s%s",
        env.log_id,
        # a quoted local part may hold spaces: written \x20, no sender can add a field
        # (`"x action=reject"@evil.example` counted as a reject with grep " action=reject")
        clean(env.sender.strip("<>"), log=True).replace(" ", "\\x20"),
        env.rcpt_count or len(env.recipients),
        buf.size,
        d.engine,
        score,
        d.action.value,
        would,
        d.reason or "-",
        round(ev.elapsed * 1000),
        " mode=tag-only" if tag_only else " mode=local" if env.local else "",
        detail,
    )
    if whole:
        log.warning("%s: the error in full: %s", env.log_id, clean(whole, 4000, log=True))
