"""The real `spambridge run` at the operating system's limits (a bench: nothing asserts; the
figures in docs/reliability.md, "The milter at the operating system's limits", come from here).

Each scenario starts the milter under one limit (set in the child before exec, as systemd's
Limit*= settings would), sends a short burst through tests/milterload.py, and reports what every
session got, the milter's peak descriptors and threads, its listener thread's CPU, the
sessions libmilter could not start a thread for, what was left open after, whether one more
message is scanned normally, and the warnings logged. Needs root for `nproc` (the milter runs
as nobody, so that RLIMIT_NPROC applies).

The `postfix-*` scenarios put the test suite's throwaway Postfix in front (root: `postfix -c DIR
start`; the system's Postfix is not touched), once with milter_default_action = tempfail and once
with accept, and report what each SMTP client got, what Postfix logged and what was delivered.

    .venv/bin/python bench/limits.py                      # every scenario
    .venv/bin/python bench/limits.py nofile idle nproc    # some
    .venv/bin/python bench/limits.py postfix-nproc postfix-nofile postfix-idle
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import pwd
import re
import resource
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import bayes_mail, free_port, train_database  # noqa: E402
from milterload import connectable, cpu_seconds, deliver_many, stop_pid, toml  # noqa: E402
from postfix_instance import (  # noqa: E402
    Attempt,
    PostfixError,
    PostfixInstance,
    destroy,
    make_instance,
)
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
        bayes: dict[str, object] = {"db": str(bayes_db or work / "bayes.sqlite")}
        if bayes_db is not None:
            bayes["min_trained"] = 10
        cfg = {"milter": {"socket": f"unix:{work / 'm.sock'}", "scan_timeout": 5.0,
                          "spool_dir": str(work / "spool"), **milter},
               "spamd": {"host": "127.0.0.1", "port": spamd_port}, "bayes": bayes}
        self.sock = str(cfg["milter"]["socket"]).removeprefix("unix:")
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
    return out | after_stop(m)


def after_stop(m: Milter) -> dict[str, object]:
    """Stop the milter and read its log: what libmilter said and our warnings."""
    out: dict[str, object] = {"exit": m.stop()}
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


# -- a real Postfix in front ------------------------------------------------------------------
# The scenarios above speak the milter protocol themselves, and a session libmilter never serves
# is simply never answered. These put the test suite's throwaway Postfix (tests/postfix_instance.py:
# its own config and queue directories, smtpd on 127.0.0.1) in front, with short milter
# timeouts, and look at what the SMTP clients got, what Postfix logged and what was delivered.

POSTFIX_TIMEOUTS = {"milter_connect_timeout": "5s", "milter_command_timeout": "5s",
                    "milter_content_timeout": "5s"}  # >= 2 x (scan_timeout 2 s + 0.25 s)


def smtp_burst(pf: PostfixInstance, n: int) -> list[Attempt]:
    """`n` SMTP sessions at once, from a bounded pool of threads."""
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(lambda i: pf.attempt(message(i)), range(n)))


def postfix_lines(pf: PostfixInstance, since: int) -> Counter[str]:
    """Postfix's milter lines logged after offset `since`, counted with ids and times taken out."""
    c: Counter[str] = Counter()
    for ln in pf.log[since:].splitlines():
        if "milter" not in ln:
            continue
        text = ln.split("]: ", 1)[-1]
        text = re.sub(r"^[0-9A-F]{6,}: |^NOQUEUE: ", "", text)
        text = re.sub(r"from localhost\[127\.0\.0\.1\]|from=<[^>]*> to=<[^>]*> "
                      r"proto=E?SMTP helo=<[^>]*>", "…", text)
        c[text[:150]] += 1
    return c


def verdict(raw: bytes) -> str:
    """The start of a delivered message's X-Spam-Status ("No, score=1.5", "No,
    unchecked=unavailable"), or that it has none: the milter never saw it."""
    found = re.search(rb"\nX-Spam-Status: ([^ ]+ [^ ]+?)(?: |\n)", raw)
    return found[1].decode() if found else "not scanned"


