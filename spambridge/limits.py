"""The operating system's limits on the milter process: descriptors, threads, address space.

Each SMTP session costs the milter a libmilter thread and up to three descriptors (the MTA's
connection, one to spamd, a body spooled past spool_memory). At a limit, libmilter is no help:
past RLIMIT_NOFILE its listener retries accept() in a busy loop (a whole core, no log line)
and scans fail with "Too many open files"; a thread it cannot start (RLIMIT_NPROC, systemd's
TasksMax, RLIMIT_AS) leaves that session unserved for good, holding its descriptor, while
the MTA waits out its milter timeout. So the soft descriptor limit is raised to the hard one
at start (systemd's default soft limit is 1024, its hard one 524288 on Debian 12), and a limit
still too low for Postfix's default of 100 smtpd processes is said at start, with the unit
setting that raises it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
from dataclasses import dataclass

log = logging.getLogger("spambridge")

SESSIONS = 100  # Postfix's default_process_limit: smtpd processes, one milter connection each
FDS_PER_SESSION = 3  # the MTA's connection, one to spamd, a body spooled past spool_memory
FDS_BASE = 32  # the listener, the loop, the Bayes database, metrics (9 to 15 measured idle)
THREADS_BASE = 16  # libmilter's pool and signal threads, ours (8 to 12 measured idle)
STACK = 8 << 20  # a thread's stack when RLIMIT_STACK says none (glibc's default)
NR_OPEN = "/proc/sys/fs/nr_open"  # the kernel's ceiling for RLIMIT_NOFILE


def raise_nofile() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one (or the kernel's ceiling when that is
    unlimited); (before, after). Nothing here uses select(), which a descriptor past 1024
    would break: libmilter polls, asyncio uses epoll."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open(NR_OPEN) as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass(frozen=True)
class Limits:
    """What the checks read; every field None when there is no such limit."""

    nofile: int | None  # soft RLIMIT_NOFILE
    nproc: int | None  # soft RLIMIT_NPROC, when it applies to this process (not root)
    tasks: int | None  # the cgroup's pids.max (systemd's TasksMax=)
    address_space: int | None  # soft RLIMIT_AS, bytes
    stack: int  # bytes of stack each thread reserves
    vm_size: int  # bytes of address space in use now


def _finite(value: int) -> int | None:
    return None if value == resource.RLIM_INFINITY else value


def _cgroup_pids_max() -> int | None:
    """pids.max of this process's cgroup (v2, or v1's pids controller); None if unlimited."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        hid, controllers, path = [*line.split(":", 2), "", ""][:3]
        if hid == "0" and controllers == "":
            where = f"/sys/fs/cgroup{path}"
        elif "pids" in controllers.split(","):
            where = f"/sys/fs/cgroup/pids{path}"
        else:
            continue
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(where, "pids.max")) as f:
                value = f.read().strip()
            return None if value == "max" else int(value)
    return None


def _vm_size() -> int:
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def current() -> Limits:
    """This process's limits, as the milter's user (call after dropping privileges)."""
    stack = _finite(resource.getrlimit(resource.RLIMIT_STACK)[0]) or STACK
    return Limits(
        nofile=_finite(resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
        # root (with CAP_SYS_RESOURCE) is not held to RLIMIT_NPROC
        nproc=_finite(resource.getrlimit(resource.RLIMIT_NPROC)[0]) if os.geteuid() else None,
        tasks=_cgroup_pids_max(),
        address_space=_finite(resource.getrlimit(resource.RLIMIT_AS)[0]),
        stack=stack,
        vm_size=_vm_size(),
    )


def problems(limits: Limits, max_scan_size: int) -> list[str]:
    """What of `limits` is too low for SESSIONS concurrent SMTP sessions, each said with what
    happens at the limit and the systemd setting that raises it."""
    out = []
    fds = limits.nofile
    if fds is not None and fds < FDS_BASE + FDS_PER_SESSION * SESSIONS:
        out.append(
            f"open files limit (RLIMIT_NOFILE) is {fds}: enough for about "
            f"{max(0, fds - FDS_BASE) // FDS_PER_SESSION} SMTP sessions at once (up to "
            f"{FDS_PER_SESSION} descriptors each; Postfix runs up to 100 smtpd by default). "
            "Past it scans fail with \"Too many open files\" and libmilter cannot accept the "
            "MTA's connections (it retries at full CPU); raise LimitNOFILE= in the unit "
            f"(systemctl edit spambridge) to {FDS_BASE + FDS_PER_SESSION * SESSIONS} or more")
    for limit, name, setting in ((limits.tasks, "tasks limit (cgroup pids.max)", "TasksMax="),
                                 (limits.nproc, "process limit (RLIMIT_NPROC)", "LimitNPROC=")):
        if limit is not None and limit < THREADS_BASE + SESSIONS:
            out.append(
                f"{name} is {limit}: enough for about {max(0, limit - THREADS_BASE)} SMTP "
                "sessions at once (libmilter starts a thread for each). A session it cannot "
                "start a thread for is never answered and keeps its descriptor (the MTA waits "
                f"for its milter timeout, then applies milter_default_action); raise {setting} "
                f"(systemctl edit spambridge) to {THREADS_BASE + SESSIONS} or more")
    space = limits.address_space
    need = limits.vm_size + SESSIONS * (limits.stack + 3 * max_scan_size)
    if space is not None and space < need:
        out.append(
            f"address space limit (RLIMIT_AS) is {space >> 20} MiB: {SESSIONS} sessions may "
            f"need {need >> 20} MiB ({limits.stack >> 20} MiB of stack reserved per libmilter "
            f"thread, up to 3 x max_scan_size per message scanned, {limits.vm_size >> 20} MiB "
            "in use now). Past it libmilter cannot start threads (sessions never answered) and "
            "scans fail with MemoryError (on_error); remove LimitAS= and bound memory with "
            "MemoryMax= instead, or lower max_scan_size")
    return out


def check_at_start(max_scan_size: int) -> None:
    """Warn of each limit too low for the load Postfix can send (see problems())."""
    for problem in problems(current(), max_scan_size):
        log.warning("%s", problem)
