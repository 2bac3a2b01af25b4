"""The Prometheus endpoint of the real `spambridge run`, scraped after real traffic through the
milter socket: a real spamd for verdicts, and for failures a dead port and a spamd that hangs."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import (
    GTUBE,
    FakeSpamd,
    RunningMilter,
    Spamd,
    bayes_mail,
    free_port,
    message,
    train_database,
    wait_until,
)
from milterclient import send_one
from ops_helpers import scrape, value
from spamdfakes import SwitchableSpamd

pytestmark = pytest.mark.spamd
Start = Callable[..., RunningMilter]


def test_metrics_after_real_traffic(spamd: Spamd, start_milter: Start) -> None:
    port = free_port()
    m = start_milter({
        "milter": {"engine": "spamd", "max_scan_size": 4096},
        "spamd": {"host": spamd.host, "port": spamd.port},
        "policy": {"tag_at": 5.0, "reject_at": 15.0},
        "metrics": {"listen": f"127.0.0.1:{port}"},
    })
    assert send_one(m.socket_path, message(body=f"{GTUBE}\n")).action == "reject"
    assert send_one(m.socket_path, message()).action in ("accept", "continue")
    big = message(body="x" * 80 + "\n") * 1 + b"y" * 8000 + b"\n"
    assert send_one(m.socket_path, big).header("X-Spam-Status") == "No, unchecked=oversize"
    send_one(m.socket_path, message(), mail_macros={"{auth_authen}": "alice"})

    s = scrape("127.0.0.1", port)
    assert value(s, "spambridge_messages_total", action="reject", engine="spamd") == 1
    assert value(s, "spambridge_messages_total", action="accept", engine="spamd") == 2  # ham, oversize
    assert value(s, "spambridge_messages_total", action="accept", engine="none") == 1  # auth
    assert value(s, "spambridge_skipped_total", reason="oversize") == 1
    assert value(s, "spambridge_skipped_total", reason="authenticated") == 1
    assert value(s, "spambridge_scan_duration_seconds_count", engine="spamd") == 2
    assert 0 < value(s, "spambridge_scan_duration_seconds_sum", engine="spamd") < 20
    assert value(s, "spambridge_message_size_bytes_count") == 4
    assert value(s, "spambridge_messages_in_flight") == 0
    assert value(s, "spambridge_scan_errors_total", engine="spamd", kind="timeout") == 0
    info = [k for k in s if k[0] == "spambridge_build_info"]
    assert info and ("version", __import__("spambridge").__version__) in info[0][1]
    assert "metrics on http://127.0.0.1:" in m.log


def test_metrics_count_unavailable_and_timeouts(
        start_milter: Start, fake_spamd: Callable[[Callable[[socket.socket], None]], FakeSpamd]
) -> None:
    def hang(conn: socket.socket) -> None:
        time.sleep(3)

    hung = fake_spamd(hang)
    dead_port = free_port()  # nothing listens there
    ports = []
    for address in (f"127.0.0.1:{dead_port}", hung.address):
        host, sport = address.rsplit(":", 1)
        mport = free_port()
        ports.append(mport)
        m = start_milter({
            "milter": {"engine": "spamd", "scan_timeout": 0.5},
            "spamd": {"host": host, "port": int(sport), "connect_timeout": 0.2},
            "metrics": {"listen": f"127.0.0.1:{mport}"},
        })
        res = send_one(m.socket_path, message())
        assert res.action in ("accept", "continue")
        assert (res.header("X-Spam-Status") or "").startswith("No, unchecked=")

    dead, slow = (scrape("127.0.0.1", p) for p in ports)
    assert value(dead, "spambridge_scan_errors_total", engine="spamd", kind="unavailable") == 1
    assert value(slow, "spambridge_scan_errors_total", engine="spamd", kind="timeout") == 1
    assert value(slow, "spambridge_scan_duration_seconds_count", engine="spamd") == 1
    assert 0.4 < value(slow, "spambridge_scan_duration_seconds_sum", engine="spamd") < 2.0


def test_metrics_from_the_start_and_while_a_message_is_in_flight(
        start_milter: Start, fake_spamd: Callable[[Callable[[socket.socket], None]], FakeSpamd]
) -> None:
    """Every action's series exists before the first message (rate() and alerts need one),
    the start counts as a successful load, and a message waiting on spamd is in flight."""
    asked, release = threading.Event(), threading.Event()

    def hold(conn: socket.socket) -> None:
        asked.set()
        release.wait(20)

    host, sport = fake_spamd(hold).address.rsplit(":", 1)
    port = free_port()
    m = start_milter({"milter": {"engine": "spamd", "scan_timeout": 20},
                      "spamd": {"host": host, "port": int(sport)},
                      "metrics": {"listen": f"127.0.0.1:{port}"}})
    s = scrape("127.0.0.1", port)
    assert value(s, "spambridge_config_last_reload_successful") == 1
    for action in ("accept", "tag", "reject", "tempfail"):
        assert ("spambridge_messages_total", (("action", action), ("engine", "none"))) in s
    sent = threading.Thread(target=send_one, args=(m.socket_path, message()))
    sent.start()
    try:
        assert asked.wait(20)
        assert value(scrape("127.0.0.1", port), "spambridge_messages_in_flight") == 1
    finally:
        release.set()
        sent.join(30)
    assert value(scrape("127.0.0.1", port), "spambridge_messages_in_flight") == 0


def test_a_spamd_failure_bayes_covered_for_is_counted(start_milter: Start,
                                                      tmp_path: Path) -> None:
    db = train_database(tmp_path, bayes_mail, 20)
    port = free_port()
    m = start_milter({"milter": {"engine": "spamd+bayes"},
                      "spamd": {"host": "127.0.0.1", "port": free_port()},  # nothing there
                      "bayes": {"db": str(db), "min_trained": 20},
                      "metrics": {"listen": f"127.0.0.1:{port}"}})
    assert send_one(m.socket_path, bayes_mail(99, "ham")).action in ("accept", "continue")
    s = scrape("127.0.0.1", port)
    assert value(s, "spambridge_messages_total", action="accept", engine="bayes") == 1
    assert value(s, "spambridge_scan_errors_total", engine="spamd", kind="unavailable") == 1


def test_a_pool_member_that_does_not_connect_shows_as_down(start_milter: Start) -> None:
    """Its mail is scanned by the others: no message fails, so no counter moved and no alert
    could fire for a pool that had quietly lost a server."""
    live, dead = SwitchableSpamd(), free_port()
    try:
        port = free_port()
        m = start_milter({"milter": {"engine": "spamd"},
                          "spamd": {"servers": [f"127.0.0.1:{dead}", live.address]},
                          "metrics": {"listen": f"127.0.0.1:{port}"}})
        before = scrape("127.0.0.1", port)
        assert value(before, "spambridge_spamd_server_up", server=f"127.0.0.1:{dead}") == 1
        assert send_one(m.socket_path, message()).action in ("accept", "continue")
        s = scrape("127.0.0.1", port)
    finally:
        live.close()
    assert value(s, "spambridge_spamd_server_up", server=f"127.0.0.1:{dead}") == 0
    assert value(s, "spambridge_spamd_server_up", server=live.address) == 1
    assert value(s, "spambridge_messages_total", action="accept", engine="spamd") == 1
    assert value(s, "spambridge_scan_errors_total", engine="spamd", kind="unavailable") == 0


def test_metrics_port_in_use_is_a_clear_startup_error(start_milter: Start,
                                                      tmp_path: Path) -> None:
    """The error names the file, line and key to change, as every other start-up error does,
    and the exit status is 1 (a runtime failure: systemd retries, the port may come free)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(RuntimeError) as exc:
            start_milter({"milter": {"engine": "spamd"},
                          "metrics": {"listen": f"127.0.0.1:{port}"}})
    config = tmp_path / "m0.toml"
    line = config.read_text().splitlines().index(f'listen = "127.0.0.1:{port}"') + 1
    assert str(exc.value).startswith("spambridge exited 1:")
    assert (f"{config}:{line}: [metrics] listen: cannot serve metrics on 127.0.0.1:{port}: "
            "Address already in use") in str(exc.value)


