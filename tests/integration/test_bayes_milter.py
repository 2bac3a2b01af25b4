"""The real `spambridge run` with the local Bayes engine, driven over its socket by an MTA-side
milter client: verdicts by band, an untrained or missing database, and spamd+bayes falling back
to Bayes within the cap when spamd is stopped or hangs."""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from harness import (
    FakeSpamd,
    RunningMilter,
    Spamd,
    free_port,
    read_request,
    train_database,
    wait_until,
)
from milterclient import MilterClient, send_one, status

from spambridge import cli
from spambridge.message import Envelope, split_message

Start = Callable[..., RunningMilter]
MakeFake = Callable[[Callable[[socket.socket], None]], FakeSpamd]

SPAM_WORDS = ["viagra", "cheap", "pills", "casino", "winner", "lottery", "prize", "mortgage",
              "refinance", "bitcoin", "offer", "unsubscribe"]
HAM_WORDS = ["meeting", "agenda", "minutes", "review", "budget", "quarterly", "project",
             "deadline", "lunch", "draft", "thanks", "colleagues"]


def mail(n: int, words: list[str], subject: str = "note") -> bytes:
    body = " ".join(words[(n * 7 + i) % len(words)] for i in range(60))
    return (f"From: Sender {n} <s{n}@example.org>\nTo: user@test.example\n"
            f"Subject: {subject} {n}\nMessage-ID: <{n}.{subject}@example.org>\n"
            f"Date: Wed, 25 Nov 2026 10:00:00 +0000\n\n{body}\n").encode()


def spam(n: int) -> bytes:
    return mail(n, SPAM_WORDS, "WINNER")


def ham(n: int) -> bytes:
    return mail(n, HAM_WORDS, "minutes")


def labelled(n: int, label: str) -> bytes:
    return spam(n) if label == "spam" else ham(n)


@pytest.fixture
def trained_db(tmp_path: Path) -> Path:
    """A database trained through the real `train` command on 30 + 30 fixture messages."""
    return train_database(tmp_path, labelled, 30)


def bayes_cfg(db: Path, **bayes: object) -> dict[str, dict[str, object]]:
    """The fixture databases hold 10-30 messages of each class: below the default min_trained
    (200), so the tests say how many they consider enough."""
    bayes = {"min_trained": 10, **bayes}
    return {"milter": {"engine": "bayes", "scan_timeout": 5.0}, "bayes": {"db": str(db), **bayes}}


def test_spam_is_rejected_and_ham_accepted_with_a_no_status(trained_db: Path,
                                                            start_milter: Start) -> None:
    m = start_milter(bayes_cfg(trained_db))
    with MilterClient(m.socket_path) as c:
        r = c.send(spam(500))
        assert r.action == "reject"
        assert r.reply == "550 5.7.1 Message rejected as spam"
        r = c.send(ham(500), connected=True)
    assert r.action == "accept"
    assert status(r).startswith("No, score=0.0")
    assert "engine=bayes" in status(r)
    assert r.header("X-Spam-Flag") is None
    assert "engine=bayes" in m.log and "action=reject" in m.log
    assert "Traceback" not in m.log
    # the start-up line says which file the milter runs on (or that it found none)
    assert re.search(r"listening on \S+ \(engine=bayes, cap=\S+; config "
                     + re.escape(str(m.config_path)) + r"\)", m.log), m.log


def test_spam_below_the_reject_cutoff_is_tagged(trained_db: Path, start_milter: Start) -> None:
    m = start_milter(bayes_cfg(trained_db, reject_cutoff=1.0))
    r = send_one(m.socket_path, spam(501))
    assert r.action == "accept"
    assert r.header("X-Spam-Flag") == "YES"
    assert status(r).startswith("Yes, score=")
    assert "required=0.9000" in status(r)


