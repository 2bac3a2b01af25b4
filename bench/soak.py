"""A long-running milter under the traffic an admin has: what grows, and what is left behind.

Not a test: nothing here asserts. The real `spambridge run` is driven over its socket (or behind
the throwaway Postfix of tests/postfix_instance.py) for a bounded time while this samples, every
`--every` seconds, its resident memory (VmRSS), descriptors (/proc/PID/fd, by kind), threads
(/proc/PID/task), the Bayes database's -wal and -shm, and the files in its spool_dir. Each
scenario ends with the traffic stopped and the milter left idle for libmilter's idle workers to
exit (SETTLE), then one more sample: what is still there then was left behind.

    .venv/bin/python bench/soak.py bayes   --minutes 6 --rate 100 --bulk 3000  # Dovecot pipes
    .venv/bin/python bench/soak.py bayes   --minutes 4 --rate 100 --fresh 300 --pipe-every 1e5
    .venv/bin/python bench/soak.py reload  --minutes 4 --rate 50      # SIGUSR1 every 0.5 s
    .venv/bin/python bench/soak.py spamd   --minutes 8 --rate 5       # real spamd stopped/started
    .venv/bin/python bench/soak.py hung    --minutes 4 --rate 20 --workers 8 --restart-every 15
    .venv/bin/python bench/soak.py hung    --minutes 7 --rate 20 --workers 8 --restart-every 5 \
                                           --engines spamd+bayes --modes down,good
    .venv/bin/python bench/soak.py abort   --minutes 4 --rate 100     # clients gone mid-message
    .venv/bin/python bench/soak.py postfix --minutes 5 --rate 40      # behind a real Postfix
    .venv/bin/python bench/soak.py restart --cycles 30 --restart-every 5   # SIGHUP, start again
    .venv/bin/python bench/soak.py swap    --minutes 4 --restart-every 3   # retrained db put in

The summary gives, per quantity, its value after the warm-up (the first quarter), at the end of
the traffic and after SETTLE, and the least-squares slope over the samples after the warm-up,
per 10,000 messages (per 100 reloads for `reload`); `--json` keeps every sample.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import signal
import smtplib
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import mtaclient  # noqa: E402
from bayes_accuracy import arrival_order, fetch_corpus, split  # noqa: E402
from harness import free_port, start_spamd, stop_process  # noqa: E402
from milterload import MilterProcess, toml  # noqa: E402

SETTLE = 25.0  # s: libmilter's idle workers time out after 10 s each (COND_TIMEOUT)
PY = sys.executable


# ------------------------------------------------------------------------------------------------
# what is sampled


def fd_kinds(pid: int) -> dict[str, int]:
    """The process's descriptors by what they point at; `deleted`: unlinked files (a spool
    file is one from its creation, O_TMPFILE), `db`: the Bayes database and its -wal/-shm."""
    kinds = {"fds": 0, "socket": 0, "pipe": 0, "file": 0, "deleted": 0, "db": 0, "anon": 0}
    d = f"/proc/{pid}/fd"
    for name in os.listdir(d):
        try:
            target = os.readlink(f"{d}/{name}")
        except OSError:
            continue
        kinds["fds"] += 1
        if target.startswith("socket:"):
            kinds["socket"] += 1
        elif target.startswith("pipe:"):
            kinds["pipe"] += 1
        elif target.startswith("anon_inode:"):
            kinds["anon"] += 1
        elif target.endswith("(deleted)"):
            kinds["deleted"] += 1
        else:
            kinds["file"] += 1
            if ".sqlite" in target:
                kinds["db"] += 1
    return kinds


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "Threads"):
            out[key] = int(rest.split()[0])
    return out


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1  # not there


@dataclass
class Counters:
    """What the scenario did so far; sampled together with the process."""

    sent: int = 0  # messages with a final reply
    errors: int = 0  # sessions that did not go as meant (no final reply where one was due)
    events: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            if key == "sent":
                self.sent += n
            elif key == "errors":
                self.errors += n
            else:
                self.events[key] = self.events.get(key, 0) + n


class Recorder:
    """Samples the milter every `every` seconds in a thread, and the -wal's size ten times as
    often (its peak between two samples)."""

    def __init__(self, pid: int, counters: Counters, every: float, db: Path | None,
                 spool: Path | None) -> None:
        self.pid, self.counters, self.every, self.db, self.spool = pid, counters, every, db, spool
        self.samples: list[dict[str, object]] = []
        self.wal_peak = 0
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True),
                         threading.Thread(target=self._wal, daemon=True)]

    def sample(self, phase: str = "") -> dict[str, object]:
        c = self.counters
        with c.lock:
            s: dict[str, object] = {"t": round(time.monotonic() - self.start, 1), "sent": c.sent,
                                    "errors": c.errors, **c.events}
        s.update(proc_status(self.pid))
        s["tasks"] = len(os.listdir(f"/proc/{self.pid}/task"))
        s.update(fd_kinds(self.pid))
        if self.db is not None:
            s["wal"] = size_of(Path(f"{self.db}-wal"))
            s["shm"] = size_of(Path(f"{self.db}-shm"))
        if self.spool is not None:
            s["spool"] = len(os.listdir(self.spool))
        if phase:
            s["phase"] = phase
        self.samples.append(s)
        return s

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            with contextlib.suppress(OSError, ValueError):
                self.sample()

    def _wal(self) -> None:
        wal = Path(f"{self.db}-wal")
        while self.db is not None and not self._stop.wait(self.every / 10):
            self.wal_peak = max(self.wal_peak, size_of(wal))

    def __enter__(self) -> Recorder:
        self.sample("start")
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)


def slope(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    if n < 3:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if not sxx:
        return float("nan")
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


KEYS = ("VmRSS", "RssAnon", "fds", "socket", "deleted", "db", "tasks", "wal", "spool")


def summarize(samples: list[dict[str, object]], per: str, unit: float) -> dict[str, object]:
    """Values after the warm-up, at the end of the traffic, after SETTLE; the slope over the
    samples after the warm-up, per `unit` of the counter `per`."""
    traffic = [s for s in samples if s.get("phase") not in ("settled", "start")]
    if len(traffic) < 4:
        return {}
    warm = traffic[len(traffic) // 4:]
    settled = next((s for s in reversed(samples) if s.get("phase") == "settled"), {})
    out: dict[str, object] = {"per": f"{unit:g} {per}",
                              per: [warm[0].get(per, 0), warm[-1].get(per, 0)]}
    for key in KEYS:
        if key not in warm[0]:
            continue
        xs = [float(s.get(per, 0)) for s in warm]  # type: ignore[arg-type]
        ys = [float(s[key]) for s in warm]  # type: ignore[arg-type]
        out[key] = {"after_warmup": warm[0][key], "end": warm[-1][key],
                    "max": max(ys), "settled": settled.get(key),
                    "slope": round(slope(xs, ys) * unit, 2)}
    return out


def show(name: str, summary: dict[str, object], extra: dict[str, object]) -> None:
    print(f"\n== {name}")
    for k, v in extra.items():
        print(f"  {k}: {v}")
    for k, v in summary.items():
        print(f"  {k}: {v}")


# ------------------------------------------------------------------------------------------------
# traffic


def corpus() -> tuple[list[tuple[bytes, bool]], list[tuple[bytes, bool]]]:
    """(train, test) of the SpamAssassin corpus as (bytes, is_spam), ham and spam mixed (so
    that the first N are both, as `--train` takes them)."""
    fetch_corpus()
    train, test = (arrival_order(part) for part in split())
    return ([(m.path.read_bytes(), m.spam) for m in train],
            [(m.path.read_bytes(), m.spam) for m in test])


def variant(raw: bytes, n: int) -> bytes:
    """A message no database has seen (another digest): one line added to its body."""
    return raw.rstrip(b"\n") + f"\n\nsoak {n} {hashlib.md5(str(n).encode()).hexdigest()}\n".encode()


class Paced:
    """`workers` threads, together `rate` sessions a second, each calling `one(i)` (True: a final
    reply came) until stopped."""

    def __init__(self, one: Callable[[int], bool], counters: Counters, rate: float,
                 workers: int) -> None:
        self.one, self.counters, self.rate, self.workers = one, counters, rate, workers
        self._stop = threading.Event()
        self._next = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(w,), daemon=True)
                         for w in range(workers)]

    def _run(self, w: int) -> None:
        gap = self.workers / self.rate if self.rate else 0.0
        due = time.monotonic() + w * gap / self.workers
        while not self._stop.is_set():
            if gap:
                wait = due - time.monotonic()
                if wait > 0 and self._stop.wait(wait):
                    return
                due = max(due + gap, time.monotonic() - gap)
            with self._lock:
                i = self._next
                self._next += 1
            self.counters.add("sent" if self.one(i) else "errors")

    def __enter__(self) -> Paced:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(120)


def fresh_words(raw: bytes, n: int, rng: random.Random) -> bytes:
    """`raw` with `n` words no message had before appended: as real mail brings words, message
    ids, hashes and addresses the database and the caches have not seen."""
    if not n:
        return raw
    words = " ".join(f"{rng.getrandbits(40):x}q" for _ in range(n))
    return raw.rstrip(b"\n") + f"\n\n{words}\n".encode()


def milter_sender(address: str, messages: list[bytes], bad: list[str],
                  fresh: int = 0) -> Callable[[int], bool]:
    rng = random.Random(1)

    def one(i: int) -> bool:
        raw = fresh_words(messages[i % len(messages)], fresh, rng)
        d = mtaclient.deliver(address, raw, i, timeout=60)
        if d.error or d.reply is None:
            if len(bad) < 20:
                bad.append(d.error)
            return False
        return True

    return one


def start_milter(work: Path, config: dict[str, dict[str, object]], sock: str) -> MilterProcess:
    return MilterProcess.start(work / "milter", config, sock)


def settle(rec: Recorder) -> None:
    time.sleep(SETTLE)
    rec.sample("settled")


def run_train(db: Path, *args: str, stdin: bytes | None = None,
              timeout: float = 600) -> tuple[int, float, str]:
    t = time.monotonic()
    r = subprocess.run([PY, "-m", "spambridge", "train", "--db", str(db), "-q", *args],
                       input=stdin, capture_output=True, cwd=ROOT, timeout=timeout)
    return r.returncode, time.monotonic() - t, (r.stdout + r.stderr).decode(errors="replace")


def write_index(where: Path, msgs: list[tuple[bytes, bool]]) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (raw, spam) in enumerate(msgs):
        (where / f"{i}.eml").write_bytes(raw)
        lines.append(f"{'spam' if spam else 'ham'} {i}.eml")
    index = where / "index"
    index.write_text("\n".join(lines) + "\n")
    return index


def trained_db(work: Path, train: list[tuple[bytes, bool]]) -> Path:
    db = work / "db" / "bayes.sqlite"
    rc, secs, out = run_train(db, "--index", str(write_index(work / "train", train)))
    print(f"initial train: {len(train)} messages, exit {rc}, {secs:.1f}s {out.strip()[-200:]}")
    return db


class Every:
    """Calls `what(n)` every `seconds` in a thread until stopped."""

    def __init__(self, seconds: float, what: Callable[[int], None]) -> None:
        self.seconds, self.what = seconds, what
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self.seconds):
            self.what(n)
            n += 1

    def __enter__(self) -> Every:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(700)


# ------------------------------------------------------------------------------------------------
# scenarios


def bayes(work: Path, a: argparse.Namespace) -> dict[str, object]:
    """engine=bayes under steady traffic; a Dovecot pipe (`train --spam|--ham -`) every
    `--pipe-every` seconds; a bulk `train --index` of `--bulk` new messages at half time."""
    train, test = corpus()
    db = trained_db(work, train)
    spool = work / "spool"
    spool.mkdir()
    sock = str(work / "m.sock")
    m = start_milter(work, {"milter": {"socket": f"unix:{sock}", "engine": "bayes",
                                       "spool_dir": str(spool)},
                            "bayes": {"db": str(db)}}, sock)
    c = Counters()
    bad: list[str] = []
    pipes: list[tuple[int, float]] = []
    bulk: dict[str, object] = {}
    fresh = iter(range(10**9))

    def pipe(n: int) -> None:
        raw, spam = train[n % len(train)]
        rc, secs, out = run_train(db, "--spam" if spam else "--ham", "-",
                                  stdin=variant(raw, next(fresh)))
        pipes.append((rc, secs))
        c.add("pipes")
        if rc and len(bad) < 20:
            bad.append(f"pipe exit {rc}: {out[-200:]}")

    def bulk_train() -> None:
        msgs = [(variant(raw, next(fresh)), spam)
                for raw, spam in (train[i % len(train)] for i in range(a.bulk))]
        index = write_index(work / "bulk", msgs)
        before = rec.wal_peak
        rec.wal_peak = 0
        c.add("bulk_started")
        rc, secs, out = run_train(db, "--index", str(index))
        c.add("bulk_done")
        bulk.update(exit=rc, seconds=round(secs, 1), messages=len(msgs),
                    wal_peak_during=rec.wal_peak, wal_after=size_of(Path(f"{db}-wal")),
                    output=out.strip()[-300:])
        rec.wal_peak = max(before, rec.wal_peak)

    try:
        with Recorder(m.proc.pid, c, a.every, db, spool) as rec, \
                Paced(milter_sender(sock, [raw for raw, _ in test], bad, a.fresh), c, a.rate,
                      a.workers), Every(a.pipe_every, pipe):
            time.sleep(a.minutes * 30)
            bulk_train()
            time.sleep(max(0.0, a.minutes * 60 - (time.monotonic() - rec.start)))
        settle(rec)
        alive = m.proc.poll() is None
    finally:
        m.stop()
    durations = sorted(s for _, s in pipes)
    return {"samples": rec.samples, "summary": summarize(rec.samples, "sent", 10_000),
            "extra": {"pipes": len(pipes), "pipe_failures": sum(1 for rc, _ in pipes if rc),
                      "pipe_seconds_p50_max": [round(durations[len(durations) // 2], 2),
                                               round(durations[-1], 2)] if durations else [],
                      "bulk": bulk, "wal_peak": rec.wal_peak,
                      "wal_end": size_of(Path(f"{db}-wal")), "errors": bad[:5],
                      "alive": alive, "traceback": "Traceback" in m.log}}


def reload(work: Path, a: argparse.Namespace) -> dict[str, object]:
    """engine=bayes with metrics served and scraped, a SIGUSR1 every `--reload-every` seconds,
    the file alternating between two configs (so each reload applies a change)."""
    train, test = corpus()
    db = trained_db(work, train[: a.train])
    sock = str(work / "m.sock")
    port = free_port()
    cfg = {"milter": {"socket": f"unix:{sock}", "engine": "bayes"}, "bayes": {"db": str(db)},
           "metrics": {"listen": f"127.0.0.1:{port}"}}
    m = start_milter(work, cfg, sock)
    cfg_path = work / "milter" / "spambridge.toml"
    texts = [toml(cfg), toml({**cfg, "policy": {"subject_tag": "[SPAM]", "tag_only": True}})]
    c = Counters()
    bad: list[str] = []

    def hup(n: int) -> None:
        cfg_path.write_text(texts[n % 2])
        m.proc.send_signal(signal.SIGUSR1)
        c.add("reloads")

    def scrape(n: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                while s.recv(65536):
                    pass
            c.add("scrapes")
        except OSError as e:
            bad.append(f"scrape: {e}")

    try:
        with Recorder(m.proc.pid, c, a.every, db, None) as rec, \
                Paced(milter_sender(sock, [raw for raw, _ in test], bad), c, a.rate,
                      a.workers), Every(a.reload_every, hup), Every(2.0, scrape):
            time.sleep(a.minutes * 60)
        settle(rec)
        alive = m.proc.poll() is None
    finally:
        m.stop()
    log = m.log
    return {"samples": rec.samples, "summary": summarize(rec.samples, "reloads", 100),
            "extra": {"reloads_logged": log.count("configuration reloaded"),
                      "reload_failures": log.count("reload failed"), "errors": bad[:5],
                      "alive": alive, "traceback": "Traceback" in log}}


def spamd(work: Path, a: argparse.Namespace) -> dict[str, object]:
    """engine=spamd+bayes against a real spamd, stopped for `--down` seconds and started again
    on the same port every `--restart-every` seconds."""
    train, test = corpus()
    db = trained_db(work, train[: a.train])
    port = free_port()
    sd = start_spamd(work / "spamd", port=port)
    sock = str(work / "m.sock")
    m = start_milter(work, {"milter": {"socket": f"unix:{sock}", "engine": "spamd+bayes"},
                            "spamd": {"host": "127.0.0.1", "port": port},
                            "bayes": {"db": str(db)}}, sock)
    c = Counters()
    bad: list[str] = []
    restarts: list[dict[str, object]] = []
    box = [sd]

    def restart(n: int) -> None:
        before = rec.sample("before-stop")
        stop_process(box[0].proc)
        c.add("spamd_stops")
        time.sleep(a.down)
        t = time.monotonic()
        box[0] = start_spamd(work / "spamd", port=port)
        c.add("spamd_starts")
        after = rec.sample("spamd-up")
        restarts.append({"start_s": round(time.monotonic() - t, 1),
                         "fds": [before["fds"], after["fds"]],
                         "tasks": [before["tasks"], after["tasks"]]})

    try:
        with Recorder(m.proc.pid, c, a.every, db, None) as rec, \
                Paced(milter_sender(sock, [raw for raw, _ in test], bad), c, a.rate,
                      a.workers), Every(a.restart_every, restart):
            time.sleep(a.minutes * 60)
        settle(rec)
        alive = m.proc.poll() is None
    finally:
        m.stop()
        stop_process(box[0].proc)
    log = m.log
    return {"samples": rec.samples, "summary": summarize(rec.samples, "sent", 10_000),
            "extra": {"restarts": restarts, "decided_by_spamd": log.count("engine=spamd "),
                      "decided_by_bayes": log.count("engine=bayes "),
                      "errors": bad[:5], "alive": alive, "traceback": "Traceback" in log}}


def hung(work: Path, a: argparse.Namespace) -> dict[str, object]:
    """engine=spamd+bayes, then engine=spamd, against a fake spamd that goes through `--modes`
    in turn every `--restart-every` seconds (default down → good → hang: closed, answering,
    accepting and never answering), starting in the last."""
    train, test = corpus()
    db = trained_db(work, train[: a.train])
    return {engine: _hung(work, a, db, [raw for raw, _ in test], engine)
            for engine in a.engines.split(",")}


def _hung(work: Path, a: argparse.Namespace, db: Path, msgs: list[bytes],
          engine: str) -> dict[str, object]:
    from spamdfakes import SwitchableSpamd

    modes = a.modes.split(",")
    box = [SwitchableSpamd(modes[-1])]
    port = box[0].port
    sock = str(work / f"{engine}.sock")
    m = MilterProcess.start(work / engine, {
        "milter": {"socket": f"unix:{sock}", "engine": engine, "scan_timeout": 2.0},
        "spamd": {"host": "127.0.0.1", "port": port}, "bayes": {"db": str(db)}}, sock)
    c = Counters()
    bad: list[str] = []

    def cycle(n: int) -> None:
        mode = modes[n % len(modes)]
        if mode == "down":
            box[0].close()
        elif box[0].stopping.is_set():
            box[0] = SwitchableSpamd(mode, port=port)
        else:
            box[0].mode = mode
        c.add(f"to_{mode}")
        rec.sample(mode)

    try:
        with Recorder(m.proc.pid, c, a.every, None, None) as rec, \
                Paced(milter_sender(sock, msgs, bad), c, a.rate, a.workers), \
                Every(a.restart_every, cycle):
            time.sleep(a.minutes * 60 / len(a.engines.split(",")))
        box[0].close()
        settle(rec)
        alive = m.proc.poll() is None
    finally:
        m.stop()
        box[0].close()
    return {"samples": rec.samples, "summary": summarize(rec.samples, "sent", 10_000),
            "extra": {"errors": bad[:5], "alive": alive, "traceback": "Traceback" in m.log}}


# -- clients that go away mid-message


def _open(address: str) -> mtaclient.Conn:
    return mtaclient.Conn(address, 30)


def _upto_headers(conn: mtaclient.Conn, raw: bytes, qid: str) -> None:
    s = conn.sock
    s.sendall(mtaclient.macros(b"C", {"j": "mx.test.example", "_": "c.example [192.0.2.9]"}))
    for cmd, data in [(b"C", b"c.example\x004" + struct.pack(">H", 40000) + b"192.0.2.9\x00"),
                      (b"H", b"c.example\x00"), (b"M", b"<a@example.net>\x00"),
                      (b"R", b"<b@test.example>\x00")]:
        conn.step(cmd, data)
    s.sendall(mtaclient.macros(b"T", {"i": qid}))
    if not conn.protocol & mtaclient.NODATA:
        conn.step(b"T", b"")
    headers, _ = mtaclient.split_message(raw)
    for name, value in headers:
        conn.step(b"L", name.encode("latin-1") + b"\0" + value + b"\0")


def _body(conn: mtaclient.Conn, body: bytes, qid: str) -> None:
    conn.sock.sendall(mtaclient.macros(b"N", {"i": qid}))
    conn.step(b"N", b"")
    for i in range(0, len(body), mtaclient.CHUNK):
        conn.sock.sendall(mtaclient.packet(b"B", body[i : i + mtaclient.CHUNK]))
        conn.read()


def aborter(address: str, raw: bytes, big: bytes) -> Callable[[int], bool]:
    """Five ways a client goes away, in turn: the connection closed after the headers, closed
    mid-body past spool_memory (a spool file open), an SMTP RSET mid-body (the MTA's ABORT) then
    a whole message on the same connection, the connection closed at end of message without
    reading the reply, and a whole message (the control). True: the session went as meant."""

    def one(i: int) -> bool:
        kind = i % 5
        qid = f"A{i:08X}"
        conn = None
        try:
            conn = _open(address)
            if kind == 4:
                return conn.send(raw, qid) is not None
            _upto_headers(conn, raw, qid)
            if kind == 0:
                return True
            _body(conn, big[: len(big) // 2], qid)
            if kind == 1:
                return True
            if kind == 2:
                conn.sock.sendall(mtaclient.packet(b"A"))
                return conn.send(raw, qid + "B") is not None
            conn.sock.sendall(mtaclient.macros(b"E", {"i": qid}) + mtaclient.packet(b"E"))
            return True
        except Exception:
            return False
        finally:
            if conn is not None:
                conn.sock.close()  # no QUIT: the client is gone

    return one


def abort(work: Path, a: argparse.Namespace) -> dict[str, object]:
    train, test = corpus()
    db = trained_db(work, train[: a.train])
    spool = work / "spool"
    spool.mkdir()
    sock = str(work / "m.sock")
    m = start_milter(work, {"milter": {"socket": f"unix:{sock}", "engine": "bayes",
                                       "spool_dir": str(spool), "spool_memory": 65536},
                            "bayes": {"db": str(db)}}, sock)
    raw = test[0][0]
    big = (b"Lorem ipsum dolor sit amet, consectetur adipiscing elit.\n" * 10_000)[:600_000]
    c = Counters()
    try:
        with Recorder(m.proc.pid, c, a.every, db, spool) as rec, \
                Paced(aborter(sock, raw, big), c, a.rate, a.workers):
            time.sleep(a.minutes * 60)
        settle(rec)
        last = mtaclient.deliver(sock, raw, 0)
        alive = m.proc.poll() is None
    finally:
        m.stop()
    return {"samples": rec.samples, "summary": summarize(rec.samples, "sent", 10_000),
            "extra": {"after": (last.reply.action if last.reply else last.error),
                      "spool_after_stop": len(os.listdir(spool)), "alive": alive,
                      "traceback": "Traceback" in m.log}}


def postfix(work: Path, a: argparse.Namespace) -> dict[str, object]:
    """engine=bayes behind the throwaway Postfix: SMTP sessions of `--per-session` messages (one
    milter connection each, MAIL FROM again per message), every tenth session RSET in the
    middle of DATA's envelope and every tenth cut (QUIT) after RCPT; Dovecot-style pipes."""
    import postfix_instance

    train, test = corpus()
    db = trained_db(work, train[: a.train])
    pf = postfix_instance.make_instance(free_port())
    pf.postconf("-e", "virtual_transport=discard")  # the milter is measured, not the disk
    pf.postfix("reload")
    m = MilterProcess.start(work / "milter", {
        "milter": {"socket": f"unix:{pf.milter_socket}", "engine": "bayes"},
        "bayes": {"db": str(db)}}, str(pf.milter_socket))
    c = Counters()
    bad: list[str] = []
    msgs = [raw for raw, _ in test]

    def session(i: int) -> bool:
        try:
            with smtplib.SMTP("127.0.0.1", pf.port, local_hostname="c.example", timeout=60) as s:
                s.ehlo()
                for j in range(a.per_session):
                    if i % 10 == 3 and j == a.per_session // 2:
                        s.mail("a@example.net")
                        s.rcpt("bob@test.example")
                        s.rset()
                        c.add("rsets")
                        continue
                    s.mail("a@example.net")
                    s.rcpt("bob@test.example")
                    code, _ = s.data(msgs[(i * a.per_session + j) % len(msgs)])
                    c.add("sent")  # decided: delivered (250) or refused as spam (550)
                    if code != 250:
                        c.add(f"smtp_{code}")
                if i % 10 == 7:
                    s.mail("a@example.net")
                    s.rcpt("bob@test.example")
                    s.sock.close()  # gone without QUIT
                    c.add("cut")
            return True
        except (OSError, smtplib.SMTPException) as e:
            if len(bad) < 20:
                bad.append(f"{type(e).__name__}: {e}")
            return False

    def pipe(n: int) -> None:
        raw, spam = train[n % len(train)]
        rc, _, out = run_train(db, "--spam" if spam else "--ham", "-", stdin=variant(raw, n))
        c.add("pipes")
        if rc and len(bad) < 20:
            bad.append(f"pipe exit {rc}: {out[-200:]}")

    sessions = Counters()
    try:
        with Recorder(m.proc.pid, c, a.every, db, None) as rec, \
                Paced(session, sessions, a.rate / a.per_session, a.workers), \
                Every(a.pipe_every, pipe):
            time.sleep(a.minutes * 60)
        settle(rec)
        alive = m.proc.poll() is None
    finally:
        m.stop()
        postfix_instance.destroy(pf)
    log = m.log
    return {"samples": rec.samples, "summary": summarize(rec.samples, "sent", 10_000),
            "extra": {"sessions": sessions.sent, "failed_sessions": sessions.errors,
                      "decisions_logged": log.count(" action="), "errors": bad[:5],
                      "alive": alive, "traceback": "Traceback" in log}}


COPY_IN = ("import sqlite3,sys; d=sqlite3.connect(sys.argv[2]); "
           "sqlite3.connect(sys.argv[1]).backup(d); "
           "print(d.execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchone())")


def swap(work: Path, a: argparse.Namespace) -> dict[str, object]:
    """engine=bayes under traffic while a retrained database is put in place every
    `--restart-every` seconds, by turns as docs/bayes.md says: `mv` of a copy over the live
    file (after the 0|0|0 check), and the copy-in through SQLite."""
    train, test = corpus()
    db = trained_db(work, train[: a.train])
    other = work / "other" / "bayes.sqlite"
    run_train(other, "--index", str(write_index(work / "t2", train[: a.train * 2])))
    sock = str(work / "m.sock")
    m = start_milter(work, {"milter": {"socket": f"unix:{sock}", "engine": "bayes"},
                            "bayes": {"db": str(db)}}, sock)
    c = Counters()
    bad: list[str] = []
    checks: list[str] = []

    def put_in_place(n: int) -> None:
        new = db.with_name(f"new{n}.sqlite")
        subprocess.run([PY, "-c", COPY_IN, str(other), str(new)], capture_output=True,
                              text=True, check=True)
        if n % 2:
            fold = subprocess.run(["sqlite3", str(db), "PRAGMA wal_checkpoint(TRUNCATE)"],
                                  capture_output=True, text=True)
            checks.append(fold.stdout.strip())
            os.rename(new, db)
            for extra in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{new}{extra}")
            c.add("mv")
        else:
            copy = subprocess.run([PY, "-c", COPY_IN, str(new), str(db)], capture_output=True,
                                  text=True)
            checks.append(copy.stdout.strip())
            for f in (new, Path(f"{new}-wal"), Path(f"{new}-shm")):
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
            c.add("copy_in")

    try:
        with Recorder(m.proc.pid, c, a.every, db, None) as rec, \
                Paced(milter_sender(sock, [raw for raw, _ in test], bad), c, a.rate,
                      a.workers), Every(a.restart_every, put_in_place):
            time.sleep(a.minutes * 60)
        settle(rec)
        alive = m.proc.poll() is None
    finally:
        m.stop()
    log = m.log
    return {"samples": rec.samples, "summary": summarize(rec.samples, "sent", 10_000),
            "extra": {"reopened": log.count("reopened"), "refused": log.count("not used"),
                      "unchecked": log.count("action=accept reason=unchecked"),
                      "checks": sorted(set(checks)), "errors": bad[:5], "alive": alive,
                      "traceback": "Traceback" in log}}


def restart(work: Path, a: argparse.Namespace) -> dict[str, object]:
    """engine=bayes under traffic and Dovecot-style pipes, stopped with SIGHUP (libmilter's
    stop; systemd's Restart=always starts it again) and started again `--cycles` times: what
    each stop leaves behind (socket, spool files, -wal), and each new process at its start."""
    train, test = corpus()
    db = trained_db(work, train[: a.train])
    spool = work / "spool"
    spool.mkdir()
    sock = str(work / "m.sock")
    cfg = {"milter": {"socket": f"unix:{sock}", "engine": "bayes", "spool_dir": str(spool),
                      "spool_memory": 4096},
           "bayes": {"db": str(db)}}
    c = Counters()
    bad: list[str] = []
    cycles: list[dict[str, object]] = []

    def pipe(n: int) -> None:
        raw, spam = train[n % len(train)]
        run_train(db, "--spam" if spam else "--ham", "-", stdin=variant(raw, n))

    with Paced(milter_sender(sock, [raw for raw, _ in test], bad), c, a.rate, a.workers), \
            Every(a.pipe_every, pipe):
        for _ in range(a.cycles):
            m = start_milter(work, cfg, sock)
            time.sleep(a.restart_every)
            st = proc_status(m.proc.pid) | fd_kinds(m.proc.pid)
            t = time.monotonic()
            m.proc.send_signal(signal.SIGHUP)
            rc = m.proc.wait(30)
            cycles.append({"stop_s": round(time.monotonic() - t, 2), "exit": rc,
                           "socket_left": os.path.exists(sock), "spool": len(os.listdir(spool)),
                           "wal": size_of(Path(f"{db}-wal")), "fds": st["fds"],
                           "tasks": st["Threads"], "VmRSS": st["VmRSS"],
                           "traceback": "Traceback" in m.log})
            c.add("restarts")
    return {"samples": [], "summary": {},
            "extra": {"cycles": cycles, "sent": c.sent, "sessions_without_reply": c.errors,
                      "errors": sorted(set(bad))[:3]}}


SCENARIOS: dict[str, Callable[[Path, argparse.Namespace], dict[str, object]]] = {
    "bayes": bayes, "reload": reload, "spamd": spamd, "hung": hung, "abort": abort,
    "postfix": postfix, "restart": restart, "swap": swap}


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="sb-soak-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        if not keep:
            subprocess.run(["rm", "-rf", str(d)], check=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scenario", choices=SCENARIOS)
    p.add_argument("--minutes", type=float, default=4.0)
    p.add_argument("--rate", type=float, default=50.0, help="messages (sessions) a second")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--every", type=float, default=2.0, help="seconds between samples")
    p.add_argument("--pipe-every", type=float, default=3.0)
    p.add_argument("--bulk", type=int, default=3000)
    p.add_argument("--fresh", type=int, default=0,
                   help="bayes: words never seen before added to each message")
    p.add_argument("--train", type=int, default=1000, help="messages the database starts with")
    p.add_argument("--reload-every", type=float, default=0.5)
    p.add_argument("--restart-every", type=float, default=60.0)
    p.add_argument("--down", type=float, default=10.0)
    p.add_argument("--modes", default="down,good,hang", help="hung: the fake's modes in turn")
    p.add_argument("--engines", default="spamd+bayes,spamd", help="hung: one run each")
    p.add_argument("--per-session", type=int, default=10)
    p.add_argument("--cycles", type=int, default=30, help="restart: stops and starts")
    p.add_argument("--json", type=Path)
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    a = p.parse_args()
    random.seed(1)
    with workdir(a.keep) as work:
        result = SCENARIOS[a.scenario](work, a)
    parts = result if "samples" not in result else {a.scenario: result}
    for name, r in parts.items():
        show(name, r["summary"], r["extra"])  # type: ignore[index]
    if a.json:
        a.json.write_text(json.dumps({"scenario": a.scenario, "args": vars(a) | {"json": str(a.json)},
                                      "results": parts}, indent=1, default=str))


if __name__ == "__main__":
    main()
