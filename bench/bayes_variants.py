"""Tokenizer options and training regimes of the local Bayes engine, compared by 5-fold
cross-validation on the SpamAssassin corpus (the experiments behind docs/benchmarks.md).

Not a test. Run from the repository root (bench/bayes_accuracy.py fetches the corpus):

    .venv/bin/python bench/bayes_variants.py                  # every variant, published split
    .venv/bin/python bench/bayes_variants.py --salt validation nonedge all
    .venv/bin/python bench/bayes_variants.py --list
    .venv/bin/python bench/bayes_variants.py nonedge:0.001:0.999  # nonedge, other certainty

Everything happens in memory: the same tokenizer and scorer as the product (messages read with
train.read_path, trained through strip_markup, scored raw, as the milter sees them), but counts
in a Counter instead of SQLite, so one variant takes seconds. Fold k tests the messages whose
name hash (salted with --salt) falls in [20k, 20k+20) % 100; fold 0 with the empty salt is
bench/bayes_accuracy.py's test set. Each line sums FP/FN/unsure over the five folds (6,046 test
messages in all) at 0.20/0.90 and gives the mean 1-AUC %. The extra tokenizer features that are
not product options (SpamBayes' basic_header_tokenize, x-short_runs, summarize_email_prefixes,
image_size, check_octets, replace_nonascii_chars; body words stripped of punctuation), SpamBayes'
use_bigrams tiling and its withdrawn ham/spam imbalance adjustment are implemented here, only
for the comparison.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import re
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bayes_accuracy import (  # noqa: E402
    BOGO_CUTOFFS,
    DATA,
    OUR_CUTOFFS,
    Msg,
    accuracy,
    bogo_classify,
    bogo_train,
    fetch_corpus,
)

from spambridge.bayes import tokenizer as tokmod  # noqa: E402
from spambridge.bayes.classifier import Scorer, _Strengths  # noqa: E402
from spambridge.bayes.store import Totals  # noqa: E402
from spambridge.train import read_path, strip_markup  # noqa: E402

Tokens = list[str]
Item = tuple[Tokens, bool, Msg]  # tokens, is spam, message


# ---------------------------------------------------------------------------------------------
# the corpus, folds and the in-memory model


def corpus() -> list[Msg]:
    return [Msg(p, p.parent.name.startswith("spam")) for p in sorted(DATA.glob("*/*.txt"))]


def fold_of(m: Msg, salt: str) -> int:
    h = int.from_bytes(hashlib.sha256((salt + m.path.name).encode()).digest()[:4], "big")
    return (h % 100) // 20


def order(items: list[Item], seed: str = "") -> list[Item]:
    """Arrival order for the incremental regimes: as bench/bayes_accuracy.py's."""
    return sorted(items, key=lambda x: hashlib.md5((seed + x[2].path.name).encode()).digest())


def raw_message(m: Msg) -> bytes:
    item = next(read_path(str(m.path), 0))
    assert item.data is not None, item
    return item.data


class Model:
    """SpamBayes counts in Counters, scored by the product's Scorer."""

    def __init__(self) -> None:
        self.spam: Counter[str] = Counter()
        self.ham: Counter[str] = Counter()
        self.nspam = self.nham = 0
        self.scorer = Scorer()

    def learn(self, tokens: Tokens, spam: bool) -> None:
        (self.spam if spam else self.ham).update(tokens)
        if spam:
            self.nspam += 1
        else:
            self.nham += 1

    def score(self, tokens: Tokens) -> float:
        if not self.nspam or not self.nham:
            return 0.5
        sp, hm = self.spam, self.ham
        counts = {t: (s, h) for t in tokens if (s := sp.get(t, 0)) | (h := hm.get(t, 0))}
        return self.scorer.score(tokens, Totals(self.nspam, self.nham), counts).score


