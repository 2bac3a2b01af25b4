"""Config: defaults work, flags win, and every mistake names file:line and key."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import pytest

from spambridge.config import (
    SUBJECT_TAG_MAX,
    ConfigError,
    from_mapping,
    load,
    parse_spamd_address,
    reloaded,
    with_overrides,
)
from spambridge.socketspec import parse_socket_spec
from spambridge.verdict import FailAction, SmtpReply


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "spambridge.toml"
    p.write_text(text)
    return p


def test_defaults_without_a_file() -> None:
    cfg = load(None)
    assert cfg.milter.engine == "bayes"
    assert cfg.milter.scan_timeout == 10.0
    assert cfg.policy.spamd.tag == 5.0 and cfg.policy.spamd.reject == 15.0
    assert cfg.policy.on_timeout is FailAction.ACCEPT
    assert cfg.milter.socket_mode == 0o660


@pytest.mark.parametrize("tag", ["[SPAM] ", " [SPAM]", "  [SPAM]   "])
def test_blanks_around_the_subject_tag_are_dropped(tmp_path: Path, tag: str) -> None:
    """The Subject gets one space after the tag: "[SPAM] " made "[SPAM]  hello"."""
    cfg = load(write(tmp_path, f'[policy]\nsubject_tag = "{tag}"\n'))
    assert cfg.policy.subject_tag == "[SPAM]"


def test_a_subject_tag_of_the_most_characters_is_taken_and_one_more_refused(
        tmp_path: Path) -> None:
    """SUBJECT_TAG_MAX characters is a tag (the blanks around it, dropped, do not count);
    one more is refused with the limit named."""
    tag = "[" + "S" * (SUBJECT_TAG_MAX - 2) + "]"
    cfg = load(write(tmp_path, f'[policy]\nsubject_tag = "  {tag}  "\n'))
    assert cfg.policy.subject_tag == tag
    with pytest.raises(ConfigError, match=f"at most {SUBJECT_TAG_MAX} characters, not "
                       f"{SUBJECT_TAG_MAX + 1}"):
        load(write(tmp_path, f'[policy]\nsubject_tag = "{tag}S"\n'))


def test_a_full_file(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, """
[milter]
socket = "inet:11332@127.0.0.1"
engine = "spamd"
scan_timeout = 4
trusted_networks = ["10.0.0.0/8", "2001:db8::/32"]
socket_mode = "0600"
[policy]
tag_at = 4.5
reject_at = 9.25
tag_only = true
on_timeout = "tempfail"
reject_reply = "554 5.7.1 Go away"
[spamd]
socket = "/run/spamd.sock"
"""))
    assert cfg.milter.socket == "inet:11332@127.0.0.1"
    assert cfg.milter.scan_timeout == 4.0
    assert len(cfg.milter.trusted_networks) == 2
    assert cfg.milter.socket_mode == 0o600
    assert cfg.policy.spamd.reject == 9.25
    assert cfg.policy.tag_only
    assert cfg.policy.on_timeout is FailAction.TEMPFAIL
    assert cfg.policy.reject_reply == SmtpReply("554", "5.7.1", "Go away")
    assert cfg.spamd.socket == "/run/spamd.sock"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("[milter]\nengine = \"bayes\"\nscan_timout = 3\n", 3, "[milter] scan_timout: unknown key"),
        ("[policy]\n\ntag_at = 8\nreject_at = 6\n", 4,
         "[policy] reject_at: reject_at (6) must not be below tag_at (8)"),
        ("[policy]\ntag_at = 20\n", 2,
         "[policy] tag_at: reject_at (15) must not be below tag_at (20)"),
        ("[milter]\nscan_timeout = 400\n", 2, "[milter] scan_timeout: must be between 0.1 and 120"),
        ("[milter]\nscan_timeout = \"ten\"\n", 2, "[milter] scan_timeout: must be a number, not a string"),
        ("[milter]\nsocket = \"tcp://x\"\n", 2, "[milter] socket: 'tcp://x' is not a socket spec"),
        ("[milter]\nsocket = \"inet:99999@127.0.0.1\"\n", 2, "port must be 1-65535"),
        ("[policy]\non_timeout = \"bounce\"\n", 2, "[policy] on_timeout: must be accept, tempfail or reject"),
        ("[policy]\nreject_reply = \"450 4.7.1 later\"\n", 2, "must be a 5xx reply"),
        ("[policy]\ntag_only = \"yes\"\n", 2, "[policy] tag_only: must be true or false"),
        ("[milter]\ntrusted_networks = [\"10.0.0.0/33\"]\n", 2, "is not an IPv4/IPv6 address"),
        ("[spamd]\nport = 0\n", 2, "[spamd] port: must be between 1 and 65535"),
        ("[bogus]\nx = 1\n", 1, "unknown section [bogus]"),
        ("[milter]\nsocket_mode = \"rw-rw----\"\n", 2, "octal mode"),
        ("[spamd]\nsocket = \"/run/spamd.sock\"\ntls = true\n", 3,
         "[spamd] tls: TLS is for spamd over TCP"),
        ("[bayes]\nreject_cutoff = 0.5\n", 2,
         "[bayes] reject_cutoff: spam_cutoff (0.9) must not be above reject_cutoff (0.5)"),
        ("[bayes]\n\nham_cutoff = 0.95\n", 3,
         "[bayes] ham_cutoff: ham_cutoff (0.95) must not be above spam_cutoff (0.9)"),
    ],
)
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, line: int, message: str) -> None:
    p, error = config_error(tmp_path, text)
    assert error.startswith(f"{p}:{line}: ") or f"{p}:{line}:" in error
    assert message in error


def config_error(tmp_path: Path, text: str) -> tuple[Path, str]:
    """The config file written from `text`, and the ConfigError loading it raises."""
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load(p)
    return p, str(e.value)


def test_broken_toml_names_the_line(tmp_path: Path) -> None:
    p = write(tmp_path, "[milter]\nengine = bayes\n")
    with pytest.raises(ConfigError, match=r"invalid TOML: .*line 2"):
        load(p)


@pytest.mark.parametrize(("value", "why"), [
    ("[" * 500 + "]" * 500, "values nested too deeply"),
    ("9" * 5000, "Exceeds the limit (4300 digits) for integer string conversion: value has "
     "5000 digits"),
], ids=["nested", "long-integer"])
def test_toml_tomllib_cannot_read_is_a_config_error(tmp_path: Path, value: str, why: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """tomllib raises RecursionError or ValueError for these, not TOMLDecodeError: `run` and
    `check-config` died with a traceback (exit 1) instead of exit 78 naming the file."""
    from spambridge import cli

    p, error = config_error(tmp_path, f"[milter]\ntrusted_networks = {value}\n")
    assert error == f"{p}: invalid TOML: {why}"
    assert cli.main(["check-config", "--syntax-only", "-c", str(p)]) == 78
    assert capsys.readouterr().err == f"spambridge: configuration error: {error}\n"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load(tmp_path / "nope.toml")


def test_flags_override_the_file(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "[policy]\ntag_at = 4\nreject_at = 10\n[milter]\nengine = \"bayes\"\n"))
    cfg = with_overrides(cfg, reject_at=12.5, tag_only=True, engine="spamd",
                         spamd="[::1]:7830", socket="unix:/tmp/x.sock", scan_timeout=3)
    assert cfg.policy.spamd.tag == 4.0 and cfg.policy.spamd.reject == 12.5
    assert cfg.policy.tag_only
    assert cfg.milter.engine == "spamd"
    assert (cfg.spamd.host, cfg.spamd.port) == ("::1", 7830)
    assert cfg.milter.scan_timeout == 3.0


def test_spamd_flag_takes_a_scoped_ipv6_address() -> None:
    cfg = with_overrides(load(None), spamd="[fe80::1%eth0]:7830")
    assert (cfg.spamd.host, cfg.spamd.port) == ("fe80::1%eth0", 7830)


def test_an_empty_database_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"spambridge\.toml:2: \[bayes\] db: an empty path"):
        load(write(tmp_path, '[bayes]\ndb = ""\n'))


@pytest.mark.parametrize(("section", "key", "value"), [
    ("milter", "name", "spam\\u0000bridge"),
    ("milter", "socket", "unix:/run/spambridge/s\\u0000.sock"),
    ("milter", "user", "spambridge\\u0000"),
    ("milter", "socket_group", "postfix\\u0000"),
    ("milter", "spool_dir", "/var/tmp/\\u0000"),
    ("bayes", "db", "/var/lib/spambridge/b\\u0000.sqlite"),
    ("spamd", "socket", "/run/spamd/s\\u0000.sock"),
    ("spamd", "ca_file", "/etc/ssl/ca\\u0000.pem"),
])
def test_a_nul_character_in_a_string_is_an_error(tmp_path: Path, section: str, key: str,
                                                 value: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A NUL passed the checks and then stopped `run` with a traceback ("embedded null
    character" from milter.register, getpwnam, open) or check-config with one."""
    from spambridge import cli

    p, error = config_error(tmp_path, f'[{section}]\n{key} = "{value}"\n')
    assert error == f"{p}:2: [{section}] {key}: must not contain a NUL character (\\u0000)"
    assert cli.main(["check-config", "--no-postfix", "-c", str(p)]) == 78
    assert capsys.readouterr().err == f"spambridge: configuration error: {error}\n"


