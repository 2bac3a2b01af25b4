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
import errno
import logging
import os
import resource
import select
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from spambridge.socketspec import SocketSpec, socket_inode, stream_inodes

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


def _soft(which: int) -> int | None:
    """The soft limit `which` (resource.RLIMIT_*); None when unlimited."""
    return _finite(resource.getrlimit(which)[0])


def _stack() -> int:
    """Bytes of stack each new thread reserves."""
    return _soft(resource.RLIMIT_STACK) or STACK


def _cgroup_dir() -> str | None:
    """This process's cgroup directory that holds pids.max (v2, or v1's pids controller)."""
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
        if os.path.exists(os.path.join(where, "pids.max")):
            return where
    return None


def _cgroup_value(where: str | None, name: str) -> int | None:
    """A number of the cgroup `where` ("pids.max", "pids.current"); None for "max"
    (unlimited), no cgroup, or a file that cannot be read."""
    if where is None:
        return None
    with contextlib.suppress(OSError, ValueError), open(os.path.join(where, name)) as f:
        value = f.read().strip()
        return None if value == "max" else int(value)
    return None


def current() -> Limits:
    """This process's limits, as the milter's user (call after dropping privileges)."""
    return Limits(
        nofile=_soft(resource.RLIMIT_NOFILE),
        # root (with CAP_SYS_RESOURCE) is not held to RLIMIT_NPROC
        nproc=_soft(resource.RLIMIT_NPROC) if os.geteuid() else None,
        tasks=_cgroup_value(_cgroup_dir(), "pids.max"),
        address_space=_soft(resource.RLIMIT_AS),
        stack=_stack(),
        vm_size=_threads_and_vm()[1],
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


@contextlib.contextmanager
def thread_failure_named() -> Iterator[None]:
    """A thread the start cannot make stops it with the limit that was reached named (exit 1:
    a passing cause, the user's other processes), not Python's "RuntimeError: can't start new
    thread" under a traceback. Looked at where it failed: as the milter's user, whom
    RLIMIT_NPROC holds and root (with CAP_SYS_RESOURCE) it does not."""
    try:
        yield
    except RuntimeError as e:
        if "can't start new thread" not in str(e):
            raise
        found = threads_exhausted(_cgroup_dir())
        raise OSError("cannot start a thread: " + (
            f"{found}; raise it in the unit (systemctl edit spambridge)" if found else
            "raise TasksMax= or LimitNPROC= in the unit (systemctl edit spambridge), or remove "
            "LimitAS=")) from None


# ------------------------------------------------------------------------------------------------
# at run time: a limit reached is said once every REMIND seconds, naming it and its setting

REMIND = 300.0  # seconds between warnings about one limit (as health.py's incidents)
WATCH_EVERY = 1.0  # seconds between the watch's looks at the threads and the listener
FRESH = 0.01  # seconds a look at the threads is trusted for a poke (100 looks a second at most,
# 50 us each, only while scans overlap)
# threads short of the limit at which the nudger stops connecting: libmilter's sessions start
# threads between its look and its connection
POKE_MARGIN = 4
UNSERVED_EVERY = 5  # looks between searches for sessions libmilter never served (a stuck one stays)
# The listener thread retrying accept() in a loop never sleeps; a working one sleeps in poll()
# between connections. Its CPU share alone does not tell them apart on a host whose cores are
# busy (the loop got 0.07 of a core beside six busy processes), so it counts as spinning when it
# ran at least SPIN_CPU seconds in a look without a single voluntary context switch; SPIN (a
# share of a core) only where its switches cannot be read
SPIN_CPU = 0.01
SPIN = 0.5

_said: dict[str, float] = {}
_said_lock = threading.Lock()


def _say(kind: str, text: str, clock: Callable[[], float] = time.monotonic,
         every: float = REMIND) -> bool:
    """Warn `text` unless `kind` was warned of in the last `every` seconds; whether it was."""
    now = clock()
    with _said_lock:
        last = _said.get(kind)
        if last is not None and now - last < every:
            return False
        _said[kind] = now
    log.warning("%s", text)
    return True


def _nofile_text() -> str:
    soft = _soft(resource.RLIMIT_NOFILE)
    return (f"out of file descriptors: the open files limit (RLIMIT_NOFILE) of {soft} is "
            "reached. Scans fail (\"Too many open files\": on_unavailable, or on_error for a "
            "spooled body) and libmilter cannot accept the MTA's connections until some close "
            "(it retries at full CPU); raise LimitNOFILE= in the unit (systemctl edit "
            "spambridge)")


def _memory_text() -> str:
    space = _soft(resource.RLIMIT_AS)
    limit = (f"the address space limit (RLIMIT_AS) is {space >> 20} MiB, "
             f"{_threads_and_vm()[1] >> 20} MiB in use" if space is not None else
             "no RLIMIT_AS: a cgroup's MemoryMax= or the machine")
    return (f"out of memory (MemoryError) while a message was scanned: {limit}. Such messages "
            "get on_error, and libmilter cannot start threads for new sessions; remove "
            "LimitAS= (bound memory with MemoryMax= instead), raise it, or lower "
            "max_scan_size")


_NFILE_TEXT = (
    "the system's open file table is full (\"Too many open files in system\", ENFILE; "
    "sysctl fs.file-max): every process fails to open files and sockets, the milter's scans "
    "too (on_unavailable, or on_error for a spooled body). Not the milter's own limit: "
    "LimitNOFILE= does not help; find what holds the files, or raise fs.file-max")

# a failure's text that shows a limit reached, and which; ENFILE's text before EMFILE's, which
# is a prefix of it
_SIGNS = (("Too many open files in system", "nfile"), ("Too many open files", "nofile"),
          ("MemoryError", "memory"), ("can't start new thread", "threads"))


def note(detail: str) -> None:
    """A scan or spool failure (its text): when it comes from a process limit, say which and
    what raises it (the failure itself reads as spamd's or the spool's)."""
    for sign, kind in _SIGNS:
        if sign in detail:
            if kind == "nfile":
                _say(kind, _NFILE_TEXT)
            elif kind == "nofile":
                _say(kind, _nofile_text())
            elif kind == "memory":
                _say(kind, _memory_text())
            else:
                _say(kind, _threads_text(None))
            return


def _threads_text(found: str | None) -> str:
    """`found`: what threads_exhausted() saw, which names its own setting."""
    remedy = ("raise it in the unit (systemctl edit spambridge)" if found else
              "raise TasksMax= or LimitNPROC= in the unit (systemctl edit spambridge), or "
              "remove LimitAS=")
    return ("out of threads: " + (found or "a thread could not be started") + ". libmilter "
            "cannot start a thread for a new SMTP session: it is never answered (the MTA "
            "applies milter_default_action after its milter timeout) and keeps its descriptor "
            f"until the milter restarts; {remedy}")


class Watch:
    """Looks every WATCH_EVERY seconds at what no failure of ours shows: libmilter's listener
    spinning on accept() past RLIMIT_NOFILE (idle sessions hold every descriptor), and the
    threads at their limit (libmilter's LAUNCH_WORKER fails and says only "Resource
    temporarily unavailable"). Costs a clock read and two /proc reads a second."""

    def __init__(self, listener: int, every: float = WATCH_EVERY,
                 spec: SocketSpec | None = None,
                 grace: Callable[[], float] = lambda: 0.0,
                 listener_tid: int | None = None) -> None:
        """`listener`, `listener_tid`: the listener thread's pthread id and its kernel id
        (threading.get_ident and get_native_id in it). `spec`, `grace`: the milter's socket,
        and how long past its peer's hang-up a session of it may still be in a scan
        (scan_timeout and a margin); see unserved()."""
        self.every = every
        self.spec, self.grace = spec, grace
        self._hung: dict[tuple[int, int], float] = {}  # (fd, inode) → first seen hung up
        self._stuck_said = 0  # how many unserved sessions the last warning counted
        self._clock: int | None = None
        with contextlib.suppress(OSError, AttributeError):
            self._clock = time.pthread_getcpuclockid(listener)
        # opened now: at RLIMIT_NOFILE, when it matters, no file can be opened (re-read with
        # pread, a /proc file is current)
        self._status: int | None = None
        if listener_tid is not None:
            with contextlib.suppress(OSError):
                self._status = os.open(f"/proc/self/task/{listener_tid}/status",
                                       os.O_RDONLY | os.O_CLOEXEC)
        self._cgroup = _cgroup_dir()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spambridge-limits",
                                        daemon=True)
        self._looked = 0.0  # time.monotonic() of may_start_thread's last look
        self._poke_ok = True  # what it saw

    def start(self) -> Watch:
        from spambridge.bridge import signals_blocked

        with signals_blocked():
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1.0)
        if self._status is not None and not self._thread.is_alive():  # else it may still read
            os.close(self._status)
            self._status = None

    def may_start_thread(self) -> bool:
        """Whether a few threads can still be started: looked at again when the last look is
        more than FRESH seconds old (the nudger asks before each connection it would make)."""
        if time.monotonic() - self._looked > FRESH:
            self._poke_ok = threads_exhausted(self._cgroup, POKE_MARGIN) is None
            self._looked = time.monotonic()
        return self._poke_ok

    def _listener_sleeps(self) -> int | None:
        """The listener thread's voluntary context switches so far (None: unreadable)."""
        if self._status is None:
            return None
        try:
            text = os.pread(self._status, 4096, 0)
        except OSError:  # the thread is gone
            return None
        _, found, rest = text.partition(b"\nvoluntary_ctxt_switches:")
        return int(rest.split(None, 1)[0]) if found and rest.strip() else None

    def _spinning(self, cpu: float | None, now: float | None, sleeps: int | None,
                  slept: int | None) -> bool:
        """Whether the listener ran without sleeping between two looks (see SPIN_CPU)."""
        if cpu is None or now is None:
            return False
        if sleeps is not None and slept is not None:
            return now - cpu >= SPIN_CPU and sleeps == slept
        return now - cpu >= SPIN * self.every

    def _listener_cpu(self) -> float | None:
        if self._clock is None:
            return None
        try:
            return time.clock_gettime(self._clock)
        except OSError:  # the thread is gone: libmilter has returned
            return None

    def _run(self) -> None:
        cpu, sleeps = self._listener_cpu(), self._listener_sleeps()
        looks = 0
        while not self._stop.wait(self.every):
            looks += 1
            if self.spec is not None and looks % UNSERVED_EVERY == 0:
                stuck = unserved(self.spec, self._hung, self.grace())
                # said as their number grows (at most once a minute): each one is news
                if stuck > self._stuck_said and _say("unserved", _unserved_text(stuck),
                                                     every=60.0):
                    self._stuck_said = stuck
            now, slept = self._listener_cpu(), self._listener_sleeps()
            if self._spinning(cpu, now, sleeps, slept) and fds_exhausted():
                _say("nofile", _nofile_text())
            cpu, sleeps = now, slept
            # one short of the limit counts: a sample, libmilter's threads come and go
            found = threads_exhausted(self._cgroup, 1)
            if found is not None:
                _say("threads", _threads_text(found))


