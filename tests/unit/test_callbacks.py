"""The end-of-message callback without libmilter: what the MTA is told when the decision
path itself fails (a bug), and that the message's buffer is let go whatever happens."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
from harness import open_files_in

from spambridge.bridge import AsyncBridge
from spambridge.config import Config, MilterConfig, PolicyConfig
from spambridge.message import Envelope
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


def eom_of(p: Pipeline, qid: str) -> tuple[int, list[tuple[str, ...]], list[tuple[str, ...]]]:
    """One message through the end-of-message callback (no libmilter): what it returns, the
    replies it set and the fields it added."""
    m = SpamBridgeMilter(lambda: Session(p))
    replies: list[tuple[str, ...]] = []
    added: list[tuple[str, ...]] = []
    m.getsymval = lambda name: qid if name == "i" else None  # type: ignore[method-assign]
    m.setreply = lambda *a: replies.append(a)  # type: ignore[method-assign]
    m.addheader = lambda *a: added.append(a)  # type: ignore[method-assign]
    m.progress = lambda: None  # type: ignore[method-assign]
    m.session.connect("client.example.net", "192.0.2.7", "mx.example.org", "MTA-v4", 40312)
    m.session.start_message("<a@example.net>", "", False)
    m.session.add_header("Subject", b"hello")
    m.session.add_body(b"x\r\n")
    result = m.eom()
    assert m.session.buffer is None  # let go
    return result, replies, added


def test_a_bug_at_end_of_message_ends_in_on_error_not_pymilters_451(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug met while deciding (here: the policy, failing once) must end in the admin's
    on_error action with its reply, logged with its traceback: an exception out of the
    callback becomes pymilter's 451 "untrapped exception", which no policy names."""
    import Milter

    from spambridge import policy

    cfg = Config(policy=replace(PolicyConfig(), on_error=FailAction.REJECT))
    bridge = AsyncBridge().start()
    decide = policy.decide
    failures = [RuntimeError("a bug in the policy")]

    def buggy(*a: object, **kw: object) -> object:
        if failures:
            raise failures.pop()
        return decide(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(policy, "decide", buggy)
    caplog.set_level(logging.INFO, logger="spambridge")
    try:
        result, replies, _ = eom_of(Pipeline(Ham(), bridge, cfg), "4BUGGY")  # type: ignore[arg-type]
    finally:
        bridge.stop(timeout=1.0)
    assert result == Milter.REJECT
    assert replies == [("550", "5.7.1", "Message could not be checked for spam")]
    assert "4BUGGY: internal error at end of message" in caplog.text
    assert "RuntimeError: a bug in the policy" in caplog.text


def test_a_bug_in_reporting_the_decision_leaves_the_decision_as_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    """An observer (the metrics) failing after the decision was made and logged: the message
    had the whole decision made again as on_error, so with on_error = reject a ham was
    refused after its line said action=accept, and it was logged and counted twice. The
    decision stands; the bug is logged with its traceback."""
    import Milter

    cfg = Config(policy=replace(PolicyConfig(), on_error=FailAction.REJECT))
    bridge = AsyncBridge().start()
    p = Pipeline(Ham(), bridge, cfg)  # type: ignore[arg-type]
    seen: list[object] = []

    def observer(ev: object, buf: object) -> None:
        seen.append(ev)
        raise RuntimeError("an observer's bug")

    p.observers.append(observer)
    caplog.set_level(logging.INFO, logger="spambridge")
    try:
        result, replies, added = eom_of(p, "4BUGGY")
    finally:
        bridge.stop(timeout=1.0)
    assert result == Milter.ACCEPT and replies == []
    assert ("X-Spam-Status", "No, score=0.0 required=5.0 tests=none engine=spamd") in [
        a[:2] for a in added]
    decisions = [r.getMessage() for r in caplog.records if " action=" in r.getMessage()
                 and "reporting" not in r.getMessage()]
    assert len(decisions) == 1 and " action=accept " in decisions[0], decisions
    assert len(seen) == 1  # counted once
    assert "4BUGGY: internal error reporting the decision (action=accept)" in caplog.text
    assert "RuntimeError: an observer's bug" in caplog.text


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
