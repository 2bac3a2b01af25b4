"""`spambridge check-config` against a real Postfix instance (the e2e one, configured with
contrib/postfix/main.cf.example): it reads postconf -c DIR and judges the pair."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness import write_config
from postfix_instance import PostfixInstance

pytestmark = pytest.mark.postfix


def check_config(cfg: Path, *args: str, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spambridge", "check-config", "--config",
                           str(cfg), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_contrib_example_and_matching_config_are_all_well(
        postfix: PostfixInstance, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "ok.toml", {"milter": {
        "socket": f"unix:{postfix.milter_socket}", "scan_timeout": 10}})
    r = check_config(cfg, "--postfix-config", str(postfix.etc))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "check-config: all well" in r.stdout
    assert "postfix 3." in r.stdout
    assert "smtpd services that use spambridge: 127.0.0.1:" in r.stdout


def test_a_socket_postfix_may_not_connect_to_is_a_warning(
        postfix: PostfixInstance, tmp_path: Path) -> None:
    """The milter, started as root in a socket directory it made itself, left its socket in
    root's group: Postfix's smtpd (user postfix, mail_owner as postconf gives it) could not
    connect, and check-config said all well. The socket Postfix's own tests use, in the
    setgid directory of group postfix, passes (the test above)."""
    elsewhere = postfix.spool / "spambridge-root"
    elsewhere.mkdir()
    try:
        cfg = write_config(tmp_path / "root.toml", {"milter": {
            "socket": f"unix:{elsewhere}/spambridge.sock"}})
        with postfix.main_cf(smtpd_milters="unix:spambridge-root/spambridge.sock"):
            r = check_config(cfg, "--postfix-config", str(postfix.etc))
    finally:
        elsewhere.rmdir()
    assert r.returncode == 1, r.stdout + r.stderr
    assert (f"warning: {cfg}:2: [milter] socket: Postfix's smtpd (user 'postfix', mail_owner) "
            f"cannot connect: nothing gives {elsewhere}/spambridge.sock a group user 'postfix' is in"
            in r.stdout), r.stdout
    assert f"(install -d -g postfix -m 2750 {elsewhere})" in r.stdout
    assert "check-config: 1 warning(s)" in r.stdout


def test_mail_config_env_works_too(postfix: PostfixInstance, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "ok.toml", {"milter": {
        "socket": f"unix:{postfix.milter_socket}"}})
    r = check_config(cfg, env={"MAIL_CONFIG": str(postfix.etc)})
    assert r.returncode == 0, r.stdout + r.stderr


def test_cap_too_close_to_the_content_timeout_and_wrong_socket(
        postfix: PostfixInstance, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "bad.toml", {"milter": {
        "socket": "inet:8893@127.0.0.1", "scan_timeout": 40}})
    r = check_config(cfg, "--postfix-config", str(postfix.etc))
    assert r.returncode == 1
    assert "is not well below milter_content_timeout 60s" in r.stdout
    assert "does not reach spambridge's socket inet:8893@127.0.0.1" in r.stdout
    assert "Postfix would write inet:127.0.0.1:8893" in r.stdout


def test_no_postfix_skips_postconf(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "ok.toml", {"milter": {"socket": "inet:8893@127.0.0.1"}})
    r = check_config(cfg, "--no-postfix")
    assert r.returncode == 0 and "postfix" not in r.stdout.split("\n", 1)[1]


def test_unreadable_postfix_config_is_a_warning(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "ok.toml", {})
    r = check_config(cfg, "--postfix-config", str(tmp_path / "nowhere"))
    assert r.returncode == 1
    assert "cannot read Postfix's settings: postconf -c" in r.stdout


def test_bad_config_exits_78(tmp_path: Path) -> None:
    cfg = tmp_path / "typo.toml"
    cfg.write_text("[milter]\nscan_timout = 5\n")
    r = check_config(cfg, "--no-postfix")
    assert r.returncode == 78
    assert f"{cfg}:2: [milter] scan_timout: unknown key" in r.stderr


def test_parameters_are_read_expanded(tmp_path: Path) -> None:
    """smtpd_milters = $my_milters (and a master.cf -o smtpd_milters=$...) is how sites share
    one milter list between services: postconf without -x printed '$my_milters', and
    check-config warned that it does not reach the socket, and judged no timeout."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "main.cf").write_text(
        "compatibility_level = 3.6\nqueue_directory = /var/spool/postfix\n"
        "my_milters = unix:spambridge/spambridge.sock\nsmtpd_milters = $my_milters\n"
        "my_timeout = 5s\nmilter_content_timeout = ${my_timeout}\n"
        "milter_default_action = accept\n")
    (etc / "master.cf").write_text(
        "smtp inet n - y - - smtpd\n"
        "submission inet n - y - - smtpd -o smtpd_milters=$my_milters\n")
    cfg = write_config(tmp_path / "ok.toml", {"milter": {
        "socket": "unix:/var/spool/postfix/spambridge/spambridge.sock", "engine": "spamd"}})
    r = check_config(cfg, "--postfix-config", str(etc))
    assert "smtpd services that use spambridge: smtp/inet, submission/inet" in r.stdout
    assert "does not reach" not in r.stdout
    assert "well below milter_content_timeout 5s" in r.stdout