def test_a_change_libmilter_refuses_still_gets_the_verdicts_reply(trained_db: Path,
                                                                  start_milter: Start) -> None:
    """A Subject just under libmilter's 64 KiB packet: tagged, it no longer fits, and libmilter
    refuses the change. The message must still get the verdict (tag: accepted, with its
    X-Spam-* fields), not pymilter's 451 "untrapped exception" that no policy names; the log
    says what could not be done. (Words with blanks between: a word of 64 KiB is left
    untagged before libmilter sees it, no line of it fitting RFC 5322's 998 octets.)"""
    m = start_milter({**bayes_cfg(trained_db, reject_cutoff=1.0),
                      "policy": {"subject_tag": "[SPAM]"}})
    body = " ".join(SPAM_WORDS * 5)
    raw = f"From: x@y.example\nSubject: {' '.join(['W' * 64] * 1008)}\n\n{body}\n".encode()
    r = send_one(m.socket_path, raw, queue_id="BIGSUBJ1")
    assert r.action == "accept" and r.header("X-Spam-Flag") == "YES"
    assert not [c for c in r.changed if c[0].lower() == "subject"]
    assert "BIGSUBJ1: 1 change(s) to the message refused by libmilter, first: tag the Subject" \
        in m.log and "Traceback" not in m.log


def test_mixed_message_is_unsure(trained_db: Path, start_milter: Start) -> None:
    m = start_milter(bayes_cfg(trained_db))
    body = " ".join(w for pair in zip(SPAM_WORDS, HAM_WORDS, strict=True) for w in pair)
    raw = f"Subject: both\nFrom: x@y.example\n\n{body}\n".encode()
    r = send_one(m.socket_path, raw)
    assert r.action == "accept"
    assert "unsure=yes" in status(r)
    assert status(r).startswith("No, score=0.")
    assert r.header("X-Spam-Flag") is None


def hidden_behind_empty_parts(raw: bytes) -> bytes:
    """`raw` with its text moved past 100 empty MIME parts, where the tokenizer stops reading
    (a review hid all the words of 305 test spams so, in 5.8 kB each)."""
    head, _, body = raw.partition(b"\n\n")
    return (head + b'\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n\n'
            + b"--b\n\n" * 100 + b"--b\nContent-Type: text/plain\n\n" + body + b"--b--\n")


@pytest.mark.parametrize("engine", ["bayes", "spamd+bayes"])
def test_spam_hidden_past_what_the_tokenizer_reads_is_not_ham(
        trained_db: Path, start_milter: Start, engine: str) -> None:
    """Spam words behind 100 empty MIME parts, ham's headers in front: what the tokenizer
    read looked like ham (score 0.0000, accepted clean). The milter now tags it unsure and
    says what went unread, in the header and in the log line, with Bayes covering for a
    stopped spamd as well."""
    cfg = bayes_cfg(trained_db)
    cfg["milter"]["engine"] = engine
    cfg["spamd"] = {"host": "127.0.0.1", "port": free_port()}  # spamd+bayes: nothing listens
    m = start_milter(cfg)
    plain = spam(505).replace(b"Subject: WINNER", b"Subject: minutes")
    r = send_one(m.socket_path, plain)
    assert r.action == "reject"  # its words, read, are spam
    r = send_one(m.socket_path, hidden_behind_empty_parts(plain))
    assert r.action == "accept" and r.header("X-Spam-Flag") is None
    assert status(r).startswith("No, score=0.") and "unsure=yes" in status(r)
    assert "unread=parts" in status(r)
    [line] = [ln for ln in m.log.splitlines() if "unread=parts" in ln]
    assert "reason=unsure" in line and "action=tag" in line, line
    r = send_one(m.socket_path, ham(505))
    assert "unsure" not in status(r) and "unread" not in status(r)


def test_a_message_built_to_stall_the_tokenizer_is_scored_within_the_cap(
        trained_db: Path, start_milter: Start) -> None:
    """HTML with "<" before 120 kB of blanks and line breaks once made two tokenizer regexes
    search for minutes with the GIL held: the cap could not fire, and every other message in
    the milter stalled behind it. Now it is scored like any message, and a message sent at the
    same time is not held up."""
    cfg = bayes_cfg(trained_db)
    cfg["milter"]["scan_timeout"] = 2.0
    m = start_milter(cfg)
    blanks = b" \n\t" * 40_000
    hostile = (b"From: x@y.example\nSubject: hi\nContent-Type: text/html\n\n"
               + b" ".join(w.encode() for w in SPAM_WORDS) + b" <" + blanks + b"script "
               + b"< /" + blanks + b"p>\n")
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(send_one, m.socket_path, hostile)
        time.sleep(0.05)
        other = pool.submit(send_one, m.socket_path, ham(504)).result(timeout=30)
        r = slow.result(timeout=30)
    assert r.action == "reject" and r.seconds < 2.5  # scored: the spam words still count
    assert other.seconds < 2.5 and status(other).startswith("No, score=0.0")


