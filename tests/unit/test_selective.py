"""Selective training (`train --selective`, SpamBayes' nonedge regime) and `train --index`:
the trainer must decide exactly as a plain in-memory SpamBayes model fed the same messages
would, whatever the batch size and whether the store holds the database in memory or looks
tokens up, and the database must end up holding exactly what was learned."""

from __future__ import annotations

import io
import random
import sqlite3
import sys
from collections import Counter
from pathlib import Path

import pytest

from spambridge import cli
from spambridge.bayes import store
from spambridge.bayes.classifier import Scorer
from spambridge.bayes.store import TokenCounts, Totals
from spambridge.bayes.tokenizer import tokenize
from spambridge.train import CERTAIN_HAM, CERTAIN_SPAM, Item, Trainer, strip_markup

SPAMMY = ["viagra", "cheap", "pills", "casino", "winner", "lottery", "prize", "offer", "click",
          "unsubscribe", "free", "money"]
HAMMY = ["meeting", "agenda", "minutes", "review", "budget", "project", "deadline", "lunch",
         "draft", "patch", "build", "release"]
SHARED = ["please", "today", "your", "thanks", "the", "and", "with", "from", "this", "that"]


def corpus(n: int, seed: int = 7) -> list[tuple[bytes, bool]]:
    """Overlapping vocabularies and a few near-duplicates: some messages end up certain, some
    unsure, some on the wrong side, so every branch of the regime is taken."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        spam = rng.random() < 0.4
        own = SPAMMY if spam else HAMMY
        other = HAMMY if spam else SPAMMY
        words = ([rng.choice(own) for _ in range(rng.randint(3, 30))]
                 + [rng.choice(other) for _ in range(rng.randint(0, 6))]
                 + [rng.choice(SHARED) for _ in range(10)]
                 + [f"rare{rng.randint(0, 400)}" for _ in range(3)])
        rng.shuffle(words)
        subject = rng.choice(own).upper() if spam else rng.choice(own)
        raw = (f"From: s{rng.randint(0, 30)}@{'deals' if spam else 'work'}.example\n"
               f"To: user@example.net\nSubject: {subject} {i % 9}\n\n{' '.join(words)}\n")
        out.append((raw.encode(), spam))
    return out


class Reference:
    """SpamBayes' nonedge regime over plain counters; every message of a class is learned while
    fewer than `min_trained` of it are."""

    def __init__(self, min_trained: int = 1) -> None:
        self.min_trained = min_trained
        self.spam: Counter[str] = Counter()
        self.ham: Counter[str] = Counter()
        self.nspam = self.nham = 0
        self.scorer = Scorer()
        self.learned: set[bytes] = set()

    def counts(self, tokens: list[str]) -> store.Counts:
        out: store.Counts = {}
        for t in tokens:
            s, h = self.spam[t], self.ham[t]
            if s or h:
                out[t] = TokenCounts(s, h)
        return out

    def offer(self, raw: bytes, spam: bool) -> bool:
        msg = strip_markup(raw)
        if msg in self.learned:
            return False
        tokens = tokenize(msg)
        held = self.nspam if spam else self.nham
        if self.nspam and self.nham and held >= self.min_trained:
            score = self.scorer.score(tokens, Totals(self.nspam, self.nham),
                                      self.counts(tokens)).score
            if (score >= CERTAIN_SPAM) if spam else (score <= CERTAIN_HAM):
                return False
        (self.spam if spam else self.ham).update(tokens)
        if spam:
            self.nspam += 1
        else:
            self.nham += 1
        self.learned.add(msg)
        return True


def db_counts(path: Path) -> tuple[tuple[int, int], dict[str, tuple[int, int]]]:
    with sqlite3.connect(path) as c:
        totals = c.execute("SELECT nspam, nham FROM totals").fetchone()
        rows = {t: (s, h) for t, s, h in c.execute("SELECT token, spam, ham FROM tokens")}
    return (int(totals[0]), int(totals[1])), rows


@pytest.mark.parametrize("preload", [True, False])
@pytest.mark.parametrize(("batch_messages", "min_trained"), [(1, 1), (7, 1), (10_000, 1),
                                                              (7, 60), (10_000, 60)])
def test_selective_trainer_decides_as_the_reference_regime(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, preload: bool,
        batch_messages: int, min_trained: int) -> None:
    if not preload:  # every token looked up in SQLite, with the open batch's deltas added
        monkeypatch.setattr(store, "PRELOAD_LIMIT", 0)
    msgs = corpus(260)
    ref = Reference(min_trained)
    path = tmp_path / "bayes.sqlite"
    writer = store.SqliteWriter(str(path))
    # a first run learns everything (rows the second run must find in the database) ...
    first = Trainer(writer, "index", batch_messages=batch_messages)
    for raw, spam in msgs[:40]:
        first.add(Item("m", raw), "spam" if spam else "ham")
        (ref.spam if spam else ref.ham).update(tokenize(strip_markup(raw)))
        ref.nspam, ref.nham = ref.nspam + spam, ref.nham + (not spam)
        ref.learned.add(strip_markup(raw))
    first.flush()
    # ... then a selective run, interleaved, on a writer that has seen those commits
    trainer = Trainer(writer, "index", batch_messages=batch_messages, selective=True,
                      min_trained=min_trained)
    decisions = []
    for raw, spam in msgs[40:]:
        before = trainer.summary.learned
        trainer.add(Item("m", raw), "spam" if spam else "ham")
        decisions.append(trainer.summary.learned > before)
    trainer.flush()
    writer.close()
    expected = [ref.offer(raw, spam) for raw, spam in msgs[40:]]
    assert decisions == expected
    assert 0 < sum(expected) < len(expected)  # both branches were taken
    assert trainer.summary.recognised == len(expected) - sum(expected) - trainer.summary.already
    totals, rows = db_counts(path)
    assert totals == (ref.nspam, ref.nham)
    want = {t: (ref.spam[t], ref.ham[t]) for t in ref.spam.keys() | ref.ham.keys()}
    assert rows == {t: c for t, c in want.items() if c != (0, 0)}


@pytest.mark.parametrize("preload", [True, False])
def test_current_counts_include_the_open_batch_and_moves(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, preload: bool) -> None:
    """Batch.current() before and after learning, unlearning (a class move) and committing,
    with the database held whole in memory and looked up token by token."""
    if not preload:
        monkeypatch.setattr(store, "PRELOAD_LIMIT", 0)
    writer = store.SqliteWriter(str(tmp_path / "b.sqlite"))
    batch = writer.begin()
    batch.learn(["a", "b"], "spam")
    assert batch.current(["a", "b", "c"]) == (Totals(1, 0), [(1, 0), (1, 0), None])
    batch.learn(["b", "c"], "ham")
    batch.learn(["a", "b"], "spam", -1)  # the first message moves to ham
    batch.learn(["a", "b"], "ham")
    assert batch.current(["a", "b", "c"]) == (Totals(0, 2), [(0, 1), (0, 2), (0, 1)])
    writer.commit(batch)
    batch = writer.begin()
    assert batch.current(["a", "c", "z"]) == (Totals(0, 2), [(0, 1), (0, 1), None])
    batch.learn(["z"], "spam")
    assert batch.current(["z"]) == (Totals(1, 2), [(1, 0)])
    writer.rollback()  # abandoned: nothing of it may linger in what current() knows
    batch = writer.begin()
    assert batch.current(["z", "a"]) == (Totals(0, 2), [None, (0, 1)])
    writer.rollback()
    writer.close()
    # a fresh writer reads the database whole on its first current(), after a learn
    writer = store.SqliteWriter(str(tmp_path / "b.sqlite"))
    batch = writer.begin()
    batch.learn(["a", "q"], "spam")
    assert batch.current(["a", "q"]) == (Totals(1, 2), [(1, 1), (1, 0)])
    writer.rollback()
    writer.close()


def test_another_writers_commit_is_seen_between_batches(tmp_path: Path) -> None:
    path = str(tmp_path / "b.sqlite")
    ours, theirs = store.SqliteWriter(path), store.SqliteWriter(path)
    batch = ours.begin()
    assert batch.current(["x"]) == (Totals(0, 0), [None])
    ours.commit(batch)
    other = theirs.begin()
    other.learn(["x"], "spam")
    theirs.commit(other)
    batch = ours.begin()
    assert batch.current(["x"]) == (Totals(1, 0), [(1, 0)])
    ours.rollback()
    ours.close()
    theirs.close()


def run(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_index_selective_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    msgs = corpus(120, seed=3)
    (tmp_path / "mail").mkdir()
    lines = ["# class path, in arrival order", ""]
    for i, (raw, spam) in enumerate(msgs):
        (tmp_path / "mail" / f"{i}.eml").write_bytes(raw)
        sep = "\t" if i % 3 else " "  # cut(1) and paste(1) make tab-separated ones
        lines.append(f"{'SPAM' if spam and i % 2 else 'spam' if spam else 'ham'}{sep}mail/{i}.eml")
    index = tmp_path / "index"
    index.write_text("\n".join(lines) + "\n")
    db = tmp_path / "bayes.sqlite"
    cfg = tmp_path / "spambridge.toml"
    cfg.write_text("[bayes]\nmin_trained = 20\n")
    code, out, err = run("train", "--config", str(cfg), "--db", str(db), "--selective",
                         "--index", str(index), capsys=capsys)
    assert code == 0, err
    ref = Reference(min_trained=20)
    learned = [ref.offer(raw, spam) for raw, spam in msgs]
    n_spam = sum(1 for ok, (_, spam) in zip(learned, msgs, strict=True) if ok and spam)
    n_ham = sum(learned) - n_spam
    assert out.startswith(f"Learned {sum(learned)} of {len(msgs)} messages ({n_ham} as ham, "
                          f"{n_spam} as spam) ({len(msgs) - sum(learned)} already recognised)")
    assert db_counts(db)[0] == (n_spam, n_ham)
    # one message on stdin, as the Dovecot pipe would: a certain one is recognised, not learned
    def final_score(raw: bytes) -> float:
        tokens = tokenize(strip_markup(raw))
        return Scorer().score(tokens, Totals(ref.nspam, ref.nham), ref.counts(tokens)).score

    certain = max((raw for (raw, spam), ok in zip(msgs, learned, strict=True)
                   if spam and not ok), key=final_score)
    assert final_score(certain) >= CERTAIN_SPAM
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(certain)))
    code, out, _ = run("train", "--config", str(cfg), "--db", str(db), "--selective", "--spam",
                       capsys=capsys)
    assert code == 0
    first, summary = out.splitlines()
    assert first.startswith("<stdin>: already recognised as spam (score ")
    assert first.endswith("), not learned")
    assert summary.startswith("Learned 0 of 1 messages as spam (1 already recognised)")
    assert db_counts(db)[0] == (n_spam, n_ham)


def test_selective_training_of_a_small_mailbox_gives_a_database_the_milter_uses(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A few hundred messages of each class: without the min_trained gate the regime learned
    fewer than 200 of a class (the SpamAssassin corpus: 74 spam and 70 ham of 600), and the
    milter kept answering on_unavailable for every message. Here, plain nonedge would learn
    3 or 4 of each class and recognise the rest."""
    rng = random.Random(5)
    msgs = []
    for i in range(600):  # one campaign and one kind of ham: easy, repetitive mail
        spam = rng.random() < 0.5
        own = SPAMMY if spam else HAMMY
        words = [rng.choice(own) for _ in range(20)] + [rng.choice(SHARED) for _ in range(5)]
        msgs.append((f"From: s{i % 7}@{'deals' if spam else 'work'}.example\n"
                     f"To: user@example.net\nSubject: {rng.choice(own)} {i}\n\n"
                     f"{' '.join(words)}\n".encode(), spam))
    (tmp_path / "mail").mkdir()
    lines = []
    for i, (raw, spam) in enumerate(msgs):
        (tmp_path / "mail" / f"{i}.eml").write_bytes(raw)
        lines.append(f"{'spam' if spam else 'ham'} mail/{i}.eml")
    (tmp_path / "index").write_text("\n".join(lines) + "\n")
    db = tmp_path / "bayes.sqlite"
    code, out, err = run("train", "--db", str(db), "--selective", "--index",
                         str(tmp_path / "index"), capsys=capsys)
    assert code == 0, err
    n_spam = sum(spam for _, spam in msgs)
    assert n_spam > 200 and len(msgs) - n_spam > 200
    assert db_counts(db)[0] == (200, 200)
    assert out.startswith("Learned 400 of 600 messages (200 as ham, 200 as spam) (200 already "
                          "recognised)")  # past the gate, the regime selects again
    assert "The database holds" not in out  # no "not used until min_trained" notice


