"""The message buffer: bytes kept exactly, bounded memory, and the synthesized Received line."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from harness import open_files_in

from spambridge import defaults
from spambridge.message import Envelope, MessageBuffer, parse_raw
from spambridge.socketspec import parse_socket_spec


def test_render_keeps_folding_and_8bit_and_uses_crlf() -> None:
    buf = MessageBuffer(1 << 20, 1 << 16)
    buf.add_header("Subject", b"caf\xe9 first part\n\tsecond part")
    buf.add_header("X-Tab", b"\tv")
    buf.add_body(b"line1\nline2\r\nline3\n")
    raw = buf.render(b"Received: x\r\n")
    assert raw == (
        b"Received: x\r\nSubject: caf\xe9 first part\r\n\tsecond part\r\nX-Tab: \tv\r\n\r\n"
        b"line1\r\nline2\r\nline3\r\n"
    )


def test_owned_headers_deleted_last_index_first() -> None:
    buf = MessageBuffer(1 << 20, 1 << 16)
    for name in ("X-Spam-Flag", "Subject", "x-spam-flag", "X-Spam-Score", "X-Spam-Flag"):
        buf.add_header(name, b"YES")
    assert buf.owned_headers() == [("X-Spam-Flag", 3), ("X-Spam-Flag", 2),
                                   ("X-Spam-Flag", 1), ("X-Spam-Score", 1)]


def test_a_flood_of_forged_fields_is_removed_up_to_a_cap() -> None:
    """Postfix cannot apply more than 10,000 edits to a message: the first MAX_OWNED
    occurrences go (each name's highest index first), and memory is bounded by the number
    of distinct names remembered."""
    buf = MessageBuffer(1 << 30, 1 << 16)
    for i in range(3000):
        buf.add_header("X-Spam-Flag", b"forged")
        buf.add_header(f"X-Spam-Name{i}", b"x")
    owned = buf.owned_headers()
    assert len(owned) == defaults.MAX_OWNED and buf.owned_total == 6000
    assert owned[:3] == [("X-Spam-Flag", 1000), ("X-Spam-Flag", 999), ("X-Spam-Flag", 998)]
    assert owned[-1] == ("X-Spam-Flag", 1)
    assert len(buf.owned) == defaults.MAX_OWNED_NAMES
    junk_first = MessageBuffer(1 << 20, 1 << 16)  # the budget spent on junk names first
    for i in range(1200):
        junk_first.add_header(f"X-Spam-J{i % 150}", b"x")
    junk_first.add_header("X-Spam-Flag", b"NO")
    junk_first.add_header("x-spam-status", b"No, score=-5")
    gone = junk_first.owned_headers()
    assert gone[:2] == [("X-Spam-Flag", 1), ("x-spam-status", 1)]
    assert len(gone) == 2 + defaults.MAX_OWNED_NAMES * 8  # the names remembered, 8 each
    shielded = MessageBuffer(1 << 20, 1 << 16)  # a flood of one of our names, then another
    for _ in range(5000):
        shielded.add_header("X-Spam-Flag", b"forged")
    shielded.add_header("X-Spam-Status", b"No, forged")
    gone = shielded.owned_headers()
    assert ("X-Spam-Status", 1) in gone and len(gone) == defaults.MAX_OWNED
    small = MessageBuffer(1 << 20, 1 << 16)
    for i in range(3):
        small.add_header("X-Spam-Flag", b"forged")
        small.add_header(f"X-Spam-N{i}", b"x")
    assert small.owned_headers() == [("X-Spam-Flag", 3), ("X-Spam-Flag", 2), ("X-Spam-Flag", 1),
                                     ("X-Spam-N0", 1), ("X-Spam-N1", 1), ("X-Spam-N2", 1)]


def test_oversize_stops_keeping_the_body() -> None:
    buf = MessageBuffer(max_scan_size=10_000, spool_memory=1000)
    assert buf.add_body(b"x" * 9000)
    assert not buf.add_body(b"x" * 9000)
    assert buf.oversize
    assert not buf.add_body(b"more")


def test_body_spills_to_disk_past_spool_memory() -> None:
    buf = MessageBuffer(max_scan_size=1 << 24, spool_memory=64 * 1024)
    buf.add_body(b"a" * 60_000)
    assert not buf.spilled
    buf.add_body(b"b" * 60_000)
    assert buf.spilled
    assert buf.render().endswith(b"b" * 60_000)
    edge = MessageBuffer(max_scan_size=1 << 24, spool_memory=1000)
    edge.add_body(b"a" * 1000)  # spool_memory bytes are kept in memory; one more spills
    assert not edge.spilled
    edge.add_body(b"b")
    assert edge.spilled


def test_received_header_from_macros() -> None:
    env = Envelope(client_name="mail.example.net", client_addr="192.0.2.10",
                   helo="mail.example.net", mta_host="mx.test.example",
                   recipients=["<bob@test.example>"], queue_id="4ABCDEF0123", auth_user="")
    when = datetime(2026, 11, 25, 10, 0, tzinfo=timezone(timedelta(hours=1)))
    assert env.received_header(when) == (
        b"Received: from mail.example.net (mail.example.net [192.0.2.10])\r\n"
        b"\tby mx.test.example (Postfix) with ESMTP id 4ABCDEF0123\r\n"
        b"\tfor <bob@test.example>;\r\n"
        b"\tWed, 25 Nov 2026 10:00:00 +0100\r\n"
    )


def test_trace_fields_put_the_envelope_sender_on_top_as_spamass_milter_did() -> None:
    """X-Envelope-From above our Received line, as spamass-milter wrote it (SpamAssassin
    distrusts one below a Received line); `<>` for a bounce; nothing for a delivered copy."""
    when = datetime(2026, 11, 25, 10, 0, tzinfo=timezone(timedelta(hours=1)))
    env = Envelope(client_addr="127.0.0.1", sender="<alice@example.net>",
                   recipients=["<bob@test.example>"])
    assert env.trace_fields(when) == (b"X-Envelope-From: <alice@example.net>\r\n"
                                      + env.received_header(when))
    assert Envelope(sender="<>").trace_fields(when).startswith(b"X-Envelope-From: <>\r\n")
    assert Envelope().trace_fields(when) == Envelope().received_header(when)
    assert Envelope(sender="<a@x>", delivered=True).trace_fields(when) == b""
    evil = Envelope(sender="<a@x>\r\nX-Spam-Flag: NO").trace_fields(when)
    assert b"\r\nX-Spam-Flag" not in evil and evil.count(b"\r\n") == 5  # X-Envelope-From, then Received in 4 lines


def test_trace_fields_leave_the_bayes_tokens_as_they_were() -> None:
    """The local Bayes engine reads the same tokens with X-Envelope-From on top as without:
    a database trained before (or from files, which have none) scores live mail alike."""
    from spambridge.bayes.tokenizer import tokenize

    env = Envelope(client_name="mail.example.net", client_addr="192.0.2.10",
                   helo="mail.example.net", sender="<alice@example.net>")
    buf = parse_raw(b"From: a@example.net\nSubject: hello there\n\nSome words here.\n")
    when = datetime(2026, 11, 25, 10, 0, tzinfo=timezone(timedelta(0)))
    assert (sorted(tokenize(buf.render(env.trace_fields(when))))
            == sorted(tokenize(buf.render(env.received_header(when)))))


def test_trace_fields_cost_the_bayes_engine_none_of_its_limits() -> None:
    """X-Envelope-From takes no place among the fields the tokenizer reads (max_headers)
    nor bytes of what it looks at (max_bytes): with it, a message of 499 fields lost its last
    one and was "unread" (never ham), and a message's last words went past the byte cap."""
    from spambridge.bayes.tokenizer import DEFAULT_LIMITS, Limits, tokenize, unread

    env = Envelope(client_addr="192.0.2.10", sender="<alice@example.net>")
    when = datetime(2026, 11, 25, 10, 0, tzinfo=timezone(timedelta(0)))
    # with our Received line, exactly max_headers fields
    fields = b"".join(b"X-List-%d: x\n" % i for i in range(DEFAULT_LIMITS.max_headers - 2))
    buf = parse_raw(fields + b"Subject: hello there\n\nSome words here.\n")
    tokens = tokenize(buf.render(env.trace_fields(when)))
    assert unread(tokens) == "" and "header:Subject:1" in tokens
    assert tokens == tokenize(buf.render(env.received_header(when)))
    # the cap falls in the body's last word without the field: the same words with it
    buf = parse_raw(b"Subject: hi\n\n" + b" ".join(b"word%03d" % i for i in range(100)) + b"\n")
    received = env.received_header(when)
    limits = Limits(max_bytes=len(buf.render(received)) - 3)
    assert (tokenize(buf.render(env.trace_fields(when)), limits)
            == tokenize(buf.render(received), limits))


def test_received_header_cannot_be_injected() -> None:
    env = Envelope(helo="evil\r\nX-Spam-Flag: NO", client_addr="192.0.2.1",
                   auth_user="alice", tls=True)
    line = env.received_header()
    assert b"\r\nX-Spam-Flag" not in line
    assert b"with ESMTPSA" in line
    assert line.count(b"\r\n") == 3  # from / by / date lines, no recipient (none given)


def test_received_date_is_now_in_local_time() -> None:
    line = Envelope().received_header().decode()
    stamp = line.rsplit("\t", 1)[1].strip()
    from email.utils import parsedate_to_datetime

    assert abs((parsedate_to_datetime(stamp) - datetime.now().astimezone()).total_seconds()) < 5


def test_parse_raw_matches_what_a_milter_receives() -> None:
    buf = parse_raw(b"From x@y Mon Jan  1 00:00:00 2024\nSubject: a\n\tb\nTo:  c\n\nbody\n")
    assert buf.headers == [("Subject", b"a\n\tb"), ("To", b" c")]
    assert buf.render().endswith(b"\r\n\r\nbody\r\n")



@pytest.mark.parametrize("stray", [
    b"this line is not a header",  # no colon
    b"\xc4rger: 8-bit bytes in the name",  # Postfix's is_header() refuses 8-bit names
    b"two words: a blank inside the name",
])
def test_parse_raw_ends_the_header_where_postfix_does(stray: bytes) -> None:
    """Postfix ends the header block at the first line that is neither a field nor a
    continuation and hands that line and the rest to the milter as body (measured with the real
    Postfix 3.7 of tests/postfix_instance.py); `check` must see the same message, or a stray
    line turns the Content-Type after it from the milter's body text into check's header."""
    raw = (b"From: a@example.org\nSubject: hi\n\tthere\n" + stray + b"\n"
           b"Content-Type: text/html\n\n<p>body</p>\n")
    buf = parse_raw(raw)
    assert buf.headers == [("From", b"a@example.org"), ("Subject", b"hi\n\tthere")]
    assert buf.render() == (b"From: a@example.org\r\nSubject: hi\r\n\tthere\r\n\r\n" + stray
                            + b"\r\nContent-Type: text/html\r\n\r\n<p>body</p>\r\n")


def test_parse_raw_without_a_field_on_the_first_line_is_all_body() -> None:
    """A first line that starts with a blank continues nothing: Postfix sees no header."""
    buf = parse_raw(b" leading: blank\nFrom: a@example.org\n\nbody\n")
    assert buf.headers == []
    assert buf.render() == b"\r\n leading: blank\r\nFrom: a@example.org\r\n\r\nbody\r\n"
    assert parse_raw(b"Subject: only a header").headers == [("Subject", b"only a header")]
    assert parse_raw(b"Subject : obsolete blank\n\nb\n").headers == [("Subject",
                                                                         b"obsolete blank")]


def test_delivered_means_a_return_path_not_an_upstream_delivered_to() -> None:
    """Live mail from a list or a forward carries the Delivered-To an earlier hop wrote
    (Postfix keeps it); only delivery's Return-Path, which Postfix drops from live mail, tells
    a mailbox file, so `check` still writes the Received line the milter would see."""
    live = parse_raw(b"Delivered-To: list@lists.example\nFrom: a@example.org\n\nbody\n")
    assert not live.delivered()
    assert parse_raw(b"Return-Path: <a@example.org>\nFrom: a@example.org\n\nb\n").delivered()


@pytest.mark.parametrize(("head", "subject"), [
    # delivered and flagged by the milter: the Subject it came with (and none if it had none)
    (b"Return-Path: <a@example.org>\nSubject: [SPAM] win\nX-Spam-Flag: YES\n", b"win"),
    (b"Return-Path: <a@example.org>\nSubject: [SPAM]\n\tbig\nX-Spam-Flag: YES\n",
     b"[SPAM]\n\tbig"),  # a fold the milter does not write: the sender's
    (b"Return-Path: <a@example.org>\nSubject: [SPAM]\nX-Spam-Flag: YES\n", None),
    # live mail is scored as the milter gets it, forged flag and all
    (b"Subject: [SPAM] win\nX-Spam-Flag: YES\n", b"[SPAM] win"),
    # not flagged: a sender's own Subject that opens with the tag
    (b"Return-Path: <a@example.org>\nSubject: [SPAM] win\nX-Spam-Flag: NO\n", b"[SPAM] win"),
])
def test_check_reads_a_delivered_subject_as_the_milter_scanned_it(head: bytes,
                                                                  subject: bytes | None) -> None:
    buf = parse_raw(head + b"From: a@example.org\n\nbody\n", subject_tag="[SPAM]")
    assert buf.header_value("Subject") == subject
    # a delivered message's X-Spam-* fields are the milter's own, not forged ones it came with
    assert [n for n, _ in buf.owned_headers()] == ([] if b"Return-Path" in head
                                                   else ["X-Spam-Flag"])
    assert parse_raw(head + b"\nbody\n").header_value("Subject") == (
        head.split(b"Subject: ")[1].split(b"\nX-Spam")[0])  # no tag configured: as it lies

    assert parse_socket_spec("inet:11332@127.0.0.1").postfix == "inet:127.0.0.1:11332"
    assert parse_socket_spec("inet6:11332@::1").postfix == "inet:[::1]:11332"
    assert parse_socket_spec("local:/run/x.sock").libmilter == "unix:/run/x.sock"
    assert parse_socket_spec("inet:11332").host == "127.0.0.1"


def test_received_header_for_a_client_without_reverse_dns() -> None:
    env = Envelope(client_name="[203.0.113.9]", client_addr="203.0.113.9", helo="pc17")
    assert env.received_header().startswith(b"Received: from pc17 (unknown [203.0.113.9])\r\n")


def test_a_message_of_exactly_max_scan_size_is_scanned() -> None:
    """max_scan_size is the largest message scanned, counted as the MTA sends it: each
    field as `name: value` CRLF, then the body. One byte more is oversize (on_oversize)."""
    head = len("Subject") + len(b"hi") + 4
    exact = MessageBuffer(max_scan_size=head + 100, spool_memory=1000)
    exact.add_header("Subject", b"hi")
    assert exact.add_body(b"b" * 100)
    assert not exact.oversize
    over = MessageBuffer(max_scan_size=head + 100, spool_memory=1000)
    over.add_header("Subject", b"hi")
    assert not over.add_body(b"b" * 101)
    assert over.oversize
    just_header = MessageBuffer(max_scan_size=head, spool_memory=1000)
    just_header.add_header("Subject", b"hi")
    assert not just_header.oversize
    just_header.add_header("X", b"")
    assert just_header.oversize


def test_fields_past_max_headers_are_counted_not_kept_and_the_message_is_scanned() -> None:
    """10,000 lines of `X-P: a` (70 kB) made spam oversize, so unscanned and accepted: the
    fields past MAX_HEADERS are left out of the scan instead, and still count toward the
    size; forged X-Spam-* fields among them are still removed, and the first Subject is kept
    (the one a tag rewrites: without it a second Subject was added)."""
    buf = MessageBuffer(max_scan_size=1 << 30, spool_memory=1000)
    for _ in range(defaults.MAX_HEADERS):
        buf.add_header("X-P", b"a")
    buf.add_header("X-P", b"b")
    buf.add_header("X-Spam-Status", b"No, forged")
    buf.add_header("Subject", b"cheap pills")
    buf.add_header("Subject", b"second")
    buf.add_body(b"buy now\r\n")
    assert not buf.oversize and buf.unscanned == 3
    raw = buf.render()
    assert raw.count(b"X-P: a\r\n") == defaults.MAX_HEADERS and b"X-P: b" not in raw
    assert raw.endswith(b"X-P: a\r\nSubject: cheap pills\r\n\r\nbuy now\r\n")
    fields = [b"X-P: a\r\n"] * defaults.MAX_HEADERS + [
        b"X-P: b\r\n", b"X-Spam-Status: No, forged\r\n", b"Subject: cheap pills\r\n",
        b"Subject: second\r\n"]
    assert buf.size == sum(map(len, fields)) + len(b"buy now\r\n")
    assert buf.owned_headers() == [("X-Spam-Status", 1)]
    big = MessageBuffer(max_scan_size=defaults.MAX_HEADERS * 8 + 7, spool_memory=1000)
    for _ in range(defaults.MAX_HEADERS + 1):
        big.add_header("X-P", b"a")
    assert big.oversize  # max_scan_size still counts every field


def test_received_header_names_the_recipient_only_when_there_is_one() -> None:
    """As Postfix writes it: `for <rcpt>` with one recipient, none with more (the others
    would be disclosed to the scanner as if the mail were for the first alone)."""
    two = Envelope(client_addr="192.0.2.1", helo="h", recipients=["<a@x.example>",
                                                                   "<b@x.example>"])
    assert b"\tfor " not in two.received_header()
    one = Envelope(client_addr="192.0.2.1", helo="h", recipients=["<a@x.example>"])
    assert b"\tfor <a@x.example>;\r\n" in one.received_header()


def test_received_header_without_helo_names_the_client() -> None:
    env = Envelope(client_name="mail.example.net", client_addr="192.0.2.10")
    assert env.received_header().startswith(
        b"Received: from mail.example.net (mail.example.net [192.0.2.10])\r\n")
    assert Envelope(client_addr="192.0.2.10").received_header().startswith(
        b"Received: from unknown (unknown [192.0.2.10])\r\n")


def test_a_delivered_message_gets_no_second_received_line() -> None:
    assert Envelope(client_addr="192.0.2.1", delivered=True).received_header() == b""


def test_parse_raw_body_starts_after_the_blank_line() -> None:
    """The blank line ends the header: it is not part of the body Postfix hands the milter,
    so `check` must not score a body with an extra empty first line."""
    buf = parse_raw(b"Subject: a\n\nbody\n")
    assert buf.render() == b"Subject: a\r\n\r\nbody\r\n"


@pytest.mark.parametrize("name", ["X-Spam-Checker-Version", "X-Spam-Report", "x-spam-virus"])
def test_a_forged_known_field_is_removed_after_a_flood_of_junk_names(name: str) -> None:
    """X-Spam-Checker-Version is one of the fields we write, X-Spam-Report and X-Spam-Virus
    ones SpamAssassin's setups write and readers see: remembered past the budget of names, so
    a forged one cannot reach the mailbox behind 1.4 kB of junk X-Spam-* names (the report
    did, before)."""
    buf = MessageBuffer(1 << 20, 1 << 16)
    for i in range(defaults.MAX_OWNED_NAMES + 20):
        buf.add_header(f"X-Spam-J{i}", b"x")
    buf.add_header(name, b"Forger 1.0")
    assert (name, 1) in buf.owned_headers()


@pytest.mark.parametrize("helo", ["a.example (localhost [127.0.0.1])",
                                  "x (trusted.example [10.9.8.7]) by mx.test.example",
                                  "x(y", "x)(y[1.2.3.4]"])
def test_a_helo_cannot_name_another_relay(helo: str) -> None:
    """Postfix hands the milter the client's HELO words as typed, spaces and parentheses
    included; in its own Received line it writes them as "?". Verbatim, our line read to
    SpamAssassin as a hop from 127.0.0.1 (ALL_TRUSTED, and the DNSBLs asked about
    127.0.0.1 instead of the client)."""
    env = Envelope(client_name="[203.0.113.5]", client_addr="203.0.113.5", helo=helo)
    first = env.received_header().split(b"\r\n")[0].decode()
    expected = helo.replace(" ", "?").replace("(", "?").replace(")", "?")
    assert first == f"Received: from {expected} (unknown [203.0.113.5])"
    assert first.count("(") == 1 and first.count("[") == 1 + helo.count("[")


def test_a_client_name_cannot_name_another_relay() -> None:
    """The client's name (the MTA's reverse lookup) in the comment is written as the HELO is:
    spaces and parentheses as "?", so that it cannot close the comment and name a relay."""
    env = Envelope(client_name="mx (trusted.example [10.9.8.7])", client_addr="203.0.113.5",
                   helo="mx.example")
    assert env.received_header().split(b"\r\n")[0] == (
        b"Received: from mx.example (mx??trusted.example?[10.9.8.7]? [203.0.113.5])")


def test_helo_sanitised_as_postfix_writes_it() -> None:
    """What Postfix 3.7 wrote for `EHLO a.example (trusted.example [10.9.8.7])`."""
    env = Envelope(client_name="localhost", client_addr="127.0.0.1",
                   helo="a.example (trusted.example [10.9.8.7])")
    assert env.received_header().startswith(
        b"Received: from a.example??trusted.example?[10.9.8.7]? (localhost [127.0.0.1])\r\n")


def test_received_header_names_the_envelope_sender_as_spamass_milter_did() -> None:
    """SpamAssassin's EnvelopeFrom (SPF of MAIL FROM, the From-domain rules) comes from an
    "(envelope-from <…>)" clause; Postfix's own line, which milters never see, has none.
    UTF-8 addresses stay text, as Postfix writes them; a quoted local part cannot open a
    comment; a bounce says <>; `check` (no envelope) names no sender."""
    when = datetime(2026, 11, 25, 10, 0, tzinfo=timezone(timedelta(0)))
    env = Envelope(client_addr="192.0.2.10", sender="<jörg@bücher.example>",
                   recipients=["<ĉefo@test.example>"])
    assert env.received_header(when).endswith(
        "\tfor <ĉefo@test.example>;\r\n\tWed, 25 Nov 2026 10:00:00 +0000\r\n"
        "\t(envelope-from <jörg@bücher.example>)\r\n".encode())
    assert Envelope(sender="<>").received_header(when).endswith(b"(envelope-from <>)\r\n")
    quoted = Envelope(sender='<"x (a [192.0.2.99])"@example.net>').received_header(when)
    assert b'(envelope-from <"x??a?[192.0.2.99]?"@example.net>)\r\n' in quoted
    assert b"envelope-from" not in Envelope().received_header(when)
    bad = Envelope(sender="<a\udcff@example.net>").received_header(when)  # not UTF-8
    assert b"(envelope-from <a\\xff@example.net>)" in bad
    helo = Envelope(helo="bücher.example", client_addr="192.0.2.10").received_header(when)
    assert helo.startswith("Received: from bücher.example (unknown [192.0.2.10])".encode())



def test_spool_memory_zero_spools_every_body(tmp_path: Path) -> None:
    """`spool_memory = 0` (documented range 0-64 MiB: "body bytes kept in memory before
    spilling") keeps no body in memory: a SpooledTemporaryFile of max_size 0 never rolls over,
    so every body stayed in RAM up to max_scan_size, the opposite of what the admin asked."""
    buf = MessageBuffer(max_scan_size=1 << 20, spool_memory=0, spool_dir=str(tmp_path))
    buf.add_body(b"x" * 100_000)
    assert buf.spilled and open_files_in(str(tmp_path)), "the body stayed in memory"
    assert buf.render().endswith(b"x" * 100_000)
    buf.close()
    assert not open_files_in(str(tmp_path))


def test_past_max_scan_size_no_more_fields_are_kept() -> None:
    """An oversize message is not scanned: fields that come after it went over are counted
    (its size in the log line), not kept, so 1,000 fields of 100 kB (Postfix's
    header_size_limit each) cost no 100 MB of memory."""
    buf = MessageBuffer(max_scan_size=200_000, spool_memory=1000)
    for _ in range(50):
        buf.add_header("X-Junk", b"a" * 100_000)
    assert buf.oversize and buf.size == 50 * (len("X-Junk") + 100_000 + 4)
    assert sum(len(n) + len(v) for n, v in buf.headers) <= 200_000


def test_a_second_subject_past_max_headers_is_not_scanned_when_the_first_is_kept() -> None:
    """Past MAX_HEADERS only a Subject the buffer has not kept yet is taken (the one a tag
    rewrites): a second one there is left out like any other field, and said in the
    decision line's unscanned_fields."""
    buf = MessageBuffer(max_scan_size=1 << 30, spool_memory=1000)
    buf.add_header("Subject", b"the first")
    for _ in range(defaults.MAX_HEADERS):
        buf.add_header("X-P", b"a")
    buf.add_header("Subject", b"the second")
    assert buf.unscanned == 2
    raw = buf.render()
    assert raw.count(b"Subject: ") == 1 and b"the second" not in raw


def test_the_subject_a_tag_rewrites_is_the_first_of_two() -> None:
    """libmilter's index 1 is the first Subject: the tag must be written on its text, or a
    message with two Subjects would go out with the second one's text in the first's place."""
    buf = parse_raw(b"Subject: hello bob\nTo: b@example.org\nSubject: buy now\n\nx\n")
    assert buf.header_value("Subject") == b"hello bob"
    assert buf.header_value("subject") == b"hello bob"


def test_parse_raw_counts_the_size_the_milter_counts() -> None:
    """`check` reads a file with LF line ends; the milter gets CRLF from the MTA. The body's
    size (max_scan_size, the log line's size=) must be counted as the milter counts it, or a
    message just under the limit through the milter is oversize to `check`, or the other way."""
    raw = b"Subject: hi\n\n" + b"line\n" * 1000
    buf = parse_raw(raw)
    milter = MessageBuffer(1 << 20, 1 << 16)
    milter.add_header("Subject", b"hi")
    milter.add_body(b"line\r\n" * 1000)
    assert buf.size == milter.size == len("Subject") + 2 + 4 + 6000
    assert buf.render() == milter.render()
    edge = len("Subject") + 2 + 4 + 6000
    assert not parse_raw(raw, max_scan_size=edge).oversize
    assert parse_raw(raw, max_scan_size=edge - 1).oversize