def test_check_on_a_delivered_file_gives_the_score_the_milter_gave(
        tmp_path: Path, start_milter: Start, capsys: pytest.CaptureFixture[str]) -> None:
    """An admin asks `check` about a message from a mailbox. The file holds the Received line
    our Postfix wrote, which Postfix hid from the milter (the milter wrote its own from the
    connection), and the Return-Path and Delivered-To of delivery: `check` must not add a
    second Received line, which would count a hop that never was. The database is trained on
    delivered mail where the number of hops tells the classes apart, as it often does."""
    ours = Envelope(client_name="mail.example.net", client_addr="192.0.2.10",
                    helo="mail.example.net", mta_host="mx.test.example",
                    recipients=["<user@test.example>"], queue_id="4ABCDEF0123")
    upstream = (b"Received: from desk.example.org (desk.example.org [198.51.100.7])\n"
                b"\tby mail.example.net (Postfix) with ESMTP id 1A2B3C;\n"
                b"\tWed, 25 Nov 2026 09:59:58 +0000\n")
    direct = Envelope(client_name="[203.0.113.9]", client_addr="203.0.113.9", helo="pc1",
                      mta_host="mx.test.example", queue_id="5BCDEF01234")

    def delivered(raw: bytes, hop: Envelope, extra: bytes = b"") -> bytes:
        return (b"Return-Path: <s@example.org>\nDelivered-To: user@test.example\n"
                + hop.received_header().replace(b"\r\n", b"\n") + extra + raw)

    db = train_database(tmp_path, lambda n, label: delivered(ham(n), ours, upstream)
                        if label == "ham" else delivered(spam(n), direct), 30)
    m = start_milter(bayes_cfg(db))
    body = " ".join(w for pair in zip(SPAM_WORDS, HAM_WORDS, strict=True) for w in pair)
    live = upstream + f"Subject: both\nFrom: x@y.example\n\n{body}\n".encode()
    r = send_one(m.socket_path, live)
    assert "unsure=yes" in status(r)  # a mixed message: every clue moves its score
    milter_score = status(r).split("score=")[1].split(" ")[0]

    msg = tmp_path / "from-the-mailbox.eml"
    msg.write_bytes(delivered(live, ours))
    assert cli.main(["check", "--config", str(m.config_path), "--db", str(db), "--batch",
                     str(msg)]) == 0
    score = float(capsys.readouterr().out.split("\t")[1])
    assert f"{score:.4f}" == milter_score


def test_missing_database_is_created_and_mail_flows_unchecked(tmp_path: Path,
                                                              start_milter: Start) -> None:
    db = tmp_path / "new" / "dir" / "bayes.sqlite"
    m = start_milter(bayes_cfg(db))
    # said once at start, before any mail: the admin sees why mail will pass unchecked
    wait_until(lambda: "not trained yet (0 spam, 0 ham; min_trained 10)" in m.log, 10,
               "the start-up warning")
    r = send_one(m.socket_path, spam(1))
    assert r.action == "accept"
    assert status(r) == "No, unchecked=unavailable"
    assert "not trained yet: 0 spam, 0 ham" in m.log
    assert db.exists() and not os.stat(db).st_mode & stat.S_IROTH
    # trained while the milter runs: the next message is scored, no restart needed
    assert train_database(db.parent, labelled, 10) == db
    assert send_one(m.socket_path, spam(600)).action == "reject"


BLOCKED_PORT = 24150  # a metrics port in use: held by the test while the milter starts


