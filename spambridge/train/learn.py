"""The local run: each message learned, moved to the other class or forgotten in the Bayes
database (Trainer), in batches of one SQLite transaction each, so an interrupted run keeps
everything up to its last committed batch (run)."""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from dataclasses import replace
from typing import IO, TYPE_CHECKING, Any

from spambridge import defaults
from spambridge.bayes import store
from spambridge.bayes.tokenizer import DEFAULT_LIMITS, Limits, limits_for, tokenize
from spambridge.train.normalise import KEYS_VERSION, digest, keys, strip_markup, stripped
from spambridge.train.report import (
    Progress,
    Summary,
    folders_in,
    kept,
    note_untrained,
    too_large_line,
)
from spambridge.train.sources import (
    DEFAULT_MAX_SIZE,
    TOO_LARGE,
    IndexEntry,
    Item,
    entries,
    read_path,
)
from spambridge.train.stop import (
    Stopped,
    hold_signals,
    restore_signals,
    stop_deferred,
    stop_on_sigterm,
)

if TYPE_CHECKING:
    from spambridge.config import Config


BATCH_MESSAGES = defaults.TRAIN_BATCH  # messages per transaction …
BATCH_SECONDS = 2.0  # … or this long, whichever comes first (bounds what a kill loses)


# SpamBayes' "nonedge" regime (testtools/regimes.py): a message the database already puts at or
# beyond these scores, on the right side, teaches it nothing new and is not learned
CERTAIN_HAM = 0.005
CERTAIN_SPAM = 0.995


