"""Milter throughput with engine=bayes: the real `spambridge run`, driven over its unix socket by
tests/milterclient.py (one SMTP transaction per connection, as Postfix opens one per session).

Not a test. Run from the repository root:

    .venv/bin/python bench/bayes_milter.py [--concurrency 4] [--messages 2000] [--runs 3]
                                           [--client lean|miltertest]

The Bayes database is trained on the 80 % split of the SpamAssassin corpus (see
bench/bayes_accuracy.py, which also fetches it); the load is the 20 % test split, replayed in a
loop. Reports msg/s and the p50/p99 of the per-message time (connect to final reply), median of
`--runs` runs after a warm-up. The MTA side runs on the same two cores as the milter: by default
it is bench/mtaclient.py (Postfix's packets built with `struct`), so that the figure is the
milter's and not the test client's generic codec (`--client miltertest`, about 0.5 ms of CPU per
message more, as the figures recorded before 2026-11-26 used).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import mtaclient  # noqa: E402
from bayes_accuracy import fetch_corpus, ours_train, split  # noqa: E402
from milterclient import send_one  # noqa: E402
from milterload import cpu_seconds  # noqa: E402


def start(tmp: str, db: str) -> tuple[subprocess.Popen[bytes], str]:
    sock = os.path.join(tmp, "m.sock")
    cfg = os.path.join(tmp, "m.toml")
    Path(cfg).write_text(f'[milter]\nsocket = "unix:{sock}"\nengine = "bayes"\n'
                         f'[bayes]\ndb = "{db}"\n')
    log = open(os.path.join(tmp, "m.log"), "wb")  # noqa: SIM115 - lives as long as the milter
    proc = subprocess.Popen([sys.executable, "-m", "spambridge", "run", "--config", cfg],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(Path(tmp, "m.log").read_text())
        time.sleep(0.05)
    return proc, sock


def send_lean(sock: str, raw: bytes, index: int) -> str:
    sent = mtaclient.deliver(sock, raw, index)
    if sent.reply is None:
        raise RuntimeError(f"message {index}: {sent.error}")
    return sent.reply.action


def send_miltertest(sock: str, raw: bytes, index: int) -> str:
    return str(send_one(sock, raw, queue_id=f"B{index:06d}").action)


Send = Callable[[str, bytes, int], str]  # (socket, message, index) → the final action


def load(sock: str, messages: list[bytes], total: int, concurrency: int,
         send: Send = send_lean) -> tuple[float, list[float], dict[str, int]]:
    """Send `total` messages from `concurrency` threads; (seconds, latencies, actions)."""
    latencies: list[float] = []
    actions: dict[str, int] = {}
    lock = threading.Lock()
    counter = iter(range(total))

    def worker() -> None:
        for i in counter:  # shared iterator: bounded, each index sent once
            t = time.perf_counter()
            action = send(sock, messages[i % len(messages)], i)
            dt = time.perf_counter() - t
            with lock:
                latencies.append(dt)
                actions[action] = actions.get(action, 0) + 1

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start_t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - start_t, latencies, actions


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--client", choices=("lean", "miltertest"), default="lean",
                    help="the MTA side (bench/mtaclient.py by default)")
    args = ap.parse_args()
    send = send_lean if args.client == "lean" else send_miltertest
    fetch_corpus()
    train, test = split()
    messages = [m.path.read_bytes() for m in test]
    # what the milter is sent must be mail as an MTA sends it: a message that reaches it with
    # no header field (an mbox "From " line sent as the first line did that to 91 % of the
    # corpus) measures another path, and scores the header as body words
    fields = [len(mtaclient.split_message(raw)[0]) for raw in messages]
    if min(fields) == 0:
        raise SystemExit(f"{fields.count(0)} messages would reach the milter without a header "
                         f"field, the first {test[fields.index(0)].path}")
    with tempfile.TemporaryDirectory(prefix="bayes-milter-") as tmp:
        db = os.path.join(tmp, "bayes.sqlite")
        ours_train(db, train)
        proc, sock = start(tmp, db)
        try:
            load(sock, messages, 300, args.concurrency, send)  # warm-up
            rates, p50s, p99s, cpu = [], [], [], []
            actions: dict[str, int] = {}
            for _ in range(args.runs):
                before = cpu_seconds(proc.pid)
                secs, lat, actions = load(sock, messages, args.messages, args.concurrency,
                                          send)
                cpu.append((cpu_seconds(proc.pid) - before) / len(lat))
                lat.sort()
                rates.append(len(lat) / secs)
                p50s.append(lat[len(lat) // 2])
                p99s.append(lat[int(len(lat) * 0.99) - 1])
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"engine=bayes C={args.concurrency} {args.messages} messages x {args.runs} runs "
          f"(one connection per message, client {args.client}); "
          f"python {platform.python_version()} ({os.path.realpath(sys.executable)})")
    print(f"{len(messages)} messages, {statistics.mean(fields):.1f} header fields each on "
          f"average")
    print(f"msg/s median {statistics.median(rates):.0f} (runs: "
          f"{', '.join(f'{r:.0f}' for r in rates)})")
    print(f"latency p50 {statistics.median(p50s) * 1000:.1f} ms, "
          f"p99 {statistics.median(p99s) * 1000:.1f} ms")
    print(f"milter CPU per message {statistics.median(cpu) * 1000:.2f} ms (the client shares "
          f"the same cores)")
    print(f"actions in the last run: {actions}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
