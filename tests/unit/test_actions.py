"""What the milter tells the MTA for a Decision (actions.apply), seen through a recording
context in place of pymilter's: which fields are removed and added, where, the Subject
rewrite, and the SMTP reply. Pure, no sockets; tests/integration drives the same code
through a real libmilter."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import Milter
import pytest

from spambridge import headers
from spambridge.config import PolicyConfig
from spambridge.milter import actions
from spambridge.policy import decide
from spambridge.verdict import (
    Action,
    Decision,
    ErrorKind,
    FailAction,
    ScanError,
    ScoreResult,
    Skipped,
    SkipReason,
)

CFG = PolicyConfig()
TAGGING = replace(CFG, subject_tag="[SPAM]")


class Ctx:
    """Records the calls libmilter would turn into milter protocol messages."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def addheader(self, field: str, value: str, idx: int = -1) -> None:
        self.calls.append(("add", field, value, idx))

    def chgheader(self, field: str, idx: int, value: str | None) -> None:
        self.calls.append(("chg", field, idx, value))

    def setreply(self, rcode: str, xcode: str | None = None, msg: str | None = None) -> None:
        self.calls.append(("reply", rcode, xcode, msg))

    def progress(self) -> None:
        """A no-op packet to the MTA: it tells the MTA nothing, so it is not recorded."""


def apply(decision: Decision, owned: list[tuple[str, int]] | None = None,
          subject: bytes | None = b"Hello", on_top: bool = False,
          subject_name: str = "Subject") -> tuple[int, Ctx]:
    ctx = Ctx()
    owned = owned or []
    forged = len(owned) + 1 if on_top else len(owned)  # a flood leaves forged fields behind
    return actions.apply(ctx, decision, owned, subject, "4ABC", forged=forged,
                         subject_name=subject_name), ctx


def spamd(score: float) -> ScoreResult:
    return ScoreResult("spamd", score, ("SOME_RULE",))


def test_tagged_spam_gets_its_subject_rewritten_in_place() -> None:
    """The first Subject (libmilter's index 1, the one header_value read) is rewritten:
    not a second Subject added beside it."""
    _, ctx = apply(decide(spamd(7.0), TAGGING), subject=b"Cheap pills")
    assert ("chg", "Subject", 1, "[SPAM] Cheap pills") in ctx.calls
    assert not [c for c in ctx.calls if c[0] == "add" and c[1] == "Subject"]


@pytest.mark.parametrize("name", ["subject", "SUBJECT", "SuBjEcT"])
def test_the_tagged_subject_keeps_the_name_as_the_sender_spelled_it(name: str) -> None:
    """Postfix writes a changed field under the name the milter gives: "subject:" became
    "Subject:", and `train` learned "header:Subject:1" from the tagged copy in Junk where
    live mail of its kind carries "header:subject:1"."""
    _, ctx = apply(decide(spamd(7.0), TAGGING), subject=b"Cheap pills", subject_name=name)
    assert ("chg", name, 1, "[SPAM] Cheap pills") in ctx.calls


def test_tagged_spam_without_a_subject_gets_one() -> None:
    """A spam with no Subject at all still shows the tag in the mail client."""
    _, ctx = apply(decide(spamd(7.0), TAGGING), subject=None)
    assert ("add", "Subject", "[SPAM]", -1) in ctx.calls
    assert not [c for c in ctx.calls if c[0] == "chg" and c[1] == "Subject"]


@pytest.mark.parametrize("subject", [
    b"[SPAM] Cheap pills",
    # Postfix strips one space after the colon: a tab, more blanks or a fold stay in the value
    b"\t[SPAM] Cheap pills", b"   [SPAM] Cheap pills", b"\r\n [SPAM] Cheap pills",
])
def test_a_subject_already_tagged_is_not_tagged_twice(subject: bytes) -> None:
    """Mail scanned twice (a second MX, a rescan) must not read "[SPAM] [SPAM] ..."."""
    _, ctx = apply(decide(spamd(7.0), TAGGING), subject=subject)
    assert not [c for c in ctx.calls if c[1] == "Subject"]


