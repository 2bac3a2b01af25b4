"""`spamd+bayes`: spamd decides when it answers within its share of the cap; otherwise
(down, erroring, slow) the local Bayes verdict, computed alongside, decides."""

from __future__ import annotations

import asyncio

from spambridge.message import Envelope
from spambridge.scanners import Scanner
from spambridge.verdict import ErrorKind, ScanError, ScoreResult


class FallbackScanner:
    name = "spamd+bayes"

    def __init__(self, primary: Scanner, secondary: Scanner, primary_budget: float) -> None:
        self.primary, self.secondary, self.budget = primary, secondary, primary_budget

    async def scan(self, message: bytes, envelope: Envelope) -> ScoreResult:
        local = asyncio.ensure_future(self.secondary.scan(message, envelope))
        local.add_done_callback(_consume)
        try:
            async with asyncio.timeout(self.budget):
                result = await self.primary.scan(message, envelope)
        except ScanError as e:
            why = e
        except TimeoutError:
            why = ScanError(ErrorKind.TIMEOUT, self.primary.name,
                            f"no answer within its {self.budget:g}s share")
        else:
            local.cancel()
            return result
        try:
            fallback = await local
        except ScanError:
            raise why from None
        note = f"fallback={self.primary.name}-{why.kind.value}"
        return ScoreResult(fallback.engine, fallback.score, fallback.tests, fallback.clues, note)

    async def aclose(self) -> None:
        await self.primary.aclose()
        await self.secondary.aclose()


def _consume(task: asyncio.Future[ScoreResult]) -> None:
    """Retrieve a discarded result so asyncio does not log 'exception never retrieved'."""
    if not task.cancelled():
        task.exception()
