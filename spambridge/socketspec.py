"""libmilter socket specs (`unix:/path`, `local:/path`, `inet:PORT@HOST`, `inet6:PORT@HOST`).

Note the milter side writes `inet:PORT@HOST`; Postfix's own side is `inet:HOST:PORT`.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import re
import socket
import stat
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class SocketSpec:
    family: str  # "unix", "inet" or "inet6"
    path: str = ""
    host: str = ""
    port: int = 0

    @property
    def libmilter(self) -> str:
        """The spec in the form smfi_setconn wants."""
        if self.family == "unix":
            return f"unix:{self.path}"
        return f"{self.family}:{self.port}@{self.host}"

    @property
    def postfix(self) -> str:
        """How Postfix's smtpd_milters would name the same socket."""
        if self.family == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.family == "inet6" else self.host
        return f"inet:{host}:{self.port}"


MAX_UNIX_PATH = 107  # sizeof(sun_path) on Linux, less the terminating NUL


def parse_socket_spec(spec: str) -> SocketSpec:
    """Parse and check a spec; raise ValueError saying what a valid one looks like."""
    m = re.fullmatch(r"(unix|local):(/.+)", spec)
    if m:
        if len(os.fsencode(m.group(2))) > MAX_UNIX_PATH:
            raise ValueError(f"{spec!r}: a unix socket path may be at most {MAX_UNIX_PATH} "
                             "bytes long (the kernel's sun_path)")
        if m.group(2).rsplit("/", 1)[1] in ("", ".", ".."):  # run: "exists and is not a socket"
            raise ValueError(f"{spec!r}: the path must end in the socket's file name, not name "
                             "a directory")
        return SocketSpec("unix", path=m.group(2))
    m = re.fullmatch(r"(inet6?):(\d+)(?:@(.+))?", spec)
    if m:
        family, port_s, host = m.group(1), m.group(2), m.group(3)
        port = int(port_s)
        if not 0 < port < 65536:
            raise ValueError(f"{spec!r}: port must be 1-65535")
        host = host or ("::1" if family == "inet6" else "127.0.0.1")
        if family == "inet" and ":" in host:  # no AF_INET lookup finds it: libmilter's exit 1
            raise ValueError(f"{spec!r}: {host!r} is not an IPv4 address or host name (an IPv6 "
                             "address is inet6:PORT@ADDR; the port goes before the @)")
        if family == "inet" and host.startswith("["):
            # libmilter takes a numeric address in brackets, never a name ("Invalid numeric
            # domain spec"); without them it is the same address, and looked up here as well
            try:
                if not host.endswith("]"):
                    raise ValueError(host)
                host = str(ipaddress.IPv4Address(host[1:-1]))
            except ValueError:
                raise ValueError(f"{spec!r}: an address in brackets must be an IPv4 address "
                                 "(inet:PORT@[10.0.0.1]; a host name goes without them)"
                                 ) from None
        if family == "inet6":
            host = host.strip("[]")
            if "%" in host:  # looked up as a name by libmilter: "Unknown host name", exit 1
                raise ValueError(f"{spec!r}: libmilter takes no interface "
                                 f"(%{host.partition('%')[2]}) after an address, so it cannot "
                                 "listen on a link-local one: give another address of this host")
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"{spec!r}: inet6 needs an IPv6 address") from None
        return SocketSpec(family, host=host, port=port)
    raise ValueError(
        f"{spec!r} is not a socket spec: use unix:/absolute/path, inet:PORT@HOST or inet6:PORT@ADDR"
    )


def listen_address(spec: SocketSpec) -> tuple[socket.AddressFamily, Any]:
    """The family and address a TCP spec listens on, its host looked up as libmilter looks it
    up; OSError for one that does not resolve (libmilter: "Unknown host name")."""
    family = socket.AF_INET6 if spec.family == "inet6" else socket.AF_INET
    try:
        info = socket.getaddrinfo(spec.host, spec.port, family, socket.SOCK_STREAM)[0]
    except UnicodeError:  # a name DNS cannot carry ("a..b"): Python's IDNA codec refuses it
        raise OSError(f"{spec.host!r} is not a host name") from None
    return info[0], info[4]