@pytest.mark.parametrize(("value", "why"), [
    ("", 'must not be empty (the default is "spambridge")'),
    ("spam\u00e9", "must be printable ASCII; '\u00e9' is not"),
    ("spam\\tbridge", "must be printable ASCII; '\\t' is not"),
])
def test_the_milter_name_is_printable_ascii(tmp_path: Path, value: str, why: str) -> None:
    """libmilter registers the filter by this name and writes it in its log lines: an empty
    one was taken too."""
    p, error = config_error(tmp_path, f'[milter]\nname = "{value}"\n')
    assert error == f"{p}:2: [milter] name: {why}"
    assert load(write(tmp_path, '[milter]\nname = "spam-bridge 2"\n')).milter.name == (
        "spam-bridge 2")


def test_flag_that_breaks_ordering_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"^command line: --tag-at: reject_at \(15\) must not "
                       r"be below tag_at \(20\)$"):
        with_overrides(load(None), tag_at=20)


@pytest.mark.parametrize(("flags", "message"), [
    # NaN compares false with everything: a spam of 50 points would be ham (required=nan)
    ({"tag_at": float("nan")}, "--tag-at: must be between -1000 and 10000, not nan"),
    ({"reject_at": float("inf")}, "--reject-at: must be between -1000 and 10000, not inf"),
    ({"reject_at": 1e9}, "--reject-at: must be between -1000 and 10000"),
    ({"scan_timeout": 500.0}, "--scan-timeout: must be between 0.1 and 120, not 500"),
    ({"spamd": "a:b:c"}, "--spamd: must be HOST:PORT"),
    ({"db": ""}, "--db: an empty path"),  # ran with no database at all, warning per message
    ({"spamd": "sp!md:783"}, "--spamd: 'sp!md' is not a host name"),  # as [spamd] host
])
def test_flags_get_the_checks_of_their_keys_and_are_named(
        tmp_path: Path, flags: dict[str, object], message: str) -> None:
    """The file is fine: the error is the flag's, and says so."""
    cfg = load(write(tmp_path, "[milter]\nscan_timeout = 5.0\n"))
    with pytest.raises(ConfigError) as e:
        with_overrides(cfg, **flags)
    assert str(e.value).startswith(f"command line: {message}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:783", ("127.0.0.1", 783, "")),
        ("spamd.internal", ("spamd.internal", 783, "")),
        ("[2001:db8::1]:7830", ("2001:db8::1", 7830, "")),
        ("/run/spamd/spamd.sock", ("127.0.0.1", 783, "/run/spamd/spamd.sock")),
    ],
)
def test_spamd_addresses(text: str, expected: tuple[str, int, str]) -> None:
    assert parse_spamd_address(text) == expected


