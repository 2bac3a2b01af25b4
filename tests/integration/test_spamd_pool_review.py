"""`[spamd] servers`, second review: what a site has around a pool — an IPv6 member, TLS
members (and a plain spamd among them), spamd+bayes with the whole pool down, a reload that
changes the list, the metrics endpoint, `train --spamd`, and messages in flight while a
pool member is stopped — with the real milter, real spamd and the milter client."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import (
    GTUBE,
    RunningMilter,
    Spamd,
    bayes_mail,
    free_port,
    message,
    start_spamd,
    stop_process,
    train_database,
    wait_until,
    write_config,
)
from milterclient import Result, send_one
from ops_helpers import scrape, value
from spamdfakes import BlackHole

pytestmark = pytest.mark.spamd

Start = Callable[..., RunningMilter]


@pytest.fixture
def own_spamd() -> Iterator[Callable[..., Spamd]]:
    """Real spamd servers of this test's own, which it may stop (the session's stays up)."""
    made: list[tuple[Spamd, Path]] = []

    def make(*extra: str, tls: tuple[Path, Path] | None = None) -> Spamd:
        base = Path(tempfile.mkdtemp(prefix="sb-spamd-pool2-"))
        s = start_spamd(base, extra, tls=tls)
        made.append((s, base))
        return s

    yield make
    for s, base in made:
        stop_process(s.proc)
        shutil.rmtree(base, ignore_errors=True)


def pool_cfg(*servers: str, scan_timeout: float = 5.0, engine: str = "spamd"
             ) -> dict[str, dict[str, object]]:
    return {
        "milter": {"engine": engine, "scan_timeout": scan_timeout},
        "spamd": {"servers": list(servers), "connect_timeout": 1.0},
        "policy": {"on_unavailable": "tempfail", "on_timeout": "tempfail"},
    }


def spamd_log(s: Spamd) -> str:
    return (s.home.parent / "spamd.log").read_text(errors="replace")


def scanned(s: Spamd) -> int:
    """Messages this spamd has scanned, from its own log (one `result:` line each)."""
    return spamd_log(s).count("spamd: result:")


def gtube(n: int = 0) -> bytes:
    return message(subject=f"Cheap stuff {n}", body=GTUBE + "\n")


def decision_lines(m: RunningMilter) -> list[str]:
    return [line for line in m.log.splitlines() if ": from=<" in line and " action=" in line]


def test_an_ipv6_member(spamd: Spamd, own_spamd: Callable[..., Spamd], start_milter: Start
                        ) -> None:
    """`[::1]:PORT` first: that spamd scans over IPv6; stopped, the next takes the mail and
    the WARNING names the member as it is written."""
    p6 = free_port()
    v6 = own_spamd(f"--listen=[::1]:{p6}", "--allowed-ips=::1")
    m = start_milter(pool_cfg(f"[::1]:{p6}", spamd.address))
    before = scanned(spamd)
    r = send_one(m.socket_path, gtube())
    assert r.action == "reject", m.log
    wait_until(lambda: scanned(v6) == 1, 10, "the IPv6 spamd's result line")
    assert "rhost=::1" in spamd_log(v6) and scanned(spamd) == before
    stop_process(v6.proc)
    for n in range(2):
        assert send_one(m.socket_path, gtube(n)).action == "reject"
    wait_until(lambda: scanned(spamd) == before + 2, 10, "the second spamd's result lines")
    assert m.log.count(f"WARNING spamd server [::1]:{p6} does not connect (Connection "
                       "refused): the other servers are tried first") == 1, m.log
    assert "unavailable" not in m.log


def _cert(where: Path) -> tuple[Path, Path]:
    cert, key = where / "spamd.pem", where / "spamd.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,IP:::1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    os.chmod(key, 0o644)  # spamd reads it after dropping to its own user
    os.chmod(where, 0o755)
    return cert, key


def test_a_tls_pool_with_a_plain_spamd_and_an_ipv6_member(
        spamd: Spamd, own_spamd: Callable[..., Spamd], start_milter: Start,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """`tls = true` for the pool: a plain spamd listed first (not yet switched to TLS) fails
    its handshake, which is a connect failure (the message never went out): the TLS member
    on [::1] scans it, its certificate checked; stopped, the third one does."""
    cert, key = _cert(tmp_path_factory.mktemp("tls"))
    p6 = free_port()
    a = own_spamd(f"--listen=ssl:[::1]:{p6}", "--allowed-ips=::1", tls=(cert, key))
    b = own_spamd(tls=(cert, key))
    cfg = pool_cfg(spamd.address, f"[::1]:{p6}", b.address)
    cfg["spamd"].update(tls=True, ca_file=str(cert))
    m = start_milter(cfg)
    plain = scanned(spamd)
    assert send_one(m.socket_path, gtube()).action == "reject", m.log
    wait_until(lambda: scanned(a) == 1, 10, "the IPv6 TLS spamd's result line")
    assert m.log.count(f"WARNING spamd server {spamd.address} does not connect "
                       "(AIOSpamcConnectionFailed: [SSL: WRONG_VERSION_NUMBER]") == 1, m.log
    stop_process(a.proc)
    assert send_one(m.socket_path, gtube(1)).action == "reject", m.log
    wait_until(lambda: scanned(b) == 1, 10, "the third spamd's result line")
    assert f"WARNING spamd server [::1]:{p6} does not connect (Connection refused)" in m.log
    assert scanned(spamd) == plain  # the plain spamd never got a message


def test_spamd_plus_bayes_with_the_whole_pool_down(start_milter: Start, tmp_path: Path
                                                    ) -> None:
    """Two hosts that are off (each costs connect_timeout 1s) and a refusing one: Bayes
    decides within the 3s cap, after spamd's 2.1s share, every time; each server's going
    is said once."""
    db = train_database(tmp_path, bayes_mail, 60)
    holes = [BlackHole(), BlackHole()]
    refused = f"127.0.0.1:{free_port()}"
    try:
        cfg = pool_cfg(holes[0].address, holes[1].address, refused, scan_timeout=3.0,
                       engine="spamd+bayes")
        cfg["bayes"] = {"db": str(db), "min_trained": 50}
        m = start_milter(cfg)
        for i in range(2):
            r = send_one(m.socket_path, bayes_mail(100 + i, "spam"))
            assert r.action == "reject" and r.reply.startswith("550 5.7.1"), (r, m.log)
    finally:
        for h in holes:
            h.close()
    lines = decision_lines(m)
    assert len(lines) == 2 and all(
        "engine=bayes" in line and "reason=reject" in line and
        "fallback=spamd-unavailable" in line and refused in line for line in lines), lines
    for server in (holes[0].address, holes[1].address, refused):
        assert m.log.count(f"WARNING spamd server {server} does not connect") == 1, m.log


def test_a_reload_that_changes_servers_needs_a_restart(
        spamd: Spamd, own_spamd: Callable[..., Spamd], start_milter: Start) -> None:
    """SIGUSR1 after `servers` changed: the log says it takes a restart, and the running
    pool goes on as it was (the first server still scans)."""
    first = own_spamd()
    m = start_milter(pool_cfg(first.address, spamd.address))
    assert send_one(m.socket_path, gtube()).action == "reject"
    text = m.config_path.read_text()
    listed = f'servers = ["{first.address}", "{spamd.address}"]'
    assert listed in text
    m.config_path.write_text(text.replace(listed, f'servers = ["{spamd.address}"]'))
    os.kill(m.proc.pid, signal.SIGUSR1)
    wait_until(lambda: "configuration reloaded from" in m.log, 10, "the reload's log line")
    assert ("WARNING reload: [spamd] servers only change on restart; applying the rest"
            in m.log), m.log
    assert send_one(m.socket_path, gtube(1)).action == "reject"
    wait_until(lambda: scanned(first) == 2, 10, "the first spamd's second result line")


def test_metrics_while_a_member_is_down(spamd: Spamd, start_milter: Start) -> None:
    """A member down and its mail scanned by the next: /metrics counts spamd decisions and
    no scan error, no unchecked message (the WARNING is where the member's state is)."""
    mport = free_port()
    dead = f"127.0.0.1:{free_port()}"
    cfg = pool_cfg(dead, spamd.address)
    cfg["metrics"] = {"listen": f"127.0.0.1:{mport}"}
    m = start_milter(cfg)
    for n in range(2):
        assert send_one(m.socket_path, gtube(n)).action == "reject"
    s = scrape("127.0.0.1", mport)
    assert value(s, "spambridge_messages_total", action="reject", engine="spamd") == 2
    assert not [k for k, v in s.items() if v and k[0].startswith(
        ("spambridge_scan_errors", "spambridge_messages_unchecked"))], s
    assert m.log.count(f"WARNING spamd server {dead} does not connect") == 1


def test_train_spamd_flag_is_one_server_over_the_list(
        own_spamd: Callable[..., Spamd], tmp_path: Path) -> None:
    """`train --spamd HOST:PORT` with a list of dead servers in the file: that server alone
    learns; a dead one given so is the error, the list's servers not tried."""
    tell = own_spamd("--allow-tell")
    listed = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    cfg = write_config(tmp_path / "t.toml", {"spamd": {"servers": listed}})

    def train(where: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "spambridge", "train", "--engine", "spamd", "--config",
             str(cfg), "--spamd", where, "--spam", "-"],
            input=message(subject="Cheap watches", body="Buy replica watches.\n"),
            capture_output=True, timeout=120, check=False)

    r = train(tell.address)
    assert r.returncode == 0 and b"Learned 1 of 1 messages as spam" in r.stdout, r
    dead = f"127.0.0.1:{free_port()}"
    r = train(dead)
    assert r.returncode == 1 and f"spamd unavailable: {dead}: ".encode() in r.stderr, r
    assert not any(x.encode() in r.stderr + r.stdout for x in listed)


