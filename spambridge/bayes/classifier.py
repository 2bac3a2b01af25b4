"""SpamBayes' chi-squared scoring over one message's token counts, fetched from the store in one
query.

The math is PyPI `sbclassifier`'s (SpamBayes' own classifier, ported to Python 3): the
combining calls its `chi2Q`, and f(w) repeats its `Classifier.probability` operation for
operation. What we do ourselves is the bookkeeping around them, because that is where
sbclassifier spends its time (134 → 85 µs per message on the benchmark corpus): f(w) is cached
per (spamcount, hamcount) pair while the totals stay the same (SpamBayes does the same), clues
are built in one comprehension and sorted in C, and the frexp-guarded products are taken in
exactly sbclassifier's order (weakest clue first), so scores are bit-for-bit those of
`Classifier.spamprob` (tests/unit compare the two, and f(w) with `Classifier.probability`).

Tokens the database has never seen score `unknown_word_prob` (0.5), which the minimum strength
(0.1) always discards, so only known tokens are looked at.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, TypeVar

from sbclassifier import Classifier
from sbclassifier import chi2 as _chi2

from spambridge.bayes.store import Counts, TokenCounts, Totals

_LN2 = math.log(2)
_TINY = 1e-200  # sbclassifier's underflow guard: renormalise a product below this with frexp


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


class _Totals(dict[str, TokenCounts]):
    """What sbclassifier's `probability` reads from its database: the message totals."""

    def __init__(self, totals: Totals) -> None:
        super().__init__()
        self.nspam = totals.nspam
        self.nham = totals.nham


@dataclass(frozen=True, slots=True)
class Verdict:
    score: float  # 0 = ham … 1 = spam
    clues: tuple[tuple[str, float], ...]  # (token, probability), strongest first


_Pair = tuple[int, int] | None  # (spamcount, hamcount); None: a token not in the database


class _Strengths(dict[_Pair, tuple[float, float] | None]):
    """(spamcount, hamcount) → (distance from 0.5, f(w)), or None when too weak to be a clue,
    at one set of totals. A pair is worked out the first time it is looked up (__missing__),
    so a message's lookups are one C-level map over its counts, with Python running only for
    the pairs new at these totals: training with --selective changes the totals after every
    learned message, and a message then brings about 125 pairs, few of them all cached
    (finding the new ones first, with a set of each message's pairs, cost more than this)."""

    __slots__ = ("_at",)

    def __init__(self, totals: Totals, options: Options) -> None:
        super().__init__()
        self[None] = None  # aligned lookups: the token is not in the database
        nspam, nham = totals.nspam, totals.nham
        self._at = (nspam, nham, float(nspam or 1), float(nham or 1),
                    options.unknown_word_strength, options.unknown_word_prob,
                    options.minimum_prob_strength)

    def __missing__(self, c: _Pair) -> tuple[float, float] | None:
        """sbclassifier's Classifier.probability, step for step (so bit for bit; the tests
        compare), without its per-token call and cache lookups."""
        assert c is not None  # entered at __init__
        nspam, nham, fspam, fham, strength, prior, minimum = self._at
        s, h = c
        if s > nspam or h > nham or s < 0 or h < 0:  # hand-edited or imported database
            s, h = min(max(s, 0), nspam), min(max(h, 0), nham)
        if not s and not h:
            self[c] = None  # no evidence at all: an unknown token
            return None
        spamratio = s / fspam
        prob = spamratio / (h / fham + spamratio)
        n = h + s
        prob = (strength * prior + n * prob) / (strength + n)
        distance = abs(prob - 0.5)
        self[c] = dp = (distance, prob) if distance >= minimum else None
        return dp


