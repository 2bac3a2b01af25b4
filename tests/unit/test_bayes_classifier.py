"""The classifier glue reproduces SpamBayes' own reference values (notes/spambayes.md §1.8),
with the counts going through the real SQLite store, as in the milter."""

from __future__ import annotations

from pathlib import Path

import pytest

from spambridge.bayes import store
from spambridge.bayes.classifier import Scorer, chi2q, probability
from spambridge.bayes.store import Totals


@pytest.mark.parametrize(
    ("spam", "ham", "nspam", "nham", "expected"),
    [
        (1, 0, 10, 10, 0.844828),
        (0, 1, 10, 10, 0.155172),
        (10, 0, 10, 10, 0.978469),
        (5, 5, 10, 10, 0.500000),
        (3, 1, 100, 10, 0.257995),
        (1, 3, 100, 10, 0.079558),
        (50, 1, 100, 1000, 0.993648),
    ],
)
def test_token_probability_matches_spambayes(spam: int, ham: int, nspam: int, nham: int,
                                             expected: float) -> None:
    assert probability(spam, ham, Totals(nspam, nham)) == pytest.approx(expected, abs=5e-7)


@pytest.mark.parametrize(
    ("x2", "v", "expected"),
    [(10, 10, 0.4404932851), (50, 20, 0.0002214766382), (300, 300, 0.4891417703),
     (2000, 300, 0.0), (0.5, 2, 0.7788007831)],
)
def test_chi2q_matches_spambayes(x2: float, v: int, expected: float) -> None:
    assert chi2q(x2, v) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_chi2q_never_exceeds_one() -> None:
    assert chi2q(100, 300) <= 1.0


@pytest.fixture
def toy_db(tmp_path: Path) -> str:
    """SpamBayes' toy database, learned through a real write batch."""
    db = str(tmp_path / "toy.sqlite")
    writer = store.SqliteWriter(db)
    batch = writer.begin()
    for tokens, label in [
        (["cheap", "pills", "viagra", "hello"], "spam"),
        (["cheap", "pills", "offer"], "spam"),
        (["hello", "meeting", "agenda"], "ham"),
        (["meeting", "lunch", "hello"], "ham"),
    ]:
        batch.learn(tokens, label)
    writer.commit(batch)
    writer.close()
    return db


@pytest.mark.parametrize(
    ("tokens", "expected", "clues"),
    [
        (["cheap", "pills"], 0.967475, {"cheap": 0.908163, "pills": 0.908163}),
        (["meeting", "agenda", "hello"], 0.068545,
         {"meeting": 0.091837, "agenda": 0.155172, "hello": 0.355072}),
        (["cheap", "meeting"], 0.5, {"cheap": 0.908163, "meeting": 0.091837}),
        (["unknown"], 0.5, {}),
    ],
)
def test_toy_database_scores_match_spambayes(toy_db: str, tokens: list[str], expected: float,
                                             clues: dict[str, float]) -> None:
    reader = store.SqliteReader(toy_db)
    totals, counts = reader.lookup(tokens)
    verdict = Scorer().score(tokens, totals, counts)
    reader.close()
    assert totals == Totals(2, 2)
    assert verdict.score == pytest.approx(expected, abs=5e-7)
    assert {t: round(p, 6) for t, p in verdict.clues} == pytest.approx(clues, abs=1e-6)


def test_clues_come_strongest_first(toy_db: str) -> None:
    reader = store.SqliteReader(toy_db)
    tokens = ["meeting", "agenda", "hello", "cheap"]
    verdict = Scorer().score(tokens, *reader.lookup(tokens))
    reader.close()
    strengths = [abs(p - 0.5) for _, p in verdict.clues]
    assert strengths == sorted(strengths, reverse=True)
    assert verdict.clues[0][0] in ("cheap", "meeting")


def test_counts_above_the_totals_are_clamped_not_fatal() -> None:
    """An imported or hand-edited database may break count <= total; score anyway."""
    counts = {"a": store.TokenCounts(5, 0), "b": store.TokenCounts(0, 0)}
    verdict = Scorer().score(["a", "b"], Totals(2, 2), counts)
    assert 0.5 < verdict.score <= 1.0


