"""Header rendering: SpamAssassin-compatible values, folding, and nothing injectable."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spambridge import __version__, headers
from spambridge.config import PolicyConfig
from spambridge.verdict import Band, ErrorKind, ScoreResult

T = PolicyConfig().spamd


def render(score: float, tests: tuple[str, ...] = (), engine: str = "spamd",
           band: Band = Band.SPAM) -> dict[str, str]:
    return dict(headers.render_score(ScoreResult(engine, score, tests), T, band))


def test_spam_headers_look_like_spamassassin() -> None:
    h = render(7.24, ("BAYES_99", "URIBL_BLOCKED"))
    assert h["X-Spam-Flag"] == "YES"
    assert h["X-Spam-Score"] == "7.2"
    assert h["X-Spam-Level"] == "*******"
    # folded like SpamAssassin's own, since the whole line would pass 78 columns
    assert h["X-Spam-Status"] == (
        "Yes, score=7.2 required=5.0 tests=BAYES_99,URIBL_BLOCKED\n\tengine=spamd"
    )


def test_level_is_capped_at_50_stars_and_never_negative() -> None:
    assert render(1000.0)["X-Spam-Level"] == "*" * 50
    assert render(-4.0, band=Band.HAM)["X-Spam-Level"] == ""


def test_long_test_lists_are_folded_under_78_columns() -> None:
    tests = tuple(f"SOME_LONG_RULE_NAME_{i}" for i in range(20))
    status = render(9.0, tests)["X-Spam-Status"]
    lines = status.split("\n")
    assert len(lines) > 2
    assert all(line.startswith("\t") for line in lines[1:])
    assert all(len(line) <= 78 for line in lines)
    assert status.replace("\n\t", " ").replace(", ", ",").count("SOME_LONG_RULE_NAME_") == 20


@pytest.mark.parametrize(
    "evil",
    ["A\r\nX-Spam-Flag: NO", "B\nBcc: victim@example", "C\x00D", "E F", "é", "x" * 65],
)
def test_hostile_symbols_never_reach_a_header(evil: str) -> None:
    h = render(9.0, ("GOOD_RULE", evil))
    for value in h.values():
        assert "\r" not in value
        assert not any(ord(c) < 32 and c not in "\n\t" for c in value)
        for line in value.split("\n")[1:]:
            assert line.startswith("\t")  # every newline is a fold, never a new header
    # the list is what a Sieve or procmail rule reads up to the next blank: "E F" in it
    # would end it early and leave a stray word among X-Spam-Status's fields
    status = h["X-Spam-Status"].replace("\n\t", " ")
    assert status == "Yes, score=9.0 required=5.0 tests=GOOD_RULE engine=spamd", status


@pytest.mark.parametrize(
    "name", ["X-Spam-Flag", "x-spam-status", "X-SPAM-Score", "X-Spam-Anything-Else"]
)
def test_owned_headers(name: str) -> None:
    assert headers.is_owned(name)


@pytest.mark.parametrize("name", ["Subject", "X-Spammy", "X-Mailer", "Received"])
def test_not_owned(name: str) -> None:
    assert not headers.is_owned(name)


BAYES = PolicyConfig().bayes


def test_bayes_scores_are_rendered_with_four_decimals_and_ten_stars_at_most() -> None:
    """Bayes scores are 0..1: four decimals (as `check` prints them), one star per tenth."""
    h = dict(headers.render_score(ScoreResult("bayes", 0.987654), BAYES, Band.SPAM))
    assert h["X-Spam-Score"] == "0.9877"
    assert h["X-Spam-Level"] == "*********"
    assert h["X-Spam-Status"].startswith("Yes, score=0.9877 required=0.9000 ")
    top = dict(headers.render_score(ScoreResult("bayes", 1.0), BAYES, Band.REJECT))
    assert top["X-Spam-Level"] == "*" * 10


def test_level_counts_whole_points_only() -> None:
    """SpamAssassin writes one star per whole point: a Sieve rule matching `*****` (5 points,
    the tag threshold) must not file a 4.9 as spam."""
    assert render(4.9, band=Band.HAM)["X-Spam-Level"] == "****"
    assert render(5.0)["X-Spam-Level"] == "*****"


def test_no_symbols_reads_tests_none() -> None:
    """As SpamAssassin writes it: an empty `tests=` breaks parsers looking for a rule list."""
    assert "tests=none " in render(1.0, band=Band.HAM)["X-Spam-Status"]


def test_symbol_list_is_bounded_at_max_tests() -> None:
    tests = tuple(f"R{i}" for i in range(headers.MAX_TESTS + 50))
    status = render(9.0, tests)["X-Spam-Status"].replace("\n\t", " ").replace(", ", ",")
    listed = status.split("tests=", 1)[1].split(" ", 1)[0].split(",")
    assert listed == [f"R{i}" for i in range(headers.MAX_TESTS)]


def test_symbol_names_longer_than_64_characters_are_dropped() -> None:
    status = render(9.0, ("A" * 64, "B" * 65))["X-Spam-Status"]
    assert "A" * 64 in status
    assert "B" * 65 not in status


def test_every_verdict_names_the_checker_first() -> None:
    """X-Spam-Checker-Version tells who wrote the X-Spam-* fields, scored or not: a Sieve
    rule or a second filter tells ours from another's by it."""
    for h in (headers.render_score(ScoreResult("spamd", 7.0), T, Band.SPAM),
              headers.render_unchecked(ErrorKind.TIMEOUT)):
        assert h[0][0] == "X-Spam-Checker-Version"
        assert h[0][1].startswith("spambridge ")