class BigramModel(Model):
    """SpamBayes' use_bigrams: learn unigrams and "bi:a b" pairs; score a greedy tiling of
    the token stream with non-overlapping strongest clues (sbclassifier has only the flag)."""

    def learn(self, tokens: Tokens, spam: bool) -> None:
        super().learn(list(set(tokens) | {f"bi:{a} {b}" for a, b in pairwise(tokens)}),
                      spam)

    def score(self, tokens: Tokens) -> float:
        from spambridge.bayes.classifier import combine

        if not self.nspam or not self.nham:
            return 0.5
        self.scorer.score([], Totals(self.nspam, self.nham), {})  # resets f(w) on new totals
        raw: list[tuple[tuple[float, float, str], tuple[int, ...]]] = []
        seen: set[str | None] = {None}
        last = ""
        for i, token in enumerate(tokens):
            pair = f"bi:{last} {token}" if i else None
            last = token
            pairs: tuple[tuple[str | None, tuple[int, ...]], ...] = (
                (token, (i,)), (pair, (i - 1, i)))
            for clue, idx in pairs:
                if clue in seen:
                    continue
                seen.add(clue)
                assert clue is not None
                c = (self.spam.get(clue, 0), self.ham.get(clue, 0))
                dp = self.scorer._strength(c) if any(c) else None
                if dp is not None:
                    raw.append(((dp[0], dp[1], clue), idx))
        raw.sort(key=lambda x: x[0], reverse=True)
        used: set[int] = set()
        clues = []
        for clue3, idx in raw:
            if not used.intersection(idx):
                used.update(idx)
                clues.append(clue3)
        clues.reverse()
        return combine(clues[-150:])


class ImbalanceStrengths(_Strengths):
    """f(w) with SpamBayes' experimental_ham_spam_imbalance_adjustment (an option until
    2003-12, off by default): the evidence n = hamcount·min(nspam/nham, 1) +
    spamcount·min(nham/nspam, 1), so no count is believed beyond what the smaller class
    justifies. _Strengths.__missing__ repeated with that n: the product's hot path gets no
    hook for a comparison."""

    __slots__ = ()

    def __missing__(self, c: tuple[int, int] | None) -> tuple[float, float] | None:
        assert c is not None  # entered at __init__
        _, _, fspam, fham, strength, prior, minimum = self._at
        if not any(c):
            self[c] = None
            return None
        spam2ham, ham2spam = min(fspam / fham, 1.0), min(fham / fspam, 1.0)
        s, h = c
        ratio = s / fspam
        prob = ratio / (h / fham + ratio)
        n = h * spam2ham + s * ham2spam
        prob = (strength * prior + n * prob) / (strength + n)
        distance = abs(prob - 0.5)
        self[c] = dp = (distance, prob) if distance >= minimum else None
        return dp


class ImbalanceScorer(Scorer):
    strengths = ImbalanceStrengths


class ImbalanceModel(Model):
    def __init__(self) -> None:
        super().__init__()
        self.scorer = ImbalanceScorer()


# ---------------------------------------------------------------------------------------------
# training regimes (notes/spambayes.md §3.2)


Regime = Callable[[Model, list[Item]], None]


def everything(model: Model, items: list[Item]) -> None:
    for tokens, spam, _ in items:
        model.learn(tokens, spam)


def nonedge(lo: float = 0.005, hi: float = 0.995, passes: int = 1, gate: int = 1,
            seed: str = "", spam_first: bool = False,
            clean_up: tuple[float, float] | None = None, class_gate: int = 0) -> Regime:
    """Learn unless already right with certainty (score <= lo for ham, >= hi for spam), in
    arrival order (or all spam, then all ham: `train --spam DIR; train --ham DIR`); everything
    until both classes have `gate` messages. `clean_up` (LO, HI): then one more pass, in
    another order, learning what is still not learned and scores on the wrong side of LO/HI
    (a train-on-errors-and-unsures clean-up). `class_gate` N: every message of a class is
    learned while the database holds fewer than N of that class."""
    def regime(model: Model, items: list[Item]) -> None:
        learned: set[Path] = set()
        ordered = order(items, seed)
        if spam_first:
            ordered.sort(key=lambda x: not x[1])
        for _ in range(passes):
            for tokens, spam, m in ordered:
                if m.path in learned:
                    continue
                held = model.nspam if spam else model.nham
                if model.nspam >= gate and model.nham >= gate and held >= class_gate:
                    score = model.score(tokens)
                    if (score >= hi) if spam else (score <= lo):
                        continue
                model.learn(tokens, spam)
                learned.add(m.path)
        if clean_up:
            clo, chi = clean_up
            for tokens, spam, m in order(items, "clean-up"):
                if m.path not in learned and ((model.score(tokens) < chi) if spam
                                              else (model.score(tokens) > clo)):
                    model.learn(tokens, spam)
    return regime