def _reference(tokens: list[str], totals: Totals, counts: store.Counts) -> tuple[float, set[str]]:
    """sbclassifier's own spamprob over a database holding exactly `counts`."""
    from sbclassifier import Classifier
    from sbclassifier.classifier import ClassifierDb, WordInfo

    db = ClassifierDb()
    db.nspam, db.nham = totals.nspam, totals.nham
    for token, (s, h) in counts.items():
        record = WordInfo()
        record.spamcount, record.hamcount = s, h
        db[token] = record
    prob, evidence = Classifier(db).spamprob(tokens, evidence=True)
    return prob, {w for w, _ in evidence[2:]}


@pytest.mark.parametrize("seed", range(12))
def test_fast_path_equals_sbclassifier_spamprob_exactly(seed: int) -> None:
    """Our clue pick and products must give sbclassifier's score to the last bit: many tokens
    (more than the 150 kept), repeated (spamcount, hamcount) pairs (ties on distance), unknown
    tokens, and the frexp renormalisation (hundreds of extreme clues)."""
    import random

    rng = random.Random(seed)
    totals = Totals(rng.randint(1, 400), rng.randint(1, 400))
    n = rng.choice([3, 40, 149, 150, 151, 400, 1500])
    tokens = [f"t{i}" for i in range(n)]
    counts: store.Counts = {}
    for t in tokens:
        r = rng.random()
        if r < 0.15:
            continue  # unknown to the database
        if r < 0.5:  # a few popular pairs: many exact ties
            s, h = rng.choice([(1, 0), (0, 1), (3, 0), (0, 7), (2, 2)])
        else:
            s, h = rng.randint(0, totals.nspam), rng.randint(0, totals.nham)
        if s or h:
            counts[t] = store.TokenCounts(min(s, totals.nspam), min(h, totals.nham))
    expected, clues = _reference(tokens, totals, counts)
    verdict = Scorer(max_clues=1000).score(tokens, totals, counts)
    assert verdict.score == expected
    assert {w for w, _ in verdict.clues} == clues
    # the trainer's form: counts as a list aligned with the tokens, None for unknown ones
    aligned = Scorer(max_clues=1000).score_aligned(tokens, totals, [counts.get(t) for t in tokens])
    assert aligned == verdict
    # the selective trainer's form: the score alone, no clue list
    decided = Scorer(max_clues=0).score_aligned(tokens, totals, [counts.get(t) for t in tokens])
    assert decided.score == expected and decided.clues == ()


def test_unknown_tokens_are_clues_when_their_prior_is_strong() -> None:
    """With an unknown_word_prob far from 0.5, tokens the database lacks count, in both
    forms of the scorer, as in sbclassifier."""
    from sbclassifier import Classifier
    from sbclassifier.classifier import ClassifierDb, WordInfo

    from spambridge.bayes.classifier import Options

    totals = Totals(20, 20)
    counts: store.Counts = {"known": store.TokenCounts(1, 9)}
    tokens = ["known", "new1", "new2", "new3"]
    db = ClassifierDb()
    db.nspam, db.nham = totals.nspam, totals.nham
    record = WordInfo()
    record.spamcount, record.hamcount = 1, 9
    db["known"] = record
    reference = Classifier(db)
    reference.unknown_word_prob = 0.9
    expected = reference.spamprob(tokens)
    scorer = Scorer(Options(unknown_word_prob=0.9))
    verdict = scorer.score(tokens, totals, counts)
    assert verdict.score == expected > 0.5  # three unknown "spammy" clues outvote one ham clue
    assert scorer.score_aligned(tokens, totals, [counts.get(t) for t in tokens]) == verdict


def test_cached_probabilities_follow_the_totals() -> None:
    """The per-(spam, ham) cache must not outlive a change of the totals."""
    scorer = Scorer()
    counts = {"a": store.TokenCounts(3, 1), "b": store.TokenCounts(2, 1)}
    before = scorer.score(["a", "b"], Totals(10, 10), counts).score
    after = scorer.score(["a", "b"], Totals(10, 1000), counts).score
    assert after == _reference(["a", "b"], Totals(10, 1000), counts)[0]
    assert after > before


def test_own_probability_equals_sbclassifier_bit_for_bit() -> None:
    """The scorer's f(w) repeats Classifier.probability; every pair must agree exactly."""
    from spambridge.bayes.classifier import Scorer as _Scorer

    for totals in (Totals(1, 1), Totals(10, 10), Totals(100, 10), Totals(1545, 3274)):
        scorer = _Scorer()
        scorer._reset(totals)
        for s in range(0, min(totals.nspam, 40) + 1):
            for h in range(0, min(totals.nham, 40) + 1):
                if not s and not h:
                    continue
                expected = probability(s, h, totals)
                got = scorer._strength(store.TokenCounts(s, h))
                if abs(expected - 0.5) < 0.1:
                    assert got is None
                else:
                    assert got == (abs(expected - 0.5), expected)


