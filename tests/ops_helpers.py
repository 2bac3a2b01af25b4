"""Small helpers for the operations tests (metrics, reload): a scripted spamd that answers
SYMBOLS with a score the test controls, and a Prometheus scrape."""

from __future__ import annotations

import socket
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def read_spamc(conn: socket.socket, limit: float = 5.0) -> bytes:
    """One spamc request: headers, then exactly Content-length bytes of body."""
    conn.settimeout(limit)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def symbols_reply(score: float, threshold: float = 5.0, symbols: bytes = b"FAKE_RULE") -> bytes:
    spam = "True" if score >= threshold else "False"
    return (f"SPAMD/1.1 0 EX_OK\r\nContent-length: {len(symbols)}\r\n"
            f"Spam: {spam} ; {score} / {threshold}\r\n\r\n").encode() + symbols


def answering(score: float) -> object:
    """A FakeSpamd behaviour: every request gets `score`."""

    def behaviour(conn: socket.socket) -> None:
        read_spamc(conn)
        conn.sendall(symbols_reply(score))
        conn.close()

    return behaviour


def scrape(host: str, port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from a /metrics endpoint."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
