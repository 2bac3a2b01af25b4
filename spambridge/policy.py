"""The one place that turns a scan outcome into an action. Pure: no I/O, no clock.

(outcome, config, where the mail came from) → Decision: band by the engine's thresholds, failure
class by its `on_*` key, tag-only mode softening reject/tempfail to tag/accept while keeping
what it would have done, and the site's own mail tagged, never refused or Subject-tagged.
"""

from __future__ import annotations

from dataclasses import replace

from spambridge import headers
from spambridge.config import PolicyConfig, Thresholds
from spambridge.verdict import (
    Action,
    Band,
    Decision,
    FailAction,
    Outcome,
    ScanError,
    ScoreResult,
    Skipped,
)

_FAIL_TO_ACTION = {
    FailAction.ACCEPT: Action.ACCEPT,
    FailAction.TEMPFAIL: Action.TEMPFAIL,
    FailAction.REJECT: Action.REJECT,
}

# built once: a dict literal per message cost four hashes of an Enum (a Python-level
# __hash__ on 3.11) besides the lookup
_BAND_TO_ACTION = {
    Band.HAM: Action.ACCEPT,
    Band.UNSURE: Action.TAG,
    Band.SPAM: Action.TAG,
    Band.REJECT: Action.REJECT,
}


def thresholds(engine: str, cfg: PolicyConfig) -> Thresholds:
    return cfg.bayes if engine == "bayes" else cfg.spamd


def band(score: float, t: Thresholds) -> Band:
    """Float comparisons, SpamAssassin style: a score equal to a threshold reaches it."""
    if score >= t.tag:
        return Band.REJECT if score >= t.reject else Band.SPAM
    if score >= t.ham and t.ham < t.tag:
        return Band.UNSURE
    return Band.HAM


def decide(outcome: Outcome, cfg: PolicyConfig, *, local: bool = False,
           authenticated: bool = False, host: str = "") -> Decision:
    """`local`: submitted on the host itself (sendmail(1)); `authenticated`: by SMTP AUTH;
    `host`: the MTA's name (macro j) for the Checker-Version field (headers.checker).
    The site's own mail is tagged by its X-Spam-* fields only: a DKIM signer before spambridge
    in the milter list (README: opendkim, spambridge) has signed its Subject already, so a
    tagged Subject would go out with a broken signature (a DMARC reject at the recipient),
    and the tag to a customer. A refusal of locally submitted mail reaches no client:
    Postfix bounces it (5xx) to the envelope sender, or keeps it in the maildrop (4xx);
    Sendmail's MSP bounces it and loses it when the bounce is refused too. Tag it instead."""
    if local or authenticated:
        cfg = replace(cfg, subject_tag="", tag_only=cfg.tag_only or local)
    if isinstance(outcome, Skipped):
        return Decision(Action.ACCEPT, Action.ACCEPT, reason=outcome.reason.value)
    if isinstance(outcome, ScanError):
        return _decide_failure(outcome, cfg, host)
    return _decide_score(outcome, cfg, host)


def _decide_score(result: ScoreResult, cfg: PolicyConfig, host: str) -> Decision:
    t = thresholds(result.engine, cfg)
    b = band(result.score, t)
    if b is Band.HAM and result.unread and t.ham < t.tag:
        # more MIME parts, nesting, delimiter lookalikes, entities or URLs than the tokenizer
        # reads: a message built so that what we read looks like ham is at least unsure
        b = Band.UNSURE
    intended = _BAND_TO_ACTION[b]
    action = intended
    if cfg.tag_only and action is Action.REJECT:
        action = Action.TAG
    is_spam = b in (Band.SPAM, Band.REJECT)
    shown = headers.shown_score(result.engine, result.score, t, b)
    hdrs = headers.render_score(result, t, b, shown, host)
    prefix = cfg.subject_tag if is_spam and action is Action.TAG and cfg.subject_tag else ""
    return Decision(
        action=action,
        intended=intended,
        headers=hdrs,
        subject_prefix=prefix,
        reply=cfg.reject_reply if action is Action.REJECT else None,
        engine=result.engine,
        score=result.score,
        shown=shown,
        reason=b.value,
    )


def _decide_failure(err: ScanError, cfg: PolicyConfig, host: str) -> Decision:
    intended = _FAIL_TO_ACTION[cfg.on(err.kind.policy_key)]
    action = intended
    if cfg.tag_only and action is not Action.ACCEPT:
        action = Action.ACCEPT  # tag-only never refuses mail, whatever went wrong
    reply = None
    if action is Action.REJECT:
        reply = cfg.unchecked_reject_reply  # not "rejected as spam": it was never judged
    elif action is Action.TEMPFAIL:
        reply = cfg.tempfail_reply
    return Decision(
        action=action,
        intended=intended,
        headers=headers.render_unchecked(err.kind, host) if action is Action.ACCEPT else (),
        reply=reply,
        engine=err.engine,
        reason=err.kind.value,
    )