def on_error(lo: float, hi: float, rounds: int = 1, interleave: bool = False) -> Regime:
    """Train on errors and unsures (TUNE); with rounds > 1 and 1:1 interleaving, Gary
    Robinson's train-to-exhaustion (contrib/tte.py, which may learn a message again)."""
    def regime(model: Model, items: list[Item]) -> None:
        items = order(items)
        if interleave:
            hams, spams = [i for i in items if not i[1]], [i for i in items if i[1]]
            n = min(len(hams), len(spams))
            items = [x for pair in zip(hams, spams, strict=False) for x in pair] + hams[n:] + spams[n:]
        for _ in range(rounds):
            misses = 0
            for tokens, spam, _ in items:
                score = model.score(tokens)
                if (score < hi) if spam else (score > lo):
                    model.learn(tokens, spam)
                    misses += 1
            if not misses:
                break
    return regime


def balanced(model: Model, items: list[Item]) -> None:
    """Everything, but no more ham than spam (the rest of the ham dropped)."""
    n_spam = sum(1 for _, spam, _ in items if spam)
    n_ham = 0
    for tokens, spam, _ in order(items):
        if not spam:
            if n_ham >= n_spam:
                continue
            n_ham += 1
        model.learn(tokens, spam)


# ---------------------------------------------------------------------------------------------
# tokenizer variants


def with_flags(**flags: Any) -> Callable[[bytes], Tokens]:
    def tokenize(msg: bytes) -> Tokens:
        old = {k: getattr(tokmod, k) for k in flags}
        for k, v in flags.items():
            setattr(tokmod, k, v)
        try:
            return tokmod.tokenize(msg)
        finally:
            for k, v in old.items():
                setattr(tokmod, k, v)
    return tokenize


_SUBJ_WORD = re.compile(rb"[\w\x80-\xff$.%]+")
_BASIC_SKIP = re.compile(rb"received|date|x-.*")


_SCHEMELESS = re.compile(rb"(?<![/\w.@-])((?:www|ftp)\.[a-z0-9-]+\.)")


def run_tokenizer(cls: type[tokmod._Tokenizer], msg: bytes) -> Tokens:
    """tokenize() with a subclass of the product's tokenizer: distinct tokens, capped."""
    out: Tokens = []
    try:
        cls(tokmod.DEFAULT_LIMITS, out).message(msg)
    except Exception:
        out.append("control: tokenizer error")
    return list(dict.fromkeys(out))[: tokmod.DEFAULT_LIMITS.max_tokens]


