"""Security properties of the real `spambridge run`, as an attacker or an admin would meet
them: injected header text, reply text, shell metacharacters, socket and file modes, and
running as an unprivileged user after start."""

from __future__ import annotations

import grp
import os
import pwd
import re
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import GTUBE, RunningMilter, Spamd, free_port, message, unused_id, wait_until
from milterclient import Result
from milterload import Delivery, deliver, deliver_many
from spamdfakes import SwitchableSpamd, spamd_reply

Start = Callable[..., RunningMilter]
OWNED = re.compile(r"X-Spam-[A-Za-z-]+")


def spamd_config(port: int, **policy: object) -> dict[str, dict[str, object]]:
    return {"milter": {"engine": "spamd", "scan_timeout": 5.0},
            "spamd": {"host": "127.0.0.1", "port": port}, "policy": dict(policy)}


def assert_safe_value(name: str, value: str, eight_bit: bool = False) -> None:
    """What we write has no control characters; a line break only as a fold ("\\n" + blank).
    Only a rewritten Subject may keep the message's own (UTF-8) 8-bit text."""
    unfolded = re.sub(r"\n[ \t]", " ", value)
    bad = [c for c in unfolded
           if ord(c) < 32 or 127 <= ord(c) < 160 or (ord(c) >= 160 and not eight_bit)]
    assert not bad, f"{name}: control or 8-bit characters {bad!r} in {value!r}"


def result_of(m: RunningMilter, raw: bytes, **kw: object) -> Result:
    d = deliver(m.socket_path, raw, timeout=30, **kw)  # type: ignore[arg-type]
    assert not d.error and d.result is not None, d.error
    return d.result


# ------------------------------------------------------------------------------------------------
# header injection


def test_hostile_symbol_names_from_spamd_cannot_inject_headers(start_milter: Start,
                                                               fake: SwitchableSpamd) -> None:
    """spamd answers with rule names carrying CR/LF, a forged `X-Spam-Flag: NO` line, NUL, ESC,
    8-bit bytes and a 5,000-character name: only our headers, with safe values, come out."""
    fake.mode = "hostile_symbols"
    m = start_milter(spamd_config(fake.port))
    r = result_of(m, message())
    assert r.action == "accept"
    assert r.added, r
    for name, value in r.added:
        assert OWNED.fullmatch(name), f"a header we do not own was added: {name!r}"
        assert_safe_value(name, value)
    assert r.header("X-Spam-Flag") == "YES"  # 6.0 ≥ 5.0, and no forged "NO" got through
    assert [n for n, _ in r.added].count("X-Spam-Flag") == 1
    status = (r.header("X-Spam-Status") or "").replace("\n\t", " ")
    tests = re.search(r"tests=(\S+)", status)
    assert tests is not None
    # "EVIL" before the CR/LF is a well-formed rule name; everything else was dropped
    assert tests.group(1).split(",") == ["OK_RULE", "EVIL", "LAST_OK"], status
    assert "Traceback" not in m.log


@pytest.mark.parametrize(("subject", "tagged"), [
    (b"Hi\rX-Injected: carriage return", "[SPAM] Hi X-Injected: carriage return"),
    (b"Hi\nX-Injected: bare line feed", "[SPAM] Hi X-Injected: bare line feed"),
    (b"Hi\x01SOH\x1b[31m and \xc2\x85 C1", "[SPAM] Hi SOH [31m and   C1"),
    (b"folded\n\tover two lines", "[SPAM] folded\n\tover two lines"),
    (b"caf\xc3\xa9 =?utf-8?b?w6k=?=", "[SPAM] caf\u00e9 =?utf-8?b?w6k=?="),
    (b"caf\xe9 \xff\xfe not UTF-8", None),  # left alone rather than mangled
    # nothing after the tag: the blank after it says the Subject was there, empty (train
    # gives it back); a missing Subject is added as the tag alone
    (b"", "[SPAM] "), (b" \t ", "[SPAM] "), (None, "[SPAM]"),
    # no line over RFC 5322's 998 octets: folded after the tag, or left as it came
    (b"x" * 990, "[SPAM]\n " + "x" * 990), (b"x" * 1200, None),
])
def test_hostile_subject_is_not_written_back_raw(start_milter: Start, fake: SwitchableSpamd,
                                                 subject: bytes | None,
                                                 tagged: str | None) -> None:
    """With subject_tag set, spam gets its Subject rewritten: the rewrite must not carry the
    message's control characters (a bare CR or LF would end the header early downstream)
    into a header we write. The header goes in as given, bypassing any parser. `subject`
    None: the message has no Subject, and gets one (added, not changed)."""
    fake.reply = spamd_reply(9.0, 5.0)
    m = start_milter(spamd_config(fake.port, subject_tag="[SPAM]"))
    fields = [("From", b"a@example.net"), ("To", b"b@test.example"),
              *([] if subject is None else [("Subject", subject)]),
              ("Message-ID", b"<1@example.net>")]
    r = result_of(m, b"\nbody\n", headers=fields)
    assert r.action == "accept"
    subjects = [v for n, _, v in r.changed if n.lower() == "subject"]
    added = [v for n, v in r.added if n.lower() == "subject"]
    assert (added if subject is None else subjects) == ([] if tagged is None else [tagged])
    assert not (subjects if subject is None else added)
    for value in subjects + added:
        assert max(len(line) for line in f"Subject: {value}".encode().split(b"\n")) <= 998
    if subject == b"x" * 1200:
        wait_until(lambda: "the Subject is left untagged: " in m.log, 10, "the warning")
    for value in subjects:
        assert_safe_value("Subject", value, eight_bit=True)
    for name, value in r.added:
        assert_safe_value(name, value)
    assert "Traceback" not in m.log


