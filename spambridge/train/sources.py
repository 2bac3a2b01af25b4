"""`spambridge train`: feed Maildirs, mboxes, directories, files or one message on stdin to the
local Bayes database (or to spamd's own Bayes with TELL).

Training is idempotent: each message is keyed by a digest of its bytes without our (and
SpamAssassin's) X-Spam-* markup and without the fields mail programs keep its state in (Status,
X-Keywords, X-Mozilla-Status...: reading it must not make it another). The same message again
is a no-op ("already trained"); trained as the other class it is moved (unlearned, then
learned). Writes go in batches, one SQLite transaction each, so an interrupted run keeps
everything up to its last committed batch.

Start-up matters for the Dovecot "move to Junk" pipe (`train --spam -`, one message per process):
this module imports only the tokenizer and the store; `rich` and aiospamc load only when used.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import itertools
import os
import re
import select
import signal
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from spambridge import compressed, defaults
from spambridge.bayes import store
from spambridge.bayes.tokenizer import (
    DEFAULT_LIMITS,
    Limits,
    content_type,
    limits_for,
    parse_headers,
    split_head,
    split_multipart,
    tokenize,
)
from spambridge.rfc5322 import FIELD_NAME
from spambridge.verdict import ErrorKind, ScanError

if TYPE_CHECKING:
    from spambridge.config import Config
    from spambridge.scanners.spamd import SpamdScanner

DEFAULT_MAX_SIZE = defaults.TRAIN_MAX_SIZE  # bytes, as sa-learn: bigger messages are skipped
BATCH_MESSAGES = defaults.TRAIN_BATCH  # messages per transaction …
BATCH_SECONDS = 2.0  # … or this long, whichever comes first (bounds what a kill loses)
DRAIN_LIMIT = 1 << 30  # bytes of a too-large message on stdin read and dropped, at most (drain)
_DRAIN_CHUNK = 64 * 1024
Opener = Callable[[str, int], int]  # os.open's (path, flags), as open(opener=) takes
# our fields (defaults.HEADER_PREFIX), each with its folded lines
_PREFIX = defaults.HEADER_PREFIX.encode()
_OWNED = re.compile(rb"^" + re.escape(_PREFIX) + rb"[^:\n]*:.*(?:\n[ \t].*)*\n", re.I | re.M)


def _field(names: bytes) -> re.Pattern[bytes]:
    """A whole header field (folded lines included) whose name matches `names`; group 1 its
    value."""
    return re.compile(rb"^(?:" + names + rb")[ \t]*:[ \t]*(.*(?:\n[ \t].*)*)\n", re.I | re.M)


_SUBJECT = _field(rb"subject")
_PREV_SUBJECT = _field(rb"x-spam-prev-subject")
_SPAM_FLAG = re.compile(rb"^x-spam-flag[ \t]*:[ \t]*yes\b", re.I | re.M)
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


@dataclass
class Summary:
    label: str  # spam, ham, forget, or index (each message's class from an index file)
    seen: int = 0
    learned: int = 0
    moved: int = 0
    forgotten: int = 0
    already: int = 0
    recognised: int = 0  # --selective: already scored right with certainty, not learned
    not_trained: int = 0  # --forget of a message never trained
    too_large: int = 0
    not_mail: int = 0
    unreadable: int = 0
    gone: int = 0  # listed in a folder, then renamed or removed before read (a live Maildir)
    # files in a compression format Python cannot read (zstd, lz4), by format
    unsupported: dict[str, int] = field(default_factory=dict)
    spamd_errors: int = 0  # TELL failed: spamd down, timed out or answered an error
    spamd: bool = False  # taught through spamd TELL, not the local database
    spamd_stopped: bool = False  # spamd down or hung: the remaining messages were not sent
    errors: list[str] = field(default_factory=list)  # each reported on stderr; exit status 1
    learned_as: dict[str, int] = field(default_factory=dict)  # class → learned (index runs)

    @property
    def failed(self) -> bool:
        return bool(self.errors)

    def skipped(self, item: Item) -> None:
        """Count an item that could not be learned from (item.data is None)."""
        if item.problem == TOO_LARGE:
            self.too_large += 1
        elif item.problem == GONE:
            self.gone += 1
        elif item.problem.startswith("not mail"):
            self.not_mail += 1
        elif item.problem.startswith(compressed.UNSUPPORTED):
            fmt = item.problem[len(compressed.UNSUPPORTED):].partition(":")[0]
            self.unsupported[fmt] = self.unsupported.get(fmt, 0) + 1
        else:
            self.unreadable += 1
        if item.failure:
            self.errors.append(f"{item.where}: {item.problem}")

    def line(self, seconds: float) -> str:
        if self.label == "forget":
            head = f"Forgot {self.forgotten} of {self.seen} messages"
        elif self.label == "index":
            classes = ", ".join(f"{n} as {c}" for c, n in sorted(self.learned_as.items()))
            head = f"Learned {self.learned} of {self.seen} messages" + (
                f" ({classes})" if classes else "")
        else:
            head = f"Learned {self.learned} of {self.seen} messages as {self.label}"
        extra = []
        if self.moved:
            extra.append(f"{self.moved} moved from " + (
                "the other class" if self.label == "index"
                else "ham" if self.label == "spam" else "spam"))
        # spamd's TELL answers "nothing set" alike for a message it had learned before and
        # for a Bayes that is off or cannot write its files: say both, claim neither
        spamd_or = ", or spamd's Bayes is off or read-only" if self.spamd else ""
        extra += [f"{n} {what}" for n, what in (
            (self.already, "already trained" + spamd_or),
            (self.recognised, "already recognised"),
            (self.not_trained, "not trained before" + spamd_or),
            (self.too_large, TOO_LARGE),
            (self.not_mail, "not mail"),
            (self.unreadable, "unreadable"),
            *((n, f"compressed with {fmt}") for fmt, n in sorted(self.unsupported.items())),
            (self.gone, GONE),
            (self.spamd_errors, "spamd error" + ("s" if self.spamd_errors > 1 else "")),
        ) if n]
        if self.spamd_stopped:
            extra.append("stopped there: later messages were not sent")
        rate = f", {self.seen / seconds:.0f} msg/s" if seconds > 0.5 and self.seen > 1 else ""
        return (head + (f" ({', '.join(extra)})" if extra else "") + f" in {seconds:.1f}s{rate}"
                + (" (spamd)" if self.spamd else ""))


# ---------------------------------------------------------------------------------------------
# inputs


@dataclass(frozen=True, slots=True)
class Item:
    """One message from some input, or the reason it could not be read."""

    where: str
    data: bytes | None = None
    problem: str = ""  # "unreadable: …", TOO_LARGE, "not mail", GONE
    named: bool = False  # named on the command line (or stdin), not found inside a folder

    @property
    def failure(self) -> bool:
        """Not read, and worth an error: unreadable, or not mail though named on the command
        line. Junk met inside a folder, messages over the size limit and files gone from a
        folder since it was listed are only counted."""
        return self.data is None and self.problem not in (TOO_LARGE, GONE) and (
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
                yield from _read_folder(d, d != path, max_size, mbox)
            return
        yield from _read_file(path, max_size, mbox, slurped, named=True)
    except OSError as e:
        yield Item(path, problem=f"unreadable: {e.strerror or e}", named=True)


def _read_folder(d: str, inside: bool, max_size: int, mbox: bool) -> Iterator[Item]:
    """The files in folder `d`: a directory named on the command line, or (`inside` it) a
    Maildir's cur/ or new/. Whoever owns the folder (a user's Junk, read by root's cron)
    chooses what is in it: a symlink there, or a cur/ that is one, would have root learn any
    file root can read, so none is followed. The folder is opened once and each file opened in
    it without following a symlink, so none swapped in after the listing (a file, or cur/
    itself) is read either."""
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
    stream of NULs, a binary pipe) must not be read whole to find its end."""
    return iter(functools.partial(f.readline, _LINE), b"")


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
    memory (see _starts_message)."""
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    data = data.lstrip(b"\n")  # blank lines before the first separator are no message
    if data.startswith(b"From ") and b"\n\nFrom " not in data:
        chunks = [data]  # one message with its separator line: the common case of a file
    else:
        if data.startswith(b"From "):
            data = b"\n\n" + data
        pieces = data.split(b"\n\nFrom ")  # a literal split: fast, no regex backtracking
        runs = [[pieces[0]]]  # the pieces of each message, joined once (no quadratic copies)
        for i, piece in enumerate(pieces[1:]):
            if (i == 0 and data.startswith(b"\n\nFrom ")) or _starts_message(piece, 0):
                runs.append([piece])
            else:  # not a separator line: the body goes on
                runs[-1].append(piece)
        chunks = [b"\n\nFrom ".join(run) for run in runs]
        if not chunks[0].strip():
            del chunks[0]
        else:  # --mbox on a file that does not start with a separator: keep the head
            chunks[0] = b"From -\n" + chunks[0]
    for n, chunk in enumerate(chunks, 1):
        chunk = chunk.partition(b"\n")[2]  # the rest of the separator line
        if max_size and len(chunk) > max_size:
            yield Item(f"{p}#{n}", problem=TOO_LARGE)
        else:
            yield _item(f"{p}#{n}", _unescape_from(chunk))


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
    data = head + (f.read(max(0, max_size + 1 - len(head))) if max_size else f.read())
    if not sniff and separator and _holds_another_message(data):
        # learned as one message, or dropped as too large, an archive would teach nothing
        yield Item(where, problem=MBOX_WITHOUT_FLAG, named=named)
        return
    yield _item(where, data, named=named, max_size=max_size)


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
    none)."""
    n = 0
    lines: list[bytes] = []
    size = 0
    blank = True
    held: list[bytes] = []  # a candidate separator line and the lines after it so far
    held_size = 0

    def cut() -> Iterator[Item]:
        """The message so far, if any (a first line over max_size appended nothing)."""
        nonlocal n, lines, size
        if lines or size:
            n += 1
            yield _mbox_item(p, n, lines, size, max_size)
        lines, size = [], 0

    def settle() -> Iterator[Item]:
        """Decide on the held lines: a new message, or body lines of the one before."""
        nonlocal size
        if _is_header(b"".join(held[1:])):
            yield from cut()
            del held[0]
        for line in held:
            size += len(line)
            if not max_size or size <= max_size:
                lines.append(line)
        held.clear()

    for line in itertools.dropwhile(_is_blank, lines_in):
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
                continue
            if _SEPARATOR_WRITTEN.match(line, 5):
                yield from cut()
                blank = False
                continue
            if _SEPARATOR_REST.match(line, 5):
                held.append(line)
                held_size = 0  # the lines after it, as _is_header counts them in memory
                continue
        blank = _is_blank(line)
        size += len(line)
        if not max_size or size <= max_size:
            lines.append(line)
    if held:
        yield from settle()
    yield from cut()


