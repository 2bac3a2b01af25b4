"""`spambridge` command line: parse, load config, hand over. No business logic here.

Exit codes: 0 ok, 1 runtime failure, 2 usage error, 78 (EX_CONFIG) bad configuration.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import io
import logging
import logging.handlers
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence

from spambridge import __version__, defaults
from spambridge.config import Config, ConfigError, load, with_overrides

EX_CONFIG = 78
log = logging.getLogger("spambridge")


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c", "--config", metavar="FILE",
        help=f"TOML config file (default: {defaults.CONFIG_PATH} if it exists, else built-in "
        "defaults)",
    )


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=("bayes", "spamd", "spamd+bayes"),
                   help=f"scanning engine (default: [milter] engine, else {defaults.ENGINE})")
    p.add_argument("--db", metavar="PATH",
                   help=f"Bayes token database (default: [bayes] db, else {defaults.BAYES_DB})")
    p.add_argument("--spamd", metavar="HOST:PORT|/PATH",
                   help=f"spamd address or unix socket, one server in place of [spamd] "
                   f"servers (default: [spamd] servers, or host and port, else "
                   f"{defaults.SPAMD_HOST}:{defaults.SPAMD_PORT})")


def _policy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scan-timeout", type=float, metavar="SECONDS",
                   help=f"hard cap from end of message to the final reply (default: [milter] "
                   f"scan_timeout, else {defaults.SCAN_TIMEOUT:g})")
    p.add_argument("--tag-at", type=float, metavar="SCORE",
                   help=f"SpamAssassin score from which mail is tagged (default: [policy] tag_at, "
                   f"else {defaults.TAG_AT:g}; spamd only: Bayes has [bayes] spam_cutoff)")
    p.add_argument("--reject-at", type=float, metavar="SCORE",
                   help=f"SpamAssassin score from which mail is rejected (default: [policy] "
                   f"reject_at, else {defaults.REJECT_AT:g}; spamd only: Bayes has [bayes] "
                   "reject_cutoff)")
    p.add_argument("--tag-only", action="store_true", default=None,
                   help="never reject or tempfail; log what would have been done")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", metavar="SPEC",
                   help=f"libmilter socket: unix:/path, inet:PORT@HOST, inet6:PORT@ADDR "
                   f"(default: [milter] socket, else {defaults.SOCKET})")
    _engine_args(p)
    _policy_args(p)
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   help="log level (default: [log] level, else info)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spambridge",
        description="A milter that spam-checks mail with SpamAssassin's spamd or a local "
        "SpamBayes classifier while the SMTP session is still open.",
    )
    parser.add_argument("--version", action="version", version=f"spambridge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the milter", description="Run the milter in the "
                         "foreground until SIGTERM. Flags override the config file.",
                         epilog="Exit status: 0 after a clean stop (SIGTERM, SIGINT or SIGHUP); "
                         "1 for a runtime failure (the socket held by another running milter); "
                         "2 for a usage error; 78 for a configuration error (the file, line "
                         "and key, or the flag, named).")
    _config_arg(run)
    _run_args(run)

    cc = sub.add_parser("check-config", help="validate the config (and Postfix's milter "
                        "settings when postconf is available)",
                        description="Read the config file as the milter would, with the same "
                        "flags over it as `run` takes, ask spamd for a PING when the engine uses "
                        "it, and, when postconf is installed, check Postfix's milter settings "
                        "against it.",
                        epilog="Exit status: 0 when there is nothing to warn about (notes are "
                        "not warnings); 1 when it printed warnings; 2 for a usage error; 78 for "
                        "a configuration error; 130 on Ctrl-C.")
    _config_arg(cc)
    # run's own flags, so that the command line the milter starts with is the one checked
    _run_args(cc)
    cc.add_argument("--no-postfix", action="store_true", help="do not ask postconf")
    cc.add_argument("--syntax-only", action="store_true",
                    help="only read the file and check spool_dir, as a reload does (exit 78 on "
                    "an error): the packaged unit's ExecReload, so `systemctl reload` fails on "
                    "a bad file")
    cc.add_argument("--postfix-config", metavar="DIR",
                    help="the Postfix config directory to read (postconf -c DIR; default: "
                    "$MAIL_CONFIG or /etc/postfix)")

    from spambridge import commands

    commands.add_parsers(sub, _config_arg, _engine_args, _policy_args)
    return parser


def load_config(args: argparse.Namespace) -> Config:
    path = args.config
    if path is None and os.path.exists(defaults.CONFIG_PATH):
        path = defaults.CONFIG_PATH
    cfg = load(path)
    return with_overrides(
        cfg,
        socket=getattr(args, "socket", None),
        engine=getattr(args, "engine", None),
        db=getattr(args, "db", None),
        spamd=getattr(args, "spamd", None),
        scan_timeout=getattr(args, "scan_timeout", None),
        tag_at=getattr(args, "tag_at", None),
        reject_at=getattr(args, "reject_at", None),
        tag_only=getattr(args, "tag_only", None),
    )


# syslog priorities (sd-daemon(3) "<N>" prefixes) of the logging levels
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """stderr read by journald (systemd, SyslogFacility=mail): each line gets its priority
    as a `<N>` prefix, or every warning and error lands in the journal and in syslog at
    priority info (SyslogLevel=); no time stamp or name[pid], journald adds both."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(origin)s%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_PRIORITY.get(record.levelno, 6 if record.levelno < 30 else 3)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def _stderr_is_journal() -> bool:
    """systemd sets JOURNAL_STREAM=DEV:INODE of the stream it connected to the journal."""
    want = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return bool(want) and want == f"{st.st_dev}:{st.st_ino}"


