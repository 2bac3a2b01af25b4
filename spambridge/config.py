"""TOML → frozen, validated config.

Every mistake is reported as `file:line: [section] key: what is wrong` before any socket opens:
an admin fixing a config at 3 a.m. should not have to guess.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from spambridge import defaults
from spambridge.verdict import FailAction, SmtpReply

ENGINES = ("bayes", "spamd", "spamd+bayes")
LOG_LEVELS = ("debug", "info", "warning", "error")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")
U = TypeVar("U")


class ConfigError(Exception):
    """A config problem, already phrased for the admin (file, line, key)."""


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Score bands of one engine: below `ham` accept, from `tag` tag, above `reject` reject."""

    ham: float
    tag: float
    reject: float


REJECT_REPLY = SmtpReply(*defaults.REJECT_REPLY.split(" ", 2))
TEMPFAIL_REPLY = SmtpReply(*defaults.TEMPFAIL_REPLY.split(" ", 2))
UNCHECKED_REJECT_REPLY = SmtpReply(*defaults.UNCHECKED_REJECT_REPLY.split(" ", 2))
FAIL_ACTION = FailAction(defaults.FAIL_ACTION)  # each failure class's, unless set


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    spamd: Thresholds = Thresholds(defaults.TAG_AT, defaults.TAG_AT, defaults.REJECT_AT)
    bayes: Thresholds = Thresholds(
        defaults.HAM_CUTOFF, defaults.SPAM_CUTOFF, defaults.REJECT_CUTOFF
    )
    tag_only: bool = False
    subject_tag: str = ""
    reject_reply: SmtpReply = REJECT_REPLY
    tempfail_reply: SmtpReply = TEMPFAIL_REPLY
    unchecked_reject_reply: SmtpReply = UNCHECKED_REJECT_REPLY
    on_unavailable: FailAction = FAIL_ACTION
    on_timeout: FailAction = FAIL_ACTION
    on_oversize: FailAction = FAIL_ACTION
    on_error: FailAction = FAIL_ACTION

    def on(self, key: str) -> FailAction:
        """The failure action named by a policy key such as `on_timeout`."""
        value: FailAction = getattr(self, key)
        return value


@dataclass(frozen=True, slots=True)
class MilterConfig:
    socket: str = defaults.SOCKET
    socket_mode: int = defaults.SOCKET_MODE
    socket_group: str = ""
    name: str = defaults.MILTER_NAME
    engine: str = defaults.ENGINE
    scan_timeout: float = defaults.SCAN_TIMEOUT
    max_scan_size: int = defaults.MAX_SCAN_SIZE
    spool_memory: int = defaults.SPOOL_MEMORY
    spool_dir: str = ""
    skip_authenticated: bool = defaults.SKIP_AUTHENTICATED
    trusted_networks: tuple[Network, ...] = ()
    user: str = ""


@dataclass(frozen=True, slots=True)
class SpamdConfig:
    host: str = defaults.SPAMD_HOST
    port: int = defaults.SPAMD_PORT
    socket: str = ""  # a unix socket path; wins over host/port
    tls: bool = False
    ca_file: str = ""
    user: str = ""  # fixed spamd user; empty = spamd's default
    # the spamd user for mail to exactly one recipient: "" = [spamd] user; "address" = the
    # recipient; "local-part" = its local part in lower case (spamass-milter -u)
    per_recipient_user: str = ""
    connect_timeout: float = defaults.SPAMD_CONNECT_TIMEOUT
    share: float = defaults.SPAMD_SHARE
    # a pool of spamd servers as spamc -d host1,host2 takes it: tried in this order, the next
    # only when a connection fails; empty = the one at host/port (or socket)
    servers: tuple[tuple[str, int], ...] = ()

    @property
    def pool(self) -> tuple[tuple[str, int], ...]:
        """The TCP servers to try, in order: `servers`, or host/port alone."""
        return self.servers or ((self.host, self.port),)


@dataclass(frozen=True, slots=True)
class BayesConfig:
    db: str = defaults.BAYES_DB
    min_trained: int = defaults.BAYES_MIN_TRAINED
    max_bytes: int = defaults.BAYES_MAX_BYTES
    max_tokens: int = defaults.BAYES_MAX_TOKENS


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """The Prometheus endpoint; `listen` empty = off."""

    listen: str = ""
    host: str = ""
    port: int = 0


