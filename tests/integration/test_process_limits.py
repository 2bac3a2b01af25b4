"""The real `spambridge run` under the operating system's limits (docs/reliability.md, "The
milter at the operating system's limits"): a low soft RLIMIT_NOFILE is raised to the hard one at
start, and a hard limit too low for the load Postfix can send is said at start, with the unit
setting that raises it."""

from __future__ import annotations

import contextlib
import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from harness import RunningMilter, connectable, message, wait_until, write_config
from milterclient import MilterClient
from milterload import deliver_many
from postfix_instance import PostfixInstance
from spamdfakes import SwitchableSpamd

Start = Callable[..., RunningMilter]
N = 40  # sessions at once: each holds its MTA connection and one to spamd, ~90 descriptors


def soft_nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open files line")


def test_a_low_soft_descriptor_limit_is_raised_so_a_burst_is_scanned(start_milter: Start
                                                                    ) -> None:
    """systemd gives services a soft RLIMIT_NOFILE of 1024 under a hard one of 524288; at 64
    (a container's) 40 sessions waiting on a slow spamd ran out: 'spamd failing: unavailable:
    ... Too many open files', and on_unavailable for most of them."""
    fake = SwitchableSpamd("slow", delay=0.5)
    try:
        m = start_milter({"milter": {"engine": "spamd", "scan_timeout": 5.0},
                          "spamd": {"host": "127.0.0.1", "port": fake.port}},
                         rlimits={resource.RLIMIT_NOFILE: (64, 4096)})
        got = deliver_many(m.socket_path, [message(subject=f"n {i}") for i in range(N)], N,
                           timeout=30, barrier_at="eom")
        raised = soft_nofile(m.proc.pid)
    finally:
        fake.close()
    statuses = Counter((d.result.header("X-Spam-Status") or "")[:10] if d.result else d.error
                       for d in got)
    assert statuses == {"No, score=": N}, statuses
    assert "Too many open files" not in m.log
    assert raised == 4096
    assert "open files limit (RLIMIT_NOFILE)" not in m.log  # 4096 is enough: no warning


def test_a_hard_descriptor_limit_too_low_is_said_at_start(start_milter: Start) -> None:
    m = start_milter({"milter": {"engine": "bayes"}},
                     rlimits={resource.RLIMIT_NOFILE: (64, 64)})
    assert soft_nofile(m.proc.pid) == 64
    line = next((ln for ln in m.log.splitlines() if "open files limit" in ln), "")
    assert "WARNING" in line and "RLIMIT_NOFILE) is 64" in line, m.log
    assert "LimitNOFILE=" in line


def test_descriptors_running_out_are_named_with_the_setting_that_raises_them(
        start_milter: Start) -> None:
    """A hard limit of 48 (nothing to raise to) and 40 sessions on a slow spamd: each still
    gets one defined reply, the failures read "spamd failing: ... Too many open files", and
    one line more says it is the milter's own descriptor limit, and what raises it."""
    fake = SwitchableSpamd("slow", delay=0.5)
    try:
        m = start_milter({"milter": {"engine": "spamd", "scan_timeout": 5.0},
                          "spamd": {"host": "127.0.0.1", "port": fake.port}},
                         rlimits={resource.RLIMIT_NOFILE: (48, 48)})
        got = deliver_many(m.socket_path, [message(subject=f"n {i}") for i in range(N)], N,
                           timeout=30, together=False)
        fake.mode = "good"
        after = deliver_many(m.socket_path, [message()], 1, timeout=10)[0]
    finally:
        fake.close()
    assert all(d.result is not None and not d.extra for d in got), [d.error for d in got]
    assert "Too many open files" in m.log  # the burst did reach the limit
    line = next((ln for ln in m.log.splitlines() if "out of file descriptors" in ln), "")
    assert "WARNING" in line and "RLIMIT_NOFILE) of 48" in line and "LimitNOFILE=" in line
    assert after.result is not None
    assert (after.result.header("X-Spam-Status") or "").startswith("No, score=1.5")


