"""libmilter socket specs (`unix:/path`, `local:/path`, `inet:PORT@HOST`, `inet6:PORT@HOST`).

Note the milter side writes `inet:PORT@HOST`; Postfix's own side is `inet:HOST:PORT`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import stat
from dataclasses import dataclass


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
        return SocketSpec("unix", path=m.group(2))
    m = re.fullmatch(r"(inet6?):(\d+)(?:@(.+))?", spec)
    if m:
        family, port_s, host = m.group(1), m.group(2), m.group(3)
        port = int(port_s)
        if not 0 < port < 65536:
            raise ValueError(f"{spec!r}: port must be 1-65535")
        host = host or ("::1" if family == "inet6" else "127.0.0.1")
        if family == "inet6":
            host = host.strip("[]")
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"{spec!r}: inet6 needs an IPv6 address") from None
        return SocketSpec(family, host=host, port=port)
    raise ValueError(
        f"{spec!r} is not a socket spec: use unix:/absolute/path, inet:PORT@HOST or inet6:PORT@ADDR"
    )


def remove_stale_unix_socket(path: str) -> None:
    """Remove a leftover socket file, refusing to delete anything that is not a socket,
    or a socket another process still listens on."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket; refusing to remove it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(path)
    except (BlockingIOError, TimeoutError):
        pass  # its accept queue is full (EAGAIN at once on a unix socket): it is listening
    except OSError:
        os.unlink(path)  # nobody is listening: stale
        return
    finally:
        probe.close()
    raise OSError(f"{path} is in use by another running milter")


def find_listener(spec: SocketSpec) -> int | None:
    """libmilter's listening descriptor, found by its bound address (libmilter keeps it to
    itself); None once libmilter has closed it."""
    fam = {"unix": socket.AF_UNIX, "inet": socket.AF_INET, "inet6": socket.AF_INET6}[spec.family]
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            # the descriptor itself, not a dup: on a file or pipe the constructor fails and
            # never closes what it was given (a dup leaked there, one per file per lookup)
            s = socket.socket(fileno=fd)
        except OSError:
            continue
        try:
            if (s.family != fam or s.type != socket.SOCK_STREAM
                    or not s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
                continue  # an accepted session has the listener's address too
            addr = s.getsockname()
            if (addr == spec.path) if spec.family == "unix" else (addr[1] == spec.port):
                return fd
        except OSError:
            continue
        finally:
            s.detach()  # libmilter's (or anyone's) descriptor: never closed here
    return None
