"""The same run through spamd: SpamAssassin's own Bayes taught with TELL (spamd needs
--allow-tell), which saves each message as it answers. aiospamc loads only when it runs."""

from __future__ import annotations

import signal
import sys
import time
from typing import IO, TYPE_CHECKING

from spambridge.train.normalise import strip_markup
from spambridge.train.report import Summary, too_large_line
from spambridge.train.sources import (
    DEFAULT_MAX_SIZE,
    TOO_LARGE,
    IndexEntry,
    entries,
    read_path,
)
from spambridge.train.stop import Stopped, raise_stopped, restore_signals, stop_on_sigterm
from spambridge.verdict import ErrorKind, ScanError

if TYPE_CHECKING:
    from spambridge.config import Config
    from spambridge.scanners.spamd import SpamdScanner


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
        for entry in entries(label, paths, index):
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
                        print(too_large_line(item, max_size), file=err)
                    await asyncio.sleep(0)  # a stop is seen at an await: a folder of junk too
                    continue
                msg = strip_markup(item.data, cfg.policy.subject_tag.encode(), keep_end=True)
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
        Raised from the signal handler (raise_stopped) inside the loop, Stopped could land in
        a task of aiospamc's: the run ended, but with "Task exception was never retrieved"
        and a traceback on stderr (a Dovecot pipe's log)."""
        if signal.getsignal(signal.SIGTERM) is raise_stopped:  # ours to handle (main thread)
            task = asyncio.current_task()
            assert task is not None

            def stop() -> None:
                stopped.append(signal.SIGTERM)
                task.cancel()

            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop)
        await tell_all()

    previous = stop_on_sigterm()
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
        restore_signals(previous)
    if not quiet:
        print(summary.line(time.monotonic() - start), file=out)
    return 1 if summary.failed else 0