def test_a_reload_applies_policy_and_keeps_what_needs_a_restart(tmp_path: Path) -> None:
    """SIGUSR1: thresholds and policy apply; the cap the spamd client and the spamd+bayes
    budget were built with, the spamd address and the Bayes database stay as they run (a
    half-applied cap would let a hung spamd use the whole of a shorter one), and the warning
    names each key, compared with what runs rather than with the last file read."""
    running = load(write(tmp_path, "[milter]\nscan_timeout = 10\n[spamd]\nhost = \"a.example\"\n"))
    new = load(write(tmp_path, "[milter]\nscan_timeout = 2\n[policy]\ntag_at = 3\n"
                     "[spamd]\nhost = \"b.example\"\n[bayes]\nmin_trained = 50\n"))
    applied, changed = reloaded(running, new)
    assert applied.policy.spamd.tag == 3.0 and applied.milter.scan_timeout == 10.0
    assert applied.spamd.host == "a.example" and applied.bayes.min_trained == 200
    assert changed == ["[milter] scan_timeout", "[spamd] host", "[bayes] min_trained"]
    again, changed = reloaded(applied, new)  # the same file once more: the same warning
    assert again == applied and changed == ["[milter] scan_timeout", "[spamd] host",
                                            "[bayes] min_trained"]
    assert reloaded(applied, running)[1] == []  # back to what runs: nothing to warn about
    louder = load(write(tmp_path, "[log]\nlevel = \"debug\"\n[milter]\nname = \"other\"\n"))
    kept, changed = reloaded(applied, louder)
    assert changed == ["[milter] name", "[spamd] host", "[log] level"]
    assert kept.log_level == "info" and kept.milter.name == applied.milter.name


def test_a_unix_socket_path_the_kernel_cannot_bind_is_a_config_error() -> None:
    """libmilter only said "cannot opensocket" (exit 1), after check-config said all well."""
    with pytest.raises(ConfigError, match="may be at most 107 bytes long"):
        with_overrides(load(None), socket="unix:/" + "a" * 107)
    assert with_overrides(load(None), socket="unix:/" + "a" * 106).milter.socket.endswith("a")


@pytest.mark.parametrize("port", ["0", "65536"])
def test_a_port_no_tcp_socket_can_have_is_a_config_error(port: str) -> None:
    """inet:0 would have libmilter listen on a port the kernel picks, that no smtpd_milters
    line names: mail would meet milter_default_action, with the milter running."""
    with pytest.raises(ConfigError, match="port must be 1-65535"):
        with_overrides(load(None), socket=f"inet:{port}@127.0.0.1")
    assert with_overrides(load(None), socket="inet:65535@127.0.0.1").milter.socket


def test_an_inet6_address_may_be_written_in_brackets() -> None:
    """As Postfix writes it (inet:[::1]:8893): the brackets are not part of the address."""
    cfg = with_overrides(load(None), socket="inet6:8893@[::1]")
    assert parse_socket_spec(cfg.milter.socket) == parse_socket_spec("inet6:8893@::1")


def test_an_inet_address_may_be_written_in_brackets_as_libmilter_takes_it(
        tmp_path: Path) -> None:
    """libmilter takes `inet:PORT@[10.0.0.1]` (a numeric address, looked up in no DNS), and
    `run` started with it; check-config warned that '[127.0.0.1]' did not resolve and the
    milter "would not start". A name in brackets libmilter refuses ("Invalid numeric domain
    spec", exit 1): a config error naming file, line and key."""
    from spambridge.checkconfig import check_local

    p = tmp_path / "c.toml"
    p.write_text('[milter]\nengine = "spamd"\nsocket = "inet:8893@[127.0.0.1]"\n')
    cfg = load(p)
    assert parse_socket_spec(cfg.milter.socket) == parse_socket_spec("inet:8893@127.0.0.1")
    assert [w for w in check_local(cfg).warnings if w.startswith("[milter] socket")] == []
    p.write_text('[milter]\nengine = "spamd"\nsocket = "inet:8893@[localhost]"\n')
    with pytest.raises(ConfigError, match=re.escape(
            f"{p}:3: [milter] socket: 'inet:8893@[localhost]': an address in brackets must "
            "be an IPv4 address")):
        load(p)
    # its closing bracket left out: libmilter's "Invalid numeric domain spec" too, never the
    # address less its last character
    with pytest.raises(ValueError, match="an address in brackets must be an IPv4 address"):
        parse_socket_spec("inet:8893@[127.0.0.12")


@pytest.mark.parametrize("host", ["fe80::1%eth0", "[fe80::1%eth0]", "::1%lo"])
def test_an_inet6_address_with_an_interface_is_a_config_error(tmp_path: Path,
                                                              host: str) -> None:
    """libmilter reads no interface (zone) after an address: it looks `fe80::1%eth0` up as a
    name and fails, so `run` stopped with exit 1 and "cannot open milter socket ...: cannot
    opensocket", saying neither why nor where, while check-config (whose lookup takes the
    zone) said all well. A config error naming file, line and key."""
    p = tmp_path / "c.toml"
    p.write_text(f'[milter]\nengine = "spamd"\nsocket = "inet6:8893@{host}"\n')
    with pytest.raises(ConfigError) as exc:
        load(p)
    assert str(exc.value) == (
        f"{p}:3: [milter] socket: 'inet6:8893@{host}': libmilter takes no interface "
        f"(%{host.split('%')[1].rstrip(']')}) after an address, so it cannot listen on a "
        "link-local one: give another address of this host")


@pytest.mark.parametrize("host", ["::1", "127.0.0.1:8893", "[::1]:8893"])
def test_an_inet_host_with_a_colon_is_a_config_error(tmp_path: Path, host: str) -> None:
    """An IPv6 address under inet (inet6's), or a port after the host as Postfix writes it:
    no AF_INET lookup finds it, and `run` stopped with exit 1, libmilter's "Unknown host
    name" and no file, line or key (systemd starting it again, five times)."""
    p, error = config_error(tmp_path, f'[milter]\nsocket = "inet:8893@{host}"\n')
    assert (f"{p}:2: [milter] socket: 'inet:8893@{host}': {host!r} is not an IPv4 address or "
            "host name (an IPv6 address is inet6:PORT@ADDR; the port goes before the @)"
            in error), error


