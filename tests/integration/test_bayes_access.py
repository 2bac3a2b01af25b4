"""The Bayes database as the parties of a real installation meet it: root's `train` from cron,
the milter as its own user, Dovecot's "move to Junk" pipe as the mail user through the
database's group (contrib/dovecot), an admin's `check` and `check-config`; a read-only, a
full or a symlinked place. Each party runs as its own user (setuid, with unused uid and gid
numbers where no name is needed); what is asserted is what that party is told, and the files'
state."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import resource
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import RunningMilter, bayes_mail, python_for, unused_id, wait_until, write_config
from milterload import deliver

from spambridge.bayes import store

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs each party as its own user: "
                                "needs root (as CI runs)")

Start = Callable[..., RunningMilter]
SPAM = bayes_mail(99, "spam")


@pytest.fixture
def mail_user(open_dir: Path) -> tuple[int, int, tuple[str, str]]:
    """The Dovecot pipe's user (an unused uid), a group for the database (an unused gid), and
    an interpreter that user can run spambridge with."""
    uid = unused_id()
    group = unused_id(uid + 1)
    return uid, group, python_for(open_dir, uid, uid)


def train(db: Path, corpus: Path) -> Path:
    """A small database trained by root through the real `train`, as cron would."""
    from spambridge import cli

    for label in ("spam", "ham"):
        d = corpus / f"train-{label}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(3):
            (d / f"{i}.eml").write_bytes(bayes_mail(i, label))
        assert cli.main(["train", "--db", str(db), f"--{label}", "-q", str(d)]) == 0
    return db


def as_user(py: tuple[str, str], uid: int, groups: list[int], *args: str,
            stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    """`spambridge ARGS` as user `uid` (group `uid`) with these supplementary groups."""
    exe, path = py
    return subprocess.run([exe, "-m", "spambridge", *args], input=stdin.decode(), cwd="/",
                          env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin"}, user=uid,
                          group=uid, extra_groups=groups, capture_output=True, text=True,
                          check=False)


def pipe(py: tuple[str, str], uid: int, groups: list[int], db: Path
         ) -> subprocess.CompletedProcess[str]:
    """contrib/dovecot's spambridge-learn-spam.sh: one message on stdin, --quiet."""
    return as_user(py, uid, groups, "train", "--db", str(db), "--spam", "--quiet", "-",
                   stdin=SPAM)


def milter_cfg(open_dir: Path, db: Path, user: str) -> dict[str, dict[str, object]]:
    return {"milter": {"engine": "bayes", "user": user,
                       "socket": f"unix:{open_dir}/milter.sock"},
            "bayes": {"db": str(db), "min_trained": 3}}


def shared_dir(open_dir: Path, group: int) -> Path:
    """contrib/dovecot's database directory: root's, in the database's group, setgid 2770."""
    d = open_dir / "db"
    d.mkdir()
    os.chown(d, 0, group)
    os.chmod(d, 0o2770)
    return d


def test_a_milter_started_as_root_leaves_the_database_in_the_group_the_pipe_writes_through(
        user_in_a_group: tuple[pwd.struct_passwd, grp.struct_group],  # first: removed last
        start_milter: Start, open_dir: Path, mail_user: tuple[int, int, tuple[str, str]]
) -> None:
    """The milter's user reaches the database through the directory's group, which is not its
    primary one (here nogroup), as the Dovecot pipe does. Root's `train` made the files root's;
    the milter's start hands them to its user, and used to give them that user's primary group
    as well: the files were 0660 milter:nogroup, and every pipe after it failed."""
    user, g = user_in_a_group
    uid, _, py = mail_user
    dbdir = shared_dir(open_dir, g.gr_gid)
    db = train(dbdir / "bayes.sqlite", open_dir / "corpus")
    m = start_milter(milter_cfg(open_dir, db, user.pw_name))
    wait_until(lambda: f"running as {user.pw_name}" in m.log, 10, "the switch")
    d = deliver(m.socket_path, SPAM, timeout=30)
    assert d.result is not None and d.result.action == "reject", (d, m.log)
    for f in dbdir.glob("bayes.sqlite*"):
        st = f.stat()
        assert (st.st_uid, st.st_gid) == (user.pw_uid, g.gr_gid), f
    r = pipe(py, uid, [g.gr_gid], db)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("case", ["restored by root with cp", "its -shm read-only to the group",
                                  "directory not group-writable", "not in the group",
                                  "the pipe's own, read-only"])