def _is_blank(line: bytes) -> bool:
    return line in (b"\n", b"\r\n")


def _mbox_item(p: str, n: int, lines: list[bytes], size: int, max_size: int) -> Item:
    where = f"{p}#{n}"
    if max_size and size > max_size:
        return Item(where, problem=TOO_LARGE)
    data = b"".join(lines)
    if data.endswith(b"\n\n"):
        data = data[:-1]  # the blank line before the next "From " belongs to the mbox
    return _item(where, _unescape_from(data))


def _unescape_from(data: bytes) -> bytes:
    """mboxrd: ">From " at a line start was "From " before the message was stored."""
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
# normalisation and digest


MAX_UNWRAP = 8  # report_safe wrappers undone (one per SpamAssassin pass; more is a bomb)


def strip_markup(data: bytes, subject_tag: bytes = b"", *, subject: bool = True) -> bytes:
    """The message as it was before any spam filter touched it: line endings as LF, no mbox
    "From " line, no X-Spam-* headers, the Subject as it came (`subject_tag`, the milter's
    [policy] one, taken off a message flagged spam; SpamAssassin's rewrite undone from its
    X-Spam-Prev-Subject), and SpamAssassin's report_safe wrapper undone (a bounded number of
    times: a crafted message can nest thousands). `subject=False`: the Subject as it lies, as
    spambridge before 2026-11-26 learned and keyed it."""
    return _strip(data, subject_tag, subject)[0]


