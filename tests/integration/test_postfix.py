"""A real Postfix, configured with contrib/postfix/main.cf.example, in front of the real
`spambridge run`, scanning with a real spamd — what the README's Postfix quick start does —
or with the default local Bayes engine."""

from __future__ import annotations

import grp
import re
import smtplib
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import (
    BAYES_WORDS,
    RunningMilter,
    Spamd,
    bayes_mail,
    free_port,
    gtube_mail,
    message,
    train_database,
    wait_until,
)
from postfix_instance import Delivered, PostfixInstance, example_settings

pytestmark = pytest.mark.postfix  # and each test that scans with spamd: pytest.mark.spamd

REJECT_REPLY = "550 5.7.1 Rejected as spam by the spambridge test"
Start = Callable[..., RunningMilter]


def milter_config(pf: PostfixInstance, spamd: Spamd, **policy: object) -> dict[str, dict[str, object]]:
    """What an admin writes in spambridge.toml, with the socket where the example points."""
    # No socket_group: the socket directory is setgid postfix (as the .deb's tmpfiles.d makes
    # it), so the socket is group postfix whoever runs the milter.
    return {
        "milter": {"socket": f"unix:{pf.milter_socket}", "engine": "spamd"},
        "spamd": {"host": spamd.host, "port": spamd.port},
        "policy": {"tag_at": 5.0, "reject_at": 15.0, "reject_reply": REJECT_REPLY, **policy},
    }


def queue_id_of(pf: PostfixInstance, marker: str, what: str, since: int = 0) -> str:
    """The queue id Postfix logged on a line containing `marker`, after the log's first
    `since` characters: the instance serves a whole module, and the SMTP reply can come
    before Postfix's line for it is written, so an earlier test's line would be found first."""
    found: list[str] = []

    def seen() -> bool:
        found[:] = re.findall(rf"\]: ([0-9A-F]{{6,}}): {re.escape(marker)}", pf.log[since:])
        return bool(found)

    wait_until(seen, 10, what)
    return found[-1]


def expect_refused(pf: PostfixInstance, m: RunningMilter, raw: bytes) -> str:
    """Send `raw`; Postfix must refuse it at end of data with our reply and deliver nothing.
    Returns our log line for it, found by the queue id Postfix gave the message (macro i
    reached us)."""
    since = len(pf.log)
    with pytest.raises(smtplib.SMTPDataError) as exc:
        pf.send(raw)
    assert exc.value.smtp_code == 550
    assert exc.value.smtp_error.decode() == REJECT_REPLY.removeprefix("550 ")
    qid = queue_id_of(pf, "milter-reject: END-OF-MESSAGE", "Postfix's milter-reject line",
                      since)
    wait_until(lambda: f"{qid}: " in m.log, 10, "the milter's log line")
    line = next(x for x in m.log.splitlines() if f"{qid}: " in x)
    assert "action=reject" in line
    assert not any(qid.encode() in d.raw for d in pf.delivered())
    return line


def test_example_is_what_the_instance_runs(postfix: PostfixInstance) -> None:
    """The instance really carries the contrib settings (postconf reads them back)."""
    for key, value in example_settings().items():
        assert postfix.postconf("-h", key).strip() == value, key


@pytest.mark.spamd
def test_gtube_is_rejected_at_end_of_data(postfix: PostfixInstance, spamd: Spamd,
                                          start_milter: Start) -> None:
    m = start_milter(milter_config(postfix, spamd))
    st = postfix.milter_socket.stat()
    assert (grp.getgrgid(st.st_gid).gr_name, stat.S_IMODE(st.st_mode)) == ("postfix", 0o660)
    line = expect_refused(postfix, m, gtube_mail("GTUBE through Postfix"))
    assert "engine=spamd" in line
    assert re.search(r" score=(99\d|1\d\d\d)\.\d ", line)  # GTUBE: 1000 give or take other rules