@pytest.mark.parametrize(("host", "shown"), [
    ("mx.example.com", " on mx.example.com"),
    ("mx-1.example.com.", " on mx-1.example.com."),
    ("localhost", " on localhost"),
    ("", ""),  # no macro j
    ("[192.0.2.1]", ""),
    ("mx example", ""),
    ("mx\r\nX-Evil: 1", ""),
    ("a." * 127 + "b", ""),  # 255 octets: longer than a DNS name
    ("-mx.example", ""),
])
def test_the_checker_names_the_mta_the_milter_ran_on(host: str, shown: str) -> None:
    """As SpamAssassin's "… on HOST": `check` finds the Received line the milter's MTA wrote
    in a delivered copy by it. The host is the MTA's macro j; what is not a host name is
    left out, never written into the header."""
    for h in (headers.render_score(ScoreResult("bayes", 0.1), T, Band.HAM, host=host),
              headers.render_unchecked(ErrorKind.TIMEOUT, host)):
        assert h[0] == ("X-Spam-Checker-Version", f"spambridge {__version__}{shown}")
        assert headers.checked_on(h[0][1].encode()) == shown[4:]
    assert headers.checked_on(b"SpamAssassin 3.4.6 (2021-04-09) on mx.example.com") == ""


def test_status_lines_are_filled_to_76_columns_and_no_further() -> None:
    """The fold is at 76 columns counting the field name on the first line and the tab on
    the others: a line that fits exactly stays whole, one character more folds."""
    status = render(9.0, ("A" * 26, "B" * 63, "C" * 11, "D" * 5))["X-Spam-Status"]
    assert ("X-Spam-Status: " + status).split("\n") == [
        "X-Spam-Status: Yes, score=9.0 required=5.0 tests=" + "A" * 26 + ",",  # 76 columns
        "\t" + "B" * 63 + ",",  # with C's 12 it would be 77
        "\t" + "C" * 11 + "," + "D" * 5 + " engine=spamd",
    ]


def test_no_status_line_passes_76_columns_whatever_the_rule_names() -> None:
    """As the header is written (`X-Spam-Status: ` on the first line, a tab on the others),
    no line is longer than 76 columns, for rule names of every length up to the 64 kept,
    and no line is broken before a word that still fitted."""
    for n in range(1, 65):
        for m in (1, 2, 3, 12):
            status = render(9.0, ("A" * n, "B" * m, "C" * n, "D"))["X-Spam-Status"]
            lines = ("X-Spam-Status: " + status).split("\n")
            assert all(len(line) <= 76 for line in lines), lines
            for line, after in itertools.pairwise(lines):
                first_word = re.split(r"(?<=,)| ", after[1:])[0]
                joint = "" if line.endswith(",") else " "
                assert len(line + joint + first_word) > 76, (line, after)