def _strip(data: bytes, subject_tag: bytes, subject: bool) -> tuple[bytes, bool]:
    """strip_markup, and whether a Subject was put back (only then can the message have been
    learned under another key: the caller looks that one up only then)."""
    restored = False
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    for _ in range(MAX_UNWRAP + 1):
        if data.startswith(b"From "):
            data = data.partition(b"\n")[2]
        end = data.find(b"\n\n")
        head = data if end < 0 else data[:end]
        if not (_PREFIX in head or _PREFIX.lower() in head.lower()):
            break
        head, sep, body = data.partition(b"\n\n")
        head += b"\n"
        if subject:
            untagged = _untagged(head, subject_tag)
            restored = restored or untagged is not head
            head = untagged
        head = _OWNED.sub(b"", head).rstrip(b"\n")
        original = _report_safe_original(head, body)
        if original is None:
            data = head + sep + body
            break
        data = original
    return data.rstrip() + b"\n", restored


def _untagged(head: bytes, tag: bytes) -> bytes:
    """`head` (LF-terminated fields) with the Subject a filter rewrote put back. Learned as
    it was, the tag taught "subject:SPAM" as spam from every tagged message moved to Junk,
    and as ham from every false positive moved out, while live mail never carries it."""
    subject = _SUBJECT.search(head)
    prev = _PREV_SUBJECT.search(head)
    if prev is not None:  # SpamAssassin's rewrite_header Subject keeps the original there
        if subject is None:
            return head
        return head[: subject.start(1)] + prev.group(1) + head[subject.end(1):]
    if not tag or subject is None or not _SPAM_FLAG.search(head):
        return head
    value = subject.group(1)
    if value == tag:  # the message had no Subject: the milter added one
        return head[: subject.start()] + head[subject.end():]
    if value.startswith(tag + b" "):
        return head[: subject.start(1)] + value[len(tag) + 1:] + head[subject.end(1):]
    if value.startswith(tag + b"\n "):  # folded after the tag, 998 octets a line (the milter)
        return head[: subject.start(1)] + value[len(tag) + 2:] + head[subject.end(1):]
    return head


def _report_safe_original(head: bytes, body: bytes) -> bytes | None:
    """SpamAssassin's report_safe wraps spam as message/rfc822 "original message before
    SpamAssassin"; learn the original, not the report."""
    if b"original message before SpamAssassin" not in body:
        return None
    ctype, prm = content_type(parse_headers(head + b"\n", DEFAULT_LIMITS.max_headers))
    if not ctype.startswith(b"multipart/") or b"boundary" not in prm:
        return None
    for part in split_multipart(body, prm[b"boundary"]):
        phead, pbody = split_head(part)
        if b"original message before SpamAssassin" in phead:
            return pbody
    return None


