"""`spambridge check-config`: is the config valid, and does Postfix agree with it?

The config is already loaded and validated when this runs (a bad file exits 78 in cli.py).
Here: when `postconf` exists, read Postfix's milter settings and say what would go wrong —
a content timeout that does not leave the cap room, macros spambridge reads but Postfix does
not send, an smtpd_milters entry that cannot reach our socket (Postfix writes inet:HOST:PORT
where libmilter writes inet:PORT@HOST, and resolves unix paths inside the chroot), an implicit
milter_default_action. Exit status: 0 all well, 1 warnings. Reading Postfix is one adapter
(`read_postfix`); the judging (`check_postfix`) is pure and tested with tables.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import ipaddress
import os
import posixpath
import pwd
import re
import shutil
import socket
import stat
import subprocess
from dataclasses import dataclass, field
from typing import Any

from spambridge import defaults, permissions, privileges
from spambridge.bayes import store
from spambridge.config import Config, key_at
from spambridge.message import spool_problem
from spambridge.socketspec import SocketSpec, listen_address, parse_socket_spec

PARAMS = (
    "mail_version", "queue_directory", "smtpd_milters", "non_smtpd_milters",
    "milter_protocol", "milter_default_action", "milter_content_timeout",
    "milter_connect_macros", "milter_helo_macros", "milter_mail_macros",
    "milter_end_of_header_macros", "milter_end_of_data_macros", "smtpd_milter_maps",
    "mail_owner",
)

# macro → (stages where spambridge can see it in time, what breaks without it)
NEEDED_MACROS: dict[str, tuple[tuple[str, ...], str]] = {
    "j": (("milter_connect_macros", "milter_helo_macros", "milter_mail_macros"),
          'the Received line spamd sees says "by localhost"'),
    "{auth_authen}": (("milter_mail_macros",),
                      "authenticated senders look anonymous: skip_authenticated cannot work "
                      "and the Received line lacks ESMTPA"),
    "{tls_version}": (("milter_helo_macros", "milter_mail_macros"),
                      "the Received line spamd sees never says ESMTPS"),
    "i": (("milter_end_of_header_macros", "milter_end_of_data_macros"),
          "log lines say NOQUEUE instead of the queue id, and the Received line has no id"),
    "_": (("milter_connect_macros",),
          "a client of a unix-domain smtpd (a content filter's reinjection) has no address: "
          "trusted_networks cannot match it as 127.0.0.1, so its mail is scanned"),
}


@dataclass
class Service:
    """One smtpd line of master.cf (postconf -M)."""

    name: str
    chroot: bool
    milters: str | None = None  # a `-o smtpd_milters=…` override
    # other `-o milter_…=` overrides (milter_default_action, milter_content_timeout, …)
    overrides: dict[str, str] = field(default_factory=dict)


@dataclass
class PostfixSettings:
    config_dir: str
    params: dict[str, str]
    explicit: set[str] = field(default_factory=set)  # set in main.cf (postconf -n)
    smtpd: list[Service] = field(default_factory=list)


@dataclass
class Report:
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def note(self, text: str) -> None:
        self.notes.append(text)


# -- pure helpers --------------------------------------------------------------------------------


def parse_time(value: str) -> float | None:
    """Postfix time values: `300s`, `5m`, `1h`, `2d`, `1w`, or a bare number of seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", value)
    if not m:
        return None
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
    return float(m.group(1)) * unit


def milter_entries(value: str) -> list[tuple[str, dict[str, str]]]:
    """smtpd_milters → [(endpoint, {option: value})]; handles `{ endpoint, k=v … }` groups."""
    out: list[tuple[str, dict[str, str]]] = []
    for tok in re.findall(r"\{[^}]*\}|[^\s,{}]+", value):
        if tok.startswith("{"):
            parts = [p.strip() for p in re.split(r"[\s,]+", tok.strip("{} ")) if p.strip()]
            if not parts:
                continue
            opts = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
            out.append((parts[0], {k.strip(): v.strip() for k, v in opts.items()}))
        else:
            out.append((tok, {}))
    return out


def _norm_host(host: str) -> str:
    host = host.strip("[]")
    if host == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower()