@pytest.mark.spamd
def test_ham_is_delivered_with_our_headers_and_without_forged_ones(
        postfix: PostfixInstance, spamd: Spamd, start_milter: Start) -> None:
    start_milter(milter_config(postfix, spamd))
    forged = ("X-Spam-Flag: YES\nX-Spam-Status: No, score=-50.0 forged=yes\n"
              "X-Spam-Score: -50.0\nX-Spam-Flag: YES\nX-Spam-Checker-Version: Forger 1.0\n")
    qid = postfix.send(message(subject="Lunch through Postfix").replace(
        b"Subject:", forged.encode() + b"Subject:", 1))  # in the middle of the header
    got = postfix.wait_delivered(qid)
    assert got.all("X-Spam-Flag") == []
    names = list(got.msg.keys())  # ours together at the end
    ours = [n for n in names if n.lower().startswith("x-spam-")]
    assert names[-len(ours):] == ours, names
    assert got.all("X-Spam-Checker-Version") == [got.all("X-Spam-Checker-Version")[0]]
    assert got.all("X-Spam-Checker-Version")[0].startswith("spambridge ")
    [status] = got.all("X-Spam-Status")
    assert status.startswith("No, score=") and "engine=spamd" in status
    assert "forged" not in got.raw.decode() and "-50.0" not in got.raw.decode()
    # spamd saw the Received line spambridge rebuilt from Postfix's macros
    assert "NO_RECEIVED" not in status and "NO_RELAYS" not in status
    assert len(got.all("X-Spam-Score")) == 1


@pytest.mark.spamd
def test_tag_only_delivers_gtube_flagged(postfix: PostfixInstance, spamd: Spamd,
                                         start_milter: Start) -> None:
    m = start_milter(milter_config(postfix, spamd, tag_only=True))
    qid = postfix.send(gtube_mail("GTUBE in tag-only mode"))
    got = postfix.wait_delivered(qid)
    assert got.all("X-Spam-Flag") == ["YES"]
    [status] = got.all("X-Spam-Status")
    assert re.match(r"Yes, score=(99\d|1\d\d\d)\.\d ", status) and "GTUBE" in status
    wait_until(lambda: f"{qid}: " in m.log, 10, "the milter's log line")
    line = next(x for x in m.log.splitlines() if f"{qid}: " in x)
    assert "action=tag would=reject" in line and "mode=tag-only" in line


def test_default_bayes_engine_behind_postfix(postfix: PostfixInstance, start_milter: Start,
                                             tmp_path: Path) -> None:
    """The engine the README's first command runs (local Bayes on SQLite, no spamd) behind a
    real Postfix: spam trained for is refused at end of data with the configured reply, ham
    is delivered with the Bayes verdict in its headers, and the log line has the queue id."""
    db = train_database(tmp_path, bayes_mail, 20)
    m = start_milter({"milter": {"socket": f"unix:{postfix.milter_socket}"},  # engine: default
                      "bayes": {"db": str(db), "min_trained": 20},  # what the database holds
                      "policy": {"reject_reply": REJECT_REPLY}})
    assert "engine=bayes" in expect_refused(postfix, m, bayes_mail(900, "spam"))
    got = postfix.wait_delivered(postfix.send(bayes_mail(901, "ham")))
    [status] = got.all("X-Spam-Status")
    assert re.match(r"No, score=0\.0\d{3} ", status) and "engine=bayes" in status, status
    assert got.all("X-Spam-Checker-Version")[0].startswith("spambridge ")


