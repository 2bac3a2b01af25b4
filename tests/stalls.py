"""Scanners whose timing a test controls, and a milter's event loop held up at the end of a
scan's cap, as a loaded machine holds it up (a long callback, a collection of the heap, the
process descheduled): the scanners that end a scan just before the caller's cap, to say why,
must say the same when both ends come due at once."""

from __future__ import annotations

import asyncio
import time

from spambridge.bridge import AsyncBridge
from spambridge.config import Config
from spambridge.message import Envelope
from spambridge.pipeline import Pipeline
from spambridge.scanners import Scanner
from spambridge.verdict import ErrorKind, ScanError, ScoreResult

MESSAGE = b"Subject: x\r\n\r\nhello\r\n"


class Timed:
    """Answers (or fails with `error`) after `delay` seconds."""

    def __init__(self, name: str, delay: float, error: ErrorKind | None = None) -> None:
        self.name, self.delay, self.error = name, delay, error

    async def scan(self, message: bytes, envelope: Envelope) -> ScoreResult:
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise ScanError(self.error, self.name, f"{self.name} failed")
        return ScoreResult(self.name, 9.0)

    async def aclose(self) -> None:
        pass


class Stalled:
    """`scanner`, its loop blocked for `seconds` from `before` seconds before the cap."""

    def __init__(self, scanner: Scanner, cap: float, before: float, seconds: float) -> None:
        self.scanner, self.cap, self.before, self.seconds = scanner, cap, before, seconds
        self.name = scanner.name

    async def scan(self, message: bytes, envelope: Envelope) -> ScoreResult:
        loop = asyncio.get_running_loop()
        loop.call_at(loop.time() + self.cap - self.before, time.sleep, self.seconds)
        return await self.scanner.scan(message, envelope)

    async def aclose(self) -> None:
        await self.scanner.aclose()


def outcome(scanner: Scanner, cap: float) -> ScoreResult | ScanError:
    """What the milter's pipeline makes of one scan under `cap`, on a loop of its own."""
    bridge = AsyncBridge().start()
    try:
        return Pipeline(scanner, bridge, Config()).scan(MESSAGE, Envelope(), cap)
    finally:
        bridge.stop()
