"""A throwaway real Postfix for end-to-end tests.

Its own config and queue directories under a temp dir, `postfix -c DIR start` as root, smtpd on
127.0.0.1 on a free port, chroot = n, virtual(8) delivery into a Maildir the test reads (erin's
mail into a second one: a message for two users of the site is two mailboxes' copies), and the
milter settings taken verbatim from contrib/postfix/main.cf.example (so the tests check what the
README tells admins to do). The system Postfix's config is never read or touched.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import grp
import os
import pwd
import re
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from harness import kill_lingering, smtp_greets, wait_until

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "contrib" / "postfix" / "main.cf.example"
MILTER_DIR = "spambridge"  # under the queue directory, as in the example
MILTER_SOCKET = f"{MILTER_DIR}/spambridge.sock"
POSTFIX = "/usr/sbin/postfix"

MASTER_CF = """\
# service       type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:{port} inet n       -       n       -       -       smtpd
# smtpd on a unix-domain socket (public/smtpu), as a content filter reinjects or a local
# application submits: Postfix hands milters no address for such a client
smtpu           unix  n       -       n       -       -       smtpd
pickup          unix  n       -       n       60      1       pickup
cleanup         unix  n       -       n       -       0       cleanup
qmgr            unix  n       -       n       300     1       qmgr
rewrite         unix  -       -       n       -       -       trivial-rewrite
bounce          unix  -       -       n       -       0       bounce
defer           unix  -       -       n       -       0       bounce
trace           unix  -       -       n       -       0       bounce
verify          unix  -       -       n       -       1       verify
flush           unix  n       -       n       1000?   0       flush
proxymap        unix  -       -       n       -       -       proxymap
showq           unix  n       -       n       -       -       showq
error           unix  -       -       n       -       -       error
retry           unix  -       -       n       -       -       error
discard         unix  -       -       n       -       -       discard
virtual         unix  -       n       n       -       -       virtual
lmtp            unix  -       -       n       -       -       lmtp
anvil           unix  -       -       n       -       1       anvil
scache          unix  -       -       n       -       1       scache
postlog         unix-dgram n  -       n       -       1       postlogd
"""

MAIN_CF = """\
# throwaway test instance; nothing here touches /etc/postfix
compatibility_level = 3.6
queue_directory = {spool}
data_directory = {data}
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file_prefixes = {base}
maillog_file = {base}/maillog
syslog_name = postfix-spambridge-test
myhostname = mx.test.example
mydomain = test.example
myorigin = $mydomain
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtputf8_enable = no
biff = no
alias_maps =
alias_database =
relayhost =
default_transport = error:this test instance delivers nowhere else
virtual_mailbox_domains = test.example
virtual_mailbox_base = {mail}
virtual_mailbox_maps = inline:{{erin@test.example=erin/}} static:inbox/
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}

