"""The Received line spambridge rebuilds for SpamAssassin (Postfix hides its own from milters),
for clients that are not an IPv4 host with a plain HELO: a real Postfix, a real spamd whose own
rules read how it parsed the relay (SpamAssassin's X-Spam-Relays-* pseudo-headers)."""

from __future__ import annotations

import re
import smtplib
from collections.abc import Callable, Iterator

import pytest
from harness import GTUBE, RunningMilter, Spamd, message, spamd_with_rules, wait_until
from postfix_instance import PostfixInstance

pytestmark = [pytest.mark.postfix, pytest.mark.spamd]
Start = Callable[..., RunningMilter]

# SB_HOP_LOCAL: the hop that reached us is this host, as SpamAssassin parsed our line;
# SB_HOP_FORGED: a relay named by the client's own words
RULES = r"""
header SB_HOP_LOCAL X-Spam-Relays-Trusted =~ /^\[ ip=127\.0\.0\.1 rdns=localhost /
score SB_HOP_LOCAL 0.01
header __SB_FORGED_T X-Spam-Relays-Trusted =~ /\bip=192\.0\.2\.99\b/
header __SB_FORGED_U X-Spam-Relays-Untrusted =~ /\bip=192\.0\.2\.99\b/
meta SB_HOP_FORGED __SB_FORGED_T || __SB_FORGED_U
score SB_HOP_FORGED 0.01
"""


@pytest.fixture(scope="module")
def relay_spamd() -> Iterator[Spamd]:
    with spamd_with_rules("sb-spamd-relays-", RULES) as s:
        yield s


def config(pf: PostfixInstance, spamd: Spamd, **milter: object) -> dict[str, dict[str, object]]:
    return {"milter": {"socket": f"unix:{pf.milter_socket}", "engine": "spamd", **milter},
            "spamd": {"host": spamd.host, "port": spamd.port},
            "policy": {"tag_at": 5.0, "reject_at": 15.0}}


def rules_hit(status: str) -> set[str]:
    """The rule names in X-Spam-Status's tests= list (folded where it is long)."""
    m = re.search(r"tests=(.*?)\s+engine=", status, re.S)
    assert m, status
    return set(re.sub(r"\s+", "", m.group(1)).split(","))


def test_a_helo_naming_another_relay_is_not_believed(
        postfix: PostfixInstance, relay_spamd: Spamd, start_milter: Start) -> None:
    """Postfix hands the milter `EHLO a.example (trusted.example [192.0.2.99])` as typed (its
    own Received line writes the spaces and parentheses as "?"); written into our line as it
    came, SpamAssassin took 192.0.2.99 for the relay that handed us the mail — any client could
    pick the IP the DNSBLs are asked about, or a trusted one (ALL_TRUSTED)."""
    start_milter(config(postfix, relay_spamd))
    with postfix.smtp() as s:
        s.ehlo("a.example (trusted.example [192.0.2.99])")
        s.mail("alice@example.net")
        s.rcpt("bob@test.example")
        code, text = s.data(message(subject="A HELO with a comment in it"))
    assert code == 250
    got = postfix.wait_delivered(text.decode().rsplit(" ", 1)[-1])
    [status] = got.all("X-Spam-Status")
    hit = rules_hit(status)
    assert "SB_HOP_FORGED" not in hit and "SB_HOP_LOCAL" in hit, status
    # Postfix's own line for the same connection, which SpamAssassin would have read
    assert got.all("Received")[0].startswith(
        "from a.example??trusted.example?[192.0.2.99]? (localhost [127.0.0.1])")


def test_a_unix_domain_client_is_the_local_host(
        postfix: PostfixInstance, relay_spamd: Spamd, start_milter: Start) -> None:
    """Postfix's smtpd on a unix-domain socket (a content filter reinjecting, a local
    application) gives milters no address at connect, only the macro `_` = "localhost
    [127.0.0.1]"; Postfix writes 127.0.0.1 in its Received line and matches mynetworks
    against it. Our line said "(localhost [])": UNPARSEABLE_RELAY, no relay at all."""
    start_milter(config(postfix, relay_spamd))
    qid = postfix.send_unix(message(subject="Through the unix-domain smtpd"))
    got = postfix.wait_delivered(qid)
    [status] = got.all("X-Spam-Status")
    hit = rules_hit(status)
    assert "UNPARSEABLE_RELAY" not in hit and "SB_HOP_LOCAL" in hit, status
    assert got.all("Received")[0].startswith("from client.example.net (localhost [127.0.0.1])")


def test_trusted_networks_match_a_unix_domain_client(
        postfix: PostfixInstance, relay_spamd: Spamd, start_milter: Start) -> None:
    """`trusted_networks = ["127.0.0.1"]` covers the unix-domain smtpd as Postfix's
    mynetworks does; it was scanned (no address to match)."""
    m = start_milter(config(postfix, relay_spamd, trusted_networks=["127.0.0.1"]))
    qid = postfix.send_unix(message(subject="Trusted through the unix-domain smtpd"))
    postfix.wait_delivered(qid)
    wait_until(lambda: f"{qid}: " in m.log, 10, "the milter's log line")
    line = next(x for x in m.log.splitlines() if f"{qid}: " in x)
    assert "reason=trusted" in line, line


def test_the_unix_domain_smtpd_refuses_spam_like_any_smtp_client(
        postfix: PostfixInstance, relay_spamd: Spamd, start_milter: Start) -> None:
    """An SMTP client on the unix socket reads the reply itself: not a local submission."""
    start_milter(config(postfix, relay_spamd))
    with pytest.raises(smtplib.SMTPDataError) as exc:
        postfix.send_unix(message(subject="GTUBE over the unix socket", body=f"{GTUBE}\n"))
    assert exc.value.smtp_code == 550
