"""check-config's judging of Postfix settings, as tables (no postconf needed)."""

from __future__ import annotations

import errno
import grp
import os
import pwd
import socket
import sqlite3
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from spamdfakes import BlackHole

from spambridge import permissions, privileges
from spambridge.bayes import store
from spambridge.checkconfig import (
    PostfixSettings,
    Service,
    check_local,
    check_postfix,
    endpoint_matches,
    milter_entries,
    parse_master,
    parse_time,
    socket_problem,
)
from spambridge.config import Config, from_mapping
from spambridge.socketspec import parse_socket_spec

Q = "/var/spool/postfix"
SOCK = "unix:/var/spool/postfix/spambridge/spambridge.sock"
GOOD = {
    "mail_version": "3.7.11", "queue_directory": Q,
    "smtpd_milters": "unix:spambridge/spambridge.sock", "non_smtpd_milters": "",
    "milter_protocol": "6", "milter_default_action": "accept", "milter_content_timeout": "60s",
    "milter_connect_macros": "j {daemon_name} {daemon_addr} v _",
    "milter_helo_macros": "{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}",
    "milter_mail_macros": "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host}",
    "milter_end_of_header_macros": "i", "milter_end_of_data_macros": "i",
}


def settings(chroot: bool = True, explicit: tuple[str, ...] = ("milter_default_action",),
             master_override: str | None = None, **params: str) -> PostfixSettings:
    return PostfixSettings("/etc/postfix", {**GOOD, **params}, set(explicit),
                           [Service("smtp/inet", chroot, master_override)])


def cfg(socket: str = SOCK, scan_timeout: float = 10.0):  # type: ignore[no-untyped-def]
    return from_mapping({"milter": {"socket": socket, "scan_timeout": scan_timeout}})


@pytest.mark.parametrize(("value", "seconds"), [
    ("300s", 300), ("300", 300), ("5m", 300), ("1h", 3600), ("2d", 172800), ("1w", 604800),
    ("1.5s", 1.5), ("soon", None)])
def test_parse_time(value: str, seconds: float | None) -> None:
    assert parse_time(value) == seconds


def test_milter_entries_plain_and_grouped() -> None:
    assert milter_entries("inet:127.0.0.1:8891, unix:spambridge/s.sock") == [
        ("inet:127.0.0.1:8891", {}), ("unix:spambridge/s.sock", {})]
    assert milter_entries("{ unix:spambridge/s.sock, default_action=accept } inet:h:1") == [
        ("unix:spambridge/s.sock", {"default_action": "accept"}), ("inet:h:1", {})]


@pytest.mark.parametrize(("endpoint", "ours", "chroot", "match"), [
    # relative paths resolve against the queue directory, chroot or not
    ("unix:spambridge/spambridge.sock", SOCK, True, True),
    ("unix:spambridge/spambridge.sock", SOCK, False, True),
    # absolute paths: inside the chroot they are relative to the queue directory
    ("unix:/spambridge/spambridge.sock", SOCK, True, True),
    ("unix:/spambridge/spambridge.sock", SOCK, False, False),
    ("unix:/var/spool/postfix/spambridge/spambridge.sock", SOCK, False, True),
    ("unix:/var/spool/postfix/spambridge/spambridge.sock", SOCK, True, False),
    ("local:/run/spambridge/spambridge.sock", "unix:/run/spambridge/spambridge.sock", False, True),
    # Postfix inet:HOST:PORT vs libmilter inet:PORT@HOST
    ("inet:127.0.0.1:8893", "inet:8893@127.0.0.1", True, True),
    ("inet:localhost:8893", "inet:8893@127.0.0.1", True, True),
    ("inet:127.0.0.1:8894", "inet:8893@127.0.0.1", True, False),
    ("inet:[::1]:8893", "inet6:8893@::1", True, True),
    ("inet:127.0.0.1:8893", "inet:8893@0.0.0.0", True, True),
    ("inet:8893@127.0.0.1", "inet:8893@127.0.0.1", True, False),
    ("inet:127.0.0.1:8893", SOCK, True, False),
])
def test_endpoint_matches(endpoint: str, ours: str, chroot: bool, match: bool) -> None:
    assert endpoint_matches(endpoint, parse_socket_spec(ours), Q, chroot)[0] is match


def test_all_well() -> None:
    r = check_postfix(cfg(), settings())
    assert r.warnings == []
    assert "smtpd services that use spambridge: smtp/inet" in r.notes


def test_absolute_path_in_chroot_gets_the_relative_spelling() -> None:
    r = check_postfix(cfg(), settings(smtpd_milters=f"{SOCK}"))
    assert any("does not reach" in w for w in r.warnings)
    assert any("write unix:spambridge/spambridge.sock" in w for w in r.warnings)


def test_libmilter_spelling_in_postfix_is_explained() -> None:
    r = check_postfix(cfg("inet:8893@127.0.0.1"), settings(smtpd_milters="inet:8893@127.0.0.1"))
    assert any("Postfix writes inet:127.0.0.1:8893" in w for w in r.warnings)


def test_socket_outside_the_chroot() -> None:
    r = check_postfix(cfg("unix:/run/spambridge/spambridge.sock"),
                      settings(smtpd_milters="unix:/run/spambridge/spambridge.sock"))
    assert any("cannot be reached" in w or "does not reach" in w for w in r.warnings)


def test_master_cf_override_is_per_service() -> None:
    pf = settings(smtpd_milters="")
    pf.smtpd = [Service("smtp/inet", True, "unix:spambridge/spambridge.sock"),
                Service("submission/inet", True, "")]
    r = check_postfix(cfg(), pf)
    assert r.warnings == []
    assert "smtpd services without spambridge: submission/inet" in r.notes


@pytest.mark.parametrize(("timeout", "cap", "warns"), [
    ("60s", 10.0, False), ("20s", 10.0, True), ("300s", 120.0, False), ("1m", 30.0, True)])
def test_content_timeout_against_the_cap(timeout: str, cap: float, warns: bool) -> None:
    r = check_postfix(cfg(scan_timeout=cap), settings(milter_content_timeout=timeout))
    assert any("milter_content_timeout" in w for w in r.warnings) is warns


def test_missing_macros_are_named_with_their_effect() -> None:
    r = check_postfix(cfg(), settings(milter_mail_macros="{mail_addr}",
                                      milter_end_of_header_macros="",
                                      milter_end_of_data_macros=""))
    text = "\n".join(r.warnings)
    assert "macro {auth_authen}" in text and "skip_authenticated" in text
    assert "macro i " in text and "NOQUEUE" in text
    assert "macro j " not in text


def test_implicit_default_action_warns_but_per_milter_one_counts() -> None:
    r = check_postfix(cfg(), settings(explicit=()))
    assert any("Postfix 3.11" in w for w in r.warnings)
    r = check_postfix(cfg(), settings(
        explicit=(), smtpd_milters="{ unix:spambridge/spambridge.sock, default_action=tempfail }"))
    assert r.warnings == []


def test_a_default_action_postfix_does_not_know_warns() -> None:
    """A typo there (acept) was only a note, and "all well": Postfix knows five values."""
    r = check_postfix(cfg(), settings(milter_default_action="acept"))
    assert r.warnings == ["milter_default_action = 'acept' is not a value Postfix 3.7.11 knows "
                          "(accept, tempfail, reject, quarantine): set what mail should meet "
                          "when spambridge is down, accept or tempfail"]
    r = check_postfix(cfg(), settings(
        smtpd_milters="{ unix:spambridge/spambridge.sock, default_action=tempfial }"))
    assert [w for w in r.warnings if "default_action (per milter) = 'tempfial'" in w]
    for known in ("accept", "tempfail", "reject", "quarantine"):
        assert check_postfix(cfg(), settings(milter_default_action=known)).warnings == []
    # shutdown came with Postfix 3.11
    assert check_postfix(cfg(), settings(milter_default_action="shutdown")).warnings
    assert check_postfix(cfg(), settings(milter_default_action="shutdown",
                                         mail_version="3.11.0")).warnings == []


def test_a_braced_per_service_milter_list_is_read() -> None:
    """`-o { smtpd_milters = { unix:…, content_timeout=5s } }` in master.cf, as Postfix 3.7's
    `postconf -M` prints it: it was not read, so that service's own milter list, default
    action and timeout went unjudged (main.cf's list was reported instead)."""
    line = ("2525       inet  n       -       y       -       -       smtpd -o {smtpd_milters={ "
            "unix:spambridge/spambridge.sock, default_action=accept, content_timeout=5s }} "
            "-o syslog_name=postfix/2525")
    [svc] = parse_master(line)
    assert svc.milters == ("{ unix:spambridge/spambridge.sock, default_action=accept, "
                           "content_timeout=5s }")
    pf = settings()
    pf.smtpd = [svc]
    r = check_postfix(cfg(), pf)
    assert [w for w in r.warnings if "content_timeout (per milter) 5s" in w]


def test_non_smtpd_milters_listing_us_warns() -> None:
    r = check_postfix(cfg(), settings(non_smtpd_milters="unix:spambridge/spambridge.sock"))
    assert any("non_smtpd_milters" in w for w in r.warnings)


def test_old_protocol_warns() -> None:
    assert any("milter_protocol" in w for w in check_postfix(cfg(), settings(
        milter_protocol="2")).warnings)


def test_parse_master() -> None:
    text = (
        "smtp       inet  n       -       y       -       -       smtpd\n"
        "submission inet  n       -       y       -       -       smtpd -o smtpd_milters= "
        "-o smtpd_sasl_auth_enable=yes\n"
        "127.0.0.1:2525 inet n    -       n       -       -       smtpd\n"
        "pickup     unix  n       -       y       60      1       pickup\n")
    assert parse_master(text) == [
        Service("smtp/inet", True, None), Service("submission/inet", True, ""),
        Service("127.0.0.1:2525/inet", False, None)]


def test_what_would_stop_the_milter_at_start_is_found_before() -> None:
    """check-config passing a file that `run` then refuses with exit 78 (which systemd does
    not retry) would leave mail unfiltered after a deploy: users, groups, paths are checked."""
    bad = from_mapping({"milter": {"user": "no-such-user-sb", "socket_group": "no-such-group-sb"},
                        "bayes": {"db": "relative.sqlite"},
                        "spamd": {"tls": True, "ca_file": "/nonexistent/ca.pem"}})
    assert check_local(bad).warnings == [
        "[milter] user: no such user 'no-such-user-sb'",
        "[milter] socket_group: no such group 'no-such-group-sb'",
        "[bayes] db: 'relative.sqlite' is relative to the working directory the milter is "
        "started in (systemd: /); give an absolute path",
        "[spamd] ca_file: /nonexistent/ca.pem cannot be read"]
    good = from_mapping({"milter": {"user": "nobody", "socket_group": "root", "engine": "spamd",
                                    "socket": "inet:8893@127.0.0.1"}})
    assert check_local(good).warnings == []


@pytest.mark.parametrize(("host", "why"), [
    ("nonexistent.invalid", ""),  # "": the resolver's reason, whatever it is here
    ("spamd..invalid", "'spamd..invalid' is not a host name"),
    ("127.0.0.1", None), ("localhost", None), ("", None)])  # None: resolves, no warning
