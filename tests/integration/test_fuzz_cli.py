"""Hostile files through `spambridge train` and `spambridge check` (the same strategies as the
milter fuzz, written as message files, Maildir-less directories and mboxes).

Each hypothesis example runs both commands in this process (a fresh interpreter per example
would cost a second each); a last test runs the real commands once, as subprocesses, over every
file the examples wrote. No exception, a defined exit status, one `check` line per file, no
traceback on stderr.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile import as_file, hostile_message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spambridge import cli

EXAMPLES = int(os.environ.get("SPAMBRIDGE_FUZZ_CLI_EXAMPLES", "300"))
CHECK_LINE = re.compile(r"^(.*)\t(\S+)\t(ham|unsure|spam|reject|unchecked=\w+)$")

FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where every example's files stay, for the subprocess run at the end."""
    return tmp_path_factory.mktemp("hostile-files")


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("fuzz-db")
    path = base / "bayes.sqlite"
    for label, words in (("spam", "viagra casino lottery prize"), ("ham", "agenda budget lunch")):
        d = base / label
        d.mkdir()
        for i in range(5):
            (d / f"{i}.eml").write_bytes(f"Subject: {label} {i}\n\n{words} {i}\n".encode())
        assert cli.main(["train", "--db", str(path), f"--{label}", "-q", str(d)]) == 0
    (base / "sb.toml").write_text("[bayes]\nmin_trained = 5\n")  # what was trained above
    return path


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return code, out.getvalue(), err.getvalue()


def mbox_of(messages: list[bytes]) -> bytes:
    """An mbox as a careless writer makes it: unescaped `From ` lines inside bodies too."""
    return b"".join(b"From spammer@example.net Thu Jan  1 00:00:00 2026\n" + m + b"\n"
                    for m in messages)


counter = iter(range(10**9))


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")
@FUZZ
@given(msgs=st.lists(hostile_message(), min_size=1, max_size=4), label=st.sampled_from(
    ["--spam", "--ham", "--forget"]))
def test_train_and_check_survive_hostile_files(
    corpus: Path, db: Path, msgs: list[tuple[list[tuple[str, bytes]], bytes]], label: str,
) -> None:
    n = next(counter)
    d = corpus / f"ex{n}"
    d.mkdir()
    files = []
    for i, (headers, body) in enumerate(msgs):
        f = d / f"{i}.eml"
        f.write_bytes(as_file(headers, body))
        files.append(f)
    box = d / "box.mbox"
    box.write_bytes(mbox_of([f.read_bytes() for f in files]))

    code, out, err = run_cli("train", "--db", str(db), label, "-q", str(d))
    assert code == 0, (code, out, err)
    code, out, err = run_cli("train", "--db", str(db), label, "-q", "--mbox", str(box))
    assert code == 0, (code, out, err)
    assert "Traceback" not in err

    code, out, err = run_cli("check", "--config", str(db.parent / "sb.toml"), "--db", str(db),
                             "--batch", *map(str, files))
    assert code == 0, (code, out, err)
    lines = out.splitlines()
    assert len(lines) == len(files), out
    for line, f in zip(lines, files, strict=True):
        m = CHECK_LINE.match(line)
        assert m and m.group(1) == str(f), line
        assert m.group(3) in ("ham", "unsure", "spam", "reject", "unchecked=oversize"), line
    assert "Traceback" not in err


PACK = {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}


