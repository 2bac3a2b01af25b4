"""The loop thread the libmilter threads hand spamd's coroutines to: a coroutine past its
deadline is cancelled, not left holding a spamd connection, and a stop ends what is still on
the loop at once (the MTA has no milter while the process stops)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from spambridge.bridge import AsyncBridge


def test_a_coroutine_past_its_deadline_is_cancelled_not_left_running() -> None:
    """The deadline is the milter thread's backstop (cap + REPLY_MARGIN) for a scan that did
    not end at its own cap: past it, the reply goes, and the scan is cancelled too, so the
    spamd child and the connection it holds are let go, not kept as long as the scan likes."""
    ended = threading.Event()
    cancels: list[int] = []

    async def stubborn() -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancels.append(1)
        try:
            await asyncio.sleep(5)  # an inner cancel taken: only the bridge's ends this one
        except asyncio.CancelledError:
            cancels.append(2)
            raise
        finally:
            ended.set()

    bridge = AsyncBridge().start()
    try:
        fut = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), bridge.loop)
        fut.result(5)

        async def capped() -> None:
            try:
                async with asyncio.timeout(0.1):
                    await stubborn()
            except TimeoutError:
                await asyncio.sleep(5)  # (not reached: stubborn swallows the timeout's cancel)

        start = time.monotonic()
        with pytest.raises(TimeoutError):
            bridge.run(capped(), 0.3)
        assert time.monotonic() - start < 1.0
        assert ended.wait(1.0), "the coroutine was left running past its deadline"
        assert cancels == [1, 2]
    finally:
        bridge.stop(timeout=1.0)


def test_a_stop_cancels_what_is_still_on_the_loop_and_does_not_wait_for_it() -> None:
    """At a stop, a coroutine still on the loop (a scan past the grace) is cancelled: the
    stop does not wait out the drain's timeout (5 s: that long more without a milter)."""
    seen: list[str] = []

    async def hangs() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    bridge = AsyncBridge().start()
    asyncio.run_coroutine_threadsafe(hangs(), bridge.loop)
    time.sleep(0.1)
    start = time.monotonic()
    bridge.stop(timeout=3.0)
    assert time.monotonic() - start < 1.5
    assert seen == ["cancelled"]
    assert bridge.loop.is_closed()


def test_a_scan_the_stop_cancelled_is_a_timeout_not_an_internal_error() -> None:
    """A scan still waited on when the loop is stopped gets a TimeoutError (on_timeout, as a
    scan cut at the cap), not a CancelledError that the pipeline logs as an internal error."""
    release = threading.Event()

    async def hangs() -> None:
        await asyncio.sleep(30)

    bridge = AsyncBridge().start()
    got: list[BaseException] = []

    def wait() -> None:
        try:
            bridge.run(hangs(), 10.0)
        except BaseException as e:
            got.append(e)
        release.set()

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.1)
    bridge.stop(timeout=3.0)
    assert release.wait(5)
    t.join(5)
    assert len(got) == 1 and type(got[0]) is TimeoutError, got


def test_starting_the_loop_leaves_the_callers_signals_as_they_were() -> None:
    """Only the loop's thread is kept from TERM, HUP, INT and USR1: `spambridge check` starts a
    bridge too, and a caller left blocking them could no longer be stopped with Ctrl-C."""
    import signal

    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    bridge = AsyncBridge().start()
    try:
        assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
    finally:
        bridge.stop(timeout=1.0)
