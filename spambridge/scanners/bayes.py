"""The local SpamBayes engine as a scanner: tokenize → one store lookup → chi² combining.

That work is CPU-bound and blocking, so it runs in a small thread pool owned by the scanner
(a classifier per thread), never on the asyncio loop. The threads share one read-only SQLite
connection, taken in turn for the lookup (a few tens of µs of the ~0.5 ms a message costs):
when the file is replaced (a retrained copy moved into place) or written over, that one
connection is closed before the file is opened again, and being read-only it never folds a
-wal into anything. The milter's cap still holds because the tokenizer's work is bounded
(`max_bytes`, `max_tokens`).
Every failure — no database, a locked or corrupt one, a bug — comes back as a typed ScanError.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from spambridge.bayes import store
from spambridge.bayes.classifier import Scorer
from spambridge.bayes.tokenizer import limits_for, tokenize, unread
from spambridge.config import BayesConfig
from spambridge.message import Envelope
from spambridge.permissions import DanglingLink
from spambridge.verdict import ErrorKind, ScanError, ScoreResult

ENGINE = "bayes"
log = logging.getLogger("spambridge")


FileId = tuple[int, int, int, int]  # device, inode, size, mtime (ns)
_NEVER = object()


def _file_id(st: os.stat_result) -> FileId:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _wal_id(wal: str) -> FileId | None:
    """That -wal as it is now (None: there is none)."""
    try:
        return _file_id(os.stat(wal))
    except OSError:
        return None


def stale_wal(path: str, seen: FileId | None) -> str:
    """Why the -wal beside a database file just moved into place belongs to the file before
    it, or "": it is the very -wal the old file had when last seen in place (`seen`), not
    written since, and not empty. Its pages would be read as the new file's, and folded into
    it by the next `train`: the database an admin put in place would silently become the old
    one (SQLite cannot tell whose -wal it is). A -wal written since, or a new one (a database
    made afresh after an `rm`), is the new file's own."""
    now = _wal_id(store.wal_of(path))
    if now is None or now != seen or not now[2]:
        return ""
    path = os.path.realpath(path)
    return (f"{path}-wal holds {now[2]} bytes written for the file {path} replaced; SQLite "
            "would read them as the new file's, so it is not opened: with no `train` or "
            f"`check` running on it, move {path}-wal and {path}-shm aside (what was moved in "
            "is whole without them) — or next time fold the -wal first (docs/bayes.md)")


