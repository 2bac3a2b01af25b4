"""The metrics endpoint's HTTP server, in process, with its request deadline made short: what
a client may hold, not what the metrics say (tests/integration/test_metrics.py)."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

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


class Held:
    """A server whose answers wait until `go` is set, counting the requests it has entered."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.entered = 0
        self._lock = threading.Lock()
        self.port = free_port()
        self.server = metrics.serve(MetricsConfig(host="127.0.0.1", port=self.port),
                                    metrics.Metrics())
        self.server.set_app(self.app)

    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with self._lock:
            self.entered += 1
        self.go.wait(10)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"answered\n"]

    def connect(self, request: bytes = b"") -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        s.sendall(request)
        return s

    def close(self) -> None:
        self.go.set()
        self.server.shutdown()
        self.server.server_close()


GET = b"GET /metrics HTTP/1.0\r\n\r\n"


def test_a_newcomer_closes_the_oldest_idle_connection_never_one_being_answered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """MAX_SCRAPES connections that sent nothing held every slot, and every scrape was closed
    at accept until they timed out (and they could come back). A newcomer now takes the slot
    of the connection that has waited longest for its request; one whose request is read
    and is being answered, older still, keeps its slot and gets its answer."""
    monkeypatch.setattr(metrics._Handler, "timeout", 5.0)
    held = Held()
    conns = [held.connect(GET)]
    try:
        wait_until(lambda: held.entered == 1, 10, "the first request to be answered")
        conns += [held.connect() for _ in range(metrics.MAX_SCRAPES - 1)]  # accepted in order
        conns.append(held.connect())
        assert conns[1].recv(100) == b""  # the oldest idle one (a timeout here: it was not)
        held.go.set()
        assert b"".join(iter(lambda: conns[0].recv(65536), b"")).endswith(b"answered\n")
    finally:
        for s in conns:
            s.close()
        held.close()


def test_a_connection_beyond_the_slots_is_closed_at_once(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """MAX_SCRAPES requests being answered hold every slot: the next connection is closed at
    accept, not left waiting in the backlog (with the accepting thread) until a slot frees;
    routine, so with no "serving failed" error in the log."""
    monkeypatch.setattr(metrics._Handler, "timeout", 5.0)
    caplog.set_level(logging.WARNING, logger="spambridge")
    held = Held()
    conns = [held.connect(GET) for _ in range(metrics.MAX_SCRAPES)]
    try:
        wait_until(lambda: held.entered == metrics.MAX_SCRAPES, 10, "every request answered")
        with held.connect() as extra:
            assert extra.recv(100) == b""  # a timeout here: it waited for a slot
    finally:
        for s in conns:
            s.close()
        held.close()
    assert caplog.messages == []


def test_every_answered_scrape_gives_its_slot_back(port: int) -> None:
    """More scrapes one after another than there are slots: each is answered. A slot kept
    after its answer shut the endpoint for good once MAX_SCRAPES scrapes had been served."""
    for _ in range(metrics.MAX_SCRAPES + 2):
        assert value(scrape("127.0.0.1", port), "spambridge_config_last_reload_successful") == 1


def test_each_newcomer_closes_the_next_oldest_idle_connection_and_it_is_not_answered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With every slot held by a connection that sent nothing, two newcomers close the two
    oldest, in turn (not the first twice, with the slots overfull), and a closed one whose
    request was read anyway is not answered; the newest are."""
    server = metrics.serve(MetricsConfig(host="127.0.0.1", port=free_port()), metrics.Metrics())
    monkeypatch.setattr(server, "_one", lambda request, address: None)  # held until told
    pairs = [socket.socketpair() for _ in range(metrics.MAX_SCRAPES + 2)]
    try:
        for ours, _ in pairs:
            server.process_request(ours, ("127.0.0.1", 1))
        for _, theirs in pairs[:2]:
            theirs.settimeout(2)
            assert theirs.recv(100) == b""  # closed (a timeout here: it was not)
        pairs[2][1].settimeout(0.2)
        with pytest.raises(TimeoutError):
            pairs[2][1].recv(100)
        assert not server.answering(pairs[0][0])
        assert server.answering(pairs[-1][0])
    finally:
        for pair in pairs:
            for s in pair:
                s.close()
        server.shutdown()
        server.server_close()


def test_head_says_how_long_the_get_would_be() -> None:
    """HEAD (curl -I, check_http -j HEAD) answers with the Content-Length of the GET."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    Gauge("spambridge_x", "x", registry=registry).set(1)
    app = metrics.app(registry)
    answers: dict[str, tuple[str, dict[str, str], bytes]] = {}
    for method in ("GET", "HEAD"):
        got: list[Any] = []
        body = b"".join(app({"REQUEST_METHOD": method, "PATH_INFO": "/metrics",
                             "QUERY_STRING": ""}, lambda s, h, *_, got=got: got.extend((s, h))))
        answers[method] = (got[0], dict(got[1]), body)
    status, headers, body = answers["HEAD"]
    assert status.startswith("200") and body == b""
    assert headers["Content-Length"] == str(len(answers["GET"][2]))


def test_an_ipv6_listen_address_is_served() -> None:
    """listen = "[::1]:PORT" (check-config and the README allow it): served over IPv6."""
    port = free_port()
    server = metrics.serve(MetricsConfig(listen=f"[::1]:{port}", host="::1", port=port),
                           metrics.Metrics())
    try:
        assert value(scrape("[::1]", port), "spambridge_config_last_reload_successful") == 1
    finally:
        server.shutdown()
        server.server_close()


def test_bytes_that_come_after_the_deadline_are_not_read() -> None:
    """A byte arriving just as the deadline passes: the read is refused as a timeout (an
    OSError, a debug line); a negative socket timeout was a ValueError, an ERROR line with a
    traceback for one slow scraper."""
    import time

    a, b = socket.socketpair()
    with a, b:
        reader = metrics._Deadline(a, 0.05)
        b.sendall(b"GET /metrics HTTP/1.0\r\n")
        time.sleep(0.1)
        with pytest.raises(TimeoutError, match="request not complete in time"):
            reader.readinto(bytearray(100))


def test_a_dropped_scraper_is_named_as_host_and_port(
        port: int, caplog: pytest.LogCaptureFixture) -> None:
    """`debug` adds the endpoint's dropped connections: the line named the scraper as a
    Python tuple, "metrics: ('127.0.0.1', 60972): timed out"."""
    caplog.set_level(logging.DEBUG, logger="spambridge")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /metr")  # and no more
        mine = s.getsockname()[1]
        wait_until(lambda: any("metrics: " in r.getMessage() for r in caplog.records),
                   10, "the dropped connection's line")
    [line] = [r.getMessage() for r in caplog.records if "metrics: " in r.getMessage()]
    assert line.startswith(f"metrics: 127.0.0.1:{mine}: "), line
