"""Give up root once the socket and the Bayes database exist.

A milter parses hostile mail all day; it needs root at most to create its socket in a
root-owned directory and to hand it to the MTA's group. After that it runs as `[milter] user`.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import stat
from collections.abc import Iterator

from spambridge.config import Config, ConfigError, key_at
from spambridge.permissions import grants, read_only_fs
from spambridge.socketspec import SocketSpec

log = logging.getLogger("spambridge")

_DB_SUFFIXES = ("", "-wal", "-shm", "-journal")


def uses_bayes(cfg: Config) -> bool:
    return cfg.milter.engine in ("bayes", "spamd+bayes")


def preload() -> None:
    """Import what is otherwise imported lazily mid-message (the idna codec for host names):
    after the switch, the interpreter's own files may be out of the user's reach."""
    import encodings.idna  # noqa: F401
    import ssl  # noqa: F401

    "localhost".encode("idna")


# `user = "root"` ran into the check that setuid(0) fails after the switch: exit 1 and a
# message about privileges not dropped, for a config error (and systemd restarting it)
ROOT_USER = "{!r} is root (uid 0): no privileges to drop; leave [milter] user out to run as root"


def switch_to(cfg: Config) -> tuple[int, int] | None:
    """(uid, gid) of `[milter] user` when this process, root, will switch to it (None
    otherwise): what a directory the start makes is given to. Looked up before anything is
    made, so a user that does not exist stops the start with nothing left behind."""
    name = cfg.milter.user
    if not name or os.geteuid() != 0:
        return None
    pw = _user(cfg, name)
    return pw.pw_uid, pw.pw_gid


def _user(cfg: Config, name: str) -> pwd.struct_passwd:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"{key_at(cfg, 'milter', 'user')}: no such user {name!r}") from None
    if pw.pw_uid == 0:
        raise ConfigError(f"{key_at(cfg, 'milter', 'user')}: {ROOT_USER.format(name)}")
    return pw


@contextlib.contextmanager
def dropped(cfg: Config, spec: SocketSpec) -> Iterator[None]:
    """setgroups/setgid/setuid to `[milter] user`, after handing it the socket and the
    database files: the block runs as that user (what the milter needs to do as its user is
    checked there, its threads started), and root is given up for good only once the block
    has returned. A start that fails in it goes back to root, which takes back what it made
    (app.run), where the user could remove nothing root had made there. Without `user`,
    nothing changes (a warning when that means root)."""
    name = cfg.milter.user
    if not name:
        if os.geteuid() == 0:
            log.warning("running as root: set [milter] user to drop privileges")
        yield
        return
    pw = _user(cfg, name)
    if os.geteuid() != 0:
        if os.geteuid() == pw.pw_uid:  # already that user (systemd User=)
            yield
            return
        raise ConfigError(f"{key_at(cfg, 'milter', 'user')}: {name!r} needs spambridge to be "
                          "started as root")
    # never through a symlink: the directories may be writable by that user, who could
    # otherwise point a name at any file root owns and be handed it at the next start
    if spec.family == "unix":
        os.chown(spec.path, pw.pw_uid, -1, follow_symlinks=False)  # group: socket_group's
    if uses_bayes(cfg):
        for suffix in _DB_SUFFIXES:  # created by root just now (or by a root run before)
            f = cfg.bayes.db + suffix
            try:
                st = os.lstat(f)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_uid == 0 and st.st_nlink == 1:  # no links
                # the group stays, unless it is root's: through it others may write the file
                # (a Dovecot pipe, contrib/dovecot), and SQLite gives it to the -wal and -shm
                os.chown(f, pw.pw_uid, pw.pw_gid if st.st_gid == 0 else -1,
                         follow_symlinks=False)
    preload()
    groups, gids = os.getgroups(), os.getresgid()
    os.initgroups(name, pw.pw_gid)
    os.setresgid(pw.pw_gid, pw.pw_gid, -1)  # root kept as the saved ids until the block ends
    os.setresuid(pw.pw_uid, pw.pw_uid, -1)
    try:
        _check_db_dir(cfg, name)
        yield
    except BaseException:
        os.setresuid(0, 0, -1)  # for app.run to take back what root made
        os.setresgid(*gids)
        os.setgroups(groups)
        raise
    os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
    os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:  # pragma: no cover - the kernel would have to ignore setuid
        raise OSError("privileges were not dropped: setuid(0) still works")
    log.info("running as %s (uid %d, gid %d)", name, pw.pw_uid, pw.pw_gid)
    if spec.family == "unix":
        sock_dir = os.path.dirname(os.path.abspath(spec.path))
        if not os.access(sock_dir, os.W_OK | os.X_OK):  # mail still flows: a warning
            log.warning("%s: %s", key_at(cfg, "milter", "socket"),
                        socket_dir_problem(sock_dir, name, os.access(sock_dir, os.X_OK)))


def _check_db_dir(cfg: Config, name: str) -> None:
    """As the milter's user: SQLite must write its -wal and -shm beside the database."""
    if uses_bayes(cfg):
        # where SQLite keeps the -wal and -shm: beside the file a symlink points to
        db_dir = os.path.dirname(os.path.realpath(cfg.bayes.db))
        if not os.access(db_dir, os.W_OK | os.X_OK):
            raise ConfigError(f"{key_at(cfg, 'bayes', 'db')}: {db_dir_problem(db_dir, name)}")