def with_extras(basic: bool = False, short: bool = False, prefix: bool = False,
                image: bool = False, octets: bool = False, redundant_html: bool = False,
                fancy_urls: bool = False) -> Callable[[bytes], Tokens]:
    """SpamBayes tokenizer options the product does not have, added to its tokenizer."""

    class Extra(tokmod._Tokenizer):
        image_bytes = 0
        skip_html = False  # inside a multipart/alternative that has a text/plain part

        def top_headers(self, headers: tokmod.Headers) -> None:
            super().top_headers(headers)
            if basic:  # basic_header_tokenize: <header>:<word>, case kept, skip received|date|x-
                for name, value in headers:
                    k = name.lower()
                    if not _BASIC_SKIP.match(k):
                        for w in _SUBJ_WORD.findall(value[:2048]):
                            for t in self.word_tokens(w):
                                self.emit(f"{k.decode('latin-1')}:{t}")
            if prefix:  # summarize_email_prefixes/suffixes over To + Cc
                addrs = [a.lower() for n, v in headers if n.lower() in (b"to", b"cc")
                         for _, a in tokmod.parse_addresses(v) if a]
                if len(addrs) > 1:
                    for tag, lst, big in (("pfxlen", addrs, 3),
                                          ("sfxlen", [a[::-1] for a in addrs], 5)):
                        score = len(os.path.commonprefix(lst)) * len(lst) // 10  # noqa: RUF071
                        self.emit(f"{tag}:big" if score > big else f"{tag}:{score}")

        def walk(self, headers: tokmod.Headers, data: bytes, depth: int, start: int = 0,
                 end: int | None = None) -> None:
            body = data[start:end]  # the part's body: a window of the message
            ctype, prm = tokmod.content_type(headers)
            if image and ctype.startswith(b"image/"):
                self.image_bytes += len(body)
            if octets and ctype == b"application/octet-stream":
                self.emit("octet:" + body.lstrip()[:5].decode("latin-1"))
            # ignore_redundant_html: the HTML text of an alternative that also has text/plain
            # is not tokenized (its structure tokens still are)
            if redundant_html and ctype == b"multipart/alternative" and b"boundary" in prm:
                parts = tokmod.split_multipart(body, prm[b"boundary"])
                kinds = [tokmod.content_type(tokmod.parse_headers(tokmod.split_head(p)[0], 100))
                         [0] for p in parts]
                outer, self.skip_html = self.skip_html, b"text/plain" in kinds
                try:
                    super().walk(headers, data, depth, start, end)
                finally:
                    self.skip_html = outer
                return
            if self.skip_html and ctype == b"text/html":
                self.emit("content-type:text/html")
                return
            super().walk(headers, data, depth, start, end)

        def message(self, raw: bytes) -> None:
            super().message(raw)
            if image and self.image_bytes:
                self.emit(f"image-size:2**{round(math.log2(self.image_bytes))}")

        def text(self, payload: bytes, cte: bytes) -> None:
            if fancy_urls:  # x-fancy_url_recognition: www.x.y / ftp.x.y read as URLs
                text, _ = tokmod.decode_payload(payload, cte)
                text = text.lower()
                if b"www." in text or b"ftp." in text:
                    payload, cte = _SCHEMELESS.sub(rb"http://\1", text), b""
            if short:  # x-short_runs: log2 of the longest run of words under 3 characters
                text, _ = tokmod.decode_payload(payload, cte)
                runs, n = [], 0
                for w in text.split():
                    if len(w) < 3:
                        n += 1
                    elif n:
                        runs.append(n)
                        n = 0
                if runs:
                    self.emit(f"short:{int(math.log2(max(runs)))}")
            super().text(payload, cte)

    return partial(run_tokenizer, Extra)


_PUNCT = ".,;:!?()[]<>*'\"-"


def strip_punctuation(keep: bool) -> Callable[[bytes], Tokens]:
    """Body words with leading and trailing punctuation stripped ("marketing," counts as
    "marketing"); with `keep`, the stripped form as an extra "w:" token beside SpamBayes' own.
    Tim Peters found plain whitespace splitting better on his corpora; a small database might
    have gained from pooling the evidence."""

    class Stripped(tokmod._Tokenizer):
        def text(self, payload: bytes, cte: bytes) -> None:
            extend = self.extend

            def pooled(tokens: Iterable[str]) -> None:
                words = list(tokens)
                stripped = [(w, x) for w in words if len(x := w.strip(_PUNCT)) > 2]
                if keep:
                    extend(words)
                    extend(["w:" + x for w, x in stripped if x != w])
                else:
                    extend([x for _, x in stripped])

            self.extend = pooled
            try:
                super().text(payload, cte)
            finally:
                self.extend = extend

    return partial(run_tokenizer, Stripped)


_STRIPPED, _POOLED = strip_punctuation(False), strip_punctuation(True)


_NONASCII = bytes(range(128)) + b"?" * 128


