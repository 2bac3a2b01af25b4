"""The metrics endpoint's HTTP server, in process, with its request deadline made short: what
a client may hold, not what the metrics say (tests/integration/test_metrics.py)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from harness import free_port, wait_until
from ops_helpers import scrape, value

from spambridge import metrics
from spambridge.config import MetricsConfig

DEADLINE = 0.5


@pytest.fixture
def port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(metrics._Handler, "timeout", DEADLINE)
    port = free_port()
    server = metrics.serve(MetricsConfig(host="127.0.0.1", port=port), metrics.Metrics())
    yield port
    server.shutdown()
    server.server_close()


def test_requests_trickled_in_cannot_hold_the_slots(port: int) -> None:
    """MAX_SCRAPES clients each sending a byte of a request that never ends, every byte well
    within the timeout, held every slot for as long as they kept on (the timeout restarted at
    each byte): Prometheus's scrape was closed unanswered and SpambridgeDown fired. Now a
    request not complete within the deadline from its connection is closed."""
    stop = threading.Event()
    closed: list[socket.socket] = []
    request = b"GET /metrics HTTP/1.0\r\nX-Slow: " + b"x" * 10000  # no blank line: no end

    def trickle(s: socket.socket) -> None:
        for i in range(len(request)):
            try:
                s.sendall(request[i:i + 1])
            except OSError:  # the server's close (the send after it is refused)
                closed.append(s)
                return
            if stop.wait(DEADLINE / 5):
                return

    conns = [socket.create_connection(("127.0.0.1", port), timeout=10)
             for _ in range(metrics.MAX_SCRAPES)]
    senders = [threading.Thread(target=trickle, args=(s,)) for s in conns]
    for t in senders:
        t.start()
    try:
        wait_until(lambda: len(closed) == len(conns), 10, "the trickled requests to be closed")
    finally:
        stop.set()
        for t in senders:
            t.join(10)
        for s in conns:
            s.close()
    assert value(scrape("127.0.0.1", port), "spambridge_config_last_reload_successful") == 1