@pytest.mark.parametrize("subject", [
    b"=?UTF-8?Q?=5BSPAM=5D_caf=C3=A9?=", b"=?utf-8?b?W1NQQU1dIGNhZsOp?=",
    b" =?ISO-8859-1?Q?=5BSPAM=5D?= =?ISO-8859-1?Q?_caf=E9?=",
])
def test_a_tag_inside_an_encoded_word_is_not_added_twice(subject: bytes) -> None:
    """Clients re-encode a whole non-ASCII Subject, the tag with it: shown decoded, it reads
    "[SPAM] café" already."""
    _, ctx = apply(decide(spamd(7.0), TAGGING), subject=subject)
    assert not [c for c in ctx.calls if c[1] == "Subject"]


@pytest.mark.parametrize(("subject", "new"), [
    (b"=?UTF-8?Q?caf=C3=A9_=5BSPAM=5D?=", "[SPAM] =?UTF-8?Q?caf=C3=A9_=5BSPAM=5D?="),
    (b"=?x-unknown?Q?=5BSPAM=5D?=", "[SPAM] =?x-unknown?Q?=5BSPAM=5D?="),  # not decodable
    (b"=?UTF-8?B?!!!?= hi", "[SPAM] =?UTF-8?B?!!!?= hi"),
])
def test_an_encoded_subject_without_the_tag_in_front_is_tagged(subject: bytes, new: str) -> None:
    assert headers.subject_rewrite("[SPAM]", subject)[0] == new


def test_a_raw_iso_2022_jp_subject_keeps_its_escapes_when_tagged() -> None:
    """Older Japanese mailers send the Subject as raw ISO-2022-JP, 7-bit with ESC $ B / ESC ( B
    around the kanji: each ESC became a space, and no client could show the Japanese again."""
    raw = "会議の件 tagme".encode("iso-2022-jp")
    new = headers.subject_rewrite("[SPAM]", raw)[0]
    assert new is not None and new.encode() == b"[SPAM] " + raw
    assert new[len("[SPAM] "):].encode().decode("iso-2022-jp") == "会議の件 tagme"
    # a terminal's sequences are no text: still spaces
    assert headers.subject_rewrite("[SPAM]", b"\x1b[31mred\x1b]0;x\x07")[0] \
        == "[SPAM] [31mred ]0;x "


def test_the_tag_and_the_subject_have_one_space_between() -> None:
    assert headers.subject_rewrite("[SPAM]", b"  Hello")[0] == "[SPAM] Hello"


@pytest.mark.parametrize("blank", ["\u3000", "\u00a0", "\u2002"],
                         ids=["ideographic", "nbsp", "en-space"])
def test_a_subject_opening_with_a_blank_that_is_not_ascii_keeps_it(blank: str) -> None:
    """The blanks taken off before the tag are the MTA's (after the colon, a fold): str's
    lstrip() took any Unicode space too, so a Japanese Subject opening with an ideographic
    space (U+3000) lost it, and `train` learned another Subject than the one that came
    (without its first token). Only ASCII blanks and folds go; a Subject of such a blank
    alone is text, not an empty Subject."""
    subject = (blank + "\u4f1a\u8b70 sale").encode()
    assert headers.subject_rewrite("[SPAM]", b" \n\t" + subject)[0] == "[SPAM] " + subject.decode()
    assert headers.subject_rewrite("[SPAM]", blank.encode())[0] == "[SPAM] " + blank


@pytest.mark.parametrize("subject", [b"", b" ", b"\t  ", b"\n\t", b"\r\n ", b"\x01\x7f"],
                         ids=["empty", "blank", "blanks", "fold", "crlf-fold", "controls"])
def test_an_empty_subject_keeps_the_blank_that_tells_it_from_none(subject: bytes) -> None:
    """`Subject:` with nothing after it but blanks (or control characters, which become
    blanks) is written `Subject: [SPAM] `, as SpamAssassin's rewrite_header writes it; a
    message with no Subject gets `Subject: [SPAM]` added. Written the same (the tag alone, as
    a review of 2026-11-28 had it for a while), `train` took the empty Subject for an added
    one and learned the spam as having none ("noheader:subject")."""
    _, ctx = apply(decide(spamd(7.0), TAGGING), subject=subject)
    assert [c for c in ctx.calls if c[1] == "Subject"] == [("chg", "Subject", 1, "[SPAM] ")]
    assert headers.subject_rewrite("[SPAM]", None)[0] == "[SPAM]"