def test_a_listen_host_that_does_not_resolve_is_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], host: str, why: str | None) -> None:
    """check-config said "all well", and `run` then exited 1 ("Unknown host name" from
    libmilter)."""
    from spambridge import cli

    path = tmp_path / "spambridge.toml"
    path.write_text(f'[milter]\nengine = "bayes"\nsocket = "inet:12345{"@" if host else ""}'
                    f'{host}"\n[bayes]\ndb = "{tmp_path / "b.sqlite"}"\n')
    assert cli.main(["check-config", "--no-postfix", "-c", str(path)]) == (why is not None)
    warnings = [w for w in capsys.readouterr().out.splitlines() if w.startswith("warning: ")]
    if why is None:
        assert warnings == []
        return
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"warning: {path}:3: [milter] socket: {host!r} does not "
                                  f"resolve ({why}"), warnings
    assert warnings[0].endswith(f"): the milter cannot listen on inet:12345@{host} and would "
                                "not start"), warnings


@pytest.mark.parametrize("below", ["", "/new"])
def test_a_database_to_make_on_a_read_only_filesystem_is_a_warning(tmp_path: Path,
                                                                   below: str) -> None:
    """No database yet, where the milter cannot make one (its directory, or the one it would
    make that in, mounted read-only): `run` starts, logs "Bayes database unusable" and answers
    on_unavailable for every message; check-config said "does not exist yet: the milter
    creates it" in a note, and "all well"."""
    ro = tmp_path / "ro"
    ro.mkdir()
    db = f"{ro}{below}/bayes.sqlite"
    with mock.patch.object(permissions, "read_only_fs", side_effect=lambda p: p == str(ro)):
        r = check_local(from_mapping({"bayes": {"db": db}}))
    assert (r.warnings, r.notes) == ([
        f"[bayes] db: {db} does not exist, and {ro} is on a filesystem mounted read-only: the "
        "milter cannot make it, and every message would get on_unavailable"], [])


def shared_db(db: str, fstype: str) -> str:
    return (f"[bayes] db: {db} is on a network filesystem ({fstype}): SQLite's WAL mode needs "
            "every process using the database on one host, so milters or `train` runs on "
            "other hosts sharing it can corrupt it; keep one database per host (docs/bayes.md, "
            '"Several hosts")')