def test_a_latin1_value_in_main_cf_is_read(tmp_path: Path) -> None:
    """main.cf is bytes to Postfix, and an old site's may hold Latin-1 (a banner naming
    Müller): check-config stopped with a UnicodeDecodeError traceback, in every locale,
    before judging a single milter setting."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "main.cf").write_bytes(
        b"compatibility_level = 3.6\nqueue_directory = /var/spool/postfix\n"
        b"smtpd_banner = $myhostname ESMTP Mailserver M\xfcller GmbH\n"
        b"smtpd_milters = unix:spambridge/spambridge.sock\nmilter_content_timeout = 5s\n"
        b"milter_default_action = accept\n")
    (etc / "master.cf").write_text("smtp inet n - y - - smtpd\n")
    cfg = write_config(tmp_path / "ok.toml", {"milter": {
        "socket": "unix:/var/spool/postfix/spambridge/spambridge.sock", "engine": "spamd"}})
    r = check_config(cfg, "--postfix-config", str(etc))
    assert "Traceback" not in r.stderr, r.stderr
    assert "smtpd services that use spambridge: smtp/inet" in r.stdout
    assert "well below milter_content_timeout 5s" in r.stdout


def test_smtpd_milter_maps_is_named_where_it_decides(tmp_path: Path) -> None:
    """smtpd_milter_maps (Postfix 3.2) gives the clients it matches their own milters instead
    of smtpd_milters (DISABLE: none): check-config judged smtpd_milters alone and said "all
    well" while the map's clients went unscanned, or warned that spambridge is not reached
    without a word about the map that reaches it. The map is named in both cases."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "milter_map").write_text("10.0.0.0/8 DISABLE\n")
    main_cf = ("compatibility_level = 3.6\nqueue_directory = /var/spool/postfix\n"
               "milter_default_action = accept\n"
               f"smtpd_milter_maps = cidr:{etc}/milter_map\n")
    (etc / "main.cf").write_text(main_cf + "smtpd_milters = unix:spambridge/spambridge.sock\n")
    (etc / "master.cf").write_text("smtp inet n - y - - smtpd\n")
    cfg = write_config(tmp_path / "ok.toml", {"milter": {
        "socket": "unix:/var/spool/postfix/spambridge/spambridge.sock", "engine": "spamd"}})
    r = check_config(cfg, "--postfix-config", str(etc))
    assert "does not reach" not in r.stdout, r.stdout
    assert (f"smtpd services that use spambridge: smtp/inet; smtpd_milter_maps "
            f"(cidr:{etc}/milter_map) gives the SMTP clients it matches their milters "
            "instead") in r.stdout, r.stdout
    assert "(DISABLE: no milter at all)" in r.stdout
    # the map alone gives spambridge to some clients: smtpd_milters still misses it for the rest
    (etc / "milter_map").write_text("10.0.0.0/8 unix:spambridge/spambridge.sock\n")
    (etc / "main.cf").write_text(main_cf)
    (etc / "master.cf").write_text(
        "smtp inet n - y - - smtpd -o smtpd_milter_maps=cidr:/etc/postfix/other_map\n")
    r = check_config(cfg, "--postfix-config", str(etc))
    assert r.returncode == 1, r.stdout + r.stderr
    assert ("warning: smtpd_milters (empty) does not reach spambridge's socket "
            "unix:/var/spool/postfix/spambridge/spambridge.sock; Postfix would write "
            "unix:spambridge/spambridge.sock; smtpd_milter_maps (cidr:/etc/postfix/other_map) "
            "gives the SMTP clients it matches") in r.stdout, r.stdout


def _etc(tmp_path: Path, extra: str = "") -> Path:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "main.cf").write_text(
        "compatibility_level = 3.6\nqueue_directory = /var/spool/postfix\n"
        "smtpd_milters = unix:spambridge/spambridge.sock\nmilter_default_action = accept\n"
        + extra)
    (etc / "master.cf").write_text("smtp inet n - y - - smtpd\n")
    return etc


def test_an_empty_parameter_is_read_as_empty(tmp_path: Path) -> None:
    """`milter_protocol =` in main.cf: postconf prints `milter_protocol =`, a value Postfix
    has no protocol for; it is judged as written, not taken for the default 6."""
    etc = _etc(tmp_path, "milter_protocol =\n")
    cfg = write_config(tmp_path / "ok.toml", {"milter": {
        "socket": "unix:/var/spool/postfix/spambridge/spambridge.sock", "engine": "spamd"}})
    r = check_config(cfg, "--postfix-config", str(etc))
    assert "warning: cannot read milter_protocol = ''" in r.stdout, r.stdout


def test_the_postfix_config_directory_from_mail_config_is_named(tmp_path: Path) -> None:
    etc = _etc(tmp_path)
    cfg = write_config(tmp_path / "ok.toml", {"milter": {
        "socket": "unix:/var/spool/postfix/spambridge/spambridge.sock", "engine": "spamd"}})
    r = check_config(cfg, env={"MAIL_CONFIG": str(etc)})
    assert f"({etc}): smtpd_milters = unix:spambridge/spambridge.sock" in r.stdout, r.stdout


def test_the_socket_is_judged_for_postfixs_own_mail_owner(tmp_path: Path) -> None:
    """mail_owner = nobody: smtpd runs as nobody, and that is the user who must connect."""
    etc = _etc(tmp_path, "mail_owner = nobody\n")
    cfg = write_config(tmp_path / "ok.toml", {"milter": {
        "socket": f"unix:{tmp_path}/run/spambridge.sock", "engine": "spamd"}})
    r = check_config(cfg, "--postfix-config", str(etc))
    assert f"warning: {cfg}:2: [milter] socket: Postfix's smtpd (user 'nobody', mail_owner) " \
        "cannot connect" in r.stdout, r.stdout