@contextlib.contextmanager
def busy_cores(n: int, seconds: float = 30.0) -> Iterator[None]:
    """`n` processes spinning (each gives up after `seconds`), stopped by their PIDs: a host
    whose cores other work keeps busy, as an overloaded mail server's are."""
    spin = f"import time\nt = time.monotonic() + {seconds}\nwhile time.monotonic() < t: pass"
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.mark.parametrize("busy", [0, 3 * (os.cpu_count() or 1)], ids=["idle", "busy-host"])
def test_a_listener_out_of_descriptors_is_named_though_no_scan_fails(start_milter: Start,
                                                                    busy: int) -> None:
    """Idle sessions holding every descriptor: libmilter's listener retries accept() in a
    busy loop and logs nothing; no scan runs to fail. The milter says it within seconds, on
    a host whose cores are busy too (the loop then gets only its share of one: it was taken
    for a loop only over half a core, and missed)."""
    with busy_cores(busy):
        listener_out_of_descriptors(start_milter)


def listener_out_of_descriptors(start_milter: Start) -> None:
    m = start_milter({"milter": {"engine": "bayes"}},
                     rlimits={resource.RLIMIT_NOFILE: (40, 40)})
    held: list[socket.socket] = []
    try:
        for _ in range(50):  # more than the 40 descriptors: the rest wait in the backlog
            s = socket.socket(socket.AF_UNIX)
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(m.socket_path)
            held.append(s)
        wait_until(lambda: "out of file descriptors" in m.log, 10, "the warning")
    finally:
        for s in held:
            s.close()
    line = next(ln for ln in m.log.splitlines() if "out of file descriptors" in ln)
    assert "RLIMIT_NOFILE) of 40" in line and "LimitNOFILE=" in line
    r = deliver_many(m.socket_path, [message()], 1, timeout=10)[0]
    assert r.result is not None, r.error  # serves again once the sessions are gone


@contextlib.contextmanager
def as_nobody_short_of_threads(start_milter: Start, scan_timeout: float, spamd_delay: float,
                               sock: Path | None = None) -> Iterator[RunningMilter]:
    """The milter as `nobody` (root is not held to RLIMIT_NPROC) under RLIMIT_NPROC 30, in
    front of a spamd that answers after `spamd_delay`: 30 sessions at once run out of
    threads. `sock`: its socket in a directory it is given for the block, as the package
    gives it /var/spool/postfix/spambridge (a Postfix instance's)."""
    base = Path(tempfile.mkdtemp(prefix="sb-limits-"))  # outside pytest's 0700 tree
    sock = sock or base / "m.sock"
    owner = sock.parent.stat().st_uid
    fake = SwitchableSpamd("slow", delay=spamd_delay)
    try:
        os.chmod(base, 0o755)
        spool = base / "spool"
        spool.mkdir()
        nobody = pwd.getpwnam("nobody").pw_uid
        os.chown(spool, nobody, -1)
        os.chown(sock.parent, nobody, -1)
        yield start_milter({"milter": {"engine": "spamd", "scan_timeout": scan_timeout,
                                       "user": "nobody", "socket": f"unix:{sock}",
                                       "spool_dir": str(spool)},
                            "spamd": {"host": "127.0.0.1", "port": fake.port}},
                           rlimits={resource.RLIMIT_NPROC: (30, 30)})
    finally:
        fake.close()
        os.chown(sock.parent, owner, -1)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="RLIMIT_NPROC for the milter's own user (root)")
def test_threads_running_out_are_named_and_not_made_worse_by_the_nudger(
        start_milter: Start) -> None:
    """RLIMIT_NPROC 30 for the milter's user and 30 sessions on a slow spamd: libmilter cannot
    start threads for some (its "LAUNCH_WORKER error: Resource temporarily unavailable"), and
    those sessions are never answered (libmilter's, not fixable here: the MTA's milter timeout
    decides). The milter says which limit; and its pool nudger stops connecting to its own
    socket, each of which became one more session never served (41 to 47 more before)."""
    with as_nobody_short_of_threads(start_milter, scan_timeout=5.0, spamd_delay=3.0) as m:
        got = deliver_many(m.socket_path, [message(subject=f"n {i}") for i in range(30)], 30,
                           timeout=8, together=False)
    unanswered = sum(d.result is None for d in got)
    assert unanswered, "the limit was not reached"
    assert "RLIMIT_NPROC) is 30" in m.log  # at start
    line = next((ln for ln in m.log.splitlines() if "out of threads" in ln), "")
    assert "WARNING" in line and "LimitNPROC=" in line, m.log[-3000:]
    not_started = m.log.count("LAUNCH_WORKER error")
    assert not_started - unanswered <= 10, (not_started, unanswered)


