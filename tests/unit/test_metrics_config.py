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
