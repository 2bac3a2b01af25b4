"""Policy table: (outcome, config) → action, reply, headers. Pure, no sockets."""

from __future__ import annotations

from dataclasses import replace

import pytest

from spambridge.config import PolicyConfig, Thresholds
from spambridge.policy import band, decide
from spambridge.verdict import (
    Action,
    Band,
    ErrorKind,
    FailAction,
    ScanError,
    ScoreResult,
    Skipped,
    SkipReason,
    SmtpReply,
)

CFG = PolicyConfig()


def spamd(score: float, *tests: str) -> ScoreResult:
    return ScoreResult("spamd", score, tuple(tests))


def hdr(decision_headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    return dict(decision_headers).get(name)


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        (-3.0, Action.ACCEPT),
        (0.0, Action.ACCEPT),
        (4.99, Action.ACCEPT),
        (5.0, Action.TAG),  # equal to tag_at reaches it (SpamAssassin's rule)
        (7.2, Action.TAG),
        (14.99, Action.TAG),  # a float comparison: not truncated to 14 or 15
        (15.0, Action.REJECT),
        (1000.0, Action.REJECT),
    ],
)
def test_spamd_bands(score: float, expected: Action) -> None:
    assert decide(spamd(score), CFG).action is expected


def test_reject_at_is_compared_as_float() -> None:
    cfg = replace(CFG, spamd=Thresholds(5.0, 5.0, 6.5))
    assert decide(spamd(6.4), cfg).action is Action.TAG
    assert decide(spamd(6.5), cfg).action is Action.REJECT


def test_reject_carries_configured_reply() -> None:
    cfg = replace(CFG, reject_reply=SmtpReply("554", "5.7.1", "No spam here"))
    d = decide(spamd(20.0, "GTUBE"), cfg)
    assert d.action is Action.REJECT
    assert d.reply == SmtpReply("554", "5.7.1", "No spam here")


def test_tag_only_never_rejects_but_remembers() -> None:
    cfg = replace(CFG, tag_only=True)
    d = decide(spamd(1000.0, "GTUBE"), cfg)
    assert d.action is Action.TAG
    assert d.intended is Action.REJECT
    assert d.reply is None
    assert hdr(d.headers, "X-Spam-Flag") == "YES"


def test_ham_headers() -> None:
    d = decide(spamd(1.3, "DKIM_SIGNED"), CFG)
    assert hdr(d.headers, "X-Spam-Flag") is None
    assert hdr(d.headers, "X-Spam-Status") == (
        "No, score=1.3 required=5.0 tests=DKIM_SIGNED engine=spamd"
    )
    assert hdr(d.headers, "X-Spam-Level") == "*"


def test_subject_tag_only_on_tagged_spam() -> None:
    cfg = replace(CFG, subject_tag="[SPAM]")
    assert decide(spamd(7.0), cfg).subject_prefix == "[SPAM]"
    assert decide(spamd(1.0), cfg).subject_prefix == ""
    assert decide(spamd(50.0), cfg).subject_prefix == ""  # rejected: nothing to tag


@pytest.mark.parametrize("kind", list(ErrorKind))
@pytest.mark.parametrize("choice", list(FailAction))
def test_each_failure_class_honours_its_key(kind: ErrorKind, choice: FailAction) -> None:
    cfg = replace(CFG, **{kind.policy_key: choice})
    # every other class stays at its default (accept), so only this key can matter
    d = decide(ScanError(kind, "spamd", "x"), cfg)
    expected = {FailAction.ACCEPT: Action.ACCEPT, FailAction.TEMPFAIL: Action.TEMPFAIL,
                FailAction.REJECT: Action.REJECT}[choice]
    assert d.action is expected
    if expected is Action.ACCEPT:
        assert hdr(d.headers, "X-Spam-Status") == f"No, unchecked={kind.value}"
        assert d.reply is None
    elif expected is Action.TEMPFAIL:
        assert d.reply == CFG.tempfail_reply
    else:  # never "rejected as spam": the message was not judged
        assert d.reply == CFG.unchecked_reject_reply
        assert str(d.reply) == "550 5.7.1 Message could not be checked for spam"


def test_tag_only_accepts_failures_with_marker() -> None:
    cfg = replace(CFG, tag_only=True, on_timeout=FailAction.TEMPFAIL)
    d = decide(ScanError(ErrorKind.TIMEOUT, "spamd"), cfg)
    assert d.action is Action.ACCEPT
    assert d.intended is Action.TEMPFAIL
    assert hdr(d.headers, "X-Spam-Status") == "No, unchecked=timeout"