@pytest.mark.skipif(os.geteuid() != 0, reason="RLIMIT_NPROC for the milter's own user (root)")
def test_sessions_libmilter_never_served_are_counted_in_the_log(start_milter: Start) -> None:
    """A session libmilter could not start a thread for stays open in the milter after its MTA
    gave up (libmilter never looks at it again), even once threads are free again: a thread
    count looked at once a second can miss a short exhaustion, this cannot. Counted once its
    MTA has hung up for longer than a scan can take (here 2 s + 5.25 s)."""
    with as_nobody_short_of_threads(start_milter, scan_timeout=2.0, spamd_delay=1.5) as m:
        got = deliver_many(m.socket_path, [message(subject=f"n {i}") for i in range(30)], 30,
                           timeout=4, together=False)  # the "MTA" gives up after 4 s
        unanswered = sum(d.result is None for d in got)
        assert unanswered, "the limit was not reached"
        wait_until(lambda: "never served" in m.log, 30, "the count of unserved sessions")
    line = next(ln for ln in m.log.splitlines() if "never served" in ln)
    said = int(line.split("WARNING ", 1)[1].split()[0])
    assert 0 < said <= unanswered + 10, (said, unanswered)
    assert "systemctl restart spambridge" in line


@pytest.mark.postfix
@pytest.mark.skipif(os.geteuid() != 0, reason="RLIMIT_NPROC for the milter's own user (root)")
def test_behind_postfix_a_session_short_of_a_thread_is_deferred_never_let_in_unscanned(
        postfix: PostfixInstance, start_milter: Start) -> None:
    """README (Postfix quick start, step 7): with milter_default_action = tempfail nothing
    unscanned gets in and nothing is lost. 40 SMTP sessions at once through a real Postfix,
    the milter out of threads: libmilter never answers some of them, Postfix's milter timeout
    comes, and each sender got either 250 for a message delivered with our verdict, or
    451 4.7.1 to try again later; none got 250 for a message nobody scanned. The next message
    is scanned again (Postfix opens a new milter connection for each SMTP session)."""
    timeouts = {f"milter_{k}_timeout": "5s" for k in ("connect", "command", "content")}
    with postfix.main_cf(milter_default_action="tempfail", **timeouts), \
            as_nobody_short_of_threads(start_milter, scan_timeout=2.0, spamd_delay=1.5,
                                       sock=postfix.milter_socket):
        with ThreadPoolExecutor(max_workers=40) as pool:
            got = list(pool.map(lambda i: postfix.attempt(message(subject=f"n {i}")),
                                range(40)))
        after = postfix.attempt(message(subject="after the burst"))
    assert after.code == 250, after
    for a in [*got, after]:
        if a.code == 250:
            assert a.queue_id, a
            status = postfix.wait_delivered(a.queue_id).all("X-Spam-Status")
            assert [s[:10] for s in status] == ["No, score="], (a, status)
    deferred = [a.seen for a in got if a.code != 250]
    assert deferred, "the limit was not reached"
    assert all(seen.startswith("451 4.7.1 at ") for seen in deferred), deferred


def test_a_stderr_nobody_reads_holds_up_no_mail_and_no_stop(tmp_path: Path) -> None:
    """A stuck journald, or a `2>&1 | logger` that stopped reading: the decision lines were
    written from the threads that answer mail, so once the pipe was full (317 messages) no
    message got a reply, and SIGTERM could not stop the milter either."""
    sock = tmp_path / "m.sock"
    cfg = write_config(tmp_path / "m.toml", {"milter": {"socket": f"unix:{sock}"},
                                             "bayes": {"db": str(tmp_path / "b.sqlite")}})
    unread, w = os.pipe()  # its read end stays open, and nothing reads it
    proc = subprocess.Popen([sys.executable, "-m", "spambridge", "run", "--config", str(cfg)],
                            stdout=w, stderr=w)
    os.close(w)
    try:
        wait_until(lambda: proc.poll() is not None or connectable(str(sock)), 30, "the socket")
        slowest = 0.0
        for i in range(1000):  # about 200 kB of decision lines: three times a pipe's 64 kB
            start = time.monotonic()
            with MilterClient(str(sock), timeout=15.0) as c:
                assert c.send(message(), queue_id=f"LOGQ{i:05d}").action == "accept"
            slowest = max(slowest, time.monotonic() - start)
        assert slowest < 10.0  # (the cap is 10 s: a held reply shows as the client's timeout)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(unread)
