"""What `train` reads: every message under a path (a Maildir's cur/ and new/, an mbox cut at
its "From " lines, a folder of files, one file, a FIFO, stdin; any of them compressed), and
the paths an index file lists, each with its class. A message comes as an Item: its bytes, or
why it was not read (unreadable, not mail, too large, gone). Memory stays bounded: a big mbox
or a stream is split line by line, and no message is read past the size limit."""

from __future__ import annotations

import bisect
import errno
import functools
import io
import itertools
import os
import re
import select
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NamedTuple

from spambridge import compressed, defaults
from spambridge.bayes import store
from spambridge.rfc5322 import FIELD_NAME

DEFAULT_MAX_SIZE = defaults.TRAIN_MAX_SIZE  # bytes, as sa-learn: bigger messages are skipped
DRAIN_LIMIT = 1 << 30  # bytes of a too-large message on stdin read and dropped, at most (drain)
_DRAIN_CHUNK = 64 * 1024
Opener = Callable[[str, int], int]  # os.open's (path, flags), as open(opener=) takes

# a header field line; the end of the data ends one too (a header-only message cut from an mbox
# in memory has lost its last newline to the separator's blank line)
_LOOKS_LIKE_MAIL = re.compile(FIELD_NAME + rb"[ \t]*:[^\n]*(?:\r?\n|\Z)")
_FIELD_NAMES = re.compile(rb"^(" + FIELD_NAME + rb")[ \t]*:", re.M)
_HEADER_END = re.compile(rb"\n\r?\n")
# bytes of a header looks_like_mail judges, at most (it stops at the header's end): a first
# field can be long (a To: of 600 addresses, 12 kB) or come after hundreds of others
MAIL_HEAD = 256 << 10
# fields every stored message has one of, and a stray text file with colons has none of
_MAIL_FIELDS = frozenset(b"from to cc subject date received message-id return-path "
                         b"delivered-to sender reply-to mime-version content-type".split())


@dataclass(frozen=True, slots=True)
class Item:
    """One message from some input, or the reason it could not be read."""

    where: str
    data: bytes | None = None
    problem: str = ""  # "unreadable: …", TOO_LARGE, "not mail", GONE, TRASHED
    named: bool = False  # named on the command line (or stdin), not found inside a folder

    @property
    def failure(self) -> bool:
        """Not read, and worth an error: unreadable, or not mail though named on the command
        line. Junk met inside a folder, messages over the size limit, files gone from a
        folder since it was listed and Maildir messages marked deleted are only counted."""
        return self.data is None and self.problem not in (TOO_LARGE, GONE, TRASHED) and (
            self.named or self.problem != "not mail")


def count_messages(path: str) -> int | None:
    """How many items `read_path` will yield, when cheap to know (for the progress bar)."""
    p = Path(path)
    try:
        if boxes := _maildir(path):  # a cur/ or new/ that is a symlink: one item, refused
            return sum(1 if os.path.islink(d) else len(os.listdir(d)) for d in boxes)
        if p.is_dir():
            return sum(1 for e in os.scandir(p) if _is_file(e) and not e.name.startswith("."))
        if p.is_file() and not _holds_several(p):
            return 1
    except OSError:
        return None
    return None


def _maildir(path: str) -> list[str]:
    """A Maildir's cur/ and new/ (what of them there is), or [] when `path` is no Maildir.
    A cur/ makes one, as for Dovecot (which makes new/ and tmp/ when missing): a copy that lost
    its empty new/ (git, some backups) was read as a folder of files, Dovecot's index and list
    files counted as "not mail" and the mail in cur/ never looked at."""
    cur, new = os.path.join(path, "cur"), os.path.join(path, "new")
    if not os.path.isdir(cur):
        return []
    return [cur, new] if os.path.isdir(new) else [cur]


