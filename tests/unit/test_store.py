"""Token lookups: the JSON-array query must find every token exactly as it was stored, odd
characters included, and fall back to the IN list for tokens JSON cannot carry to SQLite."""

from __future__ import annotations

import grp
import os
import pwd
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from spambridge import permissions
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


def test_the_milter_scores_a_message_with_one_query_for_all_its_tokens(db: str) -> None:
    """The engine's own path (BayesScanner.score_now, as the milter and `check` call it), not
    only fetch_into: one statement reads the counts of a message's hundreds of tokens."""
    from spambridge.bayes.tokenizer import tokenize
    from spambridge.config import BayesConfig
    from spambridge.scanners.bayes import BayesScanner

    def mail(n: int, spam: bool) -> bytes:
        words = " ".join(f"{'deal' if spam else 'note'}{n}w{i}" for i in range(300))
        return (f"From: a{n}@example.org\nSubject: {'offer' if spam else 'minutes'} {n}\n\n"
                f"{words}\n").encode()

    w = store.SqliteWriter(db)
    batch = w.begin()
    for n in range(4):
        batch.learn(tokenize(mail(n, True)), store.SPAM)
        batch.learn(tokenize(mail(n, False)), store.HAM)
    w.commit(batch)
    w.close()
    scanner = BayesScanner(BayesConfig(db=db, min_trained=1), create=False)
    try:
        scanner.score_now(mail(0, True))  # opens the shared reader
        reader = scanner._reader
        assert reader is not None
        statements: list[str] = []
        reader.conn.set_trace_callback(statements.append)
        message = mail(99, True) + b" ".join(f"fresh{i}".encode() for i in range(400)) + b"\n"
        assert len(tokenize(message)) > 700
        scanner.score_now(message)
        reads = [st for st in statements if "tokens" in st]
        assert len(reads) == 1 and "json_each" in reads[0], statements
    finally:
        scanner.close()


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


def _commit(writer: store.SqliteWriter, token: str) -> None:
    batch = writer.begin()
    batch.learn([token], "spam")
    writer.commit(batch)


def test_a_wal_started_over_while_its_marks_are_read_is_not_taken_for_a_stale_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dovecot pipes at it: between the check's reading of the -wal's generation and of the
    file's mark, one pipe folded the -wal and the next started it over and marked the file
    with the new generation. The old generation against the new mark read as another file's:
    a pipe refused (its message never learned), with advice to move live pages aside. The
    check now takes a reading only if the -wal was not started over meanwhile."""
    path = str(tmp_path / "b.sqlite")
    first, second = store.SqliteWriter(path), store.SqliteWriter(path)
    _commit(first, "one")
    before = store.wal_generation(path + "-wal")
    read = store._mark_of
    raced = []

    def racing(p: str) -> bytes | None:
        if p == path and not raced:  # the file's mark: the other writers go first
            raced.append(True)
            first.close()  # folds: the -wal is emptied
            _commit(second, "two")  # starts it over, and marks it and the file
        return read(p)

    monkeypatch.setattr(store, "_mark_of", racing)
    assert store.foreign_wal(path) == ""
    assert raced and store.wal_generation(path + "-wal") not in (None, before)
    second.close()


def test_a_wal_started_over_at_every_reading_of_its_marks_is_not_taken_for_a_stale_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same race at every one of the check's readings (a long burst of Dovecot pipes): the
    -wal is busy, not a stale one left sitting there, so the database is opened, not refused
    on the last (mismatched) reading."""
    path = str(tmp_path / "b.sqlite")
    writers = [store.SqliteWriter(path) for _ in range(store.FOREIGN_READS + 1)]
    _commit(writers[0], "w0")
    read = store._mark_of
    raced: list[int] = []
    marking: list[bool] = []  # the writers' own readings (their _mark) are let through

    def racing(p: str) -> bytes | None:
        if p == path and not marking and len(raced) < store.FOREIGN_READS:
            n = len(raced)
            raced.append(n)
            marking.append(True)
            writers[n].close()  # folds: the -wal is emptied
            _commit(writers[n + 1], f"w{n + 1}")  # starts it over, and marks it and the file
            marking.clear()
        return read(p)

    monkeypatch.setattr(store, "_mark_of", racing)
    assert store.foreign_wal(path) == ""
    assert len(raced) == store.FOREIGN_READS
    monkeypatch.undo()
    writers[-1].close()
    reader = store.SqliteReader(path)
    assert reader.totals() == Totals(store.FOREIGN_READS + 1, 0)
    reader.close()