def postfix_burst(pf: PostfixInstance, m: Milter, fake: SwitchableSpamd, n: int, idle: int = 0
                  ) -> dict[str, object]:
    """`n` SMTP sessions through Postfix (while `idle` others are held open), then every message
    it took looked for in the Maildir, then more messages once spamd answers at once again."""
    since = len(pf.log)
    with idle_sessions(pf, idle) as held:
        t0 = time.monotonic()
        got = smtp_burst(pf, n)
        wall = time.monotonic() - t0
    seen: Counter[str] = Counter(s.seen for s in got)
    took: dict[str, list[float]] = {}
    for s in got:
        took.setdefault(s.seen, []).append(s.seconds)
    queued = [s.queue_id for s in got if s.queue_id]
    deadline = time.monotonic() + 30
    delivered: dict[str, bytes] = {}
    while time.monotonic() < deadline and len(delivered) < len(queued):
        for d in pf.delivered():
            for q in queued:
                if f"id {q}".encode() in d.raw:
                    delivered[q] = d.raw
        time.sleep(0.2)
    report: dict[str, object] = (held if idle else {}) | {
        "sessions": n, "wall_s": round(wall, 1), "smtp": dict(seen),
        "seconds": {k: f"{min(v)}-{max(v)}" for k, v in took.items()},
        "250_delivered": dict(Counter(verdict(raw) for raw in delivered.values())),
        "250_not_delivered": len(queued) - len(delivered),
        "milter_decisions": m.log.count(" action="),
        "peak_fds": m.peak_fds, "peak_threads": m.peak_threads}
    report |= after_postfix(pf, m, fake, since)
    report["postfix_log"] = dict(postfix_lines(pf, since).most_common())
    return report | after_stop(m)


def after_postfix(pf: PostfixInstance, m: Milter, fake: SwitchableSpamd, since: int
                  ) -> dict[str, object]:
    """Once spamd answers at once again: five more messages, and one sent through an smtpd
    process whose milter timed out in the burst. Are they scanned? Then the milter's count of
    the sessions it never served."""
    time.sleep(1.0)
    fake.mode = "good"
    statuses: Counter[str] = Counter()
    for i in range(5):
        one = pf.attempt(message(900 + i))
        statuses[f"250, {delivered_as(pf, one.queue_id)}" if one.queue_id else one.seen] += 1
    out: dict[str, object] = {"after": dict(statuses)}
    timed_out = set(re.findall(r"smtpd\[(\d+)\]: warning: milter .*timed out", pf.log[since:]))
    if timed_out:
        out["after_on_an_smtpd_that_timed_out"] = through_one_of(pf, timed_out)
    deadline = time.monotonic() + 20  # the count comes once the MTA hung up for a scan + 5.25 s
    while time.monotonic() < deadline and "never served" not in m.log:
        time.sleep(0.5)
    never = [ln.split("WARNING ", 1)[1][:60] for ln in m.log.splitlines() if "never served" in ln]
    return out | {"never_served": never[-1] if never else None}


def delivered_as(pf: PostfixInstance, queue_id: str) -> str:
    try:
        return verdict(pf.wait_delivered(queue_id, 30).raw)
    except PostfixError:
        return "not delivered"


def through_one_of(pf: PostfixInstance, pids: set[str]) -> str:
    """One message sent through one of these smtpd processes: each new connection is held
    open (after EHLO) until one lands on such a process, so that the master must hand the
    next to another (at most 45 connections)."""
    with contextlib.ExitStack() as held:
        for _ in range(45):
            before = len(pf.log)
            s = held.enter_context(pf.smtp())
            deadline = time.monotonic() + 5
            while not (found := re.search(r"smtpd\[(\d+)\]: connect from", pf.log[before:])):
                if time.monotonic() > deadline:
                    return "its connect line not logged"
                time.sleep(0.05)
            if found[1] in pids:
                try:
                    s.mail("alice@example.net")
                    s.rcpt("bob@test.example")
                    code, text = s.data(message(950))
                except smtplib.SMTPException as e:
                    return f"{type(e).__name__}: {e}"
                queued = re.search(rb"queued as ([0-9A-F]+)", text)
                return f"{code}, {delivered_as(pf, queued[1].decode())}" if queued else \
                    f"{code} {text.decode()}"
    return "no such smtpd reached"


POSTFIX_LIMITS = {  # scenario: (the limit, its text, SMTP sessions at once, idle ones before)
    "postfix-nproc": ({resource.RLIMIT_NPROC: (30, 30)}, "RLIMIT_NPROC 30", 40, 0),
    "postfix-nofile": ({resource.RLIMIT_NOFILE: (64, 64)}, "RLIMIT_NOFILE 64:64", 60, 0),
    "postfix-idle": ({resource.RLIMIT_NOFILE: (48, 48)}, "RLIMIT_NOFILE 48:48", 5, 40),
}