def db_dir_problem(db_dir: str, name: str) -> str:
    if read_only_fs(db_dir):  # no chown helps there
        return (f"{db_dir} is on a filesystem mounted read-only (SQLite keeps its -wal/-shm "
                "files next to the database, and cannot read it without them): "
                f"{READ_ONLY_ADVICE}")
    if above := unsearchable_above(db_dir, name):  # a chown of db_dir would not help
        return (f"user {name!r} may not search {above}, so it cannot reach {db_dir} (SQLite "
                f"keeps its -wal/-shm files next to the database): let it search {above} "
                "(chmod o+x, or a group of the user's), or put the database elsewhere")
    return (f"{db_dir} is not writable by user {name!r} (SQLite keeps its -wal/-shm files "
            f"next to the database): chown {name} {db_dir}")


def unsearchable_above(path: str, name: str) -> str | None:
    """The first directory above `path`, from the root down, that user `name` may not search
    (mode bits); None when there is none or that cannot be told."""
    try:
        pw = pwd.getpwnam(name)
        groups = os.getgrouplist(name, pw.pw_gid)
        if pw.pw_uid == 0:
            return None
        return _unsearchable(os.path.dirname(os.path.abspath(path)), pw, groups)
    except (KeyError, OSError):
        return None


def _unsearchable(path: str, pw: pwd.struct_passwd, groups: list[int]) -> str | None:
    """The topmost of `path` and the directories above it that the user may not search
    (mode bits), or None; OSError when one cannot be looked at. Looked at from the root down:
    run as the user (after the switch), nothing below a directory it may not search can be
    looked at, so a walk up from `path` failed at its first step and named none."""
    chain = [os.path.abspath(path)]
    while (up := os.path.dirname(chain[-1])) != chain[-1]:
        chain.append(up)
    for d in reversed(chain):
        if not _allowed(d, pw, groups, 0o1):
            return d
    return None


# what to do about a read-only filesystem; systemd's ProtectSystem=strict makes one of every
# path but the unit's own directories and ReadWritePaths=, for the milter's process only
READ_ONLY_ADVICE = ("put the database where the milter may write, or mount it read-write "
                    "(under systemd's ProtectSystem=strict, as the packaged unit has it, add "
                    "its directory to ReadWritePaths=)")


def socket_dir_problem(sock_dir: str, name: str, reachable: bool = False) -> str:
    """`reachable`: the user may still connect to the socket (search access on the way)."""
    if above := unsearchable_above(sock_dir, name):  # a chown of sock_dir would not help
        return (f"user {name!r} may not search {above}, so it cannot reach {sock_dir}: the "
                "milter cannot remove its socket when it stops, nor reach it to wake "
                f"libmilter's workers under load; let it search {above} (chmod o+x, or a "
                "group of the user's)")
    return (f"{sock_dir} is not writable by user {name!r}: the milter cannot remove its socket "
            "when it stops" + ("" if reachable else
                               ", nor reach it to wake libmilter's workers under load")
            + f"; chown {name} {sock_dir} (mode 2750, group postfix)")


