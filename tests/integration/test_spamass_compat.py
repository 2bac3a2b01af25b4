"""Debian's spamass-milter and spambridge (engine = "spamd") on one real spamd, the same messages
through each, as an admin replacing one with the other sees them: what README's "Coming from
spamass-milter" says stays the same does — X-Spam-Flag, X-Spam-Status up to its last field,
X-Spam-Level, the reject boundary of `-r 15` and `reject_at = 15`, and the spamd user of
`-u spamass-milter` and `per_recipient_user = "local-part"`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

import pytest
from harness import (
    RunningMilter,
    Spamd,
    connectable,
    message,
    start_spamd,
    stop_process,
    wait_until,
)
from milterclient import MilterClient, Result

pytestmark = pytest.mark.spamd

Start = Callable[..., RunningMilter]
# a rule per score, hit by a word in the body; the two stock rules a test message from
# 192.0.2.10 with a one-word body hits score nothing, so each message scores exactly this
SCORES = {"neg": -3.0, "494": 4.94, "496": 4.96, "500": 5.0, "720": 7.2, "1494": 14.94,
          "1496": 14.96, "1500": 15.0}
RULES = "".join(f"body SBT_{k} /\\bsbtscore{k}\\b/\nscore SBT_{k} {v}\n" for k, v in SCORES.items())
RULES += "score RCVD_ILLEGAL_IP 0\nscore TVD_SPACE_RATIO 0\n"
# what SpamAssassin took for the envelope sender (only the sender the test below uses)
RULES += "header SBT_ENVFROM EnvelopeFrom:addr =~ /^relayed\\@example\\.org$/\nscore SBT_ENVFROM 0.01\n"


@dataclass
class Peers:
    spamd: Spamd
    spamass: str  # spamass-milter's socket

    @property
    def spamd_log(self) -> Path:
        return self.spamd.home.parent / "spamd.log"


@pytest.fixture(scope="module")
def peers() -> Iterator[Peers]:
    """A spamd with the rules above, and spamass-milter as Debian's defaults run it (-u
    spamass-milter) with -m (headers only: what spambridge does) and -r 15, asking it."""
    base = Path(tempfile.mkdtemp(prefix="sb-spamass-"))
    spamd = start_spamd(base, rules=RULES)
    sock = base / "spamass.sock"
    exe = shutil.which("spamass-milter") or "/usr/sbin/spamass-milter"
    if not os.path.exists(exe):
        pytest.fail("spamass-milter is not installed: run scripts/setup --test")
    proc = subprocess.Popen([exe, "-p", f"unix:{sock}", "-m", "-r", "15", "-u", "spamass-milter",
                             "--", "-d", spamd.host, "-p", str(spamd.port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: proc.poll() is not None or connectable(str(sock)), 15,
                   "spamass-milter's socket")
        assert proc.poll() is None, f"spamass-milter exited {proc.returncode}"
        yield Peers(spamd, str(sock))
    finally:
        stop_process(proc)
        stop_process(spamd.proc)
        shutil.rmtree(base, ignore_errors=True)


def spambridge(start_milter: Start, peers: Peers) -> str:
    return start_milter({
        "milter": {"engine": "spamd"},
        "spamd": {"host": peers.spamd.host, "port": peers.spamd.port,
                  "user": "spamass-milter", "per_recipient_user": "local-part"},
        "policy": {"tag_at": 5.0, "reject_at": 15.0}}).socket_path


def send(sock: str, raw: bytes, rcpts: tuple[str, ...] = ("<user@test.example>",),
         **kw: str) -> Result:
    with MilterClient(sock) as c:
        return c.send(raw, rcpts=rcpts, **kw)


def spam_headers(r: Result) -> dict[str, str]:
    """The X-Spam-* fields added; X-Spam-Status unfolded and without its last field, which
    differs on purpose (SpamAssassin's autolearn= and version=, our engine=)."""
    out = {n: v for n, v in r.added if n.lower().startswith("x-spam-")}
    status = out.get("X-Spam-Status", "").replace(",\n\t", ",").replace("\n\t", " ")
    out["X-Spam-Status"] = re.split(r" (?:autolearn|engine)=", status)[0]
    out.setdefault("X-Spam-Level", "")  # spamass-milter leaves an empty one out
    for ours in ("X-Spam-Checker-Version", "X-Spam-Score"):
        out.pop(ours, None)
    return out


def test_headers_and_reject_boundary_are_spamass_milters(start_milter: Start,
                                                         peers: Peers) -> None:
    ours = spambridge(start_milter, peers)
    seen: dict[str, tuple[str, dict[str, str]]] = {}
    for key in SCORES:
        raw = message(subject=f"score {key}", body=f"sbtscore{key}\n")
        theirs, mine = send(peers.spamass, raw), send(ours, raw)
        rejected = {"continue": False, "accept": False, "reject": True}
        assert rejected[mine.action] is rejected[theirs.action], (key, theirs, mine)
        if mine.action == "reject":
            assert theirs.reply == "550 5.7.1 Blocked by SpamAssassin", theirs
            seen[key] = ("reject", {})
            continue
        assert spam_headers(mine) == spam_headers(theirs), key
        seen[key] = ("accept", spam_headers(mine))
    # what the comparison went through: both sides of each boundary, as spamd reports them
    assert {k: (a, h.get("X-Spam-Status", "")[:21]) for k, (a, h) in seen.items()} == {
        "neg": ("accept", "No, score=-3.0 requir"), "494": ("accept", "No, score=4.9 require"),
        "496": ("accept", "No, score=4.9 require"), "500": ("accept", "Yes, score=5.0 requir"),
        "720": ("accept", "Yes, score=7.2 requir"), "1494": ("accept", "Yes, score=14.9 requi"),
        "1496": ("reject", ""), "1500": ("reject", "")}
    assert seen["720"][1]["X-Spam-Level"] == "*******" and seen["neg"][1]["X-Spam-Level"] == ""


def test_spamassassin_has_the_envelope_sender_of_mail_from_a_trusted_client(
        start_milter: Start, peers: Peers) -> None:
    """Mail a trusted client hands on after an internet hop (a backup MX or an internal relay
    in trusted_networks; a loopback client SpamAssassin always trusts): SpamAssassin takes the
    envelope sender from the last untrusted hop's Received line, where a Postfix writes none,
    then from an X-Envelope-From on top, which spamass-milter wrote. Ours named the sender only
    in its own Received line, which is that hop only for an untrusted client: SpamAssassin had
    no EnvelopeFrom (no SPF check of MAIL FROM, no HEADER_FROM_DIFFERENT_DOMAINS), on 87 of
    313 corpus messages from loopback clients in bench/spamass_differential.py."""
    ours = spambridge(start_milter, peers)
    hop = ("Received: from mail.sender.example (mail.sender.example [203.0.113.7])\n"
           "\tby backup-mx.test.example (Postfix) with ESMTP id 4XYZ0123;\n"
           f"\t{formatdate(localtime=True)}\n").encode()
    raw = hop + message(subject="relayed", body="sbtscore494\n", sender="relayed@example.org")
    for client in ("127.0.0.1", "192.0.2.10"):  # trusted, and not
        kw = {"sender": "<relayed@example.org>", "client_addr": client}
        theirs, mine = spam_headers(send(peers.spamass, raw, **kw)), spam_headers(send(ours, raw, **kw))
        assert "SBT_ENVFROM" in theirs["X-Spam-Status"], (client, theirs)
        assert mine == theirs, client


def test_the_spamd_user_is_spamass_milters_u(start_milter: Start, peers: Peers) -> None:
    """-u spamass-milter: one recipient's local part in lower case, else spamass-milter; the
    same from [spamd] user = "spamass-milter", per_recipient_user = "local-part"."""
    ours = spambridge(start_milter, peers)
    tag = f"{os.getpid()}.{time.monotonic_ns()}"
    sent = {}
    for who, sock in (("theirs", peers.spamass), ("ours", ours)):
        for n, rcpts in enumerate((("<Bob.Smith@Test.Example>",),
                                   ("<bob@test.example>", "<carol@test.example>"))):
            mid = f"u{n}.{who}.{tag}"
            raw = message().replace(b"<20261125100000.1234@example.net>", f"<{mid}@x>".encode())
            assert send(sock, raw, rcpts).action in ("continue", "accept")
            sent[mid] = (who, n)

    def users() -> dict[tuple[str, int], str]:
        text = peers.spamd_log.read_text(errors="replace")
        return {sent[mid]: user for user, mid in
                re.findall(r"result: .*,user=([^,]*),.*mid=<([^>@]*)@x>", text) if mid in sent}

    wait_until(lambda: len(users()) == 4, 10, "spamd's result lines")
    assert users() == {("theirs", 0): "bob.smith", ("theirs", 1): "spamass-milter",
                       ("ours", 0): "bob.smith", ("ours", 1): "spamass-milter"}
