"""Glue to PyPI `sbclassifier` (SpamBayes' own chi-squared classifier, ported to Python 3):
we hand it the counts of one message's tokens, fetched from the store in one query.

sbclassifier wants a mapping token → record with `spamcount`/`hamcount` plus `nspam`/`nham`
attributes; we build exactly that per message. Tokens the database has never seen score 0.5,
which the minimum strength (0.1) always discards, so only known tokens are passed in: same
result, without a KeyError per unknown word.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sbclassifier import Classifier
from sbclassifier import chi2 as _chi2

from spambridge.bayes.store import Counts, TokenCounts, Totals


@dataclass(frozen=True, slots=True)
class Options:
    """SpamBayes' defaults (notes/spambayes.md §1.6)."""

    unknown_word_prob: float = 0.5
    unknown_word_strength: float = 0.45
    minimum_prob_strength: float = 0.1
    max_discriminators: int = 150


DEFAULT_OPTIONS = Options()


def chi2q(x2: float, v: int) -> float:
    """P(chi² ≥ x2) with v (even) degrees of freedom."""
    return float(_chi2.chi2Q(x2, v))


class _MessageDb(dict[str, TokenCounts]):
    """The slice of the database one message needs, shaped as sbclassifier's ClassifierDb."""

    def __init__(self, totals: Totals) -> None:
        super().__init__()
        self.nspam = totals.nspam
        self.nham = totals.nham


@dataclass(frozen=True, slots=True)
class Verdict:
    score: float  # 0 = ham … 1 = spam
    clues: tuple[tuple[str, float], ...]  # (token, probability), strongest first


class Scorer:
    """One per thread: sbclassifier caches f(w) per (spamcount, hamcount), valid while the
    totals stay the same, so the cache is kept across messages until they change."""

    def __init__(self, options: Options = DEFAULT_OPTIONS, max_clues: int = 150) -> None:
        self.options = options
        self.max_clues = max_clues
        self._classifier: Any = Classifier(_MessageDb(Totals(0, 0)))
        c = self._classifier
        c.unknown_word_prob = options.unknown_word_prob
        c.unknown_word_strength = options.unknown_word_strength
        c.minimum_prob_strength = options.minimum_prob_strength
        c.max_discriminators = options.max_discriminators
        self._totals = Totals(0, 0)

    def score(self, tokens: Iterable[str], totals: Totals, counts: Counts) -> Verdict:
        c = self._classifier
        if totals != self._totals:
            c.probcache = {}
            self._totals = totals
        db = _MessageDb(totals)
        db.update(counts)
        c.db = db
        words = tokens if self.options.minimum_prob_strength <= 0 else db.keys()
        try:
            prob, evidence = c.spamprob(words, evidence=True)
        except (AssertionError, ZeroDivisionError):  # a hand-edited or imported database
            db = _clamped(counts, totals)
            c.db = db
            c.probcache = {}
            prob, evidence = c.spamprob(db.keys(), evidence=True)
        return Verdict(float(prob), strongest(evidence[2:], self.max_clues))


def strongest(by_prob: list[tuple[str, float]], k: int) -> tuple[tuple[str, float], ...]:
    """The k clues farthest from 0.5, strongest first. sbclassifier's evidence comes sorted by
    probability, so the strongest sit at the two ends: merge inwards, no sort needed."""
    out: list[tuple[str, float]] = []
    i, j = 0, len(by_prob) - 1
    while i <= j and len(out) < k:
        if 0.5 - by_prob[i][1] >= by_prob[j][1] - 0.5:
            out.append(by_prob[i])
            i += 1
        else:
            out.append(by_prob[j])
            j -= 1
    return tuple((w, float(p)) for w, p in out)


def _clamped(counts: Counts, totals: Totals) -> _MessageDb:
    db = _MessageDb(totals)
    for token, (s, h) in counts.items():
        s, h = min(s, totals.nspam), min(h, totals.nham)
        if s or h:
            db[token] = TokenCounts(s, h)
    return db


def probability(spamcount: int, hamcount: int, totals: Totals,
                options: Options = DEFAULT_OPTIONS) -> float:
    """f(w) of one token: Graham's ratio with Robinson's adjustment toward the prior."""
    scorer = Scorer(options)
    db = _MessageDb(totals)
    scorer._classifier.db = db
    return float(scorer._classifier.probability(TokenCounts(spamcount, hamcount)))
