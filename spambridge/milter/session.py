"""Per-connection and per-message state. Imports nothing from pymilter, so it is tested
without libmilter; the callbacks feed it, and `finish()` returns the Evaluation (the decision,
and the outcome it came from)."""

from __future__ import annotations

import ipaddress
import logging
import re

from spambridge import defaults
from spambridge.config import MilterConfig
from spambridge.message import Envelope, MessageBuffer, clean
from spambridge.pipeline import Evaluation, Pipeline
from spambridge.verdict import ErrorKind, ScanError, SkipReason

log = logging.getLogger("spambridge")


class Session:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.cfg: MilterConfig = pipeline.config.milter
        self.connected = False  # connect() ran (pymilter skips it for a non-UTF-8 host name)
        self.client_name = ""
        self.client_addr = ""
        self.helo = ""
        self.mta_host = ""
        self.daemon_name = ""
        self.trusted = False
        self.local = False
        self.envelope = Envelope()
        self.buffer: MessageBuffer | None = None
        self.failure: ScanError | None = None
        self.headers_seen = 0

    # connection ------------------------------------------------------------------------------
    def connect(self, hostname: str, addr: str, mta_host: str, daemon_name: str,
                port: int | None = None, client: str = "") -> None:
        """`client` is the MTA's macro `_` ("NAME [ADDR]"): the address when the connect
        call carries none, as for Postfix's smtpd on a unix-domain socket (a content filter's
        reinjection, a local application), which Postfix itself takes for 127.0.0.1."""
        self.connected = True
        self.client_name, self.client_addr = hostname, addr or macro_address(client)
        self.mta_host, self.daemon_name = mta_host, daemon_name
        self.trusted = is_trusted(self.client_addr, self.cfg)
        self.local = is_local_submission(hostname, self.client_addr, port)

    def hello(self, helo: str) -> None:
        self.helo = helo

    # message ---------------------------------------------------------------------------------
    def start_message(self, sender: str, auth_user: str, tls: bool) -> None:
        """MAIL FROM: a new message on this connection; drop whatever the last one left."""
        self.end_message()
        cfg = self.pipeline.config.milter  # a reload applies from the next message,
        if cfg is not self.cfg:  # trusted_networks too, on a connection open across it
            self.cfg = cfg
            self.trusted = is_trusted(self.client_addr, cfg)
        self.envelope = Envelope(
            client_name=self.client_name,
            # no address even in `_` (a unix-domain client, the macro not sent): a process on
            # this host, which Postfix writes as 127.0.0.1 in its Received line; "[]" is no
            # relay to SpamAssassin (UNPARSEABLE_RELAY, and the trust path ends there)
            client_addr=self.client_addr or "127.0.0.1",
            helo=self.helo,
            mta_host=self.mta_host,
            daemon_name=self.daemon_name,
            sender=sender,
            auth_user=auth_user,
            tls=tls,
            local=self.local,
        )
        self.failure = None
        self.headers_seen = 0
        try:
            self.buffer = MessageBuffer(self.cfg.max_scan_size, self.cfg.spool_memory,
                                        self.cfg.spool_dir)
        except OSError as e:
            self.buffer = MessageBuffer(self.cfg.max_scan_size, self.cfg.max_scan_size + 1)
            self.failure = self._spool_failure(e)

    def add_recipient(self, rcpt: str) -> None:
        env = self.envelope
        env.rcpt_count += 1
        if len(env.recipients) < defaults.MAX_RECIPIENTS:  # memory bounded per message
            env.recipients.append(rcpt)

    def set_queue_id(self, qid: str) -> None:
        if qid:
            self.envelope.queue_id = qid

    def add_header(self, name: str, value: bytes) -> None:
        buf = self._buf()
        if not self.headers_seen and is_submitted_hop(self.client_addr, name, value):
            self.envelope.local = True
        self.headers_seen += 1
        buf.add_header(name, value)

    def add_body(self, chunk: bytes) -> bool:
        """False when no more body is wanted (oversize, or the spool failed)."""
        if self.failure is not None:
            return False
        try:
            return self._buf().add_body(chunk)
        except OSError as e:  # spool directory full or not writable: a defined outcome
            self.failure = self._spool_failure(e)
            return False

    def _spool_failure(self, e: OSError) -> ScanError:
        """Named with the spool's directory: a write error ("No space left on device") does not
        say which filesystem, and the database may be on another one."""
        where = self.cfg.spool_dir or "(the temporary directory)"
        return ScanError(ErrorKind.ERROR, "spool", clean(f"spool_dir {where}: {e}", log=True))

    @property
    def skip_reason(self) -> SkipReason | None:
        if self.trusted:
            return SkipReason.TRUSTED
        if self.envelope.auth_user and self.cfg.skip_authenticated:
            return SkipReason.AUTHENTICATED
        return None

    def finish(self) -> Evaluation:
        return self.pipeline.evaluate(self._buf(), self.envelope, self.skip_reason, self.failure)

    def owned_headers(self) -> list[tuple[str, int]]:
        return self._buf().owned_headers()

    @property
    def owned_total(self) -> int:
        """X-Spam-* fields the message came with (owned_headers() may hold fewer)."""
        return self._buf().owned_total

    def subject(self) -> bytes | None:
        return self._buf().header_value("Subject")

    def subject_name(self) -> str:
        """The Subject's field name as the message spells it ("subject", "SUBJECT")."""
        field = self._buf().header_field("Subject")
        return "Subject" if field is None else field[0]

    def end_message(self) -> None:
        if self.buffer is not None:
            self.buffer.close()
            self.buffer = None

    def _buf(self) -> MessageBuffer:
        if self.buffer is None:  # a header without MAIL FROM: the MTA broke protocol; cope
            self.start_message("", "", False)
        assert self.buffer is not None
        return self.buffer