def _holds_several(p: Path) -> bool:
    """An mbox, or compressed (a compressed mbox cannot be counted without reading it)."""
    try:
        with open(p, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return _is_mbox(head) or compressed.sniff(head[:compressed.HEAD]) is not None


_MBOX_START = re.compile(rb"[\r\n]*From ")


def _is_mbox(head: bytes) -> bool:
    """A leading "From " line, after any blank lines (some exports open with one)."""
    return _MBOX_START.match(head) is not None


def read_path(path: str, max_size: int, mbox: bool = False, stdin: IO[bytes] | None = None
              ) -> Iterator[Item]:
    """Every message under `path`: `-` (stdin, one message), a Maildir (cur/ and new/), an mbox
    (by `--mbox` or a leading "From " line, blank lines before it passed over), a directory of
    message files, or one file."""
    if path == "-":
        src = stdin or (sys.stdin.buffer if sys.stdin is not None else None)
        if src is None:  # started with fd 0 closed (a daemon's child)
            yield Item("<stdin>", problem="unreadable: standard input is closed", named=True)
            return
        # one message, as a Dovecot or procmail pipe gives it (with an MDA's From_ line,
        # dropped later): only --mbox splits; one that holds more is refused (_read_open)
        try:
            for item in _read_open(src, "<stdin>", max_size, mbox, sniff=False):
                if item.problem == TOO_LARGE and not mbox:  # read up to max_size + 1 only
                    drain(src)
                yield item
        except OSError as e:  # e.g. fd 0 open for writing only: the rest of the run goes on
            yield Item("<stdin>", problem=f"unreadable: {e.strerror or e}", named=True)
        return
    try:
        # a pipe or device is opened once, by the reader (a FIFO's writer waits on our open);
        # _slurp still tells one that appeared since the stat
        slurped = None if _is_stream(path) else _slurp(path, max(max_size, MBOX_IN_MEMORY),
                                                       named=True)
        if slurped is None or slurped[1] == _STREAM:
            yield from _read_stream(path, max_size, mbox)
            return
        if slurped[1] == _DIRECTORY:
            for d in _maildir(path) or [path]:
                yield from _read_folder(d, d != path, max_size, mbox,
                                        trashed_out=d != path or _maildir_part(path))
            return
        yield from _read_file(path, max_size, mbox, slurped, named=True)
    except OSError as e:
        yield Item(path, problem=f"unreadable: {e.strerror or e}", named=True)


def _maildir_part(path: str) -> bool:
    """Whether the directory `path` is a Maildir's cur/ or new/, named as a folder of its own
    (`sa-learn --spam ~/Maildir/.Junk/cur`, as tutorials and cron lines write it)."""
    path = os.path.normpath(path)
    return os.path.basename(path) in ("cur", "new") and bool(_maildir(os.path.dirname(path)))


def _read_folder(d: str, inside: bool, max_size: int, mbox: bool, trashed_out: bool = False
                 ) -> Iterator[Item]:
    """The files in folder `d`: a directory named on the command line, or (`inside` it) a
    Maildir's cur/ or new/. With `trashed_out` (a Maildir's cur/ or new/, named or not),
    files marked deleted are counted, not learned (_TRASHED). Whoever owns the folder (a
    user's Junk, read by root's cron) chooses what is in it: a symlink there, or a cur/ that
    is one, would have root learn any file root can read, so none is followed. The folder is
    opened once and each file opened in it without following a symlink, so none swapped in
    after the listing (a file, or cur/ itself) is read either."""
    try:
        dir_fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
                         | (os.O_NOFOLLOW if inside else 0))
    except OSError as e:  # a Maildir's cur/ or new/: named, the other one read
        yield Item(d, problem=SYMLINK if inside and os.path.islink(d)
                   else f"unreadable: {e.strerror or e}", named=True)
        return
    try:
        # regular files and symlinks only (the directory entry says so, no stat): opening a
        # FIFO left in a folder would block
        try:
            with os.scandir(dir_fd) as entries:
                files = sorted((e.name, e.is_symlink()) for e in entries
                               if not e.name.startswith(".") and _is_file(e))
        except OSError as e:
            yield Item(d, problem=f"unreadable: {e.strerror or e}", named=True)
            return
        opener = functools.partial(_open_in, dir_fd)
        for name, link in files:
            f = os.path.join(d, name)
            if trashed_out and _TRASHED.search(name):
                yield Item(f, problem=TRASHED)
                continue
            if link:
                yield Item(f, problem=SYMLINK)
                continue
            # up to max_size only: a folder's big attachments are not read whole to be
            # called too large (an mbox over it is streamed, as a big one named)
            found = _slurp(f, max_size or MBOX_IN_MEMORY, named=False, opener=opener)
            if found[2] is not None and found[2].problem == _NO_SUCH_FILE:
                # renamed since listed (a flag changed, new/ to cur/) or expunged: the next
                # run learns it under its new name
                yield Item(f, problem=GONE)
                continue
            if found[1] not in (_DIRECTORY, _STREAM):  # a subdirectory, or a new FIFO
                try:
                    yield from _read_file(f, max_size, mbox, found, named=False, opener=opener)
                except FileNotFoundError:  # a big one, opened only now: see above
                    yield Item(f, problem=GONE)
                except OSError as e:  # named, and the rest of the folder read
                    yield Item(f, problem=SYMLINK if e.errno == errno.ELOOP
                               else f"unreadable: {e.strerror or e}")
    finally:
        os.close(dir_fd)


def _open_in(dir_fd: int, path: str, flags: int) -> int:
    """Open a folder's file (`path`) by its name in the folder open as `dir_fd`, a symlink not
    followed (ELOOP): an opener for open() and _slurp."""
    return os.open(os.path.basename(path), flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


_DIRECTORY, _STREAM = -1, -2  # _slurp's sizes for what it does not read
_NO_SUCH_FILE = "unreadable: no such file or directory"
SYMLINK = "unreadable: a symbolic link, not followed"  # met inside a folder
GONE = "moved or deleted during the run"
# a Maildir message whose flags (after ":2,", the capitals sorted, Dovecot's keyword letters
# after them in lower case) hold T: marked deleted, not expunged yet. A client without IMAP
# MOVE moves a message out of a folder by copying it and marking it so: trained from there,
# a spam moved out of Junk, or moved out of INBOX into Junk, is learned as both. sa-learn
# passes such a file over in a Maildir (ArchiveIterator), and so does `train`
TRASHED = "marked deleted (Maildir flag T)"
_TRASHED = re.compile(r":2,[A-Z]*T")
TOO_LARGE = "too large"  # over --max-size: counted, and drained from a pipe
_LINE = 1 << 20  # longest line read at once from a stream or a big mbox (memory stays bounded)


def _is_stream(path: str) -> bool:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False  # _slurp reports it
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)


STREAM_WAIT = 30.0  # seconds a named FIFO may take to bring its first bytes