# ------------------------------------------------------------------------------------------------
# SMTP reply text


@pytest.mark.parametrize(("key", "text", "policy", "reply"), [
    ("reject_reply", "550 5.7.1 100% spam, see https://example.net/%7Eabuse", {},
     spamd_reply(30.0, 5.0)),
    ("tempfail_reply", "451 4.7.1 Scanner 100% busy", {"on_error": "tempfail"},
     b"garbage\r\n\r\n"),
    ("unchecked_reject_reply", "550 5.7.1 Not 100% checked", {"on_error": "reject"},
     b"garbage\r\n\r\n"),
])
def test_percent_in_reply_text_reaches_the_mta(start_milter: Start, fake: SwitchableSpamd,
                                               key: str, text: str, policy: dict[str, str],
                                               reply: bytes) -> None:
    """libmilter's MTA side treats the text as a format: a lone % would make Postfix drop the
    reply (and pymilter refuses it outright). The admin's text arrives, % doubled."""
    fake.reply = reply
    m = start_milter(spamd_config(fake.port, **{key: text}, **policy))
    r = result_of(m, message(body=GTUBE + "\n"))
    code, xcode, msg = text.split(" ", 2)
    assert r.smtp_code == code
    assert r.smtp_text == f"{xcode} {msg.replace('%', '%%')}"
    assert "untrapped" not in r.smtp_text and "Traceback" not in m.log


# ------------------------------------------------------------------------------------------------
# nothing reaches a shell

SHELLY = [
    '"|touch {d}/pipe"@example.net',
    "$(touch {d}/dollar)@example.net",
    "`touch {d}/backtick`@example.net",
    "a;touch {d}/semicolon@example.net",
    "a&&touch {d}/and@example.net",
    "a\ntouch {d}/newline@example.net",
]


@pytest.mark.spamd
def test_shell_metacharacters_in_envelope_and_headers_run_nothing(
    start_milter: Start, spamd: Spamd, tmp_path: Path,
) -> None:
    """CVE-2010-1132 (spamass-milter -x) piped recipients into a shell. Here they go to the
    real spamd (as the spamd user too, per_recipient_user) and to the log: no file appears."""
    marks = tmp_path / "marks"
    marks.mkdir()
    os.chmod(marks, 0o777)  # spamd's user could create files here, were a shell involved
    addrs = [a.format(d=marks) for a in SHELLY]
    cfg = spamd_config(spamd.port)
    cfg["spamd"].update(per_recipient_user=True)
    m = start_milter(cfg)
    hdrs = "".join(f"X-Note-{i}: {a}\n".replace("\n", " ").rstrip() + "\n"
                   for i, a in enumerate(addrs))
    for a in addrs:
        r = result_of(m, message(extra_headers=hdrs), sender=f"<{a}>", rcpts=(f"<{a}>",))
        assert r.action in ("accept", "reject"), r
    r = result_of(m, message(), rcpts=tuple(f"<{a}>" for a in addrs))
    time.sleep(0.5)
    assert sorted(p.name for p in marks.iterdir()) == []
    assert "Traceback" not in m.log


# ------------------------------------------------------------------------------------------------
# socket, database and spool files