def test_a_pipe_that_may_not_write_says_which_file_and_why(
        open_dir: Path, mail_user: tuple[int, int, tuple[str, str]], case: str) -> None:
    """SQLite says "attempt to write a readonly database" or "unable to open database file"
    alike for the database, its -shm and its directory, and for a user outside the group as
    for one inside it; Dovecot logs what the pipe says. It must name the file, its owner,
    group and mode, and what would let the mail user in, and say nothing of an unfolded -wal
    (nothing was written)."""
    uid, group, py = mail_user
    dbdir = shared_dir(open_dir, group)
    db = train(dbdir / "bayes.sqlite", open_dir / "corpus")
    groups = [group]
    if case == "restored by root with cp":  # cp's mode: the backup's 0660 less umask 022
        db.chmod(0o640)
        expect = f"may not write {db} (root:{group}, mode 0640): its group {group} may not: " \
                 f"chmod g+rw {db}"
    elif case == "its -shm read-only to the group":
        store.SqliteReader(str(db)).close()  # a reader (root's `check`) leaves -wal and -shm
        os.chmod(dbdir / "bayes.sqlite-shm", 0o640)
        expect = f"may not write {db}-shm (root:{group}, mode 0640)"
    elif case == "directory not group-writable":  # systemd's StateDirectoryMode=0750 at start
        for f in dbdir.glob("bayes.sqlite-*"):
            f.unlink()  # as the last connection to close removes them
        dbdir.chmod(0o750)
        expect = (f"may not create bayes.sqlite-wal in {dbdir} (root:{group}, mode 0750): "
                  f"its group {group} may not: chmod g+wx {dbdir}")
    elif case == "the pipe's own, read-only":  # a file its user owns, made read-only
        os.chown(db, uid, group)
        db.chmod(0o440)
        expect = f"may not write {db} ({uid}:{group}, mode 0440): its owner may not: " \
                 f"chmod u+rw {db}"
    else:
        groups = []  # Dovecot without mail_access_groups
        expect = (f"may not enter {dbdir} (root:{group}, mode 2770): user {uid} is neither its "
                  f"owner nor in its group {group}")
    r = pipe(py, uid, groups, db)
    assert r.returncode == 1
    assert f"spambridge train: {db}: cannot write the Bayes database: user {uid} {expect}" \
        in r.stderr, r.stderr
    assert "folded" not in r.stderr


def test_check_config_by_an_admin_before_the_first_start_says_the_database_comes_then(
        open_dir: Path, mail_user: tuple[int, int, tuple[str, str]]) -> None:
    """Before the milter's first start neither the database nor its directory exists: run by
    an admin who may not create that directory (the milter, started as root, makes it),
    `check-config` says it does not exist yet, not that this user may not create it."""
    uid, _, py = mail_user
    db = open_dir / "spambridge" / "bayes.sqlite"
    conf = write_config(open_dir / "c.toml", {"milter": {"engine": "bayes"},
                                              "bayes": {"db": str(db)}})
    conf.chmod(0o644)
    r = as_user(py, uid, [], "check-config", "--no-postfix", "--config", str(conf))
    assert f"[bayes] db: {db} does not exist yet: the milter creates it empty" in r.stdout, \
        r.stdout
    assert "may not create" not in r.stdout and not db.parent.exists()