def http_request(port: int, method: str, path: str,
                 timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP request, as curl, check_http or monit would send it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_the_endpoint_serves_get_and_head_on_metrics_and_nothing_elsewhere(
        start_milter: Start) -> None:
    """/metrics answers GET and HEAD (`curl -I`, check_http -j HEAD) with the 0.0.4 text
    format; another path is a 404 that says where to look, not the metrics again (a typo in
    a scrape config shows up as a failed target); other methods are refused."""
    port = free_port()
    start_milter({"milter": {"engine": "bayes"}, "metrics": {"listen": f"127.0.0.1:{port}"}})
    status, hdrs, body = http_request(port, "GET", "/metrics")
    assert status == 200
    assert hdrs["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert b"# TYPE spambridge_messages_total counter" in body

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # raw: every byte
        s.sendall(b"HEAD /metrics HTTP/1.0\r\n\r\n")
        head = b"".join(iter(lambda: s.recv(65536), b""))
    status_line, _, rest = head.partition(b"\r\n")
    fields, _, after = rest.partition(b"\r\n\r\n")
    assert status_line.split()[1] == b"200"
    assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8" in fields
    assert after == b""  # no body after a HEAD

    for path in ("/", "/metric", "/metrics/", "/favicon.ico"):
        status, hdrs, body = http_request(port, "GET", path)
        assert status == 404, path
        assert b"/metrics" in body and b"spambridge_" not in body
    for method in ("POST", "PUT", "DELETE"):
        status, hdrs, body = http_request(port, method, "/metrics")
        assert status == 405, method
        assert hdrs["allow"] == "GET, HEAD, OPTIONS"
        assert b"spambridge_" not in body


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_silent_connections_are_dropped_and_cannot_pile_up_threads(
        start_milter: Start, tmp_path: Path) -> None:
    """A scraper (or port scanner, or a stuck monitoring check) that connects and sends
    nothing held a thread of the milter for as long as it kept the connection open, one per
    connection, without limit: enough of them and libmilter cannot start the thread the next
    SMTP session needs (TasksMax). Now a silent connection is closed after a few seconds and
    only a few are served at once; mail flows meanwhile, and scrapes work again after."""
    db = train_database(tmp_path, bayes_mail, 20)
    port = free_port()
    m = start_milter({"milter": {"engine": "bayes"}, "bayes": {"db": str(db), "min_trained": 20},
                      "metrics": {"listen": f"127.0.0.1:{port}"}})
    assert send_one(m.socket_path, bayes_mail(98, "spam")).action == "reject"  # pool started
    scrape("127.0.0.1", port)
    before = threads(m.proc.pid)
    silent = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(40)]
    try:
        time.sleep(1)  # each accepted by now (or refused)
        assert threads(m.proc.pid) <= before + 10
        assert send_one(m.socket_path, bayes_mail(99, "spam")).action == "reject"
        assert silent[0].recv(100) == b""  # closed by the milter (not: a timeout, at 30 s)
    finally:
        for s in silent:
            s.close()
    wait_until(lambda: threads(m.proc.pid) <= before, 20, "the scrape threads to end")
    assert value(scrape("127.0.0.1", port), "spambridge_messages_total",
                 action="reject", engine="bayes") == 2


def test_idle_connections_give_way_to_a_scrape(start_milter: Start) -> None:
    """MAX_SCRAPES connections that sent nothing (a local user, a load balancer's health
    check that opens and never sends) held every slot: each scrape was closed at once, and
    they could be renewed every IDLE_SECONDS for ever (SpambridgeDown). Now a connection that
    finds every slot taken closes the one that has waited longest for its request."""
    from spambridge.metrics import IDLE_SECONDS, MAX_SCRAPES

    port = free_port()
    start_milter({"milter": {"engine": "bayes"}, "metrics": {"listen": f"127.0.0.1:{port}"}})
    scrape("127.0.0.1", port)  # serving
    # accepted in the order they connect: each holds a slot before the next is accepted
    idle = [socket.create_connection(("127.0.0.1", port), timeout=IDLE_SECONDS / 2)
            for _ in range(MAX_SCRAPES)]
    try:
        status, _, body = http_request(port, "GET", "/metrics", timeout=IDLE_SECONDS / 2)
        assert status == 200 and b"# TYPE spambridge_messages_total counter" in body
        assert idle[0].recv(100) == b""  # closed for the scrape (not: a timeout)
    finally:
        for s in idle:
            s.close()


def test_mail_passed_unchecked_is_a_series_of_its_own(start_milter: Start,
                                                     tmp_path: Path) -> None:
    """"Every message goes through unchecked" is the alert that matters, and the counters had
    no series for it: a spamd failure Bayes covered for and one nothing covered for both
    counted as a scan error, and both messages as action="accept". Now a message that got no
    verdict (its on_<kind> action decided) counts in spambridge_messages_unchecked_total, and
    the series exist at 0 from the start, for rate()."""
    trained = train_database(tmp_path, bayes_mail, 20)
    ports = []
    for db in (trained, tmp_path / "empty.sqlite"):  # Bayes covers spamd / cannot cover
        port = free_port()
        ports.append(port)
        m = start_milter({"milter": {"engine": "spamd+bayes"},
                          "spamd": {"host": "127.0.0.1", "port": free_port()},  # nothing there
                          "bayes": {"db": str(db), "min_trained": 20},
                          "metrics": {"listen": f"127.0.0.1:{port}"}})
        for kind in ("unavailable", "timeout", "error"):
            assert ("spambridge_messages_unchecked_total", (("kind", kind),)) in scrape(
                "127.0.0.1", port)
        res = send_one(m.socket_path, bayes_mail(99, "ham"))
        assert res.action in ("accept", "continue")
    covered, uncovered = (scrape("127.0.0.1", p) for p in ports)
    for s in (covered, uncovered):  # spamd failed in both
        assert value(s, "spambridge_scan_errors_total", engine="spamd", kind="unavailable") == 1
    assert value(covered, "spambridge_messages_unchecked_total", kind="unavailable") == 0
    assert value(uncovered, "spambridge_messages_unchecked_total", kind="unavailable") == 1


def test_a_failing_spool_shows_as_unchecked_mail(start_milter: Start, tmp_path: Path) -> None:
    """The spool directory gone after start (a cleanup job, a full disk likewise): each
    message above spool_memory is decided by on_error without a scan, and says so: as
    unchecked mail, not as a scanner's failure (it was counted in scan_errors_total with
    engine="spool", and in the scan time histogram)."""
    db = train_database(tmp_path, bayes_mail, 20)
    spool = tmp_path / "spool"
    spool.mkdir()
    port = free_port()
    m = start_milter({"milter": {"engine": "bayes", "spool_dir": str(spool),
                                 "spool_memory": 1024},
                      "bayes": {"db": str(db), "min_trained": 20},
                      "metrics": {"listen": f"127.0.0.1:{port}"}})
    # the socket answers before the start's own spool check, which refuses a missing
    # directory (exit 78): take it away only once that has passed, as an admin's cleanup
    # job would after the start
    wait_until(lambda: "listening on" in m.log, 10, "the milter's start")
    spool.rmdir()
    res = send_one(m.socket_path, message(body="lunch on friday\n" * 300))
    assert res.header("X-Spam-Status") == "No, unchecked=error"
    s = scrape("127.0.0.1", port)
    assert value(s, "spambridge_messages_total", action="accept", engine="spool") == 1
    assert value(s, "spambridge_messages_unchecked_total", kind="error") == 1
    # no scanner failed, nor scanned it: a full disk is no `scan_errors_total` (an alert on
    # the scanners' failures), nor a near-zero `scan_duration_seconds{engine="spool"}`
    assert not [labels for labels in series(s, "spambridge_scan_errors_total")
                if ("engine", "spool") in labels]
    assert not [labels for labels in series(s, "spambridge_scan_duration_seconds_count")
                if ("engine", "spool") in labels]


def series(s: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str
           ) -> set[tuple[tuple[str, str], ...]]:
    return {labels for n, labels in s if n == name}


def test_the_series_an_alert_needs_exist_from_the_start_for_the_engine_in_use(
        start_milter: Start, tmp_path: Path) -> None:
    """rate() and increase() see a counter only once its series exists: every skip reason and
    reload result is there at 0 before the first message or reload, and the scan errors of
    the engine in use — a Bayes-only milter showed spamd's, and none of its own."""
    port = free_port()
    start_milter({"milter": {"engine": "bayes"}, "metrics": {"listen": f"127.0.0.1:{port}"}})
    s = scrape("127.0.0.1", port)
    assert series(s, "spambridge_scan_errors_total") == {
        (("engine", "bayes"), ("kind", k)) for k in ("unavailable", "timeout", "error")}
    assert series(s, "spambridge_skipped_total") == {
        (("reason", r),) for r in ("oversize", "authenticated", "trusted")}
    assert series(s, "spambridge_config_reloads_total") == {
        (("result", r),) for r in ("ok", "failed")}


def test_process_metrics_and_no_created_timestamps(start_milter: Start) -> None:
    """process_start_time_seconds tells a restart loop (Restart=always hides one from `up`)
    and process_resident_memory_bytes/process_open_fds a leak; the client library's
    *_created gauges, one per series, only doubled the count of series an admin sees."""
    port = free_port()
    before = time.time()
    m = start_milter({"milter": {"engine": "bayes"}, "metrics": {"listen": f"127.0.0.1:{port}"}})
    send_one(m.socket_path, message())
    s = scrape("127.0.0.1", port)
    assert before - 1 <= value(s, "process_start_time_seconds") <= time.time()
    assert value(s, "process_resident_memory_bytes") > 1 << 20
    assert value(s, "process_open_fds") > 3
    assert not [n for n, _ in s if n.endswith("_created")]


def after_start_check(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A scrape once the start-up check has read the database. The milter socket accepts
    connections a few milliseconds before that check runs (it reads the database as the
    milter's user, after privileges are dropped), and a scrape in between sees no Bayes
    series yet — as it would if the database could not be read; systemd's READY=1 comes
    after the check."""
    seen: list[dict[tuple[str, tuple[tuple[str, str], ...]], float]] = []

    def read() -> bool:
        seen[:] = [scrape("127.0.0.1", port)]
        return bool(series(seen[0], "spambridge_bayes_trained_messages"))

    wait_until(read, 10, "the start-up check's spambridge_bayes_trained_messages")
    return seen[0]


def test_the_bayes_database_in_use_is_visible(start_milter: Start, tmp_path: Path) -> None:
    """How many messages the database the milter reads was trained on: an admin sees the
    retrained copy moved into place taken (the numbers change), an empty database (0), and
    one that cannot be read (no series; scan errors say why) — without a scrape ever
    touching the database."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    db = train_database(tmp_path / "a", bayes_mail, 20)
    retrained = train_database(tmp_path / "b", bayes_mail, 25)
    port = free_port()
    m = start_milter({"milter": {"engine": "bayes"}, "bayes": {"db": str(db), "min_trained": 20},
                      "metrics": {"listen": f"127.0.0.1:{port}"}})
    trained = "spambridge_bayes_trained_messages"
    s = after_start_check(port)  # known from the start-up check, before any message
    assert (value(s, trained, **{"class": "spam"}), value(s, trained, **{"class": "ham"})) == (
        20, 20)

    os.replace(retrained, db)  # the retrained copy moved into place
    assert send_one(m.socket_path, bayes_mail(99, "spam")).action == "reject"
    s = scrape("127.0.0.1", port)
    assert (value(s, trained, **{"class": "spam"}), value(s, trained, **{"class": "ham"})) == (
        25, 25)

    db.unlink()
    assert (send_one(m.socket_path, bayes_mail(98, "spam")).header("X-Spam-Status")
            == "No, unchecked=unavailable")
    s = scrape("127.0.0.1", port)
    assert not series(s, trained)
    assert value(s, "spambridge_scan_errors_total", engine="bayes", kind="unavailable") == 1


def test_the_fallback_database_is_followed_while_spamd_answers(start_milter: Start,
                                                               tmp_path: Path) -> None:
    """Under spamd+bayes, Bayes reads its database only for a message spamd failed: while
    spamd answered, the gauge kept the start's counts. An admin who trained the empty
    database the milter made saw it at 0 for ever (SpambridgeBayesUntrained firing on), and
    one whose database had gone saw it still in use, until spamd failed and nothing covered.
    Now a change of the file is read (once) as mail flows, whichever engine decides."""
    spamd = SwitchableSpamd()  # always answers: Bayes is never asked to score
    try:
        port = free_port()
        db = tmp_path / "bayes.sqlite"
        m = start_milter({"milter": {"engine": "spamd+bayes"},
                          "spamd": {"host": "127.0.0.1", "port": spamd.port},
                          "bayes": {"db": str(db), "min_trained": 20},
                          "metrics": {"listen": f"127.0.0.1:{port}"}})
        trained = "spambridge_bayes_trained_messages"
        s = after_start_check(port)
        assert value(s, trained, **{"class": "spam"}) == 0

        train_database(tmp_path, bayes_mail, 20)  # the same file, trained in place
        assert (send_one(m.socket_path, message()).header("X-Spam-Status") or "").endswith(
            "engine=spamd")

        def counts() -> tuple[float, float]:
            s = scrape("127.0.0.1", port)
            return value(s, trained, **{"class": "spam"}), value(s, trained, **{"class": "ham"})

        wait_until(lambda: counts() == (20, 20), 10, "the trained counts")

        db.unlink()
        send_one(m.socket_path, message())
        wait_until(lambda: not series(scrape("127.0.0.1", port), trained), 10,
                   "the gauge of a database gone to go")
        assert value(scrape("127.0.0.1", port), "spambridge_messages_total", action="accept",
                     engine="spamd") == 2
    finally:
        spamd.close()


def test_an_empty_bayes_database_shows_as_zero(start_milter: Start) -> None:
    port = free_port()
    start_milter({"milter": {"engine": "spamd+bayes"},
                  "metrics": {"listen": f"127.0.0.1:{port}"}})  # a new, empty database
    s = after_start_check(port)
    assert series(s, "spambridge_bayes_trained_messages") == {
        (("class", "spam"),), (("class", "ham"),)}
    assert value(s, "spambridge_bayes_trained_messages", **{"class": "spam"}) == 0


def readme_check_script() -> str:
    """The Nagios/monit check as README.md prints it, so what admins copy is what is tested."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```sh\n")[1:]]
    return next(b for b in blocks if "# check_spambridge" in b)


def test_the_readme_check_for_nagios_and_monit(start_milter: Start, tmp_path: Path) -> None:
    if not shutil.which("curl"):
        pytest.fail("curl is not installed (apt-get install curl)")
    script = tmp_path / "check_spambridge"
    script.write_text(readme_check_script())
    port = free_port()
    m = start_milter({"milter": {"engine": "spamd", "scan_timeout": 2},
                      "spamd": {"host": "127.0.0.1", "port": free_port()},  # nothing there
                      "metrics": {"listen": f"127.0.0.1:{port}"}})
    args = ["sh", str(script), f"http://127.0.0.1:{port}/metrics", str(tmp_path / "state")]

    def check() -> tuple[int, str]:
        r = subprocess.run(args, capture_output=True, text=True, timeout=30)
        assert r.stderr == ""
        return r.returncode, r.stdout.strip()

    assert check() == (0, "OK: 0 of 0 messages got no verdict")
    for _ in range(2):
        send_one(m.socket_path, message())
    assert check() == (2, "CRITICAL: 2 of 2 messages got no verdict")
    assert check() == (0, "OK: 0 of 0 messages got no verdict")  # only what is new counts
    m.stop()
    assert check() == (2, f"CRITICAL: no spambridge metrics at http://127.0.0.1:{port}/metrics")


def test_the_readme_alerts_name_series_the_milter_serves(start_milter: Start) -> None:
    """Each series the README's alert rules use is served from the start (a renamed metric
    would leave an alert that can never fire)."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rules = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    used = set(re.findall(r"\b((?:spambridge|process)_[a-z_]+)\b", rules))
    assert "spambridge_messages_unchecked_total" in used
    port = free_port()
    start_milter({"milter": {"engine": "spamd+bayes"}, "metrics": {"listen": f"127.0.0.1:{port}"}})
    # the Bayes gauge comes with the start-up read of the database, which follows the socket
    # (it is read as the milter's user): a scrape in that moment lacks it (CI under load did)
    served: set[str] = set()

    def all_served() -> bool:
        served.clear()
        served.update(name for name, _ in scrape("127.0.0.1", port))
        return used <= served

    with contextlib.suppress(TimeoutError):
        wait_until(all_served, 10, "the series the alerts use")
    assert used <= served, used - served