@pytest.mark.parametrize("reason", list(SkipReason))
def test_skipped_mail_is_accepted_without_our_verdict(reason: SkipReason) -> None:
    d = decide(Skipped(reason), CFG)
    assert d.action is Action.ACCEPT
    assert d.headers == ()
    assert d.reason == reason.value


@pytest.mark.parametrize(
    ("score", "expected_band", "expected_action"),
    [
        (0.0, Band.HAM, Action.ACCEPT),
        (0.19, Band.HAM, Action.ACCEPT),
        (0.20, Band.UNSURE, Action.TAG),
        (0.5, Band.UNSURE, Action.TAG),
        (0.90, Band.SPAM, Action.TAG),
        (0.989, Band.SPAM, Action.TAG),
        (0.99, Band.REJECT, Action.REJECT),
    ],
)
def test_bayes_bands(score: float, expected_band: Band, expected_action: Action) -> None:
    assert band(score, CFG.bayes) is expected_band
    d = decide(ScoreResult("bayes", score), CFG)
    assert d.action is expected_action
    status = hdr(d.headers, "X-Spam-Status") or ""
    assert ("unsure=yes" in status) == (expected_band is Band.UNSURE)
    assert status.startswith("Yes," if expected_band in (Band.SPAM, Band.REJECT) else "No,")


@pytest.mark.parametrize(("score", "action", "band"), [
    (0.0, Action.ACCEPT, "unsure"),  # what was read looks like ham: unsure, tagged so
    (0.5, Action.TAG, "unsure"),
    (0.95, Action.TAG, "spam"),  # what was read is spam already: as it is
    (0.995, Action.REJECT, "reject"),
])
def test_a_message_built_to_hide_text_from_bayes_is_never_ham(
        score: float, action: Action, band: str) -> None:
    """A message with more MIME parts, nesting, delimiter lookalikes, entities or URLs than
    the tokenizer reads (the scanner's `unread`) scored on its visible part alone: a spam
    that hid its text behind 99 empty parts scored 0.0000 and was accepted as ham. It is
    at least unsure now, and its X-Spam-Status says what went unread; the Bayes verdict
    stands otherwise."""
    d = decide(ScoreResult("bayes", score, unread="parts"), CFG)
    status = hdr(d.headers, "X-Spam-Status") or ""
    assert d.reason == band and "unread=parts" in status
    assert d.action is (Action.TAG if band == "unsure" else action)
    assert ("unsure=yes" in status) == (band == "unsure")
    plain = decide(ScoreResult("bayes", score), CFG)
    assert "unread" not in (hdr(plain.headers, "X-Spam-Status") or "")
    assert plain.action is action


def test_tag_only_tags_the_subject_of_spam_it_would_have_rejected() -> None:
    """In tag-only mode the worst spam is delivered: it must carry the Subject tag like the
    spam just above tag_at, not reach the inbox looking cleaner than it."""
    cfg = replace(CFG, tag_only=True, subject_tag="[SPAM]")
    d = decide(spamd(1000.0, "GTUBE"), cfg)
    assert d.action is Action.TAG and d.intended is Action.REJECT
    assert d.subject_prefix == "[SPAM]"


def test_unsure_bayes_mail_keeps_its_subject() -> None:
    """Unsure is not spam (X-Spam-Status says `No, ... unsure=yes`): the Subject tag is for
    spam only, or a fresh database would tag much of the ham."""
    cfg = replace(CFG, subject_tag="[SPAM]")
    assert decide(ScoreResult("bayes", 0.5), cfg).subject_prefix == ""
    assert decide(ScoreResult("bayes", 0.95), cfg).subject_prefix == "[SPAM]"


@pytest.mark.parametrize("kind", list(ErrorKind))
@pytest.mark.parametrize("choice", [FailAction.TEMPFAIL, FailAction.REJECT])
def test_tag_only_never_refuses_mail_on_a_failure(kind: ErrorKind, choice: FailAction) -> None:
    """Tag-only mode is the safe trial run: a failure class set to reject or tempfail is
    logged as what it would have done, and the mail is accepted marked unchecked."""
    cfg = replace(CFG, tag_only=True, **{kind.policy_key: choice})
    d = decide(ScanError(kind, "spamd", "x"), cfg)
    assert d.action is Action.ACCEPT
    assert d.intended.value == choice.value  # logged as would=tempfail / would=reject
    assert d.reply is None
    assert hdr(d.headers, "X-Spam-Status") == f"No, unchecked={kind.value}"



