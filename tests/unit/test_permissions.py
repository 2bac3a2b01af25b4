"""Which filesystem a path is on, read from /proc/self/mountinfo as the kernel writes it: the
Bayes database must not be on one that processes on other hosts reach (SQLite's WAL mode keeps
its index in shared memory, which only one host's processes share)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spambridge import permissions

# mount ID, parent ID, major:minor, root, mount point, mount options, optional fields, "-",
# fstype, source, super options; mount points with \ooo escapes
MOUNTINFO = r"""22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
25 22 0:23 / /proc rw,nosuid,nodev,noexec shared:12 - proc proc rw
40 22 0:40 / /srv rw,relatime shared:20 master:3 - nfs4 fs.example.net:/export rw,vers=4.2
41 40 8:2 / /srv/local rw,relatime shared:21 - ext4 /dev/sdb1 rw
42 22 0:41 / /mnt/my\040share rw,relatime - cifs //fs/share rw,vers=3.1.1
43 22 0:40 /spambridge /var/lib/spambridge rw,relatime shared:20 - nfs4 fs.example.net:/export rw
44 22 0:42 / /mnt/a\134b\011c rw - fuse.sshfs mx1:/var/lib rw,user_id=0
garbage
45 22 0:43 / /var/spool rw,relatime nfs4 fs:/spool rw
46 22 0:44 / /var/mail rw,relatime -
47 22 0:45 / /var/tmp rw -
not a line at all - nfs4 x y
"""


@pytest.mark.parametrize(("path", "fstype"), [
    ("/", "ext4"),
    ("/etc/spambridge/spambridge.toml", "ext4"),  # on / only
    ("/srv", "nfs4"),
    ("/srv/x/bayes.sqlite", "nfs4"),
    ("/srvx/bayes.sqlite", "ext4"),  # a prefix of the name, not of the path
    ("/srv/local/bayes.sqlite", "ext4"),  # nested: the longest mount point wins
    ("/srv/localx/bayes.sqlite", "nfs4"),
    ("/mnt/my share/bayes.sqlite", "cifs"),  # \040
    ("/mnt/my\\040share/bayes.sqlite", "ext4"),  # the escape is not the name
    ("/mnt/a\\b\tc/bayes.sqlite", "fuse.sshfs"),  # \134, \011
    ("/var/lib/spambridge/bayes.sqlite", "nfs4"),  # a bind mount of a directory of the share
    # garbage ignored: no separator; a separator with no fstype after it; too few fields
    ("/var/spool/bayes.sqlite", "ext4"),
    ("/var/mail/bayes.sqlite", "ext4"),
    ("/var/tmp/bayes.sqlite", "ext4"),
    ("/not/bayes.sqlite", "ext4"),
])
def test_the_filesystem_of_a_path_is_its_longest_mount_points(path: str, fstype: str) -> None:
    assert permissions.fs_type_in(MOUNTINFO, path) == fstype


def test_the_last_mount_on_a_mount_point_is_the_one_seen() -> None:
    """An overmount hides what was mounted there before: mountinfo lists both, in order."""
    over = MOUNTINFO + "50 41 0:50 / /srv/local rw - tmpfs tmpfs rw\n"
    assert permissions.fs_type_in(over, "/srv/local/bayes.sqlite") == "tmpfs"
    assert permissions.fs_type_in(over, "/srv/x") == "nfs4"
    back = over + "51 50 0:40 / /srv/local rw - nfs shared:/x rw\n"
    assert permissions.fs_type_in(back, "/srv/local/bayes.sqlite") == "nfs"


def test_no_mount_that_holds_the_path_is_none() -> None:
    assert permissions.fs_type_in("", "/var/lib/spambridge/bayes.sqlite") is None
    assert permissions.fs_type_in("garbage\n\n", "/") is None
    assert permissions.fs_type_in(
        "40 22 0:40 / /srv rw - nfs4 fs:/x rw\n", "/var/lib/spambridge/bayes.sqlite") is None
    # a separator with nothing after it but a blank; a mount point that is no path
    assert permissions.fs_type_in("22 1 8:1 / /var rw - \n", "/var/lib/spambridge") is None
    assert permissions.fs_type_in("22 1 8:1 /  rw - nfs4 fs:/x rw\n", "/var/lib") is None


def mounted(tmp_path: Path, fstype: str) -> str:
    """A mountinfo with `tmp_path` mounted as `fstype` on an ext4 root, with the device the
    files under it are on."""
    at = os.path.realpath(tmp_path).replace("\\", "\\134").replace(" ", "\\040")
    dev = os.stat(tmp_path).st_dev
    return (f"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
            f"40 22 {os.major(dev)}:{os.minor(dev)} / {at} rw,relatime - {fstype} "
            "fs.example.net:/export rw\n")


@pytest.mark.parametrize(("fstype", "network"), [
    ("nfs", True), ("nfs4", True), ("cifs", True), ("smb3", True), ("ceph", True),
    ("9p", True), ("fuse.sshfs", True), ("fuse.glusterfs", True), ("glusterfs", True),
    ("fuse.s3fs", True), ("fuse.rclone", True), ("davfs", True), ("ocfs2", True),
    ("gfs2", True), ("lustre", True), ("beegfs", True),
    ("ext4", False), ("xfs", False), ("btrfs", False), ("zfs", False), ("tmpfs", False),
    ("overlay", False), ("fuse.bindfs", False), ("fuseblk", False)])
def test_a_database_on_a_network_filesystem_is_told(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fstype: str, network: bool) -> None:
    """The database, one not made yet (its nearest existing directory tells), and a symlink
    to one on the share (the -wal and -shm go beside the file it points to)."""
    monkeypatch.setattr(permissions, "mountinfo", lambda: mounted(tmp_path / "share", fstype))
    (tmp_path / "share").mkdir()
    (tmp_path / "share" / "bayes.sqlite").touch()
    (tmp_path / "link.sqlite").symlink_to(tmp_path / "share" / "bayes.sqlite")
    want = fstype if network else None
    assert permissions.network_fs(str(tmp_path / "share" / "bayes.sqlite")) == want
    assert permissions.network_fs(str(tmp_path / "share" / "new" / "b.sqlite")) == want
    assert permissions.network_fs(str(tmp_path / "link.sqlite")) == want
    assert permissions.network_fs(str(tmp_path / "local.sqlite")) is None  # on / (ext4)


def test_a_path_with_a_space_is_matched_as_mountinfo_escapes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    share = tmp_path / "my share"
    share.mkdir()
    monkeypatch.setattr(permissions, "mountinfo", lambda: mounted(share, "cifs"))
    assert permissions.network_fs(str(share / "bayes.sqlite")) == "cifs"


def test_no_mountinfo_tells_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside Linux, or /proc not mounted (a chroot): no type, no exception."""
    assert permissions.fs_type("/") is not None  # this host's own, read
    monkeypatch.setattr(permissions, "MOUNTINFO", str(tmp_path / "missing"))
    assert permissions.mountinfo() is None
    assert permissions.fs_type("/") is None
    assert permissions.network_fs(str(tmp_path / "bayes.sqlite")) is None
    monkeypatch.setattr(permissions, "MOUNTINFO", str(tmp_path))  # a directory: EISDIR
    assert permissions.mountinfo() is None
