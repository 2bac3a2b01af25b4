"""The local Bayes engine against SpamBayes' own tokenizer, run as a reference (an oracle, not
copied: it runs in its own Python 2 process and only its tokens come back).

Not a test. Needs a Python 2.7 interpreter (Debian 12 has none; pyenv builds one) and the
package registry: the SpamBayes 1.1b3 source is fetched from PyPI with that interpreter's pip
into bench/.cache/ on the first run. From the repository root:

    .venv/bin/python bench/spambayes_reference.py --python2 /root/.pyenv/versions/2.7.18/bin/python

Every corpus message is tokenized by SpamBayes 1.1b3 twice — with its shipped options, and
with the two options spambridge turns on (mine_received_headers, record_header_absence) — and
by spambridge's tokenizer. The three token sets then go through the same classifier (the
product's Scorer: SpamBayes' chi-squared math), the same training regimes (everything, and
`--selective`'s: nonedge with every message of a class learned while fewer than 200 of it are)
and the same 5-fold cross-validation as bench/bayes_variants.py, on both salts: whatever
differs between the lines is the tokenizer. It also counts where the token sets differ.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bayes_variants as bv  # noqa: E402
from bayes_accuracy import CACHE, OUR_CUTOFFS, accuracy, fetch_corpus  # noqa: E402

from spambridge.bayes.tokenizer import tokenize  # noqa: E402
from spambridge.train import strip_markup  # noqa: E402

VERSION = "1.1b3"
# Python 2: SpamBayes' tokenize() on each file named in argv[1], as JSON lines on stdout; argv[2]
# holds a stub of lockfile (its classifier module imports it, for pickles only), argv[3] the
# SpamBayes source.
DRIVER = r"""
import sys, json
sys.path[:0] = [sys.argv[2], sys.argv[3]]
from spambayes import tokenizer
for path in open(sys.argv[1]).read().splitlines():
    tokens = sorted(set(tokenizer.tokenize(open(path, 'rb').read())))
    sys.stdout.write(json.dumps([path, [t.decode('latin-1') for t in tokens]]) + '\n')
"""
LOCKFILE_STUB = "class LockFile(object):\n    def __init__(self, *a, **k): pass\n"
AS_SPAMBRIDGE = "[Tokenizer]\nmine_received_headers: True\nrecord_header_absence: True\n"

Tokens = dict[str, list[str]]


def spambayes_source(python2: str) -> Path:
    src = CACHE / f"spambayes-{VERSION}"
    if not src.is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([python2, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"spambayes=={VERSION}", "-d", str(CACHE)], check=True, timeout=600)
        subprocess.run(["tar", "xzf", f"spambayes-{VERSION}.tar.gz"], cwd=CACHE, check=True)
    return src


def spambayes_tokens(python2: str, paths: list[str], options: str | None) -> Tokens:
    src = spambayes_source(python2)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "driver.py").write_text(DRIVER)
        (t / "stub").mkdir()
        (t / "stub" / "lockfile.py").write_text(LOCKFILE_STUB)
        (t / "paths").write_text("\n".join(paths) + "\n")
        env = {"PATH": "/usr/bin:/bin"}
        if options:
            (t / "options.ini").write_text(options)
            env["BAYESCUSTOMIZE"] = str(t / "options.ini")
        out = subprocess.run([python2, str(t / "driver.py"), str(t / "paths"),
                              str(t / "stub"), str(src)], env=env, check=True,
                             capture_output=True, timeout=1800).stdout
    return {p: tokens for p, tokens in map(json.loads, out.decode().splitlines())}


def kind(token: str) -> str:
    """The family of a token, for counting differences."""
    m = re.match(r"[a-z-]+(?: [a-z]+)*:", token)
    return m.group(0) if m else "(body word)"


def differences(ours: Tokens, theirs: Tokens) -> str:
    only_theirs: Counter[str] = Counter()
    only_ours: Counter[str] = Counter()
    same = 0
    for path, tokens in ours.items():
        a, b = set(tokens), set(theirs[path])
        same += a == b
        only_theirs.update(kind(x) for x in b - a)
        only_ours.update(kind(x) for x in a - b)
    top = ", ".join(f"{k} {n}" for k, n in only_theirs.most_common(8))
    top2 = ", ".join(f"{k} {n}" for k, n in only_ours.most_common(8))
    return (f"  identical token sets: {same} of {len(ours)}\n"
            f"  only SpamBayes': {top}\n  only spambridge's: {top2}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python2", required=True, help="a Python 2.7 interpreter")
    args = ap.parse_args()
    fetch_corpus()
    msgs = bv.corpus()
    paths = [str(m.path) for m in msgs]
    raw = {str(m.path): bv.raw_message(m) for m in msgs}
    # spambridge learns what `train` learns (strip_markup) and scores what the milter sees
    learn = {p: tokenize(strip_markup(r)) for p, r in raw.items()}
    ours = {p: tokenize(r) for p, r in raw.items()}
    sets = [("spambridge", learn, ours)]
    for name, options in (("SpamBayes, its options", None),
                          ("SpamBayes, spambridge's two", AS_SPAMBRIDGE)):
        theirs = spambayes_tokens(args.python2, paths, options)
        print(f"{name} against spambridge's tokens:\n{differences(ours, theirs)}")
        sets.append((name, theirs, theirs))
    regimes = {"everything": bv.everything, "selective": bv.nonedge(class_gate=200)}
    print(f"5-fold cross-validation, sums over {len(msgs)} test messages, "
          f"cutoffs {OUR_CUTOFFS[0]:.2f}/{OUR_CUTOFFS[1]:.2f}")
    for salt in ("", "validation"):
        for name, learned, scored in sets:
            for regime_name, regime in regimes.items():
                results = []
                for train, test in bv.folds(msgs, salt):
                    model = bv.Model()
                    regime(model, [(learned[str(m.path)], m.spam, m) for m in train])
                    results.append(accuracy([(model.score(scored[str(m.path)]), m.spam)
                                             for m in test], OUR_CUTOFFS))
                label = f"{salt or 'published'}: {name}, {regime_name}"
                print(bv.line(f"{label:52}", results, len(msgs)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