@dataclass(frozen=True, slots=True)
class Config:
    milter: MilterConfig = field(default_factory=MilterConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    spamd: SpamdConfig = field(default_factory=SpamdConfig)
    bayes: BayesConfig = field(default_factory=BayesConfig)
    log_level: str = "info"
    source: str = "<defaults>"
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    flags: tuple[str, ...] = ()  # "[bayes] db"-style keys a command-line flag set (key_at)


# [milter] keys a running milter was built with: the engine (and its clients), the socket, its
# mode and group, the user it runs as, the cap its clients were given, the name libmilter
# registered ([spamd], [bayes], [metrics] and [log] level are kept whole by reloaded())
RESTART_ONLY = ("engine", "socket", "socket_mode", "socket_group", "user", "scan_timeout",
                "name")


def reloaded(running: Config, new: Config) -> tuple[Config, list[str]]:
    """The config a reload (SIGUSR1) applies: `new`, but with what only a restart can change
    kept as it runs — so nothing half-applies (a cap the spamd client does not know) — and
    the keys the file changes there, for a warning."""
    changed = [f"[milter] {k}" for k in RESTART_ONLY
               if getattr(new.milter, k) != getattr(running.milter, k)]
    for section in ("spamd", "bayes"):
        old, fresh = getattr(running, section), getattr(new, section)
        changed += [f"[{section}] {f}" for f in old.__dataclass_fields__
                    if getattr(fresh, f) != getattr(old, f)]
    if new.metrics != running.metrics:
        changed.append("[metrics] listen")
    if new.log_level != running.log_level:
        changed.append("[log] level")  # logging is set up once, at start
    kept = replace(new.milter, **{k: getattr(running.milter, k) for k in RESTART_ONLY})
    return replace(new, milter=kept, spamd=running.spamd, bayes=running.bayes,
                   metrics=running.metrics, log_level=running.log_level), changed


# ---------------------------------------------------------------------------------------------
# value parsers (pure; raise ValueError with a short reason)


def parse_reply(text: str, klass: str) -> SmtpReply:
    """`"550 5.7.1 text"` → SmtpReply; the code must be of the given class (4 or 5)."""
    m = re.fullmatch(r"([245]\d\d) ([245]\.\d{1,3}\.\d{1,3}) (\S.*)", text.strip())
    if not m:
        raise ValueError('must look like "550 5.7.1 Some text"')
    code, xcode, msg = m.groups()
    if code[0] != klass or xcode[0] != klass:
        raise ValueError(f"must be a {klass}xx reply with a {klass}.x.x status")
    if (bad := _not_printable_ascii(msg)) is not None:
        raise ValueError(f"text must be printable ASCII, as an SMTP reply is; {bad!r} is not")
    if (n := len(msg) + msg.count("%")) > MAX_REPLY_TEXT:
        # libmilter refuses a longer one (smfi_setreply): the client would get the MTA's own
        # text on every message, and the milter a warning per message
        doubled = "each % counting twice, as libmilter gets it doubled; " if "%" in msg else ""
        raise ValueError(f"text is {n} characters long ({doubled}libmilter takes at most "
                         f"{MAX_REPLY_TEXT})")
    return SmtpReply(code, xcode, msg)


MAX_REPLY_TEXT = 980  # libmilter's MAXREPLYLEN


def _not_printable_ascii(v: str) -> str | None:
    """The first character of `v` that is not printable ASCII, for the error to name: an
    en dash, typographic quotes or a no-break space look like ASCII in an editor."""
    return next((c for c in v if not 32 <= ord(c) < 127), None)


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def parse_network(text: str) -> Network:
    """A network; an IPv4-mapped one ("::ffff:10.0.0.0/104") as the IPv4 network it maps,
    since a client's mapped address is matched as IPv4 (and Postfix sends IPv4 clients as
    IPv4): kept as IPv6, it matched no client at all."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as e:
        raise ValueError(f"{text!r} is not an IPv4/IPv6 address or CIDR network") from e
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_MAPPED):
        v4 = net.network_address.ipv4_mapped
        assert v4 is not None
        return ipaddress.IPv4Network(f"{v4}/{net.prefixlen - 96}")
    return net


def host_port(host: str, port: int) -> str:
    """HOST:PORT as one writes it, an IPv6 address in brackets (spamd's and metrics')."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_spamd_address(text: str) -> tuple[str, int, str]:
    """`HOST:PORT`, `[v6]:PORT`, `HOST` or an absolute unix socket path → (host, port, socket)."""
    text = text.strip()
    if text.startswith("/"):
        return defaults.SPAMD_HOST, defaults.SPAMD_PORT, text
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+(?:%[\w.-]+)?)\](?::(\d+))?|([^:\s]+)(?::(\d+))?", text)
    if not m:
        raise ValueError("must be HOST:PORT, [IPv6]:PORT or an absolute socket path")
    host = _spamd_host(m.group(1) or m.group(3))  # the checks [spamd] host gets
    port = int(m.group(2) or m.group(4) or defaults.SPAMD_PORT)
    if not 0 < port < 65536:
        raise ValueError("port must be 1-65535")
    return host, port, ""


