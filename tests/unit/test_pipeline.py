"""Pipeline.scan with a scanner that works on its own threads (the local Bayes engine's form):
the milter thread waits on the scanner's future itself, under the same cap, and every failure
still ends in a typed outcome. The scanner here is a real ThreadPoolExecutor whose work we
control, to produce a hang on demand; the real Bayes engine goes through the same path in
tests/integration (test_bayes_milter.py, test_faults.py's locked database)."""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from spambridge.bridge import AsyncBridge
from spambridge.config import Config, MilterConfig, PolicyConfig
from spambridge.message import Envelope, MessageBuffer
from spambridge.milter.actions import apply
from spambridge.milter.session import Session
from spambridge.pipeline import Evaluation, Pipeline, log_decision
from spambridge.policy import decide
from spambridge.scanners import ThreadedScanner
from spambridge.verdict import Action, Decision, ErrorKind, FailAction, ScanError, ScoreResult


class PoolScanner:
    """Runs `work` on one thread of its own, as BayesScanner runs its scoring."""

    name = "bayes"

    def __init__(self, work: Callable[[bytes], ScoreResult]) -> None:
        self.work = work
        self.started: list[bytes] = []
        self.queued: list[bytes] = []  # handed to the pool (running or waiting)
        self.pool = ThreadPoolExecutor(max_workers=1)

    def _run(self, message: bytes) -> ScoreResult:
        self.started.append(message)
        return self.work(message)

    def submit(self, message: bytes, envelope: Envelope) -> Future[ScoreResult]:
        try:
            fut = self.pool.submit(self._run, message)
            self.queued.append(message)
            return fut
        except RuntimeError as e:
            raise ScanError(ErrorKind.UNAVAILABLE, self.name, str(e)) from e

    async def scan(self, message: bytes, envelope: Envelope) -> ScoreResult:
        raise AssertionError("a threaded scanner is waited on directly, not on the loop")

    async def aclose(self) -> None:
        pass


@pytest.fixture
def release() -> Iterator[threading.Event]:
    ev = threading.Event()
    yield ev
    ev.set()  # let a hung work item end, so the pool's thread exits


def hung(release: threading.Event) -> PoolScanner:
    return PoolScanner(lambda m: release.wait(60) and ScoreResult("bayes", 0.0))


def occupy(p: Pipeline, scanner: PoolScanner) -> threading.Thread:
    """Start one scan in a thread and wait until it holds the pool's only worker."""
    first = threading.Thread(target=p.scan, args=(b"first", Envelope(), 30.0))
    first.start()
    deadline = time.monotonic() + 10
    while not scanner.started:
        assert time.monotonic() < deadline, "the first scan never started"
        time.sleep(0.01)
    return first


def message_from_client(p: Pipeline) -> Session:
    """A session of `p` with an SMTP client connected and a message from it begun."""
    s = Session(p)
    s.connect("client.example.net", "192.0.2.7", "mx.example.org", "MTA-v4", 40312)
    s.start_message("<a@example.net>", "", False)
    return s


def pipeline(scanner: PoolScanner) -> Pipeline:
    # the bridge's loop is never started: the threaded path must not need it
    assert isinstance(scanner, ThreadedScanner)
    return Pipeline(scanner, AsyncBridge(), Config())


def test_the_answer_comes_straight_from_the_scanners_thread() -> None:
    scanner = PoolScanner(lambda m: ScoreResult("bayes", 0.99))
    assert pipeline(scanner).scan(b"x", Envelope(), 2.0) == ScoreResult("bayes", 0.99)


def test_a_scan_error_is_the_outcome() -> None:
    def fail(message: bytes) -> ScoreResult:
        raise ScanError(ErrorKind.UNAVAILABLE, "bayes", "database is locked")

    outcome = pipeline(PoolScanner(fail)).scan(b"x", Envelope(), 2.0)
    assert outcome == ScanError(ErrorKind.UNAVAILABLE, "bayes", "database is locked")


def test_a_bug_in_the_scanner_is_an_error_outcome(caplog: pytest.LogCaptureFixture) -> None:
    """on_error for the message, and the bug's own text in the log (the decision line says
    only "internal: KeyError"): what a bug report needs."""
    def bug(message: bytes) -> ScoreResult:
        raise KeyError("oops")

    caplog.set_level(logging.INFO, logger="spambridge")
    outcome = pipeline(PoolScanner(bug)).scan(b"x", Envelope(queue_id="4BUG"), 2.0)
    assert isinstance(outcome, ScanError) and outcome.kind is ErrorKind.ERROR
    assert outcome.detail == "internal: KeyError"
    assert [r.getMessage() for r in caplog.records] == [
        "4BUG: internal scanner error: KeyError('oops')"]
    assert caplog.records[0].exc_info is not None  # where the bug is: its traceback


def test_a_hung_scan_times_out_at_the_cap_and_a_queued_one_never_starts(
        release: threading.Event) -> None:
    scanner = hung(release)
    p = pipeline(scanner)
    first = occupy(p, scanner)
    t = time.monotonic()
    outcome = p.scan(b"second", Envelope(), 0.3)
    waited = time.monotonic() - t
    assert isinstance(outcome, ScanError) and outcome.kind is ErrorKind.TIMEOUT
    # the scan waits the cap itself (slack here for a loaded machine; tests/integration holds
    # the milter's cap + 0.5 s contract end to end)
    assert 0.3 <= waited < 0.3 + 2.0
    release.set()
    first.join(10)
    scanner.pool.shutdown(wait=True)  # whatever was still queued has run by now
    assert scanner.started == [b"first"]  # the timed-out scan was dropped from the queue


