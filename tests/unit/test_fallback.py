"""spamd+bayes (FallbackScanner) with scanners whose timing the test controls: which engine
decides, and what the failure says, when spamd and Bayes finish in either order."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest
from stalls import Stalled, Timed, outcome

from spambridge.config import PolicyConfig
from spambridge.message import Envelope
from spambridge.policy import decide
from spambridge.scanners.fallback import FallbackScanner
from spambridge.verdict import ErrorKind, ScanError, ScoreResult


def scan(primary: Timed, secondary: Timed, share: float = 0.1, cap: float = 1.0
         ) -> ScoreResult | ScanError:
    async def capped() -> ScoreResult | ScanError:
        try:
            # Pipeline.scan's own timeout, set later than its cap: FallbackScanner ends its
            # scan 10 ms before the cap so the log says why, and that end is what these tests
            # check; both coming due at once (a loop held up) is the subject of
            # test_a_loop_held_up_at_the_end_of_the_cap_still_says_why. A scanner that
            # overran its cap still fails here: the TimeoutError is not caught.
            async with asyncio.timeout(cap + 0.5):
                return await FallbackScanner(primary, secondary, share, cap).scan(
                    b"m", Envelope())
        except ScanError as e:
            return e

    return asyncio.run(capped())


def test_spamd_answering_while_bayes_fails_is_the_verdict() -> None:
    """spamd past its share answers while Bayes is still failing (a busy database waits up
    to 0.5 s): spamd's verdict, not a timeout for an answer that came."""
    r = scan(Timed("spamd", 0.15), Timed("bayes", 0.1, ErrorKind.UNAVAILABLE))
    assert isinstance(r, ScoreResult) and r.engine == "spamd" and not r.note, r


def test_spamd_failing_while_bayes_fails_is_spamds_failure() -> None:
    """spamd errors (past its share) while Bayes is still failing: on_error for spamd's own
    error, not on_timeout with "no answer within its share"."""
    r = scan(Timed("spamd", 0.15, ErrorKind.ERROR), Timed("bayes", 0.1, ErrorKind.UNAVAILABLE))
    assert isinstance(r, ScanError) and r.kind is ErrorKind.ERROR, r
    assert r.detail == "spamd failed; no fallback: bayes unavailable: bayes failed"


@pytest.mark.parametrize(("spamd", "kind"), [(2.0, ErrorKind.TIMEOUT), (0.3, None)])
def test_a_slow_spamd_keeps_the_cap_when_bayes_fails(spamd: float,
                                                     kind: ErrorKind | None) -> None:
    r = scan(Timed("spamd", spamd), Timed("bayes", 0.0, ErrorKind.UNAVAILABLE), cap=0.5)
    if kind is None:
        assert isinstance(r, ScoreResult) and r.engine == "spamd"
    else:
        assert isinstance(r, ScanError) and r.kind is kind
        assert "no answer within the 0.5s cap; no fallback" in r.detail


def test_a_loop_held_up_at_the_end_of_the_cap_still_says_why(
        caplog: pytest.LogCaptureFixture) -> None:
    """The milter's loop held up from just before FallbackScanner's own end of the cap to past
    the caller's: both come due at once, and the caller's cancellation runs first. The scan
    still ends as its own end says it, spamd's timeout and why Bayes could not cover — not
    "no verdict" under engine spamd+bayes, which the decision line, the incident warning and
    the metrics' engine label would have shown."""
    scanner = FallbackScanner(Timed("spamd", 30.0), Timed("bayes", 0.0, ErrorKind.UNAVAILABLE),
                              0.3, 1.0)
    with caplog.at_level(logging.ERROR, "asyncio"):
        r = outcome(Stalled(scanner, 1.0, before=0.015, seconds=0.05), 1.0)
        gc.collect()
    assert isinstance(r, ScanError), r
    assert (r.kind, r.engine, r.detail) == (
        ErrorKind.TIMEOUT, "spamd",
        "no answer within the 1s cap; no fallback: bayes unavailable: bayes failed")
    assert not caplog.records  # no task left with an exception nobody took


def test_bayes_covers_a_slow_spamd() -> None:
    r = scan(Timed("spamd", 2.0), Timed("bayes", 0.0))
    assert isinstance(r, ScoreResult) and r.engine == "bayes"
    assert r.note == "fallback=spamd-timeout" and "0.1s share" in r.why


@pytest.mark.parametrize("kind", [ErrorKind.UNAVAILABLE, ErrorKind.ERROR])
def test_bayes_covers_a_spamd_that_is_down_or_fails(kind: ErrorKind) -> None:
    """Down (refused) or failing (a garbled reply, an error status) at once: Bayes decides,
    and X-Spam-Status names it and what it stood in for."""
    r = scan(Timed("spamd", 0.0, kind), Timed("bayes", 0.0))
    assert isinstance(r, ScoreResult) and r.engine == "bayes", r
    status = dict(decide(r, PolicyConfig()).headers)["X-Spam-Status"]
    assert "engine=bayes" in status and f"fallback=spamd-{kind.value}" in status, status


def test_spamds_request_is_given_up_once_bayes_has_decided() -> None:
    """Bayes answered for a slow spamd: the spamd request is cancelled (its connection closed)
    rather than left to hold one of spamd's children until spamd is done or the cap ends."""
    ended: list[str] = []

    class Slow(Timed):
        async def scan(self, message: bytes, envelope: Envelope) -> ScoreResult:
            try:
                return await super().scan(message, envelope)
            except asyncio.CancelledError:
                ended.append("cancelled")
                raise

    async def run() -> ScoreResult:
        r = await FallbackScanner(Slow("spamd", 30.0), Timed("bayes", 0.0), 0.1, 60.0).scan(
            b"m", Envelope())
        await asyncio.sleep(0)  # the cancellation reaches the request
        assert ended == ["cancelled"]  # now, not when the loop closes
        return r

    assert asyncio.run(run()).engine == "bayes"
