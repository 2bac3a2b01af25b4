"""An mbox is split twice in `train`: whole in memory (a file under MBOX_IN_MEMORY) and line
by line (stdin with --mbox, a pipe, a bigger file). The two must give the same messages, or
the same mailbox learns differently by its size and by how it reaches `train`. Since the
twenty-seventh session both trust a Content-Length that lands on the next separator (Dovecot's
mbox files escape no "From " line in a body), the streamed one by reading the body ahead: the
property below generates mboxes with such lengths right, wrong and missing, body lines that
look like separators, quoted ">From " lines and header-like lines, and compares the two."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spambridge import train

SEPARATORS = [b"From a@b Mon Jan  1 00:00:00 2024\n", b"From a 0:00\n", b"From x\n"]
BODY_LINES = [b"plain words here\n", b"From someone Mon Jan  1 00:00:00 2024\n",
              b">From quoted\n", b">>From twice\n", b"\n", b"From: c@d\n", b"Subject: s\n",
              b"Content-Length: 7\n", b"From a 0:00\n"]


@st.composite
def mbox(draw: st.DrawFn) -> bytes:
    out = bytearray()
    for i in range(draw(st.integers(1, 4))):
        body = b"".join(draw(st.lists(st.sampled_from(BODY_LINES), max_size=6)))
        header = b"From: s%d@example.org\nSubject: m%d\n" % (i, i)
        length = draw(st.sampled_from(["none", "exact", "off", "huge"]))
        if length == "exact":
            header += b"Content-Length: %d\n" % len(body)
        elif length == "off":
            header += b"Content-Length: %d\n" % max(0, len(body) + draw(st.sampled_from(
                [-2, -1, 1, 2])))
        elif length == "huge":
            header += b"Content-Length: 99999999\n"
        if draw(st.booleans()):  # a body without its last newline
            body = body.rstrip(b"\n")
        out += draw(st.sampled_from(SEPARATORS)) + header + b"\n" + body + b"\n"
    data = bytes(out)
    if draw(st.booleans()):
        data = data.replace(b"\n", b"\r\n")
    return data


def split_both_ways(data: bytes, max_size: int) -> tuple[list[object], list[object]]:
    def norm(items: list[train.Item]) -> list[object]:
        # its end as it came too: spamd is sent that (SpamAssassin knows a message by it)
        return [i.problem if i.data is None else train.strip_markup(i.data, keep_end=True)
                for i in items]

    return (norm(list(train.sources._split_mbox("box", data, max_size))),
            norm(list(train.read_path("-", max_size, mbox=True, stdin=io.BytesIO(data)))))


EXAMPLES = int(os.environ.get("SPAMBRIDGE_MBOX_EXAMPLES", "600"))


@settings(max_examples=EXAMPLES, deadline=None)
@given(mbox())
def test_an_mbox_splits_alike_in_memory_and_streamed(data: bytes) -> None:
    in_memory, streamed = split_both_ways(data, 0)
    assert in_memory == streamed


@st.composite
def mbox_and_limit(draw: st.DrawFn) -> tuple[bytes, int]:
    """An mbox and a --max-size within a few bytes of the size of one of its messages, by
    any count (with its last newline or not, its CRs, its separator line, its ">From ")."""
    data = draw(mbox())
    sizes = {len(i.data) for i in train.sources._split_mbox("box", data, 0) if i.data}
    sizes |= {len(piece) for piece in data.replace(b"\r\n", b"\n").split(b"\n\nFrom ")}
    sizes |= {len(piece) for piece in data.split(b"\r\n\r\nFrom ")}
    near = sorted({s + d for s in sizes for d in range(-3, 4) if s + d > 0})
    return data, draw(st.sampled_from(near))


@settings(max_examples=EXAMPLES, deadline=None)
@given(mbox_and_limit())
def test_an_mbox_splits_alike_at_the_max_size(case: tuple[bytes, int]) -> None:
    """With a --max-size near a message's size: both learn the same messages and call the
    same ones too large. They counted a size differently (in memory without its last newline
    and CRs, streamed with the blank line before the next separator, CRs, and ">From "
    before unescaping), so a message within a few bytes of the limit was learned from a
    small mbox file and "too large" from a big one or stdin."""
    data, max_size = case
    in_memory, streamed = split_both_ways(data, max_size)
    assert in_memory == streamed


def test_a_content_length_that_holds_keeps_a_separator_like_body_line() -> None:
    """The case the property is about, spelled out: Dovecot's mbox with a body line that looks
    like a separator, its Content-Length right, is one message both ways."""
    body = b"see below\n\nFrom someone Mon Jan  1 00:00:00 2024\nthe patch\n"
    data = (b"From a@b Mon Jan  1 00:00:00 2024\nFrom: x@y\nSubject: one\nContent-Length: %d\n\n"
            % len(body) + body + b"\nFrom a@b Mon Jan  1 00:00:00 2024\nFrom: z@y\n"
            b"Subject: two\nContent-Length: 5\n\nhello\n")
    in_memory, streamed = split_both_ways(data, 0)
    assert in_memory == streamed and len(in_memory) == 2


def _wrong_lengths(n: int, length: int) -> list[bytes]:
    """An mbox (as lines) of `n` small messages whose Content-Length lands nowhere: one a
    sender wrote, kept by an MDA that is not Dovecot's (procmail, Sendmail's mail.local)."""
    lines: list[bytes] = []
    for i in range(n):
        lines += [b"From a@b Mon Jan  1 00:00:00 2024\n", b"From: s%d@example.org\n" % i,
                  b"Subject: m%d\n" % i, b"Content-Length: %d\n" % length, b"\n"]
        lines += [b"line %d of a body that says nothing much\n" % j for j in range(20)]
        lines.append(b"\n")
    return lines


def test_wrong_content_lengths_do_not_make_a_streamed_mbox_read_again_and_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each message's body was read ahead as far as its Content-Length (up to --max-size),
    then put back and read again: a stream of small spams each saying "Content-Length:
    499999" was read some 500 KB per message, 800 messages took 100 times as long as
    without the field, and it grows with the square of their number. Counted here as the
    lines the splitter is given: no more than twice those of the mbox."""
    given = 0
    real_next = train.sources._Pushback.__next__

    def counting(self: train.sources._Pushback) -> bytes:
        nonlocal given
        given += 1
        return real_next(self)

    monkeypatch.setattr(train.sources._Pushback, "__next__", counting)
    lines = _wrong_lengths(300, 499_999)
    items = list(train.sources._split_lines("box", iter(lines), train.DEFAULT_MAX_SIZE))
    assert len(items) == 300 and all(i.data is not None for i in items)
    assert given <= 2 * len(lines), (given, len(lines))