@pytest.mark.parametrize("failing", ["socket", "spool_dir", "metrics"])
def test_a_failed_start_leaves_no_database_behind_and_an_existing_one_as_it_was(
        tmp_path: Path, start_milter: Start, failing: str) -> None:
    """`spambridge run` made the missing database (and its directory) before a later step
    failed: the socket path taken by a file, a spool_dir it cannot write, a metrics port in
    use. The admin who then fixed the config found a fresh empty database that a start which
    never served had made. What the failed start made is gone; a database that was there is
    left as it was, byte for byte, with no -wal or -shm made beside it."""
    blocker = tmp_path / "aliases.db"
    blocker.write_text("keep me\n")
    cfg = bayes_cfg(tmp_path / "new" / "bayes.sqlite")
    if failing == "socket":
        cfg["milter"]["socket"] = f"unix:{blocker}"
    elif failing == "spool_dir":
        cfg["milter"]["spool_dir"] = str(tmp_path / "no-such-spool")
    else:
        cfg["metrics"] = {"listen": f"127.0.0.1:{BLOCKED_PORT}"}
    existing_dir = tmp_path / "kept"
    existing_dir.mkdir()
    existing = train_database(existing_dir, labelled, 3)
    kept = existing.read_bytes(), os.stat(existing)
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", BLOCKED_PORT))
        busy.listen(1)
        m = start_milter(cfg, wait=False)
        assert m.proc.wait(30) != 0
        assert "created an empty Bayes database" in m.log  # it got that far
        assert not (tmp_path / "new").exists(), sorted(os.listdir(tmp_path / "new"))

        cfg["bayes"]["db"] = str(existing)
        m = start_milter(cfg, wait=False)
        assert m.proc.wait(30) != 0
    assert "Traceback" not in m.log
    assert existing.read_bytes() == kept[0]
    st = os.stat(existing)
    assert (st.st_ino, st.st_mtime_ns, st.st_mode) == (kept[1].st_ino, kept[1].st_mtime_ns,
                                                       kept[1].st_mode)
    assert sorted(p.name for p in existing_dir.iterdir() if p.name.startswith("bayes")) == \
        ["bayes.sqlite"]
    assert blocker.read_text() == "keep me\n"


def test_an_smtputf8_sender_is_logged_as_postfix_logs_it(trained_db: Path,
                                                         start_milter: Start) -> None:
    """MAIL FROM:<jörg@bücher.example> SMTPUTF8: the milter's line names the sender in the
    UTF-8 Postfix's own lines use, so an admin's grep for the address finds both."""
    m = start_milter(bayes_cfg(trained_db))
    assert send_one(m.socket_path, spam(2), sender="<jörg@bücher.example>",
                    queue_id="4C0FFEE0123").action == "reject"
    wait_until(lambda: "4C0FFEE0123: " in m.log, 10, "the decision line")
    assert "4C0FFEE0123: from=<jörg@bücher.example> rcpts=1 " in m.log


def test_check_on_a_tagged_delivered_file_gives_the_score_the_milter_gave(
        tmp_path: Path, start_milter: Start, capsys: pytest.CaptureFixture[str]) -> None:
    """An admin asks `check` about a message in the Junk folder that the milter, in tag-only
    mode, would have rejected. The file carries the Subject the milter tagged after its scan;
    `check` scored the tag with it, so on a database that knows the tag's word (ham about
    spam: the SpamAssassin corpus has a list of it) it gave another score than the milter's
    X-Spam-Score, and here "unsure" for the milter's "reject" (on the corpus: 24 of 1,227
    messages with another verdict, bench/check_vs_milter.py)."""
    ours = Envelope(client_name="mail.example.net", client_addr="192.0.2.10",
                    helo="mail.example.net", mta_host="mx.test.example",
                    recipients=["<user@test.example>"], queue_id="4ABCDEF0123")

    def about_spam(n: int) -> bytes:
        return ham(n).replace(b"Subject: minutes", b"Subject: SPAM filter minutes")

    db = train_database(tmp_path, lambda n, label: about_spam(n) if label == "ham"
                        else spam(n), 30)
    cfg = bayes_cfg(db)
    cfg["policy"] = {"subject_tag": "[SPAM]", "tag_only": True}
    m = start_milter(cfg)
    body = " ".join(SPAM_WORDS[:4])
    head = b"From: x@y.example\nTo: user@test.example\n"
    r = send_one(m.socket_path, b"Subject: both\n" + head + f"\n{body}\n".encode())
    assert r.action == "accept" and r.header("X-Spam-Flag") == "YES"
    assert [v for n, _, v in r.changed if n == "Subject"] == ["[SPAM] both"]

    f = tmp_path / "from-junk.eml"
    f.write_bytes(b"Return-Path: <s@example.org>\nDelivered-To: user@test.example\n"
                  + ours.received_header().replace(b"\r\n", b"\n")
                  + b"Subject: [SPAM] both\n" + head
                  + b"".join(f"{n}: {v}\n".encode() for n, v in r.added)
                  + f"\n{body}\n".encode())
    capsys.readouterr()
    assert cli.main(["check", "--config", str(m.config_path), "--batch", str(f)]) == 0
    _, score, verdict = capsys.readouterr().out.strip().split("\t")
    assert (f"{float(score):.4f}", verdict) == (r.header("X-Spam-Score"), "reject")
    assert cli.main(["check", "--config", str(m.config_path), str(f)]) == 0
    assert "the Subject becomes '[SPAM] both'" in capsys.readouterr().out


