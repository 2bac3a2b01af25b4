"""The real `spambridge run` at the operating system's limits (a bench: nothing asserts; the
figures in docs/reliability.md, "The milter at the operating system's limits", come from here).

Each scenario starts the milter under one limit (set in the child before exec, as systemd's
Limit*= settings would), sends a short burst through tests/milterload.py, and reports what every
session got, the milter's peak descriptors and threads, its listener thread's CPU, the
sessions libmilter could not start a thread for, what was left open after, whether one more
message is scanned normally, and the warnings logged. Needs root for `nproc` (the milter runs
as nobody, so that RLIMIT_NPROC applies).

    .venv/bin/python bench/limits.py                      # every scenario
    .venv/bin/python bench/limits.py nofile idle nproc    # some
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import pwd
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import bayes_mail, train_database  # noqa: E402
from milterload import connectable, cpu_seconds, deliver_many, stop_pid, toml  # noqa: E402
from spamdfakes import SwitchableSpamd  # noqa: E402

MIB = 1 << 20


def message(i: int, body: bytes = b"See you at the meeting on Friday.\n") -> bytes:
    return (f"From: a@example.net\nTo: b@test.example\nSubject: limits {i}\n\n").encode() + body


def _limit(rlimits: dict[int, tuple[int, int]]) -> None:
    for which, pair in rlimits.items():
        resource.setrlimit(which, pair)


def listener_cpu(pid: int) -> float:
    """CPU seconds of the milter's main thread (libmilter's listener)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Milter:
    def __init__(self, work: Path, milter: dict[str, object], rlimits: dict[int, tuple[int, int]],
                 spamd_port: int = 1, bayes_db: Path | None = None) -> None:
        self.work = work
        self.sock = str(work / "m.sock")
        bayes: dict[str, object] = {"db": str(bayes_db or work / "bayes.sqlite")}
        if bayes_db is not None:
            bayes["min_trained"] = 10
        cfg = {"milter": {"socket": f"unix:{self.sock}", "scan_timeout": 5.0,
                          "spool_dir": str(work / "spool"), **milter},
               "spamd": {"host": "127.0.0.1", "port": spamd_port}, "bayes": bayes}
        (work / "spool").mkdir(exist_ok=True)
        if "user" in milter:
            uid = pwd.getpwnam(str(milter["user"])).pw_uid
            os.chown(work / "spool", uid, -1)
        (work / "m.toml").write_text(toml(cfg))
        self.log_path = work / "m.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spambridge", "run", "--config", str(work / "m.toml")],
            stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT, cwd=ROOT,  # noqa: SIM115
            preexec_fn=functools.partial(_limit, rlimits))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None and not connectable(self.sock):
            time.sleep(0.05)
        self.peak_fds = self.peak_threads = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/task"))

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            with contextlib.suppress(OSError):
                self.peak_fds = max(self.peak_fds, self.fds())
                self.peak_threads = max(self.peak_threads, self.threads())

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        self._stop.set()
        return stop_pid(self.proc)


def outcome(results: list) -> dict[str, int]:  # type: ignore[type-arg]
    c: Counter[str] = Counter()
    for d in results:
        if d.result is None:
            c[f"no reply ({d.error.split(':')[0]})"] += 1
        else:
            status = d.result.header("X-Spam-Status") or d.result.action
            c[status.split(" required")[0].split(", score=")[0] + (
                ", scored" if "score=" in status else "")] += 1
        if d.extra:
            c["EXTRA REPLY"] += 1
    return dict(c)


def burst(m: Milter, fake: SwitchableSpamd | None, n: int, body: bytes, timeout: float
          ) -> dict[str, object]:
    idle_fds = m.fds()
    cpu0, lcpu0, t0 = cpu_seconds(m.proc.pid), listener_cpu(m.proc.pid), time.monotonic()
    got = deliver_many(m.sock, [message(i, body) for i in range(n)], n, timeout=timeout,
                       together=False)
    wall = time.monotonic() - t0
    alive = m.proc.poll() is None
    report: dict[str, object] = {
        "sessions": n, "got": outcome(got), "wall_s": round(wall, 1),
        "milter_cpu_s": round(cpu_seconds(m.proc.pid) - cpu0, 2) if alive else None,
        "listener_cpu_s": round(listener_cpu(m.proc.pid) - lcpu0, 2) if alive else None,
        "peak_fds": m.peak_fds, "peak_threads": m.peak_threads, "idle_fds": idle_fds}
    return report | after(m, fake, idle_fds)


def after(m: Milter, fake: SwitchableSpamd | None, idle_fds: int) -> dict[str, object]:
    """One more message once the burst is over, and what the burst left behind."""
    time.sleep(1.0)
    out: dict[str, object] = {"alive": m.proc.poll() is None}
    if m.proc.poll() is None:
        if fake is not None:
            fake.mode = "good"
        r = deliver_many(m.sock, [message(999)], 1, timeout=15)[0]
        out["after"] = (r.result.header("X-Spam-Status") or r.result.action)[:60] if r.result \
            else r.error
        out["fds_left_over"] = m.fds() - idle_fds
    out["exit"] = m.stop()
    log = m.log
    out["launch_worker_errors"] = log.count("LAUNCH_WORKER error")
    out["tracebacks"] = log.count("Traceback")
    out["warnings"] = sorted({ln.split("WARNING ", 1)[1][:110] for ln in log.splitlines()
                              if "WARNING " in ln and "running as root" not in ln
                              and " from=<" not in ln})
    return out