def test_one_grep_of_a_long_queue_id_finds_postfixs_lines_and_ours(
        postfix: PostfixInstance, start_milter: Start, tmp_path: Path) -> None:
    """What README's Logs section promises an admin: `grep QUEUEID` gives Postfix's lines
    and spambridge's one line for the message, with enable_long_queue_ids too; sessions
    that end before DATA (refused at RCPT, RSET) add no line of ours."""
    db = train_database(tmp_path, bayes_mail, 20)
    postfix.postconf("-e", "enable_long_queue_ids = yes")
    postfix.reload()
    try:
        m = start_milter({"milter": {"socket": f"unix:{postfix.milter_socket}"},
                          "bayes": {"db": str(db), "min_trained": 20},
                          "policy": {"reject_reply": REJECT_REPLY}})
        ham = postfix.send(bayes_mail(950, "ham"))
        assert re.fullmatch(r"[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{12,}", ham), ham
        postfix.wait_delivered(ham)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            postfix.send(bayes_mail(951, "spam"))
        assert refused.value.smtp_code == 550
        rejected = r"\]: ([0-9A-Za-z]{12,}): milter-reject: END-OF-MESSAGE"
        wait_until(lambda: bool(re.search(rejected, postfix.log)), 10, "the milter-reject line")
        [spam] = re.findall(rejected, postfix.log)
        for qid, postfix_says in ((ham, "status=sent"), (spam, "milter-reject")):
            wait_until(lambda q=qid: f"{q}: from=" in m.log, 10, "the decision line")
            ours = [ln for ln in m.log.splitlines() if qid in ln]
            assert len(ours) == 1 and f" {qid}: from=<alice@example.net> rcpts=1 " in ours[0]
            theirs = postfix.log_lines(qid)
            assert any(f"{qid}: client=" in ln for ln in theirs), theirs
            assert any(postfix_says in ln for ln in theirs), theirs
        before = m.log
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            postfix.send(message(), rcpt="nobody@elsewhere.example")
        with postfix.smtp() as s:
            s.mail("alice@example.net")
            s.rcpt("bob@test.example")
            s.rset()
        postfix.wait_delivered(postfix.send(bayes_mail(952, "ham")))  # a line after them
        wait_until(lambda: m.log.count(": from=") == before.count(": from=") + 1, 10,
                   "the last message's line")
        assert m.log[len(before):].count("\n") == 1, m.log[len(before):]
    finally:
        postfix.postconf("-e", "enable_long_queue_ids = no")
        postfix.reload()


def test_a_restart_under_traffic_loses_no_mail(postfix: PostfixInstance, start_milter: Start,
                                              tmp_path: Path) -> None:
    """`systemctl restart` while clients keep sending, one message per SMTP session: every
    message is taken (250) and delivered exactly once; a message whose session ended before
    the TERM, or began once the new milter listened, was scanned by one of them; only sessions
    in between may pass unscanned, by the example's milter_default_action (accept)."""
    assert example_settings()["milter_default_action"] == "accept"
    db = train_database(tmp_path, bayes_mail, 20)
    cfg = {"milter": {"socket": f"unix:{postfix.milter_socket}"},
           "bayes": {"db": str(db), "min_trained": 20}}
    old = start_milter(cfg)
    sent: list[tuple[float, float, str]] = []  # (session start, end, queue id)
    errors: list[BaseException] = []
    done = threading.Event()

    def client() -> None:
        for n in range(400):  # bounded; the test ends it much sooner
            if done.is_set():
                return
            begin = time.monotonic()
            try:
                qid = postfix.send(bayes_mail(1000 + n, "ham"))
            except (OSError, smtplib.SMTPException) as e:
                errors.append(e)
                return
            sent.append((begin, time.monotonic(), qid))

    t = threading.Thread(target=client)
    t.start()
    try:
        wait_until(lambda: len(sent) >= 10 or bool(errors), 60, "10 messages before the restart")
        stopped_at = time.monotonic()
        assert old.stop() == 0  # TERM, as systemd's restart sends
        start_milter(cfg)  # returns once the new one listens
        up_at = time.monotonic()
        count = len(sent)
        wait_until(lambda: len(sent) >= count + 10 or bool(errors), 60,
                   "10 messages after the restart")
    finally:
        done.set()
        t.join(120)
    assert not errors, errors
    for begin, end, qid in sent:
        got = postfix.wait_delivered(qid)
        assert sum(f"id {qid}".encode() in d.raw for d in postfix.delivered()) == 1, qid
        statuses = got.all("X-Spam-Status")
        assert len(statuses) <= 1, statuses
        if end < stopped_at or begin > up_at:
            assert statuses and "engine=bayes" in statuses[0], (qid, statuses)


def learned_tokens(db: Path) -> dict[str, tuple[int, int]]:
    with sqlite3.connect(db) as c:
        return {t: (s, h) for t, s, h in c.execute("SELECT token, spam, ham FROM tokens")}