def unserved(spec: SocketSpec, hung: dict[tuple[int, int], float], grace: float,
             clock: Callable[[], float] = time.monotonic) -> int:
    """Sessions libmilter accepted and never served: their MTA hung up more than `grace`
    seconds ago and the descriptor is still open. A served session is closed within
    milliseconds of its MTA's hang-up (at most a scan later); one libmilter could not start a
    thread for is never looked at again. `hung` carries the hang-ups seen between calls.

    The descriptors are libmilter's, in use by its threads meanwhile, and a number may be
    closed and reused at any moment: nothing here may change one. So they are only read
    about: hang-ups by poll() on the numbers (read-only, on whatever a number is), which is
    a session of ours by inode (socketspec.stream_inodes)."""
    now = clock()
    seen: set[tuple[int, int]] = set()
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:  # at RLIMIT_NOFILE: as last time
        return sum(now - since > grace for since in hung.values())
    poller = select.poll()
    for name in names:
        poller.register(int(name), select.POLLRDHUP)
    # the hung-up sockets (a pipe can report POLLHUP too; a file, an epoll or event fd never)
    gone = [(fd, ino) for fd, events in poller.poll(0)
            if events & (select.POLLRDHUP | select.POLLHUP) and not events & select.POLLNVAL
            and (ino := socket_inode(fd)) is not None]
    try:
        ours = stream_inodes(spec, listening=False) if gone else set()  # only when needed
    except OSError:  # no descriptor to read them with (at RLIMIT_NOFILE): as last time
        return sum(now - since > grace for since in hung.values())
    # a number closed and reused between the poll and its link is told apart at the next
    # look: only a session seen hung up at every look for `grace` seconds counts
    for key in gone:
        if key[1] in ours:
            seen.add(key)
            hung.setdefault(key, now)
    for key in list(hung):
        if key not in seen:
            del hung[key]  # closed (served) since, or its number reused
    return sum(now - since > grace for since in hung.values())


