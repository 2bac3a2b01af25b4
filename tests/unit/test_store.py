"""Token lookups: the JSON-array query must find every token exactly as it was stored, odd
characters included, and fall back to the IN list for tokens JSON cannot carry to SQLite."""

from __future__ import annotations

import subprocess
import sys
import threading
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


def test_a_writer_killed_after_a_finished_one_closed_does_not_leave_its_writes_unfolded(
        db: str) -> None:
    """`train` A finishes while `train` B holds the write lock, and B is then killed (Dovecot's
    10 s limit, the OOM killer). A must not have left the -wal to B on the spot: nobody would
    fold it, and an admin's later `mv` of a retrained copy would get A's pages replayed onto
    the new file (corrupt). A keeps trying for a second, and folds once B is gone."""
    a = store.SqliteWriter(db)
    batch = a.begin()
    batch.learn(["from the pipe"], "spam")
    a.commit(batch)
    b = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from spambridge.bayes import store\n"
        f"w = store.SqliteWriter({db!r})\n"
        "w.begin()  # a bulk batch under way: it holds the write lock\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert b.stdout is not None and b.stdout.readline().strip() == "locked"
        threading.Timer(0.3, b.kill).start()
        a.close()
    finally:
        b.kill()
        b.wait()
    assert a.unfolded == "" and not a.fold_failed
    wal = Path(db + "-wal")  # A's pages are in the database file
    assert not wal.exists() or wal.stat().st_size == 0
