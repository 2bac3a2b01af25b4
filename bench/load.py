"""Load on the real `spambridge run` (a bench, not a test: nothing here asserts on time).

1. Connections: 200 MTA connections at once against a slow fake spamd; every reply must
   arrive; the process's thread and fd counts (/proc/PID/status Threads, /proc/PID/fd) are
   read before, sampled during, and watched until they are back at their baseline.
2. Memory: 20 connections at once each sending a 20 MB message; the milter's RSS is sampled
   (/proc/PID/status VmRSS) with the default max_scan_size (1 MiB: the rest of the body is
   not even kept) and with max_scan_size = 32 MiB (every body spools to disk past
   spool_memory, then is read back once to be sent to spamd).

    .venv/bin/python bench/load.py                  # both parts, the figures in the docs
    .venv/bin/python bench/load.py --part conn --connections 200 --delay 0.5 --rounds 3
    .venv/bin/python bench/load.py --part memory --big 20 --big-mb 20
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from milterload import MilterProcess, deliver, deliver_many, fmt_ms, summary  # noqa: E402
from spamdfakes import SwitchableSpamd  # noqa: E402

SETTLE = 25.0  # s: libmilter's idle workers time out after 10 s each (COND_TIMEOUT)


def message(i: int, body: bytes = b"See you at the meeting on Friday.\n") -> bytes:
    return (f"From: Alice <alice@example.net>\nTo: Bob <bob@test.example>\n"
            f"Subject: load test {i}\nMessage-ID: <{i}.load@example.net>\n"
            f"Date: Wed, 25 Nov 2026 10:00:00 +0000\n\n").encode() + body


class Sampler:
    """Samples a /proc value of the milter every `every` seconds; keeps the maximum."""

    def __init__(self, read: Callable[[], int], every: float = 0.02) -> None:
        self.read, self.every = read, every
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, KeyError, ValueError):  # the process may be gone
                self.peak = max(self.peak, int(self.read()))
            self._stop.wait(self.every)

    def __enter__(self) -> Sampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(2)


def settle(m: MilterProcess, threads: int, fds: int, limit: float) -> float:
    """Seconds until threads and fds are back to (at most) the baseline; -1 if never."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if m.threads() <= threads and m.fds() <= fds:
            return time.monotonic() - start
        time.sleep(0.25)
    return -1.0


def part_connections(work: Path, n: int, delay: float, rounds: int) -> dict[str, object]:
    fake = SwitchableSpamd("slow", delay=delay)
    sock = str(work / "conn.sock")
    m = MilterProcess.start(work / "conn", {
        "milter": {"socket": f"unix:{sock}", "engine": "spamd", "scan_timeout": 10.0},
        "spamd": {"host": "127.0.0.1", "port": fake.port}}, sock)
    out: dict[str, object] = {"connections": n, "spamd_delay_s": delay, "rounds": []}
    try:
        deliver_many(sock, [message(i) for i in range(8)], 8)  # warm up: pool, loop, client
        time.sleep(SETTLE)
        base_threads, base_fds = m.threads(), m.fds()
        out["baseline"] = {"threads": base_threads, "fds": base_fds}
        print(f"baseline: threads={base_threads} fds={base_fds}")
        for r in range(rounds):
            with Sampler(m.threads) as th, Sampler(m.fds) as fd:
                t0 = time.monotonic()
                ds = deliver_many(sock, [message(i) for i in range(n)], n, timeout=60)
                wall = time.monotonic() - t0
            replies = sum(1 for d in ds if d.result is not None and not d.error)
            extra = sum(1 for d in ds if d.extra)
            back = settle(m, base_threads, base_fds, 120)
            rec = {"replies": replies, "errors": [d.error for d in ds if d.error][:5],
                   "extra_replies": extra, "wall_s": round(wall, 3),
                   "peak_threads": th.peak, "peak_fds": fd.peak,
                   "after": {"threads": m.threads(), "fds": m.fds()},
                   "back_to_baseline_s": round(back, 2),
                   "eom_ms": {k: round(v * 1000) if k != "n" else v
                              for k, v in summary([d.eom_seconds for d in ds]).items()}}
            out["rounds"].append(rec)  # type: ignore[union-attr]
            print(f"round {r + 1}: {replies}/{n} replies, {extra} extra, wall {wall:.2f}s, "
                  f"peak threads {th.peak} fds {fd.peak}, back to baseline after "
                  f"{back:.1f}s (threads {m.threads()} fds {m.fds()}), eom "
                  f"{fmt_ms(summary([d.eom_seconds for d in ds]))}")
        assert m.proc.poll() is None, "the milter died"
        out["traceback_in_log"] = "Traceback" in m.log
    finally:
        m.stop()
        fake.close()
    return out