_MACRO_ADDR = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]+)\]")


def macro_address(client: str) -> str:
    """The address in the macro `_` ("localhost [127.0.0.1]", Sendmail's "NAME [IPv6:ADDR]
    (may be forged)"), or ""."""
    m = _MACRO_ADDR.search(client)
    if not m:
        return ""
    try:
        return str(ipaddress.ip_address(m.group(1)))
    except ValueError:
        return ""


def is_local_submission(hostname: str, addr: str, port: int | None) -> bool:
    """Mail Postfix did not receive over SMTP (sendmail(1) via pickup, listed in
    non_smtpd_milters): cleanup emulates the connection as localhost, 127.0.0.1, port 0.
    A TCP client always has a port; smtpd passes it."""
    return hostname == "localhost" and addr == "127.0.0.1" and port == 0


# What Sendmail writes on top of a message it got from sendmail(1) rather than over the network:
# "Received: (from USER@localhost)" (-t, -bm), "Received: from HELO (USER@localhost)" (-bs);
# over TCP the comment is "(NAME [ADDR])".
_SUBMITTED = re.compile(rb"(?:from\s+\S+\s+)?\((?:from\s+)?[^\s()@\[\]]+@localhost\)\s",
                        re.IGNORECASE)


def is_submitted_hop(addr: str, name: str, value: bytes) -> bool:
    """Whether a message's first header shows Sendmail's submission program (submit.cf, the
    MSP) relaying mail submitted with sendmail(1) — cron, mail(1), a script — to the daemon
    over loopback SMTP. Refused, the MSP bounced it to its sender; the bounce, which carries
    the message, was refused too, and the MSP gave up ("lost" queue file in
    /var/spool/mqueue-client). Only a loopback client is believed."""
    return (name.lower() == "received" and _SUBMITTED.match(value.lstrip()) is not None
            and _loopback(addr))


def _loopback(addr: str) -> bool:
    ip = _client_ip(addr)
    return ip is not None and ip.is_loopback


def _client_ip(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client's address as the MTA gave it, a mapped IPv4 one as IPv4, without a zone id;
    None when there is none or it does not parse."""
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_trusted(addr: str, cfg: MilterConfig) -> bool:
    if not addr or not cfg.trusted_networks:
        return False
    ip = _client_ip(addr)
    return ip is not None and any(ip in net for net in cfg.trusted_networks)
