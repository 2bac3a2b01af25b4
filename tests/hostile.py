"""Hypothesis strategies for hostile mail: what a spammer, a broken mailer or a fuzzer can put
through a real MTA into a milter. Used by the fuzz tests (milter, `train`, `check`).

Header names follow Postfix's header grammar (printable ASCII without a colon: anything else
is body to Postfix); values are arbitrary bytes except NUL (which cannot travel in the milter
protocol's strings) and a line break that is not a fold. Bodies are arbitrary bytes.
"""

from __future__ import annotations

import base64

from hypothesis import strategies as st

NAME_CHARS = "".join(chr(c) for c in range(33, 127) if chr(c) != ":")
# Postfix (3.7, defaults) shortens a header to about 60 kB before a milter sees it, and
# libmilter drops a connection sending it a packet over 64 KiB: an MTA stand-in cuts there.
POSTFIX_HEADER_CAP = 60_000
COMMON = ["Subject", "From", "To", "Cc", "Date", "Message-ID", "MIME-Version",
          "Content-Type", "Content-Transfer-Encoding", "Content-Disposition", "Received",
          "Reply-To", "X-Spam-Flag", "X-Spam-Status", "X-Spam-Score", "X-Mailer"]
CHARSETS = ["utf-8", "iso-8859-1", "windows-1252", "koi8-r", "gb2312", "shift_jis", "utf-7",
            "x-unknown", "", "utf-8*en", "utf-16", "us-ascii"]

header_names = st.one_of(st.sampled_from(COMMON), st.text(NAME_CHARS, min_size=1, max_size=30))

# one physical line of a header value: anything but NUL, CR and LF
_line = st.binary(max_size=200).map(
    lambda b: b.replace(b"\0", b"").replace(b"\n", b" ").replace(b"\r", b" "))


@st.composite
def encoded_word(draw: st.DrawFn) -> bytes:
    """An RFC 2047 encoded word: right, wrong charset, broken base64, stray `?` and `=`."""
    charset = draw(st.sampled_from(CHARSETS)).encode()
    enc = draw(st.sampled_from([b"B", b"Q", b"b", b"q", b"X", b""]))
    raw = draw(st.binary(max_size=60))
    payload = draw(st.one_of(
        st.just(base64.b64encode(raw)),
        st.just(base64.b64encode(raw)[:-1]),  # bad padding
        st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"").replace(b"\n", b"")),
        st.just(b"=" + raw.hex().upper().encode()[:30] + b"=ZZ=?"),
    ))
    return b"=?" + charset + b"?" + enc + b"?" + payload.replace(b"\r", b"") + b"?="


@st.composite
def header_value(draw: st.DrawFn) -> bytes:
    """A value as Postfix hands it over: lines joined by folds (LF + space or tab), with
    8-bit text, encoded words, a bare CR, or one enormous line."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return b"x" * draw(st.integers(20_000, 100_000))  # a 100 kB header line
    parts = draw(st.lists(st.one_of(_line, encoded_word(), st.just(b"\r")), max_size=6))
    folds = draw(st.lists(st.sampled_from([b" ", b"\n\t", b"\n ", b""]), min_size=len(parts),
                          max_size=len(parts)))
    return b"".join(f + p for f, p in zip(folds, parts, strict=True)).lstrip(b"\n")


@st.composite
def header_block(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    if draw(st.integers(0, 30)) == 0:  # thousands of headers
        n = draw(st.integers(1000, 3000))
        return [(f"X-H{i}", b"v") for i in range(n)]
    return draw(st.lists(st.tuples(header_names, header_value()), max_size=25))


def _base64_garbage(data: bytes) -> bytes:
    enc = base64.encodebytes(data)
    return enc[: len(enc) // 2] + b"!!!*&^%\n=\n" + enc[len(enc) // 2 :] + b"===="


@st.composite
def leaf(draw: st.DrawFn) -> bytes:
    """One non-multipart entity (headers + body) of some MIME type and encoding."""
    ctype = draw(st.sampled_from([b"text/plain", b"text/html", b"application/octet-stream",
                                  b"image/gif", b"message/rfc822", b"text/plain; charset=",
                                  b"text/", b"", b"multipart/mixed"]))
    charset = draw(st.sampled_from(CHARSETS)).encode()
    cte = draw(st.sampled_from([b"base64", b"quoted-printable", b"8bit", b"7bit", b"binary",
                                b"x-uuencode", b"BASE64", b""]))
    data = draw(st.binary(max_size=3000))
    if cte.lower() == b"base64":
        body = draw(st.sampled_from([base64.encodebytes(data), _base64_garbage(data), data]))
    elif cte == b"quoted-printable":
        body = data.replace(b"=", b"=3D") + b"=\n=ZZ=0=\r\n=" + data[:50]
    else:
        body = data
    return (b"Content-Type: " + ctype + b"; charset=" + charset + b"\n"
            b"Content-Transfer-Encoding: " + cte + b"\n\n" + body)


@st.composite
def nested(draw: st.DrawFn, depth: int) -> bytes:
    """Multipart nested `depth` deep; boundaries may be missing, repeated or never closed."""
    if depth == 0:
        return draw(leaf())
    boundary = draw(st.sampled_from([f"b{depth}", "same", "", "--", "a" * 80,
                                     f'"q {depth}"'])).encode()
    inner = draw(nested(depth - 1))
    close = draw(st.booleans())
    bare = boundary.strip(b'"')
    return (b"Content-Type: multipart/mixed; boundary=" + boundary + b"\n\npreamble\n--" + bare
            + b"\n" + inner + b"\n--" + bare + (b"--\n" if close else b"\n") + b"epilogue\n")


@st.composite
def hostile_message(draw: st.DrawFn) -> tuple[list[tuple[str, bytes]], bytes]:
    """(header fields, body) of one hostile message."""
    kind = draw(st.sampled_from(["random", "mime", "deep", "headers", "nul"]))
    headers = draw(header_block())
    if kind == "random":
        body = draw(st.binary(max_size=20_000))
    elif kind == "deep":
        entity = draw(nested(draw(st.integers(1, 120))))
        head, _, body = entity.partition(b"\n\n")
        headers += [(n.decode(), v.strip()) for n, _, v in
                    (line.partition(b":") for line in head.split(b"\n")) if n]
    elif kind == "mime":
        entity = draw(nested(draw(st.integers(0, 4))))
        head, _, body = entity.partition(b"\n\n")
        headers += [(n.decode(), v.strip()) for n, _, v in
                    (line.partition(b":") for line in head.split(b"\n")) if n]
    elif kind == "nul":
        body = b"\0" * draw(st.integers(1, 5000)) + draw(st.binary(max_size=500))
    else:
        body = b"short body\n"
    if draw(st.booleans()):
        body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return headers, body


def as_postfix_sends(headers: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    return [(n, v[:POSTFIX_HEADER_CAP]) for n, v in headers]


def as_file(headers: list[tuple[str, bytes]], body: bytes) -> bytes:
    """The same message as a file on disk (for `train` and `check`)."""
    head = b"".join(n.encode("latin-1") + b": " + v + b"\n" for n, v in headers)
    return head + b"\n" + body
