"""Who may do what to a file, said in an admin's words: `path (owner:group, mode 0640)`, the
user asking, and what would give it the access (a chmod, the group, a mount not read-only, an
ACL or the immutable flag). SQLite, libmilter and the kernel only say "permission denied" or
"unable to open database file"; the database's checks (bayes.store), the privilege switch
(privileges) and check-config all name files this way."""

from __future__ import annotations

import errno
import grp
import os
import pwd
import re
import stat
from collections.abc import Callable
from typing import Any


def _name(table: Callable[[int], Any], number: int) -> str:
    try:
        return str(table(number)[0])
    except KeyError:
        return str(number)


def described(path: str, st: os.stat_result) -> str:
    """`path (owner:group, mode 0640)`, as every permission message names a file."""
    return (f"{path} ({_name(pwd.getpwuid, st.st_uid)}:{_name(grp.getgrgid, st.st_gid)}, "
            f"mode {stat.S_IMODE(st.st_mode):04o})")


def user_name() -> str:
    """This process's user, by name where it has one."""
    return _name(pwd.getpwuid, os.geteuid())


def why_not(path: str, st: os.stat_result, bits: str) -> str:
    """Why this process lacks the permissions `bits` ("r", "rw", "wx", "x") on `path`, with
    what would give them; from the mode bits (ACLs aside: os.access has already said no)."""
    if read_only_fs(path):
        return ("its filesystem is mounted read-only (for this process only, under systemd's "
                "ProtectSystem=strict: add the directory to the unit's ReadWritePaths=)")
    if _mode_grants(st, bits):  # a chmod would change nothing
        return (f"its mode allows it, so an ACL (getfacl {path}) or the immutable flag "
                f"(lsattr {path}) refuses it")
    if st.st_uid == os.geteuid():
        return f"its owner may not: chmod u+{bits} {path}"
    group = _name(grp.getgrgid, st.st_gid)
    if st.st_gid == os.getegid() or st.st_gid in os.getgroups():
        return f"its group {group} may not: chmod g+{bits} {path}"
    return f"{this_user()} is neither its owner nor in its group {group}"


def _mode_grants(st: os.stat_result, bits: str) -> bool:
    """Whether the mode bits give this process `bits` on the database or a directory of its
    path: root needs none there, anyone else those of the class it falls in."""
    uid = os.geteuid()
    return uid == 0 or grants(st.st_mode, st.st_uid, st.st_gid, uid,
                              [os.getegid(), *os.getgroups()],
                              sum({"r": 4, "w": 2, "x": 1}[b] for b in bits))


def grants(mode: int, owner: int | None, group: int | None, uid: int, groups: list[int],
           want: int) -> bool:
    """Whether `mode` with owner `owner` and group `group` gives user `uid`, member of
    `groups`, the permissions `want` (a mask of 4/2/1), as the kernel checks them without
    ACLs: the owner's bits for the owner, else the group's for a member, else the others'."""
    if owner == uid:
        bits = mode >> 6
    elif group in groups:
        bits = mode >> 3
    else:
        bits = mode
    return bits & want == want


def this_user() -> str:
    return f"user {user_name()}"