def nofile(work: Path, hard: int) -> dict[str, object]:
    """engine=spamd, a spamd taking 2 s, 80 sessions, RLIMIT_NOFILE 64 soft, `hard` hard."""
    fake = SwitchableSpamd("slow", delay=2.0)
    try:
        m = Milter(work, {"engine": "spamd"}, {resource.RLIMIT_NOFILE: (64, hard)}, fake.port)
        return {"limit": f"RLIMIT_NOFILE 64:{hard}"} | burst(m, fake, 80, b"hello\n", 30)
    finally:
        fake.close()


def spool(work: Path, db: Path) -> dict[str, object]:
    """engine=bayes (trained), every body spooled to disk, 100 sessions, RLIMIT_NOFILE 40."""
    m = Milter(work, {"engine": "bayes", "spool_memory": 1},
               {resource.RLIMIT_NOFILE: (40, 40)}, bayes_db=db)
    return {"limit": "RLIMIT_NOFILE 40:40, spool_memory 1"} | burst(
        m, None, 100, b"word " * 600 + b"\n", 30)


def idle(work: Path, hold: float = 5.0) -> dict[str, object]:
    """100 connections opened and left idle (as smtpd holds them between messages) under
    RLIMIT_NOFILE 64: the ones past the limit wait in the listen backlog."""
    m = Milter(work, {"engine": "bayes"}, {resource.RLIMIT_NOFILE: (64, 64)})
    idle_fds = m.fds()
    held = []
    for _ in range(100):
        s = socket.socket(socket.AF_UNIX)
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(m.sock)
        held.append(s)
    time.sleep(1.0)
    lcpu0, cpu0 = listener_cpu(m.proc.pid), cpu_seconds(m.proc.pid)
    time.sleep(hold)
    report: dict[str, object] = {
        "limit": "RLIMIT_NOFILE 64:64", "held_idle": len(held), "hold_s": hold,
        "fds_during": m.fds(), "listener_cpu_s": round(listener_cpu(m.proc.pid) - lcpu0, 2),
        "milter_cpu_s": round(cpu_seconds(m.proc.pid) - cpu0, 2)}
    for s in held:
        s.close()
    return report | after(m, None, idle_fds)


def nproc(work: Path) -> dict[str, object]:
    """engine=spamd, a spamd taking 2 s, 40 sessions, the milter as nobody with
    RLIMIT_NPROC 30 (systemd's TasksMax= fails thread creation the same way)."""
    fake = SwitchableSpamd("slow", delay=2.0)
    try:
        m = Milter(work, {"engine": "spamd", "user": "nobody"},
                   {resource.RLIMIT_NPROC: (30, 30)}, fake.port)
        return {"limit": "RLIMIT_NPROC 30 (user nobody)"} | burst(m, fake, 40, b"hello\n", 30)
    finally:
        fake.close()


def address_space(work: Path) -> dict[str, object]:
    """engine=spamd (0.5 s), max_scan_size 32 MiB, 20 messages of 20 MB, RLIMIT_AS 1 GiB."""
    fake = SwitchableSpamd("slow", delay=0.5)
    try:
        m = Milter(work, {"engine": "spamd", "max_scan_size": 32 * MIB},
                   {resource.RLIMIT_AS: (1024 * MIB, 1024 * MIB)}, fake.port)
        body = (b"The quarterly figures are attached, see you on Friday.\n" * 400_000)[:20_000_000]
        return {"limit": "RLIMIT_AS 1024 MiB"} | burst(m, fake, 20, body, 30)
    finally:
        fake.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    every = ["nofile", "raised", "spool", "idle", "nproc", "as"]
    ap.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=", ".join(every))
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    unknown = set(a.scenarios) - set(every)
    if unknown:
        ap.error(f"no scenario {', '.join(sorted(unknown))}")
    a.scenarios = a.scenarios or every
    base = Path(tempfile.mkdtemp(prefix="sb-limits-"))
    os.chmod(base, 0o755)  # nobody (nproc) reaches its socket and spool
    results = {}
    try:
        for name in a.scenarios:
            work = base / name
            work.mkdir()
            os.chmod(work, 0o755)
            if name == "nofile":
                r = nofile(work, 64)
            elif name == "raised":
                r = nofile(work, 4096)
            elif name == "spool":
                db = train_database(work, bayes_mail, 20)
                r = spool(work, db)
            elif name == "idle":
                r = idle(work)
            elif name == "nproc":
                if os.geteuid() != 0:
                    print("nproc: needs root (the milter runs as nobody)")
                    continue
                r = nproc(work)
            else:
                r = address_space(work)
            results[name] = r
            print(f"== {name}")
            for k, v in r.items():
                if k == "warnings":
                    for w in v:  # type: ignore[attr-defined]
                        print(f"   warning: {w}")
                else:
                    print(f"   {k}: {v}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