def endpoint_matches(endpoint: str, ours: SocketSpec, queue_dir: str,
                     chroot: bool) -> tuple[bool, str]:
    """Does a Postfix milter endpoint reach our socket? (match, why-not hint)."""
    kind, _, rest = endpoint.partition(":")
    if kind in ("unix", "local"):
        if ours.family != "unix":
            return False, ""
        if rest.startswith("/"):
            where = posixpath.join(queue_dir, rest.lstrip("/")) if chroot else rest
        else:
            where = posixpath.join(queue_dir, rest)
        if posixpath.normpath(where) == posixpath.normpath(ours.path):
            return True, ""
        if chroot and posixpath.normpath(rest) == posixpath.normpath(ours.path):
            rel = _relative_to(ours.path, queue_dir)
            hint = (f"smtpd runs chrooted in {queue_dir}, so {endpoint} means "
                    f"{where}; write unix:{rel}" if rel else
                    f"smtpd runs chrooted in {queue_dir}, where {ours.path} cannot be "
                    "reached: put the socket under the queue directory")
            return False, hint
        if not chroot and rest.startswith("/") and posixpath.normpath(
                posixpath.join(queue_dir, rest.lstrip("/"))) == posixpath.normpath(ours.path):
            # the chrooted spelling, in a service that is not: it looks at the real root
            return False, (f"smtpd runs outside the chroot, so {endpoint} means {rest}; "
                           f"write unix:{_relative_to(ours.path, queue_dir)}, which chrooted "
                           f"and unchrooted smtpd alike find under {queue_dir}")
        return False, ""
    if kind == "inet":
        if ours.family not in ("inet", "inet6"):
            return False, ""
        m = re.fullmatch(r"(\[[^\]]+\]|[^:]+):(\d+)", rest)
        if not m:
            if re.fullmatch(r"\d+@.+", rest):
                return False, (f"{endpoint} is libmilter's spelling; Postfix writes "
                               f"{ours.postfix}")
            return False, ""
        host, port = _norm_host(m.group(1)), int(m.group(2))
        mine = _norm_host(ours.host)
        any_addr = mine in ("0.0.0.0", "::")
        return port == ours.port and (host == mine or any_addr), ""
    return False, ""


def _out_of_chroot(ours: SocketSpec, queue_dir: str, services: list[Service]) -> bool:
    """Whether one of `services` runs chrooted while our unix socket is outside its queue
    directory, where no spelling of the path reaches it."""
    return ours.family == "unix" and not _relative_to(ours.path, queue_dir) and any(
        s.chroot for s in services)


def _relative_to(path: str, queue_dir: str) -> str:
    base = posixpath.normpath(queue_dir) + "/"
    p = posixpath.normpath(path)
    return p[len(base):] if p.startswith(base) else ""


def _macros(value: str) -> set[str]:
    return set(value.replace(",", " ").split())


# milter_default_action's values (postconf(5); shutdown since Postfix 3.11)
DEFAULT_ACTIONS = ("accept", "tempfail", "reject", "quarantine", "shutdown")


_VERSION = re.compile(r"(\d+(?:\.\d+){0,2})")


def _version(text: str) -> tuple[int, ...]:
    """mail_version "3.7.11" → (3, 7, 11), an experimental release's "3.10-20240101" →
    (3, 10) (the release it leads to); an unreadable one counts as the newest."""
    m = _VERSION.match(text.strip())
    return tuple(int(x) for x in m[1].split(".")) if m else (99,)