class _NonAscii(tokmod._Tokenizer):
    """replace_nonascii_chars: every byte above 0x7f of a text part read as "?"."""

    def text(self, payload: bytes, cte: bytes) -> None:
        text, _ = tokmod.decode_payload(payload, cte)
        super().text(text.translate(_NONASCII), b"")


_REPLACE_NONASCII = partial(run_tokenizer, _NonAscii)


def stream(msg: bytes) -> Tokens:
    """The token stream with repeats and in order, for the bigram tiling."""
    out: Tokens = []
    try:
        tokmod._Tokenizer(tokmod.DEFAULT_LIMITS, out).message(msg)
    except Exception:
        out.append("control: tokenizer error")
    return out[:20_000]


@dataclass(frozen=True)
class Variant:
    regime: Regime = everything
    tokenize: Callable[[bytes], Tokens] = tokmod.tokenize
    model: type[Model] = Model


VARIANTS: dict[str, Variant] = {
    "all": Variant(),
    "sb-defaults": Variant(tokenize=with_flags(MINE_RECEIVED=False, RECORD_ABSENCE=False)),
    "no-mine-received": Variant(tokenize=with_flags(MINE_RECEIVED=False)),
    "no-absence": Variant(tokenize=with_flags(RECORD_ABSENCE=False)),
    "count-all-headers": Variant(tokenize=with_flags(COUNT_ALL_HEADERS=True)),
    "header-words": Variant(tokenize=with_flags(BASIC_HEADERS=True)),
    "sb-basic-headers": Variant(tokenize=with_extras(basic=True)),
    "pick-apart-urls": Variant(tokenize=with_flags(PICK_APART_URLS=True)),
    "short-runs": Variant(tokenize=with_extras(short=True)),
    "email-prefixes": Variant(tokenize=with_extras(prefix=True)),
    "image-size": Variant(tokenize=with_extras(image=True)),
    "octets": Variant(tokenize=with_extras(octets=True)),
    "bigrams": Variant(tokenize=stream, model=BigramModel),
    "ignore-redundant-html": Variant(tokenize=with_extras(redundant_html=True)),
    "fancy-urls": Variant(tokenize=with_extras(fancy_urls=True)),
    "balanced": Variant(regime=balanced),
    "tune": Variant(regime=on_error(0.20, 0.90)),
    "tune-0.05": Variant(regime=on_error(0.05, 0.95)),
    "tte": Variant(regime=on_error(0.20, 0.90, rounds=10, interleave=True)),
    "tte-0.05": Variant(regime=on_error(0.05, 0.95, rounds=10, interleave=True)),
    "nonedge": Variant(regime=nonedge()),
    "nonedge-2-passes": Variant(regime=nonedge(passes=2)),
    "nonedge-gate-200": Variant(regime=nonedge(gate=200)),
    "nonedge-class-gate-200": Variant(regime=nonedge(class_gate=200)),
    "nonedge-class-gate-200-spam-first": Variant(regime=nonedge(class_gate=200,
                                                                spam_first=True)),
    "nonedge-spam-first": Variant(regime=nonedge(spam_first=True)),
    "nonedge-bigrams": Variant(regime=nonedge(), tokenize=stream, model=BigramModel),
    "nonedge-ignore-redundant-html": Variant(regime=nonedge(),
                                             tokenize=with_extras(redundant_html=True)),
    "nonedge-fancy-urls": Variant(regime=nonedge(), tokenize=with_extras(fancy_urls=True)),
    "nonedge-header-words": Variant(regime=nonedge(), tokenize=with_flags(BASIC_HEADERS=True)),
    "imbalance-adjustment": Variant(model=ImbalanceModel),
    "nonedge-imbalance-adjustment": Variant(model=ImbalanceModel, regime=nonedge()),
    "nonedge-all-spam": Variant(regime=nonedge(hi=2.0)),
    "nonedge-all-ham": Variant(regime=nonedge(lo=-1.0)),
    "nonedge-then-tune-0.01": Variant(regime=nonedge(clean_up=(0.01, 0.99))),
    "strip-punctuation": Variant(tokenize=_STRIPPED),
    "nonedge-strip-punctuation": Variant(regime=nonedge(), tokenize=_STRIPPED),
    "nonedge-pooled-punctuation": Variant(regime=nonedge(), tokenize=_POOLED),
    "replace-nonascii": Variant(tokenize=_REPLACE_NONASCII),
    "nonedge-replace-nonascii": Variant(regime=nonedge(), tokenize=_REPLACE_NONASCII),
    "nonedge-count-all-headers": Variant(regime=nonedge(),
                                         tokenize=with_flags(COUNT_ALL_HEADERS=True)),
}


