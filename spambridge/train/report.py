"""What a run tells the admin: its counts and the summary line (Summary), the progress bar on
a terminal, and the lines for a stop (what was kept), a folder with no messages in it, a
message too large on stdin and a database the milter does not score with yet."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from spambridge import compressed
from spambridge.bayes import store
from spambridge.train.sources import GONE, TOO_LARGE, TRASHED, Item, count_messages

if TYPE_CHECKING:
    from spambridge.config import Config


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
    trashed: int = 0  # a Maildir's messages marked deleted (flag T), not read
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
        elif item.problem == TRASHED:
            self.trashed += 1
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
            (self.trashed, "marked deleted"),
            (self.spamd_errors, "spamd error" + ("s" if self.spamd_errors > 1 else "")),
        ) if n]
        if self.spamd_stopped:
            extra.append("stopped there: later messages were not sent")
        rate = f", {self.seen / seconds:.0f} msg/s" if seconds > 0.5 and self.seen > 1 else ""
        return (head + (f" ({', '.join(extra)})" if extra else "") + f" in {seconds:.1f}s{rate}"
                + (" (spamd)" if self.spamd else ""))


def folders_in(path: str) -> str:
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


def too_large_line(item: Item, max_size: int) -> str:
    """A message on stdin not learned for its size: said on stderr, even with --quiet, since a
    Dovecot pipe's stderr is all its log keeps, and the exit status (0: a skip, as sa-learn's)
    does not tell it from one learned."""
    return (f"spambridge train: {item.where}: too large (over --max-size, {max_size} bytes): "
            "not learned")


def kept(saved: int, seen: int, batch: str) -> str:
    """What a run that ended early kept, `saved` of the `seen` messages (Trainer.saved and its
    summary's seen): every committed batch, none of `batch`."""
    if not saved:
        return "nothing was saved"
    if saved >= seen:  # stopped between two batches
        return f"all {saved} messages read so far were saved"
    return (f"the first {saved} of {seen} messages were saved (every "
            f"batch before {batch}), the rest was not")


def note_untrained(cfg: Config, out: IO[str]) -> None:
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


class Progress:
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
