"""The end-of-message callback without libmilter: what the MTA is told when the decision
path itself fails (a bug), and that the message's buffer is let go whatever happens."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
from harness import open_files_in

from spambridge.config import Config, MilterConfig, PolicyConfig
from spambridge.message import Envelope
from spambridge.milter.bridge import AsyncBridge
from spambridge.milter.callbacks import SpamBridgeMilter
from spambridge.milter.session import Session
from spambridge.pipeline import Pipeline
from spambridge.verdict import FailAction, ScoreResult


class Ham:
    name = "spamd"

    async def scan(self, message: bytes, envelope: Envelope) -> ScoreResult:
        return ScoreResult("spamd", 0.0)

    async def aclose(self) -> None:
        pass


def test_a_bug_at_end_of_message_ends_in_on_error_not_pymilters_451(
        caplog: pytest.LogCaptureFixture) -> None:
    """A bug met while deciding (here: an observer, as the metrics are, that fails once)
    must end in the admin's on_error action with its reply, logged with its traceback: an
    exception out of the callback becomes pymilter's 451 "untrapped exception", which no
    policy names."""
    import Milter

    cfg = Config(policy=replace(PolicyConfig(), on_error=FailAction.REJECT))
    bridge = AsyncBridge().start()
    p = Pipeline(Ham(), bridge, cfg)  # type: ignore[arg-type]
    failures = [RuntimeError("an observer's bug")]

    def observer(ev: object, buf: object) -> None:
        if failures:
            raise failures.pop()

    p.observers.append(observer)
    m = SpamBridgeMilter(lambda: Session(p))
    replies: list[tuple[str, ...]] = []
    m.getsymval = lambda name: "4BUGGY" if name == "i" else None  # type: ignore[method-assign]
    m.setreply = lambda *a: replies.append(a)  # type: ignore[method-assign]
    m.session.connect("client.example.net", "192.0.2.7", "mx.example.org", "MTA-v4", 40312)
    m.session.start_message("<a@example.net>", "", False)
    m.session.add_header("Subject", b"hello")
    m.session.add_body(b"x\r\n")
    caplog.set_level(logging.INFO, logger="spambridge")
    try:
        assert m.eom() == Milter.REJECT
    finally:
        bridge.stop(timeout=1.0)
    assert replies == [("550", "5.7.1", "Message could not be checked for spam")]
    assert "4BUGGY: internal error at end of message" in caplog.text
    assert "RuntimeError: an observer's bug" in caplog.text
    assert m.session.buffer is None  # let go


def test_an_aborted_message_lets_go_of_its_spool_at_once(tmp_path: Path) -> None:
    """RSET, or a client gone mid-DATA (libmilter's abort): the body's spool file is closed
    then, not held by the idle connection until its next MAIL FROM or its end."""
    cfg = Config(milter=MilterConfig(spool_dir=str(tmp_path), spool_memory=0))
    bridge = AsyncBridge().start()
    try:
        m = SpamBridgeMilter(lambda: Session(Pipeline(Ham(), bridge, cfg)))  # type: ignore[arg-type]
        m.session.connect("client.example.net", "192.0.2.7", "mx.example.org", "MTA-v4", 40312)
        m.session.start_message("<a@example.net>", "", False)
        m.session.add_body(b"x" * 1000)
        assert open_files_in(str(tmp_path))
        m.abort()
        assert not open_files_in(str(tmp_path))
    finally:
        bridge.stop(timeout=1.0)


def test_the_header_callback_answers_as_pymilters_noreply_would() -> None:
    """app._register hands libmilter header_callback, not pymilter's path to the @noreply
    header(): the field must reach the session the same way, and the answer must be NOREPLY
    exactly when the MTA agreed to skip header replies (else CONTINUE, as header() gives)."""
    import Milter

    from spambridge.milter.callbacks import header_callback

    class Ctx:
        def __init__(self, m: SpamBridgeMilter) -> None:
            self.m = m

        def getpriv(self) -> SpamBridgeMilter:
            return self.m

    bridge = AsyncBridge().start()
    try:
        for protocol in (0, Milter.P_NR_HDR, Milter.P_NR_HDR | Milter.P_NR_EOH, Milter.P_NR_EOH):
            m = SpamBridgeMilter(lambda: Session(Pipeline(Ham(), bridge, Config())))  # type: ignore[arg-type]
            m._protocol = protocol
            m.session.start_message("<a@example.net>", "", False)
            got = header_callback(Ctx(m), "X-Spam-Flag", b"YES")
            assert got == m.header("Subject", b"hi")  # pymilter's own wrapper, same answer
            assert got == (Milter.NOREPLY if protocol & Milter.P_NR_HDR else Milter.CONTINUE)
            buf = m.session.buffer
            assert buf is not None
            assert buf.headers == [("X-Spam-Flag", b"YES"), ("Subject", b"hi")]
            assert buf.owned_headers() == [("X-Spam-Flag", 1)]
    finally:
        bridge.stop(timeout=1.0)
