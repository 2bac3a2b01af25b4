"""The real `spambridge run` under the operating system's limits (docs/reliability.md, "The
milter at the operating system's limits"): a low soft RLIMIT_NOFILE is raised to the hard one at
start, and a hard limit too low for the load Postfix can send is said at start, with the unit
setting that raises it."""

from __future__ import annotations

import resource
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from harness import RunningMilter, message
from milterload import deliver_many
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