def test_a_scan_queued_when_the_scanner_stops_is_unavailable(release: threading.Event) -> None:
    """Shutting the pool down with the scan still queued (cancel_futures) ends the wait at
    once, as unavailable, not as a scanner bug."""
    scanner = hung(release)
    p = pipeline(scanner)
    first = occupy(p, scanner)
    outcomes: list[object] = []
    second = threading.Thread(target=lambda: outcomes.append(p.scan(b"second", Envelope(), 30)))
    second.start()
    deadline = time.monotonic() + 10
    while len(scanner.queued) < 2:  # queued behind the first
        assert time.monotonic() < deadline, "the second scan was never queued"
        time.sleep(0.01)
    scanner.pool.shutdown(wait=False, cancel_futures=True)
    second.join(10)
    assert outcomes == [ScanError(ErrorKind.UNAVAILABLE, "bayes", "stopping")]
    release.set()
    first.join(10)


def test_a_scanner_shut_down_is_unavailable() -> None:
    scanner = PoolScanner(lambda m: ScoreResult("bayes", 0.0))
    scanner.pool.shutdown()
    outcome = pipeline(scanner).scan(b"x", Envelope(), 2.0)
    assert isinstance(outcome, ScanError) and outcome.kind is ErrorKind.UNAVAILABLE


def test_a_long_error_is_logged_whole_once(caplog: pytest.LogCaptureFixture) -> None:
    """The decision line cuts an error at 200 characters, and what to do is often at its end
    (a database train left unreadable: "run as the milter's user or in its group"): the whole
    error is logged once, not on every message."""
    err = ScanError(ErrorKind.UNAVAILABLE, "bayes",
                    "/var/lib/spambridge/bayes.sqlite: cannot open the Bayes database: " + "x" * 200
                    + ": run as the milter's user or in its group")
    ev = Evaluation(decide(err, Config().policy), err, 0.001)
    buf = MessageBuffer(1000, 1000)
    caplog.set_level(logging.INFO, logger="spambridge")
    for qid in ("4ABC1", "4ABC2", "4ABC3"):
        log_decision(ev, buf, Envelope(queue_id=qid), False)
    lines = [r.getMessage() for r in caplog.records]
    assert len([m for m in lines if "reason=unavailable" in m]) == 3
    assert all("in its group" not in m for m in lines if "reason=unavailable" in m)
    whole = [m for m in lines if "in its group" in m]
    assert whole == [f"4ABC1: the error in full: {err.detail}"]
    # two causes taking turns (spamd's error, then the fallback's): each said once
    other = ScanError(ErrorKind.UNAVAILABLE, "bayes", err.detail.replace("x" * 200, "y" * 200))
    caplog.clear()
    for n, e in enumerate([other, err, other, err]):
        log_decision(Evaluation(decide(e, Config().policy), e, 0.001), buf,
                     Envelope(queue_id=f"5ABC{n}"), False)
    assert [r.getMessage() for r in caplog.records if "in full" in r.getMessage()] == [
        f"5ABC0: the error in full: {other.detail}"]


def test_an_error_cut_for_its_8bit_bytes_is_logged_whole(caplog: pytest.LogCaptureFixture) -> None:
    """The decision line cuts at 200 bytes, not characters: an error of fewer characters but
    more bytes (a database under a non-ASCII path) lost its end and was never logged whole."""
    detail = ("/srv/почта/" * 8 + "bayes.sqlite: cannot open the Bayes database: readonly"
              ": run as the milter's user")
    assert len(detail) <= 200 < len(detail.encode())
    err = ScanError(ErrorKind.UNAVAILABLE, "bayes", detail)
    ev = Evaluation(decide(err, Config().policy), err, 0.001)
    caplog.set_level(logging.INFO, logger="spambridge")
    log_decision(ev, MessageBuffer(1000, 1000), Envelope(queue_id="4ABC9"), False)
    assert [r for r in caplog.records if "the error in full" in r.getMessage()]


@pytest.mark.parametrize(("sender", "logged"), [
    ("<jörg@bücher.example>", "from=<jörg@bücher.example> "),  # SMTPUTF8: as Postfix logs it
    ("<j\udcf6rg@example.net>", "from=<j\\xf6rg@example.net> "),  # not UTF-8: escaped
    ("<a\x85b\u2028c\u202ed@example.net>", "from=<a?b?c?d@example.net> "),  # C1, separators, bidi
    ("<a\r\nb@example.net>", "from=<a??b@example.net> "),
    # a quoted local part with spaces cannot add fields a grep would count
    ('<"x action=reject reason=timeout"@evil.example>',
     'from=<"x\\x20action=reject\\x20reason=timeout"@evil.example> '),
])
def test_the_sender_is_logged_as_text_an_admin_can_grep(
        caplog: pytest.LogCaptureFixture, sender: str, logged: str) -> None:
    """An SMTPUTF8 sender is logged as the UTF-8 text Postfix logs for the same message (it
    used to be \\xc3\\xb6 escapes, so one grep did not find both lines); what is not
    printable still cannot forge or bend a log line."""
    caplog.set_level(logging.INFO, logger="spambridge")
    outcome = ScoreResult("bayes", 0.1)
    log_decision(Evaluation(decide(outcome, Config().policy), outcome, 0.001),
                 MessageBuffer(1000, 1000), Envelope(queue_id="4ABC", sender=sender), False)
    [line] = [r.getMessage() for r in caplog.records]
    assert logged in line
    assert line.count(" action=") == line.count(" reason=") == 1  # the decision's own


def test_an_error_under_a_non_ascii_path_is_logged_readable(
        caplog: pytest.LogCaptureFixture) -> None:
    detail = "/srv/почта/bayes.sqlite: cannot open the Bayes database: readonly"
    err = ScanError(ErrorKind.UNAVAILABLE, "bayes", detail)
    caplog.set_level(logging.INFO, logger="spambridge")
    log_decision(Evaluation(decide(err, Config().policy), err, 0.001),
                 MessageBuffer(1000, 1000), Envelope(queue_id="4ABC"), False)
    [line] = [r.getMessage() for r in caplog.records]
    assert f'error="{detail}"' in line