def test_check_on_a_delivered_file_does_not_take_the_milters_fields_for_forged_ones(
        tmp_path: Path, trained_db: Path, start_milter: Start,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`check` on any message from a mailbox said "headers removed: X-Spam-Checker-Version,
    X-Spam-Level, X-Spam-Score, X-Spam-Status": the milter's own fields, written after its
    scan, read as forged ones the message came with. The milter removed none; `check` says
    none, and still lists a forged field on a message not yet delivered."""
    m = start_milter(bayes_cfg(trained_db))
    r = send_one(m.socket_path, ham(2))
    assert r.action == "accept" and r.header("X-Spam-Status") and r.deleted("X-Spam-Flag") == []
    ours = "".join(f"{n}: {v}\n" for n, v in r.added).encode()
    files = {"delivered": b"Return-Path: <s2@example.org>\n" + ham(2).replace(b"\n\n", b"\n"
                                                                              + ours + b"\n", 1),
             "live": b"X-Spam-Flag: NO\n" + ham(2)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    capsys.readouterr()
    assert cli.main(["check", "--config", str(m.config_path),
                     *(str(tmp_path / name) for name in files)]) == 0
    delivered, live = capsys.readouterr().out.split(f"{tmp_path}/live: ")
    assert "headers removed" not in delivered and "X-Spam-Status: No, score=" in delivered
    assert "headers removed: X-Spam-Flag" in live


def test_check_on_a_delivered_file_near_max_scan_size_scores_what_the_milter_scored(
        tmp_path: Path, trained_db: Path, start_milter: Start,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A message just under max_scan_size is scanned by the milter; its copy in the mailbox
    carries what delivery wrote on top (Return-Path, Delivered-To, our Postfix's Received
    line), which the milter never had. `check` counted those too and said "unchecked=oversize"
    for a message whose X-Spam-Status gives a score (with max_scan_size 4096: 71 of 1,358
    corpus messages, bench/check_vs_milter.py)."""
    cfg = bayes_cfg(trained_db)
    cfg["milter"]["max_scan_size"] = 2048
    m = start_milter(cfg)
    head, body = split_message(ham(4))
    words = body.split()  # one long line: the milter and `check` count its one line end alike
    while sum(len(n) + len(v) + 4 for n, v in head) + len(b" ".join(words)) + 2 < 2040:
        words += words[:1]
    raw = b"".join(n.encode() + b": " + v + b"\n" for n, v in head) + b"\n" + b" ".join(
        words) + b"\n"
    r = send_one(m.socket_path, raw)
    assert r.header("X-Spam-Score") and "unchecked" not in status(r)

    ours = Envelope(client_name="mail.example.net", client_addr="192.0.2.10",
                    helo="mail.example.net", mta_host="mx.test.example",
                    recipients=["<user@test.example>"], queue_id="4ABCDEF0123")
    f = tmp_path / "delivered.eml"
    f.write_bytes(b"Return-Path: <s4@example.org>\nDelivered-To: user@test.example\n"
                  + ours.received_header().replace(b"\r\n", b"\n")
                  + raw.replace(b"\n\n", b"\n" + b"".join(f"{n}: {v}\n".encode()
                                                         for n, v in r.added) + b"\n", 1))
    capsys.readouterr()
    assert cli.main(["check", "--config", str(m.config_path), "--batch", str(f)]) == 0
    _, score, verdict = capsys.readouterr().out.strip().split("\t")
    assert verdict == "ham"  # was unchecked=oversize
    assert f"{float(score):.4f}" == r.header("X-Spam-Score")


@pytest.mark.parametrize(("how", "macros", "said"), [
    ("trusted", {}, "verdict=skipped=trusted action=accept"),
    ("authenticated", {"{auth_authen}": "alice"}, "verdict=skipped=authenticated action=accept"),
])
def test_check_on_a_delivered_file_says_the_milter_skipped_it(
        tmp_path: Path, trained_db: Path, start_milter: Start,
        capsys: pytest.CaptureFixture[str], how: str, macros: dict[str, str],
        said: str) -> None:
    """An admin asks `check` why a spam in a mailbox got through: the milter did not scan it,
    its client being in trusted_networks, or authenticated (skip_authenticated). `check`
    scored it and said "action=reject" and "SMTP reply: 550": a refusal that never was, and
    no word of why. Our Postfix's Received line on the file names the client's address and
    whether it authenticated (ESMTPA), as the milter learned them from the connection."""
    cfg = bayes_cfg(trained_db)
    if how == "trusted":
        cfg["milter"]["trusted_networks"] = ["192.0.2.0/24"]
    m = start_milter(cfg)
    r = send_one(m.socket_path, spam(1), mail_macros=macros)
    assert (r.action, r.added) == ("accept", [])
    assert f"reason={how}" in m.log

    ours = Envelope(client_name="mail.example.net", client_addr="192.0.2.10",
                    helo="mail.example.net", mta_host="mx.test.example",
                    auth_user=macros.get("{auth_authen}", ""),
                    recipients=["<user@test.example>"], queue_id="4ABCDEF0123")
    f = tmp_path / "delivered.eml"
    f.write_bytes(b"Return-Path: <s1@example.org>\nDelivered-To: user@test.example\n"
                  + ours.received_header().replace(b"\r\n", b"\n") + spam(1))
    live = tmp_path / "live.eml"  # no connection to go by: scored
    live.write_bytes(spam(1))
    capsys.readouterr()
    assert cli.main(["check", "--config", str(m.config_path), str(f), str(live)]) == 0
    delivered, rest = capsys.readouterr().out.split(f"{live}: ")
    assert said in delivered and "SMTP reply: 250" in delivered
    assert "headers added" not in delivered  # the milter adds none to mail it skips
    assert "verdict=reject action=reject" in rest


@pytest.mark.parametrize(("subject", "written"), [
    ("Grüße aus München".encode(), "[SPAM] Grüße aus München"),  # raw UTF-8 (SMTPUTF8)
    (b"=?utf-8?q?Gr=C3=BC=C3=9Fe?=", "[SPAM] =?utf-8?q?Gr=C3=BC=C3=9Fe?="),  # RFC 2047
    ("Grüße aus München".encode("latin-1"), None),  # raw 8-bit, not UTF-8: left alone
    (b"[SPAM] WINNER", None),  # tagged already
])
def test_check_says_what_the_milter_does_to_the_subject(
        tmp_path: Path, trained_db: Path, start_milter: Start,
        capsys: pytest.CaptureFixture[str], subject: bytes, written: str | None) -> None:
    """`check` printed "Subject prefix: '[SPAM]'" for every tagged spam, also where the
    milter leaves the Subject alone: raw 8-bit text in another charset than UTF-8 (old
    Latin-1 or KOI8-R mailers) and a Subject tagged already. The admin now reads the Subject
    the milter writes, or why it writes none, for the same file and config."""
    cfg = bayes_cfg(trained_db)
    cfg["policy"] = {"subject_tag": "[SPAM]", "tag_only": True}
    raw = re.sub(rb"^Subject: .*$", lambda _: b"Subject: " + subject, spam(3), count=1,
                 flags=re.M)
    m = start_milter(cfg)
    r = send_one(m.socket_path, raw)
    assert r.action == "accept" and (r.header("X-Spam-Flag") or "") == "YES"
    assert [v for n, _, v in r.changed if n == "Subject"] == ([written] if written else [])

    f = tmp_path / "msg.eml"
    f.write_bytes(raw)
    capsys.readouterr()
    assert cli.main(["check", "--config", str(m.config_path), str(f)]) == 0
    out = capsys.readouterr().out
    if written:
        assert f"Subject prefix: '[SPAM]'; the Subject becomes {written!r}" in out
    else:
        assert "Subject prefix: '[SPAM]' not added: " in out


def test_a_retrained_copy_moved_into_place_is_used_whole(tmp_path: Path, trained_db: Path,
                                                          start_milter: Start) -> None:
    """The usual deploy, `mv new.sqlite bayes.sqlite`, while the milter runs and after a
    `train` run into the live file (which leaves pages in the -wal file the milter keeps
    open): the milter must score with the new file alone — not the old pages, and not a mix
    of both, which SQLite would take for a corrupt database once the stale -wal is applied."""
    m = start_milter(bayes_cfg(trained_db))
    with ThreadPoolExecutor(2) as pool:  # both of the engine's threads have read the file
        assert [r.action for r in pool.map(lambda n: send_one(m.socket_path, spam(n)),
                                           range(700, 704))] == ["reject"] * 4
    extra = tmp_path / "extra"
    extra.mkdir()
    for i in range(5):
        (extra / f"{i}.eml").write_bytes(spam(800 + i))
    assert cli.main(["train", "--db", str(trained_db), "--spam", "-q", str(extra)]) == 0
    swapped = tmp_path / "swapped"
    swapped.mkdir()  # the classes the other way round: its verdicts are recognisable
    new = train_database(swapped, lambda n, label: labelled(n, "ham" if label == "spam"
                                                             else "spam"), 30)
    os.replace(new, trained_db)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda n: send_one(m.socket_path, spam(n)), range(710, 716)))
    assert [r.action for r in results] == ["accept"] * 6
    assert all(status(r).startswith("No, score=0.0") for r in results), [status(r) for r in results]
    assert m.stop() == 0
    with sqlite3.connect(trained_db) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert c.execute("SELECT nspam, nham FROM totals").fetchone() == (30, 30)