def check_postfix(cfg: Config, pf: PostfixSettings) -> Report:
    """Everything Postfix's settings say about working with this config. Pure."""
    r = Report()
    p = pf.params
    ours = parse_socket_spec(cfg.milter.socket)
    queue_dir = p.get("queue_directory", "/var/spool/postfix")

    # the socket: which smtpd services reach it
    services = pf.smtpd or [Service("smtpd", chroot=False)]
    reaching: list[str] = []
    our_options: dict[str, str] = {}
    options: dict[str, dict[str, str]] = {}  # service → our entry's {default_action=…}
    hints: list[str] = []
    after: dict[str, None] = {}  # milters listed after ours: they see the message as we left it
    for svc in services:
        value = svc.milters if svc.milters is not None else p.get("smtpd_milters", "")
        mine: list[str] = []  # this service's entries meant for us that miss
        entries = milter_entries(value)
        for i, (endpoint, opts) in enumerate(entries):
            ok, hint = endpoint_matches(endpoint, ours, queue_dir, svc.chroot)
            if ok:
                reaching.append(svc.name)
                our_options = options[svc.name] = opts
                # an entry before it that misses is still one Postfix tries first, and meets
                # milter_default_action at (tempfail: every session) when it cannot connect
                mine = [f"{h}; or remove it: {endpoint}, listed after it, reaches spambridge, "
                        "and Postfix applies milter_default_action for the one it cannot "
                        "connect to" for h in mine]
                after.update(dict.fromkeys(e for e, _ in entries[i + 1:]))
                break
            if hint:
                mine.append(f"{svc.name}: {hint}")
        hints += mine
    # smtpd_milter_maps (Postfix 3.2): the milters it gives a client's IP address replace
    # smtpd_milters for that client (DISABLE: none); which clients a table matches is not known
    # here, so what it does is said, not judged
    maps = {m: None for m in (svc.overrides.get("smtpd_milter_maps", p.get(
        "smtpd_milter_maps", "")) for svc in services) if m}
    by_map = (f"; smtpd_milter_maps ({', '.join(maps)}) gives the SMTP clients it matches their "
              "milters instead: those are scanned only where their entry lists spambridge "
              "(DISABLE: no milter at all)") if maps else ""
    if reaching:
        r.note(f"smtpd services that use spambridge: {', '.join(reaching)}{by_map}")
        skipped = [s.name for s in services if s.name not in reaching]
        if skipped:
            r.note(f"smtpd services without spambridge: {', '.join(skipped)}")
        # a service that means to use spambridge but cannot reach it (an absolute path in a
        # chrooted smtpd) passes its mail unscanned, whatever the other services do
        for h in dict.fromkeys(hints):
            r.warn(h)
        if after:
            r.note(f"milters listed after spambridge ({', '.join(after)}) get the message with "
                   "its changes (X-Spam-* fields, a tagged Subject): a DKIM verifier (OpenDKIM) "
                   "must be listed before it, or it fails correctly signed mail that "
                   "spambridge tagged (README, Postfix quick start, step 8)")
    else:
        want = f"unix:{_relative_to(ours.path, queue_dir)}" if (
            ours.family == "unix" and _relative_to(ours.path, queue_dir)) else ours.postfix
        written = {e for svc in services for e, _ in milter_entries(
            svc.milters if svc.milters is not None else p.get("smtpd_milters", ""))}
        # already written as Postfix spells it, the hints below say why it is not reached;
        # no spelling reaches a socket outside a chrooted smtpd's queue directory (below)
        spell = "" if want in written or _out_of_chroot(ours, queue_dir, services) else (
            f"; Postfix would write {want}")
        r.warn(f"smtpd_milters ({p.get('smtpd_milters', '') or 'empty'}) does not reach "
               f"spambridge's socket {ours.libmilter}{spell}{by_map}")
        for h in dict.fromkeys(hints):
            r.warn(h)
    meant = [s for s in services if s.name in reaching] if reaching else services
    if _out_of_chroot(ours, queue_dir, meant) and not any("cannot be reached" in h
                                                          for h in hints):
        r.warn(f"a chrooted smtpd cannot reach {ours.path}: put the socket under {queue_dir}")

    for endpoint, _ in milter_entries(p.get("non_smtpd_milters", "")):
        if endpoint_matches(endpoint, ours, queue_dir, False)[0] or endpoint_matches(
                endpoint, ours, queue_dir, True)[0]:
            r.warn("non_smtpd_milters lists spambridge: mail from sendmail(1) gets scanned "
                   "and tagged (never refused: Postfix would bounce it), mail re-injected with "
                   "postsuper -r scanned again; use smtpd_milters only")

    # what Postfix does when we are down, its timer, protocol and macros: main.cf's values,
    # or a service's own (master.cf -o milter_…=) for each service that uses spambridge
    judged = [s for s in services if s.name in reaching] or [Service("", False)]
    for svc in judged:
        found = _judge_milter_settings(
            cfg, {**p, **svc.overrides}, pf.explicit | set(svc.overrides),
            options.get(svc.name, our_options), svc.name, set(svc.overrides))
        r.warnings += [w for w in found.warnings if w not in r.warnings]
        r.notes += [n for n in found.notes if n not in r.notes]
    return r


