"""SpamAssassin's spamd through aiospamc — the only module that imports aiospamc.

One client is built at start-up and reused: aiospamc's one-call helpers build an SSL context
per call (about 40 ms of CPU per message). Every aiospamc exception, and the builtin
TimeoutError its total timeout raises, becomes a typed ScanError. Its connection managers are
used with their send replaced (aiospamc is pinned): the reply is read up to _MAX_REPLY bytes,
not to whatever end a broken peer never sends, and the socket is closed when the cap cancels
the request, not whenever the garbage collector runs.

A pool (`[spamd] servers`) is tried as spamc -d tries it: in the listed order, the next server
only when the connection itself failed, so no message is ever sent twice; a server that
failed to connect goes to the back for SPAMD_RETRY_AFTER seconds (try_order), so a dead first
server costs connect_timeout once, not on every message.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import re
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import aiospamc
from aiospamc.client import Client
from aiospamc.connections import (
    ConnectionManager,
    SSLContextBuilder,
    TcpConnectionManager,
    UnixConnectionManager,
)
from aiospamc.exceptions import (
    AIOSpamcConnectionFailed,
    BadResponse,
    ClientException,
    ClientTimeoutException,
    TimeoutException,
)
from aiospamc.requests import Request
from aiospamc.responses import (
    ResponseException,
    ServerTimeoutException,
    TemporaryFailureException,
    UnavailableException,
)

from spambridge import defaults
from spambridge.config import Config, ConfigError, SpamdConfig, host_port, key_at
from spambridge.message import Envelope, clean
from spambridge.scanners import cap_end, cut_at_own_end
from spambridge.verdict import ErrorKind, ScanError, ScoreResult

log = logging.getLogger("spambridge")
# a pool member going and coming back: news for a running milter's log, which `check` tells
# in its own words (check._PoolNews), found by this logger rather than by the lines' text
pool_log = logging.getLogger("spambridge.pool")

ENGINE = "spamd"
# a SYMBOLS reply is a status line, two headers and the rule names (a few kB); aiospamc's
# parser copies the rest of the buffer per header line, so garbage costs it quadratic time
_MAX_REPLY = 32 * 1024
_AHEAD = 0.05  # s: a pool's end of the cap comes before the caller's, so the log names a server
_MAX_SCORE = 10_000.0  # spamd's own scores stay within ±1,000 (whitelist_from is -100)


# one per attempt of a pool (SpamdScanner.request): set once the connection (and its TLS
# handshake) is up, so a cap that cuts the attempt can tell "still connecting" (nobody has
# the message) from "has it". A list: the tasks aiospamc and wait_for start copy the context.
_reached: ContextVar[list[bool]] = ContextVar("spamd_reached")


# why spamd ends a connection before its reply: going away with the message, or not serving
# this host at all
_GONE = "(spamd stopping or reloading, or not allowing this host: its --allowed-ips)"


class _BoundedSend(ConnectionManager):
    async def _send(self, data: bytes) -> bytes:
        reader, writer = await self._connect()
        if (reached := _reached.get(None)) is not None:
            reached[0] = True
        parts: list[bytes] = []
        try:
            try:
                writer.write(data)
                if writer.can_write_eof():
                    writer.write_eof()
                await writer.drain()
                size = 0
                while chunk := await reader.read(16384):
                    size += len(chunk)
                    if size > _MAX_REPLY:
                        raise BadResponse(f"a reply of more than {_MAX_REPLY} bytes")
                    parts.append(chunk)
            except OSError as e:
                if parts or not _ended_by_peer(e):
                    raise
                # spamd closing at once on a host its --allowed-ips does not list resets the
                # connection, our request unread: met while reading, or while sending (a
                # broken pipe, "not connected" at the request's end). "[Errno 104] Connection
                # reset by peer" or "[Errno 107] Transport endpoint is not connected" alone
                # sent admins nowhere; spamd's own log says "unauthorized connection"
                raise ConnectionResetError(f"reset the connection without a reply {_GONE}"
                                           ) from None
            if not parts:
                # spamd's child was killed with the message (a stop, or the reload Debian's
                # daily sa-update cron does): spamd going away, not a garbage reply, so
                # on_unavailable, not on_error (a 550 for good mail with on_error = reject)
                raise ConnectionResetError(f"closed the connection without a reply {_GONE}")
            return b"".join(parts)
        finally:
            writer.close()


def _ended_by_peer(e: OSError) -> bool:
    """The peer reset or closed the connection (a write's broken pipe, shutdown's "not
    connected" after its reset): no answer will come on it."""
    return isinstance(e, ConnectionResetError | BrokenPipeError) or e.errno == errno.ENOTCONN


class _Tcp(_BoundedSend, TcpConnectionManager):
    pass


class _Unix(_BoundedSend, UnixConnectionManager):
    pass


@dataclass
class _Server:
    """One spamd of the pool, its client, and since when it is put last (try_order)."""

    target: str  # HOST:PORT or the socket's path, as the log names it
    client: Client
    retry_at: float = 0.0  # clock() until which it is tried after the others (or being retried)
    down: bool = False  # its last connection failed (said once, and once when it is back)
    news: int = 0  # the attempt whose outcome set retry_at/down (SpamdScanner._attempts)


class CaFileError(Exception):
    """[spamd] ca_file cannot be used: the text is the file and why, in words; the caller says
    where it was set (SpamdScanner.from_config), which a SpamdConfig does not know."""


def tls_context(ca_file: str) -> ssl.SSLContext:
    """As aiospamc's own verify=True / verify=Path(ca_file): a file of PEM certificates or a
    directory (OpenSSL's capath). A file it cannot use is a CaFileError: aiospamc raises a
    bare FileNotFoundError(path), with no reason, and OpenSSL names its source line."""
    tls = SSLContextBuilder()
    if not ca_file:
        tls.add_default_ca()
    else:
        try:
            os.stat(ca_file)  # why it is not there (aiospamc's is_file() says only False)
            tls.add_ca(Path(ca_file))
        except ssl.SSLError as e:  # (an OSError too, with OpenSSL's errno)
            reason = re.sub(r"^\[[^]]*\] |\s*\(_ssl\.c:\d+\)$", "", str(e.args[-1]))
            raise CaFileError(f"{ca_file}: no CA certificate in it (OpenSSL: {reason})") from e
        except FileNotFoundError as e:
            if e.errno != errno.ENOENT:  # aiospamc's: there, but a device or a FIFO
                raise CaFileError(f"{ca_file}: not a file of PEM certificates or a "
                                  "directory") from e
            raise CaFileError(f"{ca_file}: no such file") from e
        except OSError as e:
            raise CaFileError(f"{ca_file}: cannot be read: {e.strerror or e}") from e
    context: ssl.SSLContext = tls.build()
    return context


def build_clients(cfg: SpamdConfig, total_timeout: float) -> list[tuple[str, Client]]:
    """(target, client) per server, in the order they are tried; one SSL context for all."""
    timeout = aiospamc.Timeout(total=total_timeout, connection=cfg.connect_timeout)
    if cfg.socket:
        return [(cfg.socket, Client(_Unix(Path(cfg.socket), timeout)))]
    context = tls_context(cfg.ca_file) if cfg.tls else None
    return [(host_port(host, port), Client(_Tcp(host, port, context, timeout)))
            for host, port in cfg.pool]


def try_order(retry_at: Sequence[float], now: float) -> list[int]:
    """The servers' indexes in the order a message tries them: as listed, but those whose
    connection failed less than SPAMD_RETRY_AFTER ago (retry_at > now) after the others, still
    in their listed order among themselves. They stay in the list: with every other server
    down too, they may be back."""
    return sorted(range(len(retry_at)), key=lambda i: retry_at[i] > now)


def connect_failed(exc: BaseException) -> bool:
    """Whether the connection itself failed (refused, unreachable, not accepted within
    connect_timeout, its TLS handshake refused): spamd has none of the message, so the next
    server may have it. Only _BoundedSend's _connect raises these two (no response timeout is
    set); anything later (a reset while sending, a slow or garbage reply) is that server's
    own failure, never a reason to send the message again."""
    return isinstance(exc, AIOSpamcConnectionFailed | ClientTimeoutException)


def classify_exception(exc: BaseException) -> ErrorKind:
    """Map what aiospamc raises onto our failure classes (order matters: see notes §3.5).
    With no response timeout set, aiospamc's ClientTimeoutException means no connection
    within connect_timeout: a host that is down or black-holed is unavailable, as a
    refusing one is; a timeout is spamd taking too long once it has the message."""
    if isinstance(exc, UnavailableException | TemporaryFailureException | ClientTimeoutException):
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

    def __init__(self, cfg: SpamdConfig, total_timeout: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.total_timeout = total_timeout
        self.clock = clock
        # all on one event loop (the bridge's, or train's and check-config's own): no lock
        self.servers = [_Server(t, c) for t, c in build_clients(cfg, total_timeout)]
        # each attempt's number, in the order they start: a reply on a connection made before
        # a later attempt failed to connect says nothing of the server now (spamd stopped
        # with a scan under way), nor does a connect that fails after a later one worked
        self._attempts = count(1)
        self.target = ", ".join(s.target for s in self.servers)

    @classmethod
    def from_config(cls, cfg: Config) -> SpamdScanner:
        """The client of run, check and train: a ca_file it cannot use is a configuration
        error naming the file, line and key (exit 78), not a bare path from aiospamc."""
        try:
            return cls(cfg.spamd, cfg.milter.scan_timeout)
        except CaFileError as e:
            raise ConfigError(f"{key_at(cfg, 'spamd', 'ca_file')}: {e}") from e

    def user_for(self, envelope: Envelope) -> str:
        """[spamd] user, or for mail to one recipient (per_recipient_user) the address, or
        its local part in lower case, as spamass-milter -u gave spamc: a Unix user name."""
        if self.cfg.per_recipient_user and len(envelope.recipients) == 1:
            rcpt = envelope.recipients[0].strip("<>")
            if self.cfg.per_recipient_user == "local-part":
                rcpt = rcpt.rpartition("@")[0] if "@" in rcpt else rcpt
                rcpt = "" if '"' in rcpt else rcpt.lower()  # quoted: no Unix user's name
            if rcpt and all(32 < ord(c) < 127 for c in rcpt):
                return rcpt
        return self.cfg.user

    async def request(self, verb: str, message: bytes, user: str = "",
                      headers: Mapping[str, str] | None = None) -> aiospamc.Response:
        """One request; `headers` adds plain ones (TELL's Message-class, Set, Remove)."""
        return (await self._request(verb, message, user, headers))[0]

    async def _request(self, verb: str, message: bytes, user: str = "",
                       headers: Mapping[str, str] | None = None
                       ) -> tuple[aiospamc.Response, str]:
        """request(), and the server that answered: a pool's reply that is no use must say
        which spamd sent it."""
        req = Request(verb, body=message)
        if user:
            req.headers.user = user
        for name, value in (headers or {}).items():
            req.headers.set_header(name, value)
        failed: list[str] = []  # each server tried so far, with what happened to it
        now = self.clock()
        order = try_order([s.retry_at for s in self.servers], now)
        loop = asyncio.get_running_loop()
        # a pool ends its own request just before the caller's cap (which started just
        # before it, or earlier, by the copy of a big message: CAP_END): the cap's own text
        # ("no verdict within 10s") could not say which server had the message. One server
        # keeps today's texts.
        end = (cap_end(loop.time(), self.total_timeout) - _AHEAD if len(self.servers) > 1
               else None)
        for i in order:
            server = self.servers[i]
            attempt = next(self._attempts)
            if server.down and server.retry_at <= now:
                # its time is up: this message tries it; the ones arriving meanwhile try it
                # last, not each one waiting connect_timeout for a host that is still off
                server.retry_at = now + defaults.SPAMD_RETRY_AFTER
            reached = [False]
            token = _reached.set(reached)
            try:
                resp = await (server.client.request(req) if end is None else
                              asyncio.wait_for(server.client.request(req),
                                               max(end - loop.time(), 0.0)))
            except asyncio.CancelledError as e:
                self._still_connecting(server, reached[0], attempt)
                if not cut_at_own_end(end):
                    raise
                raise self._cut_off(TimeoutError(), server.target, end, reached[0],
                                    failed) from e  # as the pool's end says it
            except TimeoutError as e:
                self._still_connecting(server, reached[0], attempt)
                raise self._cut_off(e, server.target, end, reached[0], failed) from e
            except Exception as e:  # every aiospamc failure becomes a typed ScanError
                refused = connect_failed(e)
                failed.append(self._not_connected_why(e, server.target) if refused
                              and len(self.servers) > 1 else self.describe(e, server.target))
                if not refused:  # it has the message: its answer is the answer
                    self._connected(server, attempt)
                    raise ScanError(classify_exception(e), ENGINE, "; ".join(failed)) from e
                self._not_connected(server, failed[-1], attempt)
                if len(failed) == len(order):  # none connected: unavailable, each one named
                    raise ScanError(classify_exception(e), ENGINE, "; ".join(failed)) from e
                continue
            finally:
                _reached.reset(token)
            self._connected(server, attempt)
            return resp, server.target
        raise AssertionError("a spamd scanner without servers")  # (build_clients: never)

    def _cut_off(self, e: TimeoutError, target: str, end: float | None, reached: bool,
                 failed: list[str]) -> ScanError:
        """A request that ran out of time: a timeout of the server that has the message, or,
        when the pool's end came while it was still connecting (each one before it did not
        connect), nobody has the message: unavailable, its state left as it was."""
        if end is None or reached:
            failed.append(self.describe(e, target))
            return ScanError(classify_exception(e), ENGINE, "; ".join(failed))
        failed.append(f"no connection to {target} within the {self.total_timeout:g}s cap")
        return ScanError(ErrorKind.UNAVAILABLE, ENGINE, "; ".join(failed))

    def _still_connecting(self, server: _Server, reached: bool, attempt: int) -> None:
        """A scan given up while `server` had not yet taken the connection (the cap, or
        spamd+bayes's share, shorter than connect_timeout): a black-holed first server was
        tried first by every message, each one running out of time on it, and the live
        servers after it never asked."""
        if not reached:
            self._not_connected(server, f"{server.target}: still connecting when the scan ran "
                                "out of time", attempt)

    def _not_connected(self, server: _Server, why: str, attempt: int) -> None:
        """Put it last for SPAMD_RETRY_AFTER. Said once when a pool member goes, and once when
        it is back: the messages it misses get their verdict from the others, so no decision
        line says it. An attempt older than the one that last set its state is no news."""
        if attempt < server.news:
            return
        server.news = attempt
        server.retry_at = self.clock() + defaults.SPAMD_RETRY_AFTER
        if len(self.servers) > 1 and not server.down:
            pool_log.warning("spamd server %s does not connect (%s): the other servers are "
                             "tried first, it again every %gs until it connects", server.target,
                             why.removeprefix(f"{server.target}: "),
                             defaults.SPAMD_RETRY_AFTER)
        server.down = True

    def _connected(self, server: _Server, attempt: int) -> None:
        if attempt < server.news:
            return
        server.news = attempt
        server.retry_at = 0.0
        if server.down and len(self.servers) > 1:
            pool_log.warning("spamd server %s connects again", server.target)
        server.down = False

    def _not_connected_why(self, e: BaseException, target: str) -> str:
        """A pool member's connect failure, short ("10.0.0.5:783: Connection refused"): a
        message's error names every server tried, and the decision line keeps 200 bytes
        (aiospamc's own text repeats the address: two servers filled it)."""
        cause = e.__cause__
        if isinstance(cause, ssl.SSLError):  # its errno is OpenSSL's, not the system's
            return self.describe(e, target)
        if isinstance(cause, socket.gaierror) and cause.strerror:
            return f"{target}: {cause.strerror}"
        if isinstance(cause, OSError) and cause.errno and cause.errno > 0:
            return f"{target}: {os.strerror(cause.errno)}"
        # a name with several addresses (localhost: ::1 and 127.0.0.1) that all failed:
        # asyncio says "Multiple exceptions: [Errno 111] Connect call failed ('::1', …), …"
        errnos = dict.fromkeys(int(n) for n in re.findall(r"\[Errno (\d+)\]", str(cause)))
        if isinstance(cause, OSError) and str(cause).startswith("Multiple exceptions:") and errnos:
            return f"{target}: {', '.join(os.strerror(n) for n in errnos)}"
        return self.describe(e, target)

    def describe(self, e: BaseException, target: str = "") -> str:
        """What failed, with where and which limit: aiospamc's own texts name neither a unix
        socket's path nor the timeout (a connect timeout has no text at all)."""
        target = target or self.target
        if isinstance(e, ClientTimeoutException):
            return (f"no connection to {target} within connect_timeout "
                    f"{self.cfg.connect_timeout:g}s")
        if isinstance(e, ServerTimeoutException):  # spamd's answer, not our limit running out
            said = _one_line(str(e))  # "Timeout: (30 second timeout while trying to CHECK)"
            return (f"{target}: spamd gave up on the message itself, at its own time limit "
                    f"(spamd --timeout-child, --timeout-tcp){': ' + said if said else ''}")
        if isinstance(e, TimeoutException | TimeoutError):
            return f"no answer from {target} within {self.total_timeout:g}s"
        return f"{target}: {_describe(e)}"

    async def scan(self, message: bytes, envelope: Envelope) -> ScoreResult:
        resp, target = await self._request("SYMBOLS", message, self.user_for(envelope))
        spam = resp.headers.spam
        if spam is None or not math.isfinite(spam.score) or not math.isfinite(spam.threshold):
            raise ScanError(ErrorKind.ERROR, ENGINE, f"{target}: reply without a usable Spam "
                            "header")
        body = bytes(resp.body or b"")
        tests = tuple(
            t for t in body.decode("ascii", "replace").replace("\r", "").replace("\n", ",")
            .split(",") if t
        )
        score = min(max(float(spam.score), -_MAX_SCORE), _MAX_SCORE)  # 1e308 is no score
        return ScoreResult(engine=ENGINE, score=score, tests=tests)

    async def ping(self) -> None:
        await self.request("PING", b"")

    async def aclose(self) -> None:
        return None


def _describe(e: BaseException) -> str:
    cause = e.__cause__ or e.__context__
    text = f"{type(e).__name__}"
    detail = str(e) or (str(cause) if cause else "")
    if isinstance(e, BadResponse) and e.args and isinstance(e.args[0], bytes | bytearray):
        # aiospamc's BadResponse holds the whole reply, which str() wrote as a Python bytes
        # literal (b'HTTP/1.0 400 ...'), and its parser's reason ("Protocol name does not
        # match") was lost: the reason, then the reply's start as text
        why = getattr(cause, "message", None) or "not a spamd reply"
        reply = bytes(e.args[0][:120])
        shown = clean(reply.replace(b"\r", b"\\r").replace(b"\n", b"\\n"), log=True)
        detail = f"{why}; the reply began {shown}" if reply else f"{why}; an empty reply"
    if detail:
        text += f": {detail}"
    return _one_line(text)


def _one_line(text: str) -> str:
    """A peer's text as the decision line and the SMTP reply can carry it."""
    return text[:200].replace("\n", " ").replace("\r", " ")