def test_the_milter_and_check_config_say_whose_file_the_milter_cannot_read(
        start_milter: Start, open_dir: Path, tmp_path: Path) -> None:
    """A retrained copy made by root and moved into place (0640 root:root) behind a symlink,
    so that nothing hands it over: the milter's log and `check-config` name the file and its
    owner and mode; SQLite only said "unable to open database file", and check-config said
    all was well."""
    nobody = pwd.getpwnam("nobody")
    dbdir = open_dir / "db"
    dbdir.mkdir()
    os.chown(dbdir, nobody.pw_uid, nobody.pw_gid)
    real = open_dir / "big-disk"
    real.mkdir()
    os.chown(real, nobody.pw_uid, nobody.pw_gid)
    made = train(open_dir / "retrained.sqlite", open_dir / "corpus")  # root's 0640
    made.rename(real / "bayes.sqlite")
    (dbdir / "bayes.sqlite").symlink_to(real / "bayes.sqlite")
    cfg = milter_cfg(open_dir, dbdir / "bayes.sqlite", "nobody")
    conf = write_config(tmp_path / "c.toml", cfg)
    r = subprocess.run([sys.executable, "-m", "spambridge", "check-config", "--no-postfix",
                        "--config", str(conf)], capture_output=True, text=True, check=False)
    assert r.returncode == 1
    assert (f"warning: {conf}:7: [bayes] db: user 'nobody' may not read {real}/bayes.sqlite (root:root, "
            "mode 0640)") in r.stdout, r.stdout
    assert f"chown nobody {real}/bayes.sqlite" in r.stdout
    m = start_milter(cfg)
    wait_until(lambda: "Bayes database unusable" in m.log, 10, "the start-up check")
    assert (f"user nobody may not read {real}/bayes.sqlite (root:root, mode 0640): user nobody is "
            "neither its owner nor in its group root") in m.log, m.log


def check_config_outside_the_group(open_dir: Path, mail_user: tuple[int, int, tuple[str, str]]
                                   ) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    """A trained database in a 2770 directory of a group `mail_user` is not in, and
    `check-config` run by that user: (database, its directory, what check-config did)."""
    uid, group, py = mail_user
    dbdir = shared_dir(open_dir, group)
    db = train(dbdir / "bayes.sqlite", open_dir / "corpus")
    conf = write_config(open_dir / "c.toml", {"milter": {"engine": "bayes"},
                                              "bayes": {"db": str(db)}})
    conf.chmod(0o644)
    return db, dbdir, as_user(py, uid, [], "check-config", "--no-postfix", "--config", str(conf))


def test_check_config_as_an_admin_outside_the_group_does_not_call_the_database_missing(
        open_dir: Path, mail_user: tuple[int, int, tuple[str, str]]) -> None:
    """Run by a user who may not enter the database's directory, `check-config` said the
    database did not exist yet, that the milter would create it, and all was well."""
    uid, group, _ = mail_user
    db, dbdir, r = check_config_outside_the_group(open_dir, mail_user)
    assert "does not exist" not in r.stdout, r.stdout
    assert r.returncode == 1
    assert (f"warning: {open_dir}/c.toml:5: [bayes] db: {db}: cannot open the Bayes database: "
            f"user {uid} may not enter {dbdir} (root:{group}, mode 2770)") in r.stdout, r.stdout


@pytest.mark.parametrize("where", ["its directory", "a symlink's directory"])
def test_a_database_directory_the_milters_user_cannot_write_stops_the_start(
        start_milter: Start, open_dir: Path, where: str) -> None:
    """SQLite keeps the -wal and -shm beside the file a symlink points to: that directory is
    the one the milter's user must write (it was judged by the link's own, and the milter
    started to answer on_unavailable)."""
    nobody = pwd.getpwnam("nobody")
    dbdir = open_dir / "db"
    dbdir.mkdir()
    os.chown(dbdir, nobody.pw_uid, nobody.pw_gid)
    target = open_dir / "root-disk"  # root's 0755
    target.mkdir()
    db = train(target / "bayes.sqlite", open_dir / "corpus")
    for f in target.glob("bayes.sqlite*"):
        os.chown(f, nobody.pw_uid, nobody.pw_gid)  # the files are the user's, not the directory
    if where == "a symlink's directory":
        (dbdir / "bayes.sqlite").symlink_to(db)
        db = dbdir / "bayes.sqlite"
    m = start_milter(milter_cfg(open_dir, db, "nobody"), wait=False)
    assert m.proc.wait(30) == 78, m.log
    assert (f"{target} is not writable by user 'nobody' (SQLite keeps its -wal/-shm files next "
            f"to the database): chown nobody {target}") in m.log, m.log