def open_no_wait(path: str) -> IO[bytes]:
    """Open for reading without blocking on a FIFO's writer, then read as usual (to end of
    file once no writer is left). A FIFO gets STREAM_WAIT seconds to bring its first bytes,
    or a writer that came and went: read at once, one opened before its writer read an empty
    end of file, and `mkfifo p; train --spam p & producer > p` failed as "not mail"; waiting
    for ever would hang on one that nobody writes to."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            poll = select.poll()
            poll.register(fd, select.POLLIN)  # POLLHUP comes only after a writer has been
            if not poll.poll(STREAM_WAIT * 1000):
                raise OSError(errno.ETIMEDOUT, f"a FIFO that nothing was written to within "
                                               f"{STREAM_WAIT:g}s")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _lines(f: IO[bytes]) -> Iterator[bytes]:
    """The file's lines, a line longer than _LINE coming in pieces: one endless line (a
    stream of NULs, a binary pipe) must not be read whole to find its end. A line end is
    never a piece of its own: after a line of exactly _LINE bytes (or its CR) it read as a
    blank line, which cut a message at a "From " line after it, or took its last newline
    as the mbox's, where the mbox split in memory did neither."""
    cut = b""  # a piece without its line end, held to see whether the end comes alone
    for piece in iter(functools.partial(f.readline, _LINE), b""):
        if piece[-1] == 10 and not cut:  # nearly every line: one test (40 ns; 2 calls 110)
            yield piece
            continue
        if cut:
            if piece in (b"\n", b"\r\n"):
                yield cut + piece
                cut = b""
                continue
            yield cut
            cut = b""
        if piece[-1] == 10:
            yield piece
        else:
            cut = piece
    if cut:
        yield cut


def _is_file(entry: os.DirEntry[str]) -> bool:
    """A regular file, a symlink (reported by name, never followed: _read_folder), or an entry
    that cannot even be looked at: reading it then reports it instead of failing the whole
    folder or passing it over in silence."""
    try:
        return entry.is_symlink() or entry.is_file(follow_symlinks=False)
    except OSError:
        return True