def test_spamd_stopped_falls_back_to_bayes(trained_db: Path, start_milter: Start) -> None:
    """Engine and database given on the command line (`run --engine --db`) override the
    config's; the log says that spamd was not what decided."""
    cfg = bayes_cfg(trained_db.parent / "not-this.sqlite", reject_cutoff=1.0)
    cfg["spamd"] = {"host": "127.0.0.1", "port": free_port()}  # nothing listens there
    m = start_milter(cfg, "--engine", "spamd+bayes", "--db", str(trained_db))
    r = send_one(m.socket_path, spam(502))
    assert r.action == "accept" and r.header("X-Spam-Flag") == "YES"
    assert "engine=bayes" in status(r) and "fallback=spamd-unavailable" in status(r)
    r = send_one(m.socket_path, ham(502))
    assert status(r).startswith("No, score=0.0") and "fallback=spamd-unavailable" in status(r)
    assert r.seconds < 2.0
    decided = [ln for ln in m.log.splitlines() if "engine=bayes" in ln]
    assert len(decided) == 2 and all("fallback=spamd-unavailable" in ln for ln in decided)
    [warned] = [ln for ln in m.log.splitlines() if "WARNING spamd" in ln]
    assert "spamd failing: unavailable: " in warned and "bayes decides meanwhile" in warned