@pytest.mark.parametrize(("detail", "logged"), [
    ("/var/lib/spambridge/bayes.sqlite: database is locked",
     'error="/var/lib/spambridge/bayes.sqlite: database is locked"'),
    ("127.0.0.1:783: Connect call failed ('127.0.0.1', 783)",
     'error="127.0.0.1:783: Connect call failed (\'127.0.0.1\', 783)"'),
    ("127.0.0.1:783: BadResponse: b'HTTP/1.0 200 OK\\r\\n\"x\"'",
     'error="127.0.0.1:783: BadResponse: b\'HTTP/1.0 200 OK\\r\\n\\"x\\"\'"'),
])
def test_the_error_field_is_always_in_double_quotes(
        caplog: pytest.LogCaptureFixture, detail: str, logged: str) -> None:
    """`grep 'error="'` finds every failed message, and the text reads as the engine said it:
    the field was repr()'d, in single or double quotes as the text happened to need, with
    every backslash doubled (spamd's `\\r\\n` became `\\\\r\\\\n`)."""
    err = ScanError(ErrorKind.ERROR, "spamd", detail)
    caplog.set_level(logging.INFO, logger="spambridge")
    log_decision(Evaluation(decide(err, Config().policy), err, 0.001),
                 MessageBuffer(1000, 1000), Envelope(queue_id="4ABC"), False)
    [line] = [r.getMessage() for r in caplog.records]
    assert line.endswith(f" {logged}"), line


def test_only_failures_carry_an_error(caplog: pytest.LogCaptureFixture) -> None:
    """`grep -c 'error='` counts the messages a scanner or the spool failed on: an oversize
    message, skipped on purpose (and counted as skipped by the metrics), carried
    error="over max_scan_size 512000" too."""
    caplog.set_level(logging.INFO, logger="spambridge")
    for n, outcome in enumerate([
            ScanError(ErrorKind.OVERSIZE, "spamd", "over max_scan_size 512000"),
            ScanError(ErrorKind.TIMEOUT, "spamd", "no verdict within 10s"),
            ScanError(ErrorKind.ERROR, "spool", "spool_dir /var/tmp: No space left")]):
        log_decision(Evaluation(decide(outcome, Config().policy), outcome, 0.001),
                     MessageBuffer(1000, 1000), Envelope(queue_id=f"4ABC{n}"), False)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].endswith(" reason=oversize ms=1"), lines[0]
    assert [ln for ln in lines if "error=" in ln] == lines[1:]


def test_the_decision_lines_level_says_whether_the_admin_must_look(
        caplog: pytest.LogCaptureFixture) -> None:
    """A message that failed on its own (its spool, a bug) is a warning; an engine's failure
    is an incident said at WARNING by its own lines (test_incidents.py), its messages at INFO;
    an oversize message skipped on purpose, and a normal verdict, are info: a big attachment
    must not page anyone, nor fill syslog's mail.warn."""
    caplog.set_level(logging.INFO, logger="spambridge")
    buf = MessageBuffer(1000, 1000)
    cases: list[tuple[ScanError | ScoreResult, int]] = [
        (ScanError(ErrorKind.OVERSIZE, "spamd", "over max_scan_size 1000"), logging.INFO),
        (ScoreResult("spamd", 1.0), logging.INFO),
        (ScanError(ErrorKind.TIMEOUT, "spamd", "no verdict within 10s"), logging.INFO),
        (ScoreResult("bayes", 0.1, failed=ScanError(ErrorKind.TIMEOUT, "spamd")), logging.INFO),
        (ScanError(ErrorKind.ERROR, "spool", "spool_dir /var/tmp: No space left"),
         logging.WARNING),
        (ScanError(ErrorKind.ERROR, "internal", "KeyError()"), logging.WARNING),
    ]
    for outcome, level in cases:
        caplog.clear()
        log_decision(Evaluation(decide(outcome, Config().policy), outcome, 0.001), buf,
                     Envelope(queue_id="4ABC"), False)
        assert [r.levelno for r in caplog.records] == [level], outcome


class NeverDone(PoolScanner):
    """Its scans never finish; `waited` records how long each one was waited on."""

    def __init__(self) -> None:
        super().__init__(lambda m: ScoreResult("bayes", 0.0))
        self.waited: list[float | None] = []

    def submit(self, message: bytes, envelope: Envelope) -> Future[ScoreResult]:
        waited = self.waited

        class Hung(Future[ScoreResult]):
            def result(self, timeout: float | None = None) -> ScoreResult:
                waited.append(timeout)
                raise TimeoutError

        return Hung()


def test_the_scanners_future_is_waited_on_for_the_cap_exactly() -> None:
    """The cap is the admin's scan_timeout, the bound Postfix's milter timeouts are set
    against: a hung Bayes scan must end in on_timeout at the cap, not some multiple of it."""
    scanner = NeverDone()
    outcome = pipeline(scanner).scan(b"x", Envelope(), 7.5)
    assert scanner.waited == [7.5]
    assert outcome == ScanError(ErrorKind.TIMEOUT, "bayes", "no verdict within 7.5s")


class SlowCopy(MessageBuffer):
    """A message whose copy for the scanner takes `seconds`, as a 200 MB one does (about
    1 to 2 s here) when an admin raises max_scan_size."""

    def __init__(self, seconds: float) -> None:
        super().__init__(1 << 20, 1 << 20)
        self.seconds = seconds

    def render(self, received: bytes = b"") -> bytes:
        time.sleep(self.seconds)
        return super().render(received)


