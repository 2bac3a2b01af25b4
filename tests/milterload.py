"""Drive many MTA-side milter sessions at once and record what each one got back.

Shared by the fault, fuzz and security tests and by the bench scripts, so it imports nothing
from pytest. A session is what Postfix would do: connect, HELO, MAIL, RCPT, DATA, headers,
body, end of message, then QUIT; whatever the milter sends after its final reply is kept, so
a test can prove that every message got exactly one.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from milterclient import EarlyReply, MilterClient, Result, split_message
from miltertest import constants

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Delivery:
    """One SMTP transaction as the MTA saw it."""

    index: int
    result: Result | None = None  # the final reply (at end of message, or earlier)
    eom_seconds: float = math.nan  # end of message → final reply
    total_seconds: float = math.nan
    error: str = ""  # the client-side failure, when there was no final reply
    extra: bytes = b""  # anything the milter sent after its final reply (must stay empty)

    @property
    def action(self) -> str:
        return self.result.action if self.result else "none"


def _drain_after_quit(client: MilterClient, timeout: float) -> bytes:
    """Send QUIT and read until the milter closes: any byte here is a second reply."""
    extra = client.conn.buf
    client.conn._send(constants.SMFIC_QUIT)
    client.sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = client.sock.recv(65536)
        except TimeoutError:
            break
        except OSError:
            break
        if not chunk:
            break
        extra += chunk
    return extra


def deliver(
    address: str | tuple[str, int],
    raw: bytes,
    *,
    index: int = 0,
    timeout: float = 30.0,
    sender: str = "<sender@example.net>",
    rcpts: Sequence[str] = ("<user@test.example>",),
    queue_id: str = "",
    client_addr: str = "192.0.2.10",
    barrier: threading.Barrier | None = None,
    barrier_at: str = "helo",
    headers: Sequence[tuple[str, bytes]] | None = None,
    body: bytes | None = None,
) -> Delivery:
    """One whole transaction; never raises (a failure is recorded in `error`).
    `headers` and `body` replace what is split from `raw` (to send what no parser would make,
    such as a value with a bare line feed).
    A `barrier` makes sessions wait for each other after HELO or just before end of message."""
    d = Delivery(index)
    qid = queue_id or f"Q{index:08X}"
    start = time.monotonic()
    client: MilterClient | None = None
    try:
        client = MilterClient(address, timeout=timeout)
        client.connect(addr=client_addr)
        client.helo()
        if barrier is not None and barrier_at == "helo":
            barrier.wait()
        client.mail(sender)
        for r in rcpts:
            client.rcpt(r)
        client.data(qid)
        fields, rest = split_message(raw)
        for name, value in (fields if headers is None else headers):
            client.header(name, value)
        client.eoh(qid)
        client.body(rest if body is None else body)
        if barrier is not None and barrier_at == "eom":
            barrier.wait()
        t = time.monotonic()
        d.result = client.eom(qid)
        d.eom_seconds = time.monotonic() - t
        d.extra = _drain_after_quit(client, min(timeout, 5.0))
    except EarlyReply as e:
        d.result = e.result
        if client is not None:
            d.extra = _drain_after_quit(client, min(timeout, 5.0))
    except threading.BrokenBarrierError:
        d.error = "barrier broken (another session failed before it)"
    except Exception as e:  # recorded: the caller asserts on it
        d.error = f"{type(e).__name__}: {e}"
    finally:
        if client is not None:
            client.sock.close()
    d.total_seconds = time.monotonic() - start
    return d


def deliver_many(
    address: str | tuple[str, int],
    messages: Sequence[bytes],
    concurrency: int,
    *,
    timeout: float = 30.0,
    together: bool = True,
    barrier_at: str = "helo",
    **kw: object,
) -> list[Delivery]:
    """Send `messages` over `concurrency` connections at once (a bounded thread pool).

    With `together`, the first `concurrency` sessions wait for each other (after HELO, or just
    before end of message), so that many connections really are open, or really reach end of
    message, at the same moment."""
    barrier = (threading.Barrier(min(concurrency, len(messages)), timeout=timeout)
               if together else None)

    def one(i: int) -> Delivery:
        b = barrier if barrier is not None and i < concurrency else None
        return deliver(address, messages[i], index=i, timeout=timeout, barrier=b,
                       barrier_at=barrier_at, **kw)  # type: ignore[arg-type]

    with collector_paused(), ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(one, range(len(messages))))


_paused_lock = threading.Lock()
_paused: list[bool] = []  # one per deliver_many running: whether the collector was on


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The test process's garbage collected now, and the collector kept out of what follows.
    A collection holds every thread at once: reply times taken in this process grow by its
    length (the garbage of a few rounds of 50 sessions took 1.9 s to collect on a loaded
    2-core machine). And it closes what earlier tests left unclosed: descriptors vanish from
    a listing of the process's own (test_listener)."""
    with _paused_lock:
        if not _paused:
            gc.collect()
        _paused.append(gc.isenabled())
        gc.disable()
    try:
        yield
    finally:
        with _paused_lock:
            was = _paused.pop()
            if not _paused and was:
                gc.enable()