def digest(normalised: bytes) -> bytes:
    return hashlib.sha256(normalised).digest()[:16]


# fields a mail program keeps a stored message's state in (read, answered, flagged, keywords,
# IMAP UIDs, the mbox length): mutt, Thunderbird and Dovecot's mbox rewrite them while the
# message stays the same, and Dovecot hides them from IMAP, so its pipes never see them. The
# tokenizer does not read them; the key must not either, or reading a message in an mbox makes
# it a new one to `train` (learned twice, or once as each class after a move)
_MAILBOX_STATE = _field(rb"status|x-status|x-keywords|x-uid|x-imap|x-imapbase|content-length"
                        rb"|lines|x-mozilla-status2?|x-mozilla-keys")


# how those fields' names start: most mail has none of them, and a search from the line ends
# (found as a literal) costs a third of the regex above over the whole header
_STATE_NAME = rb"(?:x-(?:status|keywords|uid|imap|mozilla-)|status|content-length|lines)"
_MAILBOX_STATE_FIRST = re.compile(_STATE_NAME, re.I)
_MAILBOX_STATE_LATER = re.compile(rb"\n" + _STATE_NAME, re.I)


def keys(normalised: bytes) -> tuple[bytes, bytes | None]:
    """The key of a message (strip_markup's output): the digest of it without its mailbox
    state fields; and, when it had some, the digest of it with them, which is the key an
    earlier spambridge gave it (None when the two are the same)."""
    end = normalised.find(b"\n\n")
    head = normalised if end < 0 else normalised[: end + 1]
    if not (_MAILBOX_STATE_FIRST.match(head) or _MAILBOX_STATE_LATER.search(head)):
        return digest(normalised), None
    kept = _MAILBOX_STATE.sub(b"", head)
    if len(kept) == len(head):
        return digest(normalised), None
    return digest(kept + normalised[len(head):]), digest(normalised)


# ---------------------------------------------------------------------------------------------
# learning


# SpamBayes' "nonedge" regime (testtools/regimes.py): a message the database already puts at or
# beyond these scores, on the right side, teaches it nothing new and is not learned
CERTAIN_HAM = 0.005
CERTAIN_SPAM = 0.995