def test_no_writer_starts_the_wal_over_while_another_marks_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two writers marking across a new generation (the first between reading the header and
    setting the marks, the second folding, committing and marking meanwhile) left the file
    and the -wal with two marks: every opener, every writer included, refused the database,
    and moving the -wal aside lost the second's committed batch (a review's find). A writer
    now marks under the write lock."""
    path = str(tmp_path / "b.sqlite")
    first, second = store.SqliteWriter(path), store.SqliteWriter(path)
    _commit(first, "one")
    inside, go_on = threading.Event(), threading.Event()
    real = store.wal_generation

    def paused(wal: str) -> bytes | None:
        g = real(wal)
        if threading.current_thread() is not threading.main_thread() and not inside.is_set():
            inside.set()  # the first writer has read the header: hold it there
            assert go_on.wait(10)
        return g

    monkeypatch.setattr(store, "wal_generation", paused)
    marking = threading.Thread(target=first._mark)
    marking.start()
    try:
        assert inside.wait(10)
        second.timeout = 0.3  # give up waiting for the write lock after that
        with pytest.raises(store.StoreError, match="cannot start a write"):
            _commit(second, "two")
    finally:
        go_on.set()
        marking.join(10)
    monkeypatch.undo()
    second.timeout = store.BUSY_TIMEOUT_WRITE
    _commit(second, "two")
    second.close()
    first.close()
    assert store.foreign_wal(path) == ""
    reader = store.SqliteReader(path)
    assert reader.totals() == Totals(2, 0)
    reader.close()


def test_a_write_refused_for_another_reason_than_the_lock_is_not_tried_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only SQLite's "busy" means another writer holds the lock and the next try may get it;
    any other refusal of BEGIN IMMEDIATE (here: a transaction already open on the connection)
    would only fail again, so `train` says it at once instead of retrying it until its
    deadline (30 s, longer than Dovecot gives a pipe)."""
    writer = store.SqliteWriter(str(tmp_path / "b.sqlite"), timeout=1.0)
    slept: list[float] = []
    monkeypatch.setattr(store.time, "sleep", slept.append)
    writer.conn.execute("BEGIN")
    with pytest.raises(store.StoreError,
                       match="cannot start a write: cannot start a transaction within"):
        writer.begin()
    assert slept == []
    writer.close()


def test_unlearning_what_the_database_does_not_hold_stops_at_zero(tmp_path: Path) -> None:
    """A message forgotten or moved after [bayes] max_tokens or max_bytes changed gives tokens
    it was never learned with: no count, and no total, may go below zero (a negative count
    would make the token a clue for the other class), neither in the file nor in what a
    selective `train` scores with (Batch.current) before the commit."""
    path = str(tmp_path / "b.sqlite")
    writer = store.SqliteWriter(path)
    batch = writer.begin()
    batch.learn(["both", "hamonly"], "ham")
    writer.commit(batch)
    batch = writer.begin()
    batch.learn(["both", "hamonly", "never"], "spam", -1)  # a spam that was never learned
    assert batch.current(["both", "hamonly", "never"]) == (Totals(0, 1), [(0, 1), (0, 1), None])
    writer.commit(batch)
    writer.close()
    reader = store.SqliteReader(path)
    assert reader.lookup(["both", "hamonly", "never"]) == (
        Totals(0, 1), {"both": (0, 1), "hamonly": (0, 1)})
    reader.close()


def test_a_database_learned_with_another_tokenizer_version_is_refused(tmp_path: Path) -> None:
    """Its token spellings differ from ours: scored or trained on, every message would miss
    its clues. Both the milter's reader and `train` refuse it and say to retrain."""
    path = str(tmp_path / "b.sqlite")
    store.create(path)
    with sqlite3.connect(path) as c:
        c.execute("UPDATE meta SET value = '0' WHERE key = 'tokenizer'")
    c.close()
    with pytest.raises(store.StoreError, match=r"tokenizer version 0.*retrain"):
        store.SqliteReader(path)
    with pytest.raises(store.StoreError, match=r"tokenizer version 0.*retrain"):
        store.SqliteWriter(path)


