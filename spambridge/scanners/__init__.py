"""The scanner interface: bytes in, a ScoreResult out, or a typed ScanError raised.

Scanners are awaited on the bridge's asyncio loop; a scanner that must do blocking or CPU-bound
work hands it to a thread itself, so the loop never blocks. One whose work is all on its own
threads (ThreadedScanner: the local Bayes engine) is waited on by the milter's thread directly.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from contextvars import ContextVar
from typing import Protocol, runtime_checkable

from spambridge.message import Envelope
from spambridge.verdict import ScoreResult

# when the caller's cap ends, on the loop's clock (Pipeline.scan sets it: the cap runs from end
# of message, and the copy of the message for the scanner has already used some of it). A
# scanner that divides the cap (spamd+bayes) takes what was used out of its first part
CAP_END: ContextVar[float | None] = ContextVar("CAP_END", default=None)


def cap_end(now: float, cap: float) -> float:
    """When the caller's cap ends, on the loop's clock (`now` read from it): CAP_END, or, when
    no caller set it, `cap` seconds from now."""
    end = CAP_END.get()
    return now + cap if end is None else min(end, now + cap)


class Scanner(Protocol):
    name: str

    async def scan(self, message: bytes, envelope: Envelope) -> ScoreResult:
        """Score one message; raise ScanError (never anything else) when it cannot."""
        ...

    async def aclose(self) -> None:
        """Release connections and files."""
        ...


@runtime_checkable
class ThreadedScanner(Scanner, Protocol):
    """A scanner that does all its work on its own threads (the local Bayes engine). The
    milter's thread waits on the future itself, with the cap, instead of going through the
    event loop: two thread wake-ups fewer per message, for the same answer."""

    def submit(self, message: bytes, envelope: Envelope) -> Future[ScoreResult]:
        """Start scoring; the future holds a ScoreResult or a ScanError, or ends cancelled
        (the caller gave up at the cap, or the scanner stopped with the scan still queued).
        Raises ScanError when the scanner has already stopped."""
        ...


def cut_at_own_end(end: float | None) -> bool:
    """Whether a cancellation that has just arrived is the caller's cap, come due with the
    scanner's own end of it (`end`, on the loop's clock; None: it has none). A scanner that
    ends a scan just before the caller's cap, to say why (which server, why Bayes could not
    cover), is run second when a loop held up past both ends (a long callback, a collection,
    the process descheduled) lets the caller's cancellation in first: the scan ends now
    either way, and it should be said as the scanner's end says it, not as "no verdict" — a
    pool whose hosts were all off would be on_timeout instead of on_unavailable."""
    return end is not None and asyncio.get_running_loop().time() >= end
