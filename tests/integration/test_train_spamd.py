"""`spambridge train --engine spamd` teaches a real spamd's Bayes through TELL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Spamd, free_port, message, start_spamd, stop_process, wait_until

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
    # spamd answers a repeat as it answers a Bayes that is off or cannot write: both are said
    assert r.returncode == 0
    assert b"(1 already trained, or spamd's Bayes is off or read-only)" in r.stdout
    r = train("--spamd", tell_spamd.address, "--forget", "-", stdin=msg)
    assert r.returncode == 0 and b"Forgot 1 of 1" in r.stdout
    # in the test spamd's own Bayes, never the system spamd's (~debian-spamd/.spamassassin)
    assert tell_spamd.bayes is not None and list(tell_spamd.bayes.glob("bayes_toks"))


def test_tell_to_a_stopped_spamd_is_an_error(tmp_path: Path) -> None:
    port = free_port()
    r = train("--spamd", f"127.0.0.1:{port}", "--ham", "-", stdin=message())
    assert r.returncode == 1
    assert f"spamd unavailable: 127.0.0.1:{port}: ".encode() in r.stderr
    assert b"(1 spamd error, stopped there: later messages were not sent)" in r.stdout
    # a folder: the run stops at the first message, and says the rest was not sent
    for n in range(3):
        (tmp_path / f"{n}.eml").write_bytes(message(subject=f"Report {n}"))
    r = train("--spamd", f"127.0.0.1:{port}", "--ham", str(tmp_path))
    assert r.returncode == 1 and r.stderr.count(b"unavailable") == 1
    assert b"Learned 0 of 1 messages as ham (1 spamd error, stopped there" in r.stdout


def test_a_hung_spamd_stops_the_run_at_its_first_timeout(tmp_path: Path) -> None:
    """A spamd that takes a TELL and never answers (hung, or its children all busy) costs
    scan_timeout per message: the run stops at the first timeout, as at a spamd that is down,
    and says the rest was not sent, rather than wait it out for every message of a folder. Nor
    does it ask spamd whether TELL is allowed (the question after a reset): that waited out
    scan_timeout a second time, 20 s by default for a Dovecot pipe killed after 10 s."""
    from spamdfakes import SwitchableSpamd

    box = tmp_path / "junk"
    box.mkdir()
    for n in range(4):
        (box / f"{n}.eml").write_bytes(message(subject=f"Offer {n}"))
    cfg = tmp_path / "sb.toml"
    cfg.write_text("[milter]\nscan_timeout = 1\n")
    fake = SwitchableSpamd("hang")
    try:
        r = train("-c", str(cfg), "--spamd", fake.address, "--spam", str(box))
        asked = fake.requests
    finally:
        fake.close()
    assert r.returncode == 1, r.stderr
    assert r.stderr.count(b"spambridge train: ") == 1 and b"timeout" in r.stderr, r.stderr
    assert b"Learned 0 of 1 messages as spam (1 spamd error, stopped there: later messages " \
        b"were not sent)" in r.stdout, r.stdout
    assert asked == 1  # the TELL only, no question after it


@pytest.mark.parametrize("size", [200, 200_000])
def test_a_spamd_without_allow_tell_is_named_as_the_cause(spamd: Spamd, size: int) -> None:
    """spamd refuses TELL unless started with --allow-tell, and says so only when the whole
    message reached it first: for anything bigger than a few kB it closes before reading the
    body, and train said "Connection reset by peer" — an admin looked for a network fault.
    The run asks spamd why (a TELL it cannot learn from) and shows spamd's own words."""
    msg = message(subject="Cheap watches", body="Buy replica watches today. " * (size // 27))
    r = train("--spamd", spamd.address, "--spam", "-", stdin=msg)
    assert r.returncode == 1
    assert (b"TELL commands are not enabled, set the --allow-tell switch." in r.stderr
            ), r.stderr
    assert b"reset" not in r.stderr
    assert b"Learned 0 of 1 messages as spam (1 spamd error, stopped there" in r.stdout


def test_a_reset_from_a_spamd_that_allows_tell_is_said_as_it_was(tell_spamd: Spamd) -> None:
    """The question spamd is asked after a reset teaches it nothing: a spamd that allows
    TELL refuses it (Set and Remove together), and the reset is reported as it was."""
    from spambridge.config import SpamdConfig
    from spambridge.scanners.spamd import SpamdScanner
    from spambridge.train.tell import TELL_PROBE, _why_reset
    from spambridge.verdict import ErrorKind, ScanError

    host, port = tell_spamd.address.rsplit(":", 1)
    scanner = SpamdScanner(SpamdConfig(host=host, port=int(port)), 10.0)
    with pytest.raises(ScanError, match="Unable to set local and remove local"):
        asyncio.run(scanner.request("TELL", b"", "", TELL_PROBE))
    try:  # as request() raises it: from the OSError, which is what sends the question
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except OSError as e:
            raise ScanError(ErrorKind.UNAVAILABLE, "spamd", "x: ConnectionResetError") from e
    except ScanError as e:
        reset = e
    assert asyncio.run(_why_reset(scanner, "", reset)) is reset


def test_tell_to_a_missing_socket_names_the_path(tmp_path: Path) -> None:
    sock = tmp_path / "no-spamd.sock"
    r = train("--spamd", str(sock), "--ham", "-", stdin=message())
    assert r.returncode == 1
    assert f"spamd unavailable: {sock}: ".encode() in r.stderr


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


def test_forgetting_what_spamd_never_learned_is_said(tell_spamd: Spamd) -> None:
    """--forget of a message spamd's Bayes does not hold: nothing removed, and the summary
    says so rather than claiming it forgot one or saying nothing."""
    msg = message(subject="Never taught", body="A message this spamd has never been told of.\n")
    r = train("--spamd", tell_spamd.address, "--forget", "-", stdin=msg)
    assert r.returncode == 0, r.stderr
    assert (b"Forgot 0 of 1 messages (1 not trained before, or spamd's Bayes is off or "
            b"read-only)") in r.stdout


def test_both_engines_learn_one_message_from_stdin(tell_spamd: Spamd, tmp_path: Path) -> None:
    """`--engine spamd+bayes` (a Dovecot pipe gives the message once, on stdin): both the
    local database and spamd learn it whole; one byte over --max-size, neither does."""
    msg = message(subject="Replica watches", body="Cheap replica watches, order now.\n")
    db = tmp_path / "b.sqlite"

    def both(*args: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "spambridge", "train", "--engine",
                               "spamd+bayes", "--spamd", tell_spamd.address, "--db", str(db),
                               *args, "-"], input=stdin, capture_output=True, timeout=120,
                              check=False)

    r = both("--spam", stdin=msg)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(b"Learned 1 of 1 messages as spam") == 2, r.stdout
    big = msg + b"x" * 99 + b"\n"
    r = both("--ham", "--max-size", str(len(big) - 1), stdin=big)
    assert r.stdout.count(b"Learned 0 of 1 messages as ham (1 too large)") == 2, r.stdout


def test_an_index_teaches_spamd_both_classes(tell_spamd: Spamd, tmp_path: Path) -> None:
    spam, ham = tmp_path / "spam.eml", tmp_path / "ham.eml"
    spam.write_bytes(message(subject="Win a prize", body="Claim your casino prize now.\n"))
    ham.write_bytes(message(subject="Agenda", body="The agenda for Monday's review.\n"))
    index = tmp_path / "index"
    index.write_text("spam spam.eml\nham ham.eml\n")
    r = train("--spamd", tell_spamd.address, "--index", str(index))
    assert r.returncode == 0, r.stderr
    assert b"Learned 1 of 1 messages as spam" in r.stdout
    assert b"Learned 1 of 1 messages as ham" in r.stdout


def sockets(pid: int) -> int:
    """How many sockets process `pid` has open."""
    n = 0
    with contextlib.suppress(OSError):  # gone, or a descriptor closed meanwhile
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            n += os.readlink(fd).startswith("socket:")
    return n


def test_sigterm_stops_teaching_spamd_and_says_how_far_it_got(tell_spamd: Spamd,
                                                               tmp_path: Path) -> None:
    """SIGTERM (`timeout`, a Dovecot pipe past sieve_pipe_exec_timeout, a service stop) ends a
    `train --engine spamd` run as it ends one on the local database: said, exit status 143.
    It used to die silently. spamd saves each TELL as it answers, so a rerun finds exactly the
    messages said to be answered already trained (and perhaps the one in flight)."""
    n = 250
    box = tmp_path / "box"
    box.mkdir()
    for i in range(n):
        (box / f"{i}.eml").write_bytes(message(
            subject=f"Offer {i}", body=f"Cheap pills, item {i}, only {i * 7} dollars.\n"))
    cmd = [sys.executable, "-m", "spambridge", "train", "--engine", "spamd", "--spamd",
           tell_spamd.address, "--spam", str(box)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # its event loop runs (the loop's socket pair is open): the SIGTERM handler is in place,
    # however slowly the interpreter started; then let it tell spamd a few
    wait_until(lambda: sockets(proc.pid) >= 2 or proc.poll() is not None, 60, "the run to start")
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, (proc.returncode, out, err)
    m = re.search(r"stopped \(SIGTERM\); spamd had answered for (\d+) of (\d+) messages", err)
    assert m, err
    told = int(m.group(1))
    assert told < n and out == ""
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    m = re.search(r"Learned (\d+) of 250 messages as spam \((\d+) already trained", again.stdout)
    assert m, again.stdout
    assert told <= int(m.group(2)) <= told + 1 and int(m.group(1)) + int(m.group(2)) == n


def spamc_learn(s: Spamd, learntype: str, msg: bytes) -> str:
    """`spamc -L`: spamd learns the message as it is given (as sa-learn reads a file, and as
    spamd's autolearn takes a message the milter sent)."""
    host, port = s.address.rsplit(":", 1)
    r = subprocess.run(["spamc", "-d", host, "-p", port, "-L", learntype], input=msg,
                       capture_output=True, timeout=120, check=False)
    return (r.stdout + r.stderr).decode()


def test_a_message_spamassassin_learned_as_it_came_is_the_same_one_to_train(
        tell_spamd: Spamd, tmp_path: Path) -> None:
    """SpamAssassin knows a learned message by its To, Date and body bytes as they came. Most
    mail ends with a blank line or two (a MIME part's last boundary, a signature), and `train`
    sent the body with them stripped: another message to SpamAssassin. One sa-learn (or spamc
    -L, or autolearn) had learned as spam was learned as spam again on top, and moved to ham
    was learned as ham without its spam being taken back."""
    if shutil.which("spamc") is None:
        pytest.skip("spamc is not installed")
    msg = message(subject="Blank lines at the end",
                  body="Claim your casino prize, order replica watches now.\n\n\n")
    f = tmp_path / "prize.eml"
    f.write_bytes(msg)
    assert "successfully" in spamc_learn(tell_spamd, "spam", msg)
    r = train("--spamd", tell_spamd.address, "--spam", str(f))
    assert r.returncode == 0, r.stderr
    assert b"Learned 0 of 1 messages as spam (1 already trained" in r.stdout, r.stdout
    r = train("--spamd", tell_spamd.address, "--ham", str(f))  # a move: spam taken back
    assert b"Learned 1 of 1 messages as ham" in r.stdout, r.stdout
    assert "already" in spamc_learn(tell_spamd, "ham", msg)