def _judge_milter_settings(cfg: Config, p: dict[str, str], explicit: set[str],
                           our_options: dict[str, str], service: str,
                           overridden: set[str]) -> Report:
    """milter_default_action, the content timeout, milter_protocol and the macros as one
    smtpd service sees them; a value from that service's own master.cf -o names the service."""
    r = Report()
    cap = cfg.milter.scan_timeout + defaults.REPLY_MARGIN

    def where(param: str) -> str:
        return f"{param} (master.cf -o, {service})" if param in overridden else param

    # what Postfix does when we are down
    if "default_action" in our_options or "milter_default_action" in explicit:
        per_milter = "default_action" in our_options
        action = (our_options["default_action"] if per_milter
                  else p.get("milter_default_action", ""))
        name = ("default_action (per milter)" if per_milter
                else where("milter_default_action"))
        known = DEFAULT_ACTIONS if _version(p.get("mail_version", "")) >= (3, 11) \
            else DEFAULT_ACTIONS[:-1]  # shutdown came with Postfix 3.11
        if action.strip().lower() not in known:
            r.warn(f"{name} = {action!r} is not a value Postfix "
                   f"{p.get('mail_version', '')} knows ({', '.join(known)}): set what mail "
                   "should meet when spambridge is down, accept or tempfail")
        elif per_milter:
            r.note(f"default action for spambridge: {action} (per milter)")
        else:
            r.note(f"{where('milter_default_action')} = {action}")
    else:
        r.warn(f"milter_default_action is not set in main.cf (now "
               f"{p.get('milter_default_action', 'tempfail')}); Postfix 3.11 changes the "
               "default to shutdown: set accept or tempfail explicitly")

    # timeouts: a per-milter content_timeout (smtpd_milters = { …, content_timeout=… }) wins
    if "content_timeout" in our_options:
        name, raw = "content_timeout (per milter)", our_options["content_timeout"]
    else:
        name, raw = where("milter_content_timeout"), p.get("milter_content_timeout", "300s")
    timeout = parse_time(raw)
    if timeout is None:
        r.warn(f"cannot read {name} = {raw!r}")
    elif cap * 2 > timeout:
        r.warn(f"scan_timeout {cfg.milter.scan_timeout:g}s (+{defaults.REPLY_MARGIN:g}s) is not "
               f"well below {name} {timeout:g}s: Postfix may give up first and "
               f"apply milter_default_action; keep the timeout >= {cap * 2:g}s or lower "
               "scan_timeout")
    elif timeout > 600:
        r.note(f"{name} {timeout:g}s is longer than a sending client's 10-minute "
               "wait after DATA: a stuck milter can cause duplicate deliveries")

    # protocol and macros
    try:
        if int(p.get("milter_protocol", "6")) < 6:
            r.warn(f"{where('milter_protocol')} = {p['milter_protocol']}: use 6")
    except ValueError:
        r.warn(f"cannot read {where('milter_protocol')} = {p.get('milter_protocol')!r}")
    for macro, (stages, effect) in NEEDED_MACROS.items():
        if not any(macro in _macros(p.get(stage, "")) for stage in stages):
            own = f"{service} (master.cf -o): " if any(st in overridden for st in stages) else ""
            r.warn(f"{own}Postfix does not send macro {macro} "
                   f"(add it to {stages[-1]}): {effect}")
    return r


# -- the adapter: postconf ------------------------------------------------------------------------


def check_local(cfg: Config) -> Report:
    """What `run` would trip over on this host that the file's syntax cannot show: a user or
    group that does not exist, a relative database path, a CA file that is not there (each
    would stop the milter at start with exit 78, which systemd does not retry)."""
    r = Report()
    m = cfg.milter
    for key, kind, name, lookup in (("user", "user", m.user, pwd.getpwnam),
                                    ("socket_group", "group", m.socket_group, grp.getgrnam)):
        if name:
            try:
                found = lookup(name)
            except KeyError:
                r.warn(f"[milter] {key}: no such {kind} {name!r}")
                continue
            if kind == "user" and getattr(found, "pw_uid", None) == 0:
                r.warn(f"[milter] user: {privileges.ROOT_USER.format(name)}")
    spec = parse_socket_spec(m.socket)
    if spec.family == "unix":
        sock_dir = os.path.dirname(os.path.abspath(spec.path))
        if m.user:
            reachable = privileges.can_reach(sock_dir, m.user) is not False
            if privileges.can_write_dir(sock_dir, m.user) is False or not reachable:
                r.warn("[milter] socket: "
                       + privileges.socket_dir_problem(sock_dir, m.user, reachable))
        above = permissions.nearest(sock_dir)  # `run` makes the rest (or cannot)
        if dangling := permissions.dangling_link(sock_dir, above):
            r.warn(f"[milter] socket: {dangling}: the milter would not start")
        elif not os.path.isdir(above):
            r.warn(f"[milter] socket: {above} is not a directory, and the socket's path goes "
                   f"through it: the milter cannot make {sock_dir} and would not start")
        elif permissions.read_only_fs(above):
            made = spec.path if above == sock_dir else sock_dir
            r.warn(f"[milter] socket: {above} is on a filesystem mounted read-only: the milter "
                   f"cannot make {made} there and would not start")
    if spec.family == "unix" and os.path.lexists(spec.path) and not stat.S_ISSOCK(
            os.lstat(spec.path).st_mode):
        r.warn(f"[milter] socket: {spec.path} exists and is not a socket: the milter refuses "
               "to start rather than remove it (move it away, or choose another path)")
    milter_at = None  # the milter's TCP address, when it could listen there
    if spec.family != "unix":
        try:
            family, address = listen_address(spec)
        except OSError as e:  # `run` would stop at it, after the checks said all was well
            r.warn(f"[milter] socket: {spec.host!r} does not resolve ({e.strerror or e}): the "
                   f"milter cannot listen on {spec.libmilter} and would not start")
        else:
            if why := _not_here(family, address):
                r.warn(f"[milter] socket: {spec.host!r} {why}: the milter cannot listen on "
                       f"{spec.libmilter} and would not start")
            else:
                milter_at = family, address
    metrics_family = socket.AF_INET6 if ":" in cfg.metrics.host else socket.AF_INET
    if cfg.metrics.host and (why := _not_here(metrics_family,
                                              (cfg.metrics.host, cfg.metrics.port))):
        r.warn(f"[metrics] listen: {cfg.metrics.host!r} {why}: the milter cannot serve metrics "
               f"on {cfg.metrics.listen} and would not start")
    elif cfg.metrics.host and milter_at and spec.port == cfg.metrics.port and (
            why := _taken_by(metrics_family, cfg.metrics.host, *milter_at)):
        # the config's check (config._same_address) compares addresses of one family, as
        # written; the kernel decides the rest: an IPv6 wildcard, a name
        if metrics_family != milter_at[0]:
            why += (": an IPv6 wildcard holds IPv4's port as well unless "
                    "net.ipv6.bindv6only is set")
        r.warn(f"[metrics] listen: {cfg.metrics.listen} takes the port the milter listens on "
               f"too ({spec.libmilter}) on this host ({why}): the milter would not start; give "
               "the metrics another port")
    if spec.family == "unix" and not m.socket_mode & 0o022 and m.user != "postfix":
        r.warn(f"[milter] socket_mode: {m.socket_mode:04o} lets only the socket's owner connect "
               "(connecting takes write permission): Postfix's smtpd, user postfix, needs "
               '"0660" with the socket in group postfix')
    if m.engine != "spamd" and not os.path.isabs(cfg.bayes.db):
        r.warn(f"[bayes] db: {cfg.bayes.db!r} is relative to the working directory the milter "
               "is started in (systemd: /); give an absolute path")
    if m.engine != "spamd":
        bayes_state(cfg, r)
    problem = spool_problem(m.spool_dir)
    if problem:
        r.warn(f"[milter] spool_dir: {problem}")
    if m.user:
        _user_dirs(cfg, r)
    if cfg.spamd.tls and cfg.spamd.ca_file and not os.access(cfg.spamd.ca_file, os.R_OK):
        r.warn(f"[spamd] ca_file: {cfg.spamd.ca_file} cannot be read")
    if m.engine != "bayes" and not cfg.spamd.socket:
        share = m.engine == "spamd+bayes"
        room = m.scan_timeout * (cfg.spamd.share if share else 1.0)
        if cfg.spamd.connect_timeout >= room:
            r.warn(f"[spamd] connect_timeout: {cfg.spamd.connect_timeout:g}s is not shorter "
                   f"than the {room:g}s spamd gets ({'its share of ' if share else ''}"
                   "scan_timeout): a spamd host that does not answer is then a timeout, not "
                   "unavailable, and the log does not say where spamd was looked for")
    return r