def outcome(summary: str) -> str:
    """A train summary line without its timing."""
    return summary.partition(" in ")[0]


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")
@settings(FUZZ, max_examples=max(1, EXAMPLES // 3))
@given(msgs=st.lists(hostile_message(), min_size=1, max_size=3),
       fmt=st.sampled_from(sorted(PACK)), cut=st.none() | st.integers(1, 200))
def test_a_hostile_file_compressed_reads_as_the_file_or_is_named(
    corpus: Path, db: Path, msgs: list[tuple[list[tuple[str, bytes]], bytes]], fmt: str,
    cut: int | None,
) -> None:
    """Stored compressed (Dovecot's zlib plugin), a file is the same file to `train` and
    `check`: the same outcome and the same score; cut short, it is named, never a traceback
    and never learned in part."""
    n = next(counter)
    plain, packed = corpus / f"zex{n}" / "plain", corpus / f"zex{n}" / "packed"
    plain.mkdir(parents=True)
    packed.mkdir()
    whole = True
    for i, (headers, body) in enumerate(msgs):
        data = as_file(headers, body)
        (plain / f"{i}.msg").write_bytes(data)  # (not *.eml: the last test's files)
        z = PACK[fmt](data)
        if cut is not None and len(z) - cut >= 16:  # still told compressed by its first bytes
            z, whole = z[: len(z) - cut], False
        (packed / f"{i}.msg").write_bytes(z)
    cfg = str(db.parent / "sb.toml")
    results = []
    for d in (plain, packed):
        fresh = d.parent / f"{d.name}.sqlite"
        code, out, err = run_cli("train", "--db", str(fresh), "--spam", str(d))
        assert "Traceback" not in err
        c_code, c_out, c_err = run_cli("check", "--config", cfg, "--db", str(db), "--batch",
                                       *sorted(map(str, d.iterdir())))
        assert "Traceback" not in c_err and len(c_out.splitlines()) == len(msgs), c_out
        results.append((code, outcome(out), c_code, c_out.replace(str(d), ""), fresh))
    if whole:
        assert results[1][:4] == results[0][:4]
    else:  # some file cut short: named, unreadable, nothing of it learned
        code, summary, c_code, c_out, _ = results[1]
        assert code == 1 and " unreadable)" in summary and c_code == 1, (summary, c_out)
        assert "\t-\tunreadable" in c_out, c_out
        # into the database the plain files went to: nothing new, no part of one learned
        _, out, _ = run_cli("train", "--db", str(results[0][4]), "--spam", str(packed))
        assert out.startswith(f"Learned 0 of {len(msgs)} messages"), out


def test_real_commands_over_every_hostile_file(corpus: Path, db: Path) -> None:
    """The same files, once, through the installed entry point as separate processes."""
    files = sorted(p for p in corpus.rglob("*.eml"))
    if not files:
        pytest.skip("run with the hypothesis test first")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    t = subprocess.run([sys.executable, "-m", "spambridge", "train", "--db", str(db), "--spam",
                        "-q", str(corpus)], capture_output=True, text=True, timeout=600, env=env)
    assert t.returncode == 0 and "Traceback" not in t.stderr, t.stderr[-3000:]
    c = subprocess.run([sys.executable, "-m", "spambridge", "check", "--config",
                        str(db.parent / "sb.toml"), "--db", str(db), "--batch", *map(str, files)],
                       capture_output=True, text=True, timeout=600, env=env)
    assert c.returncode == 0 and "Traceback" not in c.stderr, c.stderr[-3000:]
    assert len(c.stdout.splitlines()) == len(files)


# ------------------------------------------------------------------------------------------------
# the size cap and file modes


def totals(db: Path) -> tuple[int, int]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        row = conn.execute("SELECT nspam, nham FROM totals").fetchone()
    return int(row[0]), int(row[1])


@pytest.fixture
def fresh_db(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "db.sqlite"
    f = tmp_path / "seed.eml"
    f.write_bytes(b"Subject: seed\n\nagenda budget lunch\n")
    assert cli.main(["train", "--db", str(path), "--ham", "-q", str(f)]) == 0
    yield path


def test_train_refuses_messages_over_the_size_cap(tmp_path: Path, fresh_db: Path) -> None:
    """500 KiB by default, as sa-learn: a 600 KB message (file or stdin) is not learned;
    `--max-size` moves the cap; the run still succeeds for the rest."""
    big = tmp_path / "big.eml"
    big.write_bytes(b"Subject: big\n\n" + b"lottery winner " * 40_000 + b"\n")
    small = tmp_path / "small.eml"
    small.write_bytes(b"Subject: small\n\nlottery winner\n")
    before = totals(fresh_db)
    code, out, _ = run_cli("train", "--db", str(fresh_db), "--spam", str(big), str(small))
    assert code == 0 and "1 too large" in out
    assert totals(fresh_db) == (before[0] + 1, before[1])
    p = subprocess.run([sys.executable, "-m", "spambridge", "train", "--db", str(fresh_db),
                        "--spam", "-"], input=big.read_bytes(), capture_output=True, timeout=60)
    assert p.returncode == 0 and b"too large" in p.stdout + p.stderr
    assert totals(fresh_db) == (before[0] + 1, before[1])
    code, out, _ = run_cli("train", "--db", str(fresh_db), "--spam", "--max-size", "10k",
                           str(small))
    assert code == 0
    code, out, _ = run_cli("train", "--db", str(fresh_db), "--ham", "--max-size", "1000k",
                           str(big))
    assert code == 0 and totals(fresh_db) == (before[0] + 1, before[1] + 1)


def test_database_files_are_not_world_readable(fresh_db: Path) -> None:
    """The token database holds the vocabulary of everyone's mail."""
    conn = sqlite3.connect(fresh_db)  # a reader keeps -wal and -shm in existence
    try:
        conn.execute("SELECT count(*) FROM tokens").fetchone()
        for f in fresh_db.parent.glob(fresh_db.name + "*"):
            assert f.stat().st_mode & 0o007 == 0, (f, oct(f.stat().st_mode))
    finally:
        conn.close()