def test_a_database_on_a_network_filesystem_is_a_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`[bayes] db` on NFS, shared with the Dovecot host's pipe or another MX's milter: two
    hosts using one WAL database can corrupt it (its -shm index is one host's shared
    memory), and check-config said "all well". Made or not yet, under a symlink or not."""
    from spambridge import cli

    share = os.path.realpath(tmp_path / "share")
    os.mkdir(share)  # the mount point
    dev = os.stat(share).st_dev  # the device the files under it are on
    monkeypatch.setattr(permissions, "mountinfo", lambda: (
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        f"40 22 {os.major(dev)}:{os.minor(dev)} / {share} rw,relatime shared:9 - nfs4 "
        "fs.example.net:/export rw\n"))
    db = f"{share}/spambridge/bayes.sqlite"
    r = check_local(from_mapping({"bayes": {"db": db}}))
    assert (r.warnings, r.notes) == ([shared_db(db, "nfs4")], [
        f"[bayes] db: {db} does not exist yet: the milter creates it empty, and mail gets "
        "on_unavailable until it is trained (spambridge train)"])
    os.mkdir(os.path.dirname(db))
    store.create(db)
    with sqlite3.connect(db) as c:
        c.execute("UPDATE totals SET nspam = 200, nham = 200")
    link = tmp_path / "bayes.sqlite"
    link.symlink_to(db)
    path = tmp_path / "spambridge.toml"
    path.write_text(f'[milter]\nsocket = "unix:{tmp_path}/s.sock"\n[bayes]\ndb = "{link}"\n')
    assert cli.main(["check-config", "--no-postfix", "-c", str(path)]) == 1
    assert [w for w in capsys.readouterr().out.splitlines() if w.startswith("warning: ")] == [
        f"warning: {path}:4: {shared_db(str(link), 'nfs4')}"]
    assert cli.main(["check-config", "--no-postfix", "-c", str(path), "--db",
                     str(tmp_path / "local.sqlite")]) == 0  # on / (ext4): all well


@pytest.mark.parametrize("order", ["mounted over", "moved under"])
def test_the_filesystem_a_database_is_on_is_the_one_its_directory_is_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, order: str) -> None:
    """Two mounts hold the database's path, `share` and `share/local`, listed in the order
    they were made. An NFS share mounted over `share` after a local disk at `share/local`
    hides that disk: the database is on NFS, and check-config said all well (the longest
    mount point was taken, a hidden one). A local disk moved under the share later keeps
    its place in the list and is the one seen. The device of the database's directory
    tells which (0:0 is no filesystem's)."""
    share = os.path.realpath(tmp_path / "share")
    os.makedirs(f"{share}/local")
    st = os.stat(f"{share}/local")
    here = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"  # what the directory is on
    local, nfs = ("0:0", here) if order == "mounted over" else (here, "0:0")
    monkeypatch.setattr(permissions, "mountinfo", lambda: (
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        f"40 22 {local} / {share}/local rw,relatime shared:5 - ext4 /dev/sdb1 rw\n"
        f"41 22 {nfs} / {share} rw,relatime shared:9 - nfs4 fs.example.net:/export rw\n"))
    db = f"{share}/local/spambridge/bayes.sqlite"
    cfg = from_mapping({"bayes": {"db": db}, "milter": {"socket": f"unix:{tmp_path}/s.sock"}})
    want = [shared_db(db, "nfs4")] if order == "mounted over" else []
    assert check_local(cfg).warnings == want  # to be made: where it would be
    store.create(db)
    with sqlite3.connect(db) as c:
        c.execute("UPDATE totals SET nspam = 200, nham = 200")
    assert check_local(cfg).warnings == want


def test_an_address_this_host_does_not_have_is_named(tmp_path: Path) -> None:
    """A milter socket or metrics endpoint on an address no interface here has (192.0.2.1,
    TEST-NET): `run` cannot bind it and stops (exit 1, "Cannot assign requested address"),
    and check-config said "all well"."""
    db = str(tmp_path / "b.sqlite")
    cfg = from_mapping({"milter": {"socket": "inet:12345@192.0.2.1"}, "bayes": {"db": db}})
    assert [w.split(" (")[0] for w in check_local(cfg).warnings] == [
        "[milter] socket: '192.0.2.1' is not an address of this host"]
    assert check_local(cfg).warnings[0].endswith(
        "): the milter cannot listen on inet:12345@192.0.2.1 and would not start")
    cfg = from_mapping({"metrics": {"listen": "192.0.2.1:12345"}, "bayes": {"db": db},
                        "milter": {"socket": f"unix:{tmp_path}/s.sock"}})
    assert [w.split(" (")[0] for w in check_local(cfg).warnings] == [
        "[metrics] listen: '192.0.2.1' is not an address of this host"]
    assert check_local(cfg).warnings[0].endswith(
        "): the milter cannot serve metrics on 192.0.2.1:12345 and would not start")
    here = from_mapping({"metrics": {"listen": "127.0.0.1:12345"}, "bayes": {"db": db},
                         "milter": {"socket": "inet:12346@127.0.0.1"}})
    assert check_local(here).warnings == []


def test_an_address_no_listener_may_bind_as_written_is_named(tmp_path: Path) -> None:
    """A link-local IPv6 address (libmilter cannot be given its interface, nor the metrics'
    IP:PORT) or a multicast one: the kernel refuses to bind it ("Invalid argument"), so
    `run` stops (exit 1, "cannot open milter socket ...: Invalid argument"), and check-config,
    which looked only for an address this host does not have, said "all well"."""
    db = str(tmp_path / "b.sqlite")
    cfg = from_mapping({"milter": {"socket": "inet6:12345@fe80::1"}, "bayes": {"db": db}})
    assert check_local(cfg).warnings == [
        "[milter] socket: 'fe80::1' cannot be listened on as written (Invalid argument: a "
        "link-local address needs its interface, which the config cannot give; a multicast "
        "address takes no listener): the milter cannot listen on inet6:12345@fe80::1 and "
        "would not start"]
    cfg = from_mapping({"metrics": {"listen": "[ff02::1]:12345"}, "bayes": {"db": db},
                        "milter": {"socket": f"unix:{tmp_path}/s.sock"}})
    assert [w.split(" (")[0] for w in check_local(cfg).warnings] == [
        "[metrics] listen: 'ff02::1' cannot be listened on as written"]
    assert check_local(cfg).warnings[0].endswith(
        "): the milter cannot serve metrics on [ff02::1]:12345 and would not start")


def test_an_ipv6_address_on_a_host_without_ipv6_is_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel booted with ipv6.disable=1 makes no IPv6 socket at all ("Address family not
    supported by protocol"): `run` stops (exit 1) at `inet6:PORT@::1` or `[metrics] listen =
    "[::1]:PORT"`, and check-config, counting only a missing or unbindable address, said
    "all well"."""
    made = socket.socket

    def no_ipv6(family: int = socket.AF_INET, *args: object, **kwargs: object) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))
        return made(family, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "socket", no_ipv6)
    db = str(tmp_path / "b.sqlite")
    cfg = from_mapping({"milter": {"socket": "inet6:12345@::1"}, "bayes": {"db": db}})
    assert check_local(cfg).warnings == [
        "[milter] socket: '::1' cannot be listened on: this host has no IPv6 (Address family "
        "not supported by protocol): the milter cannot listen on inet6:12345@::1 and would "
        "not start"]
    cfg = from_mapping({"metrics": {"listen": "[::1]:12345"}, "bayes": {"db": db},
                        "milter": {"socket": "inet:12345@127.0.0.1"}})
    assert check_local(cfg).warnings == [
        "[metrics] listen: '::1' cannot be listened on: this host has no IPv6 (Address family "
        "not supported by protocol): the milter cannot serve metrics on [::1]:12345 and would "
        "not start"]


def _dual_stack() -> bool:
    """Whether an IPv6 wildcard listener takes IPv4's port too (Linux's default)."""
    try:
        return Path("/proc/sys/net/ipv6/bindv6only").read_text().strip() == "0"
    except OSError:
        return False


@pytest.mark.skipif(not _dual_stack(), reason="needs net.ipv6.bindv6only = 0 (the default)")
@pytest.mark.parametrize(("milter", "listen"), [("inet:12347@127.0.0.1", "[::]:12347"),
                                                ("inet6:12347@::", "127.0.0.1:12347"),
                                                ("inet:12347@0.0.0.0", "[::]:12347")])
def test_metrics_on_the_milters_port_through_the_ipv6_wildcard_is_named(
        tmp_path: Path, milter: str, listen: str) -> None:
    """`[metrics] listen = "[::]:PORT"` beside `socket = "inet:PORT@127.0.0.1"` (or the
    other way round): the config loads (each is of its own family), but an IPv6 wildcard
    holds IPv4's port too on this host, so `run`, which opens the metrics first, stopped with
    exit 1, "cannot open milter socket ...: Address already in use", after check-config had
    said all well. Another port, or a specific IPv6 address, is fine."""
    def warned(listen: str) -> list[str]:
        cfg = from_mapping({"milter": {"socket": milter}, "metrics": {"listen": listen},
                            "bayes": {"db": str(tmp_path / "b.sqlite")}})
        return check_local(cfg).warnings

    libmilter = parse_socket_spec(milter).libmilter
    assert warned(listen) == [
        f"[metrics] listen: {listen} takes the port the milter listens on too "
        f"({libmilter}) on this host (Address already in use: an IPv6 wildcard holds IPv4's "
        "port as well unless net.ipv6.bindv6only is set): the milter would not start; give "
        "the metrics another port"]
    assert warned(listen.replace("12347", "12348")) == []
    if milter.startswith("inet:"):
        assert warned("[::1]:12347") == []


def test_a_bayes_database_the_milter_cannot_use_yet_is_named(tmp_path: Path) -> None:
    """Each of these makes the Bayes engine answer on_unavailable for every message: one it
    cannot use is a warning, a missing or untrained one (every install's first day) a note."""
    db = tmp_path / "bayes.sqlite"

    def said() -> tuple[list[str], list[str]]:
        r = check_local(from_mapping({"bayes": {"db": str(db)}}))
        return r.warnings, r.notes

    assert said() == ([], [f"[bayes] db: {db} does not exist yet: the milter creates it empty, "
                           "and mail gets on_unavailable until it is trained (spambridge train)"])
    with sqlite3.connect(db) as c:  # another program's database
        c.execute("CREATE TABLE t (x)")
    assert said() == ([f"[bayes] db: {db}: not a spambridge Bayes database (empty, or another "
                       "program's file): every message would get on_unavailable"], [])
    db.unlink()
    store.create(str(db))
    assert said() == ([], [f"[bayes] db: {db} is not trained yet (0 spam, 0 ham; min_trained "
                           "200): mail gets on_unavailable until it is"])
    with sqlite3.connect(db) as c:
        c.execute("UPDATE totals SET nspam = 200, nham = 200")
    assert said() == ([], [])
    # the tokenizer limits `train` recorded and keeps to (moves and --forget need them)
    writer = store.SqliteWriter(str(db))
    assert writer.training_limits((524288, 100)) == (524288, 100)
    writer.close()
    assert said() == ([], [f"[bayes] max_bytes/max_tokens: {db} was first trained with "
                           "max_bytes = 524288 and max_tokens = 100, and `train` keeps to them; "
                           "the config's 524288 and 5000 bound scoring only"])


def test_a_spool_dir_that_cannot_take_a_file_is_named(tmp_path: Path) -> None:
    """Found only per message, it let every message above spool_memory through unchecked."""
    missing = tmp_path / "no-such-dir"
    cfg = from_mapping({"milter": {"engine": "spamd", "spool_dir": str(missing)}})
    assert check_local(cfg).warnings == [
        f"[milter] spool_dir: {missing}: No such file or directory; a message above "
        "spool_memory would get on_error"]
    cfg = from_mapping({"milter": {"engine": "spamd", "spool_dir": str(tmp_path)}})
    assert check_local(cfg).warnings == []


def test_check_config_folds_no_stale_wal_into_a_moved_in_database(tmp_path: Path) -> None:
    """With the milter stopped, check-config was the last connection to close and wrote the
    old file's -wal into the database just moved in (a review's find): its reader is
    read-only now, and the moved-in file stays as it was."""
    live, moved = tmp_path / "bayes.sqlite", tmp_path / "moved.sqlite"
    for path, n in ((live, 1), (moved, 300)):
        store.create(str(path))
        c = sqlite3.connect(path)
        c.execute("UPDATE totals SET nspam = ?, nham = ?", (n, n))
        c.commit()
        c.close()  # the last connection: folded into the file
    old = sqlite3.connect(live)  # a writer on the old file, its -wal not folded yet
    old.execute("UPDATE totals SET nspam = 2, nham = 2")
    old.commit()
    os.replace(moved, live)  # `mv` with that -wal beside the path
    old.close()  # SQLite does not fold into a file that moved: the -wal stays
    wal = Path(f"{live}-wal")
    assert wal.stat().st_size > 0
    before = live.read_bytes()
    check_local(from_mapping({"bayes": {"db": str(live)}}))
    assert live.read_bytes() == before and wal.stat().st_size > 0
    wal.unlink()
    Path(f"{live}-shm").unlink()
    c = sqlite3.connect(live)
    assert c.execute("SELECT nspam, nham FROM totals").fetchone() == (300, 300)
    c.close()


def test_check_config_warns_of_a_wal_a_train_wrote_for_another_file(tmp_path: Path) -> None:
    live, moved = tmp_path / "bayes.sqlite", tmp_path / "moved.sqlite"
    store.create(str(moved))
    writer = store.SqliteWriter(str(live))  # a `train` on the old file, its batch not folded
    batch = writer.begin()
    batch.learn(["token"], "spam")
    writer.commit(batch)
    try:
        os.replace(moved, live)
        warnings = check_local(from_mapping({"bayes": {"db": str(live)}})).warnings
        assert len(warnings) == 1 and "holds pages a `train` wrote for the file that was " \
            "there before" in warnings[0]
        assert warnings[0].endswith("every message would get on_unavailable")
    finally:
        writer.conn.close()


def test_check_config_notes_a_filesystem_without_extended_attributes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "bayes.sqlite"
    store.create(str(db))
    cfg = from_mapping({"bayes": {"db": str(db), "min_trained": 0}})
    assert not any("extended attributes" in n for n in check_local(cfg).notes)

    def unsupported(path: str, name: str) -> bytes:
        raise OSError(errno.ENOTSUP, "Operation not supported", path)

    monkeypatch.setattr(os, "getxattr", unsupported)  # a ramfs, an old tmpfs, NFS
    assert [n for n in check_local(cfg).notes if "extended attributes" in n] == [
        f"[bayes] db: {db}: its filesystem keeps no extended attributes, so pages a killed "
        "`train` left in its -wal cannot be told from a new file's after a database is put "
        "in its place: fold them first (docs/bayes.md)"]


def _nobodys_socket_in(d: Path) -> Config:
    """A milter that switches to user nobody, with its unix socket in directory `d`."""
    return from_mapping({"milter": {"engine": "spamd", "user": "nobody",
                                    "socket": f"unix:{d}/spambridge.sock"}})


def test_a_socket_directory_the_milter_user_cannot_write_is_named(open_dir: Path) -> None:
    """The README's directory made by hand (`install -d -g postfix -m 2750`, owned by root)
    with `[milter] user` set: the milter then cannot remove its socket when it stops, nor
    reach it to wake libmilter's workers, and check-config said "all well". (In open_dir:
    the user cannot search pytest's 0700 tree, which is said too.)"""
    d = open_dir / "spambridge"
    d.mkdir()
    d.chmod(0o2750)
    cfg = _nobodys_socket_in(d)
    assert check_local(cfg).warnings == [
        f"[milter] socket: {d} is not writable by user 'nobody': the milter cannot remove its "
        "socket when it stops, nor reach it to wake libmilter's workers under load; chown "
        f"nobody {d} (mode 2750, group postfix)"]
    d.chmod(0o777)
    assert check_local(cfg).warnings == []


def test_a_file_at_the_socket_path_is_named(tmp_path: Path) -> None:
    """`run` refuses to start when something that is not a socket sits at its socket path (it
    will not delete an admin's file), and check-config said "all well"."""
    path = tmp_path / "spambridge.sock"
    path.write_text("left here\n")
    cfg = from_mapping({"milter": {"engine": "spamd", "socket": f"unix:{path}"}})
    assert check_local(cfg).warnings == [
        f"[milter] socket: {path} exists and is not a socket: the milter refuses to start "
        "rather than remove it (move it away, or choose another path)"]
    path.unlink()
    sock = socket.socket(socket.AF_UNIX)  # a stale socket is no problem: the milter removes it
    sock.bind(str(path))
    sock.close()
    assert check_local(cfg).warnings == []


@pytest.mark.parametrize("below", ["", "/new"])
def test_a_file_where_the_socket_directory_should_be_is_named(tmp_path: Path,
                                                              below: str) -> None:
    """A regular file at (or above) the socket's directory: `run` cannot make the directory
    and refuses to start (exit 78, "cannot create ...: File exists"), and check-config said
    "all well"."""
    file = tmp_path / "spambridge"
    file.write_text("left here\n")
    cfg = from_mapping({"milter": {"engine": "spamd",
                                   "socket": f"unix:{file}{below}/s.sock"}})
    assert check_local(cfg).warnings == [
        f"[milter] socket: {file} is not a directory, and the socket's path goes through it: "
        f"the milter cannot make {file}{below} and would not start"]


@pytest.mark.parametrize("below", ["", "/new"])
def test_a_dangling_symlink_where_the_socket_directory_should_be_is_named(
        tmp_path: Path, below: str) -> None:
    """A symlink to nothing at (or above) the socket's directory (a /run/spambridge link left
    pointing into a removed tree): `run` cannot make the directory through it (exit 78);
    check-config said the link "is not a directory", or, one level further down, nothing at
    all while `run` failed with "No such file or directory". Both name the link and its
    target, in the same words."""
    link = tmp_path / "spambridge"
    link.symlink_to(tmp_path / "gone")
    cfg = from_mapping({"milter": {"engine": "spamd", "socket": f"unix:{link}{below}/s.sock"}})
    assert check_local(cfg).warnings == [
        f"[milter] socket: cannot create {link}{below}: {link} is a symlink to "
        f"{tmp_path}/gone, which does not exist (make that, or point the link at a directory "
        "that is there): the milter would not start"]


@pytest.mark.parametrize("user", [None, "nobody"])
def test_a_dangling_symlink_on_the_databases_path_is_named(open_dir: Path,
                                                           user: str | None) -> None:
    """`[bayes] db = …/link/sub/bayes.db` with `link` a symlink to nothing: check-config said
    the milter would create the database, while `run` could not make `sub` ("No such file or
    directory") and served with on_unavailable, or, as root with `[milter] user`, refused to
    start telling the admin to chown a directory that did not exist. Now both say the link
    and its target (and `run` exits 78), and check-config no longer says as well that the
    milter creates the database."""
    link = open_dir / "link"
    link.symlink_to(open_dir / "gone")
    db = link / "sub" / "bayes.sqlite"
    cfg = from_mapping({"milter": {"engine": "bayes", "socket": f"unix:{open_dir}/s.sock",
                                   **({"user": user} if user else {})},
                        "bayes": {"db": str(db)}})
    r = check_local(cfg)
    assert [w for w in r.warnings if "[bayes] db" in w] == [
        f"[bayes] db: cannot create {link}/sub: {link} is a symlink to {open_dir}/gone, "
        "which does not exist (make that, or point the link at a directory that is there): "
        "the milter would not start"]
    assert [n for n in r.notes if "[bayes] db" in n] == []


@pytest.mark.parametrize("user", [None, "nobody"])
def test_a_symlink_to_a_directory_on_the_way_is_no_dangling_link(open_dir: Path,
                                                                  user: str | None) -> None:
    """`/run/spambridge` and `/var/lib/spambridge` as symlinks into a directory that is there
    (a tree moved to a bigger disk), the socket's and the database's directories still to be
    made below them: the usual first start, nothing to warn of, and the database a note."""
    target = open_dir / "data"
    target.mkdir(mode=0o755)
    link = open_dir / "link"
    link.symlink_to(target)
    db = link / "lib" / "bayes.sqlite"
    cfg = from_mapping({"milter": {"engine": "bayes", "socket": f"unix:{link}/run/s.sock",
                                   **({"user": user} if user else {})},
                        "bayes": {"db": str(db)}})
    r = check_local(cfg)
    assert (r.warnings, r.notes) == ([], [
        f"[bayes] db: {db} does not exist yet: the milter creates it empty, and mail gets "
        "on_unavailable until it is trained (spambridge train)"])


@pytest.mark.parametrize("below", ["", "/new"])
def test_a_socket_directory_on_a_read_only_filesystem_is_named(tmp_path: Path,
                                                               below: str) -> None:
    """The socket's directory (or, when `run` is to make it, the one it would be made in) on a
    filesystem mounted read-only: `run` cannot bind (or make) it and refuses to start (exit 78,
    "Read-only file system"), and check-config said "all well"."""
    ro = tmp_path / "ro"
    ro.mkdir()
    cfg = from_mapping({"milter": {"engine": "spamd", "socket": f"unix:{ro}{below}/s.sock"}})
    with mock.patch.object(permissions, "read_only_fs", side_effect=lambda p: p == str(ro)):
        assert check_local(cfg).warnings == [
            f"[milter] socket: {ro} is on a filesystem mounted read-only: the milter cannot "
            f"make {ro}{below or '/s.sock'} there and would not start"]


def test_a_socket_directory_the_milter_user_can_enter_is_not_called_out_of_reach(
        open_dir: Path) -> None:
    """root's 0755 directory: the milter's user connects to the socket in it (the pool nudger
    works), it only cannot remove it; the warning said it could not reach it either."""
    top = open_dir  # 0755, outside pytest's 0700 tree
    d = top / "spambridge"
    d.mkdir(mode=0o755)
    cfg = _nobodys_socket_in(d)
    assert check_local(cfg).warnings == [
        f"[milter] socket: {d} is not writable by user 'nobody': the milter cannot remove "
        f"its socket when it stops; chown nobody {d} (mode 2750, group postfix)"]
    top.chmod(0o700)  # a directory above out of reach: so is the socket
    assert "nor reach it" in check_local(cfg).warnings[0]


def test_a_directory_above_the_socket_the_milter_user_cannot_search_is_named(
        open_dir: Path) -> None:
    """The socket's directory the user's, one above it root's 0700 (what a start under umask
    077 made before): the milter cannot remove its socket nor reach it, `run` said to chown
    the socket's directory, the user's already, and check-config said all well."""
    locked = open_dir / "spool"
    locked.mkdir(mode=0o700)
    d = locked / "sb"
    d.mkdir()
    d.chmod(0o777)
    cfg = _nobodys_socket_in(d)
    assert check_local(cfg).warnings == [
        f"[milter] socket: user 'nobody' may not search {locked}, so it cannot reach {d}: the "
        "milter cannot remove its socket when it stops, nor reach it to wake libmilter's "
        f"workers under load; let it search {locked} (chmod o+x, or a group of the user's)"]
    locked.chmod(0o711)
    assert check_local(cfg).warnings == []


def test_a_per_milter_content_timeout_is_the_one_judged() -> None:
    """`{ unix:…, content_timeout=5s }` overrides milter_content_timeout for spambridge alone:
    Postfix gave up on every 5-10 s scan and applied the default action, and check-config,
    reading only the global 60s, said "all well"."""
    short = "{ unix:spambridge/spambridge.sock, content_timeout=5s, default_action=accept }"
    r = check_postfix(cfg(), settings(smtpd_milters=short))
    assert any("content_timeout (per milter) 5s" in w for w in r.warnings)
    long = "{ unix:spambridge/spambridge.sock, content_timeout=2m }"
    r = check_postfix(cfg(), settings(smtpd_milters=long, milter_content_timeout="10s"))
    assert not any("content_timeout" in w for w in r.warnings)


def test_a_service_that_misses_the_socket_warns_even_when_another_reaches_it() -> None:
    """The chrooted smtp service (inbound mail) names the socket by its absolute path, which
    does not exist inside the chroot; a non-chrooted submission service reaches it. Every
    inbound message went unscanned while check-config said "all well"."""
    pf = settings(smtpd_milters=SOCK)
    pf.smtpd = [Service("smtp/inet", True), Service("submission/inet", False)]
    r = check_postfix(cfg(), pf)
    assert "smtpd services that use spambridge: submission/inet" in r.notes
    assert r.warnings == [
        "smtp/inet: smtpd runs chrooted in /var/spool/postfix, so "
        f"{SOCK} means /var/spool/postfix{SOCK[5:]}; write unix:spambridge/spambridge.sock"]


def test_a_directory_above_the_database_the_milter_user_cannot_search_is_named(
        open_dir: Path) -> None:
    """The database's directory is the user's, but a directory above it is root's, mode
    0700: `run` refused to start, saying "chown nobody" of the directory the user already
    owns, and check-config said all well. Both name the directory to open now."""
    locked = open_dir / "locked"
    locked.mkdir(mode=0o700)
    db_dir = locked / "db"
    db_dir.mkdir()
    db_dir.chmod(0o777)
    cfg = from_mapping({"milter": {"user": "nobody", "socket": f"unix:{open_dir}/s.sock"},
                        "bayes": {"db": f"{db_dir}/bayes.sqlite"}})
    assert [w for w in check_local(cfg).warnings if w.startswith("[bayes] db:")] == [
        f"[bayes] db: user 'nobody' may not search {locked}, so it cannot reach {db_dir} "
        "(SQLite keeps its -wal/-shm files next to the database): let it search "
        f"{locked} (chmod o+x, or a group of the user's), or put the database elsewhere"]
    locked.chmod(0o711)
    assert not [w for w in check_local(cfg).warnings if w.startswith("[bayes] db:")]


def test_the_topmost_directory_the_milter_user_cannot_search_is_named(open_dir: Path) -> None:
    """Two directories above the database the user may not search: the one nearest the root
    is named (privileges.unsearchable_above), the one the admin must open first; the one
    below it is only seen once that is open."""
    outer = open_dir / "outer"
    inner = outer / "inner"
    db_dir = inner / "db"
    db_dir.mkdir(parents=True)
    db_dir.chmod(0o777)
    inner.chmod(0o700)
    outer.chmod(0o700)
    cfg = from_mapping({"milter": {"user": "nobody", "socket": f"unix:{open_dir}/s.sock"},
                        "bayes": {"db": f"{db_dir}/bayes.sqlite"}})

    def searched() -> list[str]:
        return [w.split(",")[0] for w in check_local(cfg).warnings
                if w.startswith("[bayes] db:")]

    assert searched() == [f"[bayes] db: user 'nobody' may not search {outer}"]
    outer.chmod(0o711)
    assert searched() == [f"[bayes] db: user 'nobody' may not search {inner}"]


@pytest.mark.skipif(os.geteuid() != 0, reason="hands a directory to another user: needs root")
def test_a_milter_user_of_uid_0_is_never_said_to_be_kept_out_by_mode_bits(
        open_dir: Path) -> None:
    """`[milter] user = "root"` (warned of as such) reaches any directory whatever its mode:
    check-config must not also say it may not search one above the database (or above one
    `run` would make), as a user of its own would be told."""
    locked = open_dir / "locked"
    (locked / "db").mkdir(parents=True)
    locked.chmod(0o700)
    nobody = pwd.getpwnam("nobody")
    os.chown(locked, nobody.pw_uid, nobody.pw_gid)
    for db in (f"{locked}/db/bayes.sqlite", f"{locked}/new/bayes.sqlite"):
        cfg = from_mapping({"milter": {"user": "root", "socket": f"unix:{open_dir}/s.sock"},
                            "bayes": {"db": db}})
        assert check_local(cfg).warnings == [f"[milter] user: {privileges.ROOT_USER.format('root')}"]


def test_a_milter_user_that_does_not_exist_is_said_once(open_dir: Path) -> None:
    """No such user: that is the warning, and nothing is guessed about what it may reach (a
    database directory `run` would make is not said to be out of its reach)."""
    cfg = from_mapping({"milter": {"user": "no-such-user-sb", "engine": "bayes",
                                   "socket": f"unix:{open_dir}/s.sock"},
                        "bayes": {"db": f"{open_dir}/new/bayes.sqlite"}})
    assert check_local(cfg).warnings == ["[milter] user: no such user 'no-such-user-sb'"]


def test_directories_the_milter_user_cannot_write_are_named(open_dir: Path) -> None:
    """With `[milter] user`, `run` refuses to start (exit 78) when that user cannot write the
    Bayes database's directory or the spool directory; check-config said "all well"."""
    top = open_dir  # 0755, outside pytest's 0700 tree
    db_dir, spool = top / "db", top / "spool"
    db_dir.mkdir(mode=0o755)
    spool.mkdir(mode=0o700)
    cfg = from_mapping({"milter": {"user": "nobody", "spool_dir": str(spool),
                                   "socket": f"unix:{top}/s.sock"},
                        "bayes": {"db": f"{db_dir}/bayes.sqlite"}})
    warnings = [w for w in check_local(cfg).warnings if "[milter] socket:" not in w]
    assert warnings == [
        f"[bayes] db: {db_dir} is not writable by user 'nobody' (SQLite keeps its -wal/-shm "
        f"files next to the database): chown nobody {db_dir}",
        f"[milter] spool_dir: {spool} is not writable by user 'nobody'; a message above "
        "spool_memory would get on_error"]
    db_dir.chmod(0o777)
    spool.chmod(0o777)
    assert not [w for w in check_local(cfg).warnings if "[milter] socket:" not in w]
    # spool_dir unset: the milter's TMPDIR, not the admin's (libpam-tmpdir: 0700)
    unset = from_mapping({"milter": {"user": "nobody", "socket": f"unix:{top}/s.sock"},
                          "bayes": {"db": f"{db_dir}/bayes.sqlite"}})
    with mock.patch.dict(os.environ, {"TMPDIR": str(spool)}), \
            mock.patch.object(tempfile, "tempdir", str(spool)):
        spool.chmod(0o700)
        assert not [w for w in check_local(unset).warnings if "spool_dir" in w]


def test_a_database_directory_the_start_makes_is_named_only_when_out_of_reach(
        open_dir: Path) -> None:
    """Started as root with `[milter] user`, `run` makes a missing database directory that
    user's and starts (tests/integration/test_bayes_access.py); check-config warned that it
    would be root's and unwritable (exit 1) all the same. What still stops the start is a
    directory above it the user may not search: that one is named."""
    top = open_dir  # 0755, outside pytest's 0700 tree
    (top / "hidden").mkdir(mode=0o700)

    def db_warnings(db: str) -> list[str]:
        cfg = from_mapping({"milter": {"user": "nobody", "engine": "spamd+bayes",
                                       "socket": f"unix:{top}/s.sock"},
                            "bayes": {"db": db}})
        return [w for w in check_local(cfg).warnings if w.startswith("[bayes] db:")]

    assert db_warnings(f"{top}/new/bayes.sqlite") == []
    assert db_warnings(f"{top}/new/deeper/bayes.sqlite") == []
    assert db_warnings(f"{top}/hidden/new/bayes.sqlite") == [
        f"[bayes] db: {top}/hidden/new does not exist, and user 'nobody' may not search "
        f"{top}/hidden or a directory above it: the milter would make {top}/hidden/new and "
        f"then refuse to start, unable to reach it as that user"]


def test_directories_the_milter_user_writes_through_a_group_are_not_named(
        user_in_a_group: tuple[pwd.struct_passwd, grp.struct_group], open_dir: Path) -> None:
    """The user may write the socket, database and spool directories through a group it is
    a member of (not its primary group): `run` gets that membership and starts, so
    check-config must not report them."""
    user, g = user_in_a_group
    name, gid = user.pw_name, g.gr_gid
    top = open_dir  # 0755, outside pytest's 0700 tree
    for d in ("run", "db", "spool"):
        (top / d).mkdir()
        os.chown(top / d, 0, gid)
        (top / d).chmod(0o2770)
    cfg = from_mapping({"milter": {"user": name, "spool_dir": f"{top}/spool",
                                   "socket": f"unix:{top}/run/s.sock"},
                        "bayes": {"db": f"{top}/db/bayes.sqlite"}})
    assert [w for w in check_local(cfg).warnings
            if w.startswith(("[milter] socket:", "[bayes] db:", "[milter] spool_dir:"))
            and "not writable" in w] == []


def test_directory_modes_are_judged_as_the_kernel_does(open_dir: Path) -> None:
    """Creating a file takes write *and* search permission on its directory, and reaching
    it takes only search permission on each directory above (no read): a database directory
    nobody may write but not enter (0776) is named, and a spool directory nobody reaches
    through 0711 directories (0733: write and search, no listing) is not."""
    top = open_dir
    db_dir, hidden = top / "db", top / "hidden"
    db_dir.mkdir()
    (hidden / "spool").mkdir(parents=True)
    top.chmod(0o711)
    hidden.chmod(0o711)
    (hidden / "spool").chmod(0o733)
    db_dir.chmod(0o776)
    cfg = from_mapping({"milter": {"user": "nobody", "spool_dir": f"{hidden}/spool",
                                   "socket": f"unix:{top}/s.sock"},
                        "bayes": {"db": f"{db_dir}/bayes.sqlite"}})
    assert [w for w in check_local(cfg).warnings if "[milter] socket:" not in w] == [
        f"[bayes] db: {db_dir} is not writable by user 'nobody' (SQLite keeps its -wal/-shm "
        f"files next to the database): chown nobody {db_dir}"]


@pytest.mark.parametrize(("mode", "warns"), [
    ("0600", True), ("0640", True), ("0700", True), ("0660", False), ("0662", False),
    ("0620", False)])
def test_a_socket_mode_postfix_cannot_connect_with_is_named(mode: str, warns: bool) -> None:
    """Connecting to a unix socket takes write permission: with 0600 or 0640 only the
    milter's own user can, every smtpd connection fails (milter_default_action), and
    check-config said "all well"."""
    cfg = from_mapping({"milter": {"engine": "spamd", "socket_mode": mode}})
    assert any("[milter] socket_mode" in w for w in check_local(cfg).warnings) is warns


@pytest.mark.parametrize(("engine", "scan_timeout", "connect_timeout", "warns"), [
    ("spamd", 2.0, 2.0, True), ("spamd", 3.0, 2.0, False),
    ("spamd+bayes", 2.5, 2.0, True),  # spamd's share: 1.75 s
    ("spamd+bayes", 10.0, 2.0, False), ("bayes", 1.0, 2.0, False)])
def test_a_connect_timeout_spamd_never_reaches_is_named(engine: str, scan_timeout: float,
                                                        connect_timeout: float,
                                                        warns: bool) -> None:
    """A black-holed spamd host is on_unavailable only when connect_timeout ends before the
    time spamd gets; past it, it was a timeout ("no verdict within 2s"), no address said."""
    cfg = from_mapping({"milter": {"engine": engine, "scan_timeout": scan_timeout},
                        "spamd": {"connect_timeout": connect_timeout}})
    named = [w for w in check_local(cfg).warnings if w.startswith("[spamd] connect_timeout")]
    assert bool(named) == warns, named


@pytest.mark.parametrize(("timeout", "warns"), [("20.5s", False), ("20.4s", True)])
def test_the_content_timeout_may_be_exactly_twice_the_cap(timeout: str, warns: bool) -> None:
    """The warning says "keep the timeout >= 20.5s" for scan_timeout 10 (+0.25 s reply
    margin): exactly that must pass, or the advice given cannot be followed."""
    r = check_postfix(cfg(scan_timeout=10.0), settings(milter_content_timeout=timeout))
    named = [w for w in r.warnings if "milter_content_timeout" in w]
    assert bool(named) is warns, named
    if warns:
        assert named[0].startswith("scan_timeout 10s (+0.25s) is not well below "
                                   "milter_content_timeout 20.4s")
        assert "keep the timeout >= 20.5s" in named[0]


@pytest.mark.parametrize(("timeout", "noted"), [("600s", False), ("10m", False),
                                                ("601s", True), ("1h", True)])
def test_a_content_timeout_beyond_a_clients_wait_is_noted(timeout: str, noted: bool) -> None:
    """RFC 5321's client waits 10 minutes after DATA: a longer timeout is noted, 10 minutes
    itself is not."""
    r = check_postfix(cfg(), settings(milter_content_timeout=timeout))
    assert r.warnings == []
    assert any("duplicate deliveries" in n for n in r.notes) is noted


@pytest.mark.parametrize(("protocol", "warning"), [
    ("6", None), ("5", "milter_protocol = 5: use 6"), ("2", "milter_protocol = 2: use 6"),
    ("six", "cannot read milter_protocol = 'six'")])
def test_each_milter_protocol_below_6_warns(protocol: str, warning: str | None) -> None:
    """Protocol 6 is what spambridge negotiates; 5 and below (or a typo) warn."""
    r = check_postfix(cfg(), settings(milter_protocol=protocol))
    assert r.warnings == ([warning] if warning else [])


def test_shutdown_is_known_to_a_postfix_snapshot() -> None:
    """An experimental release's mail_version (3.12-20260110) is read as the release it leads
    to, so its shutdown is not called unknown; an unreadable one counts as new."""
    for version in ("3.12-20260110", "3.11.1", "unknown"):
        assert check_postfix(cfg(), settings(milter_default_action="shutdown",
                                             mail_version=version)).warnings == [], version


def test_shutdown_warns_on_a_snapshot_before_3_11() -> None:
    """A 3.10 experimental release has no shutdown (Postfix 3.11 added it): it was read as
    unreadable, hence the newest, and check-config said nothing."""
    r = check_postfix(cfg(), settings(milter_default_action="shutdown",
                                      mail_version="3.10-20240101"))
    assert len(r.warnings) == 1
    assert r.warnings[0].startswith("milter_default_action = 'shutdown' is not a value Postfix "
                                   "3.10-20240101 knows")


def test_a_service_not_reaching_spambridge_gets_the_spelling_to_write() -> None:
    """With the socket under the queue directory, the spelling offered is the relative one a
    chrooted smtpd resolves, not the absolute path libmilter binds."""
    r = check_postfix(cfg(), settings(smtpd_milters=""))
    assert r.warnings[0] == (f"smtpd_milters (empty) does not reach spambridge's socket {SOCK}; "
                             "Postfix would write unix:spambridge/spambridge.sock")


def test_an_ipv6_wildcard_socket_is_reached_through_any_address() -> None:
    """inet6:8893@[::] listens on every address: Postfix's inet:[::1]:8893 reaches it."""
    r = check_postfix(cfg("inet6:8893@::"), settings(smtpd_milters="inet:[::1]:8893"))
    assert not [w for w in r.warnings if "does not reach" in w]


def test_parse_master_reads_a_dash_in_the_chroot_column_as_no() -> None:
    """Since Postfix 3.0, "-" in master.cf's chroot column means n: an smtpd so written
    resolves unix: paths as they are, not inside the queue directory."""
    [svc] = parse_master("smtp       inet  n       -       -       -       -       smtpd\n")
    assert svc == Service("smtp/inet", False, None)


def test_non_smtpd_milters_listing_us_absolutely_inside_the_chroot_warns() -> None:
    """cleanup runs chrooted as shipped: unix:/spambridge/… there is our socket too."""
    r = check_postfix(cfg(), settings(non_smtpd_milters="unix:/spambridge/spambridge.sock"))
    assert any(w.startswith("non_smtpd_milters lists spambridge") for w in r.warnings)


def test_the_macro_warning_names_the_last_stage_that_sends_it_in_time() -> None:
    """The queue id is sent at end of header or end of data; j as early as connect, so it
    counts when sent at helo; the advice is the latest stage."""
    r = check_postfix(cfg(), settings(milter_end_of_header_macros="",
                                      milter_end_of_data_macros="",
                                      milter_connect_macros="_",
                                      milter_helo_macros="j {tls_version}"))
    assert [w.split(":")[0] for w in r.warnings] == [
        "Postfix does not send macro i (add it to milter_end_of_data_macros)"]


def test_a_connect_macro_list_without_the_client_macro_warns() -> None:
    """milter_connect_macros as older guides wrote it ("j {daemon_name} v"): a client of a
    unix-domain smtpd then has no address, and trusted_networks = ["127.0.0.1/32"] does not
    match it (the man page says it is 127.0.0.1)."""
    r = check_postfix(cfg(), settings(milter_connect_macros="j {daemon_name} v"))
    assert r.warnings == [
        "Postfix does not send macro _ (add it to milter_connect_macros): a client of a "
        "unix-domain smtpd (a content filter's reinjection) has no address: trusted_networks "
        "cannot match it as 127.0.0.1, so its mail is scanned"]


def test_our_socket_listed_twice_is_one_service_and_no_warning() -> None:
    """The first entry that reaches spambridge decides (Postfix uses it): a second spelling
    further on must not add a chroot hint or name the service twice."""
    r = check_postfix(cfg(), settings(
        smtpd_milters=f"unix:spambridge/spambridge.sock {SOCK}"))
    assert r.warnings == []
    assert "smtpd services that use spambridge: smtp/inet" in r.notes


@pytest.mark.parametrize(("mode", "user", "warns"), [
    ("0602", "", False), ("0606", "", False), ("0600", "postfix", False),
    ("0600", "", True)])
def test_socket_modes_postfix_can_connect_with(mode: str, user: str, warns: bool) -> None:
    """Others' write bit lets smtpd connect as well as the group's; and a milter run as user
    postfix owns its socket."""
    cfg = from_mapping({"milter": {"engine": "spamd", "socket_mode": mode, "user": user}})
    assert any("[milter] socket_mode" in w for w in check_local(cfg).warnings) is warns


def test_spamd_and_bayes_still_checks_the_bayes_database(tmp_path: Path) -> None:
    """engine spamd+bayes uses the local database as much as bayes: a relative path and a
    missing database are named there too."""
    rel = from_mapping({"milter": {"engine": "spamd+bayes"}, "bayes": {"db": "rel.sqlite"},
                        "spamd": {"socket": "/run/spamd.sock"}})
    assert any(w.startswith("[bayes] db: 'rel.sqlite' is relative")
               for w in check_local(rel).warnings)
    missing = from_mapping({"milter": {"engine": "spamd+bayes"},
                            "bayes": {"db": str(tmp_path / "b.sqlite")},
                            "spamd": {"socket": "/run/spamd.sock"}})
    assert any("does not exist yet" in n for n in check_local(missing).notes)


def test_a_ca_file_without_tls_is_not_judged() -> None:
    """ca_file is read only with tls = true; unused, it is no reason for a warning."""
    cfg = from_mapping({"milter": {"engine": "spamd"},
                        "spamd": {"ca_file": "/nonexistent/ca.pem"}})
    assert check_local(cfg).warnings == []


def test_a_spamd_unix_socket_has_no_connect_timeout_to_judge() -> None:
    """A unix socket connects at once or fails at once: the connect_timeout warning is for
    a spamd host over TCP."""
    cfg = from_mapping({"milter": {"engine": "spamd", "scan_timeout": 1.0},
                        "spamd": {"socket": "/run/spamd.sock", "connect_timeout": 2.0}})
    assert check_local(cfg).warnings == []


@pytest.mark.parametrize(("engine", "then"), [
    ("spamd", "every message would get on_unavailable"),
    ("spamd+bayes", "the Bayes engine would decide every message (fallback=spamd-unavailable)")])
def test_a_spamd_that_does_not_answer_is_named_with_what_follows(tmp_path: Path, engine: str,
                                                                 then: str) -> None:
    """check-config PINGs spamd for both engines that use it, and says what mail meets."""
    from spambridge.checkconfig import Report, spamd_state

    cfg = from_mapping({"milter": {"engine": engine, "scan_timeout": 2.0},
                        "spamd": {"socket": str(tmp_path / "no-spamd.sock")}})
    r = Report()
    spamd_state(cfg, r)
    assert len(r.warnings) == 1 and r.warnings[0].startswith(
        f"[spamd] spamd at {tmp_path / 'no-spamd.sock'} does not answer a PING")
    assert r.warnings[0].endswith(f": {then}")


def test_a_spamd_that_takes_no_connection_within_the_cap_says_so() -> None:
    """A black-holed spamd with connect_timeout longer than scan_timeout: the PING is cut by
    the cap, a TimeoutError with no text, and the warning read "does not answer a PING ()"."""
    from spambridge.checkconfig import Report, spamd_state

    hole = BlackHole()
    try:
        cfg = from_mapping({"milter": {"engine": "spamd", "scan_timeout": 0.5},
                            "spamd": {"host": "127.0.0.1", "port": hole.port,
                                      "connect_timeout": 3}})
        r = Report()
        spamd_state(cfg, r)
    finally:
        hole.close()
    assert r.warnings == [f"[spamd] spamd at {hole.address} does not answer a PING (no answer "
                          "within scan_timeout 0.5s): every message would get on_unavailable"]


@pytest.mark.parametrize(("listen", "noted"), [
    ("127.0.0.1:9386", False), ("[::1]:9386", False), ("0.0.0.0:9386", True),
    ("192.0.2.1:9386", True)])
def test_metrics_beyond_loopback_are_noted(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           listen: str, noted: bool) -> None:
    """The endpoint has no authentication: reachable from elsewhere, check-config says so."""
    from spambridge import checkconfig

    cfg = from_mapping({"milter": {"engine": "bayes"}, "bayes": {"db": str(tmp_path / "b.db")},
                        "metrics": {"listen": listen}})
    checkconfig.main(cfg, postfix=False)
    assert (f"note: metrics on {listen}: plain HTTP without authentication"
            in capsys.readouterr().out) is noted


def test_a_spool_dir_the_milter_user_cannot_reach_is_named(open_dir: Path) -> None:
    """A world-writable spool_dir inside a directory user nobody cannot enter is as unusable
    as a read-only one: the first message above spool_memory gets on_error."""
    top = open_dir
    top.chmod(0o700)
    spool = top / "spool"
    spool.mkdir()
    spool.chmod(0o777)
    cfg = from_mapping({"milter": {"user": "nobody", "engine": "spamd",
                                   "spool_dir": str(spool), "socket": "inet:8893@127.0.0.1"}})
    assert [w for w in check_local(cfg).warnings if "spool_dir" in w] == [
        f"[milter] spool_dir: {spool} is not writable by user 'nobody'; a message above "
        "spool_memory would get on_error"]


def test_an_unreadable_content_timeout_warns() -> None:
    """A value check-config cannot read is not silently taken as long enough."""
    r = check_postfix(cfg(), settings(milter_content_timeout="5 minutes"))
    assert r.warnings == ["cannot read milter_content_timeout = '5 minutes'"]


def test_without_smtpd_services_the_default_is_not_chrooted() -> None:
    """No smtpd line read from master.cf: main.cf's smtpd_milters is judged for a plain
    smtpd, where an absolute path is the path."""
    pf = settings(smtpd_milters=SOCK)
    pf.smtpd = []
    r = check_postfix(cfg(), pf)
    assert r.warnings == [] and "smtpd services that use spambridge: smtpd" in r.notes


def test_a_milter_host_name_matches_in_any_case() -> None:
    """Host names are case-insensitive: inet:Milter.Example:8893 is inet:8893@milter.example."""
    assert endpoint_matches("inet:Milter.Example:8893",
                            parse_socket_spec("inet:8893@milter.example"), Q, True)[0]


def test_check_config_first_says_what_it_loaded(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The first line names the file, the engine, the socket and the cap: what a deploy
    script logs to show which config was checked."""
    from spambridge import checkconfig

    cfg = from_mapping({"milter": {"engine": "spamd", "socket": "inet:8893@127.0.0.1",
                                   "scan_timeout": 7.5},
                        "spamd": {"socket": str(tmp_path / "none.sock")}}, "/etc/x.toml")
    assert checkconfig.main(cfg, postfix=False) == 1  # spamd does not answer
    out = capsys.readouterr().out
    assert out.splitlines()[0] == ("/etc/x.toml: OK (engine=spamd, socket=inet:8893@127.0.0.1, "
                                   "scan_timeout=7.5s)")
    assert out.splitlines()[-1] == "check-config: 1 warning(s)"


@pytest.mark.parametrize(("written", "said"), [
    ("inet:8893", "inet:8893@127.0.0.1"),
    ("inet6:8893", "inet6:8893@::1"),
    ("inet6:8893@[::1]", "inet6:8893@::1"),
    ("local:/run/sb/sb.sock", "unix:/run/sb/sb.sock"),
])
def test_check_config_names_the_socket_as_run_logs_it(
        written: str, said: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`inet:8893` listens on 127.0.0.1 only (not on every address, as in libmilter), and
    `run` says so at start ("listening on inet:8893@127.0.0.1"); check-config said
    "socket=inet:8893", which an admin reads as libmilter's every address."""
    from spambridge import checkconfig

    cfg = from_mapping({"milter": {"engine": "spamd", "socket": written},
                        "spamd": {"socket": "/nonexistent/spamd.sock"}}, "/etc/x.toml")
    checkconfig.main(cfg, postfix=False)
    assert capsys.readouterr().out.splitlines()[0] == (
        f"/etc/x.toml: OK (engine=spamd, socket={said}, scan_timeout=10s)")


def test_a_services_own_milter_settings_are_the_ones_judged() -> None:
    """master.cf `-o milter_content_timeout=10s` (or milter_default_action, milter_protocol)
    on the service that uses spambridge: only main.cf's values were judged, so a timeout
    Postfix gives up on first (mail then passes unscanned with accept) and a typo in the
    service's default action were "all well", while a default action set on every service
    but not in main.cf was warned about as unset."""
    lines = ("smtp inet n - y - - smtpd -o milter_content_timeout=10s "
             "-o milter_default_action=acept\n"
             "submission inet n - y - - smtpd -o milter_protocol=2\n")
    pf = settings()
    pf.smtpd = parse_master(lines)
    warnings = check_postfix(cfg(), pf).warnings
    assert ("scan_timeout 10s (+0.25s) is not well below milter_content_timeout "
            "(master.cf -o, smtp/inet) 10s") in "\n".join(warnings)
    assert [w for w in warnings if w.startswith(
        "milter_default_action (master.cf -o, smtp/inet) = 'acept' is not a value")]
    assert "milter_protocol (master.cf -o, submission/inet) = 2: use 6" in warnings
    pf = settings(explicit=())
    pf.smtpd = parse_master("smtp inet n - y - - smtpd -o milter_default_action=accept\n"
                            "submission inet n - y - - smtpd -o milter_default_action=tempfail\n")
    r = check_postfix(cfg(), pf)
    assert r.warnings == []
    assert "milter_default_action (master.cf -o, submission/inet) = tempfail" in r.notes


def test_a_chrooted_smtpd_is_not_told_to_write_what_it_already_has() -> None:
    """A socket outside the queue directory, in a chrooted smtpd: the first warning said
    'Postfix would write unix:/run/spambridge/spambridge.sock', the very value in main.cf,
    as if the fix were to write it again; the chroot hint is what explains it."""
    sock = "unix:/run/spambridge/spambridge.sock"
    warnings = check_postfix(cfg(sock), settings(smtpd_milters=sock)).warnings
    assert not [w for w in warnings if "Postfix would write" in w]
    assert [w for w in warnings if "chrooted in /var/spool/postfix, where "
            "/run/spambridge/spambridge.sock cannot be reached" in w]


def test_an_unchrooted_smtpd_given_the_chrooted_spelling_is_told_the_relative_one() -> None:
    """unix:/spambridge/… reaches the socket from a chrooted smtpd only: an smtps service with
    n in master.cf's chroot column looked for it at the real root, its mail got
    milter_default_action, and check-config said "all well"."""
    pf = settings(smtpd_milters="unix:/spambridge/spambridge.sock")
    pf.smtpd = [Service("smtp/inet", True), Service("smtps/inet", False)]
    r = check_postfix(cfg(), pf)
    assert "smtpd services that use spambridge: smtp/inet" in r.notes
    assert r.warnings == [
        "smtps/inet: smtpd runs outside the chroot, so unix:/spambridge/spambridge.sock means "
        "/spambridge/spambridge.sock; write unix:spambridge/spambridge.sock, which chrooted and "
        "unchrooted smtpd alike find under /var/spool/postfix"]


def test_a_socket_outside_the_queue_directory_gets_no_spelling_a_chrooted_smtpd_cannot_use(
        ) -> None:
    """The default socket, /run/spambridge/…, with Debian's chrooted smtpd: the advice was to
    write unix:/run/spambridge/spambridge.sock, and the next run said a chrooted smtpd cannot
    reach that."""
    sock = "unix:/run/spambridge/spambridge.sock"
    warnings = check_postfix(cfg(sock), settings()).warnings  # unix:spambridge/spambridge.sock
    assert warnings == [
        "smtpd_milters (unix:spambridge/spambridge.sock) does not reach spambridge's socket "
        "unix:/run/spambridge/spambridge.sock",
        "a chrooted smtpd cannot reach /run/spambridge/spambridge.sock: put the socket under "
        "/var/spool/postfix"]
    # unchrooted, the spelling is the answer
    assert [w for w in check_postfix(cfg(sock), settings(chroot=False)).warnings
            if "Postfix would write unix:/run/spambridge/spambridge.sock" in w]


@pytest.mark.skipif(os.geteuid() != 0, reason="hands files to other users: needs root (as CI)")
def test_the_database_files_the_milters_user_may_not_read_are_named(open_dir: Path) -> None:
    """The milter reads the database through its -shm as well: each file its user may not
    read is named (reading is enough: the milter never writes), with the advice on files
    root owns; a milter that runs as root is told nothing. A database behind a symlink is
    judged by the directory the symlink points into, where SQLite makes the -wal and -shm,
    and its files get no promise of being handed over (the milter never follows the link)."""
    nobody = pwd.getpwnam("nobody")
    dbdir = open_dir / "db"
    dbdir.mkdir()
    os.chown(dbdir, nobody.pw_uid, nobody.pw_gid)
    db = dbdir / "bayes.sqlite"
    store.create(str(db))
    store.SqliteReader(str(db)).close()  # root's `check` leaves the -wal and -shm
    shm = Path(f"{db}-shm")
    for f, mode in ((db, 0o644), (Path(f"{db}-wal"), 0o644), (shm, 0o600)):
        os.chown(f, 0, 0)  # root's, as its directory's owner is not
        f.chmod(mode)

    def warned(user: str, path: Path) -> list[str]:
        cfg = from_mapping({"milter": {"engine": "bayes", "user": user,
                                       "socket": f"unix:{open_dir}/s.sock"},
                            "bayes": {"db": str(path)}})
        return [w for w in check_local(cfg).warnings if w.startswith("[bayes] db:")]

    assert warned("nobody", db) == [
        f"[bayes] db: user 'nobody' may not read {shm} (root:root, mode 0600): every message "
        "would get on_unavailable (a milter started as root hands files root owns to its user "
        f"at start; under systemd it starts as that user): chown nobody {shm}"]
    db.chmod(0)
    assert warned("root", db) == []
    db.chmod(0o644)
    shm.chmod(0o644)
    assert warned("nobody", db) == []
    elsewhere = open_dir / "root-disk"  # root's 0755, behind a link in nobody's directory
    elsewhere.mkdir()
    elsewhere.chmod(0o755)
    for f in dbdir.glob("bayes.sqlite*"):
        f.rename(elsewhere / f.name)
    db.symlink_to(elsewhere / "bayes.sqlite")
    assert warned("nobody", db) == [
        f"[bayes] db: {elsewhere} is not writable by user 'nobody' (SQLite keeps its -wal/-shm "
        f"files next to the database): chown nobody {elsewhere}"]
    # behind the symlink, a file nobody may read: the milter started as root hands over no file
    # behind a link, so the advice must not promise that it does
    (elsewhere / "bayes.sqlite-shm").chmod(0o600)
    target_shm = elsewhere / "bayes.sqlite-shm"
    assert [w for w in warned("nobody", db) if "may not read" in w] == [
        f"[bayes] db: user 'nobody' may not read {target_shm} (root:root, mode 0600): every "
        f"message would get on_unavailable: chown nobody {target_shm}"]


def test_a_milter_listed_after_spambridge_is_named() -> None:
    """`smtpd_milters = spambridge, opendkim`: opendkim verified the Subject spambridge had
    tagged, and said dkim=fail for correctly signed mail, while check-config said "all well"
    and nothing about the order. Milters after ours are now named; before ours, nothing."""
    dkim, ours = "inet:127.0.0.1:8891", "unix:spambridge/spambridge.sock"
    r = check_postfix(cfg(), settings(smtpd_milters=f"{ours}, {dkim}"))
    [note] = [n for n in r.notes if "listed after spambridge" in n]
    assert f"milters listed after spambridge ({dkim}) get the message with its changes" in note
    assert "DKIM verifier (OpenDKIM) must be listed before it" in note and "step 8" in note
    assert r.warnings == []
    r = check_postfix(cfg(), settings(smtpd_milters=f"{dkim}, {ours}"))
    assert not [n for n in r.notes if "listed after spambridge" in n] and r.warnings == []


def test_a_socket_postfixs_smtpd_cannot_connect_to_is_named(
        user_in_a_group: tuple[pwd.struct_passwd, grp.struct_group], open_dir: Path) -> None:
    """README: check-config reports a socket Postfix cannot reach. Started as root, without
    socket_group, in a directory it made itself, the milter's socket is root's group, mode
    0660: Postfix's smtpd (its mail_owner, here a user in a group of its own) got "Permission
    denied" and every message went by milter_default_action, while check-config said all
    well. The socket there is judged (the running milter's); before it exists, what `run`
    will give it."""
    user, g = user_in_a_group
    name = user.pw_name
    sock_dir = open_dir / "spambridge"
    sock = sock_dir / "spambridge.sock"
    plain = from_mapping({"milter": {"socket": f"unix:{sock}"}})
    advice = (f"; every message would get milter_default_action. Give the socket group "
              f'nogroup: socket_group = "nogroup" with socket_mode "0660", or a directory '
              f"setgid to that group, made before the milter starts (install -d -g nogroup -m "
              f"2750 {sock_dir})")
    said = f"[milter] socket: Postfix's smtpd (user {name!r}, mail_owner) cannot connect: "
    assert socket_problem(plain, name) == (
        f"{said}nothing gives {sock} a group user {name!r} is in ([milter] socket_group is "
        f"unset and {sock_dir} is not setgid): it gets the group of whoever starts the "
        f"milter, root's when started as root{advice}")
    sock_dir.mkdir()
    os.chown(sock_dir, 0, g.gr_gid)
    sock_dir.chmod(0o2750)  # as the package makes it: the socket gets the directory's group
    assert socket_problem(plain, name) is None
    os.chown(sock_dir, 0, 0)
    sock_dir.chmod(0o755)
    named = from_mapping({"milter": {"socket": f"unix:{sock}", "socket_group": g.gr_name}})
    assert socket_problem(named, name) is None
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock))  # what the milter left there counts, whatever the file says
        os.chmod(sock, 0o660)
        assert socket_problem(named, name) == (
            f"{said}user {name!r} may not write {sock} (mode 0660, owner root, group root)"
            f"{advice}")
        os.chown(sock, 0, g.gr_gid)
        assert socket_problem(plain, name) is None
        sock_dir.chmod(0o750)  # group root: the user may not reach the socket
        assert socket_problem(plain, name) == (
            f"{said}user {name!r} may not search {sock_dir} or a directory above it{advice}")
    tcp = from_mapping({"milter": {"socket": "inet:8893@127.0.0.1"}})
    assert socket_problem(tcp, name) is None


@pytest.mark.parametrize(("listen", "noted"), [
    ("127.0.0.1:9386", False), ("[::1]:9386", False), ("[::ffff:127.0.0.1]:9386", False),
    ("0.0.0.0:9386", True), ("192.0.2.1:9386", True)])
def test_a_metrics_endpoint_beyond_loopback_is_noted(
        listen: str, noted: bool, capsys: pytest.CaptureFixture[str]) -> None:
    """Plain HTTP without authentication: reachable from other hosts, it is said; an
    IPv4-mapped loopback address is loopback (it was said to be reachable beyond the host)."""
    from spambridge import checkconfig

    cfg_ = from_mapping({"milter": {"engine": "bayes"}, "metrics": {"listen": listen}})
    checkconfig.main(cfg_, postfix=False)
    said = "plain HTTP without authentication, reachable beyond this host" in (
        capsys.readouterr().out)
    assert said == noted


# -- what a mutation review of check-config found untested (2026-11-27) --------------------------


def test_an_endpoint_written_with_a_doubled_slash_reaches_the_socket() -> None:
    """Postfix opens unix:spambridge//spambridge.sock as the path it is: the same socket."""
    for written in ("unix:spambridge//spambridge.sock", "unix:spambridge/./spambridge.sock"):
        r = check_postfix(cfg(), settings(smtpd_milters=written))
        assert r.warnings == [], written


def test_macros_listed_with_commas_are_read() -> None:
    """postconf(5): macro lists are separated by commas or blanks; a comma-separated list was
    read as one name, and every macro in it called missing."""
    r = check_postfix(cfg(), settings(
        milter_connect_macros="j,{daemon_name},v,_",
        milter_mail_macros="i,{auth_type},{auth_authen}", milter_helo_macros="{tls_version}"))
    assert r.warnings == []


def test_shutdown_is_known_to_a_3_11_snapshot() -> None:
    """3.11-20250601 is read as 3.11, the release that has shutdown."""
    assert check_postfix(cfg(), settings(milter_default_action="shutdown",
                                         mail_version="3.11-20250601")).warnings == []


def test_a_default_action_in_capitals_is_one_postfix_knows() -> None:
    """Postfix compares milter_default_action without regard to case (strcasecmp)."""
    r = check_postfix(cfg(), settings(milter_default_action="Tempfail"))
    assert r.warnings == []
    assert "milter_default_action = Tempfail" in r.notes


def test_a_macro_list_a_service_overrides_names_the_service() -> None:
    """A master.cf `-o milter_mail_macros=i` on the service is where the macro is missing:
    the warning says so, or the admin looks in main.cf, where it is listed."""
    pf = settings()
    pf.smtpd = parse_master("smtp inet n - y - - smtpd -o milter_mail_macros=i\n")
    warnings = check_postfix(cfg(), pf).warnings
    assert [w for w in warnings if w.startswith(
        "smtp/inet (master.cf -o): Postfix does not send macro {auth_authen} (add it to "
        "milter_mail_macros)")]


def test_a_service_that_empties_smtpd_milters_is_without_spambridge() -> None:
    """`-o smtpd_milters=` on submission turns milters off there, main.cf's list or not."""
    pf = settings()
    pf.smtpd = parse_master("smtp inet n - y - - smtpd\n"
                            "submission inet n - y - - smtpd -o smtpd_milters=\n")
    r = check_postfix(cfg(), pf)
    assert "smtpd services that use spambridge: smtp/inet" in r.notes
    assert "smtpd services without spambridge: submission/inet" in r.notes


def test_each_service_is_judged_with_its_own_per_milter_options() -> None:
    """Two services reaching spambridge, each with its own `{ …, default_action=… }`: the
    typo on one is named although the other's value is right."""
    pf = settings(explicit=())
    pf.smtpd = [
        Service("smtp/inet", True, "{ unix:spambridge/spambridge.sock, default_action=acept }"),
        Service("submission/inet", True,
                "{ unix:spambridge/spambridge.sock, default_action=tempfail }")]
    warnings = check_postfix(cfg(), pf).warnings
    assert [w for w in warnings if w.startswith("default_action (per milter) = 'acept'")]


def test_a_services_own_smtpd_milter_maps_is_named() -> None:
    """master.cf `-o smtpd_milter_maps=…` replaces smtpd_milters for the clients it matches
    on that service: it is said, as main.cf's is."""
    pf = settings()
    pf.smtpd = parse_master(
        "smtp inet n - y - - smtpd -o smtpd_milter_maps=cidr:/etc/postfix/milter_map\n")
    notes = "\n".join(check_postfix(cfg(), pf).notes)
    assert "smtpd_milter_maps (cidr:/etc/postfix/milter_map) gives the SMTP clients" in notes


def test_a_bayes_database_under_a_file_is_a_warning_not_a_first_start(tmp_path: Path) -> None:
    """os.path.exists says no for a path through a regular file: that is no database the
    milter creates at start, but one it can never open."""
    (tmp_path / "file").touch()
    db = tmp_path / "file" / "bayes.sqlite"
    r = check_local(from_mapping({"bayes": {"db": str(db)}}))
    assert r.notes == []
    assert [w for w in r.warnings if w.startswith(f"[bayes] db: {db}: cannot open")]


def test_the_milters_own_user_is_not_told_to_run_the_check_as_root(tmp_path: Path) -> None:
    """check-config run as the milter's user (sudo -u spambridge) judges for that user."""
    db = tmp_path / "bayes.sqlite"
    db.write_bytes(b"not a database at all" * 100)
    c = from_mapping({"milter": {"user": "spambridge"}, "bayes": {"db": str(db)}})
    with mock.patch.object(permissions, "user_name", return_value="spambridge"):
        r = check_local(c)
    said = [w for w in r.warnings if w.startswith("[bayes] db: ")]
    assert said and not [w for w in said if "run check-config as root" in w]
    with mock.patch.object(permissions, "user_name", return_value="admin"):
        r = check_local(c)
    assert [w for w in r.warnings if "(if the milter ran as admin, who ran this check; it "
            "runs as spambridge: run check-config as root to judge for it)" in w]


def test_a_database_trained_with_the_configs_limits_gets_no_note(tmp_path: Path) -> None:
    db = tmp_path / "bayes.sqlite"
    store.create(str(db))
    with sqlite3.connect(db) as c:
        c.execute("UPDATE totals SET nspam = 200, nham = 200")
    writer = store.SqliteWriter(str(db))
    assert writer.training_limits((524288, 5000)) == (524288, 5000)
    writer.close()
    r = check_local(from_mapping({"bayes": {"db": str(db)}}))
    assert (r.warnings, r.notes) == ([], [])


def test_a_ca_file_that_is_not_there_is_said_once(tmp_path: Path) -> None:
    """check_local names it; the PING that cannot be made for want of it says nothing more."""
    from spambridge.checkconfig import spamd_state

    ca = tmp_path / "missing-ca.pem"
    c = from_mapping({"milter": {"engine": "spamd"}, "spamd": {"tls": True, "ca_file": str(ca)}})
    r = check_local(c)
    spamd_state(c, r)
    assert [w for w in r.warnings if "ca_file" in w] == [f"[spamd] ca_file: {ca} cannot be read"]


def test_a_dangling_link_at_the_socket_path_is_named(tmp_path: Path) -> None:
    """The milter refuses to remove what is not a socket (lstat): a link to nowhere too."""
    link = tmp_path / "spambridge.sock"
    link.symlink_to(tmp_path / "nowhere")
    r = check_local(from_mapping({"milter": {"socket": f"unix:{link}", "engine": "spamd"}}))
    assert [w for w in r.warnings if w.startswith(
        f"[milter] socket: {link} exists and is not a socket")]


def test_a_relative_database_path_is_not_judged_for_engine_spamd() -> None:
    r = check_local(from_mapping({"milter": {"engine": "spamd"}, "bayes": {"db": "rel.sqlite"}}))
    assert not [w for w in r.warnings if w.startswith("[bayes] db")]


def test_a_socket_directory_that_is_not_setgid_gives_the_socket_no_group(
        user_in_a_group: tuple[pwd.struct_passwd, grp.struct_group], open_dir: Path) -> None:
    """A directory in the right group but without the setgid bit: the socket still gets the
    group of whoever starts the milter."""
    user, g = user_in_a_group
    sock_dir = open_dir / "spambridge"
    sock_dir.mkdir()
    os.chown(sock_dir, 0, g.gr_gid)
    sock_dir.chmod(0o750)
    plain = from_mapping({"milter": {"socket": f"unix:{sock_dir}/spambridge.sock"}})
    problem = socket_problem(plain, user.pw_name)
    assert problem is not None and f"{sock_dir} is not setgid" in problem


def test_a_file_at_the_socket_path_is_not_judged_as_the_socket(
        user_in_a_group: tuple[pwd.struct_passwd, grp.struct_group], open_dir: Path) -> None:
    """A plain file there (check_local names it) is not what Postfix connects to: what `run`
    will give the socket is judged."""
    user, g = user_in_a_group
    sock = open_dir / "spambridge.sock"
    sock.touch()
    sock.chmod(0o600)
    named = from_mapping({"milter": {"socket": f"unix:{sock}", "socket_group": g.gr_name}})
    assert socket_problem(named, user.pw_name) is None


def test_a_database_directory_on_a_read_only_filesystem_is_named(open_dir: Path) -> None:
    """A directory whose mode bits let the milter's user write, on a filesystem mounted
    read-only (or read-only to the milter alone, under ProtectSystem=strict): SQLite cannot
    keep its -wal there."""
    (open_dir / "db").mkdir()
    (open_dir / "db").chmod(0o777)
    db = open_dir / "db" / "bayes.sqlite"
    c = from_mapping({"milter": {"user": "nobody"}, "bayes": {"db": str(db)}})
    with mock.patch.object(permissions, "read_only_fs", return_value=True), \
            mock.patch("spambridge.privileges.read_only_fs", return_value=True):
        r = check_local(c)
    assert [w for w in r.warnings if w.startswith(
        f"[bayes] db: {open_dir}/db is on a filesystem mounted read-only")]


def test_an_entry_for_spambridge_that_misses_is_named_when_a_later_one_reaches() -> None:
    """A chrooted smtpd listing the socket by its absolute path and then by the relative one
    (the fix added, the old entry left): Postfix tries the first, cannot connect, and applies
    milter_default_action to it, with tempfail to every session, while check-config said
    "all well" because the second entry reached spambridge."""
    r = check_postfix(cfg(), settings(smtpd_milters=f"{SOCK}, unix:spambridge/spambridge.sock",
                                      milter_default_action="tempfail"))
    assert "smtpd services that use spambridge: smtp/inet" in r.notes
    assert r.warnings == [
        "smtp/inet: smtpd runs chrooted in /var/spool/postfix, so "
        f"{SOCK} means /var/spool/postfix{SOCK[5:]}; write unix:spambridge/spambridge.sock; "
        "or remove it: unix:spambridge/spambridge.sock, listed after it, reaches spambridge, "
        "and Postfix applies milter_default_action for the one it cannot connect to"]


def test_a_socket_postfix_may_read_but_not_write_is_named(
        user_in_a_group: tuple[pwd.struct_passwd, grp.struct_group], open_dir: Path) -> None:
    """Connecting to a unix socket takes write permission: socket_mode "0640" in Postfix's
    group lets smtpd read it and nothing more."""
    user, g = user_in_a_group
    sock = open_dir / "spambridge.sock"
    c = from_mapping({"milter": {"socket": f"unix:{sock}", "socket_group": g.gr_name,
                                 "socket_mode": "0640"}})
    problem = socket_problem(c, user.pw_name)
    assert problem is not None and f"may not write {sock} (mode 0640, owner ?, group " \
        f"{g.gr_name})" in problem


def test_a_socket_its_owner_may_not_write_names_the_mode(
        user_in_a_group: tuple[pwd.struct_passwd, grp.struct_group], open_dir: Path) -> None:
    """Postfix's own user as the milter's, socket_mode "0440": the owner's bits are the ones
    that count, and they lack write; no group would help."""
    user, _ = user_in_a_group
    sock = open_dir / "spambridge.sock"
    c = from_mapping({"milter": {"socket": f"unix:{sock}", "user": user.pw_name,
                                 "socket_mode": "0440"}})
    problem = socket_problem(c, user.pw_name)
    assert problem is not None and f"may not write {sock} (mode 0440, owner {user.pw_name}, " \
        "group ?)" in problem


def test_a_postconf_that_hangs_is_a_warning_not_a_traceback(
        capsys: pytest.CaptureFixture[str]) -> None:
    """postconf stuck (an NFS config directory): after its 30 s, check-config says it could
    not read Postfix's settings and exits 1."""
    import subprocess

    from spambridge import checkconfig

    hung = subprocess.TimeoutExpired(["postconf"], 30)
    with mock.patch.object(checkconfig, "find_postconf", return_value="/usr/sbin/postconf"), \
            mock.patch.object(checkconfig.subprocess, "run", side_effect=hung):
        status = checkconfig.main(from_mapping({"milter": {
            "socket": "inet:8893@127.0.0.1", "engine": "bayes"},
            "bayes": {"db": "/nonexistent/bayes.sqlite"}}))
    out = capsys.readouterr().out
    assert status == 1
    assert "warning: cannot read Postfix's settings: Command '['postconf']' timed out after " \
        "30 seconds" in out


@pytest.mark.parametrize("mode", [0o644, 0o755])
def test_a_file_where_the_database_directory_should_be_is_named_as_such(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: int) -> None:
    """db = "/srv/file/bayes.sqlite" with /srv/file a regular file: check-config and `train`
    told root to `chmod u+x` the file (mode 0644), or (0755) that the database did not exist
    yet and the milter would create it; neither is so."""
    from spambridge import cli

    (tmp_path / "file").touch()
    (tmp_path / "file").chmod(mode)
    db = tmp_path / "file" / "bayes.sqlite"
    said = (f"{permissions.described(str(tmp_path / 'file'), os.stat(tmp_path / 'file'))} is not a "
            "directory, and the database's path goes through it")
    r = check_local(from_mapping({"bayes": {"db": str(db)}}))
    assert r.notes == []
    assert r.warnings == [f"[bayes] db: {db}: cannot open the Bayes database: {said}: every "
                          "message would get on_unavailable"]
    msg = tmp_path / "m.eml"
    msg.write_bytes(b"Subject: x\n\nhello\n")
    assert cli.main(["train", "--db", str(db), "--spam", str(msg)]) == 1
    assert f"cannot write the Bayes database: {said}" in capsys.readouterr().err
