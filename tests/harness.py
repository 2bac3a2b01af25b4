"""Test helpers that start real things: spamd on 127.0.0.1, `spambridge run` on a unix socket,
and (only to produce faults a real spamd can't) small fake spamd servers.

Fixtures wrapping these live in conftest.py; tests import helpers from here (`from harness import …`)."""

from __future__ import annotations

import atexit
import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def smtp_greets(port: int) -> bool:
    """Whether an SMTP server on 127.0.0.1:`port` gives its 220 banner now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.recv(100).startswith(b"220")
    except OSError:
        return False


def kill_lingering(pid: int, grace: float = 15.0) -> None:
    """After a daemon we started was told to stop: SIGKILL that PID if it is still there after
    `grace` seconds (a daemon, not our child: nothing to wait() for)."""
    def alive() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    with contextlib.suppress(TimeoutError):
        wait_until(lambda: not alive(), grace, f"process {pid} to end")
    if alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """Stop a process we started, by its PID: TERM, then KILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return int(proc.returncode)


# ------------------------------------------------------------------------------------------------
# real spamd


def dovecot_conf(top: Path, protocol: str, port: int, settings: str, tail: str = "",
                 users: bool = False, anyone_in: Path | None = None) -> str:
    """A private Dovecot's configuration: its run, state and log files under `top` (the log:
    `top`/dovecot.log), no TLS, `protocol`'s one listener on 127.0.0.1:`port`, no chroot for
    anvil (the tests' temp directories are not Dovecot's), and between them `settings` (mail
    location, users, plugins); `tail` goes last (an !include). With `users`, the users and
    their passwords are in `top`/users (passwd-file); with `anyone_in`, any user name is
    taken without a password and has its home in `anyone_in`/NAME, as nobody."""
    if anyone_in is not None:
        settings += ("\npassdb {\n  driver = static\n  args = nopassword=y\n}\n"
                     "userdb {\n  driver = static\n"
                     f"  args = uid=65534 gid=65534 home={anyone_in}/%n\n}}")
    if users:
        settings += "".join(f"\n{db} {{\n  driver = passwd-file\n  args = {top}/users\n}}"
                            for db in ("passdb", "userdb"))
    if protocol == "lmtp":
        service = ("service lmtp {\n  inet_listener lmtp {\n    address = 127.0.0.1\n"
                   f"    port = {port}\n  }}\n}}\n")
    else:  # imap, imaps off
        service = ("service imap-login {\n  chroot =\n  inet_listener imap {\n"
                   f"    address = 127.0.0.1\n    port = {port}\n  }}\n"
                   "  inet_listener imaps {\n    port = 0\n  }\n}\n")
    return (f"base_dir = {top}/run\nstate_dir = {top}/state\nprotocols = {protocol}\n"
            f"log_path = {top}/dovecot.log\nssl = no\nfirst_valid_uid = 1\n"
            f"default_internal_user = root\n{settings.strip()}\n{service}"
            f"service anvil {{\n  chroot =\n}}\n{tail}")