class _Origin(logging.Filter):
    """A library's line (asyncio's "Task exception was never retrieved") names the library in
    its text: the prefix is the program's, as in syslog. It used to print the logger's name
    there ("asyncio[812]: ERROR ..."), which reads as another program and escapes
    a grep for "spambridge["; in the journal such a line did not say whose it was at all."""

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name == "spambridge" or record.name.startswith("spambridge.")
        record.origin = "" if ours else f"{record.name}: "
        return True


LOG_QUEUE = 10_000  # lines the milter holds for a stderr not being read; past them, dropped
LOG_WAIT = 0.1  # seconds a logging thread waits for its line to be written, unless stuck


class _Unblocked(logging.handlers.QueueHandler):
    """The milter's lines reach stderr from a thread of their own. Written from the threads
    that answer mail, a stderr nobody read (a stuck journald, a `2>&1 | logger` that stopped)
    held every message at its decision line: no reply after the pipe filled (317 messages),
    and no stop either. Past LOG_QUEUE lines waiting, more are dropped and counted.
    A line is still written before the thread that logs it goes on (a decision line before
    the MTA has the reply), as long as stderr takes lines within LOG_WAIT: once it has not,
    nobody waits until it has taken one again."""

    def __init__(self) -> None:
        super().__init__(queue.Queue(LOG_QUEUE))
        self._lock = threading.Lock()
        self.dropped = 0
        self.stuck = False

    def handle(self, record: logging.LogRecord) -> bool:
        """As logging.Handler.handle, but without holding the handler's lock around emit():
        the queue is thread-safe, and with that lock held each thread's wait for its line
        (up to LOG_WAIT) kept every other logging thread out: behind a stderr taking 60 ms a
        line, the tenth of ten decision lines logged at once waited 0.6 s for its turn."""
        rv = self.filter(record)
        if isinstance(rv, logging.LogRecord):  # 3.12: a filter may hand back the record to use
            record = rv
        if rv:
            self.emit(record)
        return rv

    def enqueue(self, record: logging.LogRecord) -> None:
        q = self.queue
        assert isinstance(q, queue.Queue)
        try:
            q.put_nowait(record)
        except queue.Full:
            with self._lock:
                self.dropped += 1
            return
        if not self.stuck and not _on_a_loop():
            with q.all_tasks_done:
                self.stuck = not q.all_tasks_done.wait_for(lambda: not q.unfinished_tasks,
                                                           LOG_WAIT)

    def take_dropped(self) -> int:
        with self._lock:
            n, self.dropped = self.dropped, 0
        return n


