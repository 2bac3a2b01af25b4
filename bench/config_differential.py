"""`spambridge check-config` against `spambridge run`, config by config: what an admin runs
before `systemctl reload`/`restart` must pass what `run` starts with, and refuse what `run`
refuses, naming the same file, line and key; the values it says must be the ones `run` logs.

Each case is the packaged example config (packaging/spambridge.toml, made to live in a temp
directory) with one key set to an edge value, or a command-line flag, or a file-level oddity.
Both commands run on it in a fresh temp directory (the socket and the Bayes database under
it; spamd on a closed port of --ports; metrics on another). `run` either exits at start or
logs "listening on" (or stays up, silent): then it gets SIGTERM by its PID. Needs root for
the `[milter] user` cases and for the read-only tmpfs it mounts (and unmounts) for the {RO}
cases, which are left out otherwise.

    .venv/bin/python bench/config_differential.py --ports 15800-15899 [--only SUBSTR] [-v]

Prints one line per case that differs (and with -v every case), then the counts. No
assertions: it counts.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
START_WAIT = 15.0  # seconds `run` gets to log "listening on" or exit

# the keys an error or warning names: "FILE:LINE: [section] key: ..." or "[section] key: ..."
_ERROR = re.compile(r"configuration error: (?:(?P<where>command line|[^:\n]+(?::\d+)?): )?"
                    r"(?:(?P<flag>--[a-z-]+)|\[(?P<sec>\w+)\] (?P<key>\w+))?")
_WARNED = re.compile(r"^warning: (?:(\S+?:\d+|\S+|command line): )?\[(\w+)\] (\w+)", re.M)
_CC_OK = re.compile(r": OK \(engine=(\S+), socket=(\S+), scan_timeout=(\S+?)s\)")
_LISTENING = re.compile(r"listening on (\S+) \(engine=(\S+), cap=(\S+?)s(, tag-only)?;")


@dataclass
class Case:
    name: str
    edits: dict[tuple[str, str], str] = field(default_factory=dict)  # (section, key) → TOML
    flags: list[str] = field(default_factory=list)
    raw: str = ""  # appended to the file as it is
    top: str = ""  # put before the first section
    prepare: Callable[[Path], None] | None = None  # makes files in the case's directory


@dataclass
class Outcome:
    status: str  # cc: ok / warn / error / usage; run: started / refused / failed / other
    where: str = ""  # file:line or "command line"
    key: str = ""  # "[section] key" or the flag
    warned: list[str] = field(default_factory=list)  # cc: the keys its warnings name
    warned_at: dict[str, str] = field(default_factory=dict)  # cc: key → the file:line named
    values: tuple[str, ...] = ()
    text: str = ""


def base_config(d: Path, ports: list[int]) -> dict[tuple[str, str], str]:
    """The example's keys, moved into `d` and onto our ports; edits replace or add to them."""
    return {
        ("milter", "socket"): f'"unix:{d}/sock/sb.sock"',
        ("spamd", "host"): '"127.0.0.1"',
        ("spamd", "port"): str(ports[0]),
        ("bayes", "db"): f'"{d}/db/bayes.sqlite"',
    }


def render(values: dict[tuple[str, str], str], raw: str, top: str = "") -> str:
    out: list[str] = [top] if top else []
    for section in ("milter", "spamd", "bayes", "policy", "log", "metrics"):
        keys = [(k, v) for (s, k), v in values.items() if s == section and v is not None]
        if keys:
            out.append(f"[{section}]")
            out += [f"{k} = {v}" for k, v in keys]
            out.append("")
    return "\n".join(out) + raw


def mkfile(rel: str, content: bytes = b"x") -> Callable[[Path], None]:
    def make(d: Path) -> None:
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)

    return make


def mkdir(rel: str, mode: int = 0o755) -> Callable[[Path], None]:
    def make(d: Path) -> None:
        p = d / rel
        p.mkdir(parents=True, exist_ok=True)
        p.chmod(mode)

    return make


def both(*makers: Callable[[Path], None]) -> Callable[[Path], None]:
    def make(d: Path) -> None:
        for m in makers:
            m(d)

    return make


