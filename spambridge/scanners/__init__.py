"""The scanner interface: bytes in, a ScoreResult out, or a typed ScanError raised.

Scanners are awaited on the bridge's asyncio loop; a scanner that must do blocking or CPU-bound
work hands it to a thread itself, so the loop never blocks.
"""

from __future__ import annotations

from typing import Protocol

from spambridge.message import Envelope
from spambridge.verdict import ScoreResult


class Scanner(Protocol):
    name: str

    async def scan(self, message: bytes, envelope: Envelope) -> ScoreResult:
        """Score one message; raise ScanError (never anything else) when it cannot."""
        ...

    async def aclose(self) -> None:
        """Release connections and files."""
        ...
