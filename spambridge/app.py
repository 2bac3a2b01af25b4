"""Composition root: build the scanner, the loop bridge and the pipeline, run libmilter,
and shut down in order (libmilter stops → in-flight replies sent → loop stops → stores close).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import grp
import logging
import os
import signal
import socket
import stat
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from spambridge import __version__, defaults, limits, privileges
from spambridge.bridge import AsyncBridge, signals_blocked
from spambridge.config import Config, ConfigError, key_at, reloaded
from spambridge.message import clean, spool_problem
from spambridge.milter.poolnudge import PoolNudger
from spambridge.milter.stopwake import ListenerWaker
from spambridge.permissions import DanglingLink, make_dirs
from spambridge.pipeline import Pipeline
from spambridge.scanners import Scanner
from spambridge.socketspec import (
    InTheWay,
    SocketSpec,
    find_listener,
    listen_address,
    parse_socket_spec,
    remove_stale_unix_socket,
)

if TYPE_CHECKING:
    from spambridge.scanners.bayes import BayesScanner

log = logging.getLogger("spambridge")


def build_scanner(cfg: Config, bayes: Scanner | None = None) -> Scanner:
    """The engine named in the config, around `bayes`, the Bayes engine the caller made for
    bayes and spamd+bayes (the milter's creates a missing database and takes it back when the
    start fails, check's only reports one). Imports are local: a spamd-only install never
    loads the classifier, and a Bayes-only one never opens a spamd client."""
    engine = cfg.milter.engine
    cap = cfg.milter.scan_timeout
    if engine == "spamd":
        from spambridge.scanners.spamd import SpamdScanner

        return SpamdScanner.from_config(cfg)
    if bayes is None:
        raise ValueError(f"engine {engine} needs the Bayes engine its caller makes")
    if engine == "bayes":
        return bayes
    from spambridge.scanners.fallback import FallbackScanner
    from spambridge.scanners.spamd import SpamdScanner

    return FallbackScanner(SpamdScanner.from_config(cfg), bayes, cfg.spamd.share * cap, cap)


def run(cfg: Config, reload: Callable[[], Config] | None = None) -> int:
    """Run the milter until libmilter is told to stop (SIGTERM/SIGINT/SIGHUP); exit status."""
    import Milter

    from spambridge.milter import actions
    from spambridge.milter.callbacks import SpamBridgeMilter
    from spambridge.milter.session import Session

    _fix_mmap_threshold()
    before, after = limits.raise_nofile()
    if after != before:
        log.debug("open files limit raised from %d to %d (the hard limit)", before, after)
    spec = parse_socket_spec(cfg.milter.socket)
    # Block libmilter's signals before any helper thread exists, and keep them blocked: inside
    # milter.main() libmilter's own signal thread sigwait()s for them, so a TERM that arrives
    # while we start up stays pending and becomes a clean stop instead of killing the process.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGHUP, signal.SIGTERM,
                                              signal.SIGINT})
    owner = privileges.switch_to(cfg)  # (a missing user stops here, before anything is made)
    # the Bayes engine (the milter's, or spamd's fallback) is made here: a missing database it
    # makes is taken back when a later step fails, spamd+bayes's spamd side included (the
    # admin who fixed the config found an empty one, made by a start that never served)
    local: BayesScanner | None = None
    try:
        try:
            if cfg.milter.engine != "spamd":
                from spambridge.scanners.bayes import BayesScanner

                local = BayesScanner(cfg.bayes, dir_owner=owner)
            scanner = build_scanner(cfg, local)
        except ConfigError:
            raise
        except DanglingLink as e:  # check-config says the same
            raise ConfigError(f"{key_at(cfg, 'bayes', 'db')}: {e}") from None
        except Exception as e:
            raise ConfigError(f"cannot start the {cfg.milter.engine} engine: {e}") from e
        bridge = AsyncBridge().start()
        pipeline = Pipeline(scanner, bridge, cfg)
        if reload is not None:
            reload = _checking_spool(reload)
        if cfg.metrics.host:
            from spambridge import metrics

            try:
                reload = metrics.start(cfg, pipeline, reload)
            except OSError:
                bridge.stop()
                raise

        Milter.factory = functools.partial(SpamBridgeMilter, functools.partial(Session, pipeline))
        Milter.set_flags(actions.FLAGS)
        _register()
        sys.excepthook = _log_uncaught
        ours: tuple[int, int] | None = None
        try:
            ours = _open_socket(spec, cfg, owner)
            # after the socket and the Bayes database exist. Root is given up for good only
            # once the start is whole: what fails in the block (the spool checked as the user
            # that will spool, a thread that cannot start) is taken back by root (except below)
            with privileges.dropped(cfg, spec), limits.thread_failure_named():
                check_spool(cfg)
                if reload is not None:
                    # as the milter's user: a USR1 sent while the milter started (pending,
                    # since `run` blocks it from its first moment) re-read the config and
                    # checked the spool as root
                    _start_reload_thread(pipeline, reload)
                _say_started(cfg, spec, local, fallback=local is not scanner)
                # this thread runs the listener; a session may be in a scan up to the cap
                # after its MTA hung up: only past that is an open one surely unserved
                watch = limits.Watch(threading.get_ident(), spec=spec, grace=lambda: (
                    pipeline.config.milter.scan_timeout + defaults.REPLY_MARGIN + 5.0),
                    listener_tid=threading.get_native_id()).start()
                # a poke libmilter cannot start a thread for is a session it never serves: a
                # descriptor lost for good, twenty a second while stalled
                nudger = PoolNudger(spec, pipeline, may_poke=watch.may_start_thread).start()
                pipeline.slow_scan, pipeline.slow_after = nudger.poke, nudger.interval
                waker = ListenerWaker().start()
        except Exception:
            bridge.stop()
            _remove_own_socket(spec, ours)  # no socket left that nothing will ever answer on
            raise
    except BaseException:
        if local is not None:
            local.remove_made()
        raise
    _notify_ready()
    try:
        Milter.milter.main()
    except Milter.milter.error:
        # libmilter's listener fails ("cannot run main") when a stop request closes the listen
        # socket between its stop check and its poll — most often a TERM during start-up.
        # The socket being gone means a stop was asked for: that is a clean stop, not a crash.
        if find_listener(spec) is not None:
            raise
        log.info("stop requested while the listener was starting")
    finally:
        waker.stop()
        # messages being decided get their replies. libmilter itself drops sessions that wait
        # for the MTA's next command when it stops; Postfix applies milter_default_action there.
        grace = cfg.milter.scan_timeout + 1.0
        busy = pipeline.inflight
        if busy:  # said now: on a hung spamd, the whole cap passes in silence before "stopped"
            log.info("stopping: %s being scanned %s first (up to %gs)",
                     *(("1 message", "gets its reply") if busy == 1 else
                       (f"{busy} messages", "get their replies")), grace)
        pipeline.wait_idle(grace)
        pipeline.health.close()
        nudger.stop()
        watch.stop()
        bridge.run(scanner.aclose(), 5.0) if _alive(bridge) else None
        bridge.stop()
        _remove_own_socket(spec, ours)
    log.info("spambridge stopped")
    return 0


def _say_started(cfg: Config, spec: SocketSpec, local: BayesScanner | None,
                 fallback: bool) -> None:
    """The start's lines, as the milter's user (the limits that hold it, the database it can
    read): where it listens, a limit too low for Postfix's load, a database not usable yet or
    on a network filesystem."""
    log.info("spambridge %s listening on %s (engine=%s, cap=%gs%s; %s)", __version__,
             spec.libmilter, cfg.milter.engine, cfg.milter.scan_timeout,
             ", tag-only" if cfg.policy.tag_only else "",
             f"config {cfg.source}" if cfg.source != "<defaults>" else
             f"no config file: built-in defaults ({defaults.CONFIG_PATH} absent)")
    limits.check_at_start(cfg.milter.max_scan_size)
    if local is not None:
        try:
            local.probe(fallback=fallback)
        except Exception:  # only a warning is at stake: never a reason not to serve mail
            log.exception("checking the Bayes database at start failed")


def _log_uncaught(kind: type[BaseException], e: BaseException,
                  tb: TracebackType | None) -> None:
    """pymilter reports an error met before it can call a callback with PyErr_Print, which
    lands here: converting the MTA's data to the text a callback takes (the HELO name, a
    header's name, the client's host name) fails on bytes that are not UTF-8 — the EHLO
    argument a Postfix with smtputf8_enable=no passes on as the client sent it. That
    callback is skipped (pymilter answers TEMPFAIL, which a no-reply stage does not send) and
    the message goes on; say so in a log line, not a bare "UnicodeDecodeError: ..." on
    stderr that journald files with no time, no process and no hint what it was about."""
    if isinstance(e, UnicodeDecodeError):
        log.warning("the MTA sent bytes that are not UTF-8 where pymilter takes text, %s; "
                    "pymilter skipped that stage (a HELO: the Received line the scanner sees "
                    "names the client's host instead; the client's host name: it is taken "
                    "as \"unknown\", its address from the macro _; a header name: libmilter "
                    "ignores the rest of that message, and the MTA waits for its own timeout)",
                    clean(e.object, log=True))
        return
    log.error("uncaught exception", exc_info=(kind, e, tb))


def check_spool(cfg: Config) -> None:
    """A spool_dir this process cannot write is a config error, at start and at a reload: found
    per message instead, every message above spool_memory would pass unchecked (on_error).
    `check-config --syntax-only` (the unit's ExecReload) asks it too, as the same user."""
    problem = spool_problem(cfg.milter.spool_dir)
    if problem:
        raise ConfigError(f"{key_at(cfg, 'milter', 'spool_dir')}: {problem}")


def _checking_spool(reload: Callable[[], Config]) -> Callable[[], Config]:
    def checked() -> Config:
        cfg = reload()
        check_spool(cfg)
        return cfg

    return checked


def _remove_own_socket(spec: SocketSpec, ours: tuple[int, int] | None) -> None:
    """Unlink the unix socket this process made, never a newer instance's at the same path."""
    if spec.family == "unix" and ours is not None:
        with contextlib.suppress(OSError):
            st = os.lstat(spec.path)
            if (st.st_dev, st.st_ino) == ours:
                os.unlink(spec.path)


M_MMAP_THRESHOLD = -3  # glibc mallopt() parameter
MMAP_THRESHOLD = 256 * 1024


def _fix_mmap_threshold() -> None:
    """glibc raises its mmap threshold (up to 32 MiB) whenever a big block is freed, after
    which big message copies come from the heap and stay resident: 20 x 20 MB messages left
    600 MB behind (peak 1.5 GB). A fixed threshold keeps every buffer over 256 KiB in its own
    mapping, returned to the system when freed (measured: 35 MB after, peak 0.75-1.06 GB)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)  # libc is loaded already


def _alive(bridge: AsyncBridge) -> bool:
    return bridge.loop.is_running()


def _register() -> None:
    """What Milter.runmilter does, minus opensocket/main, so we can fix the socket up
    (mode, group, TCP_NODELAY) and signal readiness before serving."""
    import Milter as M  # noqa: N817 - Milter.milter is the C module

    from spambridge.milter.callbacks import header_callback

    milter = M.milter
    milter.set_connect_callback(M.connect_callback)
    milter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    milter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    milter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    milter.set_header_callback(header_callback)  # SpamBridgeMilter.header, minus 3 calls
    milter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    milter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    milter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    milter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    milter.set_close_callback(M.close_callback)


def _open_socket(spec: SocketSpec, cfg: Config, owner: tuple[int, int] | None = None
                 ) -> tuple[int, int] | None:
    """Open libmilter's listener; for a unix socket, give it its group and mode and return
    its (device, inode), so that only this socket is removed at exit. Each socket directory
    made here is 0755 whatever the umask, for Postfix's smtpd to cross (the socket's mode
    and group say who may connect), and given to `owner`, the user the milter switches to,
    who removes the socket at the stop."""
    import Milter as M  # noqa: N817 - Milter.milter is the C module

    milter = M.milter
    if spec.family == "unix":
        sock_dir = os.path.dirname(spec.path) or "."
        try:
            # not `mkdir -p`: under umask 077 it made the ones above the last root's 0700
            make_dirs(sock_dir, 0o755, owner)
            if not os.path.isdir(sock_dir):  # a file in its place
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST))
        except DanglingLink as e:  # `install -d` would not get through it either
            raise ConfigError(f"{key_at(cfg, 'milter', 'socket')}: {e}") from None
        except OSError as e:
            # a lasting cause (no parent, a read-only tree, Postfix not installed yet under the
            # packaged unit): exit 78, which systemd does not restart, where exit 1 made it
            # retry every 2 s and a `systemctl start` (dpkg's) wait for ever
            raise ConfigError(
                f"{key_at(cfg, 'milter', 'socket')}: cannot create {sock_dir}: "
                f"{e.strerror or e}; make it before the milter starts (install -d -o USER -g "
                f"postfix -m 2750 {sock_dir}; the package makes /var/spool/postfix/spambridge "
                "once group postfix exists); under the packaged unit (ProtectSystem=strict) "
                "a directory elsewhere also needs ReadWritePaths= (systemctl edit spambridge)"
            ) from None
        try:
            remove_stale_unix_socket(spec.path)
        except InTheWay as e:  # exit 78, not 1: systemd retrying would find it again
            raise ConfigError(f"{key_at(cfg, 'milter', 'socket')}: {e}") from None
    milter.setconn(spec.libmilter)
    milter.register(cfg.milter.name, data=lambda ctx: ctx.getpriv().data(),
                    unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
                    negotiate=M.negotiate_callback)
    old_umask = os.umask(0o777 & ~cfg.milter.socket_mode)
    try:
        milter.opensocket(False)
    except M.milter.error as e:
        why = _why_no_unix_listener(spec.path) if spec.family == "unix" else None
        if why:  # lasting: exit 78, which systemd does not restart every 2 s
            raise ConfigError(f"{key_at(cfg, 'milter', 'socket')}: cannot listen on "
                              f"{spec.path}: {why}") from None
        raise OSError(f"cannot open milter socket {spec.libmilter}: "
                      f"{_why_no_listener(spec) or e}") from None
    finally:
        os.umask(old_umask)
    if spec.family == "unix":
        st = os.lstat(spec.path)
        if not stat.S_ISSOCK(st.st_mode):  # swapped for a link to something else: hands off
            raise OSError(f"{spec.path} is not the socket just created; refusing to chmod it")
        if cfg.milter.socket_group:
            group = cfg.milter.socket_group
            try:
                os.chown(spec.path, -1, grp.getgrnam(group).gr_gid, follow_symlinks=False)
            except (KeyError, PermissionError) as e:
                os.unlink(spec.path)  # ours, checked above: not left for nothing to answer on
                raise ConfigError(f"{key_at(cfg, 'milter', 'socket_group')}: " + (
                    f"no such group {group!r}" if isinstance(e, KeyError) else
                    f"this user may not give the socket group {group!r} (run as root, add the "
                    "user to the group, or leave socket_group unset and use a setgid socket "
                    "directory)")) from None
        if stat.S_IMODE(st.st_mode) != cfg.milter.socket_mode:  # bind() used our umask
            os.chmod(spec.path, cfg.milter.socket_mode)
        return st.st_dev, st.st_ino
    set_nodelay_on_listener(spec)
    return None


def _why_no_unix_listener(path: str) -> str | None:
    """Why libmilter could not make its unix socket at `path` (it says only "cannot
    opensocket", the reason going to syslog): a directory this user may not write, or one on a
    read-only mount (systemd's ProtectSystem=strict outside ReadWritePaths=), found by binding
    a socket there as it does. None when that works now (a passing cause)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.bind(path)
    except OSError as e:
        return e.strerror or str(e)
    with contextlib.suppress(OSError):
        os.unlink(path)  # made just now, by us
    return None


def _why_no_listener(spec: SocketSpec) -> str | None:
    """Why libmilter could not listen on a TCP spec, found by binding the same address as it
    does (SO_REUSEADDR): libmilter says only "cannot opensocket" and sends its reason to
    syslog, so "Address already in use" (another instance) never reached the milter's log."""
    if spec.family == "unix":
        return None
    try:
        family, address = listen_address(spec)
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(address)
            s.listen(1)
    except OSError as e:
        return e.strerror or str(e)
    return None


def set_nodelay_on_listener(spec: SocketSpec) -> bool:
    """Accepted sockets inherit TCP_NODELAY from the listener on Linux; libmilter never sets
    it, and Nagle + delayed ACK cost ~40 ms per stall over loopback."""
    fd = find_listener(spec)
    if fd is None:
        return False
    with socket.socket(fileno=os.dup(fd)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return True


def _notify_ready() -> None:
    """systemd Type=notify: READY=1 once the socket exists."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(path)
        s.sendall(b"READY=1")


def _start_reload_thread(pipeline: Pipeline, reload: Callable[[], Config]) -> None:
    """SIGUSR1 re-reads the config; a bad file is logged and the old config kept.
    (SIGHUP means stop to libmilter, so it cannot be the reload signal.)"""

    def loop() -> None:
        while True:
            signal.sigwait({signal.SIGUSR1})
            try:
                new = reload()
            except ConfigError as e:
                log.error("reload failed, keeping the running config: %s", e)
                continue
            except Exception as e:
                log.exception("reload failed, keeping the running config: %r", e)
                continue
            applied, changed = reloaded(pipeline.config, new)
            if changed:
                log.warning("reload: %s only change on restart; applying the rest",
                            ", ".join(changed))
            pipeline.config = applied
            # a flag of `run` wins over the file at a reload too: an edit of that key in the
            # file changed nothing, and the line said only "reloaded"
            kept = (f"; the command line's {', '.join(new.flags)} kept over the file"
                    if new.flags else "")
            log.info("configuration reloaded from %s%s", new.source, kept)

    with signals_blocked():
        threading.Thread(target=loop, name="spambridge-reload", daemon=True).start()