class Scorer:
    """One per thread. Keeps f(w) per (spamcount, hamcount) across messages until the totals
    change, as SpamBayes' own probability cache does."""

    # what works f(w) out for a set of totals (bench/bayes_variants.py puts in a variant's)
    strengths: type[_Strengths] = _Strengths

    def __init__(self, options: Options = DEFAULT_OPTIONS, max_clues: int = 150) -> None:
        self.options = options
        self.max_clues = max_clues
        self._classifier: Any = Classifier(_Totals(Totals(0, 0)))
        c = self._classifier
        c.unknown_word_prob = options.unknown_word_prob
        c.unknown_word_strength = options.unknown_word_strength
        c.minimum_prob_strength = options.minimum_prob_strength
        c.max_discriminators = options.max_discriminators
        self._totals = Totals(0, 0)
        self._cache = self.strengths(self._totals, options)

    def _reset(self, totals: Totals) -> None:
        self._totals = totals
        self._cache = self.strengths(totals, self.options)
        self._classifier.db = _Totals(totals)
        self._classifier.probcache = {}

    def _strength(self, counts: tuple[int, int]) -> tuple[float, float] | None:
        """One pair's (distance, f(w)) at the current totals (tests, bench/bayes_variants)."""
        return self._cache[counts]

    def score(self, tokens: Iterable[str], totals: Totals, counts: Counts) -> Verdict:
        """Score a message from a mapping of its known tokens' counts: score_aligned, for
        callers that hold such a mapping (tests, bench/bayes_variants)."""
        distinct = list(dict.fromkeys(tokens))
        return self.score_aligned(distinct, totals, list(map(counts.get, distinct)))

    def score_aligned(self, tokens: Sequence[str], totals: Totals,
                      values: Sequence[tuple[int, int] | None]) -> Verdict:
        """Score a message from its tokens' counts as a list aligned with `tokens` (None: not
        in the database), as the store's lookup_aligned and a trainer holding the whole
        database in a dict give them: one C-level map, no mapping built per message. `tokens`
        must be distinct (the tokenizer's output is): a repeated one would count twice."""
        if totals != self._totals:
            self._reset(totals)
        cache = self._cache  # a pair not in it yet is worked out as it is looked up
        if not self.max_clues and not self._unknown_clues:
            # only the score is wanted (selective training): the cached (distance, f(w))
            # pairs sort and combine as they are. Leaving the word out of the sort key
            # changes nothing: clues tied on (distance, f(w)) multiply the same factor,
            # whichever of them is kept or goes first
            dps = list(filter(None, map(cache.__getitem__, values)))  # None: too weak
            _keep_strongest(dps, self.options.max_discriminators)
            return Verdict(combine(dps), ())
        known = (_never if not self._unknown_clues else
                 {t for t, c in zip(tokens, values, strict=True) if c is not None}.__contains__)
        return self._verdict(tokens, known, [
            (*dp, w) for w, dp in zip(tokens, map(cache.__getitem__, values), strict=True)
            if dp is not None])

    @property
    def _unknown_clues(self) -> bool:
        o = self.options
        return abs(o.unknown_word_prob - 0.5) >= o.minimum_prob_strength

    def _verdict(self, tokens: Iterable[str], known: Callable[[str], bool],
                 clues: list[tuple[float, float, str]]) -> Verdict:
        o = self.options
        if self._unknown_clues:
            unknown = abs(o.unknown_word_prob - 0.5)
            clues += [(unknown, o.unknown_word_prob, w) for w in dict.fromkeys(tokens)
                      if not known(w)]
        _keep_strongest(clues, o.max_discriminators)
        strongest = islice(reversed(clues), self.max_clues)
        return Verdict(combine(clues), tuple((w, p) for _, p, w in strongest))


_Clue = TypeVar("_Clue", tuple[float, float], tuple[float, float, str])


def _keep_strongest(clues: list[_Clue], limit: int) -> None:
    """SpamBayes keeps the `limit` largest (distance, prob[, word]) and combines them in
    ascending order; sorting in place in the same order keeps the float products identical."""
    clues.sort()
    if len(clues) > limit:
        del clues[:-limit]


def _never(_: str) -> bool:
    return False


def combine(clues: Sequence[tuple[float, float, str] | tuple[float, float]]) -> float:
    """Fisher/chi-squared combining of the clues' probabilities, (S − H + 1) / 2, computed as
    sbclassifier's spamprob does: running products renormalised with frexp, logs at the end,
    its chi2Q for both tails."""
    n = len(clues)
    if not n:
        return 0.5
    frexp = math.frexp
    s = h = 1.0
    sexp = hexp = 0
    for clue in clues:
        prob = clue[1]
        s *= 1.0 - prob
        h *= prob
        if s < _TINY:
            s, e = frexp(s)
            sexp += e
        if h < _TINY:
            h, e = frexp(h)
            hexp += e
    log_s = math.log(s) + sexp * _LN2
    log_h = math.log(h) + hexp * _LN2
    spam = 1.0 - _chi2.chi2Q(-2.0 * log_s, 2 * n)
    ham = 1.0 - _chi2.chi2Q(-2.0 * log_h, 2 * n)
    return float((spam - ham + 1.0) / 2.0)


def probability(spamcount: int, hamcount: int, totals: Totals,
                options: Options = DEFAULT_OPTIONS) -> float:
    """f(w) of one token: Graham's ratio with Robinson's adjustment toward the prior."""
    scorer = Scorer(options)
    scorer._reset(totals)
    return float(scorer._classifier.probability(TokenCounts(spamcount, hamcount)))