@pytest.mark.parametrize(("schema", "tokenizer", "said"), [
    (None, "2", "written by a newer spambridge (tokenizer version 2; this one has 1): run that "
     "version again, or retrain"),
    (2, None, "written by a newer spambridge (schema version 2; this one has 1): run that version "
     "again, or retrain"),
    (None, "0", "written by an older spambridge (tokenizer version 0; this one has 1), whose "
     "tokens this one no longer makes: retrain into a new database and copy it in"),
    (None, "missing", "records no tokenizer version"),
])
def test_a_database_of_another_version_says_which_way_and_what_to_do(
        tmp_path: Path, schema: int | None, tokenizer: str | None, said: str) -> None:
    """After a downgrade the spambridge that wrote the database can still use it: retraining
    is not the only way out. Said alike by the milter's reader, `train` and `check`; and a
    missing version is not "version None"."""
    assert store.SCHEMA_VERSION == 1 and store.TOKENIZER_VERSION == 1  # as `said` has them
    path = str(tmp_path / "b.sqlite")
    store.create(path)
    with sqlite3.connect(path) as c:
        if schema is not None:
            c.execute(f"PRAGMA user_version={schema}")
        if tokenizer == "missing":
            c.execute("DELETE FROM meta")
        elif tokenizer is not None:
            c.execute("UPDATE meta SET value = ? WHERE key = 'tokenizer'", (tokenizer,))
    c.close()
    for open_it in (store.SqliteReader, store.SqliteWriter):
        with pytest.raises(store.StoreError) as e:
            open_it(path)
        assert said in str(e.value) and "None" not in str(e.value), str(e.value)


def test_train_names_the_schema_of_a_newer_spambridge_database(tmp_path: Path) -> None:
    """A database a newer spambridge wrote (our tables, a higher schema version): `train` says
    which version it is, not that it is another program's file, and leaves it as it was."""
    path = str(tmp_path / "b.sqlite")
    store.create(path)
    with sqlite3.connect(path) as c:
        c.execute(f"PRAGMA user_version={store.SCHEMA_VERSION + 1}")
    c.close()
    with pytest.raises(store.StoreError, match=f"schema version {store.SCHEMA_VERSION + 1}"):
        store.SqliteWriter(path)
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION + 1
    c.close()


def test_a_refusal_the_mode_does_not_explain_names_acls_and_the_immutable_flag(
        tmp_path: Path) -> None:
    """os.access says no while the mode bits allow (`chattr +i`, an ACL deny): the advice was
    "chmod u+rw" for a file whose owner had rw already."""
    db = tmp_path / "bayes.sqlite"
    db.write_bytes(b"")
    db.chmod(0o600)  # ours, and our class may read and write it
    why = permissions.why_not(str(db), db.stat(), "rw")
    assert why == (f"its mode allows it, so an ACL (getfacl {db}) or the immutable flag "
                   f"(lsattr {db}) refuses it")
    assert "chmod" not in why


def test_a_directory_given_as_the_database_is_said_to_be_one(tmp_path: Path) -> None:
    """`db = "/var/lib/spambridge"` (the directory, not the file in it): the milter's warning,
    every message's error= and `train` said SQLite's "disk I/O error" or "unable to open
    database file", and an admin went looking for a failing disk."""
    folder = tmp_path / "spambridge"
    folder.mkdir()
    for open_it in (store.SqliteReader, store.SqliteWriter):
        with pytest.raises(store.StoreError) as e:
            open_it(str(folder))
        assert f"{folder} is a directory: the database is a file, such as " \
            f"{folder}/bayes.sqlite" in str(e.value), str(e.value)


def test_only_the_database_create_made_and_nothing_wrote_to_is_taken_back(
        tmp_path: Path) -> None:
    """A `run` that fails to start takes back the empty database it made (the directories
    made for it with it): never a database that was there, one trained into since (a
    `train` run at the same moment, in the -wal or folded into the file), or another file
    moved to its path."""
    path = tmp_path / "lib" / "spambridge" / "bayes.sqlite"
    made = store.create(str(path))
    assert made is not None and store.create(str(path)) is None  # there now: not made again
    assert store.remove_made(made) == ""
    assert not (tmp_path / "lib").exists()

    made = store.create(str(path))
    assert made is not None
    writer = store.SqliteWriter(str(path))
    batch = writer.begin()
    batch.learn(["cheap", "pills"], "spam")
    writer.commit(batch)  # its pages in the -wal while the writer is open
    assert store.remove_made(made) == "a -wal beside it holds pages written since"
    writer.close()  # folded into the file
    assert store.remove_made(made) == "it was written to since (or another file put in its place)"
    reader = store.SqliteReader(str(path))
    assert reader.totals() == Totals(1, 0)
    reader.close()

    other = tmp_path / "other.sqlite"
    path.unlink()
    made = store.create(str(path))
    assert made is not None
    store.create(str(other))
    other.replace(path)  # a copy moved into place
    assert store.remove_made(made) == "it was written to since (or another file put in its place)"
    assert path.exists()

    path.unlink()  # an admin's `rm` before the failed start cleaned up: said, not "removed"
    made = store.create(str(path))
    assert made is not None
    path.unlink()
    assert store.remove_made(made) == "it is gone already"


