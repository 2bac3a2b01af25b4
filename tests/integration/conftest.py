"""Fixtures shared by the integration tests: a real Postfix (see tests/postfix_instance.py) and
a fake spamd that answers every request at once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import free_port
from postfix_instance import PostfixInstance, destroy, make_instance
from spamdfakes import SwitchableSpamd


@pytest.fixture(scope="session")
def postfix() -> Iterator[PostfixInstance]:
    """One throwaway Postfix for the session; each test starts its own milter on the socket
    path the contrib example names (the Maildir and log are shared: match by queue id)."""
    pf = make_instance(free_port())
    yield pf
    destroy(pf)


@pytest.fixture
def fake() -> Iterator[SwitchableSpamd]:
    """A fake spamd giving the same good reply to every request, at once."""
    s = SwitchableSpamd("good")
    yield s
    s.close()
