"""Internationalised mail and long recipient lists through a real Postfix with
smtputf8_enable = yes (Postfix 3.7's default; the shared instance turns it off), a real spamd
whose private rules read what SpamAssassin made of the envelope (EnvelopeFrom, our Received
line), and the real milter."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import pytest
from harness import RunningMilter, Spamd, log_line, spamd_with_rules, wait_until
from postfix_instance import PostfixInstance

pytestmark = [pytest.mark.postfix, pytest.mark.spamd]
Start = Callable[..., RunningMilter]

# what SpamAssassin took for the envelope sender, and the recipient in the Received line it
# read (UTF-8 bytes, as Postfix writes them in an SMTPUTF8 session)
RULES = r"""
header SB_ENVFROM_UTF8 EnvelopeFrom:addr =~ /^j\xc3\xb6rg\@b\xc3\xbccher\.example$/
score SB_ENVFROM_UTF8 0.01
header SB_FOR_UTF8 Received =~ /\bfor <\xc4\x89efo\@test\.example>/
score SB_FOR_UTF8 0.01
header SB_HELO_UTF8 X-Spam-Relays-Trusted =~ /^\[ ip=127\.0\.0\.1 rdns=localhost helo=b\xc3\xbccher\.example /
score SB_HELO_UTF8 0.01
"""


@pytest.fixture(scope="module")
def rules_spamd() -> Iterator[Spamd]:
    with spamd_with_rules("sb-spamd-utf8-", RULES) as s:
        yield s


@pytest.fixture
def utf8_postfix(postfix: PostfixInstance) -> Iterator[PostfixInstance]:
    with postfix.main_cf(smtputf8_enable="yes"):
        yield postfix


def config(pf: PostfixInstance, spamd: Spamd, **spamd_keys: object) -> dict[str, dict[str, object]]:
    return {"milter": {"socket": f"unix:{pf.milter_socket}", "engine": "spamd"},
            "spamd": {"host": spamd.host, "port": spamd.port, **spamd_keys},
            "policy": {"tag_at": 5.0, "reject_at": 15.0}}


def utf8_message(mid: str) -> bytes:
    return (f"From: Jörg <jörg@bücher.example>\r\nTo: ĉefo@ekzemplo.example\r\n"
            f"Subject: Grüße aus Köln\r\nMessage-ID: <{mid}@bücher.example>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\nSaluton, ĉefo!\r\n").encode()


def send_utf8(pf: PostfixInstance, raw: bytes, rcpts: list[str]) -> str:
    """EHLO bücher.example, MAIL FROM:<jörg@bücher.example> SMTPUTF8, the recipients, DATA:
    the queue id."""
    with pf.smtp() as s:
        s.command_encoding = "utf-8"
        s.ehlo("bücher.example")
        code, text = s.mail("<jörg@bücher.example>", ["SMTPUTF8"])
        assert code == 250, text
        for r in rcpts:
            code, text = s.rcpt(f"<{r}>")
            assert code == 250, (r, text)
        code, text = s.data(raw)
    assert code == 250, text
    return text.decode().rsplit(" ", 1)[-1]


def rules_hit(status: str) -> set[str]:
    m = re.search(r"tests=(.*?)\s+engine=", status, re.S)
    assert m, status
    return set(re.sub(r"\s+", "", m.group(1)).split(","))


def test_spamassassin_reads_the_envelope_of_an_smtputf8_message(
        utf8_postfix: PostfixInstance, rules_spamd: Spamd, start_milter: Start) -> None:
    """spamass-milter told SpamAssassin the envelope sender ("(envelope-from <…>)" in the
    Received line it wrote); ours named none, so SpamAssassin had no EnvelopeFrom: no SPF check
    of MAIL FROM, no HEADER_FROM_DIFFERENT_DOMAINS, no welcomelist_auth. And the recipient and
    the HELO in our line were backslash escapes where Postfix's own line has UTF-8 text."""
    m = start_milter(config(utf8_postfix, rules_spamd))
    qid = send_utf8(utf8_postfix, utf8_message(f"envfrom.{time.monotonic_ns()}"),
                    ["ĉefo@test.example"])
    got = utf8_postfix.wait_delivered(qid)
    [status] = got.all("X-Spam-Status")
    assert {"SB_ENVFROM_UTF8", "SB_FOR_UTF8", "SB_HELO_UTF8"} <= rules_hit(status), status
    # Postfix's own line, which the milter never sees, for the same session
    assert got.all("Received")[0].startswith("from bücher.example (localhost [127.0.0.1])")
    # the milter names the sender as Postfix's qmgr does
    assert "from=<jörg@bücher.example> rcpts=1 " in log_line(m, qid)
    assert f"{qid}: from=<jörg@bücher.example>," in utf8_postfix.log


def test_a_hundred_recipients_with_per_recipient_users_are_one_scan(
        utf8_postfix: PostfixInstance, rules_spamd: Spamd, start_milter: Start) -> None:
    """per_recipient_user = "local-part" (spamass-milter -u) and 100 recipients, among them a
    UTF-8, a quoted and a capitalised local part: one scan, as [spamd] user (no recipient's
    preferences decide for the others), and one log line that counts the recipients rather
    than listing them (Postfix's lines name each)."""
    m = start_milter(config(utf8_postfix, rules_spamd, user="spamass-milter",
                            per_recipient_user="local-part"))
    mid = f"hundred.{time.monotonic_ns()}"
    rcpts = ["ĉefo@test.example", '"john smith"@test.example', "Bob.Smith@Test.Example",
             *(f"user{i:03d}@test.example" for i in range(97))]
    qid = send_utf8(utf8_postfix, utf8_message(mid), rcpts)
    line = log_line(m, qid)
    assert " rcpts=100 " in line and " engine=spamd " in line, line
    assert len(line) < 300, line
    spamd_log = rules_spamd.home.parent / "spamd.log"
    wait_until(lambda: mid in spamd_log.read_text(errors="replace"), 10, "spamd's result line")
    users = re.findall(rf"result: .*,user=([^,]*),.*mid=<{re.escape(mid)}@",
                       spamd_log.read_text(errors="replace"))
    assert users == ["spamass-milter"], users
    wait_until(lambda: len([d for d in utf8_postfix.delivered()
                            if f"id {qid}".encode() in d.raw]) == 100, 60,
               "100 deliveries")
    copies = [d for d in utf8_postfix.delivered() if f"id {qid}".encode() in d.raw]
    assert {d.all("X-Spam-Status")[0].split(",")[0] for d in copies} == {"No"}