def test_a_huge_content_length_does_not_read_a_streamed_mbox_whole() -> None:
    """With --max-size 0 (no limit) a message whose Content-Length says 10^14 had its body
    read ahead to the end of the stream, held in memory at once: a multi-gigabyte mbox, the
    one a stream is for, sat in memory whole. The first message comes before the stream is
    read much past it."""
    lines = _wrong_lengths(200, 10**14)
    drawn = 0

    def source() -> Iterator[bytes]:
        nonlocal drawn
        for line in lines:
            drawn += 1
            yield line

    first = next(train.sources._split_lines("box", source(), 0))
    assert first.data is not None and b"Subject: m0" in first.data
    assert drawn < 100, drawn


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"])
def test_a_line_as_long_as_a_streamed_read_ends_no_message(
        monkeypatch: pytest.MonkeyPatch, line_end: bytes) -> None:
    """A stream is read in pieces of at most _LINE bytes. After a line of exactly that many
    (its CR the last of them, with CRLF) its line end came as a piece of its own, read as a
    blank line: the last message lost its last newline (and was learned under a --max-size
    a byte too small), and an unescaped "From " line after it cut the message in two, where
    the mbox split in memory did neither."""
    monkeypatch.setattr(train.sources, "_LINE", 64)
    long = b"y" * (64 - len(line_end) + 1)  # the piece ends where its line end begins
    sep = b"From a@b Mon Jan  1 00:00:00 2024\n"
    last = b"From: b@x\nSubject: two\n\n" + long + line_end
    data = sep + b"From: a@x\nSubject: one\n\nhello\n\n" + sep + last
    for max_size in (0, len(last.replace(b"\r\n", b"\n")) - 1):
        in_memory, streamed = split_both_ways(data, max_size)
        assert in_memory == streamed and len(in_memory) == 2, max_size
    data = sep + b"From: c@x\nSubject: three\n\n" + long + line_end + sep + b"From: d@x\n\nbody\n"
    in_memory, streamed = split_both_ways(data, 0)
    assert in_memory == streamed and len(in_memory) == 1