def _not_here(family: socket.AddressFamily, address: tuple[Any, ...]) -> str | None:
    """Why `address` cannot be listened on whatever its port (bound on port 0 to tell: the
    port itself may be the running milter's): no interface of this host has it, or the
    kernel binds no listener to it as written (a link-local IPv6 address without its
    interface, which neither libmilter's spec nor the metrics' IP:PORT can give; a multicast
    one), or makes no socket of its family (IPv6 on a kernel booted with ipv6.disable=1);
    None when it can."""
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((address[0], 0, *address[2:]))
    except OSError as e:
        if e.errno == errno.EAFNOSUPPORT:
            ip = "IPv6" if family == socket.AF_INET6 else "IPv4"
            return f"cannot be listened on: this host has no {ip} ({e.strerror or e})"
        if e.errno == errno.EADDRNOTAVAIL:
            return f"is not an address of this host ({e.strerror or e})"
        if e.errno == errno.EINVAL:
            return (f"cannot be listened on as written ({e.strerror or e}: a link-local "
                    "address needs its interface, which the config cannot give; a multicast "
                    "address takes no listener)")
    return None


def _taken_by(family: socket.AddressFamily, host: str, milter_family: socket.AddressFamily,
              milter_address: tuple[Any, ...]) -> str | None:
    """Why the milter could not listen on `milter_address` with the metrics on `host` at the
    same port, as `run` opens them (the metrics first, both with SO_REUSEADDR): tried on a
    port the kernel picks, the configured one may be the running milter's; or None."""
    try:
        with socket.socket(family, socket.SOCK_STREAM) as first:
            first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            first.bind((host, 0))
            first.listen(1)
            port = first.getsockname()[1]
            with socket.socket(milter_family, socket.SOCK_STREAM) as second:
                second.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                second.bind((milter_address[0], port, *milter_address[2:]))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return e.strerror or str(e)
    return None