def cases(ports: list[int]) -> list[Case]:
    """Every key of the example and the reference set to edge values; flags; file oddities."""
    sp, mp, lp = ports[0], ports[1], ports[2]  # closed spamd port, metrics port, a listener
    D = "{D}"  # noqa: N806 - replaced by the case's directory
    out: list[Case] = []

    def key(section: str, k: str, *values: str, prepare: Callable[[Path], None] | None = None
            ) -> None:
        for v in values:
            out.append(Case(f"[{section}] {k} = {v}", {(section, k): v}, prepare=prepare))

    # [milter] socket, in every syntax
    key("milter", "socket",
        f'"unix:{D}/sock/sb.sock"', f'"local:{D}/sock/sb.sock"', f'"inet:{lp}@127.0.0.1"',
        f'"inet:{lp}"', f'"inet6:{lp}@::1"', f'"inet6:{lp}@[::1]"', f'"inet6:{lp}"',
        f'"inet:{lp}@localhost"', f'"inet:{lp}@nonexistent.invalid"', f'"inet:{lp}@::1"',
        f'"inet6:{lp}@127.0.0.1"', f'"inet:{lp}@192.0.2.1"', f'"inet:{lp}@[127.0.0.1]"',
        f'"inet:{lp}@127.0.0.1:{lp}"', f'"inet:127.0.0.1:{lp}"', f'"inet:{lp}@"',
        '"inet:0@127.0.0.1"', '"inet:65536@127.0.0.1"', '"unix:relative/sb.sock"',
        f'"{D}/sock/sb.sock"', '"relative.sock"', '""', f'"unix:{D}/new/deeper/sb.sock"',
        f'"unix:{D}/" ', f'"unix:{D}/sock/"', '"unix:/proc/sb.sock"',
        f'"unix:{D}/sock/' + "x" * 120 + '"', f'"UNIX:{D}/sock/sb.sock"',
        f'"unix:{D}/sock/s\u00fc.sock"', f'" unix:{D}/sock/sb.sock"', "1", "true")
    key("milter", "socket", f'"unix:{D}/file/sb.sock"', prepare=mkfile("file"))
    key("milter", "socket", f'"unix:{D}/sock/in-the-way"', prepare=mkfile("sock/in-the-way"))
    key("milter", "socket", f'"unix:{D}/sock/adir"', prepare=mkdir("sock/adir"))
    key("milter", "socket", f'"unix:{D}/ro/sb.sock"', prepare=mkdir("ro", 0o555))
    key("milter", "socket", f'"inet:{ports[3]}@127.0.0.1"', prepare=_busy(ports[3]))
    # socket_mode, socket_group, name, engine
    key("milter", "socket_mode", '"0660"', '"660"', '"0777"', '"0000"', '"0888"', '"6600"',
        '"0o660"', "660", '""', '"01660"', '"0600"', '" 0660"')
    key("milter", "socket_group", '""', '"root"', '"postfix"', '"nosuchgroup"', '"\u00fcn"',
        "0", '" root"', '"65534"')
    key("milter", "name", '""', '"x"', '"\u00fc"', '" "', '"' + "n" * 1000 + '"', '"a b"',
        '"a%b"', "1")
    key("milter", "engine", '"bayes"', '"spamd"', '"spamd+bayes"', '"Bayes"', '""', "1",
        '"spamd + bayes"')
    key("milter", "scan_timeout", "0.1", "0.09", "120", "120.1", "0", "-1", '"10"', "true",
        "nan", "inf", "1", "1e-1")
    key("milter", "max_scan_size", "1023", "1024", "268435456", "268435457", "1.5", '"1024"',
        "1_048_576", "0x400")
    key("milter", "spool_memory", "-1", "0", "67108864", "67108865")
    key("milter", "spool_dir", '""', f'"{D}/nonexistent"', '"relative"', '"/proc"',
        f'"{D}/sock"', '" "')
    key("milter", "spool_dir", f'"{D}/afile"', prepare=mkfile("afile"))
    key("milter", "spool_dir", f'"{D}/ro"', prepare=mkdir("ro", 0o555))
    key("milter", "skip_authenticated", "true", "false", '"yes"', "1")
    key("milter", "trusted_networks", "[]", '["10.0.0.0/8"]', '["::ffff:10.0.0.0/104"]',
        '["bad"]', '"10.0.0.0/8"', "[1]", '["10.0.0.1/33"]', '["10.0.0.1/8"]', '[""]')
    key("milter", "user", '""', '"nobody"', '"root"', '"nosuchuser"', '"0"', '"spambridge"',
        '"postfix"', '" nobody"')
    key("milter", "user", '"nobody"', prepare=mkdir("db", 0o755))  # root's db dir, there
    key("milter", "unknown_key", "1")
    # [spamd]
    key("spamd", "host", '""', '"127.0.0.1"', '"[::1]"', '"::1"', '"nonexistent.invalid"',
        '"b\u00fccher.de"', '"a b"', f'"127.0.0.1:{sp}"', '"localhost"')
    key("spamd", "port", "0", "1", "65535", "65536", '"783"', "783.0")
    key("spamd", "socket", '""', '"relative"', f'"{D}/nosock"', f'"unix:{D}/nosock"')
    key("spamd", "tls", "true", "false", '"true"')
    key("spamd", "ca_file", '""', f'"{D}/nope.pem"')
    key("spamd", "user", '""', '"j\u00f6rg"', '"nobody"', '"a b"')
    key("spamd", "per_recipient_user", "true", "false", '"address"', '"local-part"', '"x"',
        "1")
    key("spamd", "connect_timeout", "0.04", "0.05", "60", "61")
    key("spamd", "share", "0.09", "0.1", "0.95", "0.96")
    key("spamd", "servers", "[]", f'["127.0.0.1:{sp}"]', '["a", "a"]', '["/sock"]',
        f'["[::1]:{sp}"]', '"x"', '["127.0.0.1", "127.0.0.1:783"]', "[1]")
    # [bayes]
    key("bayes", "db", '""', '"relative.sqlite"', f'"{D}/nodir/x.sqlite"', '"/proc/x.sqlite"',
        f'"{D}/db/"', '" "')
    key("bayes", "db", f'"{D}/afile/x.sqlite"', prepare=mkfile("afile"))
    key("bayes", "db", f'"{D}/adir"', prepare=mkdir("adir"))
    key("bayes", "db", f'"{D}/garbage.sqlite"', prepare=mkfile("garbage.sqlite", b"x" * 5000))
    key("bayes", "db", f'"{D}/ro/x.sqlite"', prepare=mkdir("ro", 0o555))
    key("bayes", "min_trained", "-1", "0", "1000000000", "1000000001")
    key("bayes", "max_bytes", "4095", "4096", "67108864", "67108865")
    key("bayes", "max_tokens", "99", "100", "30000", "30001")
    key("bayes", "ham_cutoff", "-0.1", "0", "1", "1.1", "0.95")
    key("bayes", "spam_cutoff", "0", "1", "0.1", "0.999")
    key("bayes", "reject_cutoff", "0", "1", "1.01", "0.5")
    # [policy]
    key("policy", "tag_at", "-1001", "-1000", "10000", "10001", "nan", "16")
    key("policy", "reject_at", "-1000", "4.9", "10000", "10001", "-inf")
    key("policy", "tag_only", "true", '"true"')
    key("policy", "subject_tag", '""', '"[SPAM]"', '"' + "t" * 101 + '"', '"\u00fc"',
        '"  [SPAM] "', '"\\t"')
    for k, good in (("reject_reply", "550 5.7.1 no"), ("tempfail_reply", "451 4.7.1 later"),
                    ("unchecked_reject_reply", "554 5.7.1 no")):
        key("policy", k, f'"{good}"', '"550 no"', '"451 4.7.1 x"' if k != "tempfail_reply"
            else '"550 5.7.1 x"', '"550 5.7.1 ' + "x" * 981 + '"', '""', '"550 5.7.1 \u2013"')
    for k in ("on_unavailable", "on_timeout", "on_oversize", "on_error"):
        key("policy", k, '"accept"', '"tempfail"', '"reject"', '"Reject"', '"discard"')
    # [log], [metrics]
    key("log", "level", '"debug"', '"error"', '"DEBUG"', '"trace"', '""')
    key("metrics", "listen", '""', f'"127.0.0.1:{mp}"', f'"localhost:{mp}"', f'"[::1]:{mp}"',
        '"127.0.0.1:0"', f'"192.0.2.1:{mp}"', f'"::1:{mp}"', f'"[::ffff:127.0.0.1]:{mp}"')
    key("metrics", "listen", f'"127.0.0.1:{ports[3]}"', prepare=_busy(ports[3]))
    key("metrics", "listen", f'"127.0.0.1:{lp}"')
    out.append(Case("metrics and milter on one port", {
        ("metrics", "listen"): f'"127.0.0.1:{lp}"',
        ("milter", "socket"): f'"inet:{lp}@127.0.0.1"'}))
    # file-level oddities
    out += [
        Case("unknown section", raw="[foo]\nx = 1\n"),
        Case("duplicate key", raw="[log]\nlevel = \"info\"\nlevel = \"debug\"\n"),
        Case("duplicate section", raw="[log]\nlevel = \"info\"\n[log]\nlevel = \"debug\"\n"),
        Case("sub-table", raw="[milter.extra]\nx = 1\n"),
        Case("dotted key", raw="[log]\nlevel.x = 1\n"),
        Case("inline table section", raw="policy = { tag_at = 99999 }\n"),
        Case("key above sections", top='level = "info"\n'),
        Case("BOM", top="\ufeff"),
        Case("CRLF lines", raw="[log]\r\nlevel = \"info\"\r\n"),
    ]
    # flags over the file, alone and against a key they replace
    for flags in (["--engine", "spamd"], ["--engine", "spamd+bayes"], ["--engine", "bayes"],
                  ["--db", f"{D}/flagdb/b.sqlite"], ["--db", "relative.sqlite"], ["--db", ""],
                  ["--socket", f"unix:{D}/flag/sb.sock"], ["--socket", f"inet:{lp}@127.0.0.1"],
                  ["--socket", "relative"], ["--spamd", f"127.0.0.1:{sp}"],
                  ["--spamd", f"{D}/spamd.sock"], ["--spamd", "nonexistent.invalid"],
                  ["--spamd", "127.0.0.1:0"], ["--scan-timeout", "5"],
                  ["--scan-timeout", "0"], ["--tag-at", "20"], ["--reject-at", "1"],
                  ["--tag-only"], ["--log-level", "debug"]):
        out.append(Case(f"flag {' '.join(flags)}", flags=flags))
    out.append(Case("flag --db over a bad [bayes] db dir", {("bayes", "db"): f'"{D}/afile/x"'},
                    flags=["--db", f"{D}/db/ok.sqlite"], prepare=mkfile("afile")))
    out.append(Case("flag --engine spamd over a bad [bayes] db", {("bayes", "db"):
                    f'"{D}/afile/x"'}, flags=["--engine", "spamd"], prepare=mkfile("afile")))
    out.append(Case("flag --socket over a socket in the way", {("milter", "socket"):
                    f'"unix:{D}/sock/in-the-way"'}, flags=["--socket", f"unix:{D}/sock/ok"],
                    prepare=mkfile("sock/in-the-way")))
    out.append(Case("flag --socket with user nobody in a root dir", {("milter", "user"):
                    '"nobody"'}, flags=["--socket", f"unix:{D}/ro/sb.sock"],
                    prepare=mkdir("ro", 0o555)))
    # on a filesystem mounted read-only ({RO}: a tmpfs the harness mounts, as root)
    key("milter", "socket", '"unix:{RO}/sock/sb.sock"', '"unix:{RO}/new/sb.sock"')
    key("bayes", "db", '"{RO}/db/bayes.sqlite"', '"{RO}/new/bayes.sqlite"')
    key("milter", "spool_dir", '"{RO}/db"')
    # combinations a key's check depends on
    out += [
        Case("user nobody, db dir root's 0700", {("milter", "user"): '"nobody"'},
             prepare=mkdir("db", 0o700)),
        Case("user nobody, db dir missing", {("milter", "user"): '"nobody"'}),
        Case("user nobody, db dir missing two deep", {("milter", "user"): '"nobody"',
             ("bayes", "db"): f'"{D}/a/b/bayes.sqlite"'}),
        Case("user nobody, db dir missing under root's 0700", {("milter", "user"): '"nobody"',
             ("bayes", "db"): f'"{D}/hidden/new/bayes.sqlite"'}, prepare=mkdir("hidden", 0o700)),
        Case("user nobody, db dir missing under root's 0755", {("milter", "user"): '"nobody"',
             ("bayes", "db"): f'"{D}/shown/new/bayes.sqlite"'}, prepare=mkdir("shown", 0o755)),
        Case("user nobody, spool dir root's 0700", {("milter", "user"): '"nobody"',
             ("milter", "spool_dir"): f'"{D}/spool"'}, prepare=mkdir("spool", 0o700)),
        Case("user nobody, socket dir root's 0755", {("milter", "user"): '"nobody"'},
             prepare=mkdir("sock", 0o755)),
        Case("user nobody, socket dir root's 0700", {("milter", "user"): '"nobody"'},
             prepare=mkdir("sock", 0o700)),
        Case("user nobody, engine spamd, db dir unwritable", {("milter", "user"): '"nobody"',
             ("milter", "engine"): '"spamd"'}, prepare=mkdir("db", 0o700)),
        Case("tls with socket", {("spamd", "tls"): "true",
                                 ("spamd", "socket"): f'"{D}/spamd.sock"'}),
        Case("tls, ca_file missing", {("spamd", "tls"): "true",
                                      ("spamd", "ca_file"): f'"{D}/nope.pem"',
                                      ("milter", "engine"): '"spamd"'}),
        Case("tls, ca_file garbage", {("spamd", "tls"): "true",
                                      ("spamd", "ca_file"): f'"{D}/bad.pem"',
                                      ("milter", "engine"): '"spamd"'},
             prepare=mkfile("bad.pem", b"not a certificate\n")),
        Case("tls, ca_file a directory", {("spamd", "tls"): "true",
                                          ("spamd", "ca_file"): f'"{D}/db"',
                                          ("milter", "engine"): '"spamd"'},
             prepare=mkdir("db")),
        Case("tls, ca_file garbage, engine bayes", {("spamd", "tls"): "true",
                                                    ("spamd", "ca_file"): f'"{D}/bad.pem"'},
             prepare=mkfile("bad.pem", b"not a certificate\n")),
        Case("servers with socket", {("spamd", "servers"): f'["127.0.0.1:{sp}"]',
                                     ("spamd", "socket"): f'"{D}/spamd.sock"'}),
        Case("servers with host", {("spamd", "servers"): f'["127.0.0.1:{sp}"]',
                                   ("spamd", "host"): '"localhost"'}),
        Case("engine spamd, relative db", {("milter", "engine"): '"spamd"',
                                           ("bayes", "db"): '"relative.sqlite"'}),
        Case("engine spamd, db under a file", {("milter", "engine"): '"spamd"',
                                               ("bayes", "db"): f'"{D}/afile/x"'},
             prepare=mkfile("afile")),
        Case("cutoffs reversed, both written", {("bayes", "ham_cutoff"): "0.9",
                                                ("bayes", "spam_cutoff"): "0.2"}),
        Case("tag_at above reject_at, both written", {("policy", "tag_at"): "20",
                                                      ("policy", "reject_at"): "10"}),
        Case("socket_group root, mode 0600", {("milter", "socket_group"): '"root"',
                                              ("milter", "socket_mode"): '"0600"'}),
        Case("spool_memory 0, spool_dir unwritable for nobody",
             {("milter", "spool_memory"): "0", ("milter", "user"): '"nobody"',
              ("milter", "spool_dir"): f'"{D}/ro"'}, prepare=mkdir("ro", 0o555)),
    ]
    return out