def _slurp(path: str, limit: int, named: bool, opener: Opener | None = None
           ) -> tuple[bytes | None, int, Item | None]:
    """(contents, size, problem) of a file, read in as few system calls as the OS allows (open,
    fstat, one read: most of the cost of bulk training from files). Contents are None when the
    file is a directory (size _DIRECTORY), a pipe or device (_STREAM: `_read_stream` reads it),
    bigger than `limit` bytes, or unreadable (the problem says why). Opened non-blocking, so a
    FIFO without a writer cannot hang the run. A folder's file is opened by `opener` (_open_in).
    """
    try:
        fd = (opener or os.open)(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None, 0, Item(path, problem=_NO_SUCH_FILE, named=named)
    except OSError as e:
        if e.errno == errno.ELOOP and opener is not None:  # made a symlink since listed
            return None, 0, Item(path, problem=SYMLINK, named=named)
        return None, 0, Item(path, problem=f"unreadable: {e.strerror or e}", named=named)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            return None, _DIRECTORY, None
        if not stat.S_ISREG(st.st_mode):
            return None, _STREAM, None
        size = st.st_size
        if size > limit:
            return None, size, None
        data = os.read(fd, size + 1)
        if len(data) != size:  # it grew, or a short read: read on, but never past the limit
            parts, got = [data], len(data)
            while got <= limit and (more := os.read(fd, min(1 << 20, limit + 1 - got))):
                parts.append(more)
                got += len(more)
            if got > limit:
                return None, got, None
            data = b"".join(parts)
        return data, size, None
    except OSError as e:
        return None, 0, Item(path, problem=f"unreadable: {e.strerror or e}", named=named)
    finally:
        os.close(fd)


def _read_file(path: str, max_size: int, mbox: bool,
                slurped: tuple[bytes | None, int, Item | None], named: bool,
                opener: Opener | None = None) -> Iterator[Item]:
    """A file (`slurped` by the caller), named on the command line or found in a directory:
    one message, or an mbox (a directory of monthly exports is split as each file named
    alone would be). This is the per-message path of bulk training from files, so a file of
    a usual size is read in one go."""
    data, _, problem = slurped
    if problem is not None:
        yield problem
        return
    if data is not None and (fmt := compressed.sniff(data[:compressed.HEAD])) is not None:
        yield from _read_compressed(path, fmt, data, io.BytesIO(), max_size, mbox, named)
        return
    if data is None:  # bigger than an in-memory mbox: stream it if it is one
        with open(path, "rb", opener=opener) as f:
            head = f.read(8192)
            if (fmt := compressed.sniff(head)) is not None:  # what it holds decides
                yield from _read_compressed(path, fmt, head, f, max_size, mbox, named)
                return
            if not (mbox or _is_mbox(head)):
                if _HEADER_END.search(head) is None:  # a long header: judged up to its end
                    head += f.read(MAIL_HEAD - len(head))
                if max_size:  # not mail says more than too large (a .gz named by mistake)
                    yield Item(path, problem=TOO_LARGE if looks_like_mail(head)
                               else "not mail", named=named)
                    return
                data = head + f.read()
        if data is None:
            yield from _some_mail(_stream_mbox(Path(path), max_size, opener), path,
                                  named and not mbox)
            return
    if mbox or _is_mbox(data):
        yield from _some_mail(_split_mbox(path, data, max_size), path, named and not mbox)
    else:
        yield _item(path, data, named=named, max_size=max_size)


MBOX_IN_MEMORY = 32 << 20  # smaller mboxes are read whole and split with one regex
# the longest Content-Length trusted without a --max-size: a body streamed is read that far
# ahead to know whether it lands (a length of 10^14 read a multi-gigabyte stream whole), and
# no longer one can land in an mbox split in memory
CONTENT_LENGTH_MAX = MBOX_IN_MEMORY
# what follows "From " on a separator line: the envelope sender, then a date with a time
# ("From bob@example.org Thu Nov 26 02:58:17 2026"), so a paragraph that merely opens with
# "From" in an unescaped body ("From what I hear, ...") does not cut the message in two
# (one blank, then a lazy scan: "[ \t]+[^\n]*?" would try every split of a run of blanks)
_SEPARATOR_REST = re.compile(rb"\S*+[ \t][^\n]*?\d:\d\d")
# the rest of a separator line as mbox writers make it (Postfix's local, procmail, mutt,
# Thunderbird, Python's mailbox): a sender and an asctime date, "a@b Mon Jan  1 00:00:00 2024"
_SEPARATOR_WRITTEN = re.compile(
    rb"\S*+[ \t]+(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)[ \t]+"
    rb"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[ \t]+\d\d?[ \t]+\d\d?:\d\d")


def _some_mail(items: Iterator[Item], where: str, sniffed: bool) -> Iterator[Item]:
    """An mbox's messages; but a file named on the command line and taken for an mbox by its
    first line (`sniffed`, not --mbox), none of whose pieces is mail, is "not mail" itself, an
    error as any named non-mail file is: a letter that begins "From the desk of the CEO" reads
    as an mbox of one piece, which was only counted (exit 0). Given --mbox, the admin said it
    is one: its junk pieces are counted as in any mbox."""
    if not sniffed:
        yield from items
        return
    held: list[Item] | None = []  # the pieces before the first message: all junk so far
    for item in items:
        if held is not None:
            if item.problem == "not mail":
                held.append(item)
                continue
            yield from held
            held = None
        yield item
    if held:
        yield Item(where, problem="not mail", named=True)


def _split_mbox(p: str, data: bytes, max_size: int) -> Iterator[Item]:
    """Split at "From " separator lines that follow a blank line (or start the file), in
    memory (see _starts_message), but never inside the body a message's Content-Length
    holds (see _length_end). A message is too large when it is over `max_size` as a file of
    its own would hold it, as it is learned: without its separator line and the blank line
    after it, ">From " unescaped when it is, each line end one byte (LF). _split_lines counts
    the same: how the mbox comes (its size, stdin) must not decide what is learned."""
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    data = data.lstrip(b"\n")  # blank lines before the first separator are no message
    if data.startswith(b"From ") and b"\n\nFrom " not in data:
        chunks = [data]  # one message with its separator line: the common case of a file
        kept = [_length_end(data, 5, max_size) == len(data)]
    else:
        if data.startswith(b"From "):
            data = b"\n\n" + data
        pieces = data.split(b"\n\nFrom ")  # a literal split: fast, no regex backtracking
        runs = [[pieces[0]]]  # the pieces of each message, joined once (no quadratic copies)
        kept = [False]  # each run's Content-Length held: its body is as it came (_unescape_from)
        at = len(pieces[0])  # where the "\n\nFrom " before the next piece stands
        ends = -1  # where the Content-Length of the message so far ends it
        for i, piece in enumerate(pieces[1:]):
            if at < ends:  # inside the body its Content-Length holds: the body goes on
                runs[-1].append(piece)
            elif (at == ends or (i == 0 and data.startswith(b"\n\nFrom "))
                  or _starts_message(piece, 0)):
                runs.append([piece])
                ends = _length_end(data, at + 7, max_size)
                kept.append(ends >= 0)
            else:  # not a separator line: the body goes on
                runs[-1].append(piece)
            at += 7 + len(piece)
        chunks = [b"\n\nFrom ".join(run) for run in runs]
        if not chunks[0].strip():
            del chunks[0]
            del kept[0]
        else:  # --mbox on a file that does not start with a separator: keep the head
            chunks[0] = b"From -\n" + chunks[0]
    several = len(chunks) > 1
    for n, (chunk, as_came) in enumerate(zip(chunks, kept, strict=True), 1):
        if several:  # each ends at its last newline, as _mbox_item cuts a streamed one
            if n < len(chunks):
                chunk += b"\n"  # taken by the split at "\n\nFrom "
            elif chunk.endswith(b"\n\n"):
                chunk = chunk[:-1]  # the blank line at the end belongs to the mbox
        chunk = chunk.partition(b"\n")[2]  # the rest of the separator line
        if n == 1 and _folder_data(chunk):
            continue
        message = chunk if as_came else _unescape_from(chunk)
        if max_size and len(message) > max_size:  # as learned, as _split_lines counts
            yield Item(f"{p}#{n}", problem=TOO_LARGE)
        else:
            yield _item(f"{p}#{n}", message)


# a Content-Length field (mboxcl, mboxcl2): Dovecot writes one on every message of its mbox
# files, escapes no "From " line in a body and unescapes no ">From " line: what its IMAP
# clients and its pipes see is the body as stored
_CONTENT_LENGTH = re.compile(rb"^content-length[ \t]*:[ \t]*(\d{1,15})[ \t\r]*$", re.I | re.M)


def _content_length(head: bytes, start: int = 0, end: int | None = None) -> int | None:
    """The value of the last Content-Length field in `head[start:end]` (None: none)."""
    end = len(head) if end is None else end
    if b"content-length" not in head[start:end].lower():
        return None  # most mail: the pattern's ^ with re.I is tried at every byte (17 us)
    value = None
    for m in _CONTENT_LENGTH.finditer(head, start, end):
        value = int(m[1])
    return value


# the field that marks the first message of an mbox as the mail system's folder data ("DON'T
# DELETE THIS MESSAGE -- FOLDER INTERNAL DATA"): UW-IMAP's and Dovecot's, which keep an
# emptied folder's UIDVALIDITY and next UID in it and show it to no IMAP client or pipe
_FOLDER_DATA = re.compile(rb"^x-imap[ \t]*:", re.I | re.M)
# which the mail store writes itself: it came through no MTA, so it has no Received field
_RECEIVED = re.compile(rb"^received[ \t]*:", re.I | re.M)


def _folder_data(message: bytes) -> bool:
    """Whether `message`, the first of an mbox, is the folder's data, not mail (its Subject
    too, which both write so, and no Received field: a spam delivered with the same Subject
    and X-IMAP field, first in an mbox, is mail)."""
    if message.find(b"FOLDER INTERNAL DATA", 0, MAIL_HEAD) < 0:
        return False  # nearly every first message: no pattern tried at every byte
    end = m.start() if (m := _HEADER_END.search(message, 0, MAIL_HEAD)) else MAIL_HEAD
    return (_FOLDER_DATA.search(message, 0, end) is not None
            and message.find(b"FOLDER INTERNAL DATA", 0, end) >= 0
            and _RECEIVED.search(message, 0, end) is None)


def _length_end(data: bytes, separator: int, max_size: int) -> int:
    """Where the message whose separator line's rest begins at `separator` ends by its
    Content-Length: the offset of the "\n\nFrom " after its body, or len(data) when it is
    the last one; -1 when it has none, one over `max_size` (too large anyway; without one,
    over CONTENT_LENGTH_MAX), or the length lands anywhere else (a length a sender wrote,
    or one gone stale: the separator lines decide then, as without one). The body counts
    its last newline, not the blank line before the next separator."""
    start = data.find(b"\n", separator) + 1
    head_end = data.find(b"\n\n", start - 1)
    if not start or head_end < 0:
        return -1
    length = _content_length(data, start, head_end + 1)
    if length is None or length > (max_size or CONTENT_LENGTH_MAX):
        return -1
    end = head_end + 2 + length
    if end == len(data) or (end == len(data) - 1 and data[end - 1:] == b"\n\n"):
        return len(data)
    if data.startswith(b"\nFrom ", end) and data[end - 1:end] == b"\n":
        return end - 1
    return -1


def drain(f: IO[bytes]) -> None:
    """Read and drop the rest of a message on stdin found too large: its writer must see the
    whole message taken. Left unread, a Dovecot pipe's write failed (EPIPE), and Dovecot logged
    "write(program stdin) failed: Broken pipe" and "failed to pipe message" for a skip that
    exits 0. At most DRAIN_LIMIT bytes, so an endless stream does not keep train busy for ever."""
    left = DRAIN_LIMIT
    while left > 0:
        chunk = f.read(min(left, _DRAIN_CHUNK))
        if not chunk:
            return
        left -= len(chunk)


def _read_stream(path: str, max_size: int, mbox: bool) -> Iterator[Item]:
    """A pipe or a device named on the command line (`train --spam <(xzcat box.xz)`)."""
    with open_no_wait(path) as f:
        yield from _read_open(f, path, max_size, mbox)


def _read_open(f: IO[bytes], where: str, max_size: int, mbox: bool, sniff: bool = True,
               named: bool = True, decompress: bool = True) -> Iterator[Item]:
    """A stream (a pipe, stdin, a compressed file as it decompresses): read as it comes,
    holding at most one message (and never more than `max_size` of it); an mbox (`--mbox`, or
    with `sniff` a leading "From " line) split message by message, anything else one message.
    With `decompress`, a compressed stream is read decompressed."""
    if decompress:
        head = f.read(compressed.HEAD)
        if (fmt := compressed.sniff(head)) is not None:
            yield from _read_compressed(where, fmt, head, f, max_size, mbox, named, sniff)
            return
        f = io.BufferedReader(compressed.Prefixed(head, f))
    blank, head = _blank_lines(f)
    separator = head.startswith(b"From ")
    if mbox or (sniff and separator):
        yield from _some_mail(_split_lines(where, itertools.chain([head], _lines(f)), max_size),
                              where, named and not mbox)
        return
    if not separator:
        head = blank + head  # no mbox: the message as it came (blank first: not mail)
    # an MDA's From_ line (a procmail pipe's) is no part of the message, and counts toward
    # no limit: as in an mbox, and as the same message in a file (_split_mbox)
    line = len(head) if separator else 0
    data = head + (f.read(max(0, max_size + 1 + line - len(head))) if max_size else f.read())
    if not sniff and separator and _holds_another_message(data):
        # learned as one message, or dropped as too large, an archive would teach nothing
        yield Item(where, problem=MBOX_WITHOUT_FLAG, named=named)
        return
    yield _item(where, data, named=named, max_size=max_size and max_size + line)


def _blank_lines(f: IO[bytes]) -> tuple[bytes, bytes]:
    """Read off the blank lines a stream opens with (some mbox exports put one before the first
    "From " line), up to _LINE bytes of them, and the first other line (up to _LINE bytes):
    (the blank lines, that line). Line by line, so CRLF lines arriving in odd pieces through a
    pipe are told as well as whole ones."""
    blank: list[bytes] = []
    size = 0
    line = f.readline(_LINE)
    while _is_blank(line) and size < _LINE:
        blank.append(line)
        size += len(line)
        line = f.readline(_LINE)
    return b"".join(blank), line


def _read_compressed(where: str, fmt: str, head: bytes, rest: IO[bytes], max_size: int,
                     mbox: bool, named: bool, sniff: bool = True) -> Iterator[Item]:
    """A compressed file or stream (`head` already read off `rest`), read as the same file
    uncompressed would be (one message, or an mbox split as it decompresses): `max_size` is on
    what comes out, and only that much of a message is ever decompressed. A format Python
    cannot read, or a damaged stream, is a problem named. What it holds is not decompressed
    again: a file inside a file is no mail, and each layer would multiply a bomb."""
    try:
        with compressed.open_stream(fmt, head, rest) as plain:
            yield from _read_open(plain, where, max_size, mbox, sniff, named, decompress=False)
    except compressed.Unsupported as e:
        yield Item(where, problem=str(e), named=named)
    except compressed.Damaged as e:
        yield Item(where, problem=f"unreadable: {e}", named=named)


MBOX_WITHOUT_FLAG = "not mail but several messages (an mbox): give --mbox to split it"
_NEXT_FROM = re.compile(rb"\n\r?\nFrom ")


def holds_several_messages(data: bytes) -> bool:
    """An mbox of more than one message (`check` scores a file as one message, as a milter
    would be sent it, and says so)."""
    head = data.lstrip(b"\r\n")
    return head.startswith(b"From ") and _holds_another_message(head)


def _holds_another_message(data: bytes) -> bool:
    """A separator line after a blank line, with a header block after it: a second message."""
    return any(_starts_message(data, m.end(), header=True)
               for m in itertools.islice(_NEXT_FROM.finditer(data), 100))


def _starts_message(data: bytes, start: int, header: bool = False) -> bool:
    """Whether the "From " line (after a blank line) whose rest begins at `start` separates two
    messages: one as mbox writers make it (_SEPARATOR_WRITTEN), whatever follows (a message
    with a broken header is still a message of its own, counted "not mail", never merged into
    the one before); or, written otherwise, a date with a time on it and a header after it — a
    body paragraph such as "From 9:00 to 17:00 we are open." has the time, but prose follows.
    With `header`, a header must follow either way (is stdin more than one message?).
    _split_lines applies the same rule to lines."""
    eol = data.find(b"\n", start)
    if eol < 0:
        eol = len(data)
    if not header and _SEPARATOR_WRITTEN.match(data, start, eol):
        return True
    return _SEPARATOR_REST.match(data, start, eol) is not None and _is_header(data, eol + 1)


def _stream_mbox(p: Path, max_size: int, opener: Opener | None = None) -> Iterator[Item]:
    """The same split, line by line, so a multi-gigabyte mbox never sits in memory."""
    with open(p, "rb", opener=opener) as f:
        yield from _split_lines(str(p), _lines(f), max_size)


def _split_lines(p: str, lines_in: Iterable[bytes], max_size: int) -> Iterator[Item]:
    """Split an mbox given line by line at its separator lines (blank lines before the first
    one are passed over), by _starts_message's rule: a "From " line after a blank one that is
    not written as mbox writers write it separates only when a header follows it, so it is
    held, with the lines after it, until that is known (the header block ended, or plainly is
    none). A message whose Content-Length lands on the next separator (see _length_end) is
    cut there and nowhere in its body: its body is read ahead that far to know."""
    n = 0
    lines: list[bytes] = []
    size = 0  # bytes of the message so far, as they came
    # once that is past max_size, the message is counted as stored (see _split_mbox): its
    # lines with a CRLF end and its ">From " lines, a byte less each (the second once
    # unescaped), and whether its last line is a blank one after another (the mbox's)
    counting = False
    crlf = quoted = 0
    ends_blank = False
    blank = True
    held: list[bytes] = []  # a candidate separator line and the lines after it so far
    held_size = 0
    src = _Pushback(itertools.dropwhile(_is_blank, lines_in))
    in_head = True  # the header of the message so far is being read
    length: int | None = None  # its Content-Length
    cut_next = False  # its body ended where its Content-Length said: a "From " line follows
    as_came = False  # so: the body is as it came, ">From " lines not unescaped
    opened = False  # the message so far began with a separator line

    def cut(end: bool = False) -> Iterator[Item]:
        """The message so far, if any (a first line over max_size appended nothing); a
        separator line with nothing after it is one, "not mail", as in memory. At the `end`,
        a message that is the only one is kept to its last byte, as in memory."""
        nonlocal n, lines, size, counting, crlf, quoted, ends_blank
        nonlocal in_head, length, cut_next, as_came, opened
        if lines or size or opened:
            n += 1
            if n > 1 or not _folder_data(b"".join(lines)):
                whole = end and n == 1  # its blank line at the end is its own
                too_large = counting and stored_size() + (ends_blank and whole) > max_size
                yield _mbox_item(p, n, lines, too_large, as_came, whole)
        lines, size, counting, crlf, quoted, ends_blank = [], 0, False, 0, 0, False
        in_head, length, cut_next, as_came = True, None, False, False
        opened = True  # by the separator line that called for the cut (or the end)

    def settle() -> Iterator[Item]:
        """Decide on the held lines: a new message (its lines read again, as its header),
        or body lines of the one before."""
        nonlocal blank
        if _is_header(b"".join(held[1:])):
            yield from cut()
            src.push(held[1:])
            blank = False
        else:
            for line in held:
                add(line)
        held.clear()

    def stored_size() -> int:
        """The size of the message so far as _split_mbox counts it, once `counting`."""
        return size - crlf - (0 if as_came else quoted) - ends_blank

    def count(line: bytes) -> None:
        nonlocal crlf, quoted
        crlf += line.endswith(b"\r\n")
        quoted += line[:1] == b">" and line.lstrip(b">").startswith(b"From ")

    def add(line: bytes) -> None:
        """Take the line, and keep it while the message is within max_size. Counted as it
        came at first (no more than stored: a line costs what it did); past max_size so,
        as stored, the lines kept so far counted once. stored_size only grows: once over
        max_size, the message is too large, and no line more is kept."""
        nonlocal size, counting, ends_blank
        size += len(line)
        if not counting:
            if not max_size or size <= max_size:
                lines.append(line)
                return
            counting = True
            for kept in lines:
                count(kept)
        count(line)
        ends_blank = size > len(line) and _is_blank(line)
        if stored_size() <= max_size:
            lines.append(line)

    def body_by_length(length: int) -> None:
        """At the end of a header with a Content-Length: the body that long, if the next
        separator (or the end) follows it, taken whole; else its lines are read as usual."""
        nonlocal blank, cut_next, as_came
        if length > (max_size or CONTENT_LENGTH_MAX):
            return  # too large either way, or too far: not read ahead past the limit
        taken = src.lands(length)
        if taken is None:
            return
        body = [next(src) for _ in range(taken)]
        for line in body:
            add(line)
        blank = not body or _is_blank(body[-1])
        cut_next = as_came = True

    while True:
        if not held:
            src.release()  # no line given so far is put back now
        line = next(src, None)
        if line is None:
            if not held:
                break
            yield from settle()
            continue
        if held:
            held.append(line)
            held_size += len(line)
            blank = _is_blank(line)
            if blank or held_size > MAIL_HEAD or (
                    len(held) == 2 and _LOOKS_LIKE_MAIL.match(line) is None):
                yield from settle()
            continue
        if blank and line.startswith(b"From "):
            if n == 0 and not size:  # the first line
                blank = False
                opened = True
                continue
            if cut_next or _SEPARATOR_WRITTEN.match(line, 5):
                yield from cut()
                blank = False
                continue
            if _SEPARATOR_REST.match(line, 5):
                held.append(line)
                held_size = 0  # the lines after it, as _is_header counts them in memory
                continue
        blank = _is_blank(line)
        add(line)
        if in_head:
            if blank:
                in_head = False
                if length is not None:
                    body_by_length(length)
            elif (value := _content_length(line)) is not None:
                length = value
    yield from cut(end=True)


class _Pushback:
    """Lines, the last ones given put back to be read again (_split_lines reads held lines
    again as a header), and a look ahead at where the next ones end (`lands`). Each line is
    read from `lines` once and its end noted, so however many messages' Content-Length
    fields reach over the same lines (a sender's, landing nowhere), looking ahead costs one
    bisection each, not a reading of their bodies again: that was quadratic."""

    def __init__(self, lines: Iterator[bytes]) -> None:
        self.lines: Iterator[bytes] | None = lines
        self.buf: list[bytes] = []  # lines read: given ones that may be put back, then ahead
        self.ends: list[int] = []  # where each of them ends, from `base`, LF line ends
        self.at = 0  # buf[at] is the next line to give
        self.base = 0  # where buf[0] begins
        self.free = False  # release()d, nothing given since: the next line need not be kept

    def __iter__(self) -> _Pushback:
        return self

    def __next__(self) -> bytes:
        if self.at < len(self.buf):
            self.at += 1
            self.free = False
            return self.buf[self.at - 1]
        if self.free:  # nothing to keep, nothing read ahead: straight from the source
            self.free = False
            if self.buf:
                self.buf.clear()
                self.ends.clear()
                self.at = self.base = 0
            if self.lines is not None and (line := next(self.lines, None)) is not None:
                return line
            self.lines = None
            raise StopIteration
        if not self._read():
            raise StopIteration
        self.at += 1
        return self.buf[self.at - 1]

    def _read(self) -> bool:
        """One more line from the source into buf (False: there is none)."""
        line = None if self.lines is None else next(self.lines, None)
        if line is None:
            self.lines = None
            return False
        end = self.ends[-1] if self.ends else self.base
        self.buf.append(line)
        self.ends.append(end + len(line) - line.endswith(b"\r\n"))  # as in memory: LF
        return True

    def push(self, lines: list[bytes]) -> None:
        """Put back `lines`, the last ones given (none release()d since), to give again."""
        assert lines == self.buf[self.at - len(lines):self.at]
        self.at -= len(lines)

    def release(self) -> None:
        """No line given so far will be put back: they may go (read ahead of them, by
        halves, so that a long look ahead is not copied line by line)."""
        self.free = True
        if self.at >= 64 and 2 * self.at >= len(self.buf):
            self.base = self.ends[self.at - 1]
            del self.buf[:self.at], self.ends[:self.at]
            self.at = 0

    def lands(self, length: int) -> int | None:
        """How many of the next lines make up `length` bytes (LF line ends), if exactly some
        do and the end follows them, or a blank line and then the end or a "From " line
        (_length_end's rule in memory); None when not. Reads ahead that far, gives nothing."""
        target = (self.ends[self.at - 1] if self.at else self.base) + length
        while (self.ends[-1] if self.ends else self.base) < target and self._read():
            pass
        k = self.at
        if length:
            k = bisect.bisect_left(self.ends, target, self.at)
            if k == len(self.ends) or self.ends[k] != target:
                return None
            k += 1  # past the body's last line
        while len(self.buf) < k + 2 and self._read():
            pass
        after = self.buf[k:k + 2]
        if not after or (_is_blank(after[0]) and (
                len(after) == 1 or after[1].startswith(b"From "))):
            return k - self.at
        return None


def _is_blank(line: bytes) -> bool:
    return line in (b"\n", b"\r\n")


def _mbox_item(p: str, n: int, lines: list[bytes], too_large: bool, as_came: bool = False,
               whole: bool = False) -> Item:
    """Message `n` of an mbox streamed: all its `lines` unless `too_large`, ending at its
    last newline; `whole`: the only message of the file or stream, kept to its last byte (a
    message file with an MDA's From_ line, as sa-learn reads it, and what SpamAssassin knows
    it by: see strip_markup's keep_end)."""
    where = f"{p}#{n}"
    if too_large:
        return Item(where, problem=TOO_LARGE)
    if not whole and len(lines) > 1 and _is_blank(lines[-1]):
        lines = lines[:-1]  # the blank line before the next "From " belongs to the mbox
    data = b"".join(lines)
    return _item(where, data if as_came else _unescape_from(data))


def _unescape_from(data: bytes) -> bytes:
    """mboxrd: ">From " at a line start was "From " before the message was stored (not in a
    message its Content-Length ends: see _CONTENT_LENGTH)."""
    if b">From " not in data:
        return data
    return re.sub(rb"(?m)^>(>*From )", rb"\1", data)


def _item(where: str, data: bytes, named: bool = False, max_size: int = 0) -> Item:
    """The message read from `where`, or why it is not learned: bigger than `max_size` (0: no
    limit), or not mail."""
    if not looks_like_mail(data):
        return Item(where, problem="not mail", named=named)
    if max_size and len(data) > max_size:
        return Item(where, problem=TOO_LARGE, named=named)
    return Item(where, data, named=named)


def looks_like_mail(data: bytes) -> bool:
    """A header field on the first line (after an mbox "From " line), no NUL byte in the
    header block, and among its fields one that messages have (From, Received, Subject...):
    what separates a message from a stray text or binary file, /etc/passwd and "key: value"
    notes included. The header is judged up to its end, or its first MAIL_HEAD bytes."""
    return not not_mail_because(data)


def not_mail_because(data: bytes) -> str:
    """Why looks_like_mail says no, in words for `check`'s reader ("" when it says yes)."""
    start = 0
    if data.startswith(b"From "):
        start = data.find(b"\n") + 1
        if not start:
            return "an mbox separator line and nothing after it"
    return _header_problem(data, start)


def _is_header(data: bytes, start: int = 0) -> bool:
    """looks_like_mail of what begins at `start` (after a "From " line), without copying it."""
    return not _header_problem(data, start)


def _header_problem(data: bytes, start: int) -> str:
    limit = start + MAIL_HEAD
    if _LOOKS_LIKE_MAIL.match(data, start, limit) is None:
        return "its first line is no header field"
    end = m.start() if (m := _HEADER_END.search(data, start, limit)) else min(len(data), limit)
    if data.find(b"\0", start, end) >= 0:
        return "a NUL byte in its header"
    if not any(f.group(1).lower() in _MAIL_FIELDS for f in _FIELD_NAMES.finditer(data, start, end)):
        return "no header field a message has"
    return ""


# ---------------------------------------------------------------------------------------------
# index files


class IndexEntry(NamedTuple):
    label: str  # spam | ham
    path: str
    line: str  # "INDEX:N", where it was listed: an error about the path names it

    @property
    def origin(self) -> str:
        return f"{self.line}: " if self.line else ""


def read_index(path: str) -> list[IndexEntry]:
    """The entries of an index file in the TREC spam-track format: one `spam PATH` or `ham
    PATH` per line (a space or a tab between), in the order to learn them; a relative PATH
    is taken from the index file's directory; blank lines and `#` comments are skipped.
    Raises ValueError on a bad line, or on a file it cannot read (said as any path is, not as
    Python's "[Errno 2]")."""
    base = os.path.dirname(os.path.abspath(path))
    out: list[IndexEntry] = []
    try:  # utf-8-sig: a BOM is skipped
        with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                # a space or a tab (as cut(1) writes) ends the class; the path may hold either
                cut = min((i for i in (line.find(" "), line.find("\t")) if i >= 0),
                          default=len(line))
                label, where = line[:cut].lower(), line[cut + 1:].strip()
                if label not in (store.SPAM, store.HAM) or not where:
                    raise ValueError(
                        f"{path}:{n}: expected 'spam PATH' or 'ham PATH', got {line!r}")
                out.append(IndexEntry(
                    label, where if os.path.isabs(where) else os.path.join(base, where),
                    f"{path}:{n}"))
    except OSError as e:
        why = (_NO_SUCH_FILE if isinstance(e, FileNotFoundError)
               else f"unreadable: {e.strerror or e}")
        raise ValueError(f"{path}: {why}") from None
    return out


def entries(label: str, paths: list[str], index: list[IndexEntry] | None
             ) -> list[IndexEntry]:
    """What a run reads: the index's entries, or each path named, as `label`."""
    return index if index is not None else [IndexEntry(label, p, "") for p in paths]