def test_exactly_one_clue_more_than_max_discriminators_drops_the_weakest() -> None:
    """151 clues: the weakest goes, as in SpamBayes (the random cases above rarely land on
    exactly one over)."""
    totals = Totals(400, 400)
    counts: store.Counts = {}
    for i in range(151):  # distinct strengths, spam and ham evidence taking turns
        counts[f"t{i}"] = store.TokenCounts(i + 1, 0) if i % 2 else store.TokenCounts(0, i + 1)
    tokens = list(counts)
    expected, clues = _reference(tokens, totals, counts)
    verdict = Scorer(max_clues=1000).score(tokens, totals, counts)
    assert len(clues) == 150 and "t0" not in clues  # the weakest, (0, 1)
    assert verdict.score == expected
    assert {w for w, _ in verdict.clues} == clues


def test_explain_lists_as_many_clues_as_asked() -> None:
    counts: store.Counts = {f"t{i}": store.TokenCounts(i + 1, 0) for i in range(5)}
    verdict = Scorer(max_clues=3).score(list(counts), Totals(10, 10), counts)
    assert [w for w, _ in verdict.clues] == ["t4", "t3", "t2"]


def test_a_count_above_its_total_scores_as_the_total() -> None:
    """Clamped: five spams of two is read as two of two, not as stronger evidence; a
    negative count (a hand-edited database) is read as none, not a division by zero that
    would send every message with that token to on_error."""

    def score(**counts: tuple[int, int]) -> float:
        return Scorer().score(list(counts), Totals(2, 2), counts).score

    assert score(a=(5, 0)) == score(a=(2, 0))
    assert score(a=(-1, 1), b=(0, 2)) == score(a=(0, 1), b=(0, 2))


def test_an_internal_error_names_the_message(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug while scoring is logged with its traceback: that line, the one an admin sends
    with the bug report, did not carry the queue id the decision line after it has."""
    import logging

    from spambridge.config import BayesConfig
    from spambridge.message import Envelope
    from spambridge.scanners import bayes
    from spambridge.verdict import ScanError

    def broken(*_: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(bayes, "tokenize", broken)
    scanner = bayes.BayesScanner(BayesConfig(db=str(tmp_path / "b.sqlite")))
    caplog.set_level(logging.ERROR, logger="spambridge")
    try:
        with pytest.raises(ScanError, match="internal: ZeroDivisionError"):
            scanner.submit(b"Subject: x\r\n\r\nhi\r\n", Envelope(queue_id="4ABCDEF0123")).result(10)
    finally:
        scanner.close()
    [record] = caplog.records
    assert record.getMessage() == "4ABCDEF0123: bayes: internal error" and record.exc_info


def test_a_fallback_database_read_that_failed_is_tried_again_when_its_mode_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """spamd+bayes, spamd answering: the trained counts the metrics show are read again when
    the file changes. A read that failed (a mode the milter's user cannot read) was not tried
    again after the admin's chmod, which changes neither the file's contents nor its mtime:
    the gauge stayed absent until spamd failed or `train` ran. Unchanged, it is not re-read."""
    import time

    from spambridge.config import BayesConfig
    from spambridge.scanners import bayes

    db = tmp_path / "b.sqlite"
    scanner = bayes.BayesScanner(BayesConfig(db=str(db)))  # created empty
    opened: list[str] = []
    real = store.SqliteReader

    def reader(path: str, *a: object, **kw: object) -> store.SqliteReader:
        opened.append(path)
        if len(opened) == 1:
            raise store.StoreError(f"{path}: cannot open the Bayes database: permission")
        return real(path, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "SqliteReader", reader)

    def refreshed(n: int) -> None:
        deadline = time.monotonic() + 10
        while len(opened) < n or scanner._refresh_lock.locked():
            assert time.monotonic() < deadline, opened
            time.sleep(0.01)

    try:
        scanner.refresh_seen()  # never read by this scanner: read, and the read fails
        refreshed(1)
        assert scanner.seen is None
        scanner.refresh_seen()  # nothing changed: not read again
        time.sleep(0.05)
        assert len(opened) == 1
        db.chmod(0o640)  # the admin's fix: only the ctime changes
        scanner.refresh_seen()
        refreshed(2)
        assert scanner.seen == Totals(0, 0)
    finally:
        scanner.close()