def train(cfg: Path, db: Path, *paths: Path, label: str = "spam") -> str:
    """`spambridge train --spam` (or --`label`) on files, as an admin runs it; its summary
    line."""
    r = subprocess.run([sys.executable, "-m", "spambridge", "train", "--config", str(cfg),
                        "--db", str(db), f"--{label}", *map(str, paths)], capture_output=True,
                       text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def tagging_milter(postfix: PostfixInstance, start_milter: Start,
                   tmp_path: Path) -> RunningMilter:
    """The milter in front of `postfix` with the Bayes engine, trained on the fixture mail,
    tagging spam with [policy] subject_tag "[SPAM]" and refusing none (the tag band)."""
    scoring = tmp_path / "scoring"
    scoring.mkdir()
    db = train_database(scoring, bayes_mail, 20)
    return start_milter({"milter": {"socket": f"unix:{postfix.milter_socket}",
                                    "engine": "bayes"},
                         "bayes": {"db": str(db), "min_trained": 20, "reject_cutoff": 1.0},
                         "policy": {"subject_tag": "[SPAM]"}})


@pytest.mark.parametrize(("field", "tagged"), [
    ("Subject: You are our winner 902", "[SPAM] You are our winner 902"),
    ("Subject: ", "[SPAM] "),  # the field there, empty: it stays, empty (not "noheader:subject")
    (None, "[SPAM]"),  # no field: the milter adds one, and train takes it off again
    ("Subject: " + "W" * 990, "[SPAM] " + "W" * 990),  # folded after the tag, the word whole
    ("Subject: \u3000Sale \u00e9t\u00e9", "[SPAM] \u3000Sale \u00e9t\u00e9"),  # a wide blank
    # the name as the sender spelled it: the tokenizer counts "header:subject:1" as spelled
    ("subject: You are our winner 902", "[SPAM] You are our winner 902"),
    # Postfix passes the value without its first blank and writes the milter's after ": "
    ("Subject:\tYou are our winner 902", "[SPAM] You are our winner 902"),
    ("Subject:You are our winner 902", "[SPAM] You are our winner 902"),
    ("Subject:  You are our winner 902", "[SPAM] You are our winner 902"),
    ("Subject:\n You are our winner 902", "[SPAM] You are our winner 902"),
    ("Subject : You are our winner 902", "[SPAM] You are our winner 902"),
], ids=["plain", "empty", "missing", "long", "ideographic-space", "lowercase-name", "tab",
        "no-blank", "two-blanks", "fold-first", "blank-before-colon"])
def test_spam_the_milter_tagged_is_trained_as_the_message_that_came(
        postfix: PostfixInstance, start_milter: Start, tmp_path: Path, field: str | None,
        tagged: str) -> None:
    """A spam Postfix delivered after the milter put [policy] subject_tag on its Subject
    (a user moves it to Junk, the admin trains Junk with the milter's config): `train` learns
    the message as it came, not the tag. Its tokens are those of the same message as Postfix
    would have delivered it unscanned, trained into a fresh database, and it has that
    message's key (training that one next is "already trained"). So for a Subject that is
    empty, missing, folded after the tag, opens with a blank that is not ASCII, is named in
    lower case, or has a tab, no blank, two or a fold after its colon."""
    m = tagging_milter(postfix, start_milter, tmp_path)
    # spam words, and nothing in the message that says "spam" but the milter's markup
    sent = message(subject="\0", body=" ".join(BAYES_WORDS["spam"] * 5) + " uniq902x\n")
    sent = sent.replace(b"Subject: \0\n", b"" if field is None else field.encode() + b"\n")
    assert b"spam" not in sent.lower()
    got = postfix.wait_delivered(postfix.send(sent))
    assert got.all("Subject") == [tagged]
    name = (field or "Subject:").partition(":")[0].rstrip()  # the name the milter gives
    assert re.search(rb"(?m)^" + name.encode() + rb": \[SPAM\]", got.raw), got.raw
    assert max(map(len, got.raw.split(b"\n"))) <= 1000  # 998 and CRLF
    assert got.all("X-Spam-Flag") == ["YES"]
    assert got.all("X-Spam-Status")[0].startswith("Yes, score=") and "engine=bayes" in \
        got.all("X-Spam-Status")[0]
    # the message as Postfix delivers it without the milter: its delivery fields, then the
    # message exactly as sent
    first = sent.split(b"\n", 1)[0]
    assert got.raw.count(first) == 1
    untouched = tmp_path / "untouched.eml"
    untouched.write_bytes(got.raw[: got.raw.index(first)] + sent)
    assert b"X-Spam-" not in untouched.read_bytes()

    tagged_db, fresh_db = tmp_path / "tagged.sqlite", tmp_path / "fresh.sqlite"
    assert "Learned 1 of 1 messages as spam" in train(m.config_path, tagged_db, got.path)
    learned = learned_tokens(tagged_db)
    assert learned and not [t for t in learned if "spam" in t.lower()], \
        [t for t in learned if "spam" in t.lower()]
    assert "Learned 1 of 1 messages as spam" in train(m.config_path, fresh_db, untouched)
    assert learned == learned_tokens(fresh_db)
    out = train(m.config_path, tagged_db, untouched)
    assert "Learned 0 of 1 messages as spam (1 already trained)" in out, out
    assert learned_tokens(tagged_db) == learned



def totals(db: Path) -> tuple[int, int]:
    """The messages the database counts as trained: (spam, ham)."""
    with sqlite3.connect(db) as c:
        spam, ham = c.execute("SELECT nspam, nham FROM totals").fetchone()
    return int(spam), int(ham)


def test_one_spam_delivered_to_two_mailboxes_is_one_message_to_train(
        postfix: PostfixInstance, start_milter: Start, tmp_path: Path) -> None:
    """One spam sent to two users of the site: Postfix delivers a copy into each mailbox,
    each with its own trace fields on top (Return-Path, Delivered-To, X-Original-To; sent in
    two transactions, its own Received line with its queue id and "for <rcpt>"), the
    message below them the same. Both users move it to Junk and the admin trains both Junk
    folders: `train` learned it twice, one spam counted as two (sa-learn, keying by the
    message, learns it once). The second copy is "already trained", and trained as ham (one
    user takes it back out of Junk) it is moved, not learned a second time."""
    m = tagging_milter(postfix, start_milter, tmp_path)
    sent = message(subject="You are our winner 980",
                   body=" ".join(BAYES_WORDS["spam"] * 5) + " uniq980x\n")
    # two transactions, one recipient each; then one with both recipients
    bob = postfix.wait_delivered(postfix.send(sent))
    erin = postfix.wait_delivered(postfix.send(sent, rcpt="erin@test.example"),
                                  mailbox="erin")
    with postfix.smtp() as s:
        s.mail("alice@example.net")
        for rcpt in ("bob@test.example", "erin@test.example"):
            assert s.rcpt(rcpt)[0] == 250
        code, text = s.data(sent)
        assert code == 250, text
    both = text.decode().rsplit(" ", 1)[-1]
    copies = {"bob": bob, "erin": erin, "bob, both": postfix.wait_delivered(both),
              "erin, both": postfix.wait_delivered(both, mailbox="erin")}
    # the premise: the copies differ on top, in what delivery wrote, and not below it
    first = sent.split(b"\n", 1)[0]
    tops = {k: c.raw[: c.raw.index(first)] for k, c in copies.items()}
    belows = {c.raw[c.raw.index(first):] for c in copies.values()}
    assert len(set(tops.values())) == len(copies), tops
    assert len(belows) == 1, belows
    for k, c in copies.items():
        assert c.all("Subject") == ["[SPAM] You are our winner 980"], (k, c.raw)
        assert c.all("X-Spam-Flag") == ["YES"], (k, c.raw)
        rcpt = f"{k.split(',')[0]}@test.example"
        assert c.all("Delivered-To") == [rcpt], (k, tops[k])
        assert c.all("X-Original-To") == [rcpt], (k, tops[k])
    assert "for <bob@test.example>" in bob.all("Received")[0], tops["bob"]
    assert "for <erin@test.example>" in erin.all("Received")[0], tops["erin"]

    junk = tmp_path / "junk.sqlite"
    out = train(m.config_path, junk, bob.path)
    assert "Learned 1 of 1 messages as spam" in out, out
    learned = learned_tokens(junk)
    assert learned and totals(junk) == (1, 0)
    out = train(m.config_path, junk, erin.path)
    assert "Learned 0 of 1 messages as spam (1 already trained)" in out, out
    out = train(m.config_path, junk, copies["bob, both"].path, copies["erin, both"].path)
    assert "Learned 0 of 2 messages as spam (2 already trained)" in out, out
    assert learned_tokens(junk) == learned and totals(junk) == (1, 0)
    # erin takes her copy out of Junk: the one message becomes ham, nothing of it left spam
    out = train(m.config_path, junk, erin.path, label="ham")
    assert "Learned 1 of 1 messages as ham (1 moved from spam)" in out, out
    assert totals(junk) == (0, 1)
    assert learned_tokens(junk) == {t: (h, s) for t, (s, h) in learned.items()}

# what Postfix does without its milter, per milter_default_action (notes/ecosystem.md §1.2)
def submitted_locally(pf: PostfixInstance, raw: bytes, sender: str) -> Delivered:
    """`sendmail -f sender` into the instance (pickup → cleanup → non_smtpd_milters); what was
    delivered for it (Postfix's own Received line, "from userid 0 … id QID", names its id)."""
    since = len(pf.log)
    pf.sendmail(raw, sender)
    qid = queue_id_of(pf, f"uid=0 from=<{sender}>", "pickup's line for the local submission",
                      since)
    return pf.wait_delivered(qid)


def test_mail_submitted_locally_is_tagged_never_bounced(
        postfix: PostfixInstance, start_milter: Start, tmp_path: Path) -> None:
    """Guides set non_smtpd_milters = $smtpd_milters (for DKIM signing). A reject from a milter
    at the end of a sendmail(1) submission makes cleanup bounce it: the cron report or the
    contact form's mail goes to the envelope sender as a non-delivery notice (backscatter,
    when a web form puts a visitor's address there). Local submissions are tagged instead,
    while spam over SMTP through the same milter is still refused."""
    db = train_database(tmp_path, bayes_mail, 20)
    m = start_milter({"milter": {"socket": f"unix:{postfix.milter_socket}", "engine": "bayes"},
                      "bayes": {"db": str(db), "min_trained": 20},
                      "policy": {"reject_reply": REJECT_REPLY}})
    with postfix.main_cf(non_smtpd_milters="$smtpd_milters"):
        got = submitted_locally(postfix, bayes_mail(960, "spam"), "cron-spam@test.example")
        [status] = got.all("X-Spam-Status")
        assert status.startswith("Yes, score=") and "engine=bayes" in status, status
        assert got.all("X-Spam-Flag") == ["YES"]
        qid = queue_id_of(postfix, "uid=0 from=<cron-spam@test.example>", "pickup's line")
        assert not any(f"{qid}: milter-reject" in x or f"{qid}: sender non-delivery" in x
                       for x in postfix.log_lines(qid)), postfix.log_lines(qid)
        line = next(x for x in m.log.splitlines() if f"{qid}: " in x)
        assert "action=tag would=reject" in line and "mode=local" in line, line
        assert "engine=bayes" in expect_refused(postfix, m, bayes_mail(961, "spam"))


def test_mail_submitted_locally_waits_for_no_scanner(
        postfix: PostfixInstance, start_milter: Start) -> None:
    """on_unavailable = tempfail keeps SMTP senders retrying; a tempfail at the end of a
    local submission leaves the cron mail in the maildrop, retried by pickup under a new queue
    id each minute, until spamd is back. It is delivered at once, marked unchecked."""
    m = start_milter({"milter": {"socket": f"unix:{postfix.milter_socket}", "engine": "spamd"},
                      "spamd": {"host": "127.0.0.1", "port": free_port()},  # nobody listens
                      "policy": {"on_unavailable": "tempfail"}})
    with postfix.main_cf(non_smtpd_milters="$smtpd_milters"):
        got = submitted_locally(postfix, message(subject="cron report"),
                                "cron-unchecked@test.example")
        assert got.all("X-Spam-Status") == ["No, unchecked=unavailable"]
        with pytest.raises(smtplib.SMTPResponseException) as exc:  # over SMTP: still 451
            postfix.send(message(subject="over SMTP while spamd is down"))
        assert exc.value.smtp_code == 451
    assert "action=accept would=tempfail" in m.log


def check(cfg: Path, *args: str) -> str:
    """`spambridge check` as an admin runs it; what it prints."""
    r = subprocess.run([sys.executable, "-m", "spambridge", "check", "--config", str(cfg),
                        *args], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_check_on_what_postfix_delivered_says_what_the_milter_did(
        postfix: PostfixInstance, start_milter: Start, tmp_path: Path) -> None:
    """An admin runs `check` on a Maildir file to learn why the milter did what it did. The
    file holds what Postfix wrote around the message (Return-Path, Delivered-To, its own
    Received line) and the milter's changes (X-Spam-* fields, the tagged Subject). `check`
    said "headers removed: X-Spam-Checker-Version, ..." (forged fields the message never
    had), "not added: the Subject has it already" for the tag the milter wrote, and, for
    the site's own mail (sendmail(1), which the milter tags without touching its Subject),
    that it would tag its Subject."""
    db = train_database(tmp_path, bayes_mail, 20)
    m = start_milter({"milter": {"socket": f"unix:{postfix.milter_socket}", "engine": "bayes"},
                      "bayes": {"db": str(db), "min_trained": 20, "reject_cutoff": 1.0},
                      "policy": {"subject_tag": "[SPAM]"}})  # the tag band, not reject
    got = postfix.wait_delivered(postfix.send(bayes_mail(970, "spam")))
    assert got.all("Subject") == ["[SPAM] spam 970"] and got.all("X-Spam-Flag") == ["YES"]
    [score] = got.all("X-Spam-Score")
    assert check(m.config_path, "--batch", str(got.path)).endswith("\tspam\n")
    said = check(m.config_path, str(got.path))
    assert f"score={score} engine=bayes verdict=spam action=tag" in said
    assert "the Subject becomes '[SPAM] spam 970'" in said
    assert "headers removed" not in said

    with postfix.main_cf(non_smtpd_milters="$smtpd_milters"):
        own = submitted_locally(postfix, bayes_mail(971, "spam"), "cron-check@test.example")
    assert own.all("Subject") == ["spam 971"] and own.all("X-Spam-Flag") == ["YES"]
    said = check(m.config_path, str(own.path))
    assert "verdict=spam action=tag" in said and "Subject prefix" not in said, said


def test_check_on_a_copy_delivered_behind_a_second_relay(
        postfix: PostfixInstance, start_milter: Start, tmp_path: Path) -> None:
    """Where spambridge runs on the edge MTA and a second, internal relay delivers, the first
    Received line in the mailbox is the relay's, and its client (our MTA) is in
    trusted_networks: `check` said "skipped: trusted" of every such message, where the milter
    had scored it. The milter names its MTA (macro j) in X-Spam-Checker-Version, as
    SpamAssassin does, and `check` reads the line that MTA wrote. The relay's line is added
    to what this Postfix delivered, as the relay would have written it."""
    from spambridge import __version__

    db = train_database(tmp_path, bayes_mail, 20)
    m = start_milter({"milter": {"socket": f"unix:{postfix.milter_socket}", "engine": "bayes",
                                 "trusted_networks": ["10.0.0.0/8"]},
                      "bayes": {"db": str(db), "min_trained": 20, "reject_cutoff": 1.0}})
    got = postfix.wait_delivered(postfix.send(bayes_mail(972, "spam")))
    host = postfix.postconf("-h", "myhostname").strip()
    assert got.all("X-Spam-Checker-Version") == [f"spambridge {__version__} on {host}"]
    at = got.raw.index(b"\nReceived: ") + 1
    relay = (f"Received: from {host} ({host} [10.0.0.5])\n\tby inner.test.example (Postfix)"
             f" with ESMTP id 5DEF\n\tfor <bob@test.example>; Wed, 25 Nov 2026 10:00:01 +0000"
             "\n").encode()
    inner = tmp_path / "inner"
    inner.write_bytes(got.raw[:at] + relay + got.raw[at:])
    said = check(m.config_path, str(inner))
    assert "engine=bayes verdict=spam action=tag" in said, said
    assert check(m.config_path, "--batch", str(inner)).endswith("\tspam\n")


DEFAULT_ACTION_EFFECT = {
    "accept": "delivered",
    "tempfail": "451",
    "reject": "5xx",
    "quarantine": "held",
}


def test_header_checks_take_forged_fields_off_mail_the_milter_never_saw(
        postfix: PostfixInstance, start_milter: Start, tmp_path: Path) -> None:
    """README, Postfix quick start, step 7: while spambridge is down, milter_default_action =
    accept delivers mail unscanned, and a sender can write X-Spam-Checker-Version and
    X-Spam-Status as well as we do. Postfix's header_checks `/^X-Spam-/ IGNORE` takes them off
    whether the milter runs or not, and never the fields spambridge adds (cleanup does not
    apply header_checks to a milter's fields)."""
    forged = ("X-Spam-Checker-Version: spambridge 0.1.0\n"
              "X-Spam-Status: No, score=0.0010 forged=yes\n")
    got = postfix.wait_delivered(postfix.send(message(subject="down", extra_headers=forged)))
    assert got.all("X-Spam-Status") == ["No, score=0.0010 forged=yes"]  # what step 7 warns of
    checks = postfix.etc / "header_checks"
    checks.write_text("/^X-Spam-/ IGNORE\n")
    with postfix.main_cf(header_checks=f"regexp:{checks}"):
        got = postfix.wait_delivered(postfix.send(message(subject="down, checked",
                                                          extra_headers=forged)))
        assert got.all("X-Spam-Status") == [] and got.all("X-Spam-Checker-Version") == []
        start_milter({"milter": {"socket": f"unix:{postfix.milter_socket}"},
                      "bayes": {"db": str(tmp_path / "bayes.sqlite")}})
        got = postfix.wait_delivered(postfix.send(message(subject="up, checked",
                                                          extra_headers=forged)))
        [status] = got.all("X-Spam-Status")
        assert status.startswith("No, unchecked=unavailable") and "forged" not in status
        assert [v[:11] for v in got.all("X-Spam-Checker-Version")] == ["spambridge "]
        assert "0.0010" not in got.raw.decode()


@pytest.mark.spamd
def test_milter_stopped_applies_the_examples_default_action(
        postfix: PostfixInstance, spamd: Spamd, start_milter: Start) -> None:
    action = example_settings()["milter_default_action"]
    assert action in DEFAULT_ACTION_EFFECT, "the example must set milter_default_action"
    m = start_milter(milter_config(postfix, spamd))
    qid = postfix.send(message(subject="while the milter runs"))
    assert postfix.wait_delivered(qid).all("X-Spam-Status")
    assert m.stop() == 0  # SIGTERM: libmilter stops cleanly and the socket goes away
    assert not postfix.milter_socket.exists()

    effect = DEFAULT_ACTION_EFFECT[action]
    if effect == "delivered":
        qid = postfix.send(message(subject="while the milter is stopped",
                                   extra_headers="X-Spam-Flag: NO\n"))
        got = postfix.wait_delivered(qid)
        assert got.all("X-Spam-Checker-Version") == []  # nobody scanned it
    elif effect == "451":
        with pytest.raises(smtplib.SMTPResponseException) as exc:
            postfix.send(message(subject="while the milter is stopped"))
        assert exc.value.smtp_code == 451
    elif effect == "5xx":
        with pytest.raises((smtplib.SMTPResponseException, smtplib.SMTPConnectError)):
            postfix.send(message(subject="while the milter is stopped"))
    else:
        since = len(postfix.log)
        postfix.send(message(subject="while the milter is stopped"))
        queue_id_of(postfix, "milter-hold", "the milter-hold line", since)
    assert "connect to Milter service unix:spambridge/spambridge.sock" in postfix.log


@pytest.mark.parametrize("version", ["2", "3", "4", "6"])
def test_every_milter_protocol_version_gets_the_reply_after_the_probe(
        postfix: PostfixInstance, start_milter: Start, tmp_path: Path, version: str) -> None:
    """Before a refusal the milter writes SMFIR_PROGRESS twice, to learn whether the MTA is
    still there (actions._unreachable). At every milter_protocol an admin may have set (2 was
    Postfix 2.5's default and lives on in old main.cf files) spam past reject_at is still
    refused with the configured 5xx text, the milter does not take the MTA for gone, and
    Postfix logs no protocol complaint. (Version 1, which Postfix does not speak, fails
    this test: the setting is in force.)"""
    db = train_database(tmp_path, bayes_mail, 20)
    m = start_milter({"milter": {"socket": f"unix:{postfix.milter_socket}"},
                      "bayes": {"db": str(db), "min_trained": 20},
                      "policy": {"reject_reply": REJECT_REPLY}})
    since = len(postfix.log)
    with postfix.main_cf(milter_protocol=version):
        assert "engine=bayes" in expect_refused(postfix, m, bayes_mail(910, "spam"))
        assert "got no reply" not in m.log
    log = postfix.log[since:]
    assert not re.search(r"milter .*(unexpected|malformed|protocol)", log), log[-2000:]