# ------------------------------------------------------------------------------------------------
# the tagged Subject, Sendmail's 990 octets a line and RFC 5322's 998


def written(value: str) -> list[bytes]:
    """The Subject as the MTA writes it: `Subject: ` and the value, a line per fold."""
    return ("Subject: " + value).encode().split(b"\n")


def unfolded(value: str) -> str:
    """As a mail client reads it (RFC 5322 unfolding: a line break before a blank goes)."""
    return re.sub(r"\n(?=[ \t])", "", value)


def test_a_subject_the_tag_pushes_over_990_octets_is_folded_after_the_tag() -> None:
    """`Subject: ` + "[SPAM] " + 974 characters is 990 octets: one line, as Sendmail's SMTP
    mailers (L=990) relay it whole. One more and the line was 991, which a Sendmail relay
    broke with a `!` (998 was the limit before; a 990-character Subject made 1,006). The
    fold goes after the tag, where the blank is ours: the sender's text stays as it came."""
    for subject in (b"y" * 973, b"y" * 974, ("\u00e9" * 487).encode()):  # 989, 990, 990
        new = headers.subject_rewrite("[SPAM]", subject)[0]
        assert new == "[SPAM] " + subject.decode(), subject[:20]
    assert max(map(len, written("[SPAM] " + "y" * 974))) == headers.SENDMAIL_LINE_MAX == 990
    for subject in (b"y" * 975, b"y" * 982, b"x" * 989, b"hello world " * 82,
                    ("\u00e9" * 487).encode() + b"x", ("\u00e9" * 494).encode()):
        new = headers.subject_rewrite("[SPAM]", subject)[0]
        assert new == "[SPAM]\n " + subject.decode(), subject[:20]
        assert max(len(line) for line in written(new)) <= headers.SENDMAIL_LINE_MAX
    # a rescan finds it tagged already
    assert headers.subject_rewrite("[SPAM]", ("[SPAM]\n " + "x" * 990).encode())[0] is None


def test_a_first_line_that_fits_with_the_tag_is_not_folded_after_it() -> None:
    """The fold after the tag is for a first line the tag pushes past 990 octets, not for a
    Subject long only in the lines the sender folded: its first line, tagged, is 990 octets
    at most and stays whole, as a client shows it."""
    for first in (b"y" * 974, b"short"):
        subject = first + b"\n\t" + b"z" * 900
        assert headers.subject_rewrite("[SPAM]", subject)[0] == "[SPAM] " + subject.decode()


def test_a_line_the_sender_sent_over_990_octets_is_folded_at_its_last_blank_that_fits() -> None:
    """Postfix takes header lines up to 2,048 bytes: a Subject over RFC 5322's limit gets
    its line folded where it has a blank, as late as fits, and reads the same unfolded."""
    subject = (b"a" * 600 + b" " + b"b" * 300 + b"  " + b"c" * 300
               + b"\n\t" + b"d" * 600 + b" " + b"e" * 599)
    new = headers.subject_rewrite("[SPAM]", subject)[0]
    assert new == ("[SPAM]\n " + "a" * 600 + " " + "b" * 300 + " \n " + "c" * 300
                   + "\n\t" + "d" * 600 + "\n " + "e" * 599)
    assert max(len(line) for line in written(new)) <= headers.SENDMAIL_LINE_MAX


@pytest.mark.parametrize(("line", "folded"), [
    (b"\t" + b"a" * 987 + b" b", b"\t" + b"a" * 987 + b" b"),  # 991 octets: within 990 it was
    (b"\t" + b"a" * 988 + b" b", b"\t" + b"a" * 988 + b"\n b"),  # 991: folded, 989 and 2
    (b"\t" + b"a" * 989 + b" b", b"\t" + b"a" * 989 + b"\n b"),  # 992: 990 and 2
    (b"\t" + b"a" * 990 + b" b", b"\t" + b"a" * 990 + b" b"),  # 993: no blank within 990
    (b"\t" + b"a" * 995 + b" b", b"\t" + b"a" * 995 + b" b"),  # 998: whole, RFC 5322's limit
    (b"\t" + b"a" * 996 + b" b", b"\t" + b"a" * 996 + b"\n b"),  # 999: folded within 998
    (b"\t" + b"a" * 990, b"\t" + b"a" * 990),  # 991, one word: whole
], ids=["990", "991", "992", "blank-past-990", "998", "999", "one-word"])
def test_a_line_the_sender_sent_of_991_to_998_octets_is_folded_where_it_has_a_blank(
        line: bytes, folded: bytes) -> None:
    """Tagged, the whole Subject is written again, the sender's continuation lines too: one
    of 991-998 octets is folded before its last blank within 990 (unfolded, it reads the
    same), so a Sendmail relay does not break it with a `!`. One whose blank comes only past
    990 octets, or that has none (a word of 990 octets or more), stays whole: RFC 5322
    allows it, the spam is tagged, and Sendmail would break the sender's word unscanned
    too. Over 998, the fold goes within 998."""
    new = headers.subject_rewrite("[SPAM]", b"short\n" + line)[0]
    assert new == "[SPAM] short\n" + folded.decode()
    assert unfolded(new) == "[SPAM] short" + line.decode()