@pytest.mark.parametrize("path", ["/run/spambridge/", "/run/spambridge/.",
                                  "/run/spambridge/.."])
def test_a_unix_socket_path_that_names_a_directory_is_a_config_error(tmp_path: Path,
                                                                     path: str) -> None:
    """`unix:/run/spambridge/` (the directory meant, the file name left out): check-config
    said all well, and `run` made the directory and then refused to start, "exists and is
    not a socket"."""
    p, error = config_error(tmp_path, f'[milter]\nsocket = "unix:{path}"\n')
    assert (f"{p}:2: [milter] socket: 'unix:{path}': the path must end in the socket's file "
            "name, not name a directory" in error), error


def test_an_inet6_socket_without_an_address_listens_on_the_ipv6_loopback() -> None:
    """`inet6:PORT`, as `inet:PORT` is 127.0.0.1: not refused as "inet6 needs an IPv6
    address" for an address the admin never wrote."""
    cfg = with_overrides(load(None), socket="inet6:8893")
    spec = parse_socket_spec(cfg.milter.socket)
    assert (spec.host, spec.libmilter, spec.postfix) == ("::1", "inet6:8893@::1", "inet:[::1]:8893")


def test_a_start_error_names_the_flag_or_the_files_line(tmp_path: Path) -> None:
    """`run --db PATH` with a directory the milter's user cannot write blamed the config
    file's [bayes] db line, which the flag had overridden."""
    from spambridge.config import key_at

    path = write(tmp_path, "[milter]\nengine = \"bayes\"\n\n[bayes]\ndb = \"/srv/a.sqlite\"\n")
    cfg = load(path)
    assert key_at(cfg, "bayes", "db") == f"{path}:5: [bayes] db"
    assert key_at(with_overrides(cfg, db="/srv/b.sqlite"), "bayes", "db") == (
        "command line: [bayes] db")


def test_a_start_warning_about_the_socket_names_the_flag(tmp_path: Path) -> None:
    """`run --socket unix:/x/s.sock` with a directory [milter] user cannot write: the warning
    named the file's [milter] socket line, whose path the flag had overridden."""
    from spambridge.config import key_at

    path = write(tmp_path, "[milter]\nsocket = \"unix:/srv/a/s.sock\"\n")
    cfg = load(path)
    assert key_at(cfg, "milter", "socket") == f"{path}:2: [milter] socket"
    flagged = with_overrides(cfg, socket="unix:/srv/b/s.sock", spamd="127.0.0.1:784")
    assert key_at(flagged, "milter", "socket") == "command line: [milter] socket"
    assert key_at(flagged, "spamd", "port") == "command line: [spamd] port"


