"""Header rendering: SpamAssassin-compatible values, folding, and nothing injectable."""

from __future__ import annotations

import pytest

from spambridge import headers
from spambridge.config import PolicyConfig
from spambridge.verdict import Band, ScoreResult

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
    assert "GOOD_RULE" in h["X-Spam-Status"]
    assert "Bcc" not in h["X-Spam-Status"]


@pytest.mark.parametrize(
    "name", ["X-Spam-Flag", "x-spam-status", "X-SPAM-Score", "X-Spam-Anything-Else"]
)
def test_owned_headers(name: str) -> None:
    assert headers.is_owned(name)


@pytest.mark.parametrize("name", ["Subject", "X-Spammy", "X-Mailer", "Received"])
def test_not_owned(name: str) -> None:
    assert not headers.is_owned(name)