def socket_problem(cfg: Config, owner: str) -> str | None:
    """Whether Postfix's smtpd, user `owner` (mail_owner), may connect to the milter's unix
    socket: judged on the socket when there is one (the running milter's, or the last one's),
    else on what `run` will give it (socket_mode; socket_group, or a setgid directory's
    group). Without it every message gets milter_default_action: passed unscanned, or held."""
    spec = parse_socket_spec(cfg.milter.socket)
    if spec.family != "unix":
        return None
    m = cfg.milter
    sock_dir = os.path.dirname(os.path.abspath(spec.path))
    try:
        st = os.stat(spec.path)
    except OSError:
        st = None
    if st is not None and stat.S_ISSOCK(st.st_mode):
        mode, uid, gid = st.st_mode, st.st_uid, st.st_gid
    else:
        mode, uid, gid = m.socket_mode, None, None
        with contextlib.suppress(KeyError):  # check_local names a user or group not there
            uid = pwd.getpwnam(m.user).pw_uid if m.user else None
            if m.socket_group:
                gid = grp.getgrnam(m.socket_group).gr_gid
            elif os.path.isdir(sock_dir) and (dir_st := os.stat(sock_dir)).st_mode & stat.S_ISGID:
                gid = dir_st.st_gid
    problem = privileges.socket_connect_problem(spec.path, owner, mode, uid, gid)
    if problem is None:
        return None
    try:
        group = grp.getgrgid(pwd.getpwnam(owner).pw_gid).gr_name
    except KeyError:
        group = owner
    return (f"[milter] socket: Postfix's smtpd (user {owner!r}, mail_owner) cannot connect: "
            f"{problem}; every message would get milter_default_action. Give the socket "
            f'group {group}: socket_group = "{group}" with socket_mode "0660", or a '
            f"directory setgid to that group, made before the milter starts (install -d -g "
            f"{group} -m 2750 {sock_dir})")


def _user_dirs(cfg: Config, r: Report) -> None:
    """What `run` checks once it is `[milter] user` (each a refusal to start, exit 78): the
    Bayes database's directory and the spool directory must be writable by that user."""
    name, m = cfg.milter.user, cfg.milter
    if privileges.uses_bayes(cfg) and os.path.isabs(cfg.bayes.db):
        # where SQLite keeps the -wal and -shm: beside the file a symlink points to
        db_dir = os.path.dirname(os.path.realpath(cfg.bayes.db))
        if not os.path.isdir(db_dir):
            # a start as root makes it the user's (store.create): only a directory above it
            # the user may not search stops that start
            above = permissions.nearest(os.path.dirname(db_dir))
            if os.path.isdir(above) and privileges.can_reach(above, name) is False:
                r.warn(f"[bayes] db: {db_dir} does not exist, and user {name!r} may not search "
                       f"{above} or a directory above it: the milter would make {db_dir} and "
                       "then refuse to start, unable to reach it as that user")
        elif (privileges.can_write_dir(db_dir, name) is False
              or privileges.unsearchable_above(db_dir, name)
              or permissions.read_only_fs(db_dir)):
            r.warn(f"[bayes] db: {privileges.db_dir_problem(db_dir, name)}")
        unreadable = privileges.unreadable_db_files(cfg.bayes.db, name)
        if unreadable:
            sts = [os.stat(f) for f in unreadable]
            # what privileges.dropped hands over: root's own files, never behind a symlink
            handed = not os.path.islink(cfg.bayes.db) and any(
                st.st_uid == 0 and st.st_nlink == 1 for st in sts)
            r.warn(f"[bayes] db: user {name!r} may not read "
                   + ", ".join(permissions.described(f, st)
                               for f, st in zip(unreadable, sts, strict=True))
                   + ": every message would get on_unavailable"
                   + (" (a milter started as root hands files root owns to its user at start; "
                      "under systemd it starts as that user)" if handed else "")
                   + f": chown {name} {' '.join(unreadable)}")
    # unset, it is the milter's own TMPDIR, which need not be the admin's shell's
    # (libpam-tmpdir's /tmp/user/0): only a configured one can be judged from here
    spool = m.spool_dir
    if spool and os.path.isdir(spool) and (privileges.can_write_dir(spool, name) is False
                                           or privileges.can_reach(spool, name) is False):
        r.warn(f"[milter] spool_dir: {spool} is not writable by user {name!r}; a message above "
               "spool_memory would get on_error")


def find_postconf() -> str | None:
    return shutil.which("postconf") or next(
        (p for p in ("/usr/sbin/postconf", "/usr/local/sbin/postconf") if os.access(p, os.X_OK)),
        None)