@contextlib.contextmanager
def idle_sessions(pf: PostfixInstance, n: int) -> Iterator[dict[str, object]]:
    """`n` SMTP sessions opened at once and left idle after EHLO (as clients that are slow to
    send, or hold their connection between messages), each holding its milter connection;
    closed at the end of the block. Yields what they saw."""
    def one(_: int) -> tuple[smtplib.SMTP | str, float]:
        t0 = time.monotonic()
        try:
            return pf.smtp(), round(time.monotonic() - t0, 1)
        except (OSError, smtplib.SMTPException) as e:
            return f"{type(e).__name__}: {e}"[:60], round(time.monotonic() - t0, 1)

    with ThreadPoolExecutor(max_workers=max(n, 1)) as pool:
        opened = list(pool.map(one, range(n)))
    took = [t for _, t in opened]
    try:
        yield {"held_idle": sum(not isinstance(s, str) for s, _ in opened),
               "idle_open_errors": dict(Counter(s for s, _ in opened if isinstance(s, str))),
               "idle_greeted_s": f"{min(took)}-{max(took)}" if took else "-"}
    finally:
        for s, _ in opened:
            if not isinstance(s, str):
                with contextlib.suppress(OSError, smtplib.SMTPException):
                    s.close()


def behind_postfix(work: Path, pf: PostfixInstance, scenario: str, action: str
                   ) -> dict[str, object]:
    """The milter (as nobody, engine=spamd, spamd taking 1.5 s, scan_timeout 2 s) under the
    scenario's limit, behind a real Postfix with milter_default_action = `action`."""
    rlimits, text, sessions, idle = POSTFIX_LIMITS[scenario]
    fake = SwitchableSpamd("slow", delay=1.5)
    try:
        with pf.main_cf(milter_default_action=action, **POSTFIX_TIMEOUTS):
            # the socket directory as the .deb makes it: the milter's user, group postfix, 2750
            os.chown(pf.milter_socket.parent, pwd.getpwnam("nobody").pw_uid, -1)
            m = Milter(work, {"engine": "spamd", "user": "nobody", "scan_timeout": 2.0,
                              "socket": f"unix:{pf.milter_socket}"}, rlimits, fake.port)
            try:
                return {"limit": f"{text} (user nobody)",
                        "postfix": f"milter_default_action = {action}, milter_*_timeout = 5s"
                        } | postfix_burst(pf, m, fake, sessions, idle)
            finally:
                m.stop()
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


def show(name: str, r: dict[str, object]) -> None:
    print(f"== {name}")
    for k, v in r.items():
        if k == "warnings":
            for w in v:  # type: ignore[attr-defined]
                print(f"   warning: {w}")
        elif isinstance(v, dict) and k in ("postfix_log", "smtp"):
            print(f"   {k}:")
            for line, count in v.items():
                print(f"      {count:3} × {line}")
        else:
            print(f"   {k}: {v}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    every = ["nofile", "raised", "spool", "idle", "nproc", "as", *POSTFIX_LIMITS]
    ap.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=", ".join(every))
    ap.add_argument("--smtp-port", type=int, default=0,
                    help="the throwaway Postfix's smtpd port (postfix-*; default: a free one)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    unknown = set(a.scenarios) - set(every)
    if unknown:
        ap.error(f"no scenario {', '.join(sorted(unknown))}")
    a.scenarios = a.scenarios or every
    base = Path(tempfile.mkdtemp(prefix="sb-limits-"))
    os.chmod(base, 0o755)  # nobody (nproc) reaches its socket and spool
    results = {}
    pf: PostfixInstance | None = None
    try:
        for name in a.scenarios:
            if (name == "nproc" or name in POSTFIX_LIMITS) and os.geteuid() != 0:
                print(f"{name}: needs root (the milter runs as nobody; postfix start)")
                continue
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
                r = nproc(work)
            elif name in POSTFIX_LIMITS:
                pf = pf or make_instance(a.smtp_port or free_port())
                for action in ("tempfail", "accept"):
                    (work / action).mkdir()
                    os.chmod(work / action, 0o755)
                    results[f"{name} {action}"] = r = behind_postfix(work / action, pf, name,
                                                                     action)
                    show(f"{name} {action}", r)
                continue
            else:
                r = address_space(work)
            results[name] = r
            show(name, r)
    finally:
        if pf is not None:
            destroy(pf)
        shutil.rmtree(base, ignore_errors=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