class Trainer:
    """Learning loop over a writer; commits a batch every BATCH_MESSAGES or BATCH_SECONDS.

    `selective`: learn a new message only if the database does not already score it correctly
    with certainty (SpamBayes' nonedge regime: everything except ham ≤ 0.005 and spam ≥ 0.995;
    misclassified and unsure mail is always learned). Learning only what adds information keeps
    the bulk of easy, repetitive mail from drowning the hard cases; on the SpamAssassin corpus it
    cut false positives from 10 to 1-2 and false negatives from 10 to 3-5 in 5-fold
    cross-validation (docs/benchmarks.md). It scores against the counts as they stand,
    the open batch included, so it works best on ham and spam interleaved as they arrived
    (`train --index`). Every message of a class is learned while the database holds fewer
    than `min_trained` of it: the milter does not score with the database before, so there is
    no certainty to judge by yet, and selecting from a mailbox of a few hundred messages
    would otherwise leave a database the milter never uses."""

    def __init__(self, writer: store.SqliteWriter, label: str, limits: Limits = DEFAULT_LIMITS,
                 batch_messages: int = BATCH_MESSAGES, selective: bool = False,
                 min_trained: int = defaults.BAYES_MIN_TRAINED, subject_tag: str = "") -> None:
        self.writer = writer
        self.subject_tag = subject_tag.encode()  # the milter's, taken off what it tagged
        self.min_trained = min_trained
        self.batch_messages = batch_messages
        self.label = label  # spam | ham | forget | index (the class comes with each message)
        self.limits = limits
        self.summary = Summary(label)
        self.saved = 0  # messages offered up to the last commit (all of them are in the db)
        self._batch: store.Batch | None = None
        self._since = 0.0
        self._scorer: Any = None
        if selective:
            from spambridge.bayes.classifier import Scorer  # not on the plain `train -` path

            self._scorer = Scorer(max_clues=0)  # the score decides; no clue list wanted

    def _open_batch(self) -> store.Batch:
        if self._batch is None:
            self._batch = self.writer.begin()
            self._since = time.monotonic()
        return self._batch

    def add(self, item: Item, label: str | None = None) -> str:
        """Learn one item (as `label`, or the trainer's); returns what happened, for messages
        named one by one."""
        label = label or self.label
        s = self.summary
        s.seen += 1
        if item.data is None:
            s.skipped(item)
            return item.problem
        msg, restored = _strip(item.data, self.subject_tag, True)
        key, legacy = keys(msg)
        batch = self._open_batch()
        prior = self._prior(batch, key, legacy)
        learned = msg  # the message as its `prior` training read it
        if prior is None and restored:
            # an earlier spambridge learned and keyed it with the Subject a filter rewrote
            learned = strip_markup(item.data, subject=False)
            prior = self._prior(batch, key, digest(learned))
        if label == "forget":
            outcome = self._forget(batch, key, learned, prior)
        else:
            outcome = self._learn(batch, key, msg, label, prior, learned)
        if batch.messages >= self.batch_messages or time.monotonic() - self._since > BATCH_SECONDS:
            self.flush()
        return outcome

    @staticmethod
    def _prior(batch: store.Batch, key: bytes, legacy: bytes | None) -> str | None:
        """The class the message was trained as (None: never), found under its `legacy` key
        too (see keys), and then carried over to its key."""
        prior = batch.trained_as(key)
        if prior is None and legacy is not None:
            prior = batch.trained_as(legacy)
            if prior is not None:
                batch.mark(legacy, None)
                batch.mark(key, prior)
        return prior

    def _forget(self, batch: store.Batch, key: bytes, learned: bytes, prior: str | None) -> str:
        s = self.summary
        if prior is None:
            s.not_trained += 1
            return "not trained before"
        batch.learn(tokenize(learned, self.limits), prior, -1)
        batch.mark(key, None)
        s.forgotten += 1
        return f"forgotten (was {prior})"

    def _learn(self, batch: store.Batch, key: bytes, msg: bytes, label: str,
               prior: str | None, learned: bytes) -> str:
        """Learn as `label` (`prior`: the class it was trained as, from `learned`): a no-op when
        already so trained, a move when trained as the other class, and nothing when selective
        and the database is already certain."""
        s = self.summary
        if prior == label:
            s.already += 1
            return f"already trained as {prior}"
        tokens = tokenize(msg, self.limits)
        score = None if prior is not None else self._certainty(batch, tokens, label)
        if score is not None:
            s.recognised += 1
            return f"already recognised as {label} (score {score:.4f}), not learned"
        if prior is not None:
            batch.learn(tokens if learned is msg else tokenize(learned, self.limits), prior, -1)
            s.moved += 1
        batch.learn(tokens, label)
        batch.mark(key, label)
        s.learned += 1
        s.learned_as[label] = s.learned_as.get(label, 0) + 1
        return f"moved from {prior} to {label}" if prior else f"learned as {label}"

    def _certainty(self, batch: store.Batch, tokens: list[str], label: str) -> float | None:
        """In selective mode, the score when the database is already certain of `label`."""
        if self._scorer is None:
            return None
        totals, values = batch.current(tokens)
        held = totals.nspam if label == store.SPAM else totals.nham
        if not totals.nspam or not totals.nham or held < self.min_trained:
            return None  # one class alone scores everything as itself; see the class doc
        score = float(self._scorer.score_aligned(tokens, totals, values).score)
        if (score >= CERTAIN_SPAM) if label == store.SPAM else (score <= CERTAIN_HAM):
            return score
        return None

    def flush(self) -> None:
        with _stop_deferred():  # a commit and its count together, or the stop said too few
            if self._batch is not None:
                batch, self._batch = self._batch, None
                self.writer.commit(batch)
            self.saved = self.summary.seen

    def abandon(self) -> None:
        self._batch = None
        self.writer.rollback()


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


def _sources(label: str, paths: list[str], index: list[IndexEntry] | None
             ) -> list[IndexEntry]:
    """What a run reads: the index's entries, or each path named, as `label`."""
    return index if index is not None else [IndexEntry(label, p, "") for p in paths]


