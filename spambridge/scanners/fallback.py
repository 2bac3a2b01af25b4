"""`spamd+bayes`: spamd decides when it answers within its share of the cap; otherwise
(down, erroring, slow) the local Bayes engine decides in the time that is left.

Bayes costs about a millisecond, so it runs only when spamd has failed: the common path pays
nothing for the fallback, and the outer cap still bounds the whole scan. A slow spamd is given
up at the end of its share only for a Bayes verdict: when Bayes cannot answer (not trained
yet, no database), spamd keeps the rest of the cap, as it would have with `engine = "spamd"`.
"""

from __future__ import annotations

import asyncio
import dataclasses

from spambridge.message import Envelope
from spambridge.scanners import Scanner, cap_end, cut_at_own_end
from spambridge.verdict import ErrorKind, ScanError, ScoreResult

_AHEAD = 0.01  # s: our end of the cap comes before the caller's, so the log can say why


class FallbackScanner:
    name = "spamd+bayes"

    def __init__(self, primary: Scanner, secondary: Scanner, primary_budget: float,
                 cap: float) -> None:
        """`cap`: the whole scan's; spamd's share of it is `primary_budget`."""
        self.primary, self.secondary, self.budget, self.cap = (primary, secondary,
                                                               primary_budget, cap)

    async def scan(self, message: bytes, envelope: Envelope) -> ScoreResult:
        loop = asyncio.get_running_loop()
        now = loop.time()
        # the cap runs from end of message: copying a big one for the scanner may have used
        # some of it (Pipeline.scan). spamd's share gives that up, so Bayes keeps its part
        end_of_cap = cap_end(now, self.cap)
        spent = now + self.cap - end_of_cap
        end = end_of_cap - _AHEAD
        share = self.budget - spent
        task = asyncio.ensure_future(self.primary.scan(message, envelope))
        try:
            why = await self._wait(task, share, f"no answer within its {self.budget:g}s share"
                                   + (f", {spent:.2f}s of the cap gone before the scan"
                                      if spent >= 0.05 else ""))
            if isinstance(why, ScoreResult):
                return why
            try:
                fallback = await self.secondary.scan(message, envelope)
            except ScanError as e:
                # spamd is only slow, and nothing else can answer: it keeps the cap. It may
                # have finished while Bayes failed (a busy database takes 0.5 s): its answer
                # or its own failure, then, not the share's timeout
                late = await self._wait(task, end - loop.time(),
                                        f"no answer within the {self.cap:g}s cap", end)
                if isinstance(late, ScoreResult):
                    return late
                why = late
                # both failed: the primary's failure class decides, and the log says why the
                # fallback could not cover for it (an untrained database, say)
                raise ScanError(why.kind, why.engine, f"{why.detail}; no fallback: {e}") from None
            return dataclasses.replace(fallback, failed=why)
        finally:
            task.cancel()  # given up (or the cap ran out): its connection is closed now
            # a pool cancelled at its own end of the cap says why with a ScanError, as if
            # that end had come first: nobody awaits the task now, so its failure is taken
            # here rather than logged as "never retrieved"
            task.add_done_callback(_retrieved)

    async def _wait(self, task: asyncio.Future[ScoreResult], seconds: float,
                    timeout: str, end: float | None = None) -> ScoreResult | ScanError:
        """spamd's answer or failure within `seconds`; the request goes on either way.
        `end`: our end of the cap, when this wait runs to it."""
        try:
            return await asyncio.wait_for(asyncio.shield(task), max(seconds, 0.0))
        except ScanError as e:
            return e
        except TimeoutError:
            return ScanError(ErrorKind.TIMEOUT, self.primary.name, timeout)
        except asyncio.CancelledError:
            if not cut_at_own_end(end):
                raise
            return ScanError(ErrorKind.TIMEOUT, self.primary.name, timeout)  # as our end says

    async def aclose(self) -> None:
        await self.primary.aclose()
        await self.secondary.aclose()


def _retrieved(task: asyncio.Future[ScoreResult]) -> None:
    if not task.cancelled():
        task.exception()
