"""Logging under systemd: journald takes each line's priority from a `<N>` prefix."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import logging
from spambridge.cli import setup_logging
setup_logging("debug")
log = logging.getLogger("spambridge")
log.info("4ABC: from=<a@b> action=accept")
log.warning("reload: [milter] engine only change on restart")
log.error("reload failed, keeping the running config")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("4ABC: internal error at end of message")
"""


def run(tmp_path: Path, journal: bool, script: str = SCRIPT) -> list[str]:
    out = tmp_path / "stderr"
    with out.open("wb") as f:
        st = os.fstat(f.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}" if journal else ""}
        subprocess.run([sys.executable, "-c", script], stderr=f, env=env, check=True,
                       timeout=60)
    return out.read_text().splitlines()


def test_lines_to_the_journal_carry_their_priority(tmp_path: Path) -> None:
    """Without the prefix every warning and error was priority info in the journal and in
    syslog's mail.warn/mail.err, and each line repeated journald's time stamp and name[pid]."""
    lines = run(tmp_path, journal=True)
    assert lines[:3] == ["<6>INFO 4ABC: from=<a@b> action=accept",
                         "<4>WARNING reload: [milter] engine only change on restart",
                         "<3>ERROR reload failed, keeping the running config"]
    assert lines[3] == "<3>ERROR 4ABC: internal error at end of message"
    assert all(line.startswith("<3>") for line in lines[3:])  # the traceback too
    assert any("ZeroDivisionError" in line for line in lines[3:])


def test_a_terminal_or_file_keeps_time_stamps(tmp_path: Path) -> None:
    first = run(tmp_path, journal=False)[0]
    assert not first.startswith("<") and " spambridge[" in first
    assert first.endswith(": INFO 4ABC: from=<a@b> action=accept")


LIBRARY = """
import logging
from spambridge.cli import setup_logging
setup_logging("info")
logging.getLogger("asyncio").error("Task exception was never retrieved")
"""


def test_a_librarys_line_names_the_program_and_then_the_library(tmp_path: Path) -> None:
    """The prefix was the logger's name: "asyncio[812]: ERROR ...", a line that reads as
    another program's and that `grep 'spambridge\\['` misses; in the journal it did not say
    whose it was."""
    [line] = run(tmp_path, journal=False, script=LIBRARY)
    assert re.fullmatch(r"\S+ \S+ spambridge\[\d+\]: ERROR asyncio: Task exception was never "
                        r"retrieved", line), line
    assert run(tmp_path, journal=True, script=LIBRARY) == [
        "<3>ERROR asyncio: Task exception was never retrieved"]


def test_a_level_between_the_named_ones_gets_the_priority_around_it() -> None:
    """A library logging at a level of its own (45, 25): at WARNING and above it is an error
    to syslog (3), below it info (6), never dropped to info because it has no name."""
    import logging

    from spambridge.cli import JournalFormatter, _Origin

    def line(level: int) -> str:
        record = logging.LogRecord("lib", level, __file__, 1, "said", None, None)
        _Origin().filter(record)
        return JournalFormatter().format(record)

    assert line(45).startswith("<3>")
    assert line(25).startswith("<6>")


def test_why_the_milter_did_not_start_reaches_the_journal_as_an_error(tmp_path: Path) -> None:
    """A service that will not start (exit 78): its one line was priority info, so
    `journalctl -u spambridge -p warning` and mail.err showed no reason at all."""
    bad = tmp_path / "spambridge.toml"
    bad.write_text("[milter]\nsockett = \"unix:/run/x.sock\"\n")
    out = tmp_path / "stderr"
    with out.open("wb") as f:
        st = os.fstat(f.fileno())
        r = subprocess.run([sys.executable, "-m", "spambridge", "run", "--config", str(bad)],
                           stderr=f, env={**os.environ,
                                          "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
                           check=False, timeout=60)
    assert r.returncode == 78
    assert out.read_text().splitlines() == [
        f"<3>spambridge: configuration error: {bad}:2: [milter] sockett: unknown key"]
