"""Apply a Decision through pymilter, and declare the capabilities it needs (set_flags),
so the two can never drift apart."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import Milter

from spambridge import headers
from spambridge.verdict import Action, Decision, SmtpReply

log = logging.getLogger("spambridge")

FLAGS = Milter.ADDHDRS | Milter.CHGHDRS

# insheader's index past every field: appended at the end by Postfix and Sendmail alike.
# Sendmail's addheader puts a field where one of its name stood, even one a milter has just
# removed: ours went where the sender's forged X-Spam-* fields were, scattered in the header
APPEND = 1 << 30

_RESULT = {
    Action.ACCEPT: Milter.ACCEPT,
    Action.TAG: Milter.ACCEPT,
    Action.REJECT: Milter.REJECT,
    Action.TEMPFAIL: Milter.TEMPFAIL,
}


class MilterContext(Protocol):
    def addheader(self, field: str, value: str, idx: int = -1) -> Any: ...
    def chgheader(self, field: str, idx: int, value: str | None) -> Any: ...
    def setreply(self, rcode: str, xcode: str | None = None, msg: str | None = None) -> Any: ...
    def progress(self) -> Any: ...


_TIMEOUT_ADVICE = ("Its milter timeout (Postfix's milter_content_timeout, Sendmail's T=R: and "
                   "T=E:) must be above scan_timeout")


def _unreachable(ctx: MilterContext) -> str:
    """Why the MTA cannot be reached, or "". libmilter writes the reply after eom() has
    returned, and a write that fails there ends the session without a word (no log, no
    callback that tells it from a normal close); a change libmilter refused may be its own
    no or a write to an MTA that has gone. So the no-op SMFIR_PROGRESS packet, which Postfix
    and Sendmail skip at end of message, is written: on a unix socket (and on a TCP one once
    the MTA's reset has come back) it fails when the MTA has hung up. A success proves
    nothing: see docs/reliability.md."""
    for _ in range(2):  # on TCP the first write to a closed peer succeeds; its reset fails the next
        try:
            ctx.progress()
        except Milter.error as e:  # libmilter's write failed
            return f"a packet written just before the reply failed: {e}"
    return ""


def reply_text(text: str) -> str:
    """libmilter treats the text as a format string: a lone % would drop the reply."""
    return "".join(c for c in text if 32 <= ord(c) < 127).replace("%", "%%")


def apply(
    ctx: MilterContext,
    decision: Decision,
    owned: list[tuple[str, int]],
    subject: bytes | None,
    queue_id: str = "",
    forged: int = 0,
    subject_name: str = "Subject",
) -> int:
    """Tell the MTA the decision. Each change to the message is tried on its own: one that
    libmilter refuses (a field too big for its 64 KiB packets, an MTA that did not grant the
    action) is skipped, the message still gets the verdict's reply — not the 451 "untrapped
    exception" pymilter would answer, which no policy names — and one line says what failed.
    `forged`: the X-Spam-* fields the message came with. When more than `owned` (a flood),
    the rest stay on mail that is accepted, and that is logged; ours then go first, where a
    reader taking the first of each name finds them. A refused message is not changed, and
    nothing forged in it is delivered: no warning for it. An MTA that hung up before the
    reply (its milter timeout ran out during the scan) is named as such: it applied its own
    action, not the one logged. `subject_name`: the Subject's name as the message spells it;
    Postfix writes a changed field under the name the milter gives, and the tokenizer counts
    a name as spelled (`header:subject:1`), so a "subject:" tagged as "Subject:" was learned
    from Junk with a token live mail of its kind never has."""
    qid = queue_id or "NOQUEUE"
    failed: list[str] = []
    on_top = forged > len(owned)

    def attempt(what: str, op: Callable[..., Any], *args: Any) -> None:
        try:
            op(*args)
        except Exception as e:  # Milter.error, DisabledAction: libmilter said no
            failed.append(f"{what[:80]}: {e}")

    refused = decision.action in (Action.REJECT, Action.TEMPFAIL)
    gone = ""
    if refused:  # setreply only stores the reply: nothing reaches the MTA before it is sent
        reply = decision.reply or SmtpReply("451", "4.7.1", "Try again later")
        attempt("set the reply", ctx.setreply, reply.code, reply.xcode, reply_text(reply.text))
        gone = _unreachable(ctx)
    else:
        for name, idx in owned:  # highest index first per name, so indexes stay valid
            attempt(f"remove {name}[{idx}]", ctx.chgheader, name, idx, None)
        for i, (name, value) in enumerate(decision.headers):
            attempt(f"add {name}", ctx.addheader, name, value, i if on_top else APPEND)
        if on_top:
            log.warning("%s: %d forged X-Spam-* fields, only the first %d removed%s",
                        qid, forged, len(owned),
                        "; ours go on top" if decision.headers else "")
        if decision.subject_prefix:
            new, why = headers.subject_rewrite(decision.subject_prefix, subject)
            if why == headers.TOO_LONG:  # the others (tagged already, not UTF-8) are routine
                log.warning("%s: the Subject is left untagged: %s", qid, why)
            if new is not None and subject is None:
                attempt("add Subject", ctx.addheader, "Subject", new)
            elif new is not None:
                attempt("tag the Subject", ctx.chgheader, subject_name, 1, new)
        if failed:  # libmilter's no, or an MTA gone (over TCP the first write to it still
            gone = _unreachable(ctx)  # succeeds): only another write tells which
    if gone:
        # "refused by libmilter" sent admins after libmilter; the MTA applied its own action
        how = (f", and {len(failed)} change(s) to the message failed, first: {failed[0]}"
               if failed and not refused else f" ({gone})")
        log.warning("%s: the MTA got no reply (action=%s): it closed the connection or "
                    "stopped reading first%s. %s", qid, decision.action.value, how,
                    _TIMEOUT_ADVICE)
    elif failed:
        log.warning("%s: %d change(s) to the message refused by libmilter, first: %s",
                    qid, len(failed), failed[0])
    return int(_RESULT[decision.action])