@pytest.mark.parametrize(("subject", "fits"), [
    (b"x" * 998, b"x" * 997),  # after the fold: a blank and 998 octets
    (("\u00e9" * 499).encode(), ("\u00e9" * 498).encode() + b"x"),  # 998 octets, 999
    (b"short words\n\t" + b"x" * 1500, b"short words\n\t" + b"x" * 997),  # the sender's line
    (b"a" + b" " * 1000 + b"b", b"a" + b" " * 995 + b"b"),  # a line of blanks is no fold
    (b"a" + b" \t" * 500 + b"b", b"a" + b" \t" * 497 + b" b"),  # nor blanks and tabs
    (b"a" * 998 + b" b", b"a" * 997 + b" b"),  # the fold would leave 999 octets; 998
], ids=["ascii", "utf-8", "second-line", "blank-run", "blank-tab-run", "last-blank"])
def test_a_subject_no_fold_can_bring_under_998_octets_is_left_untagged(
        subject: bytes, fits: bytes) -> None:
    """Cut inside a word, the Subject would read differently; written whole, the line is
    over RFC 5322's limit. It is left as the sender wrote it, and the reason given. One
    octet less is tagged, that word's line whole at 998 octets (past Sendmail's 990: the
    sender's own word, which a relay breaks with or without the tag)."""
    assert headers.subject_rewrite("[SPAM]", subject) == (None, headers.TOO_LONG)
    new = headers.subject_rewrite("[SPAM]", fits)[0]
    assert new is not None and max(map(len, written(new))) == headers.LINE_MAX


PARTS = ["x", "x" * 7, "x" * 80, "x" * 400, "x" * 800, "\u00e9" * 400, "\u65e5\u672c" * 130,
         " ", "\t", "  ", "\n\t", "\n "]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PARTS), max_size=40))
def test_a_tagged_subject_reads_the_same_and_has_no_line_over_990_octets_it_could_fold(
        parts: list[str]) -> None:
    """Whatever the Subject's words, blanks and folds: tagged, it reads as the tag, a
    blank and the Subject (an empty one too), no line of it passes 990 octets but one with
    no blank to fold at within them (the sender's word, up to 998), no line we add is only
    blanks, and it is not tagged twice. It is left untagged only for a word over 800 octets
    (a continuation line's blanks, the word, the blanks after it)."""
    text = "".join(parts)
    new, why = headers.subject_rewrite("[SPAM]", text.encode())
    longest = max((len(w.encode()) for w in re.findall(r"[^ \t\n]+", text)), default=0)
    if new is None:
        assert why == headers.TOO_LONG and longest > 800, text
        return
    assert why == ""
    body = unfolded(text).lstrip()
    assert unfolded(new) == "[SPAM] " + body
    lines = written(new)
    assert max(map(len, lines)) <= headers.LINE_MAX
    for line in lines:  # over 990: no text, blanks, text in its first 990 octets and one
        assert len(line) <= 990 or not re.search(rb"[^ \t][ \t]+[^ \t]", line[:992]), line
    assert all(line[:1] in (b" ", b"\t") for line in lines[1:])
    blank_only = {line for line in lines if not line.strip()}
    assert blank_only <= set(text.encode().split(b"\n")), blank_only
    assert headers.subject_rewrite("[SPAM]", new.encode())[0] is None