def test_bytes_that_are_not_utf8_name_their_line(tmp_path: Path) -> None:
    """A Latin-1 subject_tag: the error said the byte offset only, not file:line."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[milter]\nengine = "bayes"\n\n[policy]\nsubject_tag = "[SP\xc4M]"\n')
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:5: not UTF-8 text"):
        load(path)


@pytest.mark.parametrize(("host", "why"), [
    ("", "must not be empty"),
    ("[::1]", "without brackets"),
    ("127.0.0.1:783", "the port is"),
    ("spamd.example 783", "not a host name or IP address"),
    ("spamd..example", "not a host name or IP address"),
])
def test_a_spamd_host_no_connection_could_use_is_an_error(tmp_path: Path, host: str,
                                                          why: str) -> None:
    """Before, each was "all well" at start and in check-config, and every message then went
    unchecked=unavailable (`Name or service not known`)."""
    with pytest.raises(ConfigError, match=rf"spambridge.toml:2: \[spamd\] host: .*{why}"):
        load(write(tmp_path, f'[spamd]\nhost = "{host}"\n'))


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "fe80::1%eth0", "spamd.example",
                                  "spamd_1.internal", "localhost", "SPAMD.Example.",
                                  "spamd.bücher.example"])
def test_spamd_hosts_that_connect(tmp_path: Path, host: str) -> None:
    """An internationalized name was connected to before the host was checked (Python's
    getaddrinfo takes it in its IDNA form): it must not stop the milter from starting."""
    assert load(write(tmp_path, f'[spamd]\nhost = "{host}"\n')).spamd.host == host


# the bounds as the error states them: exact, as one would type them into the file
BOUNDS = {"max_scan_size": "1024 and 268435456", "spool_memory": "0 and 67108864",
          "port": "1 and 65535", "connect_timeout": "0.05 and 60", "share": "0.1 and 0.95",
          "min_trained": "0 and 1000000000", "max_bytes": "4096 and 67108864",
          "max_tokens": "100 and 30000", "ham_cutoff": "0 and 1", "spam_cutoff": "0 and 1",
          "reject_cutoff": "0 and 1", "tag_at": "-1000 and 10000",
          "reject_at": "-1000 and 10000"}


@pytest.mark.parametrize(("section", "key", "lowest", "highest", "below", "above"), [
    ("milter", "max_scan_size", 1024, 256 << 20, 1023, (256 << 20) + 1),
    ("milter", "spool_memory", 0, 64 << 20, -1, (64 << 20) + 1),
    ("spamd", "port", 1, 65535, 0, 65536),
    ("spamd", "connect_timeout", 0.05, 60, 0.04, 60.5),
    ("spamd", "share", 0.1, 0.95, 0.05, 0.96),
    ("bayes", "min_trained", 0, 10**9, -1, 10**9 + 1),
    ("bayes", "max_bytes", 4096, 64 << 20, 4095, (64 << 20) + 1),
    ("bayes", "max_tokens", 100, 30_000, 99, 30_001),
    ("bayes", "ham_cutoff", 0.0, 0.2, -0.01, 1.01),
    ("bayes", "spam_cutoff", 0.2, 0.99, -0.01, 1.01),
    ("bayes", "reject_cutoff", 0.9, 1.0, -0.01, 1.01),
    ("policy", "tag_at", -1000, 15, -1000.5, 10000.5),
    ("policy", "reject_at", 5, 10000, -1000.5, 10000.5),
])
def test_each_range_is_the_documented_one(tmp_path: Path, section: str, key: str,
                                          lowest: float, highest: float, below: float,
                                          above: float) -> None:
    """The ranges the example file and docs give are what the loader takes: a bound moved
    would refuse a config that worked (exit 78 at the next restart) or let through one that
    cannot work (a share of 1.0 leaves Bayes no time; 30,001+ tokens per message). The error
    states the bounds exactly: 64 MiB was "6.71089e+07", and 67108900 is refused."""
    for ok in (lowest, highest):
        cfg = load(write(tmp_path, f"[{section}]\n{key} = {ok!r}\n"))
        assert cfg is not None
    for bad in (below, above):
        p = write(tmp_path, f"[{section}]\n{key} = {bad!r}\n")
        with pytest.raises(ConfigError) as e:
            load(p)
        assert str(e.value).startswith(f"{p}:2: [{section}] {key}: must be between "
                                       f"{BOUNDS[key]}, not "), e.value
        assert str(e.value).endswith(f", not {float(bad) if isinstance(ok, float) else bad}")


ROOT = Path(__file__).resolve().parents[2]
SECTION = {"max_scan_size": "milter", "spool_memory": "milter", "scan_timeout": "milter",
           "port": "spamd", "connect_timeout": "spamd", "share": "spamd",
           "min_trained": "bayes", "max_bytes": "bayes", "max_tokens": "bayes",
           "ham_cutoff": "bayes", "spam_cutoff": "bayes", "reject_cutoff": "bayes",
           "tag_at": "policy", "reject_at": "policy"}


def example_text(section: str, key: str) -> str:
    """What contrib/spambridge.toml.example says of a key: the comment above it, or above the
    key it is listed under (`#port` under `#host`)."""
    lines = (ROOT / "contrib" / "spambridge.toml.example").read_text().splitlines()
    start = lines.index(f"[{section}]")
    i = next(n for n in range(start, len(lines)) if lines[n].startswith(f"#{key} = "))
    while lines[i - 1].startswith("#") and re.match(r"#[a-z_]+ = ", lines[i - 1]):
        i -= 1
    text = []
    while lines[i - 1].startswith("# "):
        i -= 1
        text.insert(0, lines[i][2:])
    return " ".join(text)


def man_text(section: str, key: str) -> str:
    """What spambridge.toml(5) says of a key: the paragraph after it, or after the key it is
    listed under."""
    man = (ROOT / "packaging" / "man" / "spambridge.toml.5").read_text()
    body = man.split(f".SS [{section}]\n", 1)[1].split("\n.S", 1)[0]
    entries = [e.split("\n", 1) for e in body.split(".TP\n") if e.startswith(".B ")]
    text = ""
    for head, *rest in entries:
        text = " ".join(rest).strip() or text
        if head.startswith(f'.B "{key} = '):
            return text.replace("\\-", "-").replace("\\(dq", '"')
    raise AssertionError(f"[{section}] {key} is not in spambridge.toml(5)")


@pytest.mark.parametrize("key", [*BOUNDS, "scan_timeout"])
def test_the_docs_state_each_range_as_the_loader_takes_it(key: str) -> None:
    """An admin reads the accepted range in the example file and in spambridge.toml(5); it is
    the one the loader enforces (BOUNDS: as its error states it, checked above), so a value
    the docs allow is never refused at the next restart. max_scan_size, spool_memory, port,
    min_trained, max_bytes, max_tokens, the cutoffs and tag_at/reject_at were not given."""
    lo, hi = {**BOUNDS, "scan_timeout": "0.1 and 120"}[key].split(" and ")
    documented = re.compile(rf"(?<![\d.]){re.escape(lo)}(?:-| to ){re.escape(hi)}(?![\d.])")
    for where, text in (("spambridge.toml.example", example_text(SECTION[key], key)),
                        ("spambridge.toml(5)", man_text(SECTION[key], key))):
        assert documented.search(text), f"{where}: [{SECTION[key]}] {key}: {text!r}"


@pytest.mark.parametrize(("text", "line", "message"), [
    # true is an int to Python: port 1 and a database that needs 1 message
    ("[spamd]\nport = true\n", 2, "[spamd] port: must be an integer, not true or false"),
    ("[bayes]\nmin_trained = false\n", 2,
     "[bayes] min_trained: must be an integer, not true or false"),
    # both written: the upper key is blamed, as reject_at is in [policy]
    ("[bayes]\nham_cutoff = 0.5\nspam_cutoff = 0.4\n", 3,
     "[bayes] spam_cutoff: ham_cutoff (0.5) must not be above spam_cutoff (0.4)"),
    # a quoted table name is the same table
    ('["bayes"]\nmax_tokens = 5\n', 2, "[bayes] max_tokens: must be between 100 and 30000"),
    ("[spamd]\nsocket = \"run/spamd.sock\"\n", 2, "[spamd] socket: must be an absolute path"),
    ('[policy]\nsubject_tag = "[SPÄM]"\n', 2, "[policy] subject_tag: must be printable ASCII"),
    (f'[policy]\nsubject_tag = "{"[SPAM] " * 15}"\n', 2,
     "[policy] subject_tag: must be at most 100 characters, not 104"),
    ('[policy]\nreject_reply = "550 5.7.1 Spam erkannt: Nachricht abgelehnt – bitte nicht"\n',
     2, "[policy] reject_reply: text must be printable ASCII"),
    ('[policy]\nreject_reply = "550 4.7.1 Go away"\n', 2,
     "[policy] reject_reply: must be a 5xx reply with a 5.x.x status"),
    ('[policy]\ntempfail_reply = "451 5.7.1 Later"\n', 2,
     "[policy] tempfail_reply: must be a 4xx reply with a 4.x.x status"),
    # loaded, and then libmilter refused it on every message: the client got the MTA's text
    ('[policy]\nreject_reply = "550 5.7.1 ' + 'x' * 981 + '"\n', 2,
     "[policy] reject_reply: text is 981 characters long (libmilter takes at most 980)"),
    ('[policy]\n\ntempfail_reply = "451 4.7.1 ' + '%' * 491 + '"\n', 3,
     "[policy] tempfail_reply: text is 982 characters long (each % counting twice, as "
     "libmilter gets it doubled; libmilter takes at most 980)"),
    ("[milter]\ntrusted_networks = [10]\n", 2,
     "[milter] trusted_networks: must be a list of strings"),
    # loaded, and then every message was unchecked=error: the spamd client sends it as ASCII
    ('[spamd]\nper_recipient_user = "domain"\n', 2,
     "[spamd] per_recipient_user: must be true, false, \"address\" or \"local-part\"; "
     "got 'domain'"),
    ('[spamd]\nuser = "jörg"\n', 2,
     "[spamd] user: must be printable ASCII, as spamd's User header is; 'ö' is not"),
    # true is an int, and so a float, to Python: a 1-second cap
    ("[milter]\nscan_timeout = true\n", 2,
     "[milter] scan_timeout: must be a number, not true or false"),
    # setuid, setgid or sticky bits on a socket: not a mode the milter gives it
    ('[milter]\nsocket_mode = "4660"\n', 2,
     '[milter] socket_mode: must be an octal mode such as "0660"'),
    # blanks are no path: SQLite would create a database named "  " in the working directory
    ('[bayes]\ndb = "  "\n', 2, "[bayes] db: an empty path"),
    # DEL is not printable: in a Subject or an SMTP reply it is a control character
    ('[policy]\nsubject_tag = "[SPAM]\\u007f"\n', 2,
     "[policy] subject_tag: must be printable ASCII; '\\x7f' is not"),
])
def test_more_errors_name_file_line_and_key(tmp_path: Path, text: str, line: int,
                                            message: str) -> None:
    """Each would otherwise load as something the admin did not write, or name the wrong line."""
    p, error = config_error(tmp_path, text)
    assert error.startswith(f"{p}:{line}: {message}"), error


@pytest.mark.parametrize(("text", "line", "message"), [
    ('# spambridge\n\nspamd = { host = "127.0.0.1", port = 0 }\n', 3,
     "[spamd] port: must be between 1 and 65535, not 0"),
    ('# thresholds\npolicy = {tag_at=20, reject_at=10}\n[milter]\nengine = "spamd"\n', 2,
     "[policy] reject_at: reject_at (10) must not be below tag_at (20)"),
    ('log = { level = "loud" }\n[milter]\nengine = "bayes"\n', 1,
     "[log] level: must be one of debug, info, warning, error; got 'loud'"),
])
def test_a_key_in_an_inline_table_names_the_table_s_line(tmp_path: Path, text: str, line: int,
                                                         message: str) -> None:
    """`spamd = { port = 0 }`: no line starts with the key, and the error named the file
    alone. The line that writes the table is named now; a key not written at all still names
    no line (its section's header does not hold it)."""
    from spambridge.config import key_at

    p, error = config_error(tmp_path, text)
    assert error == f"{p}:{line}: {message}"
    cfg = load(write(tmp_path, 'spamd = { port = 7830 }\n\n[milter]\nengine = "bayes"\n'))
    assert key_at(cfg, "spamd", "port") == f"{p}:1: [spamd] port"
    assert key_at(cfg, "milter", "spool_dir") == f"{p}: [milter] spool_dir"


@pytest.mark.parametrize(("value", "loaded"), [
    ("false", ""), ("true", "address"), ('"address"', "address"), ('"local-part"', "local-part")])
def test_per_recipient_user_takes_the_address_or_its_local_part(tmp_path: Path, value: str,
                                                                loaded: str) -> None:
    """true (the whole address) as before, or "local-part": spamass-milter -u's choice."""
    cfg = load(write(tmp_path, f"[spamd]\nper_recipient_user = {value}\n"))
    assert cfg.spamd.per_recipient_user == loaded


def test_a_section_that_is_not_a_table_names_its_line(tmp_path: Path) -> None:
    """`milter = 5` at the top (a table header's brackets forgotten): a config error naming
    its line, not a traceback."""
    p = write(tmp_path, "\nmilter = 5\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(p))}:2: \[milter\] must be a table$"):
        load(p)


@pytest.mark.parametrize(("text", "line", "message"), [
    ('engine = "spamd"\n[milter]\n', 1,
     "engine: a key outside any section; it belongs under [milter]"),
    ('# spambridge\nsocket = "unix:/run/s.sock"\n', 2,
     "socket: a key outside any section; it belongs under [milter] or [spamd]"),
    ('enigne = "spamd"\n', 1, "enigne: a key outside any section; no section has it "
     "(the sections are bayes, log, metrics, milter, policy, spamd)"),
])
def test_a_key_above_every_section_is_called_a_key(tmp_path: Path, text: str, line: int,
                                                    message: str) -> None:
    """A key before the first [section] header (or with the header forgotten): it was called
    an unknown section [engine], which sent the admin looking for a header."""
    p, error = config_error(tmp_path, text)
    assert error == f"{p}:{line}: {message}"


@pytest.mark.parametrize(("text", "line"), [
    ('[milter]\nengine = "bayes"\n\n[milter.extra]\nx = 1\n', 4),
    ('[milter]\nengine = "bayes"\nextra.x = 1\n', 3),
    ('[milter]\n[[ milter . "extra" ]]\nx = 1\n', 2),
    ("milter.extra.x = 1\n", 1),
])
def test_a_sub_table_names_the_line_it_is_written_on(tmp_path: Path, text: str,
                                                      line: int) -> None:
    """`[milter.extra]` or `extra.x = 1` under [milter]: the error named the file alone."""
    p, error = config_error(tmp_path, text)
    assert error == f"{p}:{line}: [milter] extra: unknown key"


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    """Which file could not be read: -c, or /etc/spambridge/spambridge.toml."""
    p = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(p))}: cannot read config: "):
        load(p)