def test_copying_a_big_message_counts_against_the_cap() -> None:
    """The cap runs from end of message: a scan after a copy that took 0.4 s of a 1 s cap
    is waited on for what is left, so a hung scanner still gets its reply by the cap (it
    came 1.4 s late for a 200 MB message when only the scan was timed)."""
    scanner = NeverDone()
    p = pipeline(scanner)
    p.config = replace(p.config, milter=replace(p.config.milter, scan_timeout=1.0))
    ev = p.evaluate(SlowCopy(0.4), Envelope())
    [waited] = scanner.waited
    assert waited is not None and 0 < waited <= 0.6
    assert ev.outcome == ScanError(ErrorKind.TIMEOUT, "bayes", "no verdict within 1s")


def test_a_copy_longer_than_the_cap_is_a_timeout_without_a_scan() -> None:
    scanner = PoolScanner(lambda m: ScoreResult("bayes", 0.0))
    p = pipeline(scanner)
    p.config = replace(p.config, milter=replace(p.config.milter, scan_timeout=0.2),
                       policy=replace(p.config.policy, on_timeout=FailAction.TEMPFAIL))
    ev = p.evaluate(SlowCopy(0.3), Envelope())
    assert isinstance(ev.outcome, ScanError) and ev.outcome.kind is ErrorKind.TIMEOUT
    assert re.fullmatch(r"no verdict within 0\.2s: copying the \d+-byte message for the "
                        r"scanner took 0\.\d\ds", ev.outcome.detail), ev.outcome.detail
    assert ev.decision.action is Action.TEMPFAIL  # on_timeout, as for a hung scanner
    assert scanner.queued == []  # never handed to the scanner


def test_a_long_copy_leaves_bayes_its_part_of_the_cap_under_spamd_and_bayes() -> None:
    """spamd+bayes, spamd hung, the copy of a big message taking 0.6 s of a 1 s cap: spamd
    gets its 0.7 s share less the copy, and Bayes decides in the part of the cap that is its
    own. spamd's share was counted from the scan's start, so it ran into the cap, and the
    message had on_timeout instead of a Bayes verdict."""
    from stalls import Timed

    from spambridge.scanners.fallback import FallbackScanner

    bridge = AsyncBridge().start()
    try:
        scanner = FallbackScanner(Timed("spamd", 30.0), Timed("bayes", 0.0), 0.7, 1.0)
        p = Pipeline(scanner, bridge, Config())
        p.config = replace(p.config, milter=replace(p.config.milter, scan_timeout=1.0))
        start = time.monotonic()
        ev = p.evaluate(SlowCopy(0.6), Envelope())
        took = time.monotonic() - start
    finally:
        bridge.stop(timeout=1.0)
    assert isinstance(ev.outcome, ScoreResult) and ev.outcome.engine == "bayes", ev.outcome
    assert ev.outcome.note == "fallback=spamd-timeout"
    assert re.search(r"0\.7s share, 0\.6\ds of the cap gone before the scan", ev.outcome.why)
    assert took < 1.0 + 0.25  # within the cap and its reply margin


def test_a_pool_cut_off_after_a_long_copy_still_says_which_server_had_it() -> None:
    """A spamd pool whose first member is black-holed, after a copy that took 0.4 s of a
    1 s cap: the pool ends the request at the caller's cap, which the copy brought forward,
    and says nobody had the message (on_unavailable). Its own end was counted from the
    scan's start, so the caller's cap came first: "no verdict", on_timeout."""
    from harness import free_port
    from spamdfakes import BlackHole

    from spambridge.config import SpamdConfig
    from spambridge.scanners.spamd import SpamdScanner

    hole = BlackHole()
    bridge = AsyncBridge().start()
    try:
        cfg = SpamdConfig(servers=(("127.0.0.1", hole.port), ("127.0.0.1", free_port())),
                          connect_timeout=5.0)
        p = Pipeline(SpamdScanner(cfg, 1.0), bridge, Config())
        p.config = replace(p.config, milter=replace(p.config.milter, scan_timeout=1.0))
        ev = p.evaluate(SlowCopy(0.4), Envelope())
    finally:
        bridge.stop(timeout=1.0)
        hole.close()
    assert isinstance(ev.outcome, ScanError), ev.outcome
    assert ev.outcome.kind is ErrorKind.UNAVAILABLE, ev.outcome
    assert ev.outcome.detail == (f"no connection to 127.0.0.1:{hole.port} within the 1s cap")


def test_only_a_scan_still_running_after_slow_after_pokes_the_worker_pool(
        release: threading.Event) -> None:
    """The pool nudger's poke (slow_scan) is for a scan that holds its libmilter worker: a
    quick one gives the worker back itself, and poking at every scan's start cost a tenth of
    the milter's CPU at C=4 (docs/reliability.md, "The pool nudger's cost"). A slow scan
    pokes once, and still gets its answer, or its timeout at the cap."""
    pokes: list[float] = []
    quick = pipeline(PoolScanner(lambda m: ScoreResult("bayes", 0.1)))
    quick.slow_scan, quick.slow_after = lambda: pokes.append(time.monotonic()), 0.5
    for _ in range(20):
        assert quick.scan(b"x", Envelope(), 5.0) == ScoreResult("bayes", 0.1)
    assert pokes == []

    def slowly(message: bytes) -> ScoreResult:
        time.sleep(0.3)
        return ScoreResult("bayes", 0.2)

    slow = pipeline(PoolScanner(slowly))
    slow.slow_scan, slow.slow_after = lambda: pokes.append(time.monotonic()), 0.05
    start = time.monotonic()
    assert slow.scan(b"x", Envelope(), 5.0) == ScoreResult("bayes", 0.2)
    assert len(pokes) == 1 and pokes[0] - start >= 0.05

    pokes.clear()
    scanner = hung(release)
    stuck = pipeline(scanner)
    stuck.slow_scan, stuck.slow_after = lambda: pokes.append(time.monotonic()), 0.05
    start = time.monotonic()
    outcome = stuck.scan(b"x", Envelope(), 0.3)
    waited = time.monotonic() - start
    assert outcome == ScanError(ErrorKind.TIMEOUT, "bayes", "no verdict within 0.3s")
    assert len(pokes) == 1 and 0.3 <= waited < 0.3 + 2.0  # the cap, not slow_after + the cap