def _allowed(path: str, pw: pwd.struct_passwd, groups: list[int], want: int) -> bool:
    """Whether the mode bits of `path` give the user `want` (a mask of 4/2/1), as the kernel
    checks them without ACLs; raises OSError."""
    st = os.stat(path)
    return grants(st.st_mode, st.st_uid, st.st_gid, pw.pw_uid, groups, want)


def can_write_dir(path: str, name: str) -> bool | None:
    """Whether user `name` may create and remove entries in directory `path` (mode bits, as
    the kernel checks them without ACLs); None when that cannot be told (no such path/user)."""
    try:
        pw = pwd.getpwnam(name)
        groups = os.getgrouplist(name, pw.pw_gid)
        return pw.pw_uid == 0 or _allowed(path, pw, groups, 0o3)  # write and search
    except (KeyError, OSError):
        return None


def unreadable_db_files(db: str, name: str) -> list[str]:
    """Those of the database `db` and its -wal and -shm (beside the file a symlink points to)
    that user `name` may not read by their mode bits: the milter then answers on_unavailable
    for every message. Not said: what a milter started as root hands over at start (a file
    root owns, not behind a symlink); one started as the user, as systemd does, gets nothing."""
    try:
        pw = pwd.getpwnam(name)
        groups = os.getgrouplist(name, pw.pw_gid)
    except KeyError:
        return []
    if pw.pw_uid == 0:
        return []
    real = os.path.realpath(db)
    out = []
    for f in (real, real + "-wal", real + "-shm"):
        try:
            if not _allowed(f, pw, groups, 0o4):
                out.append(f)
        except OSError:
            continue
    return out


def can_reach(path: str, name: str) -> bool | None:
    """Whether user `name` may search `path` and every directory above it (None: unknown)."""
    try:
        pw = pwd.getpwnam(name)
        groups = os.getgrouplist(name, pw.pw_gid)
        return pw.pw_uid == 0 or _unsearchable(path, pw, groups) is None
    except (KeyError, OSError):
        return None


def socket_connect_problem(sock: str, name: str, mode: int, uid: int | None,
                           gid: int | None) -> str | None:
    """Why user `name` could not connect to the unix socket `sock` with this `mode`, owner
    `uid` and group `gid` (None: not known before the milter creates it). Connecting takes
    search access to every directory above the socket and write access to the socket itself.
    None when it could, or when that cannot be told (no such user)."""
    try:
        pw = pwd.getpwnam(name)
        groups = os.getgrouplist(name, pw.pw_gid)
    except KeyError:
        return None
    if pw.pw_uid == 0:
        return None
    sock_dir = os.path.dirname(os.path.abspath(sock))
    if os.path.isdir(sock_dir) and can_reach(sock_dir, name) is False:
        return f"user {name!r} may not search {sock_dir} or a directory above it"
    if grants(mode, uid, gid, pw.pw_uid, groups, 0o2):
        return None
    if gid is None and uid != pw.pw_uid:
        return (f"nothing gives {sock} a group user {name!r} is in ([milter] socket_group is "
                f"unset and {sock_dir} is not setgid): it gets the group of whoever starts the "
                "milter, root's when started as root")
    return f"user {name!r} may not write {sock} ({_described(mode, uid, gid)})"


def _described(mode: int, uid: int | None, gid: int | None) -> str:
    owner = group = "?"
    if uid is not None:
        owner = str(uid)
        with contextlib.suppress(KeyError):
            owner = pwd.getpwuid(uid).pw_name
    if gid is not None:
        group = str(gid)
        with contextlib.suppress(KeyError):
            group = grp.getgrgid(gid).gr_name
    return f"mode {stat.S_IMODE(mode):04o}, owner {owner}, group {group}"