def test_the_log_says_why_spamd_failed_when_bayes_covered(trained_db: Path,
                                                           start_milter: Start) -> None:
    """Bayes covering for spamd is logged with spamd's own error, as when nothing covers:
    before, the line said only `fallback=spamd-unavailable`, so a mistyped port or a dead
    spamd behind a working fallback was told nowhere (nor where spamd was looked for)."""
    cfg = bayes_cfg(trained_db)
    cfg["milter"]["engine"] = "spamd+bayes"
    cfg["spamd"] = {"host": "127.0.0.1", "port": free_port()}  # nothing listens there
    m = start_milter(cfg)
    r = send_one(m.socket_path, ham(507))
    assert "fallback=spamd-unavailable" in status(r)
    line = next(ln for ln in m.log.splitlines() if "fallback=spamd-unavailable" in ln)
    assert f"error=\"127.0.0.1:{cfg['spamd']['port']}: AIOSpamcConnectionFailed" in line, line


def test_spamd_down_and_bayes_untrained_say_both(tmp_path: Path, start_milter: Start) -> None:
    """Neither engine can answer: spamd's failure class decides (here tempfail, so nothing
    is passed against the policy), and the start-up warning and the message's log line say
    why Bayes could not cover for spamd."""
    cfg = bayes_cfg(tmp_path / "new.sqlite")  # created empty: not trained yet
    cfg["milter"]["engine"] = "spamd+bayes"
    cfg["spamd"] = {"host": "127.0.0.1", "port": free_port()}  # nothing listens there
    cfg["policy"] = {"on_unavailable": "tempfail"}
    m = start_milter(cfg)
    r = send_one(m.socket_path, spam(506))
    assert r.action == "tempfail"
    assert "not trained yet" in m.log and "spamd has no fallback" in m.log
    line = next(ln for ln in m.log.splitlines() if "action=tempfail" in ln)
    assert "engine=spamd" in line and "reason=unavailable" in line
    assert f"127.0.0.1:{cfg['spamd']['port']}" in line  # where spamd was looked for
    assert "no fallback: bayes unavailable" in line and "not trained yet" in line


