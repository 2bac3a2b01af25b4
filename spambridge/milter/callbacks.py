"""pymilter callbacks: thin adapters that collect into the Session and delegate.

libmilter runs each connection in its own thread with its own instance (created by the
factory); per-message state is reset at MAIL FROM and on abort.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

import Milter

from spambridge.milter import actions
from spambridge.milter.session import Session
from spambridge.verdict import ErrorKind, ScanError

log = logging.getLogger("spambridge")
CONTINUE: int = Milter.CONTINUE
SKIP: int = Milter.SKIP
NOREPLY: int = Milter.NOREPLY
P_NR_HDR: int = Milter.P_NR_HDR


class SpamBridgeMilter(Milter.Base):
    """Every stage before the body answers CONTINUE, so it is declared no-reply (@noreply):
    the MTA streams them without a round trip each, about 25 fewer per message (a milter's
    per-message latency is spamd's, plus these). The body keeps its reply: it may say SKIP."""

    def __init__(self, session_factory: Callable[[], Session]) -> None:
        self.session = session_factory()

    def macro(self, name: str, latin1: bool = False) -> str:
        """A macro's value, or "" — an 8-bit value must not become a pymilter exception;
        with `latin1`, such a value read as Latin-1 instead (what is ASCII in it stays)."""
        try:
            return str(self.getsymval(name) or "")
        except UnicodeDecodeError as e:
            return bytes(e.object).decode("latin-1") if latin1 else ""
        except Exception:
            return ""

    @Milter.noreply
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        inet = family in (socket.AF_INET, socket.AF_INET6) and hostaddr
        addr, port = (hostaddr[0], hostaddr[1]) if inet else ("", None)
        # the macro `_` only for a client the call gives no address of (a unix-domain smtpd)
        self.session.connect(hostname or "", str(addr), self.macro("j"),
                             self.macro("{daemon_name}"), port,
                             "" if inet else self.macro("_"))
        return CONTINUE

    @Milter.noreply
    def hello(self, hostname: str) -> int:
        self.session.hello(hostname or "")
        return CONTINUE

    def _connect_unnamed(self) -> None:
        """pymilter skips the connect callback when the client's host name is not UTF-8 (a
        reverse-DNS name passed on unchecked; Postfix says "unknown" for such a name, other
        MTAs may not). The address is still in the macro `_` ("NAME [ADDR]"): without it the
        client was taken for this host, 127.0.0.1, in trusted_networks and in the Received
        line spamd reads (trusted by SpamAssassin: no RBL check of the real client)."""
        client = self.macro("_", latin1=True)  # its name is 8-bit, its address ASCII
        self.session.connect("unknown", "", self.macro("j"), self.macro("{daemon_name}"),
                             None, client)

    @Milter.noreply
    def envfrom(self, mailfrom: str, *params: str) -> int:
        if not self.session.connected:
            self._connect_unnamed()
        # {auth_authen} is sent at MAIL FROM only (Postfix's default macro lists)
        tls = bool(self.macro("{tls_version}"))
        self.session.start_message(mailfrom, self.macro("{auth_authen}"), tls)
        return CONTINUE

    @Milter.noreply
    def envrcpt(self, to: str, *params: str) -> int:
        self.session.add_recipient(to)
        return CONTINUE

    @Milter.noreply
    @Milter.decode("bytes")
    def header(self, name: str, value: bytes) -> int:
        """Not what libmilter calls (app._register hands it header_callback, below, which
        does the same): kept for pymilter's negotiation, which reads @noreply off this
        method, so a change here must be made there too."""
        self.session.add_header(name, value)
        return CONTINUE

    @Milter.noreply
    def eoh(self) -> int:
        self.session.set_queue_id(self.macro("i"))  # the queue id exists from DATA on
        return CONTINUE

    def body(self, chunk: bytes) -> int:
        return CONTINUE if self.session.add_body(chunk) else SKIP

    def eom(self) -> int:
        with self.session.pipeline.answering():  # a stop waits until this has returned
            return self._eom()

    def _eom(self) -> int:
        s = self.session
        s.set_queue_id(self.macro("i"))
        try:
            decision = s.finish().decision
        except Exception as e:  # a bug must still end in the admin's on_error action
            log.exception("%s: internal error at end of message", s.envelope.log_id)
            decision = s.pipeline.evaluate(
                s._buf(), s.envelope, failure=ScanError(ErrorKind.ERROR, "internal", repr(e))
            ).decision
        qid = s.envelope.log_id
        try:
            return actions.apply(self, decision, s.owned_headers(), s.subject(), qid,
                                 forged=s.owned_total, subject_name=s.subject_name())
        finally:
            s.end_message()

    def abort(self) -> int:
        self.session.end_message()
        return CONTINUE

    def close(self) -> int:
        self.session.end_message()
        return CONTINUE


def header_callback(ctx: Any, name: str, value: bytes) -> int:
    """libmilter's header callback (app._register), straight to the session: pymilter's own
    path (a lambda, Base.header_bytes, the @noreply wrapper, then header()) cost a third of
    the time per field, some 25 fields a message. It answers as @noreply would: NOREPLY when
    the MTA agreed to skip header replies at negotiation, CONTINUE otherwise."""
    m: SpamBridgeMilter = ctx.getpriv()
    m.session.add_header(name, value)
    return NOREPLY if m._protocol & P_NR_HDR else CONTINUE
