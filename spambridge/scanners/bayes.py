"""The local SpamBayes engine as a scanner: tokenize → one store lookup → chi² combining.

That work is CPU-bound and blocking, so it runs in a small thread pool owned by the scanner
(a classifier per thread), never on the asyncio loop. The threads share one SQLite connection,
taken in turn for the lookup (a few tens of µs of the ~0.5 ms a message costs): when the file is
replaced (a retrained copy moved into place) that one connection is closed before the new file
is opened, so no connection to the old file is left to fold its -wal into the new one's. The
milter's cap still holds because the tokenizer's work is bounded (`max_bytes`, `max_tokens`).
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
from spambridge.bayes.tokenizer import limits_for, tokenize
from spambridge.config import BayesConfig
from spambridge.message import Envelope
from spambridge.verdict import ErrorKind, ScanError, ScoreResult

ENGINE = "bayes"
log = logging.getLogger("spambridge")


class _Reader:
    """The shared connection, and the file (device, inode) it was opened on."""

    def __init__(self, path: str) -> None:
        try:
            st = os.stat(path)  # before opening: a file moved in between is seen next message
        except FileNotFoundError as e:
            raise store.StoreError(store.no_database(path)) from e
        self.file = (st.st_dev, st.st_ino)
        self.reader = store.SqliteReader(path)


class BayesScanner:
    name = ENGINE

    def __init__(self, cfg: BayesConfig, *, create: bool = True, workers: int = 2,
                 clues: int = 0) -> None:
        """`create`: make an empty database (and its directory) if there is none, as `run`
        wants; `check` passes False so a mistyped path is reported, not created. `clues`: how
        many of the strongest clues each result carries, for `check --explain`; the milter
        wants none, and the score is the same without the list (classifier.score_aligned)."""
        self.cfg = cfg
        self.clues = clues
        self.limits = limits_for(cfg)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bayes")
        self._local = threading.local()  # each thread's Scorer (its f(w) cache)
        self._reader: _Reader | None = None
        self._lock = threading.Lock()  # guards _reader and its use
        if create and not os.path.exists(cfg.db):
            try:
                store.create(cfg.db)
                log.info("created an empty Bayes database at %s", cfg.db)
            except (OSError, store.StoreError) as e:
                # not fatal: mail keeps flowing under on_unavailable until the admin fixes it
                log.warning("cannot create the Bayes database %s: %s", cfg.db, e)

    def probe(self, fallback: bool = False) -> None:
        """Say at start-up, once, when the database cannot be used yet (every message would
        otherwise be the first to tell), and what mail meets meanwhile: as the engine, its
        on_unavailable; as spamd's fallback, nothing covers a spamd failure."""
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

    def submit(self, message: bytes, envelope: Envelope) -> Future[ScoreResult]:
        try:
            return self._pool.submit(self.score_now, message)
        except RuntimeError as e:  # the pool was shut down under us (stopping)
            raise ScanError(ErrorKind.UNAVAILABLE, ENGINE, str(e)) from e

    async def scan(self, message: bytes, envelope: Envelope) -> ScoreResult:
        """For the event loop (spamd+bayes): the same pool, awaited."""
        return await asyncio.wrap_future(self.submit(message, envelope))

    def totals(self) -> store.Totals:
        with self._locked():
            return self._current().reader.totals()

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

    def score_now(self, message: bytes) -> ScoreResult:
        """Score in the calling thread (the pool's, or `check --batch`'s); only ScanError
        escapes."""
        try:
            tokens = tokenize(message, self.limits)
            with self._locked():
                try:
                    totals, values = self._current().reader.lookup_aligned(tokens)
                except (store.StoreError, OSError):
                    self._drop()  # reopened on the next message: the file may be fixed by then
                    raise
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
            log.exception("bayes: internal error")
            raise ScanError(ErrorKind.ERROR, ENGINE, f"internal: {type(e).__name__}") from e
        return ScoreResult(ENGINE, verdict.score, (), verdict.clues)

    def _scorer(self) -> Scorer:
        scorer: Scorer | None = getattr(self._local, "scorer", None)
        if scorer is None:
            scorer = self._local.scorer = Scorer(max_clues=self.clues)
        return scorer

    def _current(self) -> _Reader:
        """The shared reader, reopened when the file was replaced (called with the lock)."""
        r = self._reader
        if r is not None:
            try:
                st = os.stat(self.cfg.db)
                replaced = (st.st_dev, st.st_ino) != r.file
            except OSError:
                replaced = True
            if not replaced:
                return r
            self._drop()  # first close the old file, so SQLite folds and removes its -wal
            log.info("Bayes database %s was replaced or removed: reopening", self.cfg.db)
        self._reader = _Reader(self.cfg.db)
        return self._reader

    def _drop(self) -> None:
        r, self._reader = self._reader, None
        if r is not None:
            r.reader.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._drop()

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)
