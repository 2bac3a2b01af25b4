"""Prometheus metrics: one observer on the pipeline, one HTTP thread, one private registry.

postfix_exporter cannot count milter rejects (it only parses `: reject: ` lines), so this is
where an admin sees what spambridge decided, how long spamd took and what failed. Label values
are all from small fixed sets (actions, engines, error kinds): never addresses or queue ids.
"""

from __future__ import annotations

import contextlib
import io
import logging
import platform
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import make_wsgi_app

from spambridge import __version__
from spambridge.bridge import signals_blocked
from spambridge.config import Config, MetricsConfig, host_port, key_at
from spambridge.message import MessageBuffer
from spambridge.pipeline import INCIDENT_ENGINES, Evaluation, Pipeline
from spambridge.verdict import ErrorKind, ScanError, ScoreResult, Skipped, SkipReason

if TYPE_CHECKING:
    from spambridge.scanners.bayes import BayesScanner
    from spambridge.scanners.spamd import SpamdScanner

log = logging.getLogger("spambridge")
# a <name>_created gauge beside every series doubles what an admin sees, for a start time
# that process_start_time_seconds already gives (prometheus_client >= 0.20; global, and
# this module is only loaded by a milter that serves metrics)
getattr(prometheus_client, "disable_created_metrics", lambda: None)()

# from a 45 ms GTUBE check to the 120 s maximum cap
SCAN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
SIZE_BUCKETS = (1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20)
KINDS = tuple(k.value for k in ErrorKind if k is not ErrorKind.OVERSIZE)  # oversize: skipped