def run(cfg: Config, label: str, paths: list[str], *, max_size: int = DEFAULT_MAX_SIZE,
        mbox: bool = False, quiet: bool = False, batch_messages: int = BATCH_MESSAGES,
        selective: bool = False, index: list[IndexEntry] | None = None,
        out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """The `train` command on the local database; exit status 0, or 1 on real errors.
    With `index` (see read_index) `label` is "index" and `paths` unused."""
    out = out or sys.stdout
    err = err or sys.stderr
    start = time.monotonic()
    if label == "forget" and not os.path.exists(cfg.bayes.db):
        print(f"No Bayes database at {cfg.bayes.db}: nothing to forget", file=out)
        return 0
    try:
        writer = store.SqliteWriter(cfg.bayes.db)
    except (store.StoreError, OSError) as e:
        print(f"spambridge train: {e}", file=err)
        return 1
    try:
        limits = _training_limits(cfg, writer, err if not quiet else None)
    except store.StoreError as e:
        writer.close()
        print(f"spambridge train: {e}", file=err)
        return 1
    trainer = Trainer(writer, label, limits, batch_messages, selective,
                      cfg.bayes.min_trained, cfg.policy.subject_tag)
    sources = _sources(label, paths, index)
    single = index is None and paths == ["-"]
    progress = _Progress([e.path for e in sources], enabled=not quiet and not single
                         and err.isatty())
    said: list[str] = []  # stdin's outcome, said once it is committed
    previous = _stop_on_sigterm()
    try:
        for entry in sources:
            cls, path, origin = entry.label, entry.path, entry.origin
            found = False
            for item in read_path(path, max_size, mbox):
                found = True
                outcome = trainer.add(item, cls)
                progress.advance()
                if item.failure:
                    progress.say(f"spambridge train: {origin}{item.where}: {item.problem}", err)
                elif single and item.problem == TOO_LARGE:
                    progress.say(_skipped(item, max_size), err)
                elif single and not quiet:
                    said.append(f"{item.where}: {outcome}")
            if not found:  # an empty folder, or mail one level down (Maildir++ .Junk/)
                progress.say(f"spambridge train: {origin}{path}: no messages found"
                             f"{_folders_in(path)}", err)
        trainer.flush()
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Stopped)
        _hold_signals(previous)
        trainer.abandon()
        progress.stop()
        how = "stopped (SIGTERM)" if isinstance(e, Stopped) else "interrupted"
        print(f"spambridge train: {how}; {_kept(trainer, 'the open one')}", file=err)
        return 143 if isinstance(e, Stopped) else 130
    except (store.StoreError, sqlite3.Error) as e:  # a corrupt file fails mid-batch
        _hold_signals(previous)
        trainer.abandon()
        progress.stop()
        where = "" if isinstance(e, store.StoreError) else f"{cfg.bayes.db}: "
        print(f"spambridge train: {where}{e}; {_kept(trainer, 'the one that failed')}",
              file=err)
        return 1
    finally:
        _hold_signals(previous)  # the closing fold is short (BUSY_TIMEOUT_FOLD): let it end
        progress.stop()
        writer.close()
        _restore_signals(previous)
        if writer.unfolded:
            print(f"spambridge train: {cfg.bayes.db}: the -wal file was not folded back "
                  f"({writer.unfolded}); do not move a file over the database before it is "
                  "(docs/bayes.md)", file=err)
    for line in said:
        print(line, file=out)
    if not quiet:
        print(trainer.summary.line(time.monotonic() - start), file=out)
        _note_untrained(cfg, out)
    # what was learned is saved (in the -wal), but a full disk is the admin's business now
    return 1 if trainer.summary.failed or writer.fold_failed else 0


def _training_limits(cfg: Config, writer: store.SqliteWriter, err: IO[str] | None) -> Limits:
    """The tokenizer limits to learn and unlearn with: the database's own (see
    SqliteWriter.training_limits), said when the config's differ; those still bound scoring."""
    b = cfg.bayes
    max_bytes, max_tokens = writer.training_limits((b.max_bytes, b.max_tokens))
    if (max_bytes, max_tokens) != (b.max_bytes, b.max_tokens) and err is not None:
        print(f"spambridge train: {b.db} was first trained with max_bytes = {max_bytes} and "
              f"max_tokens = {max_tokens}; training keeps to them, so that moves and --forget "
              f"take back exactly what was learned (the config's {b.max_bytes} and "
              f"{b.max_tokens} bound scoring only; to change them, retrain into a new "
              "database: docs/bayes.md)", file=err)
    return limits_for(replace(b, max_bytes=max_bytes, max_tokens=max_tokens))


class Stopped(KeyboardInterrupt):
    """SIGTERM during a run (`timeout`, `kill`, a service stop): handled as Ctrl-C is, by
    whatever handles that."""


_deferred: list[int] | None = None  # inside _stop_deferred: the signals that came meanwhile


def _raise_stopped(signum: int, frame: object) -> None:
    if _deferred is not None:
        _deferred.append(signum)
        return
    raise Stopped if signum == signal.SIGTERM else KeyboardInterrupt


