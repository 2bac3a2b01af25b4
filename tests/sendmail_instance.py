"""A throwaway real Sendmail for end-to-end tests.

Debian's `sendmail` conflicts with Postfix, which the other tests need, so it is never
installed: `apt-get download` fetches sendmail-bin and sendmail-cf (and two libraries a Postfix
machine may lack) into a cache directory, and `dpkg-deb -x` unpacks them there. The daemon runs
from there with its own sendmail.cf, made with m4 from the unpacked cf macros plus
contrib/sendmail/spambridge.mc as an admin adds it (only its S= socket changed): its own queue,
pid file, aliases and hosts file (no DNS), on 127.0.0.1 on a free port, delivering local mail
to one file per message in a directory. With `relay=True`, mail for any other domain goes
out through the esmtp mailer (its stock L=990) to a small SMTP server of the test's, which
keeps what arrives as Sendmail sent it: a relay hop. submit.cf, made the same way with
FEATURE(`msp'), is Sendmail's mail submission program: what sendmail(1) runs for cron,
mail(1) and scripts. Nothing under /etc/mail or /var/spool, and no port 25, is read or
touched.

Sendmail sleeps 60 s at start when the machine's host name has no dot and resolves to none
(it checks before reading its config), so each sendmail process runs in its own UTS namespace
named mx.test.example (unshare -u: root, as CI runs).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import pwd
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness import free_port, kill_lingering, smtp_greets, wait_until
from postfix_instance import Delivered

ROOT = Path(__file__).resolve().parent.parent
CONTRIB_MC = ROOT / "contrib" / "sendmail" / "spambridge.mc"
CONTRIB_SOCKET = "S=local:/run/spambridge/spambridge.sock"  # what the contrib file names
PACKAGES = ("sendmail-bin", "sendmail-cf", "liblockfile1", "libwrap0")
HOSTNAME = "mx.test.example"
# sethostname in a new UTS namespace, then become sendmail
UTS_EXEC = ("import os, socket, sys; socket.sethostname(sys.argv[1]); "
            "os.execv(sys.argv[2], sys.argv[2:])")

SENDMAIL_MC = """\
divert(-1)
# throwaway test instance: every path is the instance's own
divert(0)dnl
include(`{cf}/m4/cf.m4')dnl
define(`__OSTYPE__', `none')dnl no OSTYPE: its paths are the system's
define(`confDOMAIN_NAME', `{host}')dnl
define(`confSERVICE_SWITCH_FILE', `{base}/service.switch')dnl
define(`confHOSTS_FILE', `{base}/hosts')dnl
define(`ALIAS_FILE', `{base}/aliases')dnl
define(`QUEUE_DIR', `{base}/mqueue')dnl
define(`confPID_FILE', `{base}/sendmail.pid')dnl
define(`STATUS_FILE', `{base}/statistics')dnl
define(`HELP_FILE', `{base}/helpfile')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
dnl the instance lives under /tmp (sticky, world-writable), which Sendmail refuses otherwise
define(`confDONT_BLAME_SENDMAIL', `TrustStickyBit')dnl
define(`LOCAL_MAILER_PATH', `{base}/deliver')dnl
define(`LOCAL_MAILER_ARGS', `deliver $u')dnl
FEATURE(`no_default_msa')dnl
FEATURE(`nocanonify')dnl
FEATURE(`accept_unresolvable_domains')dnl
LOCAL_DOMAIN(`{host}')dnl
{relay}DAEMON_OPTIONS(`Family=inet, Name=MTA-v4, Port={port}, Addr=127.0.0.1')dnl
dnl ---- contrib/sendmail/spambridge.mc, S= pointed at the test's milter ----
include(`{base}/spambridge.mc')dnl
MAILER(`local')dnl
MAILER(`smtp')dnl
"""

# Debian's submit.mc, with the instance's paths: FEATURE(`msp') relays everything over SMTP
# to the daemon on 127.0.0.1 (the port is the test's instead of 25)
SUBMIT_MC = """\
divert(-1)
divert(0)dnl
include(`{cf}/m4/cf.m4')dnl
define(`__OSTYPE__', `none')dnl
define(`confDOMAIN_NAME', `{host}')dnl
define(`confSERVICE_SWITCH_FILE', `{base}/service.switch')dnl
define(`confHOSTS_FILE', `{base}/hosts')dnl
define(`MSP_QUEUE_DIR', `{base}/clientmqueue')dnl
define(`confPID_FILE', `{base}/clientmqueue/sm-client.pid')dnl
define(`STATUS_FILE', `{base}/clientmqueue/sm-client.st')dnl
define(`confRUN_AS_USER', `{msp_user}')dnl
define(`confDONT_BLAME_SENDMAIL', `TrustStickyBit')dnl
define(`RELAY_MAILER_ARGS', `TCP $h {port}')dnl
FEATURE(`msp', `[127.0.0.1]')dnl
"""

DELIVER = """\
#!/bin/sh
# the local mailer: one file per message and recipient (the last argument)
for u; do :; done
f=$(mktemp "{mail}/$u.XXXXXX") && cat > "$f" && chmod 644 "$f"
"""


# with relay=True: the rest of the world is the test's SMTP server, over the esmtp mailer
RELAY_MC = """\
define(`SMART_HOST', `esmtp:[127.0.0.1]')dnl
define(`ESMTP_MAILER_ARGS', `TCP $h {port}')dnl
"""


class SendmailError(RuntimeError):
    pass


class NextHop:
    """The SMTP server after Sendmail on a relay hop: it takes every message and writes the
    DATA it got, dot-unstuffed, to one file per message in `directory`, so a test reads the
    lines exactly as Sendmail sent them. Each connection in its own thread: Sendmail delivers
    each message from a process of its own, and with one connection served at a time, 5 of
    72 messages relayed at once had not arrived 300 s later (bench/mta_differential.py)."""

    def __init__(self, directory: Path, port: int = 0) -> None:
        self.directory = directory
        directory.mkdir()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port given again
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(8)
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        self._stopping = threading.Event()
        self._names = itertools.count()  # file names unique across the connections' threads
        self._thread = threading.Thread(target=self._serve, name="next-hop", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), name="next-hop-conn",
                             daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(30)
            self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        f = conn.makefile("rb")

        def reply(line: bytes) -> None:
            conn.sendall(line + b"\r\n")

        reply(b"220 next-hop.test.example ESMTP")
        while line := f.readline(65536):
            verb = line[:4].upper()
            if verb == b"EHLO" or verb == b"HELO":
                reply(b"250 next-hop.test.example")
            elif verb == b"DATA":
                reply(b"354 go ahead")
                raw = bytearray()
                while (line := f.readline(65536)) not in (b".\r\n", b""):
                    raw += line[1:] if line.startswith(b".") else line
                part = self.directory / f"{time.monotonic_ns()}-{next(self._names)}.part"
                part.write_bytes(raw)
                part.rename(part.with_suffix(".eml"))  # whole when a test reads it
                reply(b"250 2.0.0 kept")
            elif verb == b"QUIT":
                reply(b"221 2.0.0 bye")
                return
            else:  # MAIL, RCPT, RSET, NOOP
                reply(b"250 2.0.0 ok")

    def close(self) -> None:
        self._stopping.set()
        self._sock.close()
        self._thread.join(5)


def require_root() -> None:
    """CI is root: anything else is a broken setup, not a reason to skip."""
    if os.geteuid() != 0:
        raise SendmailError("the Sendmail end-to-end tests must run as root (unshare -u, a "
                            "daemon as root); run them through scripts/test as root")


def unpacked_sendmail() -> Path:
    """The root of the unpacked packages, fetched once into the cache directory
    ($SPAMBRIDGE_SENDMAIL_CACHE, default ~/.cache/spambridge-tests/sendmail)."""
    cache = Path(os.environ.get("SPAMBRIDGE_SENDMAIL_CACHE")
                 or Path.home() / ".cache" / "spambridge-tests" / "sendmail")
    cache.mkdir(parents=True, exist_ok=True)
    root, done = cache / "root", cache / "unpacked"
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs at once fetch it once
        if not done.exists():
            debs = cache / "debs"
            shutil.rmtree(debs, ignore_errors=True)
            shutil.rmtree(root, ignore_errors=True)
            debs.mkdir()
            r = subprocess.run(["apt-get", "download", *PACKAGES], cwd=debs, text=True,
                               capture_output=True, timeout=600, stdin=subprocess.DEVNULL)
            if r.returncode != 0:
                raise SendmailError(f"apt-get download {' '.join(PACKAGES)} failed (run "
                                    f"apt-get update?):\n{r.stdout}{r.stderr}")
            for deb in sorted(debs.glob("*.deb")):
                subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True,
                               timeout=120, stdin=subprocess.DEVNULL)
            done.write_text("\n".join(p.name for p in sorted(debs.glob("*.deb"))) + "\n")
    return root


class SendmailInstance:
    """One Sendmail daemon with its own config, queue and mail directory, and the matching
    submission program (submit.cf)."""

    def __init__(self, base: Path, unpacked: Path, milter_socket: str,
                 next_hop: NextHop | None = None) -> None:
        self.base = base
        self.next_hop = next_hop
        self.unpacked = unpacked
        self.milter_socket = milter_socket  # S= in libmilter's spelling
        self.mail = base / "mail"
        self.client_queue = base / "clientmqueue"
        self.port = 0
        self.binary = next((p for p in (unpacked / "usr/libexec/sendmail/sendmail",
                                        unpacked / "usr/lib/sm.bin/sendmail") if p.exists()),
                           unpacked / "usr/libexec/sendmail/sendmail")
        libs = [str(p) for p in sorted(unpacked.glob("usr/lib/*-linux-gnu")) if p.is_dir()]
        self.env = {**os.environ, "LD_LIBRARY_PATH": ":".join(libs)}

    # -- lifecycle -----------------------------------------------------------------------------
    def write_config(self, port: int) -> None:
        self.port = port
        cf = self.unpacked / "usr/share/sendmail/cf"
        b = self.base
        (b / "mqueue").mkdir(mode=0o700)
        self.mail.mkdir()
        os.chmod(self.mail, 0o1777)  # the local mailer runs as Sendmail's default user
        msp = pwd.getpwnam("daemon")  # the submission program's RunAsUser (Debian: smmsp)
        self.client_queue.mkdir(mode=0o770)
        os.chown(self.client_queue, msp.pw_uid, msp.pw_gid)
        (b / "service.switch").write_text("hosts files\naliases files\n")
        (b / "hosts").write_text(f"127.0.0.1 localhost {HOSTNAME}\n")
        (b / "aliases").write_text("postmaster: root\nMAILER-DAEMON: root\n")
        (b / "helpfile").write_text("")
        (b / "statistics").write_text("")
        deliver = b / "deliver"
        deliver.write_text(DELIVER.format(mail=self.mail))
        os.chmod(deliver, 0o755)
        contrib = CONTRIB_MC.read_text()
        if contrib.count(CONTRIB_SOCKET) != 1:
            raise SendmailError(f"{CONTRIB_MC} no longer says {CONTRIB_SOCKET} once: update "
                                "tests/sendmail_instance.py")
        (b / "spambridge.mc").write_text(contrib.replace(CONTRIB_SOCKET,
                                                         f"S={self.milter_socket}"))
        relay = RELAY_MC.format(port=self.next_hop.port) if self.next_hop else ""
        values = {"cf": cf, "base": b, "host": HOSTNAME, "port": port, "msp_user": msp.pw_name,
                  "relay": relay}
        for name, template in (("sendmail", SENDMAIL_MC), ("submit", SUBMIT_MC)):
            (b / f"{name}.mc").write_text(template.format(**values))
            r = subprocess.run(["m4", f"-D_CF_DIR_={cf}/", str(b / f"{name}.mc")], text=True,
                               capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
            if r.returncode != 0 or r.stderr.strip():
                raise SendmailError(f"m4 {name}.mc: {r.stderr}")
            (b / f"{name}.cf").write_text(r.stdout)

    def command(self, cf: str, *args: str) -> list[str]:
        """sendmail -C BASE/CF ARGS, in a UTS namespace whose host name has a dot."""
        return ["unshare", "--uts", sys.executable, "-c", UTS_EXEC, HOSTNAME, str(self.binary),
                "-C", str(self.base / cf), *args]

    def start(self) -> None:
        if not self.binary.exists():
            raise SendmailError(f"no sendmail binary in {self.unpacked}")
        r = subprocess.run(["ldd", str(self.binary)], env=self.env, capture_output=True,
                           text=True, timeout=30)
        if "not found" in r.stdout:
            raise SendmailError(f"sendmail needs libraries missing here:\n{r.stdout}")
        r = subprocess.run(self.command("sendmail.cf", "-bd"), env=self.env, text=True,
                           capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise SendmailError(f"sendmail -bd exited {r.returncode}:\n{r.stdout}{r.stderr}")
        try:
            wait_until(lambda: smtp_greets(self.port), 30, "Sendmail's banner")
        except TimeoutError:
            raise SendmailError(f"Sendmail did not answer on 127.0.0.1:{self.port}") from None

    @property
    def pid(self) -> int | None:
        try:
            return int((self.base / "sendmail.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """SIGTERM to the daemon we started (its pid file), SIGKILL if it lingers."""
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        kill_lingering(pid)

    # -- mail ----------------------------------------------------------------------------------
    def send(self, raw: bytes, sender: str = "alice@example.net",
             rcpt: str = f"root@{HOSTNAME}", helo: str = "client.example.net") -> str:
        """One message over SMTP; the queue id from Sendmail's 250 reply (SMTP errors
        propagate)."""
        with smtplib.SMTP("127.0.0.1", self.port, local_hostname=helo, timeout=120) as s:
            s.ehlo()
            code, text = s.mail(sender)
            if code != 250:  # F=T with the milter down: 451 here
                raise smtplib.SMTPSenderRefused(code, text, sender)
            code, text = s.rcpt(rcpt)
            if code != 250:
                raise smtplib.SMTPRecipientsRefused({rcpt: (code, text)})
            # Sendmail refuses bare LF line ends (421 4.5.0, against SMTP smuggling)
            code, text = s.data(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
            if code != 250:
                raise smtplib.SMTPDataError(code, text)
            return text.decode().split()[1]  # "2.0.0 QUEUEID Message accepted for delivery"

    def submit(self, raw: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
        """sendmail(1) as a user or cron runs it: through the submission program."""
        return subprocess.run(self.command("submit.cf", *args), env=self.env, input=raw,
                              capture_output=True, timeout=120)

    def delivered(self) -> list[Delivered]:
        return [Delivered(p, p.read_bytes()) for p in sorted(self.mail.iterdir())]

    def wait_delivered(self, marker: bytes, timeout: float = 30.0) -> Delivered:
        """The delivered message containing `marker` (`id QUEUEID` is in Sendmail's Received)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for d in self.delivered():
                if marker in d.raw:
                    return d
            time.sleep(0.1)
        raise SendmailError(f"{marker!r} not delivered within {timeout}s; the submission "
                            f"program's queue: {self.client_queued()}")

    def wait_relayed(self, marker: bytes, timeout: float = 30.0) -> Delivered:
        """The message containing `marker` as the next hop got it over SMTP (relay=True)."""
        assert self.next_hop is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in sorted(self.next_hop.directory.glob("*.eml")):
                if marker in (raw := p.read_bytes()):
                    return Delivered(p, raw)
            time.sleep(0.1)
        raise SendmailError(f"{marker!r} not relayed within {timeout}s")

    def client_queued(self) -> list[str]:
        """Queue files the submission program kept: mail it could not hand to the daemon
        (qf*), or gave up on (Qf*: "lost", delivered to nobody)."""
        return sorted(p.name for p in self.client_queue.iterdir() if p.name[1:2] == "f")


def make_instance(milter_socket: str, relay: bool = False, port: int = 0,
                  next_hop_port: int = 0) -> SendmailInstance:
    """A started instance whose milter is at `milter_socket` (libmilter's spelling); with
    `relay`, mail for other domains goes out over SMTP to a NextHop. `port` and
    `next_hop_port` (0: a free one) for a bench that must keep to its own ports."""
    require_root()
    unpacked = unpacked_sendmail()
    base = Path(tempfile.mkdtemp(prefix="sb-sendmail-"))
    os.chmod(base, 0o755)  # the submission program (user daemon) reads its config here
    next_hop = NextHop(base / "relayed", next_hop_port) if relay else None
    sm = SendmailInstance(base, unpacked, milter_socket, next_hop)
    sm.write_config(port or free_port())
    try:
        sm.start()
    except BaseException:
        destroy(sm)
        raise
    return sm


def destroy(sm: SendmailInstance) -> None:
    sm.stop()
    if sm.next_hop is not None:
        sm.next_hop.close()
    shutil.rmtree(sm.base, ignore_errors=True)