@pytest.mark.parametrize("below", ["db", "x/y"])
def test_a_directory_above_the_database_its_user_cannot_search_is_named_at_start(
        start_milter: Start, open_dir: Path, below: str) -> None:
    """The database's directory is the milter's user's, a directory above it root's 0700: the
    start refused (exit 78) saying "chown nobody" of the directory the user owned already.
    Two levels up, it still did: the milter, its user by then, looked from the database's
    directory up and could not look at the first one (check-config, as root, named it)."""
    nobody = pwd.getpwnam("nobody")
    locked = open_dir / "locked"
    locked.mkdir()
    locked.chmod(0o700)
    dbdir = locked / below
    dbdir.mkdir(parents=True)
    db = train(dbdir / "bayes.sqlite", open_dir / "corpus")
    for f in [dbdir, *dbdir.glob("bayes.sqlite*")]:
        os.chown(f, nobody.pw_uid, nobody.pw_gid)
    m = start_milter(milter_cfg(open_dir, db, "nobody"), wait=False)
    assert m.proc.wait(30) == 78, m.log
    assert f"user 'nobody' may not search {locked}, so it cannot reach {dbdir}" in m.log, m.log
    assert f"chown nobody {dbdir}" not in m.log


def test_directories_the_start_makes_are_its_users(start_milter: Start, open_dir: Path) -> None:
    """Root with `[milter] user` on a fresh machine: the start made the database's and the
    socket's directories root's, then refused its user the database directory (exit 78, told
    to chown what it had just made) and left its socket behind; a user that does not exist
    left a root database."""
    nobody = pwd.getpwnam("nobody")
    db = open_dir / "lib" / "bayes.sqlite"
    sock = open_dir / "run" / "m.sock"
    cfg = {"milter": {"engine": "bayes", "user": "nobody", "socket": f"unix:{sock}"},
           "bayes": {"db": str(db)}}
    m = start_milter(cfg)
    for d in (db.parent, sock.parent):
        assert (d.stat().st_uid, d.stat().st_gid) == (nobody.pw_uid, nobody.pw_gid), d
    assert db.stat().st_uid == nobody.pw_uid
    m.proc.terminate()
    assert m.proc.wait(15) == 0
    assert not sock.exists()  # removed by the user at the stop

    cfg["milter"]["user"] = "no-such-user-sb"
    cfg["bayes"]["db"] = str(open_dir / "lib2" / "bayes.sqlite")
    m = start_milter(cfg, wait=False)
    assert m.proc.wait(30) == 78, m.log
    assert "no such user 'no-such-user-sb'" in m.log
    assert not (open_dir / "lib2").exists()  # nothing made for a start that cannot be


@pytest.mark.parametrize("failing", ["database directory", "spool_dir"])
def test_a_root_start_that_fails_as_its_user_takes_back_what_it_made(
        start_milter: Start, open_dir: Path, failing: str) -> None:
    """Root with `[milter] user`, in a directory of root's: a start that failed once it was
    its user (the database's directory not the user's; a spool_dir it cannot write) took back
    what it had made as that user, who may not remove anything there: the empty database
    ("... this start made is left: ..."), the directory made for it, the socket. The checks
    the user must pass are made while root can still take it all back."""
    cfg: dict[str, dict[str, object]] = {
        "milter": {"engine": "bayes", "user": "nobody", "socket": f"unix:{open_dir}/m.sock"}}
    if failing == "database directory":
        cfg["bayes"] = {"db": str(open_dir / "bayes.sqlite")}  # open_dir: root's 0755
    else:
        cfg["bayes"] = {"db": str(open_dir / "lib" / "bayes.sqlite")}  # lib made, the user's
        cfg["milter"]["spool_dir"] = str(open_dir / "no-such-spool")
    m = start_milter(cfg, wait=False)
    assert m.proc.wait(30) == 78, m.log
    assert "created an empty Bayes database" in m.log  # it got that far
    assert "this start made is left" not in m.log, m.log
    assert sorted(p.name for p in open_dir.iterdir()) == []