class InTheWay(OSError):
    """A file that is not a socket at the socket's path: lasting, the admin's to move."""


def remove_stale_unix_socket(path: str) -> None:
    """Remove a leftover socket file, refusing to delete anything that is not a socket,
    or a socket another process still listens on."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise InTheWay(f"{path} exists and is not a socket; refusing to remove it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(path)
    except (BlockingIOError, TimeoutError):
        pass  # its accept queue is full (EAGAIN at once on a unix socket): it is listening
    except OSError as refused:
        try:
            os.unlink(path)  # nobody is listening: stale
        except FileNotFoundError:
            pass  # gone meanwhile
        except OSError as e:
            if not isinstance(e, PermissionError) and e.errno != errno.EROFS:
                raise
            # lasting (a directory this user may not write, a read-only mount): the admin's
            # to remove, as a file in the way is; exit 1 had systemd retry it every 2 s
            where = os.path.dirname(path) or "."
            if isinstance(refused, PermissionError):  # its mode: a milter may listen on it
                raise InTheWay(f"{path} is a socket this user may neither connect to nor "
                               f"remove ({refused.strerror}): if no milter listens on it, "
                               f"remove it, and let the milter's user write {where}") from None
            raise InTheWay(f"{path} is a stale socket (nothing listens on it) this user may "
                           f"not remove: {e.strerror}; remove it, and let the milter's user "
                           f"write {where}") from None
        return
    finally:
        probe.close()
    raise OSError(f"{path} is in use by another running milter")


def find_listener(spec: SocketSpec) -> int | None:
    """libmilter's listening descriptor, found by its bound address (libmilter keeps it to
    itself); None once libmilter has closed it. Found without touching any descriptor (see
    stream_inodes): the nudger looks from its own thread while libmilter serves."""
    inodes = stream_inodes(spec, listening=True)
    if inodes:
        for name in os.listdir("/proc/self/fd"):
            if socket_inode(int(name)) in inodes:
                return int(name)
    return None


def socket_inode(fd: int) -> int | None:
    """The inode of the socket descriptor `fd` is, from its /proc link ("socket:[N]"); None
    for anything else or a closed number."""
    try:
        link = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return int(link[8:-1]) if link.startswith("socket:[") else None


_ACCEPTCON = 0x10000  # /proc/net/unix's Flags of a listening socket (__SO_ACCEPTCON)
_TCP_LISTEN = "0A"  # /proc/net/tcp's st of a listening socket


def stream_inodes(spec: SocketSpec, listening: bool) -> set[int]:
    """Inodes of the stream sockets on `spec`'s address, from the kernel's tables in /proc/net:
    its listener (`listening`), or the sessions accepted on it (on unix, an accepted socket
    shows its listener's path; on inet, its local port). Match them with socket_inode(): the
    descriptors themselves are libmilter's, in use by its threads, and their numbers may be
    reused at any moment. Wrapping one in socket.socket(fileno=...) set O_NONBLOCK on it
    whenever socket.setdefaulttimeout() had been called, and closed it if that failed.
    OSError when the table cannot be opened (at RLIMIT_NOFILE)."""
    out: set[int] = set()
    if spec.family == "unix":
        path = os.fsencode(spec.path)
        with open("/proc/net/unix", "rb") as f:
            next(f, None)  # Num RefCount Protocol Flags Type St Inode Path
            for line in f:
                fields = line.rstrip(b"\n").split(None, 7)
                with contextlib.suppress(ValueError):
                    if (len(fields) == 8 and fields[7] == path and fields[4] == b"0001"
                            and bool(int(fields[3], 16) & _ACCEPTCON) == listening):
                        out.add(int(fields[6]))
        return out
    with open("/proc/net/tcp6" if spec.family == "inet6" else "/proc/net/tcp") as t:
        next(t, None)  # sl local_address rem_address st ... uid timeout inode
        for row in t:
            cols = row.split()
            with contextlib.suppress(ValueError, IndexError):
                if (int(cols[1].rsplit(":", 1)[1], 16) == spec.port
                        and (cols[3] == _TCP_LISTEN) == listening):
                    out.add(int(cols[9]))
    return out
