"""Memory after a burst of big messages, read from /proc/PID/status (not a timing test)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from harness import RunningMilter, message, wait_until
from milterload import deliver, deliver_many
from spamdfakes import SwitchableSpamd

Start = Callable[..., RunningMilter]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise KeyError("VmRSS")


def test_memory_goes_back_after_a_burst_of_big_messages(start_milter: Start,
                                                        fake: SwitchableSpamd) -> None:
    """10 messages of 10 MB at once with max_scan_size 16 MiB: each is rebuilt in memory for
    spamd, so RSS peaks; afterwards it must fall back near where it was. (glibc keeps freed
    big blocks in its heap once its adaptive mmap threshold has grown: 600 MB stayed resident
    after 20 x 20 MB before spambridge fixed the threshold.)"""
    m = start_milter({"milter": {"engine": "spamd", "scan_timeout": 30.0,
                                 "max_scan_size": 16 << 20},
                      "spamd": {"host": "127.0.0.1", "port": fake.port}})
    deliver(m.socket_path, message(), timeout=30)
    time.sleep(0.5)
    base = rss_mb(m.proc.pid)
    body = ("The quarterly figures are attached; see you on Friday.\n" * 200_000).encode()
    ds = deliver_many(m.socket_path, [message(body=body.decode())] * 10, 10, timeout=120)
    assert all(d.result is not None and d.result.action == "accept" for d in ds)
    assert all("score=1.5" in (d.result.header("X-Spam-Status") or "") for d in ds if d.result)
    try:
        wait_until(lambda: rss_mb(m.proc.pid) < base + 40, 5, "RSS back near its baseline")
    except TimeoutError:
        pytest.fail(f"RSS {rss_mb(m.proc.pid):.0f} MB after the burst, {base:.0f} MB before")