@pytest.mark.parametrize(("line", "why"), [("junk mail/0.eml", "expected 'spam PATH'"),
                                           ("spam", "expected 'spam PATH'")])
def test_bad_index_lines_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      line: str, why: str) -> None:
    index = tmp_path / "index"
    index.write_text(f"ham a.eml\n{line}\n")
    code, _, err = run("train", "--db", str(tmp_path / "b.sqlite"), "--index", str(index),
                       capsys=capsys)
    assert code == 1
    assert f"{index}:2: {why}" in err
    assert not (tmp_path / "b.sqlite").exists()


def test_a_bad_entry_of_an_index_is_named_by_its_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An index of thousands of lines with one file gone, or one folder empty: the error names
    the index line to fix, not only the path it resolved to; the rest is learned (CRLF line
    ends, a comment, a path with spaces), and the run fails."""
    msgs = corpus(2, seed=4)
    (tmp_path / "my mail").mkdir()
    (tmp_path / "my mail" / "a b.eml").write_bytes(msgs[0][0])
    (tmp_path / "ok.eml").write_bytes(msgs[1][0])
    (tmp_path / "empty").mkdir()
    index = tmp_path / "index"
    index.write_bytes(b"# class path\r\nspam my mail/a b.eml\r\nham gone.eml\r\n"
                      b"ham ok.eml\r\nspam empty\r\n")
    code, out, err = run("train", "--db", str(tmp_path / "b.sqlite"), "--index", str(index),
                         capsys=capsys)
    assert code == 1
    assert out.startswith("Learned 2 of 3 messages (1 as ham, 1 as spam) (1 unreadable)")
    said = err.splitlines()
    assert (f"spambridge train: {index}:3: {tmp_path}/gone.eml: unreadable: no such file or "
            "directory") in said, err
    assert f"spambridge train: {index}:5: {tmp_path}/empty: no messages found" in said, err


def test_an_index_saved_with_a_byte_order_mark_is_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Windows tools (Notepad, PowerShell's Out-File) save UTF-8 with a byte order mark and
    CRLF line ends: the first line was refused as "got '\\ufeffspam a.eml'"."""
    msgs = corpus(2, seed=6)
    for i, (raw, _) in enumerate(msgs):
        (tmp_path / f"{i}.eml").write_bytes(raw)
    index = tmp_path / "index"
    index.write_bytes("spam 0.eml\r\nham 1.eml\r\n".encode("utf-8-sig"))
    code, out, err = run("train", "--db", str(tmp_path / "b.sqlite"), "--index", str(index),
                         capsys=capsys)
    assert code == 0, err
    assert out.startswith("Learned 2 of 2 messages (1 as ham, 1 as spam)")


def test_index_and_paths_do_not_mix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    index = tmp_path / "index"
    index.write_text("ham a.eml\n")
    code, _, err = run("train", "--db", str(tmp_path / "b.sqlite"), "--index", str(index),
                       str(tmp_path / "x.eml"), capsys=capsys)
    assert code == 2 and "--index takes its paths from the file" in err
    code, _, err = run("train", "--db", str(tmp_path / "b.sqlite"), "--engine", "spamd",
                       "--selective", "--spam", str(tmp_path / "x.eml"), capsys=capsys)
    assert code == 2 and "--selective applies to the local Bayes database" in err