def test_a_long_subject_is_tagged_folded_and_never_over_990_octets_a_line(
        caplog: pytest.LogCaptureFixture) -> None:
    """A Subject the tag takes past 990 octets on one line (`Subject: [SPAM] ` and 975
    characters: 991, which a Sendmail relay breaks with a `!`; 990 characters made 1,006,
    past RFC 5322's 998) is folded after the tag; one that no fold can bring under RFC
    5322's limit (a word longer than a line) keeps its Subject, and the log says why."""
    for n, want in ((974, "[SPAM] " + "x" * 974), (975, "[SPAM]\n " + "x" * 975),
                    (989, "[SPAM]\n " + "x" * 989)):
        _, ctx = apply(decide(spamd(7.0), TAGGING), subject=b"x" * n)
        [(_, _, _, new)] = [c for c in ctx.calls if c[1] == "Subject"]
        assert new == want
        assert max(len(line) for line in ("Subject: " + new).encode().split(b"\n")) <= 990

    caplog.set_level(logging.WARNING, logger="spambridge")
    result, ctx = apply(decide(spamd(7.0), TAGGING), subject=b"x" * 1200)
    assert result == Milter.ACCEPT
    assert not [c for c in ctx.calls if c[1] == "Subject"]
    assert ("add", "X-Spam-Flag", "YES", actions.APPEND) in ctx.calls
    assert caplog.messages == [f"4ABC: the Subject is left untagged: {headers.TOO_LONG}"]


def test_forged_fields_are_removed_in_the_order_given_before_ours_are_added() -> None:
    """owned_headers lists each name's highest index first: deleting X-Spam-Flag 1 first
    would renumber the rest, and the last forged copy would stay."""
    owned = [("X-Spam-Flag", 2), ("X-Spam-Flag", 1), ("X-Spam-Score", 1)]
    _, ctx = apply(decide(spamd(1.0), CFG), owned)
    removed = [c[1:3] for c in ctx.calls if c[0] == "chg" and c[3] is None]
    assert removed == [("X-Spam-Flag", 2), ("X-Spam-Flag", 1), ("X-Spam-Score", 1)]
    first_add = next(i for i, c in enumerate(ctx.calls) if c[0] == "add")
    assert all(c[0] == "chg" for c in ctx.calls[:first_add])


def test_on_top_puts_our_fields_first_in_their_order() -> None:
    """With forged X-Spam-* fields left over (a flood beyond MAX_OWNED), ours go to the top,
    where a Sieve rule or a reader taking the first of each name finds ours."""
    d = decide(spamd(7.0), CFG)
    _, ctx = apply(d, on_top=True)
    added = [(c[1], c[3]) for c in ctx.calls if c[0] == "add"]
    assert added == [(name, i) for i, (name, _) in enumerate(d.headers)]
    _, ctx = apply(d, on_top=False)
    assert {c[3] for c in ctx.calls if c[0] == "add"} == {actions.APPEND}


def test_tempfail_sets_the_tempfail_reply_and_changes_nothing() -> None:
    cfg = replace(CFG, on_timeout=FailAction.TEMPFAIL)
    result, ctx = apply(decide(ScanError(ErrorKind.TIMEOUT, "spamd"), cfg),
                        [("X-Spam-Flag", 1)])
    assert result == Milter.TEMPFAIL
    assert ctx.calls == [("reply", "451", "4.7.1",
                          "Message could not be checked for spam, try again later")]


def test_reject_sets_the_reject_reply_and_changes_nothing() -> None:
    result, ctx = apply(decide(spamd(20.0), TAGGING), [("X-Spam-Flag", 1)])
    assert result == Milter.REJECT
    assert ctx.calls == [("reply", "550", "5.7.1", "Message rejected as spam")]


def test_reply_text_drops_control_characters_and_del() -> None:
    """libmilter sends the text as it is: a control byte or DEL would reach the SMTP client."""
    assert actions.reply_text("No\x7fspam\x01 here\x80 100%") == "Nospam here 100%%"


def test_a_tagged_message_is_accepted() -> None:
    result, _ = apply(decide(spamd(7.0), TAGGING))
    assert result == Milter.ACCEPT
    assert decide(spamd(7.0), TAGGING).action is Action.TAG


