"""SpamAssassin's spamd through aiospamc — the only module that imports aiospamc.

One client is built at start-up and reused: aiospamc's one-call helpers build an SSL context
per call (about 40 ms of CPU per message). Every aiospamc exception, and the builtin
TimeoutError its total timeout raises, becomes a typed ScanError.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from collections.abc import Mapping
from pathlib import Path

import aiospamc
from aiospamc.client import Client
from aiospamc.exceptions import (
    AIOSpamcConnectionFailed,
    BadResponse,
    ClientException,
    TimeoutException,
)
from aiospamc.frontend import FrontendClientBuilder
from aiospamc.requests import Request
from aiospamc.responses import (
    ResponseException,
    TemporaryFailureException,
    UnavailableException,
)

from spambridge.config import SpamdConfig
from spambridge.message import Envelope
from spambridge.verdict import ErrorKind, ScanError, ScoreResult

ENGINE = "spamd"
_MAX_SYMBOLS_BYTES = 64 * 1024


def _tls(cfg: SpamdConfig) -> bool | Path | ssl.SSLContext | None:
    if not cfg.tls:
        return None
    return Path(cfg.ca_file) if cfg.ca_file else True


def build_client(cfg: SpamdConfig, total_timeout: float) -> Client:
    builder = (
        FrontendClientBuilder()
        .with_connection(cfg.host, cfg.port, Path(cfg.socket) if cfg.socket else None)
        .add_verify(_tls(cfg))
        .set_timeout(aiospamc.Timeout(total=total_timeout, connection=cfg.connect_timeout))
    )
    return builder.build()


def classify_exception(exc: BaseException) -> ErrorKind:
    """Map what aiospamc raises onto our failure classes (order matters: see notes §3.5)."""
    if isinstance(exc, UnavailableException | TemporaryFailureException):
        return ErrorKind.UNAVAILABLE
    if isinstance(exc, TimeoutException | TimeoutError | asyncio.TimeoutError):
        return ErrorKind.TIMEOUT
    if isinstance(exc, AIOSpamcConnectionFailed | ConnectionError):
        return ErrorKind.UNAVAILABLE
    if isinstance(exc, BadResponse | ResponseException | ClientException):
        return ErrorKind.ERROR
    if isinstance(exc, OSError):
        return ErrorKind.UNAVAILABLE
    return ErrorKind.ERROR


class SpamdScanner:
    """Asks spamd for SYMBOLS: one request gives the verdict, the score and the rule names."""

    name = ENGINE

    def __init__(self, cfg: SpamdConfig, total_timeout: float) -> None:
        self.cfg = cfg
        self.client = build_client(cfg, total_timeout)

    def user_for(self, envelope: Envelope) -> str:
        if self.cfg.per_recipient_user and len(envelope.recipients) == 1:
            rcpt = envelope.recipients[0].strip("<>")
            if rcpt and all(32 < ord(c) < 127 for c in rcpt):
                return rcpt
        return self.cfg.user

    async def request(self, verb: str, message: bytes, user: str = "",
                      headers: Mapping[str, str] | None = None) -> aiospamc.Response:
        """One request; `headers` adds plain ones (TELL's Message-class, Set, Remove)."""
        req = Request(verb, body=message)
        if user:
            req.headers.user = user
        for name, value in (headers or {}).items():
            req.headers.set_header(name, value)
        try:
            return await self.client.request(req)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # every aiospamc failure becomes a typed ScanError
            raise ScanError(classify_exception(e), ENGINE, _describe(e)) from e

    async def scan(self, message: bytes, envelope: Envelope) -> ScoreResult:
        resp = await self.request("SYMBOLS", message, self.user_for(envelope))
        spam = resp.headers.spam
        if spam is None or not math.isfinite(spam.score) or not math.isfinite(spam.threshold):
            raise ScanError(ErrorKind.ERROR, ENGINE, "reply without a usable Spam header")
        body = bytes(resp.body or b"")[:_MAX_SYMBOLS_BYTES]
        tests = tuple(
            t for t in body.decode("ascii", "replace").replace("\r", "").replace("\n", ",")
            .split(",") if t
        )
        return ScoreResult(engine=ENGINE, score=float(spam.score), tests=tests)

    async def ping(self) -> None:
        await self.request("PING", b"")

    async def aclose(self) -> None:
        return None


def _describe(e: BaseException) -> str:
    cause = e.__cause__ or e.__context__
    text = f"{type(e).__name__}"
    detail = str(e) or (str(cause) if cause else "")
    if detail:
        text += f": {detail}"
    return text[:200].replace("\n", " ").replace("\r", " ")