@pytest.mark.parametrize(("outcome", "cfg", "status", "score"), [
    # a Bayes score 0.00004 under spam_cutoff rounds to it at four decimals
    (ScoreResult("bayes", 0.89996), CFG, "No, score=0.8999 required=0.9000", "0.8999"),
    # tag_at with two decimals: 5.0 points is below 5.04, which reads 5.0 at one decimal
    (spamd(5.0), replace(CFG, spamd=Thresholds(5.04, 5.04, 15.0)),
     "No, score=4.9 required=5.0", "4.9"),
    (ScoreResult("bayes", 0.9), CFG, "Yes, score=0.9000 required=0.9000", "0.9000"),
    (spamd(4.9), CFG, "No, score=4.9 required=5.0", "4.9"),
])
def test_mail_not_tagged_never_reads_as_reaching_the_threshold(
        outcome: ScoreResult, cfg: PolicyConfig, status: str, score: str) -> None:
    """Sieve's spamtest (README: 10, filed as Junk, "from the tag threshold up") reads score=
    and required= from X-Spam-Status: a message spambridge did not tag must not read
    `score=0.9000 required=0.9000`. As SpamAssassin does (its bug 6419), an untagged score that
    rounds up to the threshold is shown one step under it."""
    d = decide(outcome, cfg)
    assert (hdr(d.headers, "X-Spam-Status") or "").startswith(status + " ")
    assert hdr(d.headers, "X-Spam-Score") == score
    assert (hdr(d.headers, "X-Spam-Flag") == "YES") == status.startswith("Yes,")


@pytest.mark.parametrize(("score", "band", "status", "unsure", "shown"), [
    (0.19996, "ham", "No, score=0.1999 ", False, "0.1999"),  # under ham_cutoff 0.20
    (0.2, "unsure", "No, score=0.2000 ", True, "0.2000"),
    (0.98996, "spam", "Yes, score=0.9899 ", False, "0.9899"),  # tagged, under reject 0.99
    (0.99, "reject", "Yes, score=0.9900 ", False, "0.9900"),
    (0.999996, "reject", "Yes, score=1.0000 ", False, "1.0000"),
])
def test_a_bayes_score_reads_inside_its_band(score: float, band: str, status: str,
                                             unsure: bool, shown: str) -> None:
    """A Bayes score just under ham_cutoff or reject_cutoff read as reaching it: 0.19996
    showed `score=0.2000` with no `unsure=yes`, and a tagged 0.98996 was logged as
    `score=0.9900 action=tag` beside a reject_cutoff of 0.99 (bayes.md's bands). Header, log
    line and `check` show the score one step under the threshold its band ends at."""
    d = decide(ScoreResult("bayes", score), CFG)
    assert d.reason == band
    got = hdr(d.headers, "X-Spam-Status") or ""
    assert got.startswith(status) and ("unsure=yes" in got) == unsure, got
    assert hdr(d.headers, "X-Spam-Score") == d.shown == shown


def test_the_sites_own_mail_is_tagged_without_its_subject() -> None:
    """Mail submitted on the host (sendmail(1)) is never refused, only tagged; neither it nor
    mail sent with SMTP AUTH gets a Subject tag (a DKIM signature before us covers it)."""
    cfg = replace(CFG, subject_tag="[SPAM]")
    local = decide(spamd(50.0), cfg, local=True)
    assert (local.action, local.intended, local.subject_prefix) == (Action.TAG, Action.REJECT,
                                                                    "")
    assert hdr(local.headers, "X-Spam-Flag") == "YES"
    assert decide(spamd(7.0), cfg, local=True).subject_prefix == ""
    authenticated = decide(spamd(50.0), cfg, authenticated=True)
    assert authenticated.action is Action.REJECT  # refused at SMTP time: the client sees it
    assert decide(spamd(7.0), cfg, authenticated=True).subject_prefix == ""
    failed = decide(ScanError(ErrorKind.TIMEOUT, "spamd", "slow"),
                    replace(cfg, on_timeout=FailAction.REJECT), local=True)
    assert failed.action is Action.ACCEPT and failed.intended is Action.REJECT
