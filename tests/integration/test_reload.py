"""SIGUSR1 reload of the real `spambridge run`: thresholds and policy change between two
messages, a bad file is logged and the running config kept, and every decision under load comes
from one whole config (old or new), never a mix."""

from __future__ import annotations

import os
import signal
import socket
import threading
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import FakeSpamd, RunningMilter, free_port, message, wait_until, write_config
from milterclient import MilterClient, Result, send_one
from ops_helpers import answering, scrape, value

Start = Callable[..., RunningMilter]
MakeFake = Callable[[Callable[[socket.socket], None]], FakeSpamd]

OLD_REPLY = "550 5.7.1 Old policy says no"
NEW_REPLY = "550 5.7.1 New policy says no"


def sections(spamd: FakeSpamd, metrics_port: int, **policy: object) -> dict[str, dict[str, object]]:
    host, port = spamd.address.rsplit(":", 1)
    return {
        "milter": {"engine": "spamd", "scan_timeout": 5},
        "spamd": {"host": host, "port": int(port)},
        "policy": {"tag_at": 5.0, "reject_at": 15.0, "reject_reply": OLD_REPLY, **policy},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
    }


def reload(m: RunningMilter, expect: str) -> None:
    """kill -USR1 the milter and wait for the log line that says how it went."""
    before = m.log.count(expect)
    os.kill(m.proc.pid, signal.SIGUSR1)
    wait_until(lambda: m.log.count(expect) > before, 10, f"log line {expect!r}")


def send(m: RunningMilter) -> Result:
    return send_one(m.socket_path, message(subject="score 9"))


@pytest.fixture
def milter(start_milter: Start, fake_spamd: MakeFake) -> tuple[RunningMilter, FakeSpamd, int]:
    spamd = fake_spamd(answering(9.0))  # between tag_at 5 and reject_at 15: tagged
    port = free_port()
    return start_milter(sections(spamd, port)), spamd, port


def test_a_key_given_as_a_flag_keeps_its_value_and_the_reload_says_so(
        start_milter: Start, fake_spamd: MakeFake) -> None:
    """`run --reject-at 15` (spamass-milter's migration path is flags alone): reject_at edited
    to 8 in the file changed nothing at a reload, and the log said only "reloaded"."""
    spamd = fake_spamd(answering(9.0))
    port = free_port()
    m = start_milter(sections(spamd, port), "--reject-at", "15")
    cfg = tomllib.loads(m.config_path.read_text())  # with the socket and db start_milter chose
    cfg["policy"]["reject_at"] = 8.0
    write_config(m.config_path, cfg)
    reload(m, "configuration reloaded from")
    assert send(m).action == "accept"  # 9 points, still under the flag's 15
    assert (f"configuration reloaded from {m.config_path}; the command line's [policy] "
            "reject_at kept over the file") in m.log, m.log


def test_thresholds_and_policy_change_on_sigusr1(
        milter: tuple[RunningMilter, FakeSpamd, int]) -> None:
    m, spamd, port = milter
    first = send(m)
    assert first.action == "accept" and first.header("X-Spam-Flag") == "YES"

    write_config(m.config_path, sections(spamd, port, reject_at=8.0, reject_reply=NEW_REPLY))
    reload(m, "configuration reloaded from")
    second = send(m)
    assert (second.action, second.reply) == ("reject", NEW_REPLY)

    write_config(m.config_path, sections(spamd, port, reject_at=8.0, tag_only=True))
    reload(m, "configuration reloaded from")
    third = send(m)
    assert third.action == "accept" and third.header("X-Spam-Flag") == "YES"
    assert "action=tag would=reject" in m.log

    s = scrape("127.0.0.1", port)
    assert value(s, "spambridge_config_reloads_total", result="ok") == 2
    assert value(s, "spambridge_config_last_reload_successful") == 1


def test_what_only_a_restart_changes_is_kept_and_the_rest_applied(
        start_milter: Start, fake_spamd: MakeFake, tmp_path: Path) -> None:
    """A reload that also lowers scan_timeout: the cap stays the one the spamd client was
    built with (the log says so), and the policy change in the same file applies."""
    answer = answering(9.0)

    def slow(conn: socket.socket) -> None:
        threading.Event().wait(1.0)  # spamd takes a second
        answer(conn)  # type: ignore[operator]

    spamd, port = fake_spamd(slow), free_port()
    sock, db = f"unix:{tmp_path / 'r.sock'}", {"db": str(tmp_path / "b.sqlite")}
    cfg = {**sections(spamd, port), "bayes": db}
    cfg["milter"]["socket"] = sock
    m = start_milter(cfg)
    cfg = {**sections(spamd, port, reject_at=8.0, reject_reply=NEW_REPLY), "bayes": db}
    cfg["milter"].update(socket=sock, scan_timeout=0.3)
    write_config(m.config_path, cfg)
    reload(m, "configuration reloaded from")
    assert "reload: [milter] scan_timeout only change on restart; applying the rest" in m.log
    r = send(m)
    assert (r.action, r.reply) == ("reject", NEW_REPLY)  # scored within the old 5 s cap