def test_a_config_that_is_not_a_regular_file_is_refused_at_once(tmp_path: Path) -> None:
    """A FIFO with no writer hung the start (and a SIGUSR1 reload) on its open; /dev/zero
    grew memory until killed; a directory said "Is a directory". Each is an error naming it,
    within a second (the FIFO's check runs in a thread, so a regression fails, not hangs)."""
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    for p in (fifo, Path("/dev/zero"), tmp_path):
        errors: list[BaseException] = []

        def read(p: Path = p, errors: list[BaseException] = errors) -> None:
            try:
                load(p)
            except ConfigError as failed:
                errors.append(failed)

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(5)
        assert not t.is_alive(), f"{p}: load() still waiting"
        assert [str(e) for e in errors] == [f"{p}: cannot read config: not a regular file"]
    (tmp_path / "d").mkdir()
    big = write(tmp_path / "d", "# padding\n" * 200_000)
    with pytest.raises(ConfigError, match=r": cannot read config: larger than 1 MiB$"):
        load(big)


def test_equal_bounds_are_allowed(tmp_path: Path) -> None:
    """"must not be above/below": tag and reject from the same score (no tag-only band),
    and a Bayes band of zero width, are valid, in the file and as flags."""
    cfg = load(write(tmp_path, "[policy]\ntag_at = 8\nreject_at = 8\n"
                     "[bayes]\nham_cutoff = 0.9\nspam_cutoff = 0.9\nreject_cutoff = 0.9\n"))
    assert cfg.policy.spamd.tag == cfg.policy.spamd.reject == 8.0
    assert cfg.policy.bayes.ham == cfg.policy.bayes.reject == 0.9
    flagged = with_overrides(load(None), tag_at=12, reject_at=12)
    assert flagged.policy.spamd.tag == flagged.policy.spamd.reject == 12.0


