"""`spambridge train --engine spamd` teaches a real spamd's Bayes through TELL."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Spamd, free_port, message, start_spamd, stop_process

pytestmark = pytest.mark.spamd


@pytest.fixture(scope="module")
def tell_spamd() -> Iterator[Spamd]:
    base = Path(tempfile.mkdtemp(prefix="sb-spamd-tell-"))
    s = start_spamd(base, ("--allow-tell",))
    yield s
    stop_process(s.proc)
    shutil.rmtree(base, ignore_errors=True)


def train(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "spambridge", "train", "--engine", "spamd",
                           *args], input=stdin, capture_output=True, timeout=120, check=False)


def test_tell_learns_then_reports_already_learned_then_forgets(tell_spamd: Spamd) -> None:
    msg = message(subject="Cheap watches", body="Buy replica watches today, best prices.\n",
                  extra_headers="X-Spam-Status: No, score=0.1\n")
    r = train("--spamd", tell_spamd.address, "--spam", "-", stdin=msg)
    assert r.returncode == 0, r.stderr
    assert b"Learned 1 of 1 messages as spam" in r.stdout
    r = train("--spamd", tell_spamd.address, "--spam", "-", stdin=msg)
    assert r.returncode == 0 and b"1 already trained" in r.stdout
    r = train("--spamd", tell_spamd.address, "--forget", "-", stdin=msg)
    assert r.returncode == 0 and b"Forgot 1 of 1" in r.stdout


def test_tell_to_a_stopped_spamd_is_an_error(tmp_path: Path) -> None:
    r = train("--spamd", f"127.0.0.1:{free_port()}", "--ham", "-", stdin=message())
    assert r.returncode == 1
    assert b"unavailable" in r.stderr
    assert b"(1 spamd error)" in r.stdout


def test_junk_in_a_folder_is_counted_as_with_the_local_engine(tell_spamd: Spamd,
                                                               tmp_path: Path) -> None:
    """As `train` on the local database: a non-mail file met inside a folder is counted and
    skipped, not an error; the same file named on the command line is one."""
    d = tmp_path / "folder"
    d.mkdir()
    (d / "a.eml").write_bytes(message(subject="Quarterly report", body="Figures attached.\n"))
    (d / "notes.txt").write_bytes(b"just some text, no headers\n")
    r = train("--spamd", tell_spamd.address, "--ham", str(d))
    assert r.returncode == 0, r.stderr
    assert b"of 2 messages as ham" in r.stdout and b"1 not mail" in r.stdout
    r = train("--spamd", tell_spamd.address, "--ham", str(d / "notes.txt"))
    assert r.returncode == 1
    assert b"notes.txt: not mail" in r.stderr and b"(1 not mail)" in r.stdout