class Trainer:
    """Learning loop over a writer; commits a batch every BATCH_MESSAGES or BATCH_SECONDS.

    `selective`: learn a new message only if the database does not already score it correctly
    with certainty (SpamBayes' nonedge regime: everything except ham ≤ 0.005 and spam ≥ 0.995;
    misclassified and unsure mail is always learned). Learning only what adds information keeps
    the bulk of easy, repetitive mail from drowning the hard cases; on the SpamAssassin corpus it
    cut false positives from 10 to 1-2 and false negatives from 10 to 3-5 in 5-fold
    cross-validation (docs/benchmarks.md). It scores against the counts as they stand,
    the open batch included, so it works best on ham and spam interleaved as they arrived
    (`train --index`). Every message of a class is learned while the database holds fewer
    than `min_trained` of it: the milter does not score with the database before, so there is
    no certainty to judge by yet, and selecting from a mailbox of a few hundred messages
    would otherwise leave a database the milter never uses."""

    def __init__(self, writer: store.SqliteWriter, label: str, limits: Limits = DEFAULT_LIMITS,
                 batch_messages: int = BATCH_MESSAGES, selective: bool = False,
                 min_trained: int = defaults.BAYES_MIN_TRAINED, subject_tag: str = "") -> None:
        self.writer = writer
        self.subject_tag = subject_tag.encode()  # the milter's, taken off what it tagged
        self.min_trained = min_trained
        self.batch_messages = batch_messages
        self.label = label  # spam | ham | forget | index (the class comes with each message)
        self.limits = limits
        # whether the database may hold messages under the keys earlier spambridges gave
        # them (normalise.keys): then those are looked up too
        self.earlier_keys = writer.earlier_keys(KEYS_VERSION)
        self.summary = Summary(label)
        self.saved = 0  # messages offered up to the last commit (all of them are in the db)
        self._batch: store.Batch | None = None
        self._since = 0.0
        self._scorer: Any = None
        if selective:
            from spambridge.bayes.classifier import Scorer  # not on the plain `train -` path

            self._scorer = Scorer(max_clues=0)  # the score decides; no clue list wanted

    def _open_batch(self) -> store.Batch:
        if self._batch is None:
            self._batch = self.writer.begin()
            self._since = time.monotonic()
        return self._batch

    def add(self, item: Item, label: str | None = None) -> str:
        """Learn one item (as `label`, or the trainer's); returns what happened, for messages
        named one by one."""
        label = label or self.label
        s = self.summary
        s.seen += 1
        if item.data is None:
            s.skipped(item)
            return item.problem
        msg, restored = stripped(item.data, self.subject_tag, True)
        key, legacy = keys(msg, self.earlier_keys)
        batch = self._open_batch()
        earlier = [(old, msg) for old in legacy]
        if restored and self.earlier_keys:
            # an earlier spambridge learned and keyed it with the Subject a filter rewrote
            tagged = strip_markup(item.data, subject=False)
            earlier.append((digest(tagged), tagged))
        prior, learned = self._prior(batch, key, msg, earlier)
        if label == "forget":
            outcome = self._forget(batch, key, learned, prior)
        else:
            outcome = self._learn(batch, key, msg, label, prior, learned)
        if batch.messages >= self.batch_messages or time.monotonic() - self._since > BATCH_SECONDS:
            self.flush()
        return outcome

    def _prior(self, batch: store.Batch, key: bytes, msg: bytes,
               earlier: list[tuple[bytes, bytes]]) -> tuple[str | None, bytes]:
        """The class the message was trained as (None: never), and the text that training
        read (`msg`, or another), found under an `earlier` key (see keys; each with the text
        it was a digest of) too, and then carried over to its key. An earlier key found
        beside the key is a copy the earlier spambridge learned as a message of its own (one
        sent to two mailboxes): that learning is taken back, so the message is learned once,
        or a move and --forget leave it behind."""
        prior = batch.trained_as(key)
        learned = msg
        for old, text in dict(earlier).items():
            was = None if old == key else batch.trained_as(old)
            if was is None:
                continue
            batch.mark(old, None)
            if prior is None:
                prior, learned = was, text
                batch.mark(key, prior)
            else:
                batch.learn(tokenize(text, self.limits), was, -1)
        return prior, learned

    def _forget(self, batch: store.Batch, key: bytes, learned: bytes, prior: str | None) -> str:
        s = self.summary
        if prior is None:
            s.not_trained += 1
            return "not trained before"
        batch.learn(tokenize(learned, self.limits), prior, -1)
        batch.mark(key, None)
        s.forgotten += 1
        return f"forgotten (was {prior})"

    def _learn(self, batch: store.Batch, key: bytes, msg: bytes, label: str,
               prior: str | None, learned: bytes) -> str:
        """Learn as `label` (`prior`: the class it was trained as, from `learned`): a no-op when
        already so trained, a move when trained as the other class, and nothing when selective
        and the database is already certain."""
        s = self.summary
        if prior == label:
            s.already += 1
            return f"already trained as {prior}"
        tokens = tokenize(msg, self.limits)
        score = None if prior is not None else self._certainty(batch, tokens, label)
        if score is not None:
            s.recognised += 1
            return f"already recognised as {label} (score {score:.4f}), not learned"
        if prior is not None:
            batch.learn(tokens if learned is msg else tokenize(learned, self.limits), prior, -1)
            s.moved += 1
        batch.learn(tokens, label)
        batch.mark(key, label)
        s.learned += 1
        s.learned_as[label] = s.learned_as.get(label, 0) + 1
        return f"moved from {prior} to {label}" if prior else f"learned as {label}"

    def _certainty(self, batch: store.Batch, tokens: list[str], label: str) -> float | None:
        """In selective mode, the score when the database is already certain of `label`."""
        if self._scorer is None:
            return None
        totals, values = batch.current(tokens)
        held = totals.nspam if label == store.SPAM else totals.nham
        if not totals.nspam or not totals.nham or held < self.min_trained:
            return None  # one class alone scores everything as itself; see the class doc
        score = float(self._scorer.score_aligned(tokens, totals, values).score)
        if (score >= CERTAIN_SPAM) if label == store.SPAM else (score <= CERTAIN_HAM):
            return score
        return None

    def flush(self) -> None:
        with stop_deferred():  # a commit and its count together, or the stop said too few
            if self._batch is not None:
                batch, self._batch = self._batch, None
                self.writer.commit(batch)
            self.saved = self.summary.seen

    def abandon(self) -> None:
        self._batch = None
        self.writer.rollback()


