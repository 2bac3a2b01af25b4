"""How aiospamc's failures map onto the policy's failure classes, and what an admin reads about
them (a fake spamd on 127.0.0.1 for the hang a real one can't be made to do)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiospamc.exceptions import AIOSpamcConnectionFailed, BadResponse, ClientTimeoutException
from aiospamc.responses import (
    ServerTimeoutException,
    TemporaryFailureException,
    UnavailableException,
)
from spamdfakes import SwitchableSpamd

from spambridge.config import SpamdConfig
from spambridge.scanners.spamd import SpamdScanner, classify_exception
from spambridge.verdict import ErrorKind, ScanError


@pytest.mark.parametrize(("exc", "kind"), [
    # no connection within connect_timeout (a host that is off, a firewall that drops):
    # down, as a refused connection is — not a slow scan
    (ClientTimeoutException(), ErrorKind.UNAVAILABLE),
    (AIOSpamcConnectionFailed(), ErrorKind.UNAVAILABLE),
    (ConnectionResetError(), ErrorKind.UNAVAILABLE),
    (UnavailableException("down", None), ErrorKind.UNAVAILABLE),
    (TemporaryFailureException("busy", None), ErrorKind.UNAVAILABLE),
    (TimeoutError(), ErrorKind.TIMEOUT),  # the total timeout: spamd took too long
    (ServerTimeoutException("timeout", None), ErrorKind.TIMEOUT),
    (BadResponse(b"a reply of more than 32768 bytes"), ErrorKind.ERROR),
])
def test_failure_classes(exc: BaseException, kind: ErrorKind) -> None:
    assert classify_exception(exc) is kind


def _error_of(scanner: SpamdScanner) -> ScanError:
    with pytest.raises(ScanError) as e:
        asyncio.run(scanner.request("SYMBOLS", b"Subject: x\r\n\r\nhello\r\n"))
    return e.value


def test_a_hung_spamd_is_named_with_the_time_it_had() -> None:
    fake = SwitchableSpamd("hang")
    try:
        e = _error_of(SpamdScanner(SpamdConfig(host="127.0.0.1", port=fake.port), 0.3))
    finally:
        fake.close()
    assert e.kind is ErrorKind.TIMEOUT
    assert str(e) == f"spamd timeout: no answer from 127.0.0.1:{fake.port} within 0.3s"


def test_a_missing_unix_socket_is_named(tmp_path: Path) -> None:
    sock = tmp_path / "spamd.sock"
    e = _error_of(SpamdScanner(SpamdConfig(socket=str(sock)), 1.0))
    assert e.kind is ErrorKind.UNAVAILABLE
    assert str(e).startswith(f"spamd unavailable: {sock}: ")


def test_no_connection_in_time_names_the_address_and_the_limit() -> None:
    """aiospamc's connect timeout carries no text at all (a black-holed host)."""
    scanner = SpamdScanner(SpamdConfig(host="::1", port=783, connect_timeout=2.0), 10.0)
    assert scanner.describe(ClientTimeoutException()) == (
        "no connection to [::1]:783 within connect_timeout 2s")