def parse_server(text: str, port: int) -> tuple[str, int]:
    """One `[spamd] servers` entry: `HOST`, `HOST:PORT` or `[IPv6]:PORT`; the port defaults
    to `port` ([spamd] port), as spamc's -d takes the port of -p."""
    if text.strip().startswith("/"):
        raise ValueError(f"{text!r}: a unix socket is [spamd] socket; servers are TCP hosts")
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+(?:%[\w.-]+)?)\](?::(\d+))?|([^:\s\[\]]+)(?::(\d+))?",
                     text.strip())
    if not m:
        raise ValueError(f"{text!r} is not HOST, HOST:PORT or [IPv6]:PORT (an IPv6 address "
                         "in brackets)")
    try:
        host = _spamd_host(m.group(1) if m.group(1) is not None else m.group(3))
    except ValueError as e:
        raise ValueError(f"{text!r}: {e}") from None
    given = m.group(2) or m.group(4)
    if given is not None and not 0 < int(given) < 65536:
        raise ValueError(f"{text!r}: port must be 1-65535")
    return host, int(given) if given is not None else port


def _servers(port: int) -> Callable[[list[Any]], tuple[tuple[str, int], ...]]:
    def convert(v: list[Any]) -> tuple[tuple[str, int], ...]:
        if not all(isinstance(item, str) for item in v):
            raise ValueError('must be a list of strings, e.g. ["10.0.0.5", "10.0.0.6:7830"]')
        pool = tuple(parse_server(item, port) for item in v)
        seen: dict[tuple[str, int], tuple[str, int]] = {}
        for server in pool:  # the same server twice is one server tried twice
            key = (_one_spelling(server[0]), server[1])
            if key in seen:
                also = "" if seen[key] == server else f"{host_port(*seen[key])} "
                raise ValueError(f"{host_port(*server)} is {also}listed twice")
            seen[key] = server
        return pool

    return convert