@contextlib.contextmanager
def _stop_deferred() -> Iterator[None]:
    """A Ctrl-C or SIGTERM (once _stop_on_sigterm routes it here) that comes inside is
    raised when it ends: a stop just after a batch's COMMIT, before the run counted it, made
    the run say "the first 250 of 501 messages were saved" of a database holding 500. Not
    raised over an error. Ctrl-C is routed here only meanwhile: asyncio.run (spamd's TELLs)
    handles it itself when Python's own handler is in place."""
    global _deferred
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only
        return
    outer, _deferred = _deferred, []
    sigint = signal.getsignal(signal.SIGINT)
    if sigint is signal.default_int_handler:
        signal.signal(signal.SIGINT, _raise_stopped)
    try:
        yield
    finally:
        if sigint is signal.default_int_handler:
            signal.signal(signal.SIGINT, sigint)
        came, _deferred = _deferred, outer
    if came:
        _raise_stopped(came[0], None)


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _stop_on_sigterm() -> dict[int, Any] | None:
    """Make SIGTERM stop the run as Ctrl-C does: the open batch rolled back, the -wal folded
    back and the admin told what was kept. Python's default dies on the spot, silently, and
    leaves the run's pages in the -wal (the hazard docs/bayes.md warns of). Returns the
    handlers of SIGINT and SIGTERM to put back (None: not the main thread, nothing changed).
    A signal ignored by whoever started us stays ignored, and a handler not set from Python
    (None), which could not be put back, is left alone."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous: dict[int, Any] = {s: signal.getsignal(s) for s in _SIGNALS}
    if previous[signal.SIGTERM] not in (None, signal.SIG_IGN):
        signal.signal(signal.SIGTERM, _raise_stopped)
    return previous


def _hold_signals(previous: dict[int, Any] | None) -> None:
    """While the run winds up (roll back, fold, close), another Ctrl-C or SIGTERM must not cut
    it short: the fold would be left half done, the -wal full. They are ignored until
    _restore_signals; the fold waits BUSY_TIMEOUT_FOLD at most."""
    for s, handler in (previous or {}).items():
        if handler not in (None, signal.SIG_IGN):
            signal.signal(s, signal.SIG_IGN)


def _restore_signals(previous: dict[int, Any] | None) -> None:
    for s, handler in (previous or {}).items():
        if handler is not None:
            signal.signal(s, handler)


def _folders_in(path: str) -> str:
    """Folders are never walked into (a Maildir's .Junk is not INBOX's mail, and a tree of
    users' mail must not become one class): when that is why nothing was found, say so."""
    try:
        with os.scandir(path) as entries:
            subs = sorted(e.name for e in entries
                          if e.is_dir() and e.name not in ("cur", "new", "tmp"))
    except OSError:
        return ""
    return (f" (the folders in it are not read: name them, as {os.path.join(path, subs[0])})"
            if subs else "")


def _skipped(item: Item, max_size: int) -> str:
    """A message on stdin not learned for its size: said on stderr, even with --quiet, since a
    Dovecot pipe's stderr is all its log keeps, and the exit status (0: a skip, as sa-learn's)
    does not tell it from one learned."""
    return (f"spambridge train: {item.where}: too large (over --max-size, {max_size} bytes): "
            "not learned")


def _kept(trainer: Trainer, batch: str) -> str:
    """What a run that ended early kept: every committed batch, none of `batch`."""
    if not trainer.saved:
        return "nothing was saved"
    if trainer.saved >= trainer.summary.seen:  # stopped between two batches
        return f"all {trainer.saved} messages read so far were saved"
    return (f"the first {trainer.saved} of {trainer.summary.seen} messages were saved (every "
            f"batch before {batch}), the rest was not")


def _note_untrained(cfg: Config, out: IO[str]) -> None:
    """Say so when the milter will not use the database yet (min_trained of each class), after
    any run: one that learned nothing (all already trained, or too large) leaves it as unused,
    and the admin rerunning it is the one wondering why the milter does not score."""
    need = cfg.bayes.min_trained
    try:
        reader = store.SqliteReader(cfg.bayes.db)
        try:
            t = reader.totals()
        finally:
            reader.close()
    except store.StoreError:
        return
    if not t.trained(need):
        print(f"The database holds {t.nspam} spam and {t.nham} ham; the milter scores with it "
              f"once each class has {need} (min_trained).", file=out)


class _Progress:
    """A rich progress bar on a terminal for long runs; nothing at all otherwise (and rich is
    not even imported)."""

    def __init__(self, paths: list[str], enabled: bool) -> None:
        self.bar: Any = None
        if not enabled:
            return
        counts = [count_messages(p) for p in paths]
        total = None if any(c is None for c in counts) else sum(c or 0 for c in counts)
        if total is not None and total < 200:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        # on stderr, the terminal it was enabled for: rich's default, stdout, may be a file
        # (`train ... > log`), where it would draw nothing, or a log full of escapes
        self.bar = Progress("training", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TimeRemainingColumn(), transient=True,
                            console=Console(stderr=True))
        self.task = self.bar.add_task("train", total=total)
        self.bar.start()
        self._pending = 0

    def advance(self) -> None:
        if self.bar is not None:
            self._pending += 1
            if self._pending >= 50:
                self.bar.advance(self.task, self._pending)
                self._pending = 0

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def say(self, line: str, err: IO[str]) -> None:
        """Print a line on stderr: while the bar is drawn, on a line of its own above it
        (written past the bar, it landed on the bar's line and stayed there)."""
        if self.bar is None:
            print(line, file=err)
        else:
            self.bar.console.print(line, markup=False, highlight=False, emoji=False,
                                   soft_wrap=True)


# ---------------------------------------------------------------------------------------------
# spamd


# a TELL spamd refuses whether or not it allows TELL: it checks --allow-tell first, then this
TELL_PROBE = {"Message-class": "spam", "Set": "local", "Remove": "local"}


async def _why_reset(scanner: SpamdScanner, user: str, e: ScanError) -> ScanError:
    """spamd refuses TELL without --allow-tell, but says so only when the whole request
    reached it first: a message over a few kB gets a connection reset (or "not connected"),
    which reads as a network fault. After such an error, ask spamd with a TELL that nothing
    can be learned from, and give its refusal instead when that is what it was."""
    from spambridge.verdict import ScanError

    # (a spamd that is down refuses the question too); a timeout is no refusal: spamd took
    # the request and did not answer, and asking again would wait out scan_timeout twice
    if not isinstance(e.__cause__, OSError) or isinstance(e.__cause__, TimeoutError):
        return e
    try:
        await scanner.request("TELL", b"", user, TELL_PROBE)
    except ScanError as probe:
        if "--allow-tell" in probe.detail:
            return probe
    return e


def run_spamd(cfg: Config, label: str, paths: list[str], *, max_size: int = DEFAULT_MAX_SIZE,
              mbox: bool = False, user: str = "", quiet: bool = False,
              index: list[IndexEntry] | None = None, too_large_said: bool = False,
              out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Teach SpamAssassin's own Bayes through spamd TELL (needs spamd --allow-tell). With
    `index` (entries of class `label`, see read_index) `paths` is unused and errors name the
    index line each path came from. `too_large_said`: the local run has already said that
    stdin's message is too large (spamd+bayes), so it is not said twice."""
    import asyncio

    from spambridge.scanners.spamd import SpamdScanner
    from spambridge.verdict import ScanError

    out = out or sys.stdout
    err = err or sys.stderr
    start = time.monotonic()
    summary = Summary(label, spamd=True)
    scanner = SpamdScanner.from_config(cfg)  # a ca_file it cannot use: exit 78, as run's
    if label == "forget":
        headers = {"Message-class": "spam", "Remove": "local"}
    else:
        headers = {"Message-class": label, "Set": "local"}

    spamd_user = user or cfg.spamd.user
    single = index is None and paths == ["-"]

    async def tell_all() -> None:
        for entry in _sources(label, paths, index):
            path, origin = entry.path, entry.origin
            for item in read_path(path, max_size, mbox):
                if stopped:
                    # the cancellation the SIGTERM asked for was lost: on Python 3.11 a
                    # wait_for (aiospamc's) whose inner call finishes as it is cancelled
                    # returns the result instead (CI saw a stopped run go on to its end)
                    raise asyncio.CancelledError
                summary.seen += 1
                if item.data is None:
                    summary.skipped(item)
                    if item.failure:
                        print(f"spambridge train: {origin}{item.where}: {item.problem}",
                              file=err)
                    elif single and item.problem == TOO_LARGE and not too_large_said:
                        print(_skipped(item, max_size), file=err)
                    await asyncio.sleep(0)  # a stop is seen at an await: a folder of junk too
                    continue
                msg = strip_markup(item.data, cfg.policy.subject_tag.encode())
                try:
                    resp = await scanner.request("TELL", msg, spamd_user, headers)
                except ScanError as first:
                    e = await _why_reset(scanner, spamd_user, first)
                    summary.spamd_errors += 1
                    summary.errors.append(f"{item.where}: {e}")
                    print(f"spambridge train: {origin}{item.where}: {e}", file=err)
                    if e.kind in (ErrorKind.UNAVAILABLE, ErrorKind.TIMEOUT):
                        summary.spamd_stopped = True  # the rest would fail the same way
                        return
                    continue
                changed = "DidSet" in resp.headers or "DidRemove" in resp.headers
                if label == "forget":
                    summary.forgotten += 1 if changed else 0
                    summary.not_trained += 0 if changed else 1
                elif changed:
                    summary.learned += 1
                else:
                    summary.already += 1

    stopped: list[int] = []  # SIGTERM came while the loop ran

    async def tell_all_until_stopped() -> None:
        """tell_all, with SIGTERM cancelling it at its next await as asyncio.run does on Ctrl-C.
        Raised from the signal handler (_raise_stopped) inside the loop, Stopped could land in
        a task of aiospamc's: the run ended, but with "Task exception was never retrieved"
        and a traceback on stderr (a Dovecot pipe's log)."""
        if signal.getsignal(signal.SIGTERM) is _raise_stopped:  # ours to handle (main thread)
            task = asyncio.current_task()
            assert task is not None

            def stop() -> None:
                stopped.append(signal.SIGTERM)
                task.cancel()

            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop)
        await tell_all()

    previous = _stop_on_sigterm()
    try:
        asyncio.run(tell_all_until_stopped())
    except (KeyboardInterrupt, asyncio.CancelledError) as e:  # Ctrl-C, or SIGTERM
        if isinstance(e, asyncio.CancelledError) and not stopped:
            raise
        # spamd saves each TELL as it answers it; the one in flight may or may not be learned
        sigterm = bool(stopped) or isinstance(e, Stopped)
        how = "stopped (SIGTERM)" if sigterm else "interrupted"
        told = summary.learned + summary.already + summary.forgotten + summary.not_trained
        print(f"spambridge train: {how}; spamd had answered for {told} of {summary.seen} "
              "messages, and saved each as it answered; the rest was not sent", file=err)
        return 143 if sigterm else 130
    finally:
        _restore_signals(previous)
    if not quiet:
        print(summary.line(time.monotonic() - start), file=out)
    return 1 if summary.failed else 0