@pytest.mark.parametrize("decision", [
    decide(spamd(1.0), TAGGING),  # ham
    decide(ScoreResult("bayes", 0.5), TAGGING),  # unsure: not spam
    decide(ScanError(ErrorKind.TIMEOUT, "spamd"), TAGGING),  # accepted unchecked
    decide(Skipped(SkipReason.AUTHENTICATED), TAGGING),
], ids=["ham", "unsure", "unchecked", "skipped"])
def test_mail_not_tagged_as_spam_gets_no_subject_it_did_not_have(decision: Decision) -> None:
    """subject_tag is for spam: a message without a Subject (an automated report, a
    notification) that is not spam is delivered without one, not with an empty one."""
    result, ctx = apply(decision, subject=None)
    assert result == Milter.ACCEPT
    assert not [c for c in ctx.calls if c[1] == "Subject"], ctx.calls


class Refusing(Ctx):
    """libmilter saying no to field changes (an MTA that did not grant them, a value too big
    for its packets); adding a field still works."""

    def chgheader(self, field: str, idx: int, value: str | None) -> None:
        raise Milter.error("cannot change header")


def test_changes_libmilter_refuses_are_counted_and_the_first_is_named(
        caplog: pytest.LogCaptureFixture) -> None:
    """The message still gets its verdict (accepted, our fields added), and one warning says
    how many changes were refused and which came first: removing the forged fields, before
    the Subject, is what an admin must know about."""
    ctx = Refusing()
    caplog.set_level(logging.WARNING, logger="spambridge")
    result = actions.apply(ctx, decide(spamd(7.0), TAGGING),
                           [("X-Spam-Flag", 2), ("X-Spam-Flag", 1)], b"Cheap pills", "4ABC")
    assert result == Milter.ACCEPT
    assert ("add", "X-Spam-Flag", "YES", actions.APPEND) in ctx.calls
    assert [r.getMessage() for r in caplog.records] == [
        "4ABC: 3 change(s) to the message refused by libmilter, first: "
        "remove X-Spam-Flag[2]: cannot change header"]


def test_a_reply_libmilter_refuses_is_not_taken_for_an_mta_gone(
        caplog: pytest.LogCaptureFixture) -> None:
    """Setting a refusal's reply talks to no MTA (libmilter sends it after the callback), so
    its failure says nothing of the MTA: it was told as "the MTA got no reply … its milter
    timeout must be above scan_timeout", which sends the admin to the wrong setting."""

    class NoReply(Ctx):
        def setreply(self, rcode: str, xcode: str | None = None, msg: str | None = None) -> None:
            raise Milter.error("cannot set reply")

    caplog.set_level(logging.WARNING, logger="spambridge")
    result = actions.apply(NoReply(), decide(spamd(20.0), CFG), [], b"Cheap pills", "4ABC")
    assert result == Milter.REJECT
    assert [r.getMessage() for r in caplog.records] == [
        "4ABC: 1 change(s) to the message refused by libmilter, first: "
        "set the reply: cannot set reply"]


def test_a_refusal_to_an_mta_that_has_hung_up_says_it_got_no_reply(
        caplog: pytest.LogCaptureFixture) -> None:
    """libmilter writes a refusal's reply after the callback and says nothing when that write
    fails: the log said action=reject and no more, for mail the MTA had given its own
    milter_default_action. A packet written first fails the same way, and says so."""

    class Gone(Ctx):
        def progress(self) -> None:
            raise Milter.error("cannot notify progress")

    caplog.set_level(logging.WARNING, logger="spambridge")
    ctx = Gone()
    result = actions.apply(ctx, decide(spamd(20.0), CFG), [], b"Cheap pills", "4ABC")
    assert result == Milter.REJECT and ctx.calls == [
        ("reply", "550", "5.7.1", "Message rejected as spam")]
    assert [r.getMessage() for r in caplog.records] == [
        "4ABC: the MTA got no reply (action=reject): it closed the connection or stopped "
        "reading first (a packet written just before the reply failed: cannot notify "
        "progress). Its milter timeout (Postfix's milter_content_timeout, Sendmail's T=R: and "
        "T=E:) must be above scan_timeout"]


