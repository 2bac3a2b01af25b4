"""Do other Python interpreters tokenize mail as this one does? A Bayes database trained under
one interpreter is read under another after an upgrade (Debian 12's 3.11 to Debian 13's 3.13),
and a regex engine bug changes tokens silently: Debian 12's 3.11.2 cut base64 lines that
3.11.5 and later read whole (docs/benchmarks.md, "The interpreter").

Not a test: it needs the other interpreters. Run from the repository root with any number of
them (they need nothing installed; the tokenizer uses the standard library only):

    .venv/bin/python bench/tokens_across_pythons.py /usr/bin/python3.11 \\
        /root/.pyenv/versions/3.13.0/bin/python3 [--damaged 6000] [--seed 1]

Each interpreter tokenizes the SpamAssassin corpus (see bench/bayes_accuracy.py, which fetches
it) and `--damaged` copies of its messages with random damage of the kinds hostile mail has
(stray padding, boundaries, encoded-word and comment openers, NULs, cut lines), the same copies
for every interpreter. Prints, per interpreter, how many messages tokenize differently from
this interpreter's reading, and the first few of them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / ".cache" / "package" / "data"
JUNK = [b"=", b"==", b"!!!", b"\n", b" ", b"\t", b"--", b"<", b">", b"=?", b"?=", b"\r",
        b"\x00", b"\xff", b"begin 644 x\n", b"\nend\n", b"://", b"@", b";", b'"', b"(", b")",
        b"&#", b"<!--", b"-->", b"<style", b"Content-Transfer-Encoding: base64\n",
        b'Content-Type: multipart/mixed; boundary="b"\n', b"\n--b\n", b"\n--b--\n"]


def messages(damaged: int, seed: int) -> Iterator[tuple[str, bytes]]:
    files = sorted(DATA.glob("*/*.txt"))
    for f in files:
        yield f"{f.parent.name}/{f.name}", f.read_bytes()
    rnd = random.Random(seed)
    for i in range(damaged):
        f = rnd.choice(files)
        data = bytearray(f.read_bytes())
        for _ in range(rnd.randint(1, 12)):
            pos = rnd.randrange(len(data) + 1)
            op = rnd.random()
            if op < 0.5:
                data[pos:pos] = rnd.choice(JUNK) * rnd.randint(1, 3)
            elif op < 0.8:
                del data[pos : pos + rnd.randint(1, 40)]
            else:
                data[pos:pos] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 20)))
        yield f"damaged {i} of {f.parent.name}/{f.name}", bytes(data)


def emit(damaged: int, seed: int) -> None:
    """One line per message: its name and a digest of its tokens (this interpreter's)."""
    sys.path.insert(0, str(ROOT))
    from spambridge.bayes.tokenizer import tokenize

    for name, data in messages(damaged, seed):
        digest = hashlib.sha256("\n".join(tokenize(data)).encode()).hexdigest()[:16]
        print(f"{digest} {name}")


def readings(python: str, damaged: int, seed: int) -> dict[str, str]:
    out = subprocess.run([python, __file__, "--emit", "--damaged", str(damaged),
                          "--seed", str(seed)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    return {name: digest for digest, name in (line.split(" ", 1) for line in out.splitlines())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pythons", nargs="*", help="other interpreters to compare with this one")
    ap.add_argument("--damaged", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--emit", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"no corpus under {DATA}: run bench/bayes_accuracy.py once to fetch it")
        return 2
    if args.emit:
        emit(args.damaged, args.seed)
        return 0
    ours = readings(sys.executable, args.damaged, args.seed)
    print(f"{len(ours)} messages ({args.damaged} damaged, seed {args.seed}); this interpreter: "
          f"{sys.version.split()[0]} ({os.path.realpath(sys.executable)})")
    differ = 0
    for python in args.pythons:
        try:
            theirs = readings(python, args.damaged, args.seed)
            version = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"],
                                     capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError) as e:
            why = getattr(e, "stderr", None) or str(e)
            print(f"{python}: did not run: {why.strip().splitlines()[-1]}")
            differ += 1
            continue
        diff = [n for n in ours if theirs.get(n) != ours[n]]
        differ += bool(diff)
        print(f"{python} ({version}): {len(diff)} tokenized differently")
        for n in diff[:5]:
            print(f"    {n}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
