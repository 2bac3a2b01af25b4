"""`spamd+bayes`: spamd decides when it answers within its share of the cap; otherwise
(down, erroring, slow) the local Bayes engine decides in the time that is left.

Bayes costs about a millisecond, so it runs only when spamd has failed: the common path pays
nothing for the fallback, and the outer cap still bounds the whole scan.
"""

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
        try:
            async with asyncio.timeout(self.budget):
                return await self.primary.scan(message, envelope)
        except ScanError as e:
            why = e
        except TimeoutError:
            why = ScanError(ErrorKind.TIMEOUT, self.primary.name,
                            f"no answer within its {self.budget:g}s share")
        try:
            fallback = await self.secondary.scan(message, envelope)
        except ScanError as e:
            # both failed: the primary's failure class decides, and the log says why the
            # fallback could not cover for it (an untrained database, say)
            raise ScanError(why.kind, why.engine, f"{why.detail}; no fallback: {e}") from None
        note = f"fallback={self.primary.name}-{why.kind.value}"
        return ScoreResult(fallback.engine, fallback.score, fallback.tests, fallback.clues, note,
                           why.detail)

    async def aclose(self) -> None:
        await self.primary.aclose()
        await self.secondary.aclose()