def summary(values: Sequence[float]) -> dict[str, float]:
    """n, min, p50, p90, p99, max (nearest-rank), in the unit given."""
    xs = sorted(v for v in values if not math.isnan(v))
    if not xs:
        return {"n": 0}

    def rank(p: float) -> float:
        return xs[min(len(xs) - 1, max(0, math.ceil(p * len(xs)) - 1))]

    return {"n": len(xs), "min": xs[0], "p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99),
            "max": xs[-1]}


def fmt_ms(s: Mapping[str, float]) -> str:
    if not s.get("n"):
        return "n=0"
    return " ".join(f"{k}={v * 1000:.0f}ms" if k != "n" else f"n={int(v)}" for k, v in s.items())


# ------------------------------------------------------------------------------------------------
# a `spambridge run` process, for the bench scripts (the tests use conftest's start_milter)


def toml(sections: Mapping[str, Mapping[str, object]]) -> str:
    """A tiny TOML writer for flat sections of str/int/float/bool/list-of-str values."""
    out: list[str] = []
    for name, table in sections.items():
        out.append(f"[{name}]")
        for k, v in table.items():
            if isinstance(v, bool):
                out.append(f"{k} = {str(v).lower()}")
            elif isinstance(v, int | float):
                out.append(f"{k} = {v}")
            elif isinstance(v, list):
                out.append(f"{k} = [{', '.join(_quote(str(x)) for x in v)}]")
            else:
                out.append(f"{k} = {_quote(str(v))}")
        out.append("")
    return "\n".join(out)


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def connectable(address: str | tuple[str, int]) -> bool:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    try:
        with socket.socket(family) as s:
            s.settimeout(1)
            s.connect(address)
        return True
    except OSError:
        return False


@dataclass
class MilterProcess:
    """`spambridge run` started from a config dict; knows its threads, fds and memory."""

    proc: subprocess.Popen[bytes]
    address: str | tuple[str, int]
    log_path: Path
    extra: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, workdir: Path, config: Mapping[str, Mapping[str, object]],
              address: str | tuple[str, int], python: str = sys.executable,
              launcher: Sequence[str] = ("-m", "spambridge")) -> MilterProcess:
        """`launcher`: what follows the interpreter (a bench may wrap the CLI in `-c …`)."""
        workdir.mkdir(parents=True, exist_ok=True)
        cfg_path = workdir / "spambridge.toml"
        cfg_path.write_text(toml(config))
        log_path = workdir / "spambridge.log"
        proc = subprocess.Popen(
            [python, *launcher, "run", "--config", str(cfg_path)],
            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, cwd=ROOT,  # noqa: SIM115
        )
        m = cls(proc, address, log_path)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None and not connectable(address):
            time.sleep(0.05)
        if proc.poll() is not None or not connectable(address):
            m.stop()
            raise RuntimeError(f"spambridge did not start:\n{m.log[-3000:]}")
        return m

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self, key: str) -> int:
        """A numeric field of /proc/PID/status (Threads, VmRSS, VmHWM in kB)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def threads(self) -> int:
        return self.status("Threads")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self, timeout: float = 20.0) -> int:
        return stop_pid(self.proc, timeout)


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name (which may hold spaces)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int, tree: bool = False) -> float:
    """utime+stime of a process, with its reaped children; `tree` adds its live descendants
    (spamd's children, which it recycles)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, list[int]] = {}
    if tree:
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    parents.setdefault(int(_stat(d)[1]), []).append(int(d))
                except (OSError, ValueError, IndexError):
                    continue
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += sum(int(x) for x in _stat(p)[11:15]) / tick
        except (OSError, ValueError, IndexError):  # exited meanwhile: counted by its parent
            continue
        todo += parents.get(p, [])
    return total


def stop_pid(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """TERM, then KILL, by the PID we started."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return int(proc.returncode)


def wait_for(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()