def _on_a_loop() -> bool:
    """Whether this thread runs an asyncio loop (the bridge's, where spamd scans run): a wait
    for its line there held every scan in flight, for a line (a pool member's news) that
    answers no MTA."""
    asyncio = sys.modules.get("asyncio")  # not imported: no loop (`train -` never needs it)
    if asyncio is None:
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _Writer(logging.handlers.QueueListener):
    """Writes the queued lines, saying first how many were dropped since the last one."""

    def __init__(self, source: _Unblocked, handler: logging.Handler) -> None:
        super().__init__(source.queue, handler)
        self.source = source

    def handle(self, record: logging.LogRecord) -> None:
        if n := self.source.take_dropped():
            super().handle(logging.makeLogRecord({
                "name": "spambridge", "levelno": logging.WARNING, "levelname": "WARNING",
                "msg": f"{n} log lines dropped: stderr was not taking them"}))
        super().handle(record)
        self.source.stuck = False  # it takes lines again

    def stop_within(self, seconds: float) -> bool:
        """Write what is queued and stop, unless stderr still takes nothing after `seconds`:
        then False, and the caller must not touch stderr again (its lock is held)."""
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait(self._sentinel)  # type: ignore[attr-defined]
        thread = self._thread
        if thread is not None:
            thread.join(seconds)
            return not thread.is_alive()
        return True


def setup_logging(level: str, unblocked: bool = False) -> _Writer | None:
    """Log to stderr; with `unblocked` (the milter), through a queue and a thread of its own
    (_Unblocked), returning that thread's writer to stop at exit."""
    stream = logging.StreamHandler(sys.stderr)
    stream.addFilter(_Origin())
    stream.setFormatter(JournalFormatter() if _stderr_is_journal() else logging.Formatter(
        "%(asctime)s spambridge[%(process)d]: %(levelname)s %(origin)s%(message)s"))
    handler: logging.Handler = stream
    writer = None
    if unblocked:
        from spambridge.bridge import signals_blocked

        queued = _Unblocked()
        queued.setFormatter(logging.Formatter("%(message)s"))  # the text; `stream` formats
        writer = _Writer(queued, stream)
        with signals_blocked():  # libmilter's TERM delivered to it would kill the process
            writer.start()
        handler = queued
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    # Neither format names a record's source line, thread or multiprocessing process name
    # (only its time, pid, level, origin and text): the stack walk and thread lookups that
    # fill those in cost every log call, the milter's one line a message too (logging
    # HOWTO, "Optimization"). `process` stays: the plain format writes it.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    # asyncio's own debug lines ("Using selector: EpollSelector") say nothing to an admin:
    # `debug` adds the metrics endpoint's dropped connections, as documented, and no more
    logging.getLogger("asyncio").setLevel(logging.INFO)
    return writer


def libmilter_syslog() -> None:
    """libmilter reports its own errors with syslog(3) (an MTA it cannot negotiate with,
    accept() failing for want of descriptors, a thread it cannot start) and never calls
    openlog(): they went out as `python3: ...` under facility user, so not in mail.log nor
    under `journalctl -t spambridge`, and with no syslog daemon (a terminal, a container)
    nowhere. Give them our name, pid and facility (the unit's SyslogFacility=mail), and,
    unless stderr is the journal (which takes the syslog copy), a copy on stderr as well."""
    import syslog

    copy = 0 if _stderr_is_journal() else syslog.LOG_PERROR
    syslog.openlog("spambridge", syslog.LOG_PID | copy, syslog.LOG_MAIL)


def _unencodable(raw: bool) -> Callable[[UnicodeError], tuple[str | bytes, int]]:
    """A codec error handler for our output streams. A byte of a file name that is not UTF-8
    (Python holds it as a lone surrogate, as in argv or a directory listing): on stdout the
    byte itself, as LANG=C already writes it (a `check --batch` line names the file a script
    can open), on stderr `\\xff`, as the milter's log lines write it. A character the locale's
    charset lacks (почта under a Latin-1 locale): a backslash escape."""

    def handle(e: UnicodeError) -> tuple[str | bytes, int]:
        if not isinstance(e, UnicodeEncodeError):
            raise e
        c = ord(e.object[e.start])
        if 0xDC80 <= c <= 0xDCFF:
            return (bytes([c - 0xDC00]) if raw else f"\\x{c - 0xDC00:02x}"), e.start + 1
        return e.object[e.start].encode("ascii", "backslashreplace").decode(), e.start + 1

    return handle