def test_a_root_start_that_cannot_start_a_thread_as_its_user_takes_back_what_it_made(
        user_in_a_group: tuple[pwd.struct_passwd, grp.struct_group],  # first: removed last
        start_milter: Start, open_dir: Path) -> None:
    """Root with `[milter] user`, the user's process limit reached (RLIMIT_NPROC, systemd's
    LimitNPROC=; a user of its own here, so that no other process counts): the start failed
    at its first thread after root was given up for good, with Python's "RuntimeError: can't
    start new thread" and a traceback, and left its socket (never removed) and the directory
    made for the database, which the user could not remove from a directory of root's. The
    start is whole before root is given up: root takes it all back, and the limit is named."""
    user, _ = user_in_a_group
    cfg = {"milter": {"engine": "bayes", "user": user.pw_name,
                      "socket": f"unix:{open_dir}/m.sock"},
           "bayes": {"db": str(open_dir / "lib" / "bayes.sqlite")}}
    m = start_milter(cfg, wait=False, rlimits={resource.RLIMIT_NPROC: (1, 1)})
    assert m.proc.wait(30) == 1, m.log
    assert "created an empty Bayes database" in m.log  # it got that far
    assert "Traceback" not in m.log, m.log
    assert "spambridge: cannot start a thread: " in m.log, m.log
    assert "the process limit (RLIMIT_NPROC, LimitNPROC=) is 1" in m.log, m.log
    assert sorted(p.name for p in open_dir.iterdir()) == []


@pytest.mark.parametrize("user", [None, "nobody"])
def test_a_dangling_symlink_on_the_databases_path_stops_the_start_naming_it(
        start_milter: Start, open_dir: Path, tmp_path: Path, user: str | None) -> None:
    """`[bayes] db = …/link/sub/bayes.db`, `link` a symlink to nothing: root without `[milter]
    user` served with every message on_unavailable ("cannot create the Bayes database …: No
    such file or directory: '…/link/sub'"); with it, refused (exit 78) telling the admin to
    `chown nobody …/gone/sub`, a directory that did not exist; check-config said the milter
    would create the database. Both now name the link and its target, and `run` exits 78."""
    link = open_dir / "link"
    link.symlink_to(open_dir / "gone")
    cfg = {"milter": {"engine": "bayes", "socket": f"unix:{open_dir}/m.sock",
                      **({"user": user} if user else {})},
           "bayes": {"db": str(link / "sub" / "bayes.sqlite")}}
    said = (f"[bayes] db: cannot create {link}/sub: {link} is a symlink to {open_dir}/gone, "
            "which does not exist (make that, or point the link at a directory that is there)")
    m = start_milter(cfg, wait=False)
    assert m.proc.wait(30) == 78, m.log
    assert f"spambridge: configuration error: {m.config_path}:" in m.log, m.log
    assert said in m.log, m.log
    r = subprocess.run([sys.executable, "-m", "spambridge", "check-config", "--no-postfix",
                        "--config", str(write_config(tmp_path / "c.toml", cfg))],
                       capture_output=True, text=True, check=False)
    assert f"{said}: the milter would not start" in r.stdout, r.stdout
    assert sorted(p.name for p in open_dir.iterdir()) == ["link"]  # nothing made