class Metrics:
    """The metric objects, registered in their own registry (tests build several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)  # process_start_time_seconds (restarts), memory, fds
        self.build = Info("spambridge_build", "spambridge version", registry=r)
        self.build.info({"version": __version__, "python": platform.python_version()})
        self.messages = Counter(
            "spambridge_messages", "Messages decided, by action taken and deciding engine",
            ["action", "engine"], registry=r)
        self.scan_seconds = Histogram(
            "spambridge_scan_duration_seconds",
            "End of message to decision, for messages that were scanned (errors included)",
            ["engine"], buckets=SCAN_BUCKETS, registry=r)
        self.errors = Counter(
            "spambridge_scan_errors",
            "Scanner failures by kind (unavailable, timeout, error); a spamd failure that the "
            "Bayes fallback covered counts too", ["engine", "kind"], registry=r)
        self.unchecked = Counter(
            "spambridge_messages_unchecked",
            "Messages that got no verdict: the scan failed and no fallback covered, so the "
            "on_<kind> action decided (oversize mail is in spambridge_skipped_total)",
            ["kind"], registry=r)
        self.skipped = Counter(
            "spambridge_skipped", "Messages not scanned, by reason (oversize, authenticated, "
            "trusted)", ["reason"], registry=r)
        self.sizes = Histogram(
            "spambridge_message_size_bytes", "Size of each decided message as buffered",
            buckets=SIZE_BUCKETS, registry=r)
        self.inflight = Gauge(
            "spambridge_messages_in_flight", "Messages between end of data and their decision",
            registry=r)
        self.reloads = Counter(
            "spambridge_config_reloads", "SIGUSR1 config reloads, by result", ["result"],
            registry=r)
        self.reload_ok = Gauge(
            "spambridge_config_last_reload_successful",
            "1 if the last reload (or the start) loaded the config, 0 if it was rejected",
            registry=r)
        self.reload_ok.set(1)
        self._fallback: Any = None  # spamd+bayes: the Bayes engine, asked only when spamd fails
        for action in ("accept", "tag", "reject", "tempfail"):
            self.messages.labels(action, "none")  # so rate() has a series from the start
        for kind in KINDS:
            self.unchecked.labels(kind)
        for reason in ("oversize", *(r.value for r in SkipReason)):
            self.skipped.labels(reason)
        for result in ("ok", "failed"):
            self.reloads.labels(result)

    def observe(self, ev: Evaluation, buf: MessageBuffer) -> None:
        """Pipeline observer: called once per decided message."""
        d, outcome = ev.decision, ev.outcome
        if self._fallback is not None and not (
                isinstance(outcome, ScoreResult) and outcome.engine == "bayes"):
            self._fallback.refresh_seen()  # Bayes did not read its counts for this message
        engine = d.engine if d.engine not in ("", "-") else "none"
        self.messages.labels(d.action.value, engine).inc()
        self.sizes.observe(buf.size)
        if isinstance(outcome, Skipped):
            self.skipped.labels(outcome.reason.value).inc()
        elif isinstance(outcome, ScanError) and outcome.kind is ErrorKind.OVERSIZE:
            self.skipped.labels("oversize").inc()
        elif isinstance(outcome, ScanError):
            self.unchecked.labels(outcome.kind.value).inc()
            if outcome.engine in INCIDENT_ENGINES:  # a scanner's; not a full spool or a bug,
                # which never reached one (its decision line and messages_unchecked say it)
                self.errors.labels(outcome.engine, outcome.kind.value).inc()
                self.scan_seconds.labels(outcome.engine).observe(ev.elapsed)
        elif isinstance(outcome, ScoreResult):
            self.scan_seconds.labels(outcome.engine).observe(ev.elapsed)
            if outcome.failed is not None:  # spamd failed, and Bayes decided for it
                self.errors.labels(outcome.failed.engine, outcome.failed.kind.value).inc()

    def track(self, pipeline: Pipeline) -> None:
        pipeline.observers.append(self.observe)
        bayes: Any = getattr(pipeline.scanner, "secondary", pipeline.scanner)
        if bayes.name == "bayes":  # not imported here: spamd-only never loads the classifier
            self.registry.register(_BayesTrained(bayes))
            if bayes is not pipeline.scanner:
                self._fallback = bayes
        spamd: Any = getattr(pipeline.scanner, "primary", pipeline.scanner)
        if spamd.name == "spamd":
            self.registry.register(_SpamdServers(spamd))
        # the engine whose failures count: spamd's, when Bayes is only its fallback
        engine = "bayes" if pipeline.scanner.name == "bayes" else "spamd"
        for kind in KINDS:
            self.errors.labels(engine, kind)
        self.inflight.set_function(lambda: float(pipeline.inflight))

    def counting_reloads(self, reload: Callable[[], Config]) -> Callable[[], Config]:
        """Wrap the reload function so every SIGUSR1 shows up as ok/failed."""

        def counted() -> Config:
            try:
                cfg = reload()
            except Exception:
                self.reloads.labels("failed").inc()
                self.reload_ok.set(0)
                raise
            self.reloads.labels("ok").inc()
            self.reload_ok.set(1)
            return cfg

        return counted


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_TEXT = ("Content-Type", "text/plain; charset=utf-8")  # wsgiref adds to the list it is given
ALLOWED = "GET, HEAD, OPTIONS"


def app(registry: CollectorRegistry) -> WsgiApp:
    """The endpoint: the metrics at /metrics for GET and HEAD (curl -I, check_http -j HEAD),
    a 404 naming /metrics on any other path (prometheus_client serves them everywhere, so a
    mistyped scrape path would look right), 405 for other methods."""
    metrics = make_wsgi_app(registry)

    def serve_one(environ: dict[str, Any], start_response: Callable[..., Any]
                  ) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [_TEXT])
            return [b"spambridge: the metrics are at /metrics\n"]
        if method == "OPTIONS":
            start_response("200 OK", [("Allow", ALLOWED), ("Content-Length", "0")])
            return []
        if method not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", ALLOWED), _TEXT])
            return [f"spambridge: {ALLOWED} only\n".encode()]
        if method == "GET":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        answer: list[Any] = []
        body = b"".join(metrics({**environ, "REQUEST_METHOD": "GET"},
                                lambda status, headers, *_: answer.extend((status, headers))))
        start_response(answer[0], [*answer[1], ("Content-Length", str(len(body)))])
        return []

    return serve_one


# A scrape's request arrives as soon as it connects: a request not complete this long after
# its connection (silent, or trickling in) is dropped, as is an answer not read for this long,
# and only so many connections are held at once. A thread per silent connection, without
# limit, would use up the threads (TasksMax) the milter needs for SMTP sessions. One more
# closes the connection that has waited longest for its request; when every one is being
# answered, the newcomer is closed at accept.
IDLE_SECONDS = 5.0
MAX_SCRAPES = 8


class _Deadline(socket.SocketIO):
    """The request's reads, all against one deadline: the socket's timeout restarts at every
    byte, so a client sending one every few seconds kept its slot for as long as it liked
    (MAX_SCRAPES of them, and Prometheus got no answer)."""

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        super().__init__(sock, "rb")
        self._conn, self._seconds = sock, seconds
        self._deadline = time.monotonic() + seconds

    def readinto(self, b: Any) -> int | None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request not complete in time")
        self._conn.settimeout(left)
        try:
            return super().readinto(b)
        finally:
            self._conn.settimeout(self._seconds)  # the answer's writes: as before


class _Handler(WSGIRequestHandler):
    timeout = IDLE_SECONDS  # for the whole request from the connection; for each write

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the socket's own file: only the socket, open, stays
        self.rfile = io.BufferedReader(_Deadline(self.connection, self.timeout))

    def parse_request(self) -> bool:
        """The request line and header read: from now on the connection is being answered,
        and no newcomer may close it (nor is it answered when one already has)."""
        server: _Server = self.server  # type: ignore[assignment]
        return super().parse_request() and server.answering(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""


class _Server(WSGIServer):
    """One thread per scrape, a few at most (the scan path never waits on a scraper)."""

    request_queue_size = 32  # a burst of connections is accepted (or closed) at once

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._lock = threading.Lock()
        # the connections held, MAX_SCRAPES at most: those still waiting for their request,
        # oldest first (a dict keeps its order), and those being answered
        self._waiting: dict[socket.socket, None] = {}
        self._answering: set[socket.socket] = set()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hold the connection in a slot; when all are taken, in the one that has waited
        longest for its request (closed, its client sees EOF): idle sockets cannot keep a
        scrape out. Only when every slot is being answered is the newcomer closed."""
        with self._lock:
            if len(self._waiting) + len(self._answering) >= MAX_SCRAPES:
                if not self._waiting:  # every slot is answering a request: no room
                    self.shutdown_request(request)
                    return
                oldest = next(iter(self._waiting))
                del self._waiting[oldest]
                with contextlib.suppress(OSError):  # its thread sees EOF, ends, closes it
                    oldest.shutdown(socket.SHUT_RDWR)
            self._waiting[request] = None
        try:
            threading.Thread(target=self._one, args=(request, client_address), daemon=True,
                             name="spambridge-metrics-scrape").start()
        except BaseException:
            self._release(request)
            self.shutdown_request(request)
            raise

    def answering(self, request: socket.socket) -> bool:
        """Move a connection whose request is read to those being answered; False when a
        newcomer has closed it first."""
        with self._lock:
            if request not in self._waiting:
                return False
            del self._waiting[request]
            self._answering.add(request)
            return True

    def _release(self, request: socket.socket) -> None:
        with self._lock:
            self._waiting.pop(request, None)
            self._answering.discard(request)

    def _one(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:  # out of the lists before it is closed: a newcomer never shuts down a
            self._release(request)  # descriptor that is another connection's by then
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A scraper that went silent or away is its own problem (socketserver would print a
        traceback on stderr for each); anything else is a bug worth a log line."""
        # the scraper as HOST:PORT, not Python's ('127.0.0.1', 60972)
        peer = (host_port(str(client_address[0]), client_address[1])
                if isinstance(client_address, tuple) and len(client_address) >= 2
                else str(client_address))
        if isinstance(sys.exc_info()[1], OSError):
            log.debug("metrics: %s: %s", peer, sys.exc_info()[1])
        else:
            log.exception("metrics: serving %s failed", peer)


class _StateGauge:
    """A gauge read from a scanner's own state at each scrape, by one label: a scrape never
    opens the database, asks spamd, nor waits for a scanner's lock."""

    NAME = ""
    HELP = ""
    LABEL = ""

    def samples(self) -> Iterable[tuple[str, float]]:
        raise NotImplementedError

    def describe(self) -> Iterable[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.NAME, self.HELP, labels=[self.LABEL])

    def collect(self) -> Iterable[GaugeMetricFamily]:
        g = GaugeMetricFamily(self.NAME, self.HELP, labels=[self.LABEL])
        for label, v in self.samples():
            g.add_metric([label], v)
        yield g


class _BayesTrained(_StateGauge):
    """spambridge_bayes_trained_messages, from the counts the scanner last read."""

    NAME = "spambridge_bayes_trained_messages"
    HELP = ("Messages the Bayes database in use was trained on, by class, as last read (at "
            "start, then each message Bayes scores or, as spamd's fallback, the first message "
            "after the file changed); absent while it cannot be read")
    LABEL = "class"

    def __init__(self, scanner: BayesScanner) -> None:
        self.scanner = scanner

    def samples(self) -> Iterable[tuple[str, float]]:
        seen = self.scanner.seen
        return [] if seen is None else [("spam", seen.nspam), ("ham", seen.nham)]


class _SpamdServers(_StateGauge):
    """spambridge_spamd_server_up: a pool member that stops connecting costs no message its
    verdict (the others scan its mail), so no counter moved and no alert could fire."""

    NAME = "spambridge_spamd_server_up"
    HELP = ("1 unless the last connection to this spamd failed (refused, unreachable, not "
            "taken within connect_timeout or the time a scan had); label server: as configured")
    LABEL = "server"

    def __init__(self, scanner: SpamdScanner) -> None:
        self.scanner = scanner

    def samples(self) -> Iterable[tuple[str, float]]:
        return [(s.target, 0 if s.down else 1) for s in self.scanner.servers]


def serve(cfg: MetricsConfig, metrics: Metrics) -> Any:
    """Start the HTTP endpoint in a daemon thread that never sees libmilter's signals."""
    started = time.monotonic()
    cls = type("_Server", (_Server,), {
        "address_family": socket.AF_INET6 if ":" in cfg.host else socket.AF_INET})
    server = cls((cfg.host, cfg.port), _Handler)
    server.set_app(app(metrics.registry))
    with signals_blocked():  # inherited by the threads it starts for each scrape
        threading.Thread(target=server.serve_forever, name="spambridge-metrics",
                         daemon=True).start()
    log.info("metrics on http://%s/metrics (%.0f ms)", host_port(cfg.host, cfg.port),
             (time.monotonic() - started) * 1000)
    return server


def start(cfg: Config, pipeline: Pipeline,
          reload: Callable[[], Config] | None) -> Callable[[], Config] | None:
    """app.run's one call: when [metrics] listen is set, observe the pipeline, serve, and
    return the reload function wrapped so reloads are counted."""
    if not cfg.metrics.host:
        return reload
    metrics = Metrics()
    metrics.track(pipeline)
    try:
        serve(cfg.metrics, metrics)
    except OSError as e:  # in use, or not an address of this host: which line to change
        raise OSError(f"{key_at(cfg, 'metrics', 'listen')}: cannot serve metrics on "
                      f"{cfg.metrics.listen}: {e.strerror or e}") from e
    return metrics.counting_reloads(reload) if reload is not None else None

