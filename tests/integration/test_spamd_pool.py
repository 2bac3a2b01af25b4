"""`[spamd] servers`: the real `spambridge run` with a pool of two real spamd servers (and, for
a spamd that hangs after accepting, which a real one cannot be made to do, a fake; for a host
that takes no connection, a full listen queue on loopback), driven by the milter client; and what a site has around a pool (the second review): an IPv6
member, TLS members with a plain spamd among them, spamd+bayes with the whole pool down, a
reload that changes the list, the metrics endpoint, `train --spamd`, and messages in flight
while a pool member is stopped."""

from __future__ import annotations

import contextlib
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
    self_signed,
    start_spamd,
    stop_process,
    train_database,
    wait_until,
    write_config,
)
from milterclient import Result, send_one, status
from ops_helpers import scrape, value
from spamdfakes import BlackHole, SwitchableSpamd

pytestmark = pytest.mark.spamd

Start = Callable[..., RunningMilter]


@pytest.fixture
def own_spamd() -> Iterator[Callable[..., Spamd]]:
    """Real spamd servers of this test's own, which it may stop (the session's stays up)."""
    made: list[tuple[Spamd, Path]] = []

    def make(*extra: str, tls: tuple[Path, Path] | None = None) -> Spamd:
        base = Path(tempfile.mkdtemp(prefix="sb-spamd-pool-"))
        s = start_spamd(base, extra, tls=tls)
        made.append((s, base))
        return s

    yield make
    for s, base in made:
        stop_process(s.proc)
        shutil.rmtree(base, ignore_errors=True)