@pytest.mark.parametrize("left", [
    "UPDATE totals SET nspam = 1",  # a message learned with no tokens (an empty one)
    "INSERT INTO tokens VALUES ('cheap', 1, 0)",
    "INSERT INTO messages VALUES (x'00', 'spam', 0)",  # a key `train` keeps
], ids=["totals", "tokens", "messages"])
def test_anything_a_train_run_left_in_the_made_database_keeps_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, left: str) -> None:
    """Whichever of its tables a `train` run racing create() wrote to, the database is not
    taken back as empty: a count alone, a token alone or a message's key alone is learning
    an admin would lose."""
    path = tmp_path / "bayes.sqlite"
    schema = store._ensure_schema

    def schema_then_written(conn: sqlite3.Connection, p: str) -> None:
        schema(conn, p)
        with sqlite3.connect(p) as other:
            other.execute(left)
        other.close()

    monkeypatch.setattr(store, "_ensure_schema", schema_then_written)
    made = store.create(str(path))
    assert made is not None
    assert store.remove_made(made) == "it holds learned messages"
    assert path.exists()


def test_a_database_trained_into_while_create_made_it_is_not_taken_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `train` run that starts at the moment a `run` creates the database finds the file
    there, waits for the schema and learns (the run's WAL switch waits for it, busy): done
    before create() looks at the file, its message was in what create() took as the empty
    database it made, and a start that failed then took it back with the message in it."""
    path = tmp_path / "bayes.sqlite"
    schema = store._ensure_schema
    trained = []

    def schema_then_a_train_run(conn: sqlite3.Connection, p: str) -> None:
        schema(conn, p)
        if not trained:  # the run's create; the train run's own create comes through here too
            trained.append(True)
            writer = store.SqliteWriter(p)
            batch = writer.begin()
            batch.learn(["cheap", "pills"], "spam")
            writer.commit(batch)
            writer.close()

    monkeypatch.setattr(store, "_ensure_schema", schema_then_a_train_run)
    made = store.create(str(path))
    assert made is not None and trained
    assert store.remove_made(made) == "it holds learned messages"
    reader = store.SqliteReader(str(path))
    assert reader.totals() == Totals(1, 0)
    reader.close()


def _counts(path: Path) -> tuple[int, int, int]:
    with sqlite3.connect(path) as c:
        messages = c.execute("SELECT count(*) FROM messages").fetchone()[0]
        toks = c.execute("SELECT count(*) FROM tokens").fetchone()[0]
        nspam, nham = c.execute("SELECT nspam, nham FROM totals").fetchone()
    c.close()
    return messages, toks, nspam + nham


@pytest.mark.parametrize("how", ["moved over", "removed", "symlink retargeted"])
def test_a_batch_is_not_committed_into_a_file_the_path_no_longer_names(
        tmp_path: Path, how: str) -> None:
    """docs/bayes.md says never to move a file over the database while a `train` runs; one
    that did lost what the run learned after it without a word: SQLite writes on through the
    file it has open, which nothing reads again, and `train` said "learned". The batch open
    at the move is now refused (rolled back), and so is every batch begun after it."""
    live = tmp_path / "bayes.sqlite"
    path = live
    if how == "symlink retargeted":  # a configured path that is a symlink: the one read
        path = tmp_path / "link.sqlite"
        path.symlink_to(live)
    store.create(str(live))
    fresh = tmp_path / "fresh.sqlite"
    store.create(str(fresh))
    writer = store.SqliteWriter(str(path))
    try:
        batch = writer.begin()
        batch.learn(["before"], "spam")
        batch.mark(b"a" * 16, "spam")
        writer.commit(batch)  # in place: saved
        batch = writer.begin()
        batch.learn(["after"], "spam")
        batch.mark(b"b" * 16, "spam")
        if how == "moved over":
            fresh.replace(live)
        elif how == "removed":
            live.unlink()
        else:
            path.unlink()
            path.symlink_to(fresh)
        with pytest.raises(store.Replaced,
                           match="removed" if how == "removed" else "replaced by another"):
            writer.commit(batch)
        with pytest.raises(store.Replaced):
            writer.begin()
    finally:
        writer.close()
    if how != "removed":
        assert _counts(path) == (0, 0, 0)  # the file in place: nothing of the run's
    else:
        assert not live.exists()


def test_a_batch_in_place_is_committed(tmp_path: Path) -> None:
    """The check does not refuse the file it opened, through a symlink or not, nor after
    SQLite's own checkpoints rewrote it in place."""
    live = tmp_path / "bayes.sqlite"
    link = tmp_path / "link.sqlite"
    link.symlink_to(live)
    writer = store.SqliteWriter(str(link))
    try:
        for i in range(3):
            batch = writer.begin()
            batch.learn([f"t{i}"], "ham")
            batch.mark(bytes([i]) * 16, "ham")
            writer.commit(batch)
            writer.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        writer.close()
    assert _counts(live) == (3, 3, 3)


@pytest.fixture
def strict_umask() -> Iterator[None]:
    """umask 077, as some admins, init systems and containers start the milter with."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def test_every_directory_made_for_a_new_database_is_0750_whatever_the_umask(
        tmp_path: Path, strict_umask: None) -> None:
    """`db = /srv/missing/a/b/bayes.sqlite` with several levels missing: under umask 077 the
    directories above the last were made 0700 (mkdir -p takes the umask for them), and the
    last one too, so a milter dropping to its [milter] user could not cross them."""
    made = store.create(str(tmp_path / "missing" / "a" / "b" / "bayes.sqlite"))
    dirs = [tmp_path / "missing" / "a" / "b", tmp_path / "missing" / "a", tmp_path / "missing"]
    assert made is not None and made.dirs == tuple(str(d) for d in dirs)
    assert {str(d): oct(stat.S_IMODE(d.stat().st_mode)) for d in dirs} == {
        str(d): "0o750" for d in dirs}


@pytest.mark.skipif(os.geteuid() != 0, reason="hands directories to another user: needs root")
def test_every_directory_made_for_a_new_database_is_handed_to_dir_owner(
        tmp_path: Path, strict_umask: None) -> None:
    """Root starting the milter with [milter] user made only the last directory the user's:
    the ones above it stayed root's, and under umask 077 the user could not reach its own."""
    nobody = pwd.getpwnam("nobody")
    owner = (nobody.pw_uid, nobody.pw_gid)
    store.create(str(tmp_path / "missing" / "a" / "b" / "bayes.sqlite"), owner)
    dirs = [tmp_path / "missing", tmp_path / "missing" / "a", tmp_path / "missing" / "a" / "b"]
    assert {str(d): (d.stat().st_uid, d.stat().st_gid) for d in dirs} == {
        str(d): owner for d in dirs}


@pytest.mark.skipif(os.geteuid() != 0, reason="hands directories to another user: needs root")
def test_a_directory_made_under_a_setgid_parent_keeps_the_parents_group(
        tmp_path: Path, strict_umask: None) -> None:
    """A setgid directory (`install -d -g mail -m 2770`: the group the Dovecot pipe and the
    milter share) above a database not made yet: the directories made below it inherit its
    group and setgid bit, as the admin set it up, and stay in that group when handed to the
    milter's user; they were given the user's own group, so the file SQLite makes there was
    the pipe's no more."""
    nobody = pwd.getpwnam("nobody")
    mail = grp.getgrnam("mail").gr_gid  # not nobody's group
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, 0, mail)
    shared.chmod(0o2770)
    store.create(str(shared / "a" / "b" / "bayes.sqlite"), (nobody.pw_uid, nobody.pw_gid))
    dirs = [shared / "a", shared / "a" / "b"]
    assert {str(d): (d.stat().st_uid, d.stat().st_gid, bool(d.stat().st_mode & stat.S_ISGID))
            for d in dirs} == {str(d): (nobody.pw_uid, mail, True) for d in dirs}


