"""Header rendering: SpamAssassin-compatible values, folding, and nothing injectable."""

from __future__ import annotations

import itertools
import re

import pytest

from spambridge import headers
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
