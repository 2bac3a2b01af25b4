"""How long an idle milter takes to stop on TERM, and what it costs while idle: spambridge
(engine=bayes, an empty database) beside Debian's spamass-milter, both plain libmilter
programs, in the same run.

A restart (`systemctl restart`) leaves the MTA without a milter from the moment the old process
closes its socket until the new one listens, so the stop time is a window of
milter_default_action for every new SMTP session. libmilter's listener looks at its stop flag
only every 5 s (MI_CHK_TIME); a connection just before the TERM (as traffic makes) starts that
wait afresh, which is what each run does. Idle CPU: the whole process's run time (every thread's
/proc schedstat) over a quiet window.

    .venv/bin/python bench/milter_stop.py               # 5 stops each, a 30 s idle window
    .venv/bin/python bench/milter_stop.py --runs 3 --idle 10
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from milterload import connectable, stop_pid  # noqa: E402


def spambridge(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    sock = str(work / "sb.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "spambridge", "run", "--socket", f"unix:{sock}",
         "--db", str(work / "bayes.sqlite")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    return proc, sock


def spamass_milter(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    sock = str(work / "sam.sock")
    exe = shutil.which("spamass-milter") or "/usr/sbin/spamass-milter"
    proc = subprocess.Popen([exe, "-p", f"unix:{sock}", "-m"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, sock


Starter = Callable[[Path], tuple[subprocess.Popen[bytes], str]]


def started(start: Starter, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc, sock = start(work)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None and not connectable(sock):
        time.sleep(0.02)
    if not connectable(sock):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{start.__name__} did not start")
    return proc, sock


def stop_seconds(start: Starter, work: Path) -> float:
    """TERM 0.1 s after a connection, to the process's exit."""
    proc, sock = started(start, work)
    time.sleep(0.5)
    connectable(sock)  # libmilter accepts it and polls afresh
    time.sleep(0.1)
    t0 = time.monotonic()
    stop_pid(proc, 30)  # killed after 30 s: shows as over 30
    return time.monotonic() - t0


def run_ns(pid: int) -> int:
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()[0])
        except (OSError, ValueError):
            continue
    return total


def idle_cpu_ms_per_s(start: Starter, work: Path, seconds: float) -> float:
    proc, _ = started(start, work)
    try:
        time.sleep(2.0)  # start-up work done
        a = run_ns(proc.pid)
        time.sleep(seconds)
        return (run_ns(proc.pid) - a) / 1e6 / seconds
    finally:
        stop_pid(proc, 30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of the idle window")
    args = ap.parse_args()
    peers: list[tuple[str, Starter]] = [("spambridge", spambridge),
                                        ("spamass-milter", spamass_milter)]
    print(f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}")
    stops: dict[str, list[float]] = {name: [] for name, _ in peers}
    with tempfile.TemporaryDirectory(prefix="sb-stop-") as tmp:
        for i in range(args.runs):
            for name, start in peers:  # alternating, so both see the same machine
                work = Path(tmp) / f"{name}-{i}"
                work.mkdir()
                stops[name].append(stop_seconds(start, work))
        idle = {}
        for name, start in peers:
            work = Path(tmp) / f"{name}-idle"
            work.mkdir()
            idle[name] = idle_cpu_ms_per_s(start, work, args.idle)
    print(f"{'':16} {'stop after TERM, s (median; runs)':40} idle CPU, ms/s")
    for name, _ in peers:
        runs = ", ".join(f"{s:.2f}" for s in stops[name])
        print(f"{name:16} {statistics.median(stops[name]):5.2f} ({runs}){'':4} {idle[name]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