codecs.register_error("spambridge-stdout", _unencodable(raw=True))
codecs.register_error("spambridge-stderr", _unencodable(raw=False))


def _printable_output() -> None:
    """A name the locale cannot encode must not stop a command with a UnicodeEncodeError
    halfway: under a UTF-8 locale (stdout strict) a Maildir file name with a Latin-1 byte
    did, under a Latin-1 one a path under /srv/почта; LANG=C (systemd, cron) was spared only
    because Python then runs in UTF-8 mode."""
    for stream, handler in ((sys.stdout, "spambridge-stdout"), (sys.stderr, "spambridge-stderr")):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors=handler)


def main(argv: Sequence[str] | None = None) -> int:
    _printable_output()
    parser = build_parser()
    # argparse stops a list of PATHs at the first option (`train --spam a --mbox b`); paths
    # given after options are still paths
    args, extra = parser.parse_known_args(argv)
    if extra:
        if getattr(args, "paths", None) is None or any(
                e.startswith("-") and e != "-" for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.paths = [*args.paths, *extra]
    if args.command is None:
        parser.print_help()
        return 2
    if args.command != "run":
        return _command(args)
    # from here, not from app.run: a reload (USR1) or stop sent in the 0.2 s the config and
    # the imports take killed the process (exit 138, no line); blocked, it waits for the
    # milter's own handling (see app.run). A `run` that returns (it did not start) unblocks.
    from spambridge.bridge import OWNED_SIGNALS

    before = signal.pthread_sigmask(signal.SIG_BLOCK, OWNED_SIGNALS)
    try:
        return _command(args)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _fail(text: str) -> None:
    """Why a command stopped, on stderr. Under systemd (a `run` that cannot start, the unit's
    ExecReload check) with priority err, as the milter's own error lines: a bare line is
    priority info to journald, so `journalctl -u spambridge -p warning` and mail.err never
    showed why the service would not start."""
    prefix = "<3>" if _stderr_is_journal() else ""
    print("\n".join(prefix + line for line in text.split("\n")), file=sys.stderr)


def _command(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args)
    except ConfigError as e:
        _fail(f"spambridge: configuration error: {e}")
        return EX_CONFIG
    writer = setup_logging(getattr(args, "log_level", None) or cfg.log_level,
                           unblocked=args.command == "run")
    try:
        if args.command == "run":
            from spambridge import app

            libmilter_syslog()

            def reload() -> Config:
                return load_config(args)

            status = app.run(cfg, reload)
            # libmilter's session threads (C, detached) may still be closing connections and
            # calling into pymilter: tearing the interpreter down under them corrupted the
            # heap now and then (SIGABRT, "free(): corrupted unsorted chunks", after a clean
            # stop). Every callback has returned by now (Pipeline.wait_idle); libmilter writes
            # the last replies in the moment after: give it that, then leave without teardown.
            time.sleep(0.1)
            if writer is None or writer.stop_within(2.0):  # else stderr is stuck: leave as is
                logging.shutdown()
                for stream in (sys.stdout, sys.stderr):
                    if stream is not None:
                        stream.flush()
            os._exit(status)
        if args.command == "check-config":
            if args.syntax_only:  # read already (a ConfigError is exit 78, below)
                from spambridge import app

                # the reload's own check beyond the file; ExecReload runs this as the service's
                # user, the one the milter's reload checks as
                app.check_spool(cfg)
                print(f"{cfg.source}: OK")
                return 0
            from spambridge import checkconfig

            return checkconfig.main(cfg, postfix=not args.no_postfix,
                                    postfix_config=args.postfix_config)
        from spambridge import commands

        status = commands.dispatch(args, cfg)
        if sys.stdout is not None:  # (None: started with fd 1 closed)
            sys.stdout.flush()  # a reader gone away (`| head`) shows here, not at exit
        return status
    except ConfigError as e:
        _fail(f"spambridge: configuration error: {e}")
        return EX_CONFIG
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `check --batch ... | head`: quiet, as a killed-by-SIGPIPE tool
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 128 + 13
    except OSError as e:
        _fail(f"spambridge: {e}")
        return 1