def _one_spelling(host: str) -> str:
    """A host as written once: an IP address in its compressed form ([0:0::1] is [::1]), a
    name in lower case (DNS does not tell SPAMD.example from spamd.example)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower()


def parse_listen(text: str) -> MetricsConfig:
    """`IP:PORT` or `[IPv6]:PORT` for the metrics endpoint; "" = off. An IP, not a name:
    the endpoint must not move to another interface because DNS changed."""
    text = text.strip()
    if not text:
        return MetricsConfig()
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([0-9.]+):(\d+)", text)
    if not m:
        raise ValueError('must be IP:PORT or [IPv6]:PORT, e.g. "127.0.0.1:9386"')
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    if not 0 < int(port) < 65536:
        raise ValueError("port must be 1-65535")
    return MetricsConfig(text, host, int(port))


# ---------------------------------------------------------------------------------------------
# the loader


class _Section:
    """Reads typed keys from one TOML table and remembers which ones it consumed."""

    def __init__(self, loader: _Loader, name: str, table: Mapping[str, Any]) -> None:
        self.loader, self.name, self.table = loader, name, dict(table)
        self.used: set[str] = set()
        loader.sections.append(self)

    def get(self, key: str, kind: type[T], default: T, check: Callable[[T], T] | None = None) -> T:
        self.used.add(key)
        value = self.table.get(key, default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            self.fail(key, f"must be {_kind_name(kind)}, not {_kind_name(type(value))}")
        if kind is str and "\0" in str(value):
            # no path, user, group or name the system takes can hold one: such a value passed
            # here and stopped `run` (or check-config) with a traceback ("embedded null")
            self.fail(key, "must not contain a NUL character (\\u0000)")
        if check is not None:
            try:
                return check(value)
            except ValueError as e:
                self.fail(key, str(e))
        return value

    def parse(self, key: str, kind: type[T], default: T, convert: Callable[[T], U]) -> U:
        """Like get(), but the value is converted (e.g. "tempfail" → FailAction.TEMPFAIL)."""
        value = self.get(key, kind, default)
        try:
            return convert(value)
        except ValueError as e:
            self.fail(key, str(e))
            raise  # unreachable: fail() raises

    def fail(self, key: str, why: str) -> NoReturn:
        raise ConfigError(f"{self.loader.where(self.name, key)}: [{self.name}] {key}: {why}")

    def finish(self) -> None:
        for key in self.table:
            if key not in self.used:
                self.fail(key, "unknown key")


def _check_order(b: _Section, t: Thresholds) -> None:
    """ham_cutoff <= spam_cutoff <= reject_cutoff, blaming a key the admin actually wrote."""
    for (lo_key, lo), (hi_key, hi) in ((("ham_cutoff", t.ham), ("spam_cutoff", t.tag)),
                                       (("spam_cutoff", t.tag), ("reject_cutoff", t.reject))):
        if lo > hi:
            key = hi_key if hi_key in b.table else lo_key
            b.fail(key, f"{lo_key} ({lo:g}) must not be above {hi_key} ({hi:g})")


# a TOML key as written: bare, "basic" or 'literal'; dotted, with spaces around the dots
_KEY = r"""[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*'"""
_DOTTED = rf"(?:{_KEY})(?:\s*\.\s*(?:{_KEY}))*"
_HEADER = re.compile(rf"\[\[?\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?")  # [table] or [[array]]
_ASSIGN = re.compile(rf"({_DOTTED})\s*=")


def _key_path(dotted: str) -> list[str]:
    """The parts of a dotted key, unquoted: `milter . "extra"` is ["milter", "extra"]."""
    return [_unquoted(part) for part in re.findall(_KEY, dotted)]


def _unquoted(part: str) -> str:
    """A key part as TOML reads it (escapes too); what only looks like a key (a line inside a
    multi-line string) loses its quotes alone."""
    if part[0] not in "\"'":
        return part
    try:
        key: str = tomllib.loads(f"k = {part}")["k"]
    except tomllib.TOMLDecodeError:
        return part[1:-1]
    return key


class _Loader:
    def __init__(self, path: str, text: str) -> None:
        # lines as TOML (and an editor) counts them: splitlines() also broke at U+2028, U+0085
        # and the like, which a comment may hold, and every line after was named one too low
        self.path, self.lines = path, text.split("\n")
        self.sections: list[_Section] = []  # in the order read, for the keys each one has

    def where(self, section: str, key: str) -> str:
        """`file:line` of `key` inside `[section]`; tomllib keeps no positions, so look it up.
        A sub-table (`[milter.extra]`, `extra.x = 1` or `extra = {x = 1}` under [milter]) is
        key `extra` of [milter] too: its line, not the file alone, is named."""
        return self._first([section, key])

    def where_section(self, name: str) -> str:
        """`file:line` where top-level `name` is first written: its [name] header, or a key
        written above every section."""
        return self._first([name])

    def _first(self, path: list[str]) -> str:
        """The first line writing into `path`: where the admin looks for it. A key inside an
        inline table (`spamd = { port = 0 }`) starts no line: the line that assigns the
        longest part of its path (that table) is named, not the file alone."""
        inline, longest = self.path, 0
        for n, written, assigns in self._paths():
            if written[:len(path)] == path:
                return f"{self.path}:{n}"
            if assigns and longest < len(written) < len(path) and path[:len(written)] == written:
                inline, longest = f"{self.path}:{n}", len(written)
        return inline

    def _paths(self) -> Iterator[tuple[int, list[str], bool]]:
        """Each line that opens a table or sets a key, with the whole dotted path it writes
        (["milter", "extra", "x"] for `extra.x = 1` under [milter]) and whether it sets one:
        a [table] header holds none of the keys under it on its own line."""
        table: list[str] = []
        for n, line in enumerate(self.lines, 1):
            stripped = line.strip()
            if header := _HEADER.fullmatch(stripped):
                table = _key_path(header.group(1))
                yield n, table, False
            elif assign := _ASSIGN.match(stripped):
                yield n, table + _key_path(assign.group(1)), True


def _kind_name(kind: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            list: "a list"}.get(kind, kind.__name__)


def _between(lo: float, hi: float) -> Callable[[T], T]:
    # an integer bound as it is written ({:g} made 64 MiB "6.71089e+07", a value it refuses)
    bounds = " and ".join(f"{b:g}" if isinstance(b, float) else str(b) for b in (lo, hi))

    def check(v: T) -> T:
        if not lo <= v <= hi:  # type: ignore[operator]
            raise ValueError(f"must be between {bounds}, not {v}")
        return v

    return check


_SCAN_TIMEOUT = _between(0.1, defaults.SCAN_TIMEOUT_MAX)
_POINTS = _between(-1000, 10000)  # SpamAssassin points for tag_at / reject_at (never NaN)


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def check(v: str) -> str:
        if v not in options:
            raise ValueError(f"must be one of {', '.join(options)}; got {v!r}")
        return v

    return check


def _fail_action(v: str) -> FailAction:
    try:
        return FailAction(v)
    except ValueError:
        raise ValueError(f"must be accept, tempfail or reject; got {v!r}") from None


def _mode(v: str) -> int:
    if not re.fullmatch(r"0?[0-7]{3}", v):
        raise ValueError('must be an octal mode such as "0660"')
    return int(v, 8)


def _path(v: str) -> str:
    if not v.strip():
        raise ValueError("an empty path")
    return v


def _socket_spec(v: str) -> str:
    from spambridge.socketspec import parse_socket_spec

    parse_socket_spec(v)
    return v


MAX_CONFIG_SIZE = 1 << 20


def _read_config(p: Path) -> bytes:
    """The file's bytes, if it is a regular file of at most MAX_CONFIG_SIZE: a FIFO given as
    --config hung the start (or a SIGUSR1 reload) on its open, /dev/zero grew memory until
    killed."""
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO's open cannot wait
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        raw = f.read(MAX_CONFIG_SIZE + 1)
    if len(raw) > MAX_CONFIG_SIZE:
        raise OSError(errno.EFBIG, f"larger than {MAX_CONFIG_SIZE >> 20} MiB")
    return raw


def load(path: str | Path | None) -> Config:
    """Load and validate a config file; None means the built-in defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        raw = _read_config(p)
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config: {e.strerror or e}") from e
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{p}:{line}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from e
    except (RecursionError, ValueError) as e:
        # what tomllib lets through besides TOMLDecodeError, with no position: arrays or inline
        # tables nested some hundred deep, an integer past Python's 4300 digits (its text
        # ends in advice for a programmer: set_int_max_str_digits)
        what = ("values nested too deeply" if isinstance(e, RecursionError)
                else str(e).split(";")[0])
        raise ConfigError(f"{p}: invalid TOML: {what}") from e
    return from_mapping(data, str(p), text)


def from_mapping(data: Mapping[str, Any], path: str = "<config>", text: str = "") -> Config:
    loader = _Loader(path, text)
    known = {"milter", "policy", "spamd", "bayes", "log", "metrics"}
    for name, table in data.items():
        if name not in known and not isinstance(table, Mapping):  # above the first [section]
            raise ConfigError(f"{loader.where_section(name)}: {name}: a key outside any "
                              f"section; {_belongs(name, known)}")
        if name not in known:
            raise ConfigError(f"{loader.where_section(name)}: unknown section [{name}] "
                              f"(expected one of {', '.join(sorted(known))})")
        if not isinstance(table, Mapping):
            raise ConfigError(f"{loader.where_section(name)}: [{name}] must be a table")
    return _read_sections(loader, data)


def _belongs(key: str, known: set[str]) -> str:
    """Where a key written above every section goes: the sections that read it, as the loader
    reads each from an empty file (so no second list of keys to keep in step)."""
    reader = _Loader("<defaults>", "")
    _read_sections(reader, {})
    homes = [f"[{s.name}]" for s in reader.sections if key in s.used]
    if not homes:
        return f"no section has it (the sections are {', '.join(sorted(known))})"
    return f"it belongs under {' or '.join(homes)}"


def _read_sections(loader: _Loader, data: Mapping[str, Any]) -> Config:
    """Each section's keys, typed and checked; the top level is already known to be tables."""
    m = _Section(loader, "milter", data.get("milter", {}))
    d = MilterConfig()
    milter = MilterConfig(
        socket=m.get("socket", str, d.socket, _socket_spec),
        socket_mode=m.parse("socket_mode", str, f"{d.socket_mode:04o}", _mode),
        socket_group=m.get("socket_group", str, d.socket_group),
        name=m.get("name", str, d.name, _milter_name),
        engine=m.get("engine", str, d.engine, _choice(ENGINES)),
        scan_timeout=m.get("scan_timeout", float, d.scan_timeout, _SCAN_TIMEOUT),
        max_scan_size=m.get("max_scan_size", int, d.max_scan_size, _between(1024, 256 << 20)),
        spool_memory=m.get("spool_memory", int, d.spool_memory, _between(0, 64 << 20)),
        spool_dir=m.get("spool_dir", str, d.spool_dir),
        skip_authenticated=m.get("skip_authenticated", bool, d.skip_authenticated),
        trusted_networks=m.parse("trusted_networks", list, [], _networks),
        user=m.get("user", str, d.user),
    )
    m.finish()

    s = _Section(loader, "spamd", data.get("spamd", {}))
    sd = SpamdConfig()
    port = s.get("port", int, sd.port, _between(1, 65535))
    spamd = SpamdConfig(
        host=s.get("host", str, sd.host, _spamd_host),
        port=port,
        socket=s.get("socket", str, sd.socket, _abs_path),
        tls=s.get("tls", bool, sd.tls),
        ca_file=s.get("ca_file", str, sd.ca_file),
        user=s.get("user", str, sd.user, spamd_user),
        per_recipient_user=_recipient_user(s),
        connect_timeout=s.get("connect_timeout", float, sd.connect_timeout, _between(0.05, 60)),
        share=s.get("share", float, sd.share, _between(0.1, 0.95)),
        servers=s.parse("servers", list, [], _servers(port)),
    )
    if spamd.tls and spamd.socket:
        s.fail("tls", "TLS is for spamd over TCP; a unix socket is used as it is")
    # one place says where spamd is: with both, which one the milter used would be a guess
    if spamd.servers and spamd.socket:
        s.fail("servers", "not with [spamd] socket: servers are TCP hosts (remove one of them)")
    if spamd.servers and spamd.host != sd.host:
        s.fail("servers", f"not with [spamd] host = {spamd.host!r}: list that host among the "
               "servers and remove host")
    s.finish()

    b = _Section(loader, "bayes", data.get("bayes", {}))
    bd = BayesConfig()
    pd = PolicyConfig()
    bayes = BayesConfig(
        db=b.get("db", str, bd.db, _path),
        min_trained=b.get("min_trained", int, bd.min_trained, _between(0, 10**9)),
        max_bytes=b.get("max_bytes", int, bd.max_bytes, _between(4096, 64 << 20)),
        max_tokens=b.get("max_tokens", int, bd.max_tokens, _between(100, 30_000)),
    )
    bayes_bands = Thresholds(
        ham=b.get("ham_cutoff", float, pd.bayes.ham, _between(0.0, 1.0)),
        tag=b.get("spam_cutoff", float, pd.bayes.tag, _between(0.0, 1.0)),
        reject=b.get("reject_cutoff", float, pd.bayes.reject, _between(0.0, 1.0)),
    )
    _check_order(b, bayes_bands)
    b.finish()

    p = _Section(loader, "policy", data.get("policy", {}))
    tag_at = p.get("tag_at", float, pd.spamd.tag, _POINTS)
    reject_at = p.get("reject_at", float, pd.spamd.reject, _POINTS)
    if reject_at < tag_at:  # blame a key the admin actually wrote, as _check_order does
        p.fail("reject_at" if "reject_at" in p.table else "tag_at",
               f"reject_at ({reject_at:g}) must not be below tag_at ({tag_at:g})")
    policy = PolicyConfig(
        spamd=Thresholds(tag_at, tag_at, reject_at),
        bayes=bayes_bands,
        tag_only=p.get("tag_only", bool, pd.tag_only),
        subject_tag=p.get("subject_tag", str, pd.subject_tag, _tag),
        reject_reply=p.parse("reject_reply", str, str(pd.reject_reply),
                             lambda v: parse_reply(v, "5")),
        tempfail_reply=p.parse("tempfail_reply", str, str(pd.tempfail_reply),
                               lambda v: parse_reply(v, "4")),
        unchecked_reject_reply=p.parse("unchecked_reject_reply", str,
                                       str(pd.unchecked_reject_reply),
                                       lambda v: parse_reply(v, "5")),
        on_unavailable=p.parse("on_unavailable", str, pd.on_unavailable.value, _fail_action),
        on_timeout=p.parse("on_timeout", str, pd.on_timeout.value, _fail_action),
        on_oversize=p.parse("on_oversize", str, pd.on_oversize.value, _fail_action),
        on_error=p.parse("on_error", str, pd.on_error.value, _fail_action),
    )
    p.finish()

    lg = _Section(loader, "log", data.get("log", {}))
    level = lg.get("level", str, "info", _choice(LOG_LEVELS))
    lg.finish()

    mt = _Section(loader, "metrics", data.get("metrics", {}))
    metrics = mt.parse("listen", str, "", parse_listen)
    if _same_address(milter.socket, metrics):
        mt.fail("listen", f"{metrics.listen} is where the milter listens too ([milter] socket "
                f"= {milter.socket!r}): give the metrics another port")
    mt.finish()
    return Config(milter, policy, spamd, bayes, level, loader.path, metrics)


def _same_address(socket: str, metrics: MetricsConfig) -> bool:
    """Whether the milter's TCP socket is the metrics endpoint's address, or a wildcard of its
    family that takes that port too: the milter, which opens its socket after the endpoint,
    could never start ("Address already in use", exit 1). A host name other than localhost
    is not looked up here; nor is an IPv6 wildcard taken to hold IPv4's (bindv6only): the
    host decides those, and check-config asks it (checkconfig._taken_by)."""
    from spambridge.socketspec import parse_socket_spec

    spec = parse_socket_spec(socket)
    if not metrics.host or spec.family == "unix" or spec.port != metrics.port:
        return False
    try:
        ours = ipaddress.ip_address("127.0.0.1" if spec.family == "inet" else "::1") if (
            spec.host.lower() == "localhost") else ipaddress.ip_address(spec.host)
    except ValueError:
        return False
    theirs = ipaddress.ip_address(metrics.host)
    return ours.version == theirs.version and (
        ours == theirs or ours.is_unspecified or theirs.is_unspecified)


def _networks(v: list[Any]) -> tuple[Network, ...]:
    if not all(isinstance(item, str) for item in v):
        raise ValueError("must be a list of strings")
    return tuple(parse_network(item) for item in v)


def _spamd_host(v: str) -> str:
    """A host name or an IP address, as a connection can use it: what getaddrinfo cannot look
    up would pass the start and then leave every message unchecked=unavailable."""
    if not v:
        raise ValueError('must not be empty ("127.0.0.1" for a spamd on this host)')
    if v.startswith("[") and v.endswith("]"):
        raise ValueError(f"write an IPv6 address without brackets here: {v[1:-1]!r}")
    if ":" in v:
        try:
            ipaddress.IPv6Address(v)
        except ValueError:
            raise ValueError(f"{v!r} is not a host name or IP address (the port is "
                             "[spamd] port)") from None
    elif not re.fullmatch(r"[A-Za-z0-9_.-]+", _idna(v)):
        raise ValueError(f"{v!r} is not a host name or IP address")
    return v


def _idna(v: str) -> str:
    """A host name as getaddrinfo gets it: an internationalized one (spamd.bücher.de) in its
    ASCII form, as Python's socket module encodes it; "" when it has none."""
    try:
        return v.encode("idna").decode("ascii")
    except UnicodeError:
        return ""


def spamd_user(v: str) -> str:
    """A user name spamd's User header can carry: printable ASCII, as the client writes it
    (what it cannot encode, such as jörg, made every request fail: unchecked=error)."""
    if (bad := _not_printable_ascii(v)) is not None:
        raise ValueError(f"must be printable ASCII, as spamd's User header is; {bad!r} is not")
    return v


RECIPIENT_USER = ("address", "local-part")


def _recipient_user(s: _Section) -> str:
    """[spamd] per_recipient_user: true (the address, as before) or false, or which part of
    the recipient spamd gets: "address" or "local-part" (spamass-milter -u without -e)."""
    key = "per_recipient_user"
    if isinstance(s.table.get(key), str):
        return s.get(key, str, "", _recipient_user_choice)
    return RECIPIENT_USER[0] if s.get(key, bool, False) else ""


def _recipient_user_choice(v: str) -> str:
    if v not in RECIPIENT_USER:
        raise ValueError(f'must be true, false, "address" or "local-part"; got {v!r}')
    return v


def _abs_path(v: str) -> str:
    if v and not v.startswith("/"):
        raise ValueError("must be an absolute path")
    return v


def _printable(v: str) -> str:
    if (bad := _not_printable_ascii(v)) is not None:
        raise ValueError(f"must be printable ASCII; {bad!r} is not")
    return v


def _milter_name(v: str) -> str:
    """The filter's name libmilter registers and writes in its log lines (smfi_register)."""
    if not v:
        raise ValueError(f'must not be empty (the default is "{defaults.MILTER_NAME}")')
    return _printable(v)


SUBJECT_TAG_MAX = 100  # characters: the tag opens the Subject's first line (990 octets at most)


def _tag(v: str) -> str:
    """Blanks around the tag dropped: the Subject gets one space after it anyway, and
    "[SPAM] " made "[SPAM]  hello". A tag long enough to need folding itself could not be
    taken off again by `train`, and one with no blank would leave every Subject untagged."""
    tag = _printable(v).strip()
    if len(tag) > SUBJECT_TAG_MAX:
        raise ValueError(f"must be at most {SUBJECT_TAG_MAX} characters, not {len(tag)}")
    return tag


def key_at(cfg: Config, section: str, key: str) -> str:
    """`file:line: [section] key`, for a problem only found at start (a user, a group, a
    directory): the file is read again to find the line, as the loader does; or `command
    line` when a flag gave the value."""
    if f"[{section}] {key}" in cfg.flags:
        return f"command line: [{section}] {key}"
    where = cfg.source
    with contextlib.suppress(OSError):
        where = _Loader(cfg.source, Path(cfg.source).read_text("utf-8", errors="replace")
                        ).where(section, key)
    return f"{where}: [{section}] {key}"


def with_overrides(cfg: Config, **flags: Any) -> Config:
    """Apply CLI flags (None = not given) on top of the file; flags win, and get the same
    checks as the keys they stand for, with the flag named in the error."""
    milter, policy, spamd, bayes = cfg.milter, cfg.policy, cfg.spamd, cfg.bayes
    flag = ""
    given: list[str] = []  # keys whose later errors are the command line's, not the file's
    try:
        if flags.get("socket") is not None:
            flag = "--socket"
            milter = replace(milter, socket=_socket_spec(flags["socket"]))
            if _same_address(milter.socket, cfg.metrics):
                raise ValueError(f"[metrics] listen = {cfg.metrics.listen!r} is there: the "
                                 "milter cannot listen where its metrics do")
            given.append("[milter] socket")
        if flags.get("engine") is not None:
            flag = "--engine"
            milter = replace(milter, engine=_choice(ENGINES)(flags["engine"]))
            given.append("[milter] engine")
        if flags.get("scan_timeout") is not None:
            flag = "--scan-timeout"
            milter = replace(milter, scan_timeout=_SCAN_TIMEOUT(float(flags["scan_timeout"])))
            given.append("[milter] scan_timeout")
        if flags.get("spamd") is not None:
            flag = "--spamd"
            host, port, sock = parse_spamd_address(flags["spamd"])
            spamd = replace(spamd, host=host, port=port, socket=sock, servers=())  # one server
            given += ["[spamd] host", "[spamd] port", "[spamd] socket", "[spamd] servers"]
        if flags.get("db") is not None:
            flag = "--db"
            bayes = replace(bayes, db=_path(flags["db"]))
            given.append("[bayes] db")
        tag = flags.get("tag_at")
        rej = flags.get("reject_at")
        if tag is not None or rej is not None:
            flag = "--tag-at"
            t = _POINTS(float(tag)) if tag is not None else policy.spamd.tag
            flag = "--reject-at"
            r = _POINTS(float(rej)) if rej is not None else policy.spamd.reject
            if r < t:  # blame a flag that was given
                flag = "--reject-at" if rej is not None else "--tag-at"
                raise ValueError(f"reject_at ({r:g}) must not be below tag_at ({t:g})")
            policy = replace(policy, spamd=Thresholds(t, t, r))
            given += [k for k, v in (("[policy] tag_at", tag), ("[policy] reject_at", rej))
                      if v is not None]
        if flags.get("tag_only"):
            policy = replace(policy, tag_only=True)
            given.append("[policy] tag_only")
    except ValueError as e:
        raise ConfigError(f"command line: {flag}: {e}") from e
    return replace(cfg, milter=milter, policy=policy, spamd=spamd, bayes=bayes,
                   flags=(*cfg.flags, *given))