@pytest.mark.parametrize("bad", [
    "[policy\nreject_at = 8\n",                         # not TOML
    "[policy]\nreject_at = 8\ntag_at = 9\n",            # valid TOML, invalid combination
    "[policy]\nreject_at = 8\nreject_reply = \"550 5.7.1 New\"\n[milter]\nscan_timout = 5\n",
    # valid, but a spool nobody can write: every message above spool_memory would pass
    # unchecked, as at start, where it is refused too
    "[policy]\nreject_at = 8\n[milter]\nspool_dir = \"/nonexistent/spool\"\n",
])
def test_bad_file_is_logged_and_the_old_config_kept(
        milter: tuple[RunningMilter, FakeSpamd, int], bad: str) -> None:
    m, _spamd, port = milter
    good = m.config_path.read_text()
    m.config_path.write_text(bad)
    reload(m, "reload failed, keeping the running config")
    line = next(x for x in reversed(m.log.splitlines()) if "reload failed" in x)
    assert str(m.config_path) in line  # the admin learns which file (and line) is wrong
    # in words, as `check-config` says it: not a Python repr (ConfigError('...'))
    assert f"reload failed, keeping the running config: {m.config_path}:" in line, line
    # still serving, with all of the old config: nothing of the bad file leaked in
    after = send(m)
    assert after.action == "accept" and after.header("X-Spam-Flag") == "YES"
    assert m.proc.poll() is None
    s = scrape("127.0.0.1", port)
    assert value(s, "spambridge_config_reloads_total", result="failed") == 1
    assert value(s, "spambridge_config_last_reload_successful") == 0

    # fixing the file and reloading again recovers
    Path(m.config_path).write_text(good.replace("reject_at = 15.0", "reject_at = 8.0"))
    reload(m, "configuration reloaded from")
    assert send(m).action == "reject"
    assert value(scrape("127.0.0.1", port), "spambridge_config_last_reload_successful") == 1


def test_decisions_under_reloads_come_from_one_whole_config(
        milter: tuple[RunningMilter, FakeSpamd, int]) -> None:
    """Old: tag at 9 points. New: reject at 9 points with NEW_REPLY. A mix (reject with the old
    reply, or tag with the new threshold) would show a half-applied config."""
    m, spamd, port = milter
    old = m.config_path.read_text()
    new = write_config(m.config_path.with_suffix(".new"), sections(
        spamd, port, reject_at=8.0, reject_reply=NEW_REPLY)).read_text()
    results: list[Result] = []
    stop = threading.Event()

    def traffic() -> None:
        for _ in range(60):  # bounded
            if stop.is_set():
                return
            results.append(send(m))

    t = threading.Thread(target=traffic)
    t.start()
    try:
        for i in range(8):
            m.config_path.write_text(new if i % 2 == 0 else old)
            reload(m, "configuration reloaded from")
    finally:
        stop.set()
        t.join(60)
    assert results
    for r in results:
        assert (r.action, r.reply) in {("accept", ""), ("reject", NEW_REPLY)}, r
        if r.action == "accept":
            assert r.header("X-Spam-Flag") == "YES"


def test_trusted_networks_apply_from_the_next_message_on_an_open_connection(
        milter: tuple[RunningMilter, FakeSpamd, int]) -> None:
    """As documented for every list: a reload that trusts the client skips its next message,
    even on a connection Postfix keeps open (smtpd reuses one for every message of a
    session), and one that stops trusting it has the next message scanned again."""
    m, spamd, port = milter
    client = "192.0.2.10"
    with MilterClient(m.socket_path) as c:
        first = c.send(message(subject="score 9"), client_addr=client, queue_id="AAAA1")
        assert first.header("X-Spam-Flag") == "YES"
        cfg = sections(spamd, port)
        cfg["milter"]["trusted_networks"] = ["192.0.2.0/24"]
        write_config(m.config_path, cfg)
        reload(m, "configuration reloaded from")
        second = c.send(message(subject="score 9"), connected=True, queue_id="AAAA2")
        assert second.header("X-Spam-Flag") is None and second.header("X-Spam-Status") is None
        write_config(m.config_path, sections(spamd, port))
        reload(m, "configuration reloaded from")
        third = c.send(message(subject="score 9"), connected=True, queue_id="AAAA3")
        assert third.header("X-Spam-Flag") == "YES"
    assert "AAAA2: " in m.log and "reason=trusted" in m.log.split("AAAA2: ", 1)[1].split("\n")[0]


def test_skip_authenticated_applies_from_the_next_message_on_an_open_connection(
        milter: tuple[RunningMilter, FakeSpamd, int]) -> None:
    """An admin who turns skip_authenticated off (to scan a compromised account's mail)
    has the next authenticated message scanned, on a connection already open too."""
    m, spamd, port = milter
    auth = {"{auth_authen}": "alice", "{auth_type}": "PLAIN"}
    with MilterClient(m.socket_path) as c:
        first = c.send(message(subject="score 9"), mail_macros=auth, queue_id="BBBB1")
        assert first.header("X-Spam-Status") is None  # skipped, the default
        cfg = sections(spamd, port)
        cfg["milter"]["skip_authenticated"] = False
        write_config(m.config_path, cfg)
        reload(m, "configuration reloaded from")
        second = c.send(message(subject="score 9"), mail_macros=auth, connected=True,
                        queue_id="BBBB2")
    assert second.header("X-Spam-Flag") == "YES", second
    assert "reason=authenticated" not in m.log.split("BBBB2: ", 1)[1].split("\n")[0]