def _busy(port: int) -> Callable[[Path], None]:
    """A listener on 127.0.0.1:port held for the case (closed with the harness)."""
    def make(d: Path) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(1)
        _HELD.append(s)

    return make


_HELD: list[socket.socket] = []


def parse_error(text: str) -> tuple[str, str]:
    m = _ERROR.search(text)
    if not m:
        return "", ""
    where = m.group("where") or ""
    k = m.group("flag") or (f"[{m.group('sec')}] {m.group('key')}" if m.group("sec") else "")
    return where, k


def run_check(cfg: Path, flags: list[str], env: dict[str, str]) -> Outcome:
    p = subprocess.run([PY, "-m", "spambridge", "check-config", "--no-postfix",
                        "--config", str(cfg), *flags], capture_output=True, text=True,
                       env=env, cwd=cfg.parent, timeout=120, stdin=subprocess.DEVNULL)
    text = p.stdout + p.stderr
    status = {0: "ok", 1: "warn", 78: "error", 2: "usage"}.get(p.returncode,
                                                              f"rc{p.returncode}")
    where, k = parse_error(p.stderr) if p.returncode == 78 else ("", "")
    m = _CC_OK.search(p.stdout)
    found = _WARNED.findall(p.stdout)
    return Outcome(status, where, k, [f"[{s}] {k2}" for _, s, k2 in found],
                   {f"[{s}] {k2}": w for w, s, k2 in found}, m.groups() if m else (), text)


