"""`spambridge check`: replay messages through exactly the milter's decision path (engine under
the cap, policy, headers) and show what the MTA would have been told.

`--batch` prints `path<TAB>score<TAB>verdict` per message from one process, for evaluating a
corpus; the verdict is the score's band (ham, unsure, spam, reject), `unchecked=<why>`, or
`unreadable` (score `-`), so the output has one line per path given (a tab, newline, CR or
backslash in a path is written `\\t`, `\\n`, `\\r`, `\\\\`, as in check's other lines). Why
messages went unchecked (no database, not trained yet, spamd down...) is said once per reason
on stderr, and with `spamd+bayes`, how many scores came from the Bayes fallback (0..1, not
spamd's points).

A file from a mailbox already holds the Received line our MTA wrote (hidden from milters, so
the milter writes its own from the connection): it gets no second one, and that line says what
the milter learned from the connection (a trusted or authenticated client, which it skips:
_envelope); the X-Spam-* fields and Subject tag the milter wrote after its scan are taken off
(message.parse_raw), so it is decided as it was when it arrived (docs/bayes.md, "Checking").

Exit status: 0 when every message was scored (or deliberately not: oversize), 1 when one could
not be read or scanned (no database, not trained yet, spamd down...), so a script notices.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from typing import IO

from spambridge import compressed
from spambridge.bridge import AsyncBridge
from spambridge.config import Config
from spambridge.headers import subject_rewrite
from spambridge.health import Health
from spambridge.message import Envelope, MessageBuffer, mta_received, parse_raw
from spambridge.milter.session import is_trusted, macro_address
from spambridge.pipeline import Evaluation, Pipeline
from spambridge.scanners import Scanner
from spambridge.train import holds_several_messages, not_mail_because, open_no_wait
from spambridge.verdict import Action, ErrorKind, ScanError, ScoreResult, Skipped, SkipReason

EXPLAIN_CLUES = 20
# read past max_scan_size: room for an mbox From line and the fields delivery wrote (a
# Return-Path, Delivered-To, Received lines: a few hundred bytes), which the milter never had
UNCOUNTED = 16 * 1024
UNCHECKED_REASONS = 5  # --batch: distinct reasons for unchecked messages said on stderr
_PATH_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _shown_path(path: str) -> str:
    """A path as `check` prints it: a tab, newline or CR in a file name split its line (a
    --batch line in two, or one column more), so those and the backslash itself are written as
    backslash escapes, which a script can undo; any other name prints as it is. (Not
    message.clean: its "?" for a control and unescaped backslash are not reversible, and it
    cuts at 255 bytes.)"""
    return path.translate(_PATH_ESCAPES)


def build_scanner(cfg: Config, clues: int = 0) -> Scanner:
    """As the milter's, except that a missing Bayes database is reported, not created, and
    the Bayes results carry their `clues` strongest clues."""
    from spambridge.app import build_scanner as build

    if cfg.milter.engine == "spamd":
        return build(cfg)
    from spambridge.scanners.bayes import BayesScanner

    return build(cfg, BayesScanner(cfg.bayes, create=False, clues=clues))


# in the Received line our MTA wrote: the client's comment ("from HELO (NAME [ADDR])"), the
# protocol after "by HOST (MTA)", one a client that authenticated gets (RFC 3848's ESMTPA,
# ESMTPSA; Postfix's UTF8SMTPA...), and mail Postfix's pickup took from sendmail(1), which
# the milter sees come from localhost, 127.0.0.1, port 0. The HELO before the comment is the
# client's to write ("[10.1.2.3]", words: Postfix joins its arguments, and leaves out only
# parentheses and a few more), and so is the recipient in the "for" clause after the
# protocol: neither is read for an address or a protocol.
_CLIENT = re.compile(rb"\s*from\s[^()]*\(([^()]*)")
_PROTOCOL = re.compile(rb"\sby\s+[^\s()]+(?:\s+\([^()]*\))?\s+with\s+(\S+)")
_AUTHENTICATED = re.compile(rb"(?:UTF8)?E?SMTPS?A\b", re.I)
_PICKUP = re.compile(rb"\s*by\s+\S+\s+\(Postfix, from userid\b")


def _envelope(n: int, buf: MessageBuffer, cfg: Config) -> tuple[Envelope, SkipReason | None]:
    """The envelope the message is decided with, and why the milter skipped it, if it did.
    On a message from a mailbox, the Received line our MTA wrote (message.mta_received) says
    what the milter learned from the connection: the client's address (trusted_networks),
    whether it authenticated (skip_authenticated; no Subject tag) or was submitted on this
    host (tagged, never refused). A file not delivered yet has none of it: it is decided as
    mail from a client that is neither."""
    # the Checker-Version shown is the one the milter wrote
    env = Envelope(queue_id=f"CHECK{n:05d}", delivered=buf.delivered(), mta_host=buf.mta_host)
    i = mta_received(buf.headers, buf.mta_host)
    if i is None:
        return env, None
    line = buf.headers[i][1].partition(b";")[0]  # not the date
    after = 0  # where the protocol is looked for: past what the client wrote
    if _PICKUP.match(line):
        env.client_addr, env.local = "127.0.0.1", True
    elif m := _CLIENT.match(line):
        env.client_addr = macro_address(m[1].decode("latin-1"))
        after = m.end()
    if (p := _PROTOCOL.search(line, after)) and _AUTHENTICATED.match(p[1]):
        env.auth_user = "(authenticated)"  # who, the milter alone knew
    # as Session.skip_reason
    if is_trusted(env.client_addr, cfg.milter):
        return env, SkipReason.TRUSTED
    if env.auth_user and cfg.milter.skip_authenticated:
        return env, SkipReason.AUTHENTICATED
    return env, None


def verdict(ev: Evaluation) -> str:
    if isinstance(ev.outcome, ScanError):
        return f"unchecked={ev.outcome.kind.value}"
    if isinstance(ev.outcome, Skipped):
        return f"skipped={ev.outcome.reason.value}"
    return ev.decision.reason  # the band: ham, unsure, spam, reject


def _messages(paths: list[str], stdin: IO[bytes] | None, limit: int
              ) -> Iterator[tuple[str, bytes | str]]:
    """(path, message) or (path, why not), reading no more than `limit` bytes of each: past
    max_scan_size (and UNCOUNTED) the milter does not scan either, so the rest would only
    cost memory. A
    compressed file (a Maildir under Dovecot's zlib plugin) is read decompressed, `limit`
    counting what comes out."""
    empty = "cannot read: empty (nothing a milter would be sent)"
    for path in paths:
        try:
            if path == "-":
                if stdin is None:
                    yield "-", "cannot read: standard input is closed"
                    continue
                data = compressed.read_limited(stdin, limit)
            else:
                with open_no_wait(path) as f:  # a FIFO without a writer: no hang
                    data = compressed.read_limited(f, limit)
            yield path, data or empty
        except OSError as e:
            yield path, f"cannot read: {e.strerror or e}"
        except (compressed.Unsupported, compressed.Damaged) as e:
            yield path, f"cannot read: {e}"


def _input_note(data: bytes) -> str:
    """What to know of a file before trusting its score: a milter is never sent an mbox, and
    what has no header is no message `train` would learn (an mbox or a binary file got a score,
    junk an "unsure" 0.5, with no word)."""
    if holds_several_messages(data):
        return ("holds several messages (an mbox): scored as one; `train --mbox` splits one, "
                "`check` does not")
    if why := not_mail_because(data):
        return f"does not look like mail ({why}): scored all the same"
    return ""


class _NoIncidents(Health):
    """`check` says each message's failure on its `why:` line (or, --batch, once per reason):
    the milter's incident log ("spamd failing: …; mail gets on_unavailable = accept until it
    answers again") only repeated it on stderr, in words meant for a running milter."""

    def failed(self, engine: str, kind: str, detail: str, meanwhile: str) -> None:
        return None

    def answered(self, *engines: str) -> None:
        return None


class _PoolNews(logging.Filter):
    """The milter logs a spamd pool member that stops connecting (or connects again) once,
    time-stamped and with its retry schedule ("it again every 30s until it connects"): words
    for a running milter, which leaked into check's stderr. The news is still worth having (the
    other servers scored the messages, so no line of the report says it): said as check's own
    plain line, without the schedule. Only those lines (spamd.pool_log's); other warnings stay
    log lines."""

    def __init__(self, err: IO[str]) -> None:
        super().__init__()
        self.err = err

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        print(f"spambridge check: {text.partition(', it again every')[0]}", file=self.err)
        return False


def run(cfg: Config, paths: list[str], *, explain: bool = False, batch: bool = False,
        out: IO[str] | None = None, err: IO[str] | None = None,
        stdin: IO[bytes] | None = None) -> int:
    """Exit status: 0 when every message was scored or skipped by policy, else 1."""
    out = out or sys.stdout
    err = err or sys.stderr
    # the decision log line repeats what is printed; keep warnings (scan failures) unless
    # --batch, where one line per message would drown the table
    ours = logging.getLogger("spambridge")
    ours.setLevel(logging.ERROR if batch else logging.WARNING)
    scanner = build_scanner(cfg, EXPLAIN_CLUES if explain else 0)
    bridge = AsyncBridge().start()
    pipeline = Pipeline(scanner, bridge, cfg)
    pipeline.health = _NoIncidents()
    pipeline.errors_in_full = False  # each `why:` line says its error whole already
    status = 0
    fallbacks: dict[str, int] = {}  # spamd+bayes: the notes of messages Bayes scored instead
    # --batch: why messages went unchecked (the log lines that say it are off), said once each
    unchecked: dict[tuple[str, str], int] = {}
    pool_news = _PoolNews(err)
    pool = logging.getLogger("spambridge.pool")  # spamd.pool_log, not imported for bayes
    pool.addFilter(pool_news)
    try:
        stdin = stdin or (sys.stdin.buffer if sys.stdin is not None else None)
        # bytes more than max_scan_size: an mbox From line and what delivery wrote on top of
        # a message from a mailbox (message._delivery_size) count toward no limit, and one
        # more is enough to be oversize
        limit = cfg.milter.max_scan_size + 1 + UNCOUNTED
        # and one more again, to tell a file of exactly `limit` bytes (whole, and perhaps
        # under max_scan_size for the milter once those and CRs are gone) from a longer one
        # cut there
        for n, (name, raw) in enumerate(_messages(paths, stdin, limit + 1), 1):
            path = _shown_path(name)
            if isinstance(raw, str):
                print(f"spambridge check: {path}: {raw}", file=err)
                if batch:
                    print(f"{path}\t-\tunreadable", file=out)
                status = 1
                continue
            message = raw[:limit]  # (a copy: taken once)
            if note := _input_note(message):
                print(f"spambridge check: {path}: {note}", file=err)
            # a file longer than the read limit is over max_scan_size: its prefix is not scored
            buf = parse_raw(message, cfg.milter.max_scan_size, complete=len(raw) <= limit,
                            subject_tag=cfg.policy.subject_tag)
            try:
                ev = pipeline.evaluate(buf, *_envelope(n, buf, cfg))
                owned, forged = buf.owned_headers(), buf.owned_total
                subject = buf.header_value("Subject")
            finally:
                buf.close()
            if isinstance(ev.outcome, ScanError) and ev.outcome.kind is not ErrorKind.OVERSIZE:
                status = 1
                if batch:
                    reason = (verdict(ev), ev.outcome.detail or "no detail")
                    unchecked[reason] = unchecked.get(reason, 0) + 1
            if batch:
                # repr: every digit the engine gave (%.6g printed 0.9999997 as 1, and tied
                # the ranking near 1 for whoever computes an AUC from the table)
                score = "-" if ev.decision.score is None else repr(ev.decision.score)
                print(f"{path}\t{score}\t{verdict(ev)}", file=out)
                if isinstance(ev.outcome, ScoreResult) and ev.outcome.note:
                    fallbacks[ev.outcome.note] = fallbacks.get(ev.outcome.note, 0) + 1
            else:
                _report(path, ev, explain, owned, forged, subject, out)
    finally:
        try:
            bridge.run(scanner.aclose(), 10.0)
        finally:
            bridge.stop()
            pool.removeFilter(pool_news)
    reasons = sorted(unchecked.items(), key=lambda kv: -kv[1])
    for (what, why), n in reasons[:UNCHECKED_REASONS]:
        print(f"spambridge check: {n} message{'s' if n > 1 else ''} {what}: {why}", file=err)
    if len(reasons) > UNCHECKED_REASONS:  # (spamd's errors can differ message by message)
        rest = sum(n for _, n in reasons[UNCHECKED_REASONS:])
        print(f"spambridge check: {rest} more unchecked for other reasons", file=err)
    for note, n in sorted(fallbacks.items()):  # the table cannot say which scale a score is on
        print(f"spambridge check: {n} message{'s' if n > 1 else ''} scored by Bayes (0..1) "
              f"instead of spamd: {note}", file=err)
    return status


def _readable(token: str) -> str:
    """A clue as the admin reads the message: the tokenizer works on bytes and spells each
    as a Latin-1 character, so a UTF-8 word read 'grÃ¼ÃŸe' ('Ð¿Ñ\x80Ð¸Ð²ÐµÑ\x82' for привет).
    Shown as UTF-8 where its bytes are; otherwise (Latin-1 mail: grüße) as spelled. Display
    only: the database keeps the tokenizer's spelling."""
    try:
        return token.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return token


def _subject_change(prefix: str, subject: bytes | None) -> str:
    """What the milter makes of the Subject (the function it uses): a raw 8-bit Subject in
    another charset than UTF-8 (Latin-1, KOI8-R, ...), one tagged already and one too long
    to tag are left as they are, which `check` used to hide behind the prefix alone."""
    new, why = subject_rewrite(prefix, subject)
    if new is not None:
        return f"; the Subject becomes {new!r}"
    return f" not added: {why}"


def _report(path: str, ev: Evaluation, explain: bool, owned: list[tuple[str, int]],
            forged: int, subject: bytes | None, out: IO[str]) -> None:
    """`owned`: the X-Spam-* fields the milter removes (MessageBuffer.owned_headers), of the
    `forged` the message came with."""
    d = ev.decision
    score = d.shown or "-"  # as the headers below give it
    would = f" (would {d.intended.value} without tag-only)" if d.intended is not d.action else ""
    print(f"{path}: score={score} engine={d.engine} verdict={verdict(ev)} "
          f"action={d.action.value}{would} ({ev.elapsed * 1000:.0f} ms)", file=out)
    if isinstance(ev.outcome, ScanError) and ev.outcome.detail:
        print(f"  why: {ev.outcome.detail}", file=out)
    elif isinstance(ev.outcome, ScoreResult) and ev.outcome.note:  # Bayes stood in for spamd
        print(f"  why: {ev.outcome.note}: {ev.outcome.why or 'no detail'}", file=out)
    if d.reply is not None:
        print(f"  SMTP reply: {d.reply}", file=out)
    elif d.action is Action.TEMPFAIL:
        print("  SMTP reply: 451 (tempfail)", file=out)
    else:
        print("  SMTP reply: 250 (accepted)", file=out)
    if d.action not in (Action.REJECT, Action.TEMPFAIL):  # a refused message is not changed
        if owned:  # forged or stale X-Spam-* fields from outside
            print(f"  headers removed: {', '.join(sorted({n for n, _ in owned}))}", file=out)
        if forged > len(owned):  # a flood: the rest stay, in the milter's words (actions.apply)
            print(f"  headers left: {forged - len(owned)} ({forged} forged X-Spam-* fields, "
                  f"only the first {len(owned)} removed; ours go on top)", file=out)
        if d.subject_prefix:
            print(f"  Subject prefix: {d.subject_prefix!r}"
                  f"{_subject_change(d.subject_prefix, subject)}", file=out)
        if d.headers:
            print("  headers added:", file=out)
            for name, value in d.headers:
                print(f"    {name}: {value}", file=out)
    if explain and isinstance(ev.outcome, ScoreResult):
        if ev.outcome.note:
            print(f"  note: {ev.outcome.note}", file=out)
        clues = ev.outcome.clues[:EXPLAIN_CLUES]
        if clues:
            print(f"  strongest clues ({len(clues)} shown; probability the token means spam):",
                  file=out)
            for token, prob in clues:
                print(f"    {prob:.4f}  {_readable(token)!r}", file=out)
        elif ev.outcome.engine == "bayes":
            print("  no clues: no token of this message is known to the database", file=out)
        if ev.outcome.tests:
            print(f"  tests: {', '.join(ev.outcome.tests)}", file=out)