def test_a_start_under_umask_077_makes_every_missing_directory_its_users(
        start_milter: Start, open_dir: Path) -> None:
    """`db` several directories down a path not there yet, `run` started by root under umask
    077 (an admin's shell, an init system, a container): the directories above the last were
    root's 0700, so the start made them, dropped to its user and refused (exit 78, "chown
    nobody" of a directory nobody owned already), while check-config said all well. Every
    one is made as the last: 0750, the user's."""
    nobody = pwd.getpwnam("nobody")
    db = open_dir / "missing" / "a" / "b" / "bayes.sqlite"
    old = os.umask(0o077)  # the milter's, inherited
    try:
        m = start_milter(milter_cfg(open_dir, db, "nobody"), wait=False)
    finally:
        os.umask(old)
    wait_until(lambda: m.proc.poll() is not None or "listening on" in m.log, 30, "the start")
    assert m.proc.poll() is None, m.log  # it serves
    for d in (open_dir / "missing", open_dir / "missing" / "a", db.parent):
        st = d.stat()
        assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o7777)) == (
            nobody.pw_uid, nobody.pw_gid, "0o750"), d
    assert db.stat().st_uid == nobody.pw_uid


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "1m") -> Iterator[Path]:
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                        str(path)], capture_output=True, text=True, check=False)
    if r.returncode:
        pytest.fail(f"cannot mount a tmpfs at {path}: {r.stderr}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def test_a_database_on_a_read_only_filesystem_is_named_as_such(
        start_milter: Start, open_dir: Path, mail_user: tuple[int, int, tuple[str, str]],
        tmp_path: Path) -> None:
    """A database on a filesystem mounted read-only (for the milter alone, too, under systemd's
    ProtectSystem=strict when it lies outside the unit's directories). SQLite cannot read a WAL
    database there without its -wal and -shm, nor make them. The milter refused to start with
    advice to chown a directory its user already owned; `check` and a pipe said only "unable
    to open database file" and "attempt to write a readonly database", the pipe adding that
    the -wal "was not folded back"."""
    nobody = pwd.getpwnam("nobody")
    uid, group, py = mail_user
    with tmpfs(open_dir / "ro") as mnt:
        os.chown(mnt, nobody.pw_uid, group)
        os.chmod(mnt, 0o2770)
        db = train(mnt / "bayes.sqlite", open_dir / "corpus")  # nobody's: its directory's
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        m = start_milter(milter_cfg(open_dir, db, "nobody"), wait=False)
        assert m.proc.wait(30) == 78, m.log
        assert (f"{mnt} is on a filesystem mounted read-only (SQLite keeps its -wal/-shm files "
                "next to the database, and cannot read it without them): put the database where "
                "the milter may write, or mount it read-write") in m.log, m.log
        assert f"chown nobody {mnt}" not in m.log
        cfg = write_config(tmp_path / "c.toml", milter_cfg(open_dir, db, "nobody"))
        r = subprocess.run([sys.executable, "-m", "spambridge", "check-config", "--no-postfix",
                            "--config", str(cfg)], capture_output=True, text=True, check=False)
        assert f"{mnt} is on a filesystem mounted read-only" in r.stdout, r.stdout
        (open_dir / "m.eml").write_bytes(SPAM)
        r = subprocess.run([sys.executable, "-m", "spambridge", "check", "--batch", "--db",
                            str(db), str(open_dir / "m.eml")],
                           capture_output=True, text=True, check=False)
        assert r.returncode == 1
        assert (f"user root may not create bayes.sqlite-wal in {mnt} (nobody:{group}, mode "
                "2770): its filesystem is mounted read-only") in r.stderr, r.stderr
        r = pipe(py, uid, [group], db)
        assert r.returncode == 1
        assert (f"user {uid} may not write {db} (nobody:{group}, mode 0660): its filesystem is "
                "mounted read-only") in r.stderr, r.stderr
        assert "folded" not in r.stderr


def test_a_full_filesystem_is_named_not_a_disk_io_error(open_dir: Path) -> None:
    """With no -shm left (the last connection to close removes it) and the filesystem full,
    SQLite cannot size a new -shm and says "disk I/O error" to every reader: a hardware fault,
    to an admin. The filesystem is named, and that it is full."""
    with tmpfs(open_dir / "full", size="256k") as mnt:
        db = train(mnt / "bayes.sqlite", open_dir / "corpus")
        for f in mnt.glob("bayes.sqlite-*"):
            f.unlink()
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        with contextlib.suppress(OSError):
            for _ in range(1000):
                os.write(fd, b"\0" * 4096)
        os.close(fd)
        (open_dir / "m.eml").write_bytes(SPAM)
        r = subprocess.run([sys.executable, "-m", "spambridge", "check", "--batch", "--db",
                            str(db), str(open_dir / "m.eml")],
                           capture_output=True, text=True, check=False)
        assert r.returncode == 1
        assert (f"disk I/O error: no space left on the filesystem of {mnt} (SQLite makes its "
                "-wal and -shm there)") in r.stderr, r.stderr