def _postconf(exe: str, config_dir: str | None, *args: str) -> str:
    cmd = [exe, *(["-c", config_dir] if config_dir else []), *args]
    # main.cf is bytes to Postfix: a value in Latin-1 (a banner naming M\xfcller) must not
    # make the whole check a UnicodeDecodeError; such bytes come back as they were
    r = subprocess.run(cmd, capture_output=True, text=True, errors="surrogateescape",
                       timeout=30, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        where = f" -c {config_dir}" if config_dir else ""
        raise OSError(f"postconf{where} failed: {(r.stderr or r.stdout).strip()[:500]}")
    return r.stdout


def parse_master(text: str) -> list[Service]:
    """smtpd services from `postconf -M` output (chroot column, -o smtpd_milters= and the
    other -o milter_…= overrides, also in
    the braced form `-o {smtpd_milters={ unix:…, default_action=accept }}`)."""
    out: list[Service] = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 8 or f[7] != "smtpd" or f[0].startswith("#"):
            continue
        # Postfix >= 3.0: "-" in the chroot column means n
        svc = Service(f"{f[0]}/{f[1]}", chroot=f[4] == "y")
        head = re.match(r"\s*(?:\S+\s+){7}\S+", line)
        rest = _master_words(line[head.end():] if head else "")
        for i, tok in enumerate(rest):
            opt = tok if tok != "-o" else (rest[i + 1] if i + 1 < len(rest) else "")
            if opt.startswith("{") and opt.endswith("}"):  # {name = value}, blanks allowed
                name, eq, value = opt[1:-1].partition("=")
                opt = f"{name.strip()}={value.strip()}" if eq else ""
            name, eq, value = opt.partition("=")
            if eq and name == "smtpd_milters":
                svc.milters = value
            elif eq and name in PARAMS and (name.startswith("milter_")
                                            or name == "smtpd_milter_maps"):
                svc.overrides[name] = value
        out.append(svc)
    return out


def _master_words(text: str) -> list[str]:
    """master.cf arguments: blank-separated words, a `{…}` group (braces nest) one word."""
    words: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        start, depth = i, 0
        while i < n and (depth or not text[i].isspace()):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        words.append(text[start:i])
    return words


def read_postfix(exe: str, config_dir: str | None = None) -> PostfixSettings:
    values: dict[str, str] = {}
    # -x: values as Postfix uses them ($name expanded), as in smtpd_milters = $my_milters
    for line in _postconf(exe, config_dir, "-x", *PARAMS).splitlines():
        name, sep, value = line.partition(" = ")
        if sep:
            values[name.strip()] = value.strip()
        elif line.endswith(" ="):
            values[line[:-2].strip()] = ""
    explicit = {line.partition(" =")[0].strip()
                for line in _postconf(exe, config_dir, "-n").splitlines() if " =" in line}
    master = parse_master(_postconf(exe, config_dir, "-Mx"))
    where = config_dir or os.environ.get("MAIL_CONFIG") or "/etc/postfix"
    return PostfixSettings(where, values, explicit, master)


def bayes_state(cfg: Config, r: Report) -> None:
    """When the Bayes engine would answer on_unavailable for every message: a database it
    cannot use is a warning; a missing or untrained one, every install's first state, a note.
    And a database on a network filesystem, which hosts sharing it can corrupt: a warning."""
    db = cfg.bayes.db
    if shared := store.shared_problem(db):
        r.warn(shared)
    # not there, or only out of this user's reach (a directory it may not enter)?
    if not os.path.exists(db) and not store.access_problem(db, write=False):
        db_dir = os.path.dirname(os.path.abspath(db))
        above = permissions.nearest(db_dir)
        if dangling := permissions.dangling_link(db_dir, above):
            r.warn(f"[bayes] db: {dangling}: the milter would not start")
            return
        if os.path.isdir(above) and permissions.read_only_fs(above):  # run: "unusable"
            r.warn(f"[bayes] db: {db} does not exist, and {above} is on a filesystem mounted "
                   "read-only: the milter cannot make it, and every message would get "
                   "on_unavailable")
            return
        r.note(f"[bayes] db: {db} does not exist yet: the milter creates it empty, and mail "
               "gets on_unavailable until it is trained (spambridge train)")
        return
    try:
        reader = store.SqliteReader(db)
        try:
            t = reader.totals()
            limits = store.recorded_limits(reader.conn)
        finally:
            reader.close()
    except store.StoreError as e:
        me = permissions.user_name()
        whose = ("" if me in ("root", cfg.milter.user or "root") else
                 f" (if the milter ran as {me}, who ran this check; it runs as "
                 f"{cfg.milter.user or 'root'}: run check-config as root to judge for it)")
        r.warn(f"[bayes] db: {e}: every message would get on_unavailable{whose}")
        return
    if not store.can_mark(db):
        r.note(f"[bayes] db: {db}: its filesystem keeps no extended attributes, so pages a "
               "killed `train` left in its -wal cannot be told from a new file's after a "
               "database is put in its place: fold them first (docs/bayes.md)")
    if not t.trained(cfg.bayes.min_trained):
        r.note(f"[bayes] db: {db} is not trained yet ({t.nspam} spam, {t.nham} ham; "
               f"min_trained {cfg.bayes.min_trained}): mail gets on_unavailable until it is")
    b = cfg.bayes
    if limits is not None and limits != (b.max_bytes, b.max_tokens):
        r.note(f"[bayes] max_bytes/max_tokens: {db} was first trained with max_bytes = "
               f"{limits[0]} and max_tokens = {limits[1]}, and `train` keeps to them; the "
               f"config's {b.max_bytes} and {b.max_tokens} bound scoring only")


def spamd_state(cfg: Config, r: Report) -> None:
    """Whether spamd answers a PING now (engine spamd or spamd+bayes). Down or out of reach,
    every message gets on_unavailable, or the Bayes verdict with spamd+bayes, while the
    milter starts as if all were well. Each server of a pool is asked on its own, and each
    that does not answer is a warning: the others take its mail, but the pool has lost what
    it was for, and the start-up log says nothing of it."""
    if cfg.milter.engine == "bayes":
        return
    import asyncio
    from dataclasses import replace

    from spambridge.scanners.spamd import CaFileError, SpamdScanner
    from spambridge.verdict import ScanError

    pool = cfg.spamd.servers
    one = [cfg.spamd] if not pool else [replace(cfg.spamd, servers=(s,)) for s in pool]
    dead = 0
    for spamd in one:
        try:
            scanner = SpamdScanner(spamd, cfg.milter.scan_timeout)
        except CaFileError as e:  # `run` stops at it (exit 78); no server can be asked
            if os.access(cfg.spamd.ca_file, os.R_OK):  # else check_local said it already
                r.warn(f"[spamd] ca_file: {e}")
            return
        where = scanner.target  # as the milter's log names it

        async def ping(scanner: SpamdScanner = scanner) -> None:
            try:
                await asyncio.wait_for(scanner.ping(), cfg.milter.scan_timeout)
            finally:
                await scanner.aclose()

        try:
            asyncio.run(ping())
        except (ScanError, TimeoutError, OSError) as e:
            dead += 1
            then = ("every message would get on_unavailable" if cfg.milter.engine == "spamd"
                    else "the Bayes engine would decide every message "
                    "(fallback=spamd-unavailable)")
            if len(one) > 1:
                then = ("the other servers would take its mail" if dead < len(one) else
                        f"no server of [spamd] servers answers: {then}")
            # an exception is true whatever its text: a bare TimeoutError said "()"
            why = str(e) or f"no answer within scan_timeout {cfg.milter.scan_timeout:g}s"
            r.warn(f"[spamd] spamd at {where} does not answer a PING ({why}): {then}")
        else:
            r.note(f"spamd at {where} answers")


_KEYED = re.compile(r"\[(\w+)\] (\w+): ")


def _located(cfg: Config, warning: str) -> str:
    """A warning about a key, said as `run` says what stops it (key_at): `FILE:LINE: [section]
    key: ...`, or `command line: ...` for a key a flag gave."""
    m = _KEYED.match(warning)
    return f"{key_at(cfg, m[1], m[2])}: {warning[m.end():]}" if m else warning


def main(cfg: Config, postfix: bool = True, postfix_config: str | None = None) -> int:
    # the socket as `run` logs it at start: `inet:8893` is 127.0.0.1 only, not libmilter's any
    print(f"{cfg.source}: OK (engine={cfg.milter.engine}, "
          f"socket={parse_socket_spec(cfg.milter.socket).libmilter}, "
          f"scan_timeout={cfg.milter.scan_timeout:g}s)")
    r = Report()
    if cfg.metrics.host:
        try:
            addr = ipaddress.ip_address(cfg.metrics.host)
            # [::ffff:127.0.0.1] is loopback too (Python 3.11 does not say so of it)
            loopback = (getattr(addr, "ipv4_mapped", None) or addr).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            r.note(f"metrics on {cfg.metrics.listen}: plain HTTP without authentication, "
                   "reachable beyond this host")
    local = check_local(cfg)
    r.warnings += local.warnings
    r.notes += local.notes
    spamd_state(cfg, r)
    if postfix:
        exe = find_postconf()
        if exe is None:
            r.note("postconf not found: Postfix's side not checked (--no-postfix skips this)")
        else:
            try:
                pf = read_postfix(exe, postfix_config)
            except (OSError, subprocess.SubprocessError) as e:
                r.warn(f"cannot read Postfix's settings: {e}")
            else:
                print(f"postfix {pf.params.get('mail_version', '?')} ({pf.config_dir}): "
                      f"smtpd_milters = {pf.params.get('smtpd_milters', '')}")
                found = check_postfix(cfg, pf)
                r.warnings += found.warnings
                r.notes += found.notes
                problem = socket_problem(cfg, pf.params.get("mail_owner") or "postfix")
                if problem:
                    r.warn(problem)
    for n in r.notes:
        print(f"note: {n}")
    for w in r.warnings:
        print(f"warning: {_located(cfg, w)}")
    if r.warnings:
        print(f"check-config: {len(r.warnings)} warning(s)")
        return 1
    print("check-config: all well")
    return 0
