"""A spamd stand-in that can be switched between healthy and each fault a real spamd can't
be made to produce on demand (hanging, garbage, a byte a second, dying mid-reply).

It reads the whole request first (by Content-length), as spamd does, so every fault happens
where it would in production: after the milter has sent the message. Every wait is bounded,
and `close()` ends all of them. No pytest here: the bench scripts use it too.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable

MODES = ("good", "slow", "hang", "garbage", "trickle", "flood", "die_mid_reply",
         "die_before_reply", "reset_before_reply", "reset_mid_reply", "hostile_symbols")


def spamd_reply(score: float = 1.5, threshold: float = 5.0, symbols: bytes = b"SYM_A,SYM_B",
                spam: bool | None = None) -> bytes:
    """A well-formed SYMBOLS reply."""
    flag = (score >= threshold) if spam is None else spam
    return (b"SPAMD/1.1 0 EX_OK\r\nContent-length: %d\r\nSpam: %s ; %.1f / %.1f\r\n\r\n"
            % (len(symbols), b"True" if flag else b"False", score, threshold)) + symbols


GOOD = spamd_reply()
# Rule names a compromised or buggy spamd could send: CR/LF to start a new header, NUL, other
# control bytes, 8-bit bytes, a header-looking line, an endless name.
HOSTILE_SYMBOLS = (
    b"OK_RULE,EVIL\r\nX-Spam-Flag: NO,\r\nInjected: yes,TAB\tRULE,NUL\x00RULE,"
    b"ESC\x1b[31mRULE,LATIN\xe9RULE,BELL\x07,%s,%%n%%s,"
    b"\r\n\r\nBody: starts here,LAST_OK" % (b"A" * 5000)
)


class SwitchableSpamd:
    """A TCP server on 127.0.0.1 whose `mode` decides what every new request gets."""

    def __init__(self, mode: str = "good", port: int = 0, delay: float = 0.5,
                 reply: bytes = GOOD, listen: bool = True) -> None:
        if mode not in MODES:
            raise ValueError(mode)
        self.mode = mode
        self.delay = delay  # "slow": seconds before a good reply
        self.reply = reply
        self.port = port
        self.requests = 0
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        if listen:
            self.listen()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def listen(self) -> SwitchableSpamd:
        """Start accepting (a "down" spamd is one made with listen=False, started later)."""
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(1024)
        s.settimeout(0.2)
        self.port = int(s.getsockname()[1])
        self._sock = s
        self._thread = threading.Thread(target=self._serve, name="fake-spamd", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        assert self._sock is not None
        while not self.stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            if read_spamc_request(conn):
                with self._lock:
                    self.requests += 1
                BEHAVIOURS[self.mode](self, conn)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def sleep(self, seconds: float) -> None:
        """A bounded wait that `close()` cuts short."""
        self.stopping.wait(seconds)

    def close(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(2)
        if self._sock is not None:
            self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.close()


def read_spamc_request(conn: socket.socket, limit: float = 10.0) -> bytes:
    """Read one spamc request (headers, then Content-length bytes, which are discarded);
    its head, or b"" on EOF or timeout."""
    conn.settimeout(limit)
    data = bytearray()
    try:
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return b""
            data += chunk
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        got = len(body)
        while got < length:  # bodies can be 20 MB: count, don't keep
            chunk = conn.recv(1 << 20)
            if not chunk:
                return b""
            got += len(chunk)
    except (OSError, ValueError):
        return b""
    return head + b"\r\n\r\n"


def _good(srv: SwitchableSpamd, conn: socket.socket) -> None:
    conn.sendall(srv.reply)


def _slow(srv: SwitchableSpamd, conn: socket.socket) -> None:
    srv.sleep(srv.delay)
    conn.sendall(srv.reply)


def _hang(srv: SwitchableSpamd, conn: socket.socket) -> None:
    srv.sleep(120)


def _garbage(srv: SwitchableSpamd, conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>\x00\xff</html>")


def _flood(srv: SwitchableSpamd, conn: socket.socket) -> None:
    """A status line, then header lines without end (a port that is not spamd, a broken
    proxy): at most about 11 MB, until the reader hangs up."""
    conn.sendall(b"SPAMD/1.1 0 EX_OK\r\n")
    lines = (b"X-Junk: " + b"a" * 100 + b"\r\n") * 100
    for _ in range(1000):
        if srv.stopping.is_set():
            return
        try:
            conn.sendall(lines)
        except OSError:
            return


def _trickle(srv: SwitchableSpamd, conn: socket.socket) -> None:
    for b in srv.reply:
        if srv.stopping.is_set():
            return
        conn.sendall(bytes([b]))
        srv.sleep(1.0)


def _die_mid_reply(srv: SwitchableSpamd, conn: socket.socket) -> None:
    """Half a reply, then the process is gone: the kernel closes the socket (FIN)."""
    conn.sendall(srv.reply[: len(srv.reply) // 2])


def _die_before_reply(srv: SwitchableSpamd, conn: socket.socket) -> None:
    """The request read, then the child is gone without a byte (spamd stopped, or reloading:
    Debian's daily sa-update does): the socket closes (FIN) with no reply."""


def _reset_before_reply(srv: SwitchableSpamd, conn: socket.socket) -> None:
    """A reset with no reply, as spamd closing at once on a host its --allowed-ips does not
    list (our request still unread there)."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _reset_mid_reply(srv: SwitchableSpamd, conn: socket.socket) -> None:
    """Half a reply, then a reset (RST), as when a killed child still had unread input."""
    conn.sendall(srv.reply[: len(srv.reply) // 2])
    time.sleep(0.01)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _hostile_symbols(srv: SwitchableSpamd, conn: socket.socket) -> None:
    conn.sendall(spamd_reply(6.0, 5.0, HOSTILE_SYMBOLS))


BEHAVIOURS: dict[str, Callable[[SwitchableSpamd, socket.socket], None]] = {
    "good": _good,
    "slow": _slow,
    "hang": _hang,
    "garbage": _garbage,
    "trickle": _trickle,
    "flood": _flood,
    "die_mid_reply": _die_mid_reply,
    "die_before_reply": _die_before_reply,
    "reset_before_reply": _reset_before_reply,
    "reset_mid_reply": _reset_mid_reply,
    "hostile_symbols": _hostile_symbols,
}


class BlackHole:
    """A spamd host that is off or firewalled, on loopback: a listening socket that never
    accepts, its accept queue filled (listen(0) holds one connection), so the kernel drops
    every further SYN and a connect waits out its timeout, as to a dead host. An unroutable
    address would do the same off this machine; tests stay on 127.0.0.1."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = int(self.sock.getsockname()[1])
        self._fill: list[socket.socket] = []
        for _ in range(8):  # bounded: the queue is full after one or two
            if not self.accepts_within(0.2):
                return
        self.close()
        raise RuntimeError("a listen(0) socket kept completing connections")

    def accepts_within(self, seconds: float) -> bool:
        """Whether a connection completes within `seconds` (it is kept: it fills the queue)."""
        c = socket.socket()
        c.settimeout(seconds)
        try:
            c.connect(("127.0.0.1", self.port))
        except OSError:
            c.close()
            return False
        self._fill.append(c)
        return True

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        for c in self._fill:
            c.close()
        self.sock.close()
