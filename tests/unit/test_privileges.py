"""privileges.dropped's decisions that need no second user to see: what a milter started without
root, or without [milter] user, says and does (test_security.py starts real milters as root)."""

from __future__ import annotations

import logging
import pwd
from pathlib import Path
from unittest import mock

import pytest

from spambridge import privileges
from spambridge.config import ConfigError, from_mapping
from spambridge.socketspec import parse_socket_spec

NOBODY = pwd.getpwnam("nobody")


def _never(*a: object, **k: object) -> None:
    raise AssertionError("privileges changed")


@pytest.mark.parametrize(("euid", "warned"), [(0, True), (NOBODY.pw_uid, False)])
def test_without_a_user_only_root_is_told_to_set_one(caplog: pytest.LogCaptureFixture,
                                                     euid: int, warned: bool) -> None:
    caplog.set_level(logging.WARNING, logger="spambridge")
    with mock.patch("os.geteuid", return_value=euid), mock.patch("os.setuid", _never), \
            privileges.dropped(from_mapping({}), parse_socket_spec("inet:8893@127.0.0.1")):
        pass
    said = [r.getMessage() for r in caplog.records]
    assert said == (["running as root: set [milter] user to drop privileges"] if warned else [])


def test_a_milter_started_as_its_user_carries_on(tmp_path: Path) -> None:
    """systemd's User=: the milter is already [milter] user; nothing to hand over or drop."""
    cfg = from_mapping({"milter": {"user": "nobody", "engine": "spamd"}})
    with mock.patch("os.geteuid", return_value=NOBODY.pw_uid), mock.patch("os.setuid", _never), \
            mock.patch("os.chown", _never), \
            privileges.dropped(cfg, parse_socket_spec(f"unix:{tmp_path}/s.sock")):
        pass


@pytest.mark.parametrize("euid", [0, NOBODY.pw_uid])
def test_the_start_checks_are_made_without_a_switch_too(tmp_path: Path, euid: int) -> None:
    """The spool check `run` makes in the dropped() block is made when there is no user to
    switch to (root without [milter] user; systemd's User=) as well: a spool_dir the milter
    cannot write stops those starts too."""
    def spool_check() -> None:
        raise ConfigError("no spool")

    user = {"user": "nobody"} if euid else {}
    cfg = from_mapping({"milter": {"engine": "spamd", **user}})
    with mock.patch("os.geteuid", return_value=euid), mock.patch("os.setuid", _never), \
            mock.patch("os.setresuid", _never), pytest.raises(ConfigError, match="no spool"), \
            privileges.dropped(cfg, parse_socket_spec(f"unix:{tmp_path}/s.sock")):
        spool_check()


def test_another_user_is_refused_naming_the_key(tmp_path: Path) -> None:
    cfg = from_mapping({"milter": {"user": "nobody", "engine": "spamd"}})
    with mock.patch("os.geteuid", return_value=NOBODY.pw_uid + 1), \
            mock.patch("os.setuid", _never), pytest.raises(ConfigError) as e, \
            privileges.dropped(cfg, parse_socket_spec(f"unix:{tmp_path}/s.sock")):
        pass
    assert str(e.value) == ("<config>: [milter] user: 'nobody' needs spambridge to be started "
                            "as root")


def test_root_as_the_milters_user_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    """`user = "root"` went through the switch, then stopped at the check that setuid(0)
    fails: exit 1, "privileges were not dropped", and systemd restarting it; check-config
    said all was well."""
    from spambridge.checkconfig import check_local

    cfg = from_mapping({"milter": {"user": "root", "engine": "spamd"}})
    with mock.patch("os.geteuid", return_value=0), mock.patch("os.setuid", _never), \
            mock.patch("os.chown", _never), pytest.raises(ConfigError) as e, \
            privileges.dropped(cfg, parse_socket_spec(f"unix:{tmp_path}/s.sock")):
        pass
    said = ("'root' is root (uid 0): no privileges to drop; leave [milter] user out to run "
            "as root")
    assert str(e.value) == f"<config>: [milter] user: {said}"
    assert f"[milter] user: {said}" in check_local(cfg).warnings
