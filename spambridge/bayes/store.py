"""Token counts in SQLite (stdlib sqlite3), WAL mode: the milter reads while `train` writes.

Layout (schema version in `PRAGMA user_version`):
  tokens(token, spam, ham)        per token, the number of trained messages containing it
  totals(nspam, nham)             one row: trained messages per class
  messages(digest, label, at)     what each trained message was learned as (dedupe, move, forget)
  meta(key, value)                tokenizer version and limits the counts were learned with,
                                  the version of the keys its messages were first recorded by

A reader gets the totals and all of a message's token counts in one statement, so the snapshot
is consistent without an explicit transaction. A writer applies a whole batch of messages in one
transaction (aggregated deltas, one upsert per distinct token), so a killed `train` leaves the
database as it was after its last committed batch.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import random
import sqlite3
import stat
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any, NamedTuple

from spambridge.bayes.tokenizer import TOKENIZER_VERSION
from spambridge.permissions import described, make_dirs, network_fs, this_user, why_not

SCHEMA_VERSION = 1
BUSY_TIMEOUT_READ = 0.5  # s: the milter must not wait long behind a checkpoint
BUSY_TIMEOUT_WRITE = 30.0  # s: `train` may wait for another `train` to finish its batch
# s: how long `train`'s closing checkpoint waits for readers to leave the -wal. It holds the
# write lock meanwhile, so every other `train` (Dovecot's pipes, killed after 10 s) waits too;
# the milter's snapshots last milliseconds, a reader keeping one longer is told about instead
BUSY_TIMEOUT_FOLD = 1.0
# s: a writer waiting for the write lock tries again after a pause drawn from this range, and
# a writer leaves the lock free this long between two of its own batches (SqliteWriter._lock)
WRITE_POLL = (0.002, 0.008)
WRITE_YIELD = 0.010
MAX_VARIABLES = 30_000  # below SQLite's 32,766 host-parameter limit (3.32+)
CACHE_LIMIT = 200_000  # tokens a reader keeps in memory between database changes
SPAM, HAM = "spam", "ham"
_MISS: Any = object()
# extended attribute a `train` puts on the database file and on the -wal after each commit:
# the -wal's generation (wal_generation) it committed in. SQLite cannot tell whose -wal it is
# (foreign_wal)
FILE_MARK = "user.spambridge.file"
_WAL_MAGIC = (0x377F0682, 0x377F0683)  # the first four bytes of a -wal (SQLite's file format)
FOREIGN_READS = 10  # tries at reading a -wal's generation and the marks as one (foreign_wal)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens(
    token TEXT PRIMARY KEY, spam INTEGER NOT NULL, ham INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS totals(
    id INTEGER PRIMARY KEY CHECK (id = 0), nspam INTEGER NOT NULL, nham INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES (0, 0, 0);
CREATE TABLE IF NOT EXISTS messages(
    digest BLOB PRIMARY KEY, label TEXT NOT NULL, at INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""


class StoreError(Exception):
    """The database cannot be used (missing, locked, corrupt, wrong schema); phrased for admins."""


class Replaced(StoreError):
    """The path no longer names the file a writer has open: another file moved over it, or
    it removed. What the writer committed before went into the file that was there."""


@dataclass(frozen=True, slots=True)
class Totals:
    nspam: int
    nham: int

    def trained(self, minimum: int) -> bool:
        """Enough of each class for the milter to score with ([bayes] min_trained)."""
        return self.nspam >= minimum and self.nham >= minimum


class TokenCounts(NamedTuple):
    """Trained messages containing a token, per class. The field names are the ones
    sbclassifier reads from its records, so these go to it without copying."""

    spamcount: int
    hamcount: int


# token → (spam, ham); absent = never seen. Values are plain tuples (a TokenCounts is one too):
# building a NamedTuple per token costs more than the lookup itself
Counts = dict[str, tuple[int, int]]


def _connect(path: str, timeout: float, readonly: bool = False) -> sqlite3.Connection:
    """A connection with our settings. WAL mode is set by `create`, after the schema check,
    and persists in the file: opening someone else's SQLite file must not convert it.
    `readonly`: SQLite's mode=ro, which never folds the -wal into the file when it closes:
    after a file was moved in or copied over, the -wal may be the old file's, and a reader
    closing last would write the old pages into the new file (only `train` folds, at its end,
    into the file it wrote)."""
    # quoted from the bytes: a path that is not UTF-8 (given as --db) is still a path
    target = (f"file:{urllib.parse.quote(os.fsencode(os.path.abspath(path)))}?mode=ro"
              if readonly else path)
    try:
        conn = sqlite3.connect(target, timeout=timeout, isolation_level=None,
                               check_same_thread=False, cached_statements=512, uri=readonly)
        conn.execute("PRAGMA synchronous=NORMAL")  # in WAL mode: never corrupt, fast commits
        conn.execute("PRAGMA cache_size=-32768")  # 32 MB page cache
        conn.execute("PRAGMA mmap_size=268435456")
        return conn
    except sqlite3.Error as e:
        hint = access_problem(path, write=not readonly) or full_problem(path)
        if hint:
            hint = f": {hint}"
        elif "readonly" in str(e):
            hint = ("; even reading needs write access to the database's directory and its -shm "
                    "file (SQLite's WAL mode)" if readonly else
                    "; training needs write access to the database, its -wal and -shm files and "
                    "their directory") + ": run as the milter's user or in its group"
        raise StoreError(f"{path}: cannot open the Bayes database: {e}{hint}") from e


def access_problem(path: str, write: bool) -> str:
    """Why this process cannot use the database `path` as SQLite in WAL mode needs it — to read
    it (the file and its -wal and -shm, or their directory to make those in, on a read-only
    filesystem as well) or, `write`, to write it too — or "" when nothing in the files'
    permissions stands in the way. SQLite itself only says
    "unable to open database file" or "attempt to write a readonly database", the same for the
    database and its -shm, and the same to a user outside the group as to one inside it: the
    admin is told which file, whose and with what mode, and who is asking."""
    real = os.path.realpath(path)
    folder = os.path.dirname(real)
    up = "/"
    for part in folder.split("/")[1:]:  # every directory on the way must let us through
        up = os.path.join(up, part)
        try:
            st = os.stat(up)
        except OSError:
            break  # missing: told below
        if not stat.S_ISDIR(st.st_mode):  # no chmod makes a file one: "chmod u+x" was said
            return (f"{described(up, st)} is not a directory, and the database's path goes "
                    "through it")
        if not os.access(up, os.X_OK):
            return f"{this_user()} may not enter {described(up, st)}: {why_not(up, st, 'x')}"
    if not os.path.isdir(folder):
        if not write:
            return ""  # no database: the caller says so
        above = os.path.dirname(folder)  # `train` makes the directory: may it?
        while not os.path.isdir(above) and above != os.path.dirname(above):
            folder, above = above, os.path.dirname(above)
        if os.access(above, os.W_OK | os.X_OK):
            return ""
        st = os.stat(above)
        return (f"{this_user()} may not create {os.path.basename(folder)} in "
                f"{described(above, st)}: {why_not(above, st, 'wx')}")

    def cannot_create(name: str) -> str:
        st = os.stat(folder)
        return (f"{this_user()} may not create {name} in {described(folder, st)}: "
                f"{why_not(folder, st, 'wx')}")

    if not os.path.exists(real):
        return (cannot_create(os.path.basename(real))
                if write and not os.access(folder, os.W_OK | os.X_OK) else "")
    want = os.R_OK | os.W_OK if write else os.R_OK
    for f in (real, real + "-wal", real + "-shm"):
        try:
            st = os.stat(f)
        except FileNotFoundError:
            if f == real:
                return ""
            if not os.access(folder, os.W_OK | os.X_OK):  # read-only too: WAL needs both
                return cannot_create(os.path.basename(f))
            continue
        except OSError:
            return ""
        if f == real and stat.S_ISDIR(st.st_mode):  # SQLite says "disk I/O error" or "unable
            # to open database file": an admin went looking for a failing disk
            return (f"{real} is a directory: the database is a file, such as "
                    f"{os.path.join(real, 'bayes.sqlite')}")
        if not os.access(f, want):
            verb, bits = ("write", "rw") if write else ("read", "r")
            return f"{this_user()} may not {verb} {described(f, st)}: {why_not(f, st, bits)}"
    return ""


def shared_problem(path: str) -> str:
    """Why the database at `path` is at risk where it is, or "": it is on a filesystem other
    hosts reach, and SQLite's WAL mode keeps its index in one host's shared memory (the -shm),
    so a process on another host reads pages torn by a writer here, or writes over them. One
    host alone works, hence a warning, said alike by `run` at start, check-config and
    `train`."""
    fstype = network_fs(path)
    if fstype is None:
        return ""
    return (f"[bayes] db: {path} is on a network filesystem ({fstype}): SQLite's WAL mode "
            "needs every process using the database on one host, so milters or `train` runs "
            "on other hosts sharing it can corrupt it; keep one database per host "
            '(docs/bayes.md, "Several hosts")')


def full_problem(path: str) -> str:
    """"its filesystem is full" when it is: SQLite then says "disk I/O error" (it cannot size
    its -shm file) or "database or disk is full"."""
    folder = os.path.dirname(os.path.realpath(path))
    try:
        st = os.statvfs(folder)
    except OSError:
        return ""
    if (st.f_bfree if os.geteuid() == 0 else st.f_bavail) > 0:
        return ""
    return f"no space left on the filesystem of {folder} (SQLite makes its -wal and -shm there)"


@dataclass(frozen=True)
class Made:
    """What create() made: the database file (its real path, and device, inode, size and
    mtime once made) and the directories made for it, deepest first. Only these are ever
    taken back (remove_made)."""

    path: str
    file: tuple[int, int, int, int]
    dirs: tuple[str, ...]


def create(path: str, dir_owner: tuple[int, int] | None = None) -> Made | None:
    """Create an empty database (and its directory), never world-readable. Its group may
    write it (0660) when the directory is group-writable: that is how the mail user of a
    Dovecot "move to Junk" pipe is let in (contrib/dovecot), and SQLite gives the -wal and
    -shm files the database's mode, so a 0640 database, wherever it came from (the milter's
    first start, a retrained copy), would lock the pipe out. When root creates it, it is
    handed to the owner of the directory, normally the milter's user (`/var/lib/spambridge`).
    Every directory made here is 0750 whatever the umask and given to `dir_owner` (uid, gid):
    a root milter with `[milter] user` made /var/lib/spambridge root's (or, under umask 077,
    the ones above it root's 0700), then refused to start because its user could not write
    the -wal there. Returns what it made, None when the file was there already."""
    _refuse_foreign_wal(path)  # before anything reads through it, or makes a file for it
    p = Path(path)
    missing = make_dirs(str(p.parent), 0o750, dir_owner)  # not `mkdir -p`: see make_dirs
    made = False
    try:
        fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        pass
    else:
        made = True
        try:
            st = p.parent.stat()
            os.fchmod(fd, 0o660 if st.st_mode & stat.S_IWGRP else 0o640)  # not the umask's
            if os.geteuid() == 0:
                os.fchown(fd, st.st_uid, st.st_gid)
        finally:
            os.close(fd)
    conn = _connect(str(p), BUSY_TIMEOUT_WRITE)
    try:
        _ensure_schema(conn, str(p))
        conn.execute("PRAGMA journal_mode=WAL")  # the milter reads while `train` writes
    except sqlite3.Error as e:
        raise StoreError(f"{path}: cannot open the Bayes database: {e}") from e
    finally:
        conn.close()
    if not made:
        return None
    real = os.path.realpath(p)
    return Made(real, _stamp(os.stat(real)), missing)


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def remove_made(made: Made) -> str:
    """Remove the database create() made, with its -wal and -shm and the directories made
    for it that are still empty; "" when done, or why it is left. Never a file other than
    the one made, nor that one once anything was written to it: the same inode, size and
    mtime, no committed page in a -wal beside it (a `train` run into it since), and nothing
    learned in it. The last is read, not inferred: a `train` started at the moment create()
    made the file finds it there and may learn and close before create() stamps it."""
    try:
        now = _stamp(os.stat(made.path))
    except FileNotFoundError:
        return "it is gone already"
    except OSError as e:
        return e.strerror or str(e)
    if now != made.file:
        return "it was written to since (or another file put in its place)"
    with contextlib.suppress(FileNotFoundError):
        if os.stat(made.path + "-wal").st_size:
            return "a -wal beside it holds pages written since"
    try:
        conn = _connect(made.path, 0, readonly=True)
        try:
            learned = conn.execute(
                "SELECT EXISTS(SELECT 1 FROM messages) OR EXISTS(SELECT 1 FROM tokens)"
                " OR (SELECT nspam + nham FROM totals)").fetchone()[0]
        finally:
            conn.close()
    except (sqlite3.Error, StoreError) as e:
        return f"it cannot be read to see that it is empty: {e}"
    if learned:
        return "it holds learned messages"
    try:
        os.unlink(made.path)
        for extra in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(made.path + extra)
    except OSError as e:
        return e.strerror or str(e)
    for d in made.dirs:  # deepest first; one that holds anything stays
        try:
            os.rmdir(d)
        except OSError:
            break
    return ""


def _ensure_schema(conn: sqlite3.Connection, path: str) -> None:
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version != 0:
            raise StoreError(_other_version(path, "schema", version, SCHEMA_VERSION))
        conn.execute("BEGIN IMMEDIATE")
        if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            conn.rollback()  # tables, but not ours: another program's database
            raise StoreError(f"{path}: not a spambridge Bayes database (it holds other "
                             "tables); refusing to add ours to it")
        for stmt in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
            conn.execute(stmt)
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('tokenizer', ?)",
                     (str(TOKENIZER_VERSION),))
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except sqlite3.Error as e:
        if conn.in_transaction:
            conn.rollback()
        raise StoreError(f"{path}: cannot initialise the Bayes database: {e}") from e


def _check_opened(conn: sqlite3.Connection, path: str) -> None:
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            raise StoreError(f"{path}: not a spambridge Bayes database (empty, or another "
                             "program's file)")
        if version != SCHEMA_VERSION:
            raise StoreError(_other_version(path, "schema", version, SCHEMA_VERSION))
        row = conn.execute("SELECT value FROM meta WHERE key='tokenizer'").fetchone()
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{path}: not a usable Bayes database: {e}") from e
    if row is None:
        raise StoreError(f"{path}: records no tokenizer version, so its tokens cannot be told "
                         f"to match this spambridge's: {RETRAIN}")
    if row[0] != str(TOKENIZER_VERSION):
        raise StoreError(_other_version(path, "tokenizer", row[0], TOKENIZER_VERSION))


RETRAIN = "retrain into a new database and copy it in (docs/bayes.md)"


def _other_version(path: str, what: str, theirs: object, ours: int) -> str:
    """A database another spambridge wrote, told by its schema or tokenizer version: newer
    (spambridge was downgraded: the one that wrote it can still use it) or older (its counts
    are of token spellings this one no longer makes)."""
    try:
        newer = int(str(theirs)) > ours
    except ValueError:
        newer = False
    if newer:
        return (f"{path}: written by a newer spambridge ({what} version {theirs}; this one has "
                f"{ours}): run that version again, or {RETRAIN}")
    return (f"{path}: written by an older spambridge ({what} version {theirs}; this one has "
            f"{ours})" + (", whose tokens this one no longer makes" if what == "tokenizer" else "")
            + f": {RETRAIN}")


@functools.lru_cache(maxsize=64)
def _in_query(n: int) -> tuple[str, list[None]]:
    """The lookup statement for n tokens, padded with NULLs (which match nothing) to a multiple
    of 64, so a few dozen prepared statements serve every message: SQLite preparing a new
    300-parameter statement costs more than running it."""
    size = -(-n // 64) * 64
    return ("SELECT token, spam, ham FROM tokens WHERE token IN ("
            + ",".join("?" * size) + ")"), [None] * (size - n)


# The tokens go in as one JSON array and come back by position: a join against json_each is
# about twice as fast as binding hundreds of parameters into an IN list (SQLite builds and sorts
# an ephemeral table for the list) and no token string is decoded on the way back.
_JSON_QUERY = ("SELECT j.key, t.spam, t.ham FROM json_each(?) AS j "
               "JOIN tokens AS t ON t.token = j.value")


def fetch_into(into: dict[str, tuple[int, int] | None], conn: sqlite3.Connection,
               tokens: Sequence[str]) -> None:
    """Enter (spam, ham) of those `tokens` the database holds into `into`, straight from the
    rows: one statement (one per MAX_VARIABLES tokens when a token holds a NUL)."""
    if not tokens:
        return
    doc = json.dumps(tokens, ensure_ascii=False, check_circular=False)
    if "\\u0000" not in doc:  # SQLite's JSON strings end at a NUL: such tokens take the IN list
        into.update({tokens[i]: (s, h) for i, s, h in conn.execute(_JSON_QUERY, (doc,))})
        return
    for i in range(0, len(tokens), MAX_VARIABLES):
        chunk = tokens[i : i + MAX_VARIABLES]
        sql, pad = _in_query(len(chunk))
        into.update({t: (s, h) for t, s, h in conn.execute(sql, [*chunk, *pad])})


def shifted(c: tuple[int, int] | None, ds: int, dh: int) -> tuple[int, int] | None:
    """Counts `c` (None: absent) moved by (ds, dh) and floored at 0; None when nothing is left.
    How the store itself applies a batch (`commit`), for the in-memory copies of it."""
    s, h = c or (0, 0)
    s, h = max(s + ds, 0), max(h + dh, 0)
    return (s, h) if s or h else None


def wal_of(path: str) -> str:
    """The -wal SQLite uses for `path`: beside the file a symlink points to."""
    return os.path.realpath(path) + "-wal"


def _mark_of(path: str) -> bytes | None:
    """The FILE_MARK of `path`; None when it has none, or its filesystem keeps no such
    attributes."""
    try:
        return os.getxattr(path, FILE_MARK)
    except OSError:
        return None


def can_mark(path: str) -> bool:
    """Whether the filesystem of `path` keeps the marks foreign_wal tells by."""
    try:
        os.getxattr(path, FILE_MARK)
    except OSError as e:
        return e.errno != errno.ENOTSUP
    return True


def wal_generation(wal: str) -> bytes | None:
    """Which run of pages the -wal holds: the salts of its header, which SQLite draws anew
    each time it starts the file over (after a checkpoint has folded everything). None when
    there is none (no -wal, an emptied one)."""
    try:
        with open(wal, "rb") as f:
            head = f.read(32)
    except OSError:
        return None
    if len(head) < 32 or int.from_bytes(head[:4], "big") not in _WAL_MAGIC:
        return None
    return head[16:24].hex().encode()


def foreign_wal(path: str) -> str:
    """Why the -wal beside the database file `path` must not be read with it, or "". SQLite
    applies whatever -wal has the file's name plus "-wal": after a `train` was killed (or a
    copy-in left its pages unfolded) and another file was put at the path (`mv`, or `rm`
    then `cp`), the old file's pages would be read as the new one's, and the next writer
    would fold them into it, silently making the database put in place the old one. So after
    each commit a `train` marks the file and the -wal with the -wal's generation: pages of a
    generation some `train` marked belong to the file that carries that mark. A file put in
    place carries another or none, and so does an earlier copy of the same file taken before
    that generation began (a copy taken during it is consistent with the pages: the -wal
    holds every page written since it began). "" when there is nothing to tell by: no file
    (SQLite deletes the -wal of a database it creates), no -wal or an emptied one, or a
    generation no `train` marked (begun by another program, or a `train` killed between its
    commit and the mark; a filesystem without extended attributes)."""
    real = os.path.realpath(path)
    wal = real + "-wal"
    for _ in range(FOREIGN_READS):
        generation = wal_generation(wal)
        if generation is None or _mark_of(wal) != generation or not os.path.exists(real):
            return ""
        mark = _mark_of(real)
        if wal_generation(wal) == generation:  # not started over while the marks were read
            break
    else:  # writers kept starting it over: busy, so not a stale -wal left sitting there
        return ""
    if mark == generation:
        return ""
    return (f"{path}: not opened: its -wal holds pages a `train` wrote for the file that was "
            "there before (another file was put in its place before they were folded in), "
            f"and SQLite would read them as this file's. Move {wal} and {real}-shm aside: "
            "the file in place is whole without them (docs/bayes.md)")


def _refuse_foreign_wal(path: str) -> None:
    problem = foreign_wal(path)
    if problem:
        raise StoreError(problem)


def no_database(path: str) -> str:
    return f"{path}: no Bayes database (train one with `spambridge train`)"


class SqliteReader:
    """One connection, for one thread. Keeps recently read counts in memory and drops them
    whenever another connection commits (`PRAGMA data_version`), so a resident milter answers
    most lookups without touching SQLite yet never scores with stale counts."""

    def __init__(self, path: str, timeout: float = BUSY_TIMEOUT_READ) -> None:
        if not os.path.exists(path):
            problem = access_problem(path, write=False)  # not there, or out of our reach?
            raise StoreError(f"{path}: cannot open the Bayes database: {problem}" if problem
                             else no_database(path))
        _refuse_foreign_wal(path)  # before anything reads through it
        self.path = path
        self.conn = _connect(path, timeout, readonly=True)
        try:
            _check_opened(self.conn, path)
        except StoreError:
            self.conn.close()
            raise
        except sqlite3.Error as e:
            self.conn.close()
            raise StoreError(f"{path}: {e}") from e
        self._cache: dict[str, tuple[int, int] | None] = {}
        self._version = -1  # data_version the cache is valid for
        self._totals = Totals(0, 0)

    def lookup(self, tokens: Sequence[str]) -> tuple[Totals, Counts]:
        """Totals, and the counts of those `tokens` the database holds."""
        totals, values = self.lookup_aligned(tokens)
        return totals, {t: c for t, c in zip(tokens, values, strict=True) if c is not None}

    def lookup_aligned(self, tokens: Sequence[str]
                       ) -> tuple[Totals, list[tuple[int, int] | None]]:
        """Totals, and the counts of `tokens` in their order (None: absent), as
        Scorer.score_aligned takes them: the milter's hot path, without a mapping built per
        message."""
        try:
            return self._lookup(tokens)
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: {e}") from e

    def _lookup(self, tokens: Sequence[str]) -> tuple[Totals, list[tuple[int, int] | None]]:
        conn = self.conn
        cache = self._cache
        get = cache.get
        values = list(map(get, tokens, repeat(_MISS)))  # cached None = known absent
        missing = ([t for t, v in zip(tokens, values, strict=True) if v is _MISS]
                   if _MISS in values else [])
        if missing or conn.execute("PRAGMA data_version").fetchone()[0] != self._version:
            conn.execute("BEGIN")  # one snapshot for the totals, the version and every chunk
            try:
                row = conn.execute("SELECT nspam, nham FROM totals").fetchone()
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                if version != self._version or len(cache) > CACHE_LIMIT:
                    cache.clear()
                    self._version = version
                    self._totals = Totals(int(row[0]), int(row[1]))
                    missing = list(tokens)
                cache.update(dict.fromkeys(missing))
                fetch_into(cache, conn, missing)
            finally:
                conn.execute("COMMIT")
            values = list(map(get, tokens))
        return self._totals, values

    def totals(self) -> Totals:
        return self.lookup(())[0]

    def close(self) -> None:
        self.conn.close()


class Batch:
    """Learning and unlearning inside one write transaction; counts are aggregated in memory
    (Counter.update runs in C) and written at `commit`, one upsert per distinct token.

    `current()` answers with the counts as they stand including this batch, so a trainer can
    score a message before deciding to learn it (SpamBayes' "nonedge" regime)."""

    def __init__(self, conn: sqlite3.Connection, base: Totals, known: _Known) -> None:
        self.conn = conn
        self.spam: Counter[str] = Counter()
        self.ham: Counter[str] = Counter()
        self.dspam = 0
        self.dham = 0
        self.labels: dict[bytes, str | None] = {}  # digest → new label (None = forgotten)
        self.messages = 0
        self.unlearned = False  # a negative delta needs the clamping, deleting commit
        self._base = base  # the totals before this batch
        # the writer's token → counts as of now (database + this batch) for every token current()
        # has looked at; None = absent. Shared across batches; the writer drops it when stale.
        self._known = known
        self._current = self._known.counts

    def trained_as(self, digest: bytes) -> str | None:
        if digest in self.labels:
            return self.labels[digest]
        row = self.conn.execute("SELECT label FROM messages WHERE digest = ?",
                                (digest,)).fetchone()
        return str(row[0]) if row else None

    def learn(self, tokens: Iterable[str], label: str, sign: int = 1) -> None:
        """Add (sign=1) or remove (sign=-1) one message of class `label`; `tokens` must be
        distinct (the tokenizer's output is)."""
        if not isinstance(tokens, Collection):
            tokens = list(tokens)  # walked twice below
        spam = label == SPAM
        counter = self.spam if spam else self.ham
        if sign > 0:
            counter.update(tokens)
        else:
            counter.subtract(tokens)
            self.unlearned = True
        if spam:
            self.dspam += sign
        else:
            self.dham += sign
        self.messages += 1
        cur = self._current
        if cur or self._known.complete:
            # keep what current() knows in step: every token when it holds the whole database,
            # else those it has loaded (the others get the batch's deltas when loaded)
            get = cur.get
            if self._known.complete:
                now = list(zip(tokens, map(get, tokens), strict=True))
            else:
                now = [(t, c) for t in tokens if (c := get(t, _MISS)) is not _MISS]
            if sign < 0:
                ds, dh = (-1, 0) if spam else (0, -1)
                cur.update([(t, shifted(c, ds, dh)) for t, c in now])
            elif spam:  # learning only adds: no floor, nothing drops out (shifted's fast case)
                cur.update([(t, (c[0] + 1, c[1]) if c else (1, 0)) for t, c in now])
            else:
                cur.update([(t, (c[0], c[1] + 1) if c else (0, 1)) for t, c in now])

    def current(self, tokens: Sequence[str]) -> tuple[Totals, list[tuple[int, int] | None]]:
        """Totals, and the counts of `tokens` in their order (None: absent), as they would be
        if this batch were committed now; a list, as Scorer.score_aligned takes it, because
        with the whole database in memory that is one C-level map per message."""
        known = self._known
        if known.complete is None:
            known.preload(self.conn, self.spam, self.ham)
        cur = self._current
        b = self._base
        totals = Totals(max(b.nspam + self.dspam, 0), max(b.nham + self.dham, 0))
        if known.complete:  # a token not in it is absent (learn() enters new ones)
            return totals, list(map(cur.get, tokens))
        missing = [t for t in tokens if t not in cur]
        if missing:
            cur.update(dict.fromkeys(missing))
            fetch_into(cur, self.conn, missing)
            spam, ham = self.spam, self.ham
            if spam or ham:
                for t in missing:  # learned in this batch before it was ever looked at
                    ds, dh = spam.get(t, 0), ham.get(t, 0)
                    if ds or dh:
                        cur[t] = shifted(cur[t], ds, dh)
        return totals, list(map(cur.__getitem__, tokens))

    def mark(self, digest: bytes, label: str | None) -> None:
        self.labels[digest] = label

    def commit(self, in_place: Callable[[], None] | None = None) -> None:
        """Write the batch and COMMIT; `in_place` (the writer's check that the path still
        names its file) runs last before the COMMIT, and raising there writes nothing."""
        conn = self.conn
        spam, ham = self.spam, self.ham
        if not self.unlearned:
            # only increments: two plain upserts straight from the counters, no row building
            # (twice as fast as merging and sorting the rows in Python)
            conn.executemany(
                "INSERT INTO tokens(token, spam, ham) VALUES (?, ?, 0) "
                "ON CONFLICT(token) DO UPDATE SET spam = spam + excluded.spam", spam.items())
            conn.executemany(
                "INSERT INTO tokens(token, spam, ham) VALUES (?, 0, ?) "
                "ON CONFLICT(token) DO UPDATE SET ham = ham + excluded.ham", ham.items())
        else:
            rows = [(t, spam.get(t, 0), ham.get(t, 0)) for t in spam.keys() | ham.keys()]
            rows = [r for r in rows if r[1] or r[2]]
            conn.executemany(
                "INSERT INTO tokens(token, spam, ham) VALUES (?1, max(?2, 0), max(?3, 0)) "
                "ON CONFLICT(token) DO UPDATE SET spam = max(spam + ?2, 0), "
                "ham = max(ham + ?3, 0)", rows)
            conn.executemany("DELETE FROM tokens WHERE token = ? AND spam = 0 AND ham = 0",
                             [(t,) for t, s, h in rows if s < 0 or h < 0])
        conn.execute("UPDATE totals SET nspam = max(nspam + ?, 0), nham = max(nham + ?, 0)",
                     (self.dspam, self.dham))
        now = int(time.time())
        conn.executemany("INSERT OR REPLACE INTO messages VALUES (?, ?, ?)",
                         [(d, lab, now) for d, lab in self.labels.items() if lab is not None])
        conn.executemany("DELETE FROM messages WHERE digest = ?",
                         [(d,) for d, lab in self.labels.items() if lab is None])
        if in_place is not None:
            in_place()
        conn.execute("COMMIT")


CURRENT_LIMIT = 1_000_000  # tokens a writer keeps for Batch.current() between batches
PRELOAD_LIMIT = 250_000  # a database with fewer tokens is read whole by the first current()


class _Known:
    """The counts Batch.current() has seen, kept by the writer across batches. A database small
    enough is read whole once (`complete`): then a token not in `counts` is simply absent and
    scoring while training never waits on SQLite (a fresh database is the common case)."""

    def __init__(self) -> None:
        self.counts: dict[str, tuple[int, int] | None] = {}
        self.complete: bool | None = None  # None: not tried yet

    def clear(self) -> None:
        self.counts.clear()
        self.complete = None

    def preload(self, conn: sqlite3.Connection, spam: Counter[str], ham: Counter[str]) -> None:
        rows = conn.execute("SELECT token, spam, ham FROM tokens LIMIT ?",
                            (PRELOAD_LIMIT + 1,)).fetchall()
        if len(rows) > PRELOAD_LIMIT:
            self.complete = False  # too big to hold: look tokens up as they come
            return
        counts = self.counts
        counts.clear()
        counts.update({t: (s, h) for t, s, h in rows})
        for t in spam.keys() | ham.keys():  # learned in the open batch before this
            counts[t] = shifted(counts.get(t), spam.get(t, 0), ham.get(t, 0))
        self.complete = True


def _busy(e: sqlite3.OperationalError) -> bool:
    """Whether SQLite failed because another connection holds the lock (SQLITE_BUSY, or one
    of its extended codes): a reason to try again, unlike any other error."""
    return e.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY


_LIMIT_KEYS = ("max_bytes", "max_tokens")  # meta: the tokenizer limits training keeps to


def recorded_limits(conn: sqlite3.Connection) -> tuple[int, int] | None:
    """(max_bytes, max_tokens) the database's training keeps to (SqliteWriter.training_limits);
    None before its first `train`."""
    rows = dict(conn.execute("SELECT key, value FROM meta WHERE key IN (?, ?)",
                             _LIMIT_KEYS).fetchall())
    try:
        return int(rows[_LIMIT_KEYS[0]]), int(rows[_LIMIT_KEYS[1]])
    except (KeyError, ValueError):
        return None


class SqliteWriter:
    """The training side. `begin()` takes SQLite's write lock (readers carry on in WAL mode),
    so two `train` runs never double-count the same message."""

    def __init__(self, path: str, timeout: float = BUSY_TIMEOUT_WRITE) -> None:
        self.path = path
        # before SQLite, which opens a file it may not write read-only and fails at the first
        # write, saying only "attempt to write a readonly database"
        problem = access_problem(path, write=True)
        if problem:
            raise StoreError(f"{path}: cannot write the Bayes database: {problem}")
        create(path)  # a no-op on a database of our schema; refuses a -wal not the file's
        self.conn = _connect(path, timeout)
        _check_opened(self.conn, path)
        # the file this connection writes, for _mark
        self._real = os.path.realpath(path)
        self._ino = os.stat(self._real).st_ino
        st = os.stat(path)  # the file the path names now, for _in_place (a symlink followed)
        self._file = st.st_dev, st.st_ino
        self._known = _Known()
        self._version = -1  # data_version _known matches (others' commits change it)
        # after close(): why the -wal was not folded back ("": emptied, or left to another
        # writer), and whether SQLite failed at it (a full disk) rather than waited for a reader
        self.unfolded = ""
        self.fold_failed = False
        self.timeout = timeout
        self._released = -WRITE_YIELD  # time.monotonic() of our last commit

    def training_limits(self, wanted: tuple[int, int]) -> tuple[int, int]:
        """(max_bytes, max_tokens) the counts are learned with: recorded by the first run that
        asks, as `wanted` (the config's then). A move or `--forget` must tokenize a message
        as its learning did, or it takes counts from other messages' tokens and leaves its
        own behind, so later runs keep to them whatever the config says by then."""
        try:
            got = recorded_limits(self.conn)
            if got is None:
                self._lock()
                self.conn.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)",
                                      zip(_LIMIT_KEYS, map(str, wanted), strict=True))
                self.conn.execute("COMMIT")
                got = recorded_limits(self.conn)
        except sqlite3.Error as e:
            self.rollback()
            raise StoreError(f"{self.path}: cannot record the training limits: {e}") from e
        return got or wanted

    def earlier_keys(self, version: int) -> bool:
        """Whether trained messages may be recorded under keys older than `version` (a
        `train` then looks those up too: train.normalise.keys). A database that has no
        message yet records that its first is keyed with `version`, and never looks again:
        nearly every message is new to a bulk run, and each earlier key is a digest and a
        query more for it. Only that takes the write lock: a database from before is told by
        its messages, or every `train` on it (a Dovecot pipe with a message it skips) waited
        for a bulk run's batch before its first message."""
        try:
            conn = self.conn
            row = conn.execute("SELECT value FROM meta WHERE key = 'keys'").fetchone()
            if row is None and conn.execute("SELECT 1 FROM messages LIMIT 1").fetchone():
                return True
            if row is None:
                self._lock()
                if conn.execute("SELECT 1 FROM messages LIMIT 1").fetchone() is None:
                    conn.execute("INSERT OR IGNORE INTO meta VALUES ('keys', ?)",
                                 (str(version),))
                row = conn.execute("SELECT value FROM meta WHERE key = 'keys'").fetchone()
                conn.execute("COMMIT")
        except sqlite3.Error as e:
            self.rollback()
            raise StoreError(f"{self.path}: cannot record how messages are keyed: {e}") from e
        # isdecimal: what int() reads (isdigit takes "²" too, and int() raises on it)
        return row is None or not str(row[0]).isdecimal() or int(row[0]) < version

    def begin(self) -> Batch:
        try:
            conn = self.conn
            self._lock()
            self._in_place()
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if version != self._version or len(self._known.counts) > CURRENT_LIMIT:
                self._known.clear()  # another writer committed in between, or too big
                self._version = version
            row = conn.execute("SELECT nspam, nham FROM totals").fetchone()
        except sqlite3.Error as e:
            self.rollback()
            raise StoreError(f"{self.path}: cannot start a write: {e}") from e
        except StoreError:
            self.rollback()
            raise
        return Batch(conn, Totals(int(row[0]), int(row[1])), self._known)

    def _in_place(self) -> None:
        """Raise Replaced when the path no longer names the file this connection writes.
        SQLite writes on through its open file: after a `mv` over the database (or an `rm`)
        every later batch went into a file nobody would read again, and `train` said
        "learned". Checked with the write lock held, at each batch's start and just before
        its COMMIT: a move in the microseconds after that check is not seen."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            how = "removed"
        except OSError:
            return  # not a question of which file: SQLite's own errors say what it is
        else:
            if (st.st_dev, st.st_ino) == self._file:
                return
            how = "replaced by another file"
        raise Replaced(f"{self.path}: the database file was {how} while this run was "
                       "writing to it (docs/bayes.md: never move a file over the database "
                       "while a `train` runs)")

    def _lock(self) -> None:
        """BEGIN IMMEDIATE, waited for by trying again at short, even, jittered intervals
        instead of with SQLite's busy handler, whose pauses grow to 100 ms: a writer that had
        waited a while then lost every turn to newcomers, and to a bulk `train` that takes the
        lock back within a millisecond of each commit, so Dovecot's pipes (killed after 10 s)
        waited 9-23 s at 50 at once, or for the whole of a bulk run. Between two of its own
        batches a writer leaves the lock free for WRITE_YIELD, long enough for a waiting
        writer's next try; a one-message `train -` never pauses."""
        pause = self._released + WRITE_YIELD - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        conn = self.conn
        deadline = time.monotonic() + self.timeout
        conn.execute("PRAGMA busy_timeout=0")
        try:
            while True:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as e:
                    if not _busy(e) or time.monotonic() >= deadline:
                        raise
                time.sleep(random.uniform(*WRITE_POLL))
        finally:
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")

    def commit(self, batch: Batch) -> None:
        try:
            batch.commit(self._in_place)
        except sqlite3.Error as e:
            self.rollback()
            raise StoreError(f"{self.path}: cannot write: {e}") from e
        except StoreError:
            self.rollback()
            raise
        finally:
            self._released = time.monotonic()
        self._mark()

    def _mark(self) -> None:
        """Mark the file and the -wal with the generation just committed in (foreign_wal),
        under the write lock taken again for the purpose: no other writer can start the -wal
        over, or mark it, in between (a review's find: two writers marking across a new
        generation left file and -wal with two marks, and every opener refusing). The file
        first, so a `train` killed in between leaves a generation unmarked (nothing to tell
        by) rather than a -wal marked for a file that is not. If another writer has the lock,
        it marks after its own commit (unless it is another program: then these pages stay
        unmarked). If the path no longer holds the file this connection writes (moved over
        during the run), only the -wal is marked: then the file in place is not the one
        marked. Without extended attributes (or permission to set them) nothing is marked,
        and the check tells nothing."""
        conn = self.conn
        try:  # best effort: the batch is committed, and a mark never fails a `train`
            conn.execute("PRAGMA busy_timeout=0")
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error:
            return
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
        try:
            wal = self._real + "-wal"
            generation = wal_generation(wal)
            if generation is None:
                return
            try:
                ours = os.stat(self._real).st_ino == self._ino
            except OSError:
                ours = False
            with contextlib.suppress(OSError):  # the -wal is not marked if the file was not
                if ours and _mark_of(self._real) != generation:
                    os.setxattr(self._real, FILE_MARK, generation)
                if _mark_of(wal) != generation:
                    os.setxattr(wal, FILE_MARK, generation)
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def rollback(self) -> None:
        self._known.clear()  # it may hold the abandoned batch's counts
        if self.conn.in_transaction:
            self.conn.rollback()

    def close(self) -> None:
        """Fold the WAL back into the database and leave it empty: readers need not search
        it, and a retrained copy moved over the file later (docs/bayes.md) cannot be mixed
        with pages this run left in the -wal file the milter keeps open. Tried as _lock
        tries, for up to BUSY_TIMEOUT_FOLD (the other writers of a burst of Dovecot pipes
        hold the lock for milliseconds); then, if another `train` is writing, it is left to
        that one."""
        self.rollback()
        try:
            if not self._fold():
                self.unfolded = "another process kept its snapshot"
        except sqlite3.Error as e:
            self.unfolded, self.fold_failed = f"SQLite could not: {e}", True
        self.conn.close()

    def _fold(self) -> bool:
        """The closing checkpoint. True when the -wal is empty, or left to a writer still at
        it (a bulk run's batch), which folds it when it closes: only if that one is killed
        first does the -wal keep its pages (docs/bayes.md). False when a reader kept its
        snapshot for all of BUSY_TIMEOUT_FOLD; SQLite's own failures (a full disk) raise."""
        conn = self.conn
        conn.execute("PRAGMA busy_timeout=0")
        deadline = time.monotonic() + BUSY_TIMEOUT_FOLD
        # the first column is 1 while the checkpoint could not finish (SQLITE_BUSY)
        while conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]:
            if time.monotonic() >= deadline:
                return self._writer_active()
            time.sleep(random.uniform(*WRITE_POLL))
        return True

    def _writer_active(self) -> bool:
        """Whether another connection holds the write lock (busy_timeout is 0 here)."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            return _busy(e)
        self.conn.rollback()
        return False


def is_private(path: str) -> bool:
    """True when the file is not world-readable (the database holds mail vocabulary)."""
    return not os.stat(path).st_mode & stat.S_IROTH