@contextlib.contextmanager
def running_dovecot(binary: str, conf: Path, probe: Callable[[], object], what: str
                    ) -> Iterator[subprocess.Popen[bytes]]:
    """A private Dovecot (`dovecot -F -c conf`) until the block ends, stopped by its PID;
    `probe` connects to its listener and raises OSError until it answers."""
    proc = subprocess.Popen([binary, "-F", "-c", str(conf)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def listening() -> bool:
            try:
                probe()
                return True
            except OSError:
                return proc.poll() is not None  # it died: fail below, not by waiting
        wait_until(listening, 20, what)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Spamd:
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    home: Path
    bayes: Path | None = None  # its own Bayes directory (bayes_path), when it has one

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _spamd_answers(port: int, tls: bool = False) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
            s = raw
            if tls:
                ctx = ssl.create_default_context()
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                s = ctx.wrap_socket(raw)
            s.sendall(b"PING SPAMC/1.5\r\n\r\n")
            return b"PONG" in s.recv(100)
    except OSError:
        return False


SPAMASSASSIN_SITE = "/etc/spamassassin"


def self_signed(where: Path, name: str) -> tuple[Path, Path]:
    """A certificate and key for a TLS spamd on 127.0.0.1 or ::1 (the tests' ca_file too)."""
    cert, key = where / f"{name}.pem", where / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,IP:::1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    os.chmod(key, 0o644)  # spamd reads it after dropping to its own user
    return cert, key


@contextlib.contextmanager
def spamd_with_rules(prefix: str, rules: str) -> Iterator[Spamd]:
    """A real spamd with a test's own rules (see start_spamd) for a module's tests, in a
    directory of /tmp (outside pytest's 0700 tree) that goes with it."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        s = start_spamd(base, rules=rules)
        try:
            yield s
        finally:
            stop_process(s.proc)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def start_spamd(base: Path, extra: tuple[str, ...] = (), tls: tuple[Path, Path] | None = None,
                unix: Path | None = None, rules: str = "", port: int = 0) -> Spamd:
    """A real spamd on 127.0.0.1; `tls` = (cert, key) makes it accept only TLS; `unix` adds
    a unix socket (mode 0666, so our non-root user can reach it too); `rules` is added to
    its local.cf (rules and scores of a test's own); `port`: that one (a spamd restarted)."""
    exe = shutil.which("spamd") or "/usr/sbin/spamd"
    if not os.path.exists(exe):
        pytest.fail("spamd is not installed: run .ci/run (or apt-get install spamd)")
    home = base / "spamd-home"
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    os.chmod(home, 0o777)
    # its own Bayes (TELL, autolearn): by default SpamAssassin keeps it in the spamd user's
    # home, for debian-spamd the system spamd's /var/lib/spamassassin/.spamassassin
    site = Path(SPAMASSASSIN_SITE)
    bayes = Path()
    if site.is_dir():
        # outside `base`, which may sit in pytest's 0700 tree: spamd's children, as
        # debian-spamd, read the plugin list (*.pre) from here and keep the Bayes files here
        own_root = Path(tempfile.mkdtemp(prefix="sb-spamd-site-", dir="/tmp"))  # not TMPDIR
        atexit.register(shutil.rmtree, own_root, True)
        os.chmod(own_root, 0o755)
        own = own_root / "site"
        own.mkdir()
        for f in (*site.glob("*.pre"), *site.glob("*.cf")):
            shutil.copy(f, own / f.name)
        bayes = own_root / "bayes"
        bayes.mkdir()
        os.chmod(bayes, 0o777)
        with open(own / "local.cf", "a") as cf:
            cf.write(f"\nbayes_path {bayes}/bayes\n{rules}")
        extra = (*extra, f"--siteconfigpath={own}")
    elif rules:
        pytest.fail(f"{site} is missing: spamd cannot be given a test's rules")
    port = port or free_port()
    listen = f"ssl:127.0.0.1:{port}" if tls else f"127.0.0.1:{port}"
    if tls:
        extra = (*extra, f"--server-cert={tls[0]}", f"--server-key={tls[1]}")
    if unix:
        extra = (*extra, f"--listen={unix}", "--socketmode=0666")
    args = [exe, f"--listen={listen}", "--max-children=2", "--min-children=1",
            "--allowed-ips=127.0.0.1", f"--helper-home-dir={home}", "--nouser-config",
            "--syslog=stderr", f"--pidfile={home}/spamd.pid", "-L", *extra]
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("debian-spamd")
            args.append("--username=debian-spamd")
        except KeyError:
            args.append("--username=nobody")
    log = open(base / "spamd.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=home)
    try:
        wait_until(lambda: proc.poll() is not None or _spamd_answers(port, bool(tls)), 90,
                   "spamd PING")
    except TimeoutError:
        stop_process(proc)
        raise
    if proc.poll() is not None:
        pytest.fail(f"spamd exited: {(base / 'spamd.log').read_text()[-2000:]}")
    return Spamd("127.0.0.1", port, proc, home, bayes if site.is_dir() else None)


def python_for(top: Path, uid: int, gid: int) -> tuple[str, str]:
    """An interpreter user `uid` (group `gid`) can run, and a PYTHONPATH that gives it this
    checkout's spambridge: a copy in `top` (which that user must be able to search), since the
    checkout may lie where the user cannot read (a clone under /root). A venv built on a Python
    under /root is not reachable either; the system python3 (3.11 on Debian 12) then is, and
    `train` and `check-config` need no package beyond it."""
    import spambridge

    lib = top / "lib"
    shutil.copytree(Path(spambridge.__file__).resolve().parent, lib / "spambridge",
                    ignore=shutil.ignore_patterns("__pycache__"))
    path = str(lib)
    tried = []
    for exe in dict.fromkeys([sys.executable, "/usr/bin/python3"]):
        try:
            r = subprocess.run([exe, "-c", "import spambridge.train, spambridge.checkconfig"],
                               cwd="/", env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin"},
                               user=uid, group=gid, extra_groups=[],
                               capture_output=True, text=True, check=False)
        except OSError as e:
            tried.append(f"{exe}: {e.strerror}")
            continue
        if r.returncode == 0:
            return exe, path
        tried.append(f"{exe}: {r.stderr.strip().splitlines()[-1:]}")
    pytest.fail(f"no Python uid {uid} can run spambridge with: " + "; ".join(tried))


def unused_id(start: int = 61000) -> int:
    """A number no user and no group has: a throwaway identity for setuid/setgid."""
    taken = {p.pw_uid for p in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}
    return next(n for n in range(start, start + 1000) if n not in taken)


# ------------------------------------------------------------------------------------------------
# the real milter process


@dataclass
class RunningMilter:
    proc: subprocess.Popen[bytes]
    socket_path: str
    log_path: Path
    config_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        return stop_process(self.proc)


def open_files_in(directory: str) -> list[str]:
    """This process's open files in `directory`: a spool file is unlinked at once, so only
    /proc/self/fd sees it."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the directory's own descriptor, gone by now
            path = os.readlink(f"/proc/self/fd/{fd}")
            if path.startswith(directory + "/"):
                found.append(path)
    return found


@contextlib.contextmanager
def full_unix_queue(path: str) -> Iterator[None]:
    """A unix socket listening at `path` whose accept queue is full (a milter under a burst):
    a connect there fails at once with EAGAIN."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as lst:
        lst.bind(path)
        lst.listen(0)
        queued = []
        try:
            for _ in range(64):  # bounded: the kernel takes backlog + 1
                c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                c.setblocking(False)
                try:
                    c.connect(path)
                except BlockingIOError:
                    c.close()
                    break
                queued.append(c)
            else:
                pytest.fail("the accept queue never filled")
            yield
        finally:
            for c in queued:
                c.close()


def connectable(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
        return True
    except OSError:
        return False


def write_config(path: Path, sections: dict[str, dict[str, object]]) -> Path:
    lines: list[str] = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        for k, v in table.items():
            if isinstance(v, bool):
                lines.append(f"{k} = {'true' if v else 'false'}")
            elif isinstance(v, int | float):
                lines.append(f"{k} = {v}")
            elif isinstance(v, list):
                lines.append(f"{k} = [{', '.join(repr(str(x)).replace(chr(39), chr(34)) for x in v)}]")
            else:
                lines.append(f'{k} = "{v}"')
        lines.append("")
    path.write_text("\n".join(lines))
    return path


# ------------------------------------------------------------------------------------------------
# fake spamd servers, only for faults a real spamd cannot produce


class FakeSpamd:
    """A TCP server on 127.0.0.1 that reads a request and then misbehaves as told."""

    def __init__(self, behaviour: Callable[[socket.socket], None]) -> None:
        self.behaviour = behaviour
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.stopping = threading.Event()
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self.behaviour(conn)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(2)
        self.sock.close()
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.close()


def read_request(conn: socket.socket, limit: float = 5.0) -> bytes:
    conn.settimeout(limit)
    data = b""
    try:
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data


def log_line(m: RunningMilter, qid: str) -> str:
    """The milter's one line for the queue id, once it is written."""
    wait_until(lambda: f" {qid}: " in m.log, 10, f"the milter's line for {qid}")
    [line] = [x for x in m.log.splitlines() if f" {qid}: " in x]
    return line


def gtube_mail(subject: str) -> bytes:
    """SpamAssassin's test spam in an ordinary message (spamd scores it 1000)."""
    return message(subject=subject, body=f"Buy now.\n\n{GTUBE}\n")


def message(subject: str = "Lunch on Friday", body: str = "Shall we meet at noon?\n",
            extra_headers: str = "", sender: str = "alice@example.net") -> bytes:
    return (
        f"From: Alice <{sender}>\n"
        "To: Bob <bob@test.example>\n"
        f"Subject: {subject}\n"
        f"Date: {formatdate(localtime=True)}\n"  # a fixed date makes spamd's score drift
        "Message-ID: <20261125100000.1234@example.net>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=us-ascii\n"
        f"{extra_headers}"
        "\n"
        f"{body}"
    ).encode()


BAYES_WORDS = {
    "spam": ["viagra", "casino", "lottery", "winner", "bitcoin", "pills", "prize", "offer"],
    "ham": ["meeting", "agenda", "minutes", "budget", "project", "review", "draft", "lunch"],
}


def bayes_mail(n: int, label: str) -> bytes:
    """A message whose words say `label` ("spam" or "ham") to a database trained on others
    like it, plus one word no other message has (so a lookup always has to read the
    database, not the milter's cache)."""
    words = BAYES_WORDS[label]
    body = " ".join(words[(n * 3 + i) % len(words)] for i in range(40)) + f" uniq{n}x{label}"
    return message(subject=f"{label} {n}", body=body + "\n")


def train_database(where: Path, make: Callable[[int, str], bytes], n: int) -> Path:
    """A Bayes database at `where`/bayes.sqlite, trained through the real `spambridge train`
    on `n` spam and `n` ham messages from `make(i, "spam" | "ham")`."""
    from spambridge import cli

    db = where / "bayes.sqlite"
    for label in ("spam", "ham"):
        d = where / f"train-{label}"
        d.mkdir()
        for i in range(n):
            (d / f"{i}.eml").write_bytes(make(i, label))
        assert cli.main(["train", "--db", str(db), f"--{label}", "-q", str(d)]) == 0
    return db