# ---- contrib/postfix/main.cf.example, verbatim ----
{example}
"""


def example_settings() -> dict[str, str]:
    """The parameters contrib/postfix/main.cf.example sets (continuation lines joined)."""
    out: dict[str, str] = {}
    key = ""
    for line in EXAMPLE.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and key:
            out[key] += " " + line.strip()
            continue
        key, _, value = line.partition("=")
        key = key.strip()
        out[key] = value.strip()
    return out


class PostfixError(RuntimeError):
    pass


@dataclass
class Attempt:
    """What one SMTP client saw: the step its session ended at and the reply it got there."""
    step: str  # "connect", "ehlo", "mail", "rcpt", "data" or "end of data"
    code: int | None  # None: the connection failed or was dropped
    text: str
    seconds: float
    queue_id: str | None = None

    @property
    def seen(self) -> str:
        """"250", "451 4.7.1 at mail", "no reply at ehlo (SMTPServerDisconnected: …)"."""
        if self.code is None:
            return f"no reply at {self.step} ({self.text[:50]})"
        if self.code == 250:
            return "250"
        return f"{self.code} {self.text.split(' ', 1)[0]} at {self.step}"


@dataclass
class Delivered:
    path: Path
    raw: bytes

    @property
    def msg(self) -> EmailMessage:
        m = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(m, EmailMessage)
        return m

    def all(self, name: str) -> list[str]:
        return [str(v) for v in self.msg.get_all(name) or []]


class PostfixInstance:
    """One Postfix master with its own config dir, queue dir, Maildir and log file."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.etc = base / "etc"
        self.spool = base / "spool"
        self.data = base / "data"
        self.mail = base / "mail"
        self.maillog = base / "maillog"
        self.port = 0
        self.milter_socket = self.spool / MILTER_SOCKET

    # -- lifecycle ---------------------------------------------------------------------------
    def write_config(self, port: int, extra: str = "") -> None:
        nobody = pwd.getpwnam("nobody")
        for d in (self.etc, self.spool, self.data, self.mail):
            d.mkdir(parents=True, exist_ok=True)
        os.chown(self.mail, nobody.pw_uid, nobody.pw_gid)
        os.chown(self.data, pwd.getpwnam("postfix").pw_uid, -1)
        # the socket directory, as the .deb's tmpfiles.d creates it: setgid group postfix
        sockdir = self.spool / MILTER_DIR
        sockdir.mkdir(exist_ok=True)
        os.chown(sockdir, 0, grp.getgrnam("postfix").gr_gid)
        os.chmod(sockdir, 0o2750)
        self.port = port
        (self.etc / "master.cf").write_text(MASTER_CF.format(port=port))
        (self.etc / "main.cf").write_text(MAIN_CF.format(
            spool=self.spool, data=self.data, base=self.base, mail=self.mail,
            uid=nobody.pw_uid, gid=nobody.pw_gid, example=EXAMPLE.read_text()) + extra)

    def postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([POSTFIX, "-c", str(self.etc), *args], capture_output=True,
                           text=True, timeout=60, stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise PostfixError(f"postfix {' '.join(args)} exited {r.returncode}:\n"
                               f"{r.stdout}{r.stderr}{self._tty_diagnosis(args)}\n"
                               f"{self.log[-3000:]}")
        return r

    def _tty_diagnosis(self, args: tuple[str, ...]) -> str:
        """postfix(1) reports fatal errors only to syslog or a terminal; rerun under script(1)
        to get the reason into the test failure."""
        if args != ("check",) and not shutil.which("script"):
            return ""
        cmd = " ".join([POSTFIX, "-c", str(self.etc), "check"])
        r = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL)
        return r.stdout

    def postconf(self, *args: str) -> str:
        r = subprocess.run(["/usr/sbin/postconf", "-c", str(self.etc), *args],
                           capture_output=True, text=True, timeout=30, check=True)
        return r.stdout

    def start(self) -> None:
        self.postfix("start")
        try:
            wait_until(lambda: smtp_greets(self.port), 30, "Postfix's banner")
        except TimeoutError:
            raise PostfixError(f"Postfix did not answer on 127.0.0.1:{self.port}\n"
                               f"{self.log[-3000:]}") from None

    @property
    def master_pid(self) -> int | None:
        try:
            return int((self.spool / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """`postfix -c DIR stop`; if the master we started lingers, SIGKILL that PID only."""
        pid = self.master_pid
        self.postfix("stop", check=False)
        if pid is None:
            return
        kill_lingering(pid)

    # -- mail ----------------------------------------------------------------------------------
    def smtp(self) -> smtplib.SMTP:
        s = smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.example.net", timeout=60)
        s.ehlo()
        return s

    def send(self, raw: bytes, sender: str = "alice@example.net",
             rcpt: str = "bob@test.example") -> str:
        """Send one message; the queue id from Postfix's 250 reply (SMTP errors propagate)."""
        with self.smtp() as s:
            return _transaction(s, raw, sender, rcpt)

    def attempt(self, raw: bytes, sender: str = "alice@example.net",
                rcpt: str = "bob@test.example", timeout: float = 60.0) -> Attempt:
        """One SMTP session sending `raw` as far as Postfix lets it go, and what it got: for
        sessions that may be refused or deferred at any step (send() raises instead)."""
        t0 = time.monotonic()
        step = "connect"

        def ended(code: int | None, text: bytes | str) -> Attempt:
            t = text.decode(errors="replace") if isinstance(text, bytes) else text
            queued = re.search(r"queued as ([0-9A-F]+)", t) if code == 250 else None
            return Attempt(step, code, " ".join(t.split()), round(time.monotonic() - t0, 1),
                           queued[1] if queued else None)

        try:
            with smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.example.net",
                              timeout=timeout) as s:
                step = "ehlo"
                code, text = s.ehlo()
                if code == 250:
                    step = "mail"
                    code, text = s.mail(sender)
                if code == 250:
                    step = "rcpt"
                    code, text = s.rcpt(rcpt)
                if code != 250:
                    return ended(code, text)
                step = "data"
                try:
                    code, text = s.data(raw)
                except smtplib.SMTPDataError as e:
                    return ended(e.smtp_code, e.smtp_error)
                step = "end of data"
                return ended(code, text)
        except smtplib.SMTPResponseException as e:  # the banner, or 421 at any step
            return ended(e.smtp_code, e.smtp_error)
        except (OSError, smtplib.SMTPException) as e:
            return ended(None, f"{type(e).__name__}: {e}")

    def send_unix(self, raw: bytes, helo: str = "client.example.net",
                  sender: str = "alice@example.net", rcpt: str = "bob@test.example") -> str:
        """send() through the smtpd on the unix-domain socket public/smtpu."""
        s = smtplib.SMTP(local_hostname=helo, timeout=60)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(60)
        sock.connect(str(self.spool / "public" / "smtpu"))
        s.sock = sock
        code, text = s.getreply()
        if code != 220:
            raise smtplib.SMTPConnectError(code, text)
        with s:
            s.ehlo()
            return _transaction(s, raw, sender, rcpt)

    def sendmail(self, raw: bytes, sender: str, rcpt: str = "bob@test.example") -> None:
        """Submit as cron or a web app does: this instance's sendmail(1), so the message comes in
        through pickup/cleanup and meets non_smtpd_milters, not smtpd_milters."""
        subprocess.run(["/usr/sbin/sendmail", "-C", str(self.etc), "-f", sender, rcpt],
                       input=raw, capture_output=True, timeout=60, check=True)

    def _daemons(self) -> set[int]:
        """The PIDs of the master's children (smtpd, cleanup, pickup, ...) now."""
        master = self.master_pid
        found = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                found.add(int(entry))
        return found

    def reload(self) -> None:
        """`postfix reload`, returning once no daemon of the old configuration is left.
        postfix(1) returns when it has signalled the master, which then tells its daemons
        to exit: in between, a pickup and a cleanup of the old configuration took a local
        submission made right after and ran it past non_smtpd_milters unset (seen once in
        CI on a loaded host)."""
        old = self._daemons()
        self.postfix("reload")
        wait_until(lambda: not old & self._daemons(), 30,
                   "Postfix's daemons of the old configuration to exit")

    @contextlib.contextmanager
    def main_cf(self, **params: str) -> Iterator[None]:
        """main.cf with `params` set for the block (postconf -e, reload), then as it was."""
        before = (self.etc / "main.cf").read_text()
        self.postconf("-e", *(f"{k}={v}" for k, v in params.items()))
        self.reload()
        try:
            yield
        finally:
            (self.etc / "main.cf").write_text(before)
            self.reload()

    def delivered(self, mailbox: str = "inbox") -> list[Delivered]:
        new = self.mail / mailbox / "new"
        if not new.is_dir():
            return []
        return [Delivered(p, p.read_bytes()) for p in sorted(new.iterdir())]

    def wait_delivered(self, queue_id: str, timeout: float = 30.0, mailbox: str = "inbox"
                       ) -> Delivered:
        """The message delivered into `mailbox` whose Received header names `queue_id`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for d in self.delivered(mailbox):
                if f"id {queue_id}".encode() in d.raw:
                    return d
            time.sleep(0.1)
        raise PostfixError(f"{queue_id} not delivered within {timeout}s\n{self.log[-3000:]}")

    @property
    def log(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except OSError:
            return ""

    def log_lines(self, queue_id: str) -> list[str]:
        return [line for line in self.log.splitlines() if queue_id in line]


def _transaction(s: smtplib.SMTP, raw: bytes, sender: str, rcpt: str) -> str:
    """MAIL, RCPT, DATA on a greeted connection; the queue id from Postfix's 250 reply."""
    s.mail(sender)
    code, text = s.rcpt(rcpt)
    if code != 250:
        raise smtplib.SMTPRecipientsRefused({rcpt: (code, text)})
    code, text = s.data(raw)
    if code != 250:
        raise smtplib.SMTPDataError(code, text)
    return text.decode().rsplit(" ", 1)[-1]


def require_root_and_postfix() -> None:
    """CI is root and installs Postfix: anything else is a broken setup, not a reason to skip."""
    if os.geteuid() != 0:
        raise PostfixError("the Postfix end-to-end tests must run as root (postfix -c DIR start "
                           "needs it); run them through scripts/test as root")
    if not os.path.exists(POSTFIX):
        raise PostfixError("Postfix is not installed: run scripts/setup --test")


def make_instance(port: int) -> PostfixInstance:
    require_root_and_postfix()
    base = Path(tempfile.mkdtemp(prefix="sb-postfix-"))
    os.chmod(base, 0o755)  # Postfix daemons (user postfix) must reach the queue directory
    pf = PostfixInstance(base)
    pf.write_config(port)
    try:
        pf.start()
    except BaseException:
        pf.stop()
        raise
    return pf


def destroy(pf: PostfixInstance) -> None:
    pf.stop()
    shutil.rmtree(pf.base, ignore_errors=True)