def text(size: int) -> bytes:
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\n"
    return (line * (size // len(line) + 1))[:size]


def part_memory(work: Path, n: int, mb: int) -> dict[str, object]:
    fake = SwitchableSpamd("good")
    big = mb << 20
    results: dict[str, object] = {}
    configs: list[tuple[str, dict[str, object], int, int]] = [
        (f"{n} x {mb} MB, defaults (max_scan_size 1 MiB, spool_memory 256 KiB)", {}, big, n),
        (f"{n} x {mb} MB, max_scan_size 32 MiB (spool_memory 256 KiB)",
         {"max_scan_size": 32 << 20}, big, n),
        ("100 x 1,000,000 B (just under the default max_scan_size), defaults", {},
         1_000_000, 100),
    ]
    try:
        for name, extra, size, count in configs:
            body = text(size)
            sock = str(work / "mem.sock")
            spool = work / "spool"
            spool.mkdir(exist_ok=True)
            m = MilterProcess.start(work / f"mem-{len(results)}", {
                "milter": {"socket": f"unix:{sock}", "engine": "spamd", "scan_timeout": 60.0,
                           "spool_dir": str(spool), **extra},
                "spamd": {"host": "127.0.0.1", "port": fake.port}}, sock)
            try:
                deliver(sock, message(0), timeout=30)
                time.sleep(1)
                base = m.status("VmRSS")
                with Sampler(lambda m=m: m.status("VmRSS"), every=0.01) as rss:
                    t0 = time.monotonic()
                    ds = deliver_many(sock, [message(i, body) for i in range(count)], count,
                                      timeout=300)
                    wall = time.monotonic() - t0
                statuses = sorted({(d.result.header("X-Spam-Status") or d.result.action)
                                   .split(" required")[0] for d in ds if d.result})
                rec = {"rss_base_mb": round(base / 1024, 1), "rss_peak_mb": round(rss.peak / 1024, 1),
                       "rss_after_mb": round(m.status("VmRSS") / 1024, 1),
                       "hwm_mb": round(m.status("VmHWM") / 1024, 1),
                       "messages": count, "size_bytes": size,
                       "replies": sum(1 for d in ds if d.result is not None),
                       "errors": [d.error for d in ds if d.error][:3],
                       "statuses": statuses, "wall_s": round(wall, 2),
                       "spamd_requests": fake.requests}
                results[name] = rec
                print(f"{name}: RSS {rec['rss_base_mb']} MB before, peak {rec['rss_peak_mb']} MB "
                      f"(VmHWM {rec['hwm_mb']}), after {rec['rss_after_mb']} MB; "
                      f"{rec['replies']}/{count} replies in {wall:.1f}s; {statuses}")
            finally:
                m.stop()
    finally:
        fake.close()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--part", choices=("conn", "memory", "all"), default="all")
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--delay", type=float, default=0.5, help="fake spamd delay per message (s)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--big", type=int, default=20, help="concurrent big messages")
    ap.add_argument("--big-mb", type=int, default=20)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if not 1 <= args.connections <= 1000 or not 1 <= args.big <= 100 or args.big_mb > 200:
        ap.error("bounded on purpose: at most 1000 connections, 100 big messages of 200 MB")
    out: dict[str, object] = {"machine": f"{platform.node()} {os.cpu_count()} cores, "
                              f"{platform.python_version()}",
                              "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    with tempfile.TemporaryDirectory(prefix="sb-load-") as tmp:
        work = Path(tmp)
        if args.part in ("conn", "all"):
            out["connections"] = part_connections(work, args.connections, args.delay,
                                                  args.rounds)
        if args.part in ("memory", "all"):
            out["memory"] = part_memory(work, args.big, args.big_mb)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanups: stop by PID
    raise SystemExit(main())
