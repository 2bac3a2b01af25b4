"""Fixtures for the integration tests that need a real Postfix (see tests/postfix_instance.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import free_port
from postfix_instance import PostfixInstance, destroy, make_instance


@pytest.fixture(scope="session")
def postfix() -> Iterator[PostfixInstance]:
    """One throwaway Postfix for the session; each test starts its own milter on the socket
    path the contrib example names (the Maildir and log are shared: match by queue id)."""
    pf = make_instance(free_port())
    yield pf
    destroy(pf)