def some_group() -> grp.struct_group:
    """A group other than ours that exists on any Debian system."""
    for name in ("mail", "nogroup", "daemon", "users"):
        try:
            g = grp.getgrnam(name)
        except KeyError:
            continue
        if g.gr_gid != os.getegid():
            return g
    pytest.skip("no second group on this system")


@pytest.mark.parametrize("mode", ["0660", "0600", "0666"])
def test_socket_has_the_configured_mode_and_group(start_milter: Start, fake: SwitchableSpamd,
                                                  mode: str) -> None:
    g = some_group()
    if os.geteuid() != 0 and g.gr_gid not in os.getgroups():
        pytest.skip("chgrp to a foreign group needs root")
    cfg = spamd_config(fake.port)
    cfg["milter"].update(socket_mode=mode, socket_group=g.gr_name)
    m = start_milter(cfg)
    listening(m)
    st = os.stat(m.socket_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == int(mode, 8)
    assert st.st_gid == g.gr_gid
    assert result_of(m, message()).action == "accept"


def test_default_socket_mode_is_0660(start_milter: Start, fake: SwitchableSpamd) -> None:
    m = start_milter(spamd_config(fake.port))
    listening(m)
    assert stat.S_IMODE(os.stat(m.socket_path).st_mode) == 0o660


def listening(m: RunningMilter) -> None:
    """The socket accepts connections from listen() on, a moment before the milter has given
    it its group and mode; its start-up line comes after (a loaded machine showed the gap)."""
    wait_until(lambda: "listening on" in m.log, 10, "the start-up line")


def test_spool_files_are_private_to_the_milter(start_milter: Start, tmp_path: Path) -> None:
    """While a message waits on spamd, its spilled body is a file only the milter can read
    (looked at through /proc/PID/fd: the file is already unlinked)."""
    hung = SwitchableSpamd("hang")
    try:
        spool = tmp_path / "spool"
        spool.mkdir()
        os.chmod(spool, 0o777)
        cfg = spamd_config(hung.port)
        cfg["milter"].update(spool_dir=str(spool), spool_memory=1024, scan_timeout=3.0)
        m = start_milter(cfg)
        t = threading.Thread(target=deliver, args=(m.socket_path, message(body="x" * 50_000)))
        t.start()
        found: list[int] = []

        def spooled() -> bool:
            for fd in os.listdir(f"/proc/{m.proc.pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{m.proc.pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith(str(spool)):
                    found.append(os.stat(f"/proc/{m.proc.pid}/fd/{fd}").st_mode)
            return bool(found)

        wait_until(spooled, 5, "a spool file")
        t.join(10)
        assert all(stat.S_IMODE(mode) & 0o077 == 0 for mode in found), [oct(x) for x in found]
    finally:
        hung.close()


# ------------------------------------------------------------------------------------------------
# dropping root


def proc_ids(pid: int) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            out[key] = [int(x) for x in value.split()]
    return out


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")


@needs_root
def test_root_start_drops_to_the_configured_user(start_milter: Start, fake: SwitchableSpamd,
                                                 open_dir: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    g = some_group()
    cfg = spamd_config(fake.port)
    cfg["milter"].update(user="nobody", socket=f"unix:{open_dir}/milter.sock",
                         socket_group=g.gr_name)
    m = start_milter(cfg)
    wait_until(lambda: "running as nobody" in m.log, 10, "the switch to nobody")
    ids = proc_ids(m.proc.pid)
    assert ids["Uid"] == [nobody.pw_uid] * 4, ids  # real, effective, saved, filesystem
    assert ids["Gid"] == [nobody.pw_gid] * 4, ids
    assert 0 not in ids["Groups"], ids
    st = os.stat(m.socket_path)  # made by root, handed over: the MTA's group keeps access
    assert (st.st_uid, st.st_gid) == (nobody.pw_uid, g.gr_gid)
    assert result_of(m, message()).action == "accept"  # and it still works afterwards
    # open_dir is root's 0755: the socket cannot be removed at stop, and the log says so
    assert (f"[milter] socket: {open_dir} is not writable by user 'nobody': the milter cannot "
            "remove its socket when it stops;") in m.log  # it still reaches it: 0755


def usr1_blocked(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        mask = next(int(ln.split()[1], 16) for ln in f if ln.startswith("SigBlk:"))
    return bool(mask >> (signal.SIGUSR1 - 1) & 1)


@needs_root
def test_a_reload_asked_for_while_starting_is_done_as_the_milters_user(
        start_milter: Start, fake: SwitchableSpamd, open_dir: Path) -> None:
    """kill -USR1 while the milter starts as root with [milter] user: the signal waits
    (`run` blocks it from its first moment) and was taken by the reload thread before the
    switch to the user, so a config only root may read was "reloaded", and the spool checked,
    as root; every later reload then failed. It is done as the milter's user, as those are."""
    cfg = spamd_config(fake.port)
    cfg["milter"].update(user="nobody", socket=f"unix:{open_dir}/milter.sock")
    m = start_milter(cfg, wait=False)
    os.chmod(m.config_path, 0o600)  # root's: read at the start, not by nobody
    wait_until(lambda: m.proc.poll() is not None or usr1_blocked(m.proc.pid), 20,
               "USR1 blocked by `run`")
    os.kill(m.proc.pid, signal.SIGUSR1)
    wait_until(lambda: "running as nobody" in m.log and ("reload failed" in m.log or
                                                         "configuration reloaded" in m.log),
               20, "the start and the reload's line")
    assert "reload failed, keeping the running config" in m.log, m.log
    assert "configuration reloaded" not in m.log, m.log
    assert result_of(m, message()).action == "accept"  # still serving, on the start's config


@needs_root
def test_the_users_supplementary_groups_come_with_it(
        user_in_a_group: tuple[pwd.struct_passwd, grp.struct_group],  # first: removed last
        start_milter: Start, fake: SwitchableSpamd, open_dir: Path) -> None:
    """The milter's user reaches its socket directory through a group it is a member of,
    not its primary one (root:G 2770, as a package sets up beside the MTA's group): the
    milter keeps that membership after the switch, so it is not told it cannot remove its
    socket, and does remove it when it stops."""
    user, g = user_in_a_group
    run = open_dir / "run"
    run.mkdir()
    os.chown(run, 0, g.gr_gid)
    os.chmod(run, 0o2770)
    cfg = spamd_config(fake.port)
    cfg["milter"].update(user=user.pw_name, socket=f"unix:{run}/milter.sock",
                         socket_group=g.gr_name)
    m = start_milter(cfg)
    wait_until(lambda: f"running as {user.pw_name}" in m.log, 10, "the switch")
    ids = proc_ids(m.proc.pid)
    assert ids["Uid"][0] == user.pw_uid and g.gr_gid in ids["Groups"], ids
    assert result_of(m, message()).action == "accept"
    assert m.stop() == 0
    assert "is not writable" not in m.log
    assert not os.path.exists(m.socket_path)


@needs_root
def test_a_socket_directory_of_the_milters_user_is_not_warned_about(
        start_milter: Start, fake: SwitchableSpamd, open_dir: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    os.chown(open_dir, nobody.pw_uid, nobody.pw_gid)
    cfg = spamd_config(fake.port)
    cfg["milter"].update(user="nobody", socket=f"unix:{open_dir}/milter.sock")
    m = start_milter(cfg)
    wait_until(lambda: "running as nobody" in m.log, 10, "the switch to nobody")
    assert result_of(m, message()).action == "accept"
    assert "is not writable" not in m.log


@needs_root
def test_a_directory_above_the_socket_its_user_cannot_search_is_named(
        start_milter: Start, fake: SwitchableSpamd, open_dir: Path) -> None:
    """The socket's directory the user's, one above it root's 0700 (what a start under umask
    077 made before): the log said to chown the socket's directory, the user's already."""
    nobody = pwd.getpwnam("nobody")
    locked = open_dir / "spool"
    locked.mkdir(mode=0o700)
    sb = locked / "sb"
    sb.mkdir()
    os.chown(sb, nobody.pw_uid, nobody.pw_gid)
    cfg = spamd_config(fake.port)
    cfg["milter"].update(user="nobody", socket=f"unix:{sb}/milter.sock")
    m = start_milter(cfg)
    wait_until(lambda: "running as nobody" in m.log, 10, "the switch to nobody")
    assert (f"[milter] socket: user 'nobody' may not search {locked}, so it cannot reach {sb}"
            in m.log), m.log
    assert f"chown nobody {sb}" not in m.log


@needs_root
def test_a_stop_under_slow_scans_as_the_milters_user_warns_of_no_unreachable_socket(
        start_milter: Start, fake: SwitchableSpamd, open_dir: Path) -> None:
    """Run as its own user, the milter's socket goes the moment a stop is asked for
    (libmilter removes it when not root) while hung scans still get their replies. Its own
    socket being gone then is the stop, not a socket the milter's user cannot reach: the
    admin must not be told after every restart under load to hunt for a permission problem."""
    nobody = pwd.getpwnam("nobody")
    os.chown(open_dir, nobody.pw_uid, nobody.pw_gid)
    cfg = spamd_config(fake.port)
    cfg["milter"].update(user="nobody", socket=f"unix:{open_dir}/milter.sock", scan_timeout=2.0)
    m = start_milter(cfg)
    wait_until(lambda: "running as nobody" in m.log, 10, "the switch to nobody")
    fake.mode = "hang"
    results: list[Delivery] = []
    t = threading.Thread(target=lambda: results.extend(
        deliver_many(m.socket_path, [message()] * 4, 4, timeout=30, barrier_at="eom")))
    t.start()
    wait_until(lambda: fake.requests >= 4, 10, "four scans waiting on spamd")
    m.proc.send_signal(signal.SIGTERM)
    assert m.proc.wait(20) == 0
    t.join(20)
    assert [d.action for d in results] == ["accept"] * 4  # on_timeout, each one replied to
    assert "spambridge stopped" in m.log
    assert "our own socket" not in m.log


@needs_root
def test_a_start_under_umask_077_makes_socket_directories_postfix_can_cross(
        start_milter: Start, fake: SwitchableSpamd, open_dir: Path) -> None:
    """`socket` two directories down a path not there yet, root starting `run` with [milter]
    user under umask 077: the first was made root's 0700 and the last the user's 0700, so
    Postfix's smtpd could not reach the socket (every message milter_default_action), the
    user could not remove it at the stop, and the log said to chown the last, the user's
    already. Each is made as the last under the usual umask: the user's, 0755."""
    nobody = pwd.getpwnam("nobody")
    g = some_group()  # the socket's: Postfix's smtpd is in it
    sock = open_dir / "spool" / "sb" / "milter.sock"
    cfg = spamd_config(fake.port)
    cfg["milter"].update(user="nobody", socket=f"unix:{sock}", socket_group=g.gr_name)
    old = os.umask(0o077)  # the milter's, inherited
    try:
        m = start_milter(cfg)
    finally:
        os.umask(old)
    listening(m)
    smtpd = subprocess.run(  # as Postfix's smtpd: its own user, in the socket's group
        ["/usr/bin/python3", "-c", "import socket, sys; "
         "socket.socket(socket.AF_UNIX).connect(sys.argv[1])", str(sock)],
        user=unused_id(), group=g.gr_gid, extra_groups=[], cwd="/", capture_output=True,
        text=True, check=False)
    assert smtpd.returncode == 0, smtpd.stderr
    for d in (sock.parent.parent, sock.parent):
        st = d.stat()
        assert (st.st_uid, st.st_gid, oct(stat.S_IMODE(st.st_mode))) == (
            nobody.pw_uid, nobody.pw_gid, "0o755"), d
    assert "is not writable" not in m.log, m.log
    assert m.stop() == 0
    assert not sock.exists()  # removed by the milter's user at the stop


@pytest.mark.parametrize(("key", "name"), [pytest.param("user", "user", marks=needs_root),
                                           ("socket_group", "group")])
def test_unknown_user_or_group_is_a_config_error_and_leaves_no_socket(
        start_milter: Start, fake: SwitchableSpamd, key: str, name: str) -> None:
    cfg = spamd_config(fake.port)
    cfg["milter"][key] = f"no-such-{name}-sb"
    m = start_milter(cfg, wait=False)
    assert m.proc.wait(30) == 78
    assert re.search(rf"{re.escape(str(m.config_path))}:\d+: \[milter\] {key}: no such "
                     f"{name} 'no-such-{name}-sb'", m.log), m.log
    assert not os.path.exists(m.socket_path)  # nothing would ever answer on it


def bayes_db(path: Path) -> Path:
    """A small database trained through the real `train` (as root, like an admin would)."""
    from spambridge import cli

    for label, words in (("spam", "lottery winner prize"), ("ham", "agenda budget lunch")):
        d = path.parent / f"train-{label}"
        d.mkdir(exist_ok=True)
        for i in range(3):
            (d / f"{i}.eml").write_bytes(f"Subject: {label}\n\n{words} {i}\n".encode())
        assert cli.main(["train", "--db", str(path), f"--{label}", "-q", str(d)]) == 0
    return path


@needs_root
@pytest.mark.parametrize("engine", ["bayes", "spamd+bayes"])
def test_bayes_database_is_handed_to_the_user_and_kept_private(start_milter: Start,
                                                               open_dir: Path,
                                                               engine: str) -> None:
    """Root opens (or creates) the database, the milter then reads it as nobody; the files
    are the user's and nobody else's. So too where Bayes stands in for spamd (not running
    here, so Bayes gives the verdict)."""
    nobody = pwd.getpwnam("nobody")
    dbdir = open_dir / "db"
    dbdir.mkdir(mode=0o750)
    os.chown(dbdir, nobody.pw_uid, nobody.pw_gid)
    db = bayes_db(dbdir / "bayes.sqlite")  # `train` hands a new one to the dir's owner
    for f in dbdir.glob("bayes.sqlite*"):
        os.chown(f, 0, 0)  # root's, as one made before the directory was the user's
    m = start_milter({"milter": {"engine": engine, "user": "nobody",
                                 "socket": f"unix:{open_dir}/milter.sock"},
                      "spamd": {"host": "127.0.0.1", "port": free_port()},
                      "bayes": {"db": str(db), "min_trained": 3}})  # as bayes_db trains
    r = result_of(m, message(body="lottery winner prize lottery winner\n"))
    assert r.action == "reject", r  # scored by the database it can read
    files = list(dbdir.glob("bayes.sqlite*"))
    assert files
    for f in files:
        st = f.stat()
        assert st.st_uid == nobody.pw_uid, (f, st.st_uid)
        assert st.st_mode & 0o007 == 0, (f, oct(st.st_mode))
    assert "Traceback" not in m.log


@needs_root
@pytest.mark.parametrize("link", ["symlink", "hard link"])
def test_a_link_beside_the_database_does_not_hand_root_files_away(
        start_milter: Start, open_dir: Path, link: str) -> None:
    """The database directory is the milter user's: a compromised milter could leave
    `bayes.sqlite-journal` as a link to a root file (root may hard-link any file on the
    filesystem into it too). The next start, as root, must not chown what the link names."""
    nobody = pwd.getpwnam("nobody")
    dbdir = open_dir / "db"
    dbdir.mkdir(mode=0o750)
    os.chown(dbdir, nobody.pw_uid, nobody.pw_gid)
    db = bayes_db(dbdir / "bayes.sqlite")
    secret = open_dir / "root-only"
    secret.write_text("root's\n")
    os.chmod(secret, 0o600)
    if link == "symlink":
        (dbdir / "bayes.sqlite-journal").symlink_to(secret)
    else:
        os.link(secret, dbdir / "bayes.sqlite-journal")
    m = start_milter({"milter": {"engine": "bayes", "user": "nobody",
                                 "socket": f"unix:{open_dir}/milter.sock"},
                      "bayes": {"db": str(db), "min_trained": 3}})
    wait_until(lambda: "running as nobody" in m.log, 10, "the switch to nobody")
    assert secret.stat().st_uid == 0 and oct(secret.stat().st_mode & 0o777) == "0o600"
    assert db.stat().st_uid == nobody.pw_uid  # the real file is still handed over


@needs_root
def test_bayes_directory_the_user_cannot_write_is_a_config_error(start_milter: Start,
                                                                 open_dir: Path) -> None:
    """SQLite needs the directory for its -wal/-shm files: refuse to start rather than
    answer on_unavailable for every message."""
    db = bayes_db(open_dir / "bayes.sqlite")  # open_dir: root's, 0755
    m = start_milter({"milter": {"engine": "bayes", "user": "nobody",
                                 "socket": f"unix:{open_dir}/milter.sock"},
                      "bayes": {"db": str(db)}}, wait=False)
    assert m.proc.wait(30) == 78
    assert f"{open_dir} is not writable by user 'nobody'" in m.log


def test_database_the_milter_creates_is_private(start_milter: Start, tmp_path: Path) -> None:
    db = tmp_path / "new" / "bayes.sqlite"
    m = start_milter({"milter": {"engine": "bayes"}, "bayes": {"db": str(db)}})
    result_of(m, message())
    assert db.exists()
    for f in db.parent.glob("bayes.sqlite*"):
        assert f.stat().st_mode & 0o007 == 0, (f, oct(f.stat().st_mode))


def test_run_as_a_user_needs_root_or_that_user(start_milter: Start,
                                               fake: SwitchableSpamd) -> None:
    if os.geteuid() == 0:
        pytest.skip("as root the switch is allowed")
    cfg = spamd_config(fake.port)
    cfg["milter"].update(user="root")
    m = start_milter(cfg, wait=False)
    assert m.proc.wait(30) == 78