class BayesScanner:
    name = ENGINE

    def __init__(self, cfg: BayesConfig, *, create: bool = True, workers: int = 2,
                 clues: int = 0, dir_owner: tuple[int, int] | None = None) -> None:
        """`create`: make an empty database (and its directory) if there is none, as `run`
        wants; `check` passes False so a mistyped path is reported, not created. `clues`: how
        many of the strongest clues each result carries, for `check --explain`; the milter
        wants none, and the score is the same without the list (classifier.score_aligned)."""
        self.cfg = cfg
        self.clues = clues
        self.limits = limits_for(cfg)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bayes")
        self._local = threading.local()  # each thread's Scorer (its f(w) cache)
        self._reader: store.SqliteReader | None = None  # the shared connection
        # the file last opened, as stat saw it just before (a change in between is seen at
        # the next message), kept when the connection is dropped; its -wal's path, and that
        # -wal as last seen while the file was in place
        self._file: FileId | None = None
        self._wal_path = ""
        self._wal: FileId | None = None
        self._refused: FileId | None = None  # the replacing file last refused, logged once
        self._lock = threading.Lock()  # guards those above and the connection's use
        # the database's counts as last read (the start-up check, a message), None when that
        # read failed: what the metrics show, which never touch the database themselves
        self.seen: store.Totals | None = None
        self._refresh_lock = threading.Lock()  # one refresh_seen read at a time, never waited on
        # the file (as stat saw it; None: gone) last re-read by refresh_seen
        self._refreshed_for: object = _NEVER  # (FileId, ctime, the -wal's FileId), or None
        self.made: store.Made | None = None  # the database made here, for remove_made
        if create and not os.path.exists(cfg.db):
            try:
                self.made = store.create(cfg.db, dir_owner)  # (the milter's user's: app.run)
                log.info("created an empty Bayes database at %s", cfg.db)
            except DanglingLink:  # the path itself is wrong: a config error (app.run)
                raise
            except (OSError, store.StoreError) as e:
                # not fatal: mail keeps flowing under on_unavailable until the admin fixes it
                log.warning("cannot create the Bayes database %s: %s", cfg.db, e)

    def remove_made(self) -> None:
        """A start that failed takes back the database it made (app.run): the admin who
        fixed the config found an empty one, made by a start that never served. Only the
        file made here, as it was made: never one that was there, nor one written to since."""
        made, self.made = self.made, None
        if made is None:
            return
        why = store.remove_made(made)
        if why:
            log.warning("the Bayes database %s this start made is left: %s", made.path, why)
        else:
            log.info("removed the empty Bayes database %s this start made", made.path)

    def probe(self, fallback: bool = False) -> None:
        """Say at start-up, once, when the database cannot be used yet (every message would
        otherwise be the first to tell), and what mail meets meanwhile: as the engine, its
        on_unavailable; as spamd's fallback, nothing covers a spamd failure. And when it is
        on a network filesystem, which other hosts sharing it can corrupt: a warning only,
        since one host alone there works."""
        if shared := store.shared_problem(self.cfg.db):
            log.warning("%s", shared)
        meanwhile = ("spamd has no fallback (a spamd failure gets its own on_* action)"
                     if fallback else "the Bayes engine answers on_unavailable")
        try:
            totals = self.totals()
        except (store.StoreError, OSError) as e:
            log.warning("Bayes database unusable (%s until it is fixed): %s", meanwhile, e)
            return
        finally:
            with self._lock:
                self._drop()  # opened again by the first message: nothing held while idle
        if not totals.trained(self.cfg.min_trained):
            log.warning("Bayes database %s not trained yet (%d spam, %d ham; min_trained %d): "
                        "%s until it is", self.cfg.db, totals.nspam, totals.nham,
                        self.cfg.min_trained, meanwhile)

    def refresh_seen(self) -> None:
        """`seen` read again, on the scanner's own thread, when the file changed since it was
        last opened (trained, a retrained copy moved in, removed): as spamd+bayes's fallback,
        this engine reads the database only for a message spamd failed, so its counts stayed
        those of the start for as long as spamd answered (an empty database shown empty after
        `train`, a removed one as in use). A stat here; the read once per change of the file,
        closed after as the start-up's is, and never waited for. A read that failed is tried
        again when the file's mode or owner changes (its ctime) or its -wal does (moved aside,
        as the foreign -wal warning says to), not only its contents."""
        try:
            st = os.stat(self.cfg.db)
        except OSError:
            now: tuple[FileId, int, FileId | None] | None = None
        else:
            now = (_file_id(st), st.st_ctime_ns, _wal_id(self.cfg.db + "-wal"))
        if (now is not None and now[0] == self._file and self.seen is not None
                ) or now == self._refreshed_for:
            return
        if not self._refresh_lock.acquire(blocking=False):
            return  # one is on its way
        self._refreshed_for = now

        def read() -> None:
            try:
                with contextlib.suppress(store.StoreError, OSError):  # seen = None says it
                    self.totals()
                with contextlib.suppress(store.StoreError), self._locked():
                    self._drop()  # opened again by the first message: nothing held while idle
            finally:
                self._refresh_lock.release()

        try:
            self._pool.submit(read)
        except RuntimeError:  # stopping
            self._refresh_lock.release()

    def submit(self, message: bytes, envelope: Envelope) -> Future[ScoreResult]:
        try:
            return self._pool.submit(self.score_now, message, envelope.log_id)
        except RuntimeError as e:  # the pool was shut down under us (stopping)
            raise ScanError(ErrorKind.UNAVAILABLE, ENGINE, str(e)) from e

    async def scan(self, message: bytes, envelope: Envelope) -> ScoreResult:
        """For the event loop (spamd+bayes): the same pool, awaited."""
        return await asyncio.wrap_future(self.submit(message, envelope))

    def totals(self) -> store.Totals:
        with self._locked():
            try:
                totals = self._current().totals()
            except BaseException:
                self.seen = None
                raise
            self.seen = totals
            return totals

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The shared connection, waited for no longer than one reader's busy wait: while
        another thread waits on a locked database, this message fails fast as it would have
        on its own connection, instead of queueing behind it towards the cap."""
        if not self._lock.acquire(timeout=store.BUSY_TIMEOUT_READ):
            raise store.StoreError(f"{self.cfg.db}: database busy")
        try:
            yield
        finally:
            self._lock.release()

    def score_now(self, message: bytes, log_id: str = "") -> ScoreResult:
        """Score in the calling thread (the pool's, or `check --batch`'s); only ScanError
        escapes. `log_id`: the message's queue id, for the log."""
        try:
            tokens = tokenize(message, self.limits)
            with self._locked():
                try:
                    totals, values = self._current().lookup_aligned(tokens)
                except (store.StoreError, OSError):
                    self._drop()  # reopened on the next message: the file may be fixed by then
                    self.seen = None
                    raise
                self.seen = totals
            if not totals.trained(self.cfg.min_trained):
                raise ScanError(ErrorKind.UNAVAILABLE, ENGINE,
                                f"not trained yet: {totals.nspam} spam, {totals.nham} ham")
            verdict = self._scorer().score_aligned(tokens, totals, values)
        except ScanError:
            raise
        except (store.StoreError, OSError) as e:
            raise ScanError(ErrorKind.UNAVAILABLE, ENGINE, str(e)) from e
        except Exception as e:  # a bug must still end in a defined outcome
            self._local.scorer = None
            log.exception("%sbayes: internal error", f"{log_id}: " if log_id else "")
            raise ScanError(ErrorKind.ERROR, ENGINE, f"internal: {type(e).__name__}") from e
        return ScoreResult(ENGINE, verdict.score, (), verdict.clues, unread=unread(tokens))

    def _scorer(self) -> Scorer:
        scorer: Scorer | None = getattr(self._local, "scorer", None)
        if scorer is None:
            scorer = self._local.scorer = Scorer(max_clues=self.clues)
        return scorer

    def _current(self) -> store.SqliteReader:
        """The shared reader, reopened when the file changed (called with the lock): replaced
        (a retrained copy moved in), or written over in place (`cp`), where SQLite's caches and
        ours would mix the two files' pages. SQLite's own writes change it too (a `train`'s
        closing checkpoint): reopening then costs a connection, and the cache is stale anyway."""
        path = self.cfg.db
        try:
            st = os.stat(path)
        except FileNotFoundError as e:
            self._drop()
            raise store.StoreError(store.no_database(path)) from e
        except PermissionError as e:  # a directory on the way the milter's user may not enter
            self._drop()
            raise store.StoreError(f"{path}: cannot open the Bayes database: "
                                   f"{store.access_problem(path, write=False) or e}") from e
        now = _file_id(st)
        if self._reader is not None and now == self._file:
            self._wal = _wal_id(self._wal_path)  # one stat: the path is resolved at open
            return self._reader
        self._drop()  # read-only: closing never folds the -wal into whatever is there now
        # another inode: only a move or a new file does that, never SQLite (whose own
        # checkpoints rewrite the file in place, with the -wal still holding their pages)
        replaced = self._file is not None and self._file[:2] != now[:2]
        try:
            stale = stale_wal(path, self._wal) if replaced else ""
            if stale:
                raise store.StoreError(stale)
            self._reader = store.SqliteReader(path)  # refuses a -wal not the file's own
        except store.StoreError as e:
            if replaced and now != self._refused:
                # the decision lines cut it short (start-up's probe says it whole): once here
                log.warning("Bayes database replaced, the new one not used: %s", e)
                self._refused = now
            raise
        if replaced:
            log.info("Bayes database %s was replaced or removed: reopened", path)
        self._file = now
        self._wal_path = store.wal_of(path)
        self._wal = _wal_id(self._wal_path)
        return self._reader

    def _drop(self) -> None:
        r, self._reader = self._reader, None
        if r is not None:
            r.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._drop()

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)