# ---------------------------------------------------------------------------------------------


def folds(msgs: list[Msg], salt: str) -> Iterator[tuple[list[Msg], list[Msg]]]:
    for f in range(5):
        yield ([m for m in msgs if fold_of(m, salt) != f],
               [m for m in msgs if fold_of(m, salt) == f])


def line(name: str, results: list[Any], n: int) -> str:
    fp = sum(a.fp for a in results)
    fn = sum(a.fn for a in results)
    unsure = sum(a.unsure for a in results)
    aucs = " ".join(f"{a.one_minus_auc:.4f}" for a in results)
    return (f"{name:32}FP {fp:3}  FN {fn:3}  unsure {unsure:4} ({100 * unsure / n:4.2f} %)  "
            f"1-AUC % {statistics.mean(a.one_minus_auc for a in results):.4f} [{aucs}]")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="*", help="names (default: all of them); nonedge:LO:HI "
                    "is nonedge learning unless ham scores <= LO or spam >= HI; "
                    "nonedge-gate:N learns everything until both classes hold N, "
                    "nonedge-class-gate:N every message of a class holding fewer than N "
                    "(either with :LO:HI for the certainty thresholds)")
    ap.add_argument("--salt", default="", help="another split of the same kind")
    ap.add_argument("--bogofilter", action="store_true", help="add bogofilter's line")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    if args.list:
        print("\n".join(VARIANTS))
        return 0
    fetch_corpus()
    msgs = corpus()
    raw = {m.path: raw_message(m) for m in msgs}
    cache: dict[Callable[[bytes], Tokens], tuple[dict[Path, Tokens], dict[Path, Tokens]]] = {}
    print(f"5-fold cross-validation, split salt {args.salt!r}; sums over {len(msgs)} test "
          f"messages, cutoffs {OUR_CUTOFFS[0]:.2f}/{OUR_CUTOFFS[1]:.2f}")
    if args.bogofilter:
        results = []
        for train, test in folds(msgs, args.salt):
            with tempfile.TemporaryDirectory() as d:
                bogo_train(d, train)
                results.append(accuracy(bogo_classify(d, test)[0], BOGO_CUTOFFS))
        print(line("bogofilter (0.45/0.99)", results, len(msgs)))
    for name in args.variants or VARIANTS:
        if name.startswith("nonedge:"):
            lo, hi = (float(x) for x in name.split(":")[1:])
            VARIANTS[name] = Variant(regime=nonedge(lo, hi))
        elif name.startswith(("nonedge-gate:", "nonedge-class-gate:")):
            n, *cut = name.split(":")[1:]
            lo, hi = (float(x) for x in cut) if cut else (0.005, 0.995)
            VARIANTS[name] = Variant(regime=nonedge(lo, hi, gate=int(n)) if "class" not in name
                                     else nonedge(lo, hi, class_gate=int(n)))
        v = VARIANTS[name]
        if v.tokenize not in cache:
            cache[v.tokenize] = ({m.path: v.tokenize(strip_markup(raw[m.path])) for m in msgs},
                                 {m.path: v.tokenize(raw[m.path]) for m in msgs})
        learn_tokens, score_tokens = cache[v.tokenize]
        results = []
        for train, test in folds(msgs, args.salt):
            model = v.model()
            v.regime(model, [(learn_tokens[m.path], m.spam, m) for m in train])
            results.append(accuracy([(model.score(score_tokens[m.path]), m.spam)
                                     for m in test], OUR_CUTOFFS))
        print(line(name, results, len(msgs)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
