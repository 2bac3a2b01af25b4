"""Which messages are local submissions (decided as in tag-only mode, logged mode=local): what
the MTA tells the milter at connect and in the headers, per MTA."""

from __future__ import annotations

import dataclasses
import ipaddress
from types import SimpleNamespace

import pytest

from spambridge.config import Config
from spambridge.milter.session import Session, macro_address

MX = "mx.example.org"  # the MTA's macro j
# what Sendmail's submission program (submit.cf) writes on top of mail from sendmail(1)
MSP_T = b"(from root@localhost)\n\tby mx.example.org (8.17.1.9/8.17.1.9/Submit) id 6AQNUa1Z0130"
MSP_BS = (b"from me.example (www-data@localhost)\n\tby mx.example.org (8.17.1.9/8.17.1.9/Submit)"
          b" with ESMTP id 6AQNUbLd013886")
# what a daemon writes for mail it got over TCP
SMTP = b"from client.example.net (localhost [127.0.0.1])\n\tby mx.example.org with ESMTP id X"


def local(addr: str, port: int | None, headers: list[tuple[str, bytes]],
          name: str = "localhost") -> bool:
    s = Session(SimpleNamespace(config=Config()))  # type: ignore[arg-type]
    s.connect(name, addr, MX, "MTA-v4", port)
    s.hello(MX)
    s.start_message("<root@mx.example.org>", "", False)
    for n, v in headers:
        s.add_header(n, v)
    try:
        return s.envelope.local
    finally:
        s.end_message()


@pytest.mark.parametrize(("addr", "port", "headers"), [
    # Postfix, sendmail(1) through pickup and non_smtpd_milters: cleanup's emulated connection
    ("127.0.0.1", 0, [("Subject", b"cron")]),
    # Sendmail's submission program relaying to the daemon over loopback SMTP
    ("127.0.0.1", 40312, [("Received", MSP_T), ("Subject", b"cron")]),
    ("::1", 40312, [("Received", MSP_BS)]),
    ("::ffff:127.0.0.1", 40312, [("received", MSP_T)]),
    # the value as Sendmail hands it without SMFIP_HDR_LEADSPC, or folded after the colon
    ("127.0.0.1", 40312, [("Received", b" " + MSP_T)]),
    ("127.0.0.1", 40312, [("Received", b"\n\t" + MSP_BS)]),
])
def test_local_submissions(addr: str, port: int, headers: list[tuple[str, bytes]]) -> None:
    assert local(addr, port, headers)


@pytest.mark.parametrize(("addr", "port", "headers", "name"), [
    # any other SMTP client on loopback (swaks on the MX, a web app): told the reply itself
    ("127.0.0.1", 40312, [("Subject", b"GTUBE")], "localhost"),
    ("127.0.0.1", 40312, [("Received", SMTP)], "localhost"),
    # a submission line further down was an earlier hop
    ("127.0.0.1", 40312, [("Received", SMTP), ("Received", MSP_T)], "localhost"),
    # a remote client cannot claim it
    ("192.0.2.7", 40312, [("Received", MSP_T)], "mail.example.net"),
    # sendmail -bs in the daemon's own mode: no address, the submitter reads the reply
    ("", None, [("Received", MSP_T)], "localhost"),
    # the submission comment in another field, or not at the line's start, or not localhost's
    ("127.0.0.1", 40312, [("X-Original-Received", MSP_T)], "localhost"),
    ("127.0.0.1", 40312, [("Received", SMTP + b" (from root@localhost) ")], "localhost"),
    ("127.0.0.1", 40312, [("Received", MSP_T.replace(b"@localhost", b"@mail.example.net"))],
     "localhost"),
])
def test_not_local_submissions(addr: str, port: int | None, headers: list[tuple[str, bytes]],
                               name: str) -> None:
    assert not local(addr, port, headers, name)


def test_the_next_message_on_the_connection_is_judged_afresh() -> None:
    s = Session(SimpleNamespace(config=Config()))  # type: ignore[arg-type]
    s.connect("localhost", "127.0.0.1", MX, "MTA-v4", 40312)
    s.start_message("<root@mx.example.org>", "", False)
    s.add_header("Received", MSP_T)
    assert s.envelope.local
    s.start_message("<alice@example.net>", "", False)
    s.add_header("Received", SMTP)
    assert not s.envelope.local
    s.start_message("<root@mx.example.org>", "", False)  # and the other way round
    s.add_header("Received", MSP_T)
    assert s.envelope.local
    s.end_message()


def trusting(*networks: str) -> Config:
    cfg = Config()
    nets = tuple(ipaddress.ip_network(n) for n in networks)
    return dataclasses.replace(cfg, milter=dataclasses.replace(cfg.milter, trusted_networks=nets))


def received(s: Session) -> str:
    s.hello("client.example.net")
    s.start_message("<alice@example.net>", "", False)
    try:
        return s.envelope.received_header().decode().split("\r\n")[0]
    finally:
        s.end_message()


def test_a_unix_domain_client_has_the_address_postfix_names_in_its_macro() -> None:
    """Postfix's smtpd on a unix-domain socket: no address at connect (family unknown), the
    macro `_` says "localhost [127.0.0.1]", and Postfix's own Received line and mynetworks use
    127.0.0.1. Ours said "(localhost [])" (UNPARSEABLE_RELAY) and trusted_networks missed it."""
    cfg = trusting("127.0.0.1/32")
    s = Session(SimpleNamespace(config=cfg))  # type: ignore[arg-type]
    s.connect("localhost", "", MX, "MTA-v4", None, "localhost [127.0.0.1]")
    assert s.trusted and not s.local  # an SMTP client: it reads the reply itself
    assert received(s) == "Received: from client.example.net (localhost [127.0.0.1])"
    s6 = Session(SimpleNamespace(config=Config()))  # type: ignore[arg-type]
    s6.connect("localhost", "", MX, "MTA-v4", None, "localhost [IPv6:::1]")
    assert received(s6) == "Received: from client.example.net (localhost [::1])"


def test_a_client_with_no_address_anywhere_is_written_as_this_host() -> None:
    """milter_connect_macros without `_` and a unix-domain client: still a relay SpamAssassin
    can parse, the loopback address Postfix writes for it (not trusted by trusted_networks:
    nothing named an address)."""
    cfg = trusting("127.0.0.1/32")
    s = Session(SimpleNamespace(config=cfg))  # type: ignore[arg-type]
    s.connect("localhost", "", MX, "MTA-v4", None, "")
    assert not s.trusted
    assert received(s) == "Received: from client.example.net (localhost [127.0.0.1])"


@pytest.mark.parametrize(("macro", "addr"), [
    ("localhost [127.0.0.1]", "127.0.0.1"),
    ("unknown [::1]", "::1"),
    ("mail.example.net [IPv6:2001:db8::5] (may be forged)", "2001:db8::5"),
    ("root@localhost", ""),
    ("x [not-an-address]", ""),
    ("x [1.2.3]", ""),  # address characters, but no address
    ("", ""),
])
def test_macro_address(macro: str, addr: str) -> None:
    assert macro_address(macro) == addr