def test_messages_in_flight_while_the_first_spamd_is_stopped(
        spamd: Spamd, own_spamd: Callable[..., Spamd], start_milter: Start) -> None:
    """Six senders at once while the first member is stopped (its children killed, its
    listen queue dropped): every message gets its reply, none within the cap's end; none
    is scanned twice (what the first had when it went is its failure, not resent); the
    member's going is said once."""
    first = own_spamd()
    cfg = pool_cfg(first.address, spamd.address)
    cfg["policy"]["on_error"] = "tempfail"  # a child killed mid-scan: a reset, or a cut reply
    m = start_milter(cfg)
    results: list[Result] = []
    lock = threading.Lock()
    done = threading.Event()
    before = scanned(spamd)

    def sender(n: int) -> None:
        for i in range(30):  # bounded; stops when the test has seen enough
            if done.is_set():
                return
            r = send_one(m.socket_path, gtube(n * 100 + i), queue_id=f"4AB{n:02d}{i:03d}")
            with lock:
                results.append(r)

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(results) >= 6, 30, "the first messages")
        stop_process(first.proc)
        with lock:
            at_stop = len(results)
        wait_until(lambda: len(results) >= at_stop + 12, 60, "messages after the stop")
    finally:
        done.set()
        for t in threads:
            t.join(60)
    lines = decision_lines(m)
    assert len(lines) == len(results)
    assert all(r.action in ("reject", "tempfail") for r in results), results
    rejected = sum(r.action == "reject" for r in results)
    assert scanned(first) + scanned(spamd) - before == rejected  # none scanned twice
    failed = [line for line in lines if "action=tempfail" in line]
    assert all(("reason=unavailable" in line or "reason=error" in line) and
               f'error="{first.address}: ' in line
               for line in failed), failed  # the first had them: its failure, not resent
    assert "reason=timeout" not in m.log
    assert m.log.count(f"WARNING spamd server {first.address} does not connect") == 1, m.log
    assert "connects again" not in m.log
