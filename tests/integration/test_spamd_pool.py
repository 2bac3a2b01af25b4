"""`[spamd] servers`: the real `spambridge run` with a pool of two real spamd servers (and, for
a spamd that hangs after accepting, which a real one cannot be made to do, a fake; for a host
that takes no connection, a full listen queue on loopback), driven by the milter client."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import (
    GTUBE,
    RunningMilter,
    Spamd,
    free_port,
    message,
    start_spamd,
    stop_process,
    wait_until,
    write_config,
)
from milterclient import Result, send_one
from spamdfakes import BlackHole, SwitchableSpamd

pytestmark = pytest.mark.spamd

Start = Callable[..., RunningMilter]


@pytest.fixture
def own_spamd() -> Iterator[Callable[..., Spamd]]:
    """Real spamd servers of this test's own, which it may stop (the session's stays up)."""
    made: list[tuple[Spamd, Path]] = []

    def make(*extra: str) -> Spamd:
        base = Path(tempfile.mkdtemp(prefix="sb-spamd-pool-"))
        s = start_spamd(base, extra)
        made.append((s, base))
        return s

    yield make
    for s, base in made:
        stop_process(s.proc)
        shutil.rmtree(base, ignore_errors=True)


def pool_cfg(*servers: str, scan_timeout: float = 5.0, **policy: object
             ) -> dict[str, dict[str, object]]:
    return {
        "milter": {"engine": "spamd", "scan_timeout": scan_timeout},
        "spamd": {"servers": list(servers), "connect_timeout": 1.0},
        "policy": {"on_unavailable": "tempfail", "on_timeout": "tempfail", **policy},
    }


def scanned(s: Spamd) -> int:
    """Messages this spamd has scanned, from its own log (one `result:` line each)."""
    return (s.home.parent / "spamd.log").read_text(errors="replace").count("spamd: result:")


def status(r: Result) -> str:
    return (r.header("X-Spam-Status") or "").replace(",\n\t", ",").replace("\n\t", " ")


def gtube() -> bytes:
    return message(subject="Cheap stuff", body=GTUBE + "\n")


def decision_lines(m: RunningMilter) -> list[str]:
    return [line for line in m.log.splitlines() if "4ABCDEF0123: from=" in line]


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
