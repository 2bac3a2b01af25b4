"""The local SpamBayes engine as a scanner: tokenize → one store lookup → chi² combining.

That work is CPU-bound and blocking, so it runs in a small thread pool owned by the scanner
(one SQLite connection and one classifier per thread), never on the asyncio loop. The milter's
cap still holds because the tokenizer's work is bounded (`max_bytes`, `max_tokens`). Every
failure — no database, a locked or corrupt one, a bug — comes back as a typed ScanError.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from spambridge.bayes import store
from spambridge.bayes.classifier import Scorer
from spambridge.bayes.tokenizer import limits_for, tokenize
from spambridge.config import BayesConfig
from spambridge.message import Envelope
from spambridge.verdict import ErrorKind, ScanError, ScoreResult

ENGINE = "bayes"
MAX_CLUES = 30  # carried in the result for `check --explain` and debug logs
log = logging.getLogger("spambridge")


class _Worker:
    """Per-thread state: a reader on the database as it was when opened, and a scorer."""

    def __init__(self, path: str) -> None:
        self.reader = store.SqliteReader(path)
        self.inode = os.stat(path).st_ino
        self.scorer = Scorer(max_clues=MAX_CLUES)


class BayesScanner:
    name = ENGINE

    def __init__(self, cfg: BayesConfig, *, create: bool = True, workers: int = 2) -> None:
        """`create`: make an empty database (and its directory) if there is none, as `run`
        wants; `check` passes False so a mistyped path is reported, not created."""
        self.cfg = cfg
        self.limits = limits_for(cfg)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bayes")
        self._local = threading.local()
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        if create and not os.path.exists(cfg.db):
            try:
                store.create(cfg.db)
                log.info("created an empty Bayes database at %s", cfg.db)
            except (OSError, store.StoreError) as e:
                # not fatal: mail keeps flowing under on_unavailable until the admin fixes it
                log.warning("cannot create the Bayes database %s: %s", cfg.db, e)

    def submit(self, message: bytes, envelope: Envelope) -> Future[ScoreResult]:
        try:
            return self._pool.submit(self.score_now, message)
        except RuntimeError as e:  # the pool was shut down under us (stopping)
            raise ScanError(ErrorKind.UNAVAILABLE, ENGINE, str(e)) from e

    async def scan(self, message: bytes, envelope: Envelope) -> ScoreResult:
        """For the event loop (spamd+bayes): the same pool, awaited."""
        return await asyncio.wrap_future(self.submit(message, envelope))

    def score_now(self, message: bytes) -> ScoreResult:
        """Score in the calling thread (the pool's, or `check --batch`'s); only ScanError
        escapes."""
        try:
            worker = self._worker()
            tokens = tokenize(message, self.limits)
            totals, counts = worker.reader.lookup(tokens)
            if totals.nspam < self.cfg.min_trained or totals.nham < self.cfg.min_trained:
                raise ScanError(ErrorKind.UNAVAILABLE, ENGINE,
                                f"not trained yet: {totals.nspam} spam, {totals.nham} ham")
            verdict = worker.scorer.score(tokens, totals, counts)
        except ScanError:
            raise
        except (store.StoreError, OSError) as e:
            self._drop_worker()
            raise ScanError(ErrorKind.UNAVAILABLE, ENGINE, str(e)) from e
        except Exception as e:  # a bug must still end in a defined outcome
            self._drop_worker()
            log.exception("bayes: internal error")
            raise ScanError(ErrorKind.ERROR, ENGINE, f"internal: {type(e).__name__}") from e
        return ScoreResult(ENGINE, verdict.score, (), verdict.clues)

    def _worker(self) -> _Worker:
        w: _Worker | None = getattr(self._local, "worker", None)
        if w is not None:
            try:
                replaced = os.stat(self.cfg.db).st_ino != w.inode
            except OSError:
                replaced = True
            if not replaced:
                return w
            self._drop_worker()  # the file was replaced (e.g. a retrained DB moved in)
        w = _Worker(self.cfg.db)
        self._local.worker = w
        with self._lock:
            self._workers.append(w)
        return w

    def _drop_worker(self) -> None:
        w: _Worker | None = getattr(self._local, "worker", None)
        self._local.worker = None
        if w is not None:
            with self._lock:
                if w in self._workers:
                    self._workers.remove(w)
            w.reader.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            workers, self._workers = self._workers, []
        for w in workers:
            w.reader.close()

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)