def _unserved_text(stuck: int) -> str:
    return (f"{stuck} SMTP session{'s' if stuck != 1 else ''} never served: libmilter could not "
            "start a thread for them (its \"LAUNCH_WORKER error\"), their MTA gave up on them "
            "(milter_default_action), and libmilter keeps their descriptors until the milter "
            "restarts. Raise the limit the \"out of threads\" line named at the time (or at "
            "start), then systemctl restart spambridge")


def fds_exhausted() -> bool:
    """Whether this process holds as many descriptors as RLIMIT_NOFILE allows (bar one)."""
    soft = _soft(resource.RLIMIT_NOFILE)
    try:
        held = len(os.listdir("/proc/self/fd")) - 1  # less the one listdir held
    except OSError as e:
        return e.errno in (errno.EMFILE, errno.ENFILE)
    return soft is not None and held >= soft - 1


def threads_exhausted(cgroup: str | None, margin: int = 0) -> str | None:
    """What keeps a new thread from starting now ("N tasks, the tasks limit ..."), or None;
    `margin`: count as out that many threads before the limit."""
    threads, vm = _threads_and_vm()
    top = _cgroup_value(cgroup, "pids.max")
    used = _cgroup_value(cgroup, "pids.current") if top is not None else None
    if top is not None and used is not None and used + margin >= top:
        return f"{used} tasks, the tasks limit (cgroup pids.max, TasksMax=) is {top}"
    nproc = _soft(resource.RLIMIT_NPROC)
    if os.geteuid() and nproc is not None and threads + margin >= nproc:
        return f"{threads} threads, the process limit (RLIMIT_NPROC, LimitNPROC=) is {nproc}"
    space = _soft(resource.RLIMIT_AS)
    stack = _stack()
    if space is not None and vm + (1 + margin) * stack > space:
        return (f"{vm >> 20} MiB of address space in use, the limit (RLIMIT_AS, LimitAS=) is "
                f"{space >> 20} MiB and a thread's stack takes {stack >> 20} MiB")
    return None


def _threads_and_vm() -> tuple[int, int]:
    """This process's thread count and address space in bytes (/proc/self/stat: shorter to
    make than /proc/self/status, which costs the kernel half again as much)."""
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()  # after the name, which may hold blanks
        return int(fields[17]), int(fields[20])  # num_threads, vsize
    return 0, 0
