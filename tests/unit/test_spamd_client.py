"""How aiospamc's failures map onto the policy's failure classes (no network needed)."""

from __future__ import annotations

import pytest
from aiospamc.exceptions import AIOSpamcConnectionFailed, BadResponse, ClientTimeoutException
from aiospamc.responses import (
    ServerTimeoutException,
    TemporaryFailureException,
    UnavailableException,
)

from spambridge.scanners.spamd import classify_exception
from spambridge.verdict import ErrorKind


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