@pytest.mark.parametrize("address", ["127.0.0.1:65536", "spamd.example:0", "[::1]:70000"])
def test_a_spamd_flag_port_out_of_range_is_an_error(address: str) -> None:
    """`--spamd host:65536` would start, and every connection fail (unchecked=unavailable)."""
    with pytest.raises(ConfigError, match=r"^command line: --spamd: port must be 1-65535$"):
        with_overrides(load(None), spamd=address)


def test_a_reload_keeps_the_socket_mode_and_metrics_and_says_so(tmp_path: Path) -> None:
    """The socket exists and the metrics listener is bound: a changed socket_mode or listen
    address takes a restart, and the reload's warning must say so rather than nothing."""
    running = load(write(tmp_path, "[milter]\nsocket_mode = \"0660\"\n"))
    new = load(write(tmp_path, "[milter]\nsocket_mode = \"0666\"\n"
                     "[metrics]\nlisten = \"127.0.0.1:9386\"\n"))
    applied, changed = reloaded(running, new)
    assert changed == ["[milter] socket_mode", "[metrics] listen"]
    assert applied.milter.socket_mode == 0o660 and applied.metrics.listen == ""


def test_the_line_named_is_the_keys_in_its_own_section(tmp_path: Path) -> None:
    """[milter] and [spamd] both have a socket: the error about [spamd]'s names its line,
    not [milter]'s."""
    p = write(tmp_path, '[milter]\nsocket = "unix:/run/s.sock"\n\n[spamd]\nsocket = "spamd.sock"\n')
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(p))}:5: \[spamd\] socket: "):
        load(p)


def test_a_scan_timeout_flag_of_zero_is_refused() -> None:
    """`--scan-timeout 0` is a value, not an absent flag: refused as the key would be, not
    silently replaced by the file's."""
    with pytest.raises(ConfigError, match=r"^command line: --scan-timeout: must be between "
                       r"0\.1 and 120, not 0\.0$"):
        with_overrides(load(None), scan_timeout=0)


def test_an_unknown_log_level_is_an_error(tmp_path: Path) -> None:
    """`level = "verbose"` would otherwise pass the loader and crash setting up logging."""
    p = write(tmp_path, '[log]\nlevel = "verbose"\n')
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(p))}:2: \[log\] level: must be one "
                       r"of debug, info, warning, error; got 'verbose'$"):
        load(p)


def test_a_line_separator_in_a_comment_does_not_shift_the_line_named(tmp_path: Path) -> None:
    """A comment holding U+2028 (a line break pasted from a word processor or a web page) or
    NEL: TOML and the admin's editor count one line, the error named every later key's line
    one too low: spambridge.toml:6 for a key on line 4."""
    from spambridge.config import key_at

    text = ("# Schwelle für Spam\u2028(siehe Wiki)\n[policy]\n# bitte nicht \x85 ändern\n"
            'reject_at = "viel"\n')
    p, error = config_error(tmp_path, text)
    assert error.startswith(f"{p}:4: [policy] reject_at: must be a number"), error
    p.write_text(text.replace('"viel"', "20"), encoding="utf-8")
    assert key_at(load(p), "policy", "reject_at") == f"{p}:4: [policy] reject_at"


@pytest.mark.parametrize(("key", "value", "named"), [
    ("reject_reply", "550 5.7.1 Spam erkannt \u2013 Nachricht abgelehnt", "'\u2013'"),  # en dash
    ("unchecked_reject_reply", "550 5.7.1 Nicht gepr\u00fcft", "'\u00fc'"),
    ("tempfail_reply", "451 4.7.1 Bitte\u00a0sp\u00e4ter", "'\\xa0'"),  # a no-break space
    ("subject_tag", "\u201e[SPAM]\u201c", "'\u201e'"),  # German quotes
])
def test_a_non_ascii_reply_or_tag_names_the_character(tmp_path: Path, key: str, value: str,
                                                      named: str) -> None:
    """An SMTP reply must be ASCII (RFC 5321) and is refused at load, but the error said only
    "must be printable ASCII": an en dash, a typographic quote or a no-break space looks like
    ASCII in the editor, and the admin had to hunt for it. It is named now (a no-break space
    as '\\xa0')."""
    p, error = config_error(tmp_path, f'[policy]\n{key} = "{value}"\n')
    assert error.startswith(f"{p}:2: [policy] {key}: "), error
    assert "must be printable ASCII" in error and error.endswith(f"; {named} is not"), error


