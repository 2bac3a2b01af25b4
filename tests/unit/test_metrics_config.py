"""[metrics] listen: IP:PORT or [IPv6]:PORT, empty = off; mistakes name file:line and key."""

from __future__ import annotations

import pytest

from spambridge.config import ConfigError, MetricsConfig, from_mapping, parse_listen


@pytest.mark.parametrize(("text", "host", "port"), [
    ("127.0.0.1:9386", "127.0.0.1", 9386),
    ("[::1]:9386", "::1", 9386),
    (" 0.0.0.0:1 ", "0.0.0.0", 1),
])
def test_listen_parses(text: str, host: str, port: int) -> None:
    m = parse_listen(text)
    assert (m.host, m.port) == (host, port)


def test_empty_is_off() -> None:
    assert parse_listen("") == MetricsConfig()
    assert from_mapping({}).metrics.host == ""


@pytest.mark.parametrize(("text", "why"), [
    ("localhost:9386", "must be IP:PORT"),
    ("127.0.0.1", "must be IP:PORT"),
    ("127.0.0.1:0", "port must be 1-65535"),
    ("127.0.0.1:70000", "port must be 1-65535"),
    ("999.1.1.1:9386", "is not an IP address"),
    ("[fe80::zz]:1", "must be IP:PORT"),
])
def test_bad_listen_names_file_line_and_key(text: str, why: str) -> None:
    toml = f'[metrics]\n\nlisten = "{text}"\n'
    with pytest.raises(ConfigError) as exc:
        from_mapping({"metrics": {"listen": text}}, "/etc/spambridge/x.toml", toml)
    assert str(exc.value).startswith("/etc/spambridge/x.toml:3: [metrics] listen: ")
    assert why in str(exc.value)


def test_unknown_metrics_key() -> None:
    with pytest.raises(ConfigError, match=r"\[metrics\] port: unknown key"):
        from_mapping({"metrics": {"port": 9386}})


@pytest.mark.parametrize(("socket", "listen"), [
    ("inet:9386@127.0.0.1", "127.0.0.1:9386"),
    ("inet:9386", "127.0.0.1:9386"),  # inet:PORT is 127.0.0.1
    ("inet:9386@localhost", "127.0.0.1:9386"),
    ("inet:9386@LocalHost", "127.0.0.1:9386"),  # a name's case is no part of it
    ("inet:9386@0.0.0.0", "127.0.0.1:9386"),  # every address holds 127.0.0.1's port too
    ("inet:9386@127.0.0.1", "0.0.0.0:9386"),
    ("inet6:9386@::1", "[::1]:9386"),
    ("inet6:9386@::", "[::1]:9386"),
])
def test_metrics_on_the_milters_own_address_is_a_config_error(socket: str,
                                                               listen: str) -> None:
    """The milter could never listen where its metrics endpoint (opened first) already
    does: check-config said all well, and `run` stopped with exit 1 and "cannot open milter
    socket ...: Address already in use", sending the admin to look for another program."""
    toml = f'[milter]\nsocket = "{socket}"\n[metrics]\nlisten = "{listen}"\n'
    with pytest.raises(ConfigError) as exc:
        from_mapping({"milter": {"socket": socket}, "metrics": {"listen": listen}},
                     "/etc/spambridge/x.toml", toml)
    assert str(exc.value) == (f"/etc/spambridge/x.toml:4: [metrics] listen: {listen} is where "
                              f"the milter listens too ([milter] socket = {socket!r}): give "
                              "the metrics another port")


@pytest.mark.parametrize(("socket", "listen"), [
    ("inet:9386@127.0.0.1", "127.0.0.1:9387"),
    ("inet:9386@127.0.0.1", "[::1]:9386"),  # another family, another socket
    ("inet6:9386@::1", "127.0.0.1:9386"),
    ("inet:9386@spamd.example", "127.0.0.1:9386"),  # a name: its address is not known here
    ("unix:/run/spambridge/spambridge.sock", "127.0.0.1:9386"),
])
def test_metrics_beside_the_milter_socket_loads(socket: str, listen: str) -> None:
    cfg = from_mapping({"milter": {"socket": socket}, "metrics": {"listen": listen}})
    assert cfg.metrics.listen == listen


def test_a_socket_flag_onto_the_metrics_address_names_the_flag() -> None:
    from spambridge.config import with_overrides

    cfg = from_mapping({"metrics": {"listen": "127.0.0.1:9386"}})
    with pytest.raises(ConfigError) as exc:
        with_overrides(cfg, socket="inet:9386@127.0.0.1")
    assert str(exc.value) == ("command line: --socket: [metrics] listen = '127.0.0.1:9386' is "
                              "there: the milter cannot listen where its metrics do")