def run(cfg: Config, label: str, paths: list[str], *, max_size: int = DEFAULT_MAX_SIZE,
        mbox: bool = False, quiet: bool = False, batch_messages: int = BATCH_MESSAGES,
        selective: bool = False, index: list[IndexEntry] | None = None,
        out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """The `train` command on the local database; exit status 0, or 1 on real errors (a
    database on a network filesystem is said, and trained as asked).
    With `index` (see read_index) `label` is "index" and `paths` unused."""
    out = out or sys.stdout
    err = err or sys.stderr
    start = time.monotonic()
    if label == "forget" and not os.path.exists(cfg.bayes.db):
        print(f"No Bayes database at {cfg.bayes.db}: nothing to forget", file=out)
        return 0
    if shared := store.shared_problem(cfg.bayes.db):  # said with --quiet too: Dovecot logs it
        print(f"spambridge train: {shared}", file=err)
    try:
        writer = store.SqliteWriter(cfg.bayes.db)
    except (store.StoreError, OSError) as e:
        print(f"spambridge train: {e}", file=err)
        return 1
    try:
        limits = _training_limits(cfg, writer, err if not quiet else None)
        trainer = Trainer(writer, label, limits, batch_messages, selective,
                          cfg.bayes.min_trained, cfg.policy.subject_tag)
    except store.StoreError as e:
        writer.close()
        print(f"spambridge train: {e}", file=err)
        return 1
    sources = entries(label, paths, index)
    single = index is None and paths == ["-"]
    progress = Progress([e.path for e in sources], enabled=not quiet and not single
                         and err.isatty())
    said: list[str] = []  # stdin's outcome, said once it is committed
    previous = stop_on_sigterm()
    try:
        for entry in sources:
            cls, path, origin = entry.label, entry.path, entry.origin
            found = False
            for item in read_path(path, max_size, mbox):
                found = True
                outcome = trainer.add(item, cls)
                progress.advance()
                if item.failure:
                    progress.say(f"spambridge train: {origin}{item.where}: {item.problem}", err)
                elif single and item.problem == TOO_LARGE:
                    progress.say(too_large_line(item, max_size), err)
                elif single and not quiet:
                    said.append(f"{item.where}: {outcome}")
            if not found:  # an empty folder, or mail one level down (Maildir++ .Junk/)
                progress.say(f"spambridge train: {origin}{path}: no messages found"
                             f"{folders_in(path)}", err)
        trainer.flush()
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Stopped)
        hold_signals(previous)
        trainer.abandon()
        progress.stop()
        how = "stopped (SIGTERM)" if isinstance(e, Stopped) else "interrupted"
        print(f"spambridge train: {how}; "
              f"{kept(trainer.saved, trainer.summary.seen, 'the open one')}", file=err)
        return 143 if isinstance(e, Stopped) else 130
    except (store.StoreError, sqlite3.Error) as e:  # a corrupt file fails mid-batch
        hold_signals(previous)
        trainer.abandon()
        progress.stop()
        where = "" if isinstance(e, store.StoreError) else f"{cfg.bayes.db}: "
        if isinstance(e, store.Replaced):  # what was saved is not in the file now there
            tail = (f"the {trainer.saved} message(s) this run saved before went into that "
                    "file, not into the one now in place, and " if trainer.saved else "")
            print(f"spambridge train: {e}; {tail}nothing more was written. Run the same "
                  "train again: what the database in place already holds is skipped",
                  file=err)
            return 1
        print(f"spambridge train: {where}{e}; "
              f"{kept(trainer.saved, trainer.summary.seen, 'the one that failed')}", file=err)
        return 1
    finally:
        hold_signals(previous)  # the closing fold is short (BUSY_TIMEOUT_FOLD): let it end
        progress.stop()
        writer.close()
        restore_signals(previous)
        if writer.unfolded:
            print(f"spambridge train: {cfg.bayes.db}: the -wal file was not folded back "
                  f"({writer.unfolded}); do not move a file over the database before it is "
                  "(docs/bayes.md)", file=err)
    for line in said:
        print(line, file=out)
    if not quiet:
        print(trainer.summary.line(time.monotonic() - start), file=out)
        note_untrained(cfg, out)
    # what was learned is saved (in the -wal), but a full disk is the admin's business now
    return 1 if trainer.summary.failed or writer.fold_failed else 0


def _training_limits(cfg: Config, writer: store.SqliteWriter, err: IO[str] | None) -> Limits:
    """The tokenizer limits to learn and unlearn with: the database's own (see
    SqliteWriter.training_limits), said when the config's differ; those still bound scoring."""
    b = cfg.bayes
    max_bytes, max_tokens = writer.training_limits((b.max_bytes, b.max_tokens))
    if (max_bytes, max_tokens) != (b.max_bytes, b.max_tokens) and err is not None:
        print(f"spambridge train: {b.db} was first trained with max_bytes = {max_bytes} and "
              f"max_tokens = {max_tokens}; training keeps to them, so that moves and --forget "
              f"take back exactly what was learned (the config's {b.max_bytes} and "
              f"{b.max_tokens} bound scoring only; to change them, retrain into a new "
              "database: docs/bayes.md)", file=err)
    return limits_for(replace(b, max_bytes=max_bytes, max_tokens=max_tokens))