def hang(conn: socket.socket) -> None:
    read_request(conn, 1.0)
    time.sleep(30)


def test_hung_spamd_gives_the_bayes_verdict_within_the_cap(trained_db: Path,
                                                           start_milter: Start,
                                                           fake_spamd: MakeFake) -> None:
    fake = fake_spamd(hang)
    cfg = bayes_cfg(trained_db)
    cfg["milter"].update(engine="spamd+bayes", scan_timeout=2.0)
    cfg["spamd"] = {"host": "127.0.0.1", "port": fake.port, "share": 0.5}
    m = start_milter(cfg)
    r = send_one(m.socket_path, spam(503))
    assert r.action == "reject"  # the Bayes verdict, not on_timeout's accept
    assert 0.9 < r.seconds < 2.0
    r = send_one(m.socket_path, ham(503))
    assert r.action == "accept"
    assert "engine=bayes" in status(r) and "fallback=spamd-timeout" in status(r)
    assert 0.9 < r.seconds < 2.0


def test_a_slow_spamd_keeps_the_cap_when_bayes_cannot_cover(tmp_path: Path,
                                                             start_milter: Start,
                                                             fake_spamd: MakeFake) -> None:
    """spamd past its share, Bayes not trained yet: spamd's verdict when it comes within the
    cap, as with engine=spamd (before, it was given up at its share for a fallback that could
    not answer: on_timeout's tempfail for mail spamd rejects at 1.4 s of a 2 s cap); a spamd
    that never answers still gets on_timeout within the cap, the log saying why."""
    delay = {"s": 1.4}

    def slow(conn: socket.socket) -> None:
        read_request(conn, 1.0)
        time.sleep(delay["s"])
        conn.sendall(b"SPAMD/1.1 0 EX_OK\r\nContent-length: 5\r\n"
                     b"Spam: True ; 1000.0 / 5.0\r\n\r\nGTUBE")
        conn.close()

    fake = fake_spamd(slow)
    cfg = bayes_cfg(tmp_path / "new.sqlite")  # created empty: not trained yet
    cfg["milter"].update(engine="spamd+bayes", scan_timeout=2.0)
    cfg["spamd"] = {"host": "127.0.0.1", "port": fake.port, "share": 0.5}
    cfg["policy"] = {"on_timeout": "tempfail"}
    m = start_milter(cfg)
    r = send_one(m.socket_path, spam(508))
    assert r.action == "reject", m.log
    assert 1.3 < r.seconds < 2.0
    delay["s"] = 30  # hung
    r = send_one(m.socket_path, spam(509))
    assert r.action == "tempfail"
    assert 1.9 < r.seconds < 2.25
    line = next(ln for ln in m.log.splitlines() if "action=tempfail" in ln)
    assert "engine=spamd" in line and "reason=timeout" in line
    assert "no answer within the 2s cap; no fallback: bayes unavailable" in line


def test_spamd_decides_when_it_answers(trained_db: Path, start_milter: Start,
                                       spamd: Spamd) -> None:
    """spamd+bayes with a healthy spamd: spamd's verdict, no fallback note. The message is
    Bayes-ham but GTUBE for spamd, so only spamd can reject it."""
    cfg = bayes_cfg(trained_db)
    cfg["milter"]["engine"] = "spamd+bayes"
    cfg["spamd"] = {"host": spamd.host, "port": spamd.port}
    m = start_milter(cfg)
    gtube = ham(504).replace(b"\n\n", b"\n\nXJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-"
                             b"TEST-EMAIL*C.34X\n", 1)
    assert send_one(m.socket_path, gtube).action == "reject"
    r = send_one(m.socket_path, ham(505))
    assert r.action == "accept"
    assert "engine=spamd" in status(r) and "fallback" not in status(r)
