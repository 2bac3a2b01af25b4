"""Finding libmilter's listening socket by its address: the app's stop decision rests on it (a
listener found closed means a stop was asked for)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from spambridge.milter.socketspec import find_listener, parse_socket_spec


@pytest.mark.parametrize("family", ["unix", "inet"])
def test_a_closed_listener_is_found_closed_while_its_sessions_are_still_open(
        tmp_path: Path, family: str) -> None:
    """A stop request closes libmilter's listener while the sessions it accepted still finish
    their messages. Those sessions' sockets carry the listener's address too: taken for the
    listener, a stop request that met libmilter's listener between its stop check and its poll
    ("cannot run main") would end in a traceback and exit 1, not a clean stop, whenever a
    session was open."""
    if family == "unix":
        lst = socket.socket(socket.AF_UNIX)
        lst.bind(str(tmp_path / "m.sock"))
        spec = parse_socket_spec(f"unix:{tmp_path / 'm.sock'}")
    else:
        lst = socket.socket(socket.AF_INET)
        lst.bind(("127.0.0.1", 0))
        spec = parse_socket_spec(f"inet:{lst.getsockname()[1]}@127.0.0.1")
    lst.listen(8)
    with lst, socket.socket(lst.family) as mta:
        mta.connect(lst.getsockname())
        session, _ = lst.accept()
        with session:
            assert find_listener(spec) == lst.fileno()
            lst.close()  # what libmilter does at a stop request
            assert find_listener(spec) is None