def pool_cfg(*servers: str, scan_timeout: float = 5.0, engine: str = "spamd",
             **policy: object) -> dict[str, dict[str, object]]:
    return {
        "milter": {"engine": engine, "scan_timeout": scan_timeout},
        "spamd": {"servers": list(servers), "connect_timeout": 1.0},
        "policy": {"on_unavailable": "tempfail", "on_timeout": "tempfail", **policy},
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


def test_the_first_spamd_stopped_the_second_tags_the_mail(
        spamd: Spamd, own_spamd: Callable[..., Spamd], start_milter: Start) -> None:
    """A pool member rebooted: its mail goes to the next server, tagged by that spamd's
    verdict, with no unchecked=unavailable; the first answers while it runs."""
    first = own_spamd()
    m = start_milter(pool_cfg(first.address, spamd.address), "--tag-only")
    before = scanned(spamd)
    r = send_one(m.socket_path, gtube())
    assert r.header("X-Spam-Flag") == "YES"
    wait_until(lambda: scanned(first) == 1, 10, "the first spamd's result line")
    stop_process(first.proc)
    for _ in range(2):
        r = send_one(m.socket_path, gtube())
        assert r.action == "accept" and r.header("X-Spam-Flag") == "YES"
        assert status(r).startswith("Yes, score=100") and "GTUBE" in status(r)
    wait_until(lambda: scanned(spamd) == before + 2, 10, "the second spamd's result lines")
    lines = decision_lines(m)
    assert len(lines) == 3 and all("engine=spamd score=100" in line and
                                   "action=tag would=reject" in line for line in lines), lines
    assert "unavailable" not in "\n".join(lines)
    # said once, with the server and why, not per message
    assert m.log.count(f"WARNING spamd server {first.address} does not connect "
                       "(Connection refused): the other servers are tried first") == 1, m.log
    assert "spamd failing" not in m.log  # no outage: every message had its verdict


@pytest.mark.parametrize("engine", ["spamd", "spamd+bayes"])
def test_a_black_hole_first_costs_connect_timeout_within_the_cap(
        spamd: Spamd, start_milter: Start, engine: str) -> None:
    """A first server that takes no connection (a host that is off, a firewall that drops)
    is given up after connect_timeout (1 s of the 3 s cap; with spamd+bayes, of spamd's 2.1 s
    share): the second spamd's verdict."""
    hole = BlackHole()
    try:
        cfg = pool_cfg(hole.address, spamd.address, scan_timeout=3.0)
        cfg["milter"]["engine"] = engine
        m = start_milter(cfg)
        for _ in range(2):
            r = send_one(m.socket_path, gtube())
            assert r.action == "reject" and r.reply.startswith("550 5.7.1"), r
        lines = decision_lines(m)
        assert len(lines) == 2 and all("engine=spamd score=100" in line and
                                       "reason=reject" in line for line in lines), lines
        assert m.log.count(f"WARNING spamd server {hole.address} does not connect (no "
                           f"connection to {hole.address} within connect_timeout 1s)") == 1, m.log
    finally:
        hole.close()


def test_both_down_is_on_unavailable_with_both_named(
        own_spamd: Callable[..., Spamd], start_milter: Start) -> None:
    """Neither connects: on_unavailable, the error naming each server and what happened to
    it, and the outage incident as with one server; it ends when one of them is back."""
    first = own_spamd()
    stop_process(first.proc)
    second = SwitchableSpamd(port=free_port(), listen=False)  # back later, answering 1.5
    try:
        m = start_milter(pool_cfg(first.address, second.address))
        r = send_one(m.socket_path, message())
        assert r.action == "tempfail" and r.reply.startswith("451 4.7.1"), r
        named = f"{first.address}: Connection refused; {second.address}: Connection refused"
        (line,) = decision_lines(m)
        assert 'action=tempfail reason=unavailable ms=' in line and f'error="{named}"' in line
        assert (f"WARNING spamd failing: unavailable: {named}; mail gets on_unavailable = "
                "tempfail until it answers again") in m.log
        second.listen()  # both were put last: both are still tried, as listed
        r = send_one(m.socket_path, message())
        assert r.action == "accept" and status(r).startswith("No, score=1.5"), r
        assert "WARNING spamd answers again after" in m.log
        assert f"WARNING spamd server {second.address} connects again" in m.log
    finally:
        second.close()


def test_a_first_server_hung_after_accepting_is_a_timeout_not_resent(
        spamd: Spamd, start_milter: Start) -> None:
    """spamd has the message and never answers: that is its timeout (on_timeout); the
    message is not sent to the second spamd, which might answer in time."""
    hung = SwitchableSpamd("hang")
    try:
        m = start_milter(pool_cfg(hung.address, spamd.address, scan_timeout=1.5))
        before = scanned(spamd)
        r = send_one(m.socket_path, message())
        assert r.action == "tempfail", r
        (line,) = decision_lines(m)
        assert ('reason=timeout' in line and
                f'error="no answer from {hung.address} within 1.5s"' in line), line
        assert hung.requests == 1
        # the second spamd never saw it: one more message goes to the first, and hangs too
        r = send_one(m.socket_path, message())
        assert r.action == "tempfail" and hung.requests == 2
        assert scanned(spamd) == before
        assert "does not connect" not in m.log
    finally:
        hung.close()


def test_check_config_pings_each_server(spamd: Spamd, tmp_path: Path) -> None:
    dead = free_port()

    def check(*servers: str) -> subprocess.CompletedProcess[str]:
        cfg = write_config(tmp_path / f"c{len(servers)}.toml", {
            "milter": {"engine": "spamd"}, "spamd": {"servers": list(servers)}})
        return subprocess.run([sys.executable, "-m", "spambridge", "check-config", "--config",
                               str(cfg), "--no-postfix"], capture_output=True, text=True,
                              timeout=60)

    r = check(f"127.0.0.1:{dead}", spamd.address)
    assert r.returncode == 1, r.stdout
    assert f"note: spamd at {spamd.address} answers" in r.stdout
    assert (f"warning: [spamd] spamd at 127.0.0.1:{dead} does not answer a PING (spamd "
            f"unavailable: 127.0.0.1:{dead}: AIOSpamcConnectionFailed" in r.stdout
            and "the other servers would take its mail" in r.stdout), r.stdout
    r = check(spamd.address, f"127.0.0.1:{dead}", f"127.0.0.1:{free_port()}")
    assert r.stdout.count("the other servers would take its mail") == 2
    assert "no server of [spamd] servers answers" not in r.stdout
    r = check(f"127.0.0.1:{dead}", f"127.0.0.1:{free_port()}")
    assert ("no server of [spamd] servers answers: every message would get on_unavailable"
            in r.stdout), r.stdout


def test_train_goes_to_the_next_server(own_spamd: Callable[..., Spamd], tmp_path: Path) -> None:
    """`train --engine spamd` uses the same pool: the first down, the second learns."""
    tell = own_spamd("--allow-tell")
    dead = free_port()
    cfg = write_config(tmp_path / "t.toml", {
        "spamd": {"servers": [f"127.0.0.1:{dead}", tell.address]}})
    r = subprocess.run([sys.executable, "-m", "spambridge", "train", "--engine", "spamd",
                        "--config", str(cfg), "--spam", "-"],
                       input=message(subject="Cheap watches", body="Buy replica watches.\n"),
                       capture_output=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert b"Learned 1 of 1 messages as spam" in r.stdout
    assert tell.bayes is not None and list(tell.bayes.glob("bayes_toks"))


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


def test_a_tls_pool_with_a_plain_spamd_and_an_ipv6_member(
        spamd: Spamd, own_spamd: Callable[..., Spamd], start_milter: Start,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """`tls = true` for the pool: a plain spamd listed first (not yet switched to TLS) fails
    its handshake, which is a connect failure (the message never went out): the TLS member
    on [::1] scans it, its certificate checked; stopped, the third one does."""
    where = tmp_path_factory.mktemp("tls")
    os.chmod(where, 0o755)  # spamd, as its own user, reads the certificate from here
    cert, key = self_signed(where, "spamd")
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
    # spamd logs its result: line after it has replied: the lines of the last replies may
    # still be on their way
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: scanned(first) + scanned(spamd) - before >= rejected, 10,
                   "spamd's result lines")
    assert scanned(first) + scanned(spamd) - before == rejected  # none scanned twice
    failed = [line for line in lines if "action=tempfail" in line]
    assert all(("reason=unavailable" in line or "reason=error" in line) and
               f'error="{first.address}: ' in line
               for line in failed), failed  # the first had them: its failure, not resent
    assert "reason=timeout" not in m.log
    assert m.log.count(f"WARNING spamd server {first.address} does not connect") == 1, m.log
    assert "connects again" not in m.log
