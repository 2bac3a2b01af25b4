"""`spambridge train`: feed Maildirs, mboxes, directories, files or one message on stdin to the
local Bayes database (or to spamd's own Bayes with TELL).

Training is idempotent: each message is keyed by a digest of its bytes without our (and
SpamAssassin's) X-Spam-* markup and without the fields mail programs keep its state in (Status,
X-Keywords, X-Mozilla-Status...: reading it must not make it another). The same message again
is a no-op ("already trained"); trained as the other class it is moved (unlearned, then
learned). Writes go in batches, one SQLite transaction each, so an interrupted run keeps
everything up to its last committed batch.

The modules follow a message through a run:

    sources    paths (Maildir, mbox, folder, file, FIFO, stdin, compressed; an index file's
               list) → Items: a message, or why it was not read
    normalise  the message as it was before any filter marked it, and the keys it is known by
    learn      the local run: Trainer (batches, moves, forget, --selective) and run()
    tell       the same through spamd's TELL: run_spamd()
    report     the counts and what the admin is told: summary line, progress bar, warnings
    stop       Ctrl-C and SIGTERM: no batch's commit cut in two, the -wal folded back

This module is the command: a Request (commands._train builds it from the command line),
carried out by command() with the engines' runs; and the names the rest of spambridge, bench/
and the tests use.

Start-up matters for the Dovecot "move to Junk" pipe (`train --spam -`, one message per process):
this package imports only the tokenizer and the store; `rich`, aiospamc and the classifier load
only when used."""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from spambridge.train.learn import BATCH_MESSAGES, CERTAIN_HAM, CERTAIN_SPAM, Trainer, run
from spambridge.train.normalise import MAX_UNWRAP, digest, keys, strip_markup
from spambridge.train.report import Summary
from spambridge.train.sources import (
    DEFAULT_MAX_SIZE,
    GONE,
    MBOX_WITHOUT_FLAG,
    SYMLINK,
    TOO_LARGE,
    TRASHED,
    IndexEntry,
    Item,
    count_messages,
    drain,
    holds_several_messages,
    looks_like_mail,
    not_mail_because,
    open_no_wait,
    read_index,
    read_path,
)
from spambridge.train.stop import Stopped
from spambridge.train.tell import TELL_PROBE, run_spamd

if TYPE_CHECKING:
    from spambridge.config import Config

__all__ = [
    "BATCH_MESSAGES",
    "CERTAIN_HAM",
    "CERTAIN_SPAM",
    "DEFAULT_MAX_SIZE",
    "GONE",
    "KEPT_IN_MEMORY",
    "MAX_UNWRAP",
    "MBOX_WITHOUT_FLAG",
    "STOPPED",
    "SYMLINK",
    "TELL_PROBE",
    "TOO_LARGE",
    "TRASHED",
    "IndexEntry",
    "Item",
    "Request",
    "Stopped",
    "Summary",
    "Trainer",
    "command",
    "count_messages",
    "digest",
    "drain",
    "holds_several_messages",
    "keys",
    "looks_like_mail",
    "not_mail_because",
    "open_no_wait",
    "read_index",
    "read_path",
    "run",
    "run_spamd",
    "strip_markup",
]


@dataclass(frozen=True, slots=True)
class Request:
    """A `train` command line, parsed and its usage checked (commands._train builds it)."""

    engine: str  # bayes, spamd or spamd+bayes: which Bayes learns
    label: str  # spam, ham or forget; "index" with `index`
    paths: tuple[str, ...] = ("-",)  # no PATH: one message on stdin; unused with `index`
    index: str | None = None  # an index file (--index): the paths, each with its class
    max_size: int = DEFAULT_MAX_SIZE
    mbox: bool = False
    quiet: bool = False
    batch_messages: int = BATCH_MESSAGES
    selective: bool = False
    user: str = ""  # spamd's user to teach; "" for [spamd] user


# exit statuses of a train run that was interrupted (Ctrl-C) or stopped (SIGTERM)
STOPPED = (130, 143)
KEPT_IN_MEMORY = 8 << 20  # an mbox on stdin kept for spamd+bayes' second reading: then on disk


def command(cfg: Config, request: Request) -> int:
    """`spambridge train`: teach the local database (run), spamd's Bayes (run_spamd), or both
    (spamd+bayes: the local one first, and a stop there stops the command). Returns the exit
    status: the worse of the two runs'."""
    engine = request.engine
    common: dict[str, Any] = {"max_size": request.max_size, "mbox": request.mbox,
                              "quiet": request.quiet}
    local: dict[str, Any] = {"batch_messages": request.batch_messages,
                             "selective": request.selective}
    if request.index is not None:
        try:
            index = read_index(request.index)
        except ValueError as e:
            print(f"spambridge train: {e}", file=sys.stderr)
            return 1
        status = 0
        if engine != "spamd":
            status = run(cfg, "index", [], index=index, **local, **common)
        if engine != "bayes":  # SpamAssassin learns everything, in any order: class by class
            for label in ("spam", "ham"):
                entries = [e for e in index if e.label == label]
                if entries and status not in STOPPED:
                    status = max(status, run_spamd(
                        cfg, label, [], user=request.user, index=entries, **common))
        return status
    paths = list(request.paths)
    if engine == "bayes":
        return run(cfg, request.label, paths, **local, **common)
    if engine == "spamd":
        return run_spamd(cfg, request.label, paths, user=request.user, **common)
    # spamd+bayes: teach both; stdin can be read only once, so keep it
    keep = "-" in paths and sys.stdin is not None
    too_large = False
    if keep:
        kept, too_large = _keep_stdin(sys.stdin.buffer, request.max_size, request.mbox)
        sys.stdin = io.TextIOWrapper(kept)
    status = run(cfg, request.label, paths, **local, **common)
    if status in STOPPED:  # Ctrl-C or SIGTERM stops the command, not one engine's half of it
        return status
    if keep:
        sys.stdin.buffer.seek(0)
    # a message over --max-size on stdin: the local run said so (on stderr, even with
    # --quiet); spamd's run counts it in its summary, and does not say it again
    remote = run_spamd(cfg, request.label, paths, user=request.user,
                       too_large_said=too_large, **common)
    return max(status, remote)


def _keep_stdin(src: IO[bytes], max_size: int, mbox: bool) -> tuple[IO[bytes], bool]:
    """Standard input kept for a second reading, and whether it is one message over max_size.
    One message needs no more than max_size + 1 bytes (beyond that it is not learned); an mbox
    (`--mbox -`) is kept whole, on disk past a few MB, since each of its messages has a limit
    of its own (cut at the one message's limit, a 4 MB mbox taught the database its first 398
    messages, the last one cut short, and said nothing)."""
    import shutil
    import tempfile

    if not mbox:
        data = src.read(max_size + 1 if max_size else -1)
        too_large = bool(max_size) and len(data) > max_size
        if too_large:
            drain(src)  # its writer (a Dovecot pipe) must not get EPIPE
        return io.BytesIO(data), too_large
    kept = tempfile.SpooledTemporaryFile(max_size=KEPT_IN_MEMORY)  # noqa: SIM115 - returned
    shutil.copyfileobj(src, kept)
    kept.seek(0)
    return kept, False