def test_changes_failing_after_the_first_to_an_mta_gone_say_it_got_no_reply(
        caplog: pytest.LogCaptureFixture) -> None:
    """Over TCP the first write to an MTA that has hung up still succeeds (its reset comes
    back after it): one field added, the rest failed, and the line said "refused by
    libmilter", which sent the admin after libmilter. A write after them tells."""

    class GoneOverTcp(Ctx):
        def addheader(self, field: str, value: str, idx: int = -1) -> None:
            if self.calls:
                raise Milter.error("cannot add header")
            super().addheader(field, value, idx)

        def progress(self) -> None:
            raise Milter.error("cannot notify progress")

    caplog.set_level(logging.WARNING, logger="spambridge")
    d = decide(spamd(7.0), TAGGING)
    result = actions.apply(GoneOverTcp(), d, [], b"Cheap pills", "4ABC")
    assert result == Milter.ACCEPT
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith(
        "4ABC: the MTA got no reply (action=tag): it closed the connection or stopped reading "
        f"first, and {len(d.headers) - 1} change(s) to the message failed, first: add "
        f"{d.headers[1][0]}: cannot add header."), line
    assert "refused by libmilter" not in line


class Probed(Ctx):
    """Counts the no-op packets written; the MTA's reset fails the `fail_at`th and on."""

    def __init__(self, fail_at: int = 0) -> None:
        super().__init__()
        self.fail_at, self.probes = fail_at, 0

    def progress(self) -> None:
        self.probes += 1
        if self.fail_at and self.probes >= self.fail_at:
            raise Milter.error("cannot notify progress")


def test_a_refusal_to_an_mta_gone_over_tcp_is_found_by_the_second_packet(
        caplog: pytest.LogCaptureFixture) -> None:
    """Over TCP the first write to an MTA that has hung up succeeds; only its reset, come
    back, fails the next one. One packet alone said nothing, and the log said action=reject
    for mail the MTA had given its own milter_default_action."""
    caplog.set_level(logging.WARNING, logger="spambridge")
    ctx = Probed(fail_at=2)
    assert actions.apply(ctx, decide(spamd(20.0), CFG), [], b"Cheap pills", "4ABC") \
        == Milter.REJECT
    assert ctx.probes == 2
    [line] = caplog.messages
    assert line.startswith("4ABC: the MTA got no reply (action=reject)"), line


def test_mail_whose_changes_all_went_through_costs_no_extra_packet(
        caplog: pytest.LogCaptureFixture) -> None:
    """The probe is written only where a change failed (to tell libmilter's no from an MTA
    gone) or for a refusal: every accepted message would otherwise send the MTA two more
    packets, and warn of an MTA gone that took all our changes."""
    caplog.set_level(logging.WARNING, logger="spambridge")
    ctx = Probed(fail_at=1)
    assert actions.apply(ctx, decide(spamd(7.0), TAGGING), [], b"Cheap pills", "4ABC") \
        == Milter.ACCEPT
    assert ctx.probes == 0 and caplog.messages == []


def test_a_reply_refused_to_an_mta_gone_says_the_mta_got_no_reply(
        caplog: pytest.LogCaptureFixture) -> None:
    """The reply libmilter would not set is no change to the message: the line says why
    the MTA got no reply (the packet that failed), not "1 change(s) to the message failed"."""

    class NoReplyGone(Probed):
        def setreply(self, rcode: str, xcode: str | None = None, msg: str | None = None) -> None:
            raise Milter.error("cannot set reply")

    caplog.set_level(logging.WARNING, logger="spambridge")
    ctx = NoReplyGone(fail_at=1)
    assert actions.apply(ctx, decide(spamd(20.0), CFG), [], b"Cheap pills", "4ABC") \
        == Milter.REJECT
    assert caplog.messages == [
        "4ABC: the MTA got no reply (action=reject): it closed the connection or stopped "
        "reading first (a packet written just before the reply failed: cannot notify "
        "progress). Its milter timeout (Postfix's milter_content_timeout, Sendmail's T=R: and "
        "T=E:) must be above scan_timeout"]


@pytest.mark.parametrize("subject", [b"[SPAM] Cheap pills", b"caf\xe9"],
                         ids=["tagged-already", "latin-1"])
def test_a_subject_left_as_it_came_for_a_routine_reason_logs_no_warning(
        caplog: pytest.LogCaptureFixture, subject: bytes) -> None:
    """Only a Subject too long to tag is worth a warning; a rescan finding the tag there, or
    8-bit text a rewrite would mangle, is routine: a warning for each buried the real ones."""
    caplog.set_level(logging.WARNING, logger="spambridge")
    result, ctx = apply(decide(spamd(7.0), TAGGING), subject=subject)
    assert result == Milter.ACCEPT
    assert not [c for c in ctx.calls if c[1] == "Subject"]
    assert caplog.messages == []
