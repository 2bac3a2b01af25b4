"""Message files a mail store wrote compressed: Dovecot's zlib plugin (2.3, `zlib_save`) and
mail_compress (2.4) store each Maildir file as a gzip, bzip2, zstd or lz4 stream (xz from
Dovecot before 2.3.14), with no mark in the file name; Dovecot tells them apart by their first
bytes, and so does this. `train` and `check` read them through here: gzip, bzip2 and xz with
the standard library, decompressed a bounded piece at a time, so a small file that expands to
gigabytes costs no more than the bytes the caller asks for; zstd and lz4 (which Python 3.11
cannot read) are named, never read as mail.

Only a file's opening bytes decide: a message never starts with these (it starts with a
header field), so plain mail is never taken for compressed. The codecs are imported when a
compressed file is met, not before (the Dovecot pipe's start-up stays as it was)."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import IO, Any, cast

HEAD = 16  # bytes `sniff` looks at (Dovecot's lz4 magic is the longest: 15)

# first bytes → the format's name, as `train` and `check` say it; what Dovecot checks
# (lib-compression/compression.c), plus the lz4 tool's own frame (Dovecot writes its own)
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"Dovecot-LZ4\x0d\x2a\x9b\xc5", "Dovecot's lz4"),
    (b"\x04\x22\x4d\x18", "lz4"),
)
READABLE = ("gzip", "bzip2", "xz")

# past this many bytes out per byte in (and a first MiB), a stream is refused as a bomb: mail
# compresses 5 to 20-fold (a corpus mbox 5-11, its most compressible message 18), gzip
# cannot pass about 1030-fold at all, while bzip2 and xz turn a few KiB into gigabytes
MAX_RATIO = 1000
_FREE = 1 << 20


def sniff(head: bytes) -> str | None:
    """The compression format `head` (a file's first HEAD bytes) opens with, or None."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    # bzip2: "BZh", the block size 1-9, then a block's magic (pi) or an empty stream's end
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[3:4] != b"0" and (
            head[4:10] in (b"1AY&SY", b"\x17rE8P\x90")):
        return "bzip2"
    return None


class Damaged(Exception):
    """A compressed stream that cannot be read to its end: cut short, corrupt, or a bomb."""


UNSUPPORTED = "compressed with "  # how the problem of a file in a format not READABLE starts


class Unsupported(Exception):
    """A file in a format Python cannot read (str(): what the admin is told, and what to do)."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        super().__init__(f"{UNSUPPORTED}{fmt}: not supported (gzip, bzip2 and xz are); "
                         "decompress it first (docs/bayes.md, \"Compressed mail\")")


def read_limited(f: IO[bytes], limit: int) -> bytes:
    """At most `limit` bytes of the message in `f`, decompressed when it is compressed (the
    limit is on what comes out). Raises Unsupported or Damaged."""
    head = f.read(min(HEAD, limit))
    fmt = sniff(head)
    if fmt is None:
        return head + f.read(limit - len(head))
    with open_stream(fmt, head, f) as plain:
        return plain.read(limit)


def open_stream(fmt: str, head: bytes, rest: IO[bytes]) -> IO[bytes]:
    """The decompressed contents of a stream in `fmt` whose first bytes, `head`, were already
    read off `rest`. Reads raise Damaged; the call raises Unsupported for a format not
    READABLE."""
    if fmt not in READABLE:
        raise Unsupported(fmt)
    raw = Prefixed(head, rest)
    src = cast("IO[bytes]", raw)
    # the reader is closed with what is returned; each codec's errors on bad data
    inner: io.BufferedIOBase
    errors: tuple[type[Exception], ...]
    if fmt == "gzip":
        import gzip
        import zlib

        inner, errors = gzip.GzipFile(fileobj=src, mode="rb"), (OSError, zlib.error)
    elif fmt == "bzip2":
        import bz2

        inner, errors = bz2.BZ2File(src), (OSError,)
    else:
        import lzma

        inner, errors = lzma.LZMAFile(src), (OSError, lzma.LZMAError)  # noqa: SIM115
    return io.BufferedReader(_Guarded(fmt, inner, raw, errors))


class Prefixed(io.RawIOBase):
    """`head`, then the rest of the stream: a stream whose first bytes were read to sniff it,
    whole again. Counts the bytes handed on (the bomb check weighs what came out against
    them). A read hands on what has arrived (read1: one read of a pipe), never waiting for
    the whole size asked: a message trickling in on stdin must reach the mbox splitter, and
    be committed, as it comes, not once 8 KiB more have come."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self.head, self.rest, self.count = head, rest, 0
        self._read: Callable[[int], bytes] = getattr(rest, "read1", rest.read)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        if self.head:
            n = min(len(view), len(self.head))
            view[:n] = self.head[:n]
            self.head = self.head[n:]
        else:
            data = self._read(len(view))
            n = len(data)
            view[:n] = data
        self.count += n
        return n


class _Guarded(io.RawIOBase):
    """The decompressor's output, a bounded piece per read (the stdlib readers decompress no
    more than asked for), its errors turned into Damaged, and a bomb stopped. A piece is what
    the input read so far gives (read1), not a wait for the whole size: see Prefixed."""

    def __init__(self, fmt: str, inner: io.BufferedIOBase, raw: Prefixed,
                 errors: tuple[type[Exception], ...]) -> None:
        self.fmt, self.inner, self.raw, self.errors, self.out = fmt, inner, raw, errors, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        try:
            data = self.inner.read1(len(view))
        except EOFError:  # the stdlib's word for a stream cut short
            raise Damaged(f"compressed with {self.fmt} but cut short") from None
        except self.errors as e:
            raise Damaged(f"compressed with {self.fmt} but damaged ({e})") from None
        self.out += len(data)
        if self.out > MAX_RATIO * self.raw.count + _FREE:
            raise Damaged(f"compressed with {self.fmt} and expands more than {MAX_RATIO}-fold "
                          "(a decompression bomb?): not read further")
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.inner.close()
        super().close()
