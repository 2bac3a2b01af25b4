"""Token lookups: the JSON-array query must find every token exactly as it was stored, odd
characters included, and fall back to the IN list for tokens JSON cannot carry to SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

from spambridge.bayes import store
from spambridge.bayes.store import Totals

ODD = ["plain", "quote\"d", "back\\slash", "tab\there", "new\nline", "caf\xe9", "\x85\xa0nbsp",
       "\x7f\x80\xff", "ctrl\x01\x1f", "[1,2]", '{"a": 1}', "\\u0041", "emoji\U0001f600",
       "sub:" + "x" * 300]
NUL = ["nul\x00byte", "\x00", "a\x00b\x00c"]


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "b.sqlite")
    writer = store.SqliteWriter(path)
    batch = writer.begin()
    for i, token in enumerate(ODD + NUL):
        batch.learn([token], "spam" if i % 2 else "ham")
    writer.commit(batch)
    writer.close()
    return path


@pytest.mark.parametrize("tokens", [ODD, NUL, ODD + NUL, [*ODD[3:5], "absent", "nul\x00"]])
def test_lookup_finds_every_stored_token_exactly(db: str, tokens: list[str]) -> None:
    reader = store.SqliteReader(db)
    totals, counts = reader.lookup(tokens)
    reader.close()
    stored = ODD + NUL
    assert totals == Totals(len(stored) // 2, len(stored) - len(stored) // 2)
    assert counts == {t: (stored.index(t) % 2, 1 - stored.index(t) % 2)
                      for t in tokens if t in stored}


def test_fetch_uses_one_statement_for_many_tokens(db: str) -> None:
    conn = store._connect(db, 1.0)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    found: dict[str, tuple[int, int] | None] = {}
    store.fetch_into(found, conn, [f"t{i}" for i in range(40_000)] + ODD)
    conn.close()
    assert sorted(found) == sorted(ODD)
    assert len(statements) == 1 and "json_each" in statements[0]