@pytest.mark.parametrize(("client", "trusted"), [
    ("10.1.2.3", True), ("::ffff:10.1.2.3", True), ("192.0.2.7", True),
    ("::ffff:192.0.2.7", True), ("::1", True), ("fe80::1%eth0", True), ("2001:db8::9", True),
    ("192.0.2.8", False), ("11.0.0.1", False), ("2001:db9::1", False),
])
def test_trusted_networks_in_ipv6_and_ipv4_mapped_notation(tmp_path: Path, client: str,
                                                           trusted: bool) -> None:
    """An IPv4-mapped entry (as Sendmail or a dual-stack log shows a client) stood for no
    client: Postfix sends IPv4 clients as IPv4, and a mapped client address is matched as the
    IPv4 it maps. It now stands for that IPv4 network."""
    from types import SimpleNamespace

    from spambridge.milter.session import Session

    cfg = load(write(tmp_path, """
[milter]
trusted_networks = ["::ffff:10.0.0.0/104", "::ffff:192.0.2.7", "::1", "fe80::/10",
                    "2001:db8::/32"]
"""))
    s = Session(SimpleNamespace(config=cfg))  # type: ignore[arg-type]
    s.connect("client.example", client, "mx.example.org", "MTA-v4", 40000)
    assert s.trusted is trusted


# --- [spamd] servers: a pool, as spamc -d host1,host2 ------------------------------------------


def test_spamd_servers_take_the_port_of_port(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, '[spamd]\nport = 7830\nservers = ["10.0.0.5", "10.0.0.6:7831", '
                               '"[2001:db8::5]:783", "spamd.example"]\n'))
    assert cfg.spamd.pool == (("10.0.0.5", 7830), ("10.0.0.6", 7831), ("2001:db8::5", 783),
                              ("spamd.example", 7830))
    assert load(None).spamd.pool == (("127.0.0.1", 783),)  # empty: host/port as before
    assert load(write(tmp_path, "[spamd]\nservers = []\n")).spamd.pool == (("127.0.0.1", 783),)


@pytest.mark.parametrize(("text", "line", "message"), [
    ('[spamd]\nsocket = "/run/spamd.sock"\nservers = ["10.0.0.5"]\n', 3,
     "[spamd] servers: not with [spamd] socket"),
    ('[spamd]\nservers = ["10.0.0.5"]\nhost = "10.0.0.6"\n', 2,
     "[spamd] servers: not with [spamd] host = '10.0.0.6': list that host among the servers"),
    ('[spamd]\nservers = ["10.0.0.5", "10.0.0.5:783"]\n', 2,
     "[spamd] servers: 10.0.0.5:783 is listed twice"),
    # one server however it is spelled: an IPv6 address's zeros, a name's capitals
    ('[spamd]\nservers = ["[::1]:783", "[0:0::1]"]\n', 2,
     "[spamd] servers: [0:0::1]:783 is [::1]:783 listed twice"),
    ('[spamd]\nservers = ["spamd.example", "SPAMD.example:783"]\n', 2,
     "[spamd] servers: SPAMD.example:783 is spamd.example:783 listed twice"),
    ('[spamd]\nservers = ["2001:db8::5"]\n', 2,
     "[spamd] servers: '2001:db8::5' is not HOST, HOST:PORT or [IPv6]:PORT"),
    ('[spamd]\nservers = ["10.0.0.5:0"]\n', 2, "[spamd] servers: '10.0.0.5:0': port must be"),
    ('[spamd]\nservers = ["/run/spamd.sock"]\n', 2,
     "[spamd] servers: '/run/spamd.sock': a unix socket is [spamd] socket"),
    ('[spamd]\nservers = ["spamd.example", 783]\n', 2,
     "[spamd] servers: must be a list of strings"),
    ('[spamd]\nservers = "10.0.0.5,10.0.0.6"\n', 2,
     "[spamd] servers: must be a list, not a string"),
])
def test_spamd_servers_errors_name_file_line_and_key(tmp_path: Path, text: str, line: int,
                                                     message: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load(p)
    assert str(e.value).startswith(f"{p}:{line}: {message}"), str(e.value)


def test_the_spamd_flag_is_one_server_over_the_list(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, '[spamd]\nservers = ["10.0.0.5", "10.0.0.6"]\n'))
    flagged = with_overrides(cfg, spamd="10.0.0.9:7830")
    assert flagged.spamd.pool == (("10.0.0.9", 7830),)
    assert with_overrides(cfg, spamd="/run/spamd.sock").spamd.socket == "/run/spamd.sock"
    assert with_overrides(cfg, spamd="/run/spamd.sock").spamd.servers == ()


def test_a_reload_keeps_the_servers_for_a_restart(tmp_path: Path) -> None:
    old = load(write(tmp_path, '[spamd]\nservers = ["10.0.0.5", "10.0.0.6"]\n'))
    new = load(write(tmp_path, '[spamd]\nservers = ["10.0.0.6"]\n'))
    kept, changed = reloaded(old, new)
    assert kept.spamd.servers == old.spamd.servers and changed == ["[spamd] servers"]


def test_a_reply_text_as_long_as_libmilter_takes_loads() -> None:
    """980 characters of text, a % counting twice: libmilter's own limit, not one below it."""
    for text in ("x" * 980, "%" * 490):
        cfg = from_mapping({"policy": {"reject_reply": f"550 5.7.1 {text}"}})
        assert cfg.policy.reject_reply.text == text