@pytest.mark.parametrize("missing", ["the database", "its directory"])
def test_a_pipe_that_may_not_create_the_database_says_where_and_why(
        open_dir: Path, mail_user: tuple[int, int, tuple[str, str]], missing: str) -> None:
    """No database yet (or no directory for it) in a place the mail user may not write: the
    pipe names the directory, whose it is and what it lacks, not SQLite's "unable to open"."""
    uid, _, py = mail_user
    top = open_dir / "root-disk"  # root's 0755
    top.mkdir()
    top.chmod(0o755)
    db = top / "bayes.sqlite" if missing == "the database" else top / "new" / "bayes.sqlite"
    name = "bayes.sqlite" if missing == "the database" else "new"
    r = pipe(py, uid, [], db)
    assert r.returncode == 1
    assert (f"spambridge train: {db}: cannot write the Bayes database: user {uid} may not "
            f"create {name} in {top} (root:root, mode 0755): user {uid} is neither its owner "
            "nor in its group root") in r.stderr, r.stderr
    assert not (top / "new").exists() and not list(top.glob("bayes.sqlite*"))


def test_a_directory_on_the_way_closed_to_the_running_milter_is_named(
        start_milter: Start, open_dir: Path) -> None:
    """A directory above the database's that the milter's user may no longer enter (a chmod
    after the start): the log names it and what it lacks, not "[Errno 13] Permission denied"."""
    nobody = pwd.getpwnam("nobody")
    outer = open_dir / "outer"  # root's
    outer.mkdir()
    outer.chmod(0o755)
    dbdir = outer / "db"
    dbdir.mkdir()
    os.chown(dbdir, nobody.pw_uid, nobody.pw_gid)
    db = train(dbdir / "bayes.sqlite", open_dir / "corpus")
    m = start_milter(milter_cfg(open_dir, db, "nobody"))
    wait_until(lambda: "running as nobody" in m.log, 10, "the switch")
    outer.chmod(0o700)
    d = deliver(m.socket_path, SPAM, timeout=30)
    assert d.result is not None and d.result.action != "reject", (d, m.log)
    wait_until(lambda: "the error in full" in m.log, 10, "the warning")
    assert (f"{db}: cannot open the Bayes database: user nobody may not enter {outer} "
            "(root:root, mode 0700): user nobody is neither its owner nor in its group root"
            ) in m.log, m.log


def test_check_config_says_when_its_user_is_not_the_milters(
        open_dir: Path, mail_user: tuple[int, int, tuple[str, str]]) -> None:
    """What check-config cannot open as the admin who runs it, the milter's user may: the
    warning says who ran it, and nothing of the kind when that is the milter's own user."""
    uid = mail_user[0]
    db, dbdir, r = check_config_outside_the_group(open_dir, mail_user)
    assert (f"every message would get on_unavailable (if the milter ran as {uid}, who ran this "
            "check; it runs as root: run check-config as root to judge for it)") in r.stdout, \
        r.stdout
    nobody = pwd.getpwnam("nobody")
    conf = write_config(open_dir / "n.toml", milter_cfg(open_dir, db, "nobody"))
    conf.chmod(0o644)
    r = as_user(python_for(open_dir / "n", nobody.pw_uid, nobody.pw_gid), nobody.pw_uid, [],
                "check-config", "--no-postfix", "--config", str(conf))
    assert (f"[bayes] db: {db}: cannot open the Bayes database: user nobody may not enter "
            f"{dbdir}") in r.stdout, r.stdout
    assert "if the milter ran as" not in r.stdout


def test_a_milter_started_as_root_gives_files_in_roots_group_its_users_group(
        start_milter: Start, open_dir: Path) -> None:
    """Root's `train` leaves root:root files; the milter's start hands them to its user and that
    user's group (root's group kept, the group root may write through would be root's)."""
    nobody = pwd.getpwnam("nobody")
    dbdir = open_dir / "db"
    dbdir.mkdir()
    os.chown(dbdir, nobody.pw_uid, nobody.pw_gid)
    db = train(dbdir / "bayes.sqlite", open_dir / "corpus")
    for f in dbdir.glob("bayes.sqlite*"):
        os.chown(f, 0, 0)  # restored by root from a backup
    m = start_milter(milter_cfg(open_dir, db, "nobody"))
    wait_until(lambda: "running as nobody" in m.log, 10, "the switch")
    for f in dbdir.glob("bayes.sqlite*"):
        try:
            st = f.stat()
        except FileNotFoundError:  # a -wal/-shm of the start-up check's read, gone as it closed
            continue
        assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid), f