def test_a_slow_scan_on_the_loop_pokes_once_too() -> None:
    """spamd's scans run on the bridge's loop: the same single poke once one is slow."""
    import asyncio

    class Sleepy:
        name = "spamd"

        def __init__(self, seconds: float) -> None:
            self.seconds = seconds

        async def scan(self, message: bytes, envelope: Envelope) -> ScoreResult:
            await asyncio.sleep(self.seconds)
            return ScoreResult("spamd", 1.0)

        async def aclose(self) -> None:
            pass

    pokes: list[str] = []
    bridge = AsyncBridge().start()
    try:
        for seconds, expected in ((0.0, []), (0.3, ["poke"])):
            p = Pipeline(Sleepy(seconds), bridge, Config())
            p.slow_scan, p.slow_after = lambda: pokes.append("poke"), 0.1
            assert p.scan(b"x", Envelope(), 5.0) == ScoreResult("spamd", 1.0)
            assert pokes == expected
    finally:
        bridge.stop(timeout=1.0)


def test_an_error_cut_inside_a_character_ends_at_the_last_whole_one(
        caplog: pytest.LogCaptureFixture) -> None:
    """The decision line cuts an error at 200 bytes; under a non-ASCII path the cut fell inside
    a character, and the line ended in a stray escape ('…/почта/по\\xd1') that names no byte
    of any file: the line ends at the last whole character (the error follows in full)."""
    detail = "/var/mail/" + "почта/" * 30 + "bayes.sqlite: cannot open the Bayes database"
    assert detail.encode()[:200].decode("utf-8", "replace").endswith("\ufffd")
    err = ScanError(ErrorKind.UNAVAILABLE, "bayes", detail)
    caplog.set_level(logging.INFO, logger="spambridge")
    log_decision(Evaluation(decide(err, Config().policy), err, 0.001),
                 MessageBuffer(1000, 1000), Envelope(queue_id="4ABC"), False)
    [line] = [r.getMessage() for r in caplog.records if "4ABC: from=" in r.getMessage()]
    logged = re.search(r'error="([^"]*)"', line)
    assert logged and "\\x" not in logged.group(1), line
    assert detail.startswith(logged.group(1)) and len(logged.group(1).encode()) >= 199


@pytest.mark.parametrize("tag_only", [False, True])
def test_the_sites_own_mail_is_tagged_by_its_fields_never_in_its_subject(tag_only: bool) -> None:
    """With non_smtpd_milters = opendkim, spambridge the mail from sendmail(1) is signed
    before spambridge sees it: spam among it got "[SPAM] " put on the signed Subject and went
    out with a broken signature (a DMARC reject at the recipient). It keeps its Subject and is
    tagged by its X-Spam-* fields, as is SMTP-authenticated mail; the same spam from any
    other SMTP client still gets the Subject tag."""
    policy = dataclasses.replace(Config().policy, subject_tag="[SPAM]", tag_only=tag_only)
    p = Pipeline(PoolScanner(lambda m: ScoreResult("bayes", 0.999)), AsyncBridge(),
                 Config(policy=policy))

    def decide_for(env: Envelope) -> Decision:
        buf = MessageBuffer(1 << 20, 1 << 20)
        buf.add_header("Subject", b"Invoice 4711")
        buf.add_body(b"pay now\r\n")
        return p.evaluate(buf, env).decision

    local = decide_for(Envelope(local=True))
    assert (local.action, local.intended) == (Action.TAG, Action.REJECT)
    assert local.subject_prefix == "" and ("X-Spam-Flag", "YES") in local.headers
    assert decide_for(Envelope()).subject_prefix == ("[SPAM]" if tag_only else "")
    # SMTP AUTH (scanned with skip_authenticated = false): opendkim signs it first too
    authenticated = decide_for(Envelope(auth_user="carol"))
    assert authenticated.action == (Action.TAG if tag_only else Action.REJECT)
    assert authenticated.subject_prefix == "" and ("X-Spam-Flag", "YES") in authenticated.headers


def decision_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if ": from=<" in r.getMessage()]


@pytest.mark.parametrize(("tag_only", "local", "shown"), [
    (False, False, "action=reject reason=reject"),
    (False, True, "action=tag would=reject reason=reject mode=local"),
    (True, False, "action=tag would=reject reason=reject mode=tag-only"),
    # while the trial runs, tag-only is why nothing is refused, local mail included
    (True, True, "action=tag would=reject reason=reject mode=tag-only"),
])
def test_the_decision_line_says_why_spam_was_not_refused(
        caplog: pytest.LogCaptureFixture, tag_only: bool, local: bool, shown: str) -> None:
    """GTUBE through the pipeline: refused, or delivered tagged with `would=reject` and the
    reason it was not refused (README: the tag-only line, and mail from sendmail(1) that is
    never bounced to its own sender)."""
    scanner = PoolScanner(lambda m: ScoreResult("spamd", 1000.0, ("GTUBE",)))
    scanner.name = "spamd"
    cfg = Config(policy=replace(PolicyConfig(), tag_only=tag_only))
    caplog.set_level(logging.INFO, logger="spambridge")
    buf = MessageBuffer(1000, 1000)
    try:
        d = Pipeline(scanner, AsyncBridge(), cfg).evaluate(
            buf, Envelope(queue_id="4GTUBE", local=local)).decision
    finally:
        buf.close()
        scanner.pool.shutdown()
    [line] = decision_lines(caplog)
    assert re.sub(r" ms=\d+", "", line).endswith(" engine=spamd score=1000.0 " + shown), line
    assert (str(d.reply) if d.reply else None) == (
        "550 5.7.1 Message rejected as spam" if shown.startswith("action=reject") else None)