def test_a_new_database_under_a_symlink_to_a_directory_is_made_in_its_target(
        tmp_path: Path) -> None:
    """`/var/lib/spambridge` a symlink into a directory that is there (moved to a bigger
    disk): `run` and `train` make the missing directories and the database through it, in
    the link's target, and the link stays a link."""
    target = tmp_path / "data"
    target.mkdir()
    link = tmp_path / "spambridge"
    link.symlink_to(target)
    store.create(str(link / "lib" / "bayes.sqlite"))
    assert (target / "lib" / "bayes.sqlite").is_file()
    assert link.is_symlink()


def test_a_directory_made_for_a_new_database_is_0750_under_the_usual_umask(
        tmp_path: Path) -> None:
    """Under umask 022 (most shells, systemd) the database's directory made by `run` or
    `train` is 0750, as docs/bayes.md says, not the umask's 0755 that lets every local user
    list it (the -wal, -shm and any copy an admin left beside it)."""
    old = os.umask(0o022)
    try:
        store.create(str(tmp_path / "lib" / "spambridge" / "bayes.sqlite"))
    finally:
        os.umask(old)
    dirs = [tmp_path / "lib", tmp_path / "lib" / "spambridge"]
    assert {str(d): oct(stat.S_IMODE(d.stat().st_mode)) for d in dirs} == {
        str(d): "0o750" for d in dirs}