def read_only_fs(path: str) -> bool:
    """Whether `path` is on a filesystem mounted read-only (for this process: systemd's
    ProtectSystem=strict mounts one for the unit alone), where no chmod or chown helps."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


MOUNTINFO = "/proc/self/mountinfo"
# filesystems processes on other hosts reach files on: SQLite's WAL mode keeps its index in
# shared memory (the -shm), which only one host's processes share ("WAL does not work over a
# network filesystem", sqlite.org/wal.html); fuse.* ones only those that are a network client
NETWORK_FS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "ceph", "9p", "afs", "lustre", "gpfs",
    "beegfs", "ocfs2", "gfs2", "glusterfs", "davfs", "fuse.sshfs", "fuse.glusterfs",
    "fuse.s3fs", "fuse.rclone", "fuse.davfs", "fuse.ceph-fuse", "fuse.gcsfuse",
    "fuse.juicefs", "fuse.smbnetfs"})
_ESCAPE = re.compile(r"\\([0-7]{3})")


def fs_type_in(mountinfo: str, path: str, dev: str | None = None) -> str | None:
    """The filesystem type of absolute, resolved `path` by `mountinfo` (the text of
    /proc/self/mountinfo): that of the longest mount point holding it, the last one listed
    for a mount point mounted over. With `dev` ("MAJ:MIN", the device of the file `path`
    names), only mounts of that device count while one holds it: a mount made over a
    directory hides the mounts below it (the longest mount point is then a hidden one), and
    a mount moved under another is listed before it (the last one listed is then not the
    one seen); btrfs gives subvolumes devices of their own, hence the fall-back. None when
    none holds it; lines that are not `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS
    [OPTIONAL...] - FSTYPE ...` are passed over."""
    found: dict[bool, tuple[str | None, int]] = {True: (None, -1), False: (None, -1)}
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        try:
            fstype = fields[fields.index("-", 6) + 1]
        except (ValueError, IndexError):
            continue
        at = _ESCAPE.sub(lambda m: chr(int(m[1], 8)), fields[4])
        if not fstype or not at.startswith("/"):
            continue
        if path == at or path.startswith(at if at.endswith("/") else at + "/"):
            same = dev is not None and fields[2] == dev  # of the device the file is on
            if len(at) >= found[same][1]:
                found[same] = (fstype, len(at))
    return found[True][0] or found[False][0]


def mountinfo() -> str | None:
    """This process's mount table (its mount namespace's: systemd's for a unit), or None
    where there is none to read (not Linux, no /proc in a chroot)."""
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except (OSError, ValueError):
        return None


def fs_type(path: str) -> str | None:
    """The filesystem type of the file `path` names (through symlinks), or of the nearest
    directory above it when there is none yet (where it would be made); None when unknown."""
    table = mountinfo()
    if table is None:
        return None
    at = os.path.realpath(nearest(path))
    try:
        st = os.stat(at)
    except OSError:  # a symlink to nothing: by its path alone
        return fs_type_in(table, at)
    return fs_type_in(table, at, f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}")


def network_fs(path: str) -> str | None:
    """The type of the filesystem `path` is on when processes on other hosts may reach the
    file there (NFS, CIFS, a cluster filesystem), else None."""
    fstype = fs_type(path)
    return fstype if fstype in NETWORK_FS else None


class DanglingLink(FileNotFoundError):
    """Where a directory is to be made, the nearest path there is a symlink to nothing.
    Nothing is made through it: its target may be a filesystem not mounted yet. Said as one
    sentence, naming the link and its target (`mkdir -p`, and `install -d` with it, say only
    "File exists", and a walk on, "No such file or directory" one level further down)."""

    def __str__(self) -> str:
        return str(self.strerror)


def nearest(path: str) -> str:
    """`path`, or the nearest path above it that is there (a symlink is, dangling or not):
    where making `path` starts."""
    path = os.path.abspath(path)
    while not os.path.lexists(path) and path != os.path.dirname(path):
        path = os.path.dirname(path)
    return path


def dangling_link(path: str, at: str | None = None) -> DanglingLink | None:
    """Why directory `path` cannot be made: the nearest path there (`at`, when the caller
    found it already) is a symlink to nothing (its target, or a directory on the way to it,
    is missing); None when it is not."""
    at = at or nearest(path)
    if not os.path.islink(at) or os.path.exists(at):
        return None
    return DanglingLink(errno.ENOENT, f"cannot create {os.path.abspath(path)}: {at} is a symlink "
                        f"to {os.path.realpath(at)}, which does not exist (make that, or point "
                        "the link at a directory that is there)")


def make_dirs(path: str, mode: int, owner: tuple[int, int] | None = None) -> tuple[str, ...]:
    """Make directory `path` and those missing above it, top down, each with at least `mode`
    whatever the umask, given to `owner` (uid, gid) when given; below a setgid directory each
    keeps the group and the bit it inherits, the group an admin set up to share (`install -d
    -g mail -m 2770` for the Dovecot pipe).
    `mkdir -p` gives the ones above the last the umask's mode (0700 under umask 077), and a
    chown of the last left them root's: the user a root milter switches to could not cross
    them. Returns the directories that were missing, deepest first; DanglingLink when a
    symlink to nothing is where they would start (check-config says the same, from it)."""
    top = nearest(path)
    if problem := dangling_link(path, top):
        raise problem
    missing = []
    d = os.path.abspath(path)
    while d != top:  # an ancestor of path, or path itself
        missing.append(d)
        d = os.path.dirname(d)
    for folder in reversed(missing):
        try:
            os.mkdir(folder, mode)
        except FileExistsError:  # made meanwhile (a `train` starting too): not ours to change
            continue
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            now = stat.S_IMODE(os.fstat(fd).st_mode)
            if owner is not None:
                os.fchown(fd, owner[0], -1 if now & stat.S_ISGID else owner[1])
            if now & mode != mode:  # the umask took some (077)
                os.fchmod(fd, now | mode)
        finally:
            os.close(fd)
    return tuple(missing)