def run_milter(cfg: Path, flags: list[str], env: dict[str, str]) -> Outcome:
    err = cfg.parent / "run.err"
    with open(err, "wb") as f:
        proc = subprocess.Popen([PY, "-m", "spambridge", "run", "--config", str(cfg), *flags],
                                stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cfg.parent,
                                stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + START_WAIT
    started = False
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if "listening on" in err.read_text(errors="replace"):
            started = True
            break
        time.sleep(0.05)
    if proc.poll() is None:
        # alive and silent ([log] level = "error" logs no "listening on"): it serves
        started = True
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    text = err.read_text(errors="replace")
    if started:
        m = _LISTENING.search(text)
        return Outcome("started", values=m.groups() if m else (), text=text)
    rc = proc.returncode
    status = {78: "refused", 1: "failed", 2: "usage"}.get(rc, f"rc{rc}")
    where, k = parse_error(text) if rc == 78 else ("", "")
    if rc == 1 and (m := re.search(r"^spambridge: (\S+:\d+): \[(\w+)\] (\w+)", text, re.M)):
        where, k = m.group(1), f"[{m.group(2)}] {m.group(3)}"  # exit 1 naming file:line, key
    return Outcome(status, where, k, text=text)


def libmilter_spelling(spec: str) -> str:
    """check-config's socket= as `run`'s "listening on" would say it."""
    sys.path.insert(0, str(ROOT))
    from spambridge.socketspec import parse_socket_spec

    try:
        return parse_socket_spec(spec).libmilter
    except ValueError:
        return spec


def judge(cc: Outcome, rn: Outcome) -> list[str]:
    """The differences an admin would be hurt by (empty: they agree)."""
    diffs: list[str] = []
    if cc.status == "usage" and rn.status != "usage":
        return [f"check-config cannot take what run takes (run: {rn.status})"]
    if cc.status in ("ok", "warn") and rn.status in ("refused", "failed"):
        if rn.key and rn.key in cc.warned:
            if cc.warned_at[rn.key] != rn.where:  # warned of, on the key, but elsewhere
                return [f"check-config warns at {cc.warned_at[rn.key] or '(no line)'}, run "
                        f"refuses at {rn.where} {rn.key}"]
            return []  # warned of, on the key and line run names
        diffs.append(f"check-config {cc.status}{' ' + str(cc.warned) if cc.warned else ''}, "
                     f"run {rn.status} ({rn.where} {rn.key})")
    elif cc.status == "warn" and rn.status == "started" and re.search(
            r"^warning: .*(would not start|refuses? to start)", cc.text, re.M):
        diffs.append("check-config says it would not start, run started")
    elif cc.status == "error" and rn.status == "started":
        diffs.append(f"check-config error ({cc.where} {cc.key}), run started")
    elif cc.status == "error" and rn.status == "refused":
        if (cc.where, cc.key) != (rn.where, rn.key):
            diffs.append(f"both refuse, check-config at {cc.where} {cc.key}, run at "
                         f"{rn.where} {rn.key}")
    elif cc.status == "error" and rn.status not in ("refused", "started"):
        diffs.append(f"check-config error, run {rn.status}")
    if cc.values and rn.values:
        engine, sock, cap = cc.values
        r_sock, r_engine, r_cap, _tag_only = rn.values
        if engine != r_engine or cap != r_cap:
            diffs.append(f"values: check-config engine={engine} cap={cap}, run "
                         f"engine={r_engine} cap={r_cap}")
        if sock != r_sock:
            how = "spelled otherwise" if libmilter_spelling(sock) == r_sock else "another"
            diffs.append(f"socket {how}: check-config {sock}, run {r_sock}")
    return diffs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ports", default="15800-15899", help="LO-HI: at least 4 free ports")
    ap.add_argument("--only", default="", help="run only cases whose name has this")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep each case's directory")
    a = ap.parse_args()
    lo, hi = (int(x) for x in a.ports.split("-"))
    ports = list(range(lo, hi + 1))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("JOURNAL_STREAM", None)
    tried = diverged = 0
    kinds: dict[str, int] = {}
    top = Path(tempfile.mkdtemp(prefix="cfgdiff-"))
    top.chmod(0o755)  # `[milter] user` cases: the user must reach the case directories
    ro = top / "ro"
    if os.geteuid() == 0:
        ro.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(ro)],
                       check=True)
        for sub in ("sock", "db"):
            (ro / sub).mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
    try:
        for i, case in enumerate(cases(ports)):
            if a.only and a.only not in case.name:
                continue
            if "{RO}" in case.name and not ro.is_dir():
                continue  # not root: no read-only mount
            d = top / f"c{i}"
            d.mkdir()
            d.chmod(0o755)
            values = {**base_config(d, ports), **case.edits}
            text = render({k: v.replace("{D}", str(d)).replace("{RO}", str(ro)) if v else v
                           for k, v in values.items()},
                          case.raw, case.top)
            cfg = d / "spambridge.toml"
            cfg.write_text(text)
            if case.prepare:
                case.prepare(d)
            flags = [f.replace("{D}", str(d)) for f in case.flags]
            tried += 1
            cc = run_check(cfg, flags, env)
            rn = run_milter(cfg, flags, env)  # where check-config left it
            for s in _HELD:
                s.close()
            _HELD.clear()
            diffs = judge(cc, rn)
            if diffs:
                diverged += 1
                for x in diffs:
                    kinds[x.split(":")[0].split(" (")[0]] = kinds.get(
                        x.split(":")[0].split(" (")[0], 0) + 1
            if diffs or a.verbose:
                print(f"{case.name}: cc={cc.status} {cc.where} {cc.key} {cc.warned} "
                      f"run={rn.status} {rn.where} {rn.key}")
                for x in diffs:
                    print(f"    DIFF {x}")
                if a.verbose and not diffs:
                    for w in re.findall(r"^warning: .*", cc.text, re.M):
                        print(f"    cc {w[:300]}")
                    for w in re.findall(r"(?:WARNING|ERROR) .*", rn.text):
                        print(f"    run {w[:300]}")
                if diffs and a.verbose:
                    print("    cc: " + cc.text.strip().replace("\n", "\n        "))
                    print("    run: " + rn.text.strip()[-1500:].replace("\n", "\n         "))
            if not a.keep:
                shutil.rmtree(d, ignore_errors=True)
    finally:
        if ro.is_mount():
            subprocess.run(["umount", str(ro)], check=False)
        if not a.keep:
            shutil.rmtree(top, ignore_errors=True)
    print(f"\n{tried} configs tried, {diverged} with a difference")
    for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {n:4d}  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