@pytest.mark.skipif(os.geteuid() != 0, reason="hands directories to another user: needs root")
def test_a_directory_another_start_makes_meanwhile_is_left_as_it_made_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `train` run by the admin makes the database's directory at the moment the milter's
    start goes to make it: that directory is the other's, its owner and mode as it made them,
    never handed to the milter's user and opened up to 0750."""
    nobody = pwd.getpwnam("nobody")
    mail = grp.getgrnam("mail").gr_gid
    lib = tmp_path / "lib"
    mkdir = os.mkdir

    def made_meanwhile(path: str, mode: int = 0o777) -> None:
        if path == str(lib):
            mkdir(path, 0o700)  # the other start's, under its umask 077
            os.chown(path, 0, mail)
        mkdir(path, mode)

    monkeypatch.setattr(os, "mkdir", made_meanwhile)
    store.create(str(lib / "bayes.sqlite"), (nobody.pw_uid, nobody.pw_gid))
    st = lib.stat()
    assert (st.st_uid, st.st_gid, oct(stat.S_IMODE(st.st_mode))) == (0, mail, "0o700")


@pytest.mark.skipif(os.geteuid() != 0, reason="hands directories to another user: needs root")
def test_a_symlink_put_where_a_directory_was_just_made_hands_nothing_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between the mkdir of the database's directory and its chown, one who may write the
    directory above puts a symlink in its place, pointing at a directory of root's: the
    start stops (an error naming that path), and root's directory stays root's 0700, never
    handed to the milter's user nor opened up."""
    nobody = pwd.getpwnam("nobody")
    roots = tmp_path / "roots"
    roots.mkdir(mode=0o700)
    lib = tmp_path / "lib"
    mkdir = os.mkdir

    def swapped(path: str, mode: int = 0o777) -> None:
        mkdir(path, mode)
        if path == str(lib):
            os.rmdir(path)
            os.symlink(roots, path)

    monkeypatch.setattr(os, "mkdir", swapped)
    with pytest.raises(NotADirectoryError, match=str(lib)):
        store.create(str(lib / "bayes.sqlite"), (nobody.pw_uid, nobody.pw_gid))
    st = roots.stat()
    assert (st.st_uid, st.st_gid, oct(stat.S_IMODE(st.st_mode))) == (0, 0, "0o700")


def test_messages_an_earlier_spambridge_commits_before_the_keys_are_recorded_count(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An earlier spambridge's bulk `train`, still running through an upgrade, commits its
    first batch into a new database between this `train`'s look (no message yet) and its
    taking the write lock to record `keys`: those messages are keyed the earlier way, so the
    database must not be recorded as holding none, and is searched under earlier keys."""
    path = str(tmp_path / "b.sqlite")
    writer = store.SqliteWriter(path)
    take = writer._lock

    def after_an_earlier_train() -> None:
        with sqlite3.connect(path) as other:
            other.execute("INSERT INTO messages(digest, label, at) VALUES (x'00', 'spam', 0)")
        take()

    monkeypatch.setattr(writer, "_lock", after_an_earlier_train)
    assert writer.earlier_keys(4) is True
    writer.close()
    with sqlite3.connect(path) as c:
        assert c.execute("SELECT value FROM meta WHERE key = 'keys'").fetchall() == []
    again = store.SqliteWriter(path)
    assert again.earlier_keys(4) is True
    again.close()