@pytest.mark.parametrize("engine", ["bayes", "spamd+bayes"])
def test_a_message_too_big_to_scan_names_the_engine_in_charge(
        caplog: pytest.LogCaptureFixture, engine: str) -> None:
    """`grep engine=bayes` finds every message the Bayes engine was in charge of, those
    skipped for their size too, as the README's oversize line names spamd for engine spamd."""
    scanner = PoolScanner(lambda m: ScoreResult("bayes", 0.0))
    scanner.name = engine
    caplog.set_level(logging.INFO, logger="spambridge")
    buf = MessageBuffer(1000, 1000)
    buf.add_body(b"x" * 2000)
    try:
        pipeline(scanner).evaluate(buf, Envelope(queue_id="4BIG"))
    finally:
        buf.close()
        scanner.pool.shutdown()
    [line] = decision_lines(caplog)
    assert f" engine={engine} score=- action=accept reason=oversize " in line, line
    assert scanner.queued == []  # not scanned


def test_mail_not_to_be_scanned_is_not_refused_for_the_spool_it_did_not_need(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A body bigger than spool_memory spills to spool_dir; with that directory gone (or
    full) a message to be scanned gets on_error. Mail from an SMTP-authenticated user is not
    scanned (skip_authenticated): the failed spill must not refuse it."""
    scanner = PoolScanner(lambda m: ScoreResult("bayes", 0.0))
    cfg = Config(milter=MilterConfig(spool_dir=str(tmp_path / "gone"), spool_memory=100),
                 policy=replace(PolicyConfig(), on_error=FailAction.REJECT))
    p = Pipeline(scanner, AsyncBridge(), cfg)
    caplog.set_level(logging.INFO, logger="spambridge")
    replies = []
    for qid, user in (("4ANON", ""), ("4AUTH", "alice")):
        s = Session(p)
        s.connect("client.example.net", "192.0.2.7", "mx.example.org", "MTA-v4", 40312)
        s.hello("client.example.net")
        s.start_message("<a@example.net>", user, False)
        s.set_queue_id(qid)
        s.add_recipient("<b@example.org>")
        s.add_header("Subject", b"the quarterly report")
        s.add_body(b"x" * 1000)
        try:
            d = s.finish().decision
        finally:
            s.end_message()
        replies.append(str(d.reply) if d.reply else d.action.value)
    scanner.pool.shutdown()
    assert replies == ["550 5.7.1 Message could not be checked for spam", "accept"]
    anon, auth = decision_lines(caplog)
    assert anon.startswith("4ANON: ") and " action=reject reason=error " in anon, anon
    assert "engine=spool" in anon and "gone" in anon
    assert auth.startswith("4AUTH: ") and " action=accept reason=authenticated " in auth, auth
    assert scanner.queued == []


class Ctx:
    """Records what actions.apply asks of libmilter."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def addheader(self, field: str, value: str, idx: int = -1) -> None:
        self.calls.append(("add", field, value))

    def chgheader(self, field: str, idx: int, value: str | None) -> None:
        self.calls.append(("chg", field, idx, value))

    def setreply(self, rcode: str, xcode: str | None = None, msg: str | None = None) -> None:
        self.calls.append(("reply", rcode, xcode, msg))

    def progress(self) -> None:
        """A no-op packet to the MTA."""


@pytest.mark.parametrize(("score", "shown"), [
    (1000.0, "action=reject reason=reject"), (7.2, "action=tag reason=spam")])
def test_a_flood_of_header_fields_does_not_buy_spam_a_pass(
        caplog: pytest.LogCaptureFixture, score: float, shown: str) -> None:
    """10,001 lines of `X-P: a` (70 kB) before a spam body made the message oversize, so it was
    accepted unscanned (`X-Spam-Status: No, unchecked=oversize`). Now the first MAX_HEADERS
    fields and the body are scanned and the spam gets its verdict: the 550, or the tag; the
    Subject after the flood is rewritten (not a second one added), the forged X-Spam-Status
    after it removed, and the decision line says how many fields the scan left out."""
    seen: list[bytes] = []

    def scan(m: bytes) -> ScoreResult:
        seen.append(m)
        return ScoreResult("spamd", score if b"cheap pills" in m else 0.0, ("SPAM_BODY",))

    scanner = PoolScanner(scan)
    scanner.name = "spamd"
    cfg = Config(milter=MilterConfig(engine="spamd"),
                 policy=replace(PolicyConfig(), subject_tag="[SPAM]"))
    caplog.set_level(logging.INFO, logger="spambridge")
    s = message_from_client(Pipeline(scanner, AsyncBridge(), cfg))
    s.set_queue_id("4FLOOD")
    s.add_recipient("<b@example.org>")
    for _ in range(10_001):
        s.add_header("X-P", b"a")
    s.add_header("X-Spam-Status", b"No, score=-9.9 forged")
    s.add_header("Subject", b"offer")
    s.add_body(b"cheap pills, order now\r\n")
    try:
        d = s.finish().decision
        ctx = Ctx()
        apply(ctx, d, s.owned_headers(), s.subject(), "4FLOOD")
    finally:
        s.end_message()
        scanner.pool.shutdown()
    [line] = decision_lines(caplog)
    assert f" engine=spamd score={score:.1f} {shown} " in line, line
    assert line.endswith(" unscanned_fields=2"), line
    [raw] = seen
    assert raw.count(b"X-P: a\r\n") == 10_000 and raw.endswith(b"cheap pills, order now\r\n")
    if d.action is Action.REJECT:
        assert ctx.calls == [("reply", "550", "5.7.1", "Message rejected as spam")]
        return
    status = dict(d.headers)["X-Spam-Status"]
    assert status.startswith("Yes, score=7.2 ") and "unchecked" not in status
    assert ("chg", "X-Spam-Status", 1, None) in ctx.calls
    assert ("add", "X-Spam-Status", status) in ctx.calls
    assert ("chg", "Subject", 1, "[SPAM] offer") in ctx.calls
    assert not [c for c in ctx.calls if c[:2] == ("add", "Subject")]


def test_no_memory_to_copy_the_message_is_on_error_and_names_the_limit(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Under an address space limit (LimitAS=) with a big max_scan_size, rebuilding a 20 MB
    message for the scanner raised MemoryError out of the pipeline: 'ERROR internal error at
    end of message' with a traceback, as for a bug. Now on_error, and the limit named."""
    from spambridge import limits

    monkeypatch.setattr(limits, "_said", {})
    scanner = PoolScanner(lambda m: ScoreResult("bayes", 0.0))
    p = Pipeline(scanner, AsyncBridge(), Config())
    buf = MessageBuffer(1000, 1000)
    buf.add_body(b"hello\n")

    def no_memory(received: bytes = b"") -> bytes:
        raise MemoryError

    monkeypatch.setattr(buf, "render", no_memory)
    with caplog.at_level(logging.INFO, logger="spambridge"):
        ev = p.evaluate(buf, Envelope(queue_id="4ABC"))
    assert ev.decision.action is Action.ACCEPT and ev.decision.reason == "error"
    assert scanner.started == []
    lines = [r.getMessage() for r in caplog.records]
    assert any(" error=\"MemoryError: no memory to copy" in ln for ln in lines), lines
    assert any(ln.startswith("out of memory") and "LimitAS=" in ln for ln in lines), lines
    assert not any(r.exc_info for r in caplog.records)


def test_spool_memory_zero_with_its_directory_gone_is_on_error_not_a_crash(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With `spool_memory = 0` every body goes to spool_dir from MAIL FROM on: a directory
    gone (or full) is that message's on_error, named, and no more body is asked for (SKIP);
    never an exception in the MAIL FROM callback (pymilter's 451 "untrapped exception")."""
    scanner = PoolScanner(lambda m: ScoreResult("bayes", 0.0))
    cfg = Config(milter=MilterConfig(spool_dir=str(tmp_path / "gone"), spool_memory=0),
                 policy=replace(PolicyConfig(), on_error=FailAction.REJECT))
    p = Pipeline(scanner, AsyncBridge(), cfg)
    caplog.set_level(logging.INFO, logger="spambridge")
    s = message_from_client(p)
    s.set_queue_id("4ZERO")
    s.add_recipient("<b@example.org>")
    s.add_header("Subject", b"the quarterly report")
    wanted = s.add_body(b"x" * 10)
    try:
        d = s.finish().decision
    finally:
        s.end_message()
        scanner.pool.shutdown()
    assert not wanted
    assert str(d.reply) == "550 5.7.1 Message could not be checked for spam"
    [line] = decision_lines(caplog)
    assert " action=reject reason=error " in line and "engine=spool" in line, line
    assert f"spool_dir {tmp_path / 'gone'}: [Errno 2]" in line, line
    assert scanner.queued == []


def test_a_failed_spill_to_the_system_temporary_directory_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """With spool_dir unset a failed spill names the temporary directory: "spool_dir : [Errno
    2] …" would send the admin to a setting that is empty, not to /tmp or $TMPDIR."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))
    scanner = PoolScanner(lambda m: ScoreResult("bayes", 0.0))
    p = Pipeline(scanner, AsyncBridge(), Config(milter=MilterConfig(spool_memory=100)))
    caplog.set_level(logging.INFO, logger="spambridge")
    s = message_from_client(p)
    s.add_header("Subject", b"the quarterly report")
    assert not s.add_body(b"x" * 1000)
    try:
        s.finish()
    finally:
        s.end_message()
        scanner.pool.shutdown()
    [line] = decision_lines(caplog)
    assert 'error="spool_dir (the temporary directory): [Errno 2]' in line, line


def test_a_scanner_that_holds_on_past_its_cancellation_is_still_cut_at_the_cap() -> None:
    """The async path (spamd) is cut twice: asyncio.timeout(cap) inside the loop, and the
    milter thread's own wait of cap + REPLY_MARGIN. A scanner that does not end when it is
    cancelled (a library that swallows the cancellation, a blocking call) must not hold the
    MTA's reply past that: the reply is on_timeout within the cap and its margin."""
    import asyncio

    from spambridge import defaults

    class Stubborn:
        name = "spamd"

        async def scan(self, message: bytes, envelope: Envelope) -> ScoreResult:
            for _ in range(2):
                try:
                    await asyncio.sleep(3)
                except asyncio.CancelledError:
                    continue  # taken, and ignored
            return ScoreResult("spamd", 0.0)

        async def aclose(self) -> None:
            pass

    bridge = AsyncBridge().start()
    try:
        p = Pipeline(Stubborn(), bridge, Config())  # type: ignore[arg-type]
        cap = 0.5
        start = time.monotonic()
        out = p.scan(b"msg", Envelope(), cap)
        took = time.monotonic() - start
    finally:
        bridge.stop(timeout=0.1)
    assert isinstance(out, ScanError) and out.kind is ErrorKind.TIMEOUT, out
    assert out.detail == "no verdict within 0.5s"
    assert took < cap + defaults.REPLY_MARGIN + 0.4, took


def test_what_the_stop_and_the_nudger_see_of_messages_being_decided(
        release: threading.Event) -> None:
    """The stop waits (wait_idle) for every message between end of message and the return of
    its callback, and the pool nudger sleeps (wait_busy) until a message is being decided:
    a count that never went down made every stop wait out its grace, one never woken left
    libmilter's lost wake-ups unnudged, and a wake() not kept made a stop wait out a sleep."""
    scanner = hung(release)
    p = pipeline(scanner)
    assert p.inflight == 0 and not p.wait_busy(0.05)
    before = p.last_free
    woke: list[bool] = []
    sleeper = threading.Thread(target=lambda: woke.append(p.wait_busy(10)))
    sleeper.start()
    time.sleep(0.05)
    buf = MessageBuffer(1 << 20, 1 << 16)
    buf.add_body(b"x\r\n")
    decided: list[Evaluation] = []

    def one_message() -> None:
        with p.answering():
            decided.append(p.evaluate(buf, Envelope()))

    msg = threading.Thread(target=one_message)
    msg.start()
    sleeper.join(5)
    assert woke == [True], "the nudger was not woken by a message being decided"
    assert p.inflight == 1 and p.last_free > before  # the first of a burst after idle
    assert not p.wait_idle(0.1)  # a stop waits for it
    freed = time.monotonic()
    release.set()
    msg.join(5)
    assert decided and p.inflight == 0
    assert p.wait_idle(0.1)
    assert p.last_free >= freed  # its worker came free: no stall to nudge
    with p.answering():  # decided, its reply not yet returned to libmilter: a stop waits
        assert not p.wait_idle(0.1)
    assert p.wait_idle(0.1)
    p.wake()  # the nudger is stopping: no wait_busy sleeps from now on
    start = time.monotonic()
    assert p.wait_busy(5)
    assert p.wait_busy(None) and time.monotonic() - start < 1
    scanner.pool.shutdown()


def test_an_error_that_fits_the_decision_line_is_not_said_again_in_full(
        caplog: pytest.LogCaptureFixture) -> None:
    """An error of exactly DETAIL_CHARS bytes is whole on the decision line: no second
    "the error in full" line repeating it; one byte more is cut, and said whole once."""
    from spambridge.pipeline import DETAIL_CHARS

    buf = MessageBuffer(1000, 1000)
    caplog.set_level(logging.INFO, logger="spambridge")
    for n, size in enumerate((DETAIL_CHARS, DETAIL_CHARS + 1)):
        err = ScanError(ErrorKind.UNAVAILABLE, "bayes", f"{n}" + "z" * (size - 1))
        log_decision(Evaluation(decide(err, Config().policy), err, 0.001), buf,
                     Envelope(queue_id=f"6FIT{n}"), False)
    lines = [r.getMessage() for r in caplog.records]
    assert f'error="0{"z" * (DETAIL_CHARS - 1)}"' in lines[0], lines[0]
    assert [m[:len("6FIT1: the error in full")] for m in lines if "in full" in m] == [
        "6FIT1: the error in full"]


def test_a_message_whose_spill_failed_asks_for_no_more_body_even_once_the_spool_is_back(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A failed spill is that message's outcome (on_error, the error named): the rest of its
    body is not wanted (SKIP to the MTA), even if the directory is back by the next chunk, and
    the decision line names the failure the message met, not a later write."""
    spool = tmp_path / "spool"
    scanner = PoolScanner(lambda m: ScoreResult("bayes", 0.0))
    cfg = Config(milter=MilterConfig(spool_dir=str(spool), spool_memory=100),
                 policy=replace(PolicyConfig(), on_error=FailAction.REJECT))
    p = Pipeline(scanner, AsyncBridge(), cfg)
    caplog.set_level(logging.INFO, logger="spambridge")
    s = message_from_client(p)
    s.add_header("Subject", b"the quarterly report")
    wanted = [s.add_body(b"x" * 1000)]
    spool.mkdir()
    wanted.append(s.add_body(b"y" * 1000))
    try:
        d = s.finish().decision
    finally:
        s.end_message()
        scanner.pool.shutdown()
    assert wanted == [False, False]
    assert d.action is Action.REJECT and scanner.queued == []
    [line] = decision_lines(caplog)
    assert f"spool_dir {spool}: [Errno 2] No such file or directory" in line, line


def test_the_long_errors_said_whole_are_remembered_sixteen_at_a_time(
        caplog: pytest.LogCaptureFixture) -> None:
    """Sixteen causes taking turns are each said whole once; a seventeenth pushes the oldest
    out, which is then said whole again when it comes back: the memory of what was said is
    bounded (a spamd error naming each message's own text would otherwise grow it for ever)."""
    from spambridge import pipeline as pl

    buf = MessageBuffer(1000, 1000)
    caplog.set_level(logging.INFO, logger="spambridge")
    pl._SAID_WHOLE.clear()
    errors = [ScanError(ErrorKind.UNAVAILABLE, "bayes", f"cause {n:02d}: " + "w" * 250)
              for n in range(pl._SAID_WHOLE_MAX + 1)]

    def said(errs: list[ScanError]) -> int:
        caplog.clear()
        for e in errs:
            log_decision(Evaluation(decide(e, Config().policy), e, 0.001), buf, Envelope(),
                         False)
        return len([r for r in caplog.records if "in full" in r.getMessage()])

    assert pl._SAID_WHOLE_MAX == 16
    assert said(errors[:16]) == 16
    assert said(errors[:16]) == 0  # all sixteen remembered
    assert said([errors[16], errors[0]]) == 2  # the seventeenth pushed the oldest out
    pl._SAID_WHOLE.clear()
