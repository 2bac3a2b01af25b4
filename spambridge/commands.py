"""Sub-commands beyond `run`: `train` and `check`. Parsing only; the work is in train.py and
check.py, imported when the command runs (so `train -` starts fast)."""

from __future__ import annotations

import argparse
import io
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import IO, Any

from spambridge import defaults
from spambridge.config import Config

ArgAdder = Callable[[argparse.ArgumentParser], None]


def _at_least_one(text: str) -> int:
    """--batch-size: 0 or less was taken as 1, silently."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: a batch holds at least 1 message")
    return n


def size(text: str) -> int:
    """`500000`, `500k`, `2M` → bytes; 0 means no limit."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)[bB]?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 500k or 2M")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]


def _spamd_user(text: str) -> str:
    from spambridge.config import spamd_user

    try:
        return spamd_user(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_parsers(sub: Any, config_arg: ArgAdder, engine_args: ArgAdder,
                policy_args: ArgAdder) -> None:
    t = sub.add_parser(
        "train", help="teach the Bayes database (or spamd) with spam or ham",
        description="Learn messages as spam or ham, or forget them. Each PATH is a Maildir, "
        "an mbox, a directory of message files, one message file, or - for one message on "
        "stdin (the default; for Dovecot's IMAPSieve pipe). Training the same message again "
        "does nothing; training it as the other class moves it.",
        epilog="Exit status: 0 when the run finished (messages already trained, over "
        "the size limit, or files in a folder that are not mail are counted, not errors); 1 when "
        "a PATH given could not be read or is not mail, or the database or spamd failed; 2 "
        "for a usage error; 78 for a configuration error; 130 on Ctrl-C and 143 on SIGTERM "
        "(every finished batch is kept: run it again to learn the rest).")
    config_arg(t)
    engine_args(t)
    what = t.add_mutually_exclusive_group(required=True)
    what.add_argument("--spam", dest="label", action="store_const", const="spam",
                      help="learn as spam")
    what.add_argument("--ham", dest="label", action="store_const", const="ham",
                      help="learn as ham")
    what.add_argument("--forget", dest="label", action="store_const", const="forget",
                      help="unlearn messages trained before")
    what.add_argument("--index", metavar="FILE",
                      help="learn ham and spam together, in the order listed in FILE: one "
                      "'spam PATH' or 'ham PATH' per line (the TREC spam-track index format; "
                      "relative paths from FILE's directory)")
    t.add_argument("--selective", action="store_true",
                   help="learn only messages the database does not already classify "
                   "correctly with certainty (SpamBayes' nonedge regime; best with --index "
                   "or one message at a time, see docs/bayes.md)")
    t.add_argument("--mbox", action="store_true", help="read files as mbox even without a "
                   "leading 'From ' line")
    t.add_argument("--max-size", type=size, default=defaults.TRAIN_MAX_SIZE, metavar="SIZE",
                   help="skip larger messages (default: 500k, as sa-learn; 0 = no limit)")
    t.add_argument("--user", default="", type=_spamd_user,
                   help="spamd user whose Bayes to teach (--engine spamd; default: [spamd] "
                   "user)")
    t.add_argument("--batch-size", type=_at_least_one, default=defaults.TRAIN_BATCH,
                   metavar="N",
                   help=f"messages per database transaction (default: {defaults.TRAIN_BATCH}; "
                   "an interrupted run keeps every finished batch)")
    t.add_argument("-q", "--quiet", action="store_true",
                   help="print only errors, and a message on stdin skipped as too large")
    t.add_argument("paths", nargs="*", metavar="PATH", default=[])

    c = sub.add_parser(
        "check", help="score messages offline through the milter's decision path",
        description="Run each message through the engine, the policy and the header "
        "rendering exactly as the milter would, and print the score, the verdict, the "
        "headers that would be added and the SMTP reply.",
        epilog="Exit status: 0 when every message was scored (an oversize one, skipped as "
        "the milter would skip it, counts as scored); 1 when one could not be read or "
        "scanned (no database, not trained yet, spamd down), whatever the verdicts; 2 for a "
        "usage error; 78 for a configuration error.")
    config_arg(c)
    engine_args(c)
    policy_args(c)
    form = c.add_mutually_exclusive_group()  # a table line has no room for clues
    form.add_argument("--explain", action="store_true", help="list the strongest Bayes clues")
    form.add_argument("--batch", action="store_true",
                      help="one line per message: path<TAB>score<TAB>verdict")
    c.add_argument("paths", nargs="+", metavar="FILE", help="message files, or - for stdin")


def dispatch(args: argparse.Namespace, cfg: Config) -> int:
    if args.command == "train":
        return _train(args, cfg)
    if args.command == "check":
        from spambridge import check

        return check.run(cfg, args.paths, explain=args.explain, batch=args.batch)
    raise SystemExit(f"spambridge: unknown command {args.command!r}")


# exit statuses of a train run that was interrupted (Ctrl-C) or stopped (SIGTERM)
STOPPED = (130, 143)
KEPT_IN_MEMORY = 8 << 20  # an mbox on stdin kept for spamd+bayes' second reading: then on disk


def _kept(src: IO[bytes], max_size: int, mbox: bool) -> tuple[IO[bytes], bool]:
    """Standard input kept for a second reading, and whether it is one message over max_size.
    One message needs no more than max_size + 1 bytes (beyond that it is not learned); an mbox
    (`--mbox -`) is kept whole, on disk past a few MB, since each of its messages has a limit
    of its own (cut at the one message's limit, a 4 MB mbox taught the database its first 398
    messages, the last one cut short, and said nothing)."""
    from spambridge import train

    if not mbox:
        data = src.read(max_size + 1 if max_size else -1)
        too_large = bool(max_size) and len(data) > max_size
        if too_large:
            train.drain(src)  # its writer (a Dovecot pipe) must not get EPIPE
        return io.BytesIO(data), too_large
    kept = tempfile.SpooledTemporaryFile(max_size=KEPT_IN_MEMORY)  # noqa: SIM115 - returned
    shutil.copyfileobj(src, kept)
    kept.seek(0)
    return kept, False


def _train(args: argparse.Namespace, cfg: Config) -> int:
    from spambridge import train

    engine = args.engine or cfg.milter.engine
    common: dict[str, Any] = {"max_size": args.max_size, "mbox": args.mbox, "quiet": args.quiet}
    local: dict[str, Any] = {"batch_messages": args.batch_size, "selective": args.selective}
    if args.selective and args.label == "forget":
        # --selective chooses what to learn; a --forget with it did as if it was not given
        print("spambridge train: --selective chooses what to learn; --forget unlearns what "
              "it is given", file=sys.stderr)
        return 2
    if args.selective and engine == "spamd":
        print("spambridge train: --selective applies to the local Bayes database "
              "(engine bayes or spamd+bayes)", file=sys.stderr)
        return 2
    if args.index is not None:
        if args.paths:
            print("spambridge train: --index takes its paths from the file", file=sys.stderr)
            return 2
        try:
            index = train.read_index(args.index)
        except ValueError as e:
            print(f"spambridge train: {e}", file=sys.stderr)
            return 1
        status = 0
        if engine != "spamd":
            status = train.run(cfg, "index", [], index=index, **local, **common)
        if engine != "bayes":  # SpamAssassin learns everything, in any order: class by class
            for label in ("spam", "ham"):
                entries = [e for e in index if e.label == label]
                if entries and status not in STOPPED:
                    status = max(status, train.run_spamd(
                        cfg, label, [], user=args.user, index=entries, **common))
        return status
    args.paths = args.paths or ["-"]  # no PATH: one message on stdin
    if engine == "bayes":
        return train.run(cfg, args.label, args.paths, **local, **common)
    if engine == "spamd":
        return train.run_spamd(cfg, args.label, args.paths, user=args.user, **common)
    # spamd+bayes: teach both; stdin can be read only once, so keep it
    keep = "-" in args.paths and sys.stdin is not None
    too_large = False
    if keep:
        kept, too_large = _kept(sys.stdin.buffer, args.max_size, args.mbox)
        sys.stdin = io.TextIOWrapper(kept)
    status = train.run(cfg, args.label, args.paths, **local, **common)
    if status in STOPPED:  # Ctrl-C or SIGTERM stops the command, not one engine's half of it
        return status
    if keep:
        sys.stdin.buffer.seek(0)
    # a message over --max-size on stdin: the local run said so (on stderr, even with
    # --quiet); spamd's run counts it in its summary, and does not say it again
    remote = train.run_spamd(cfg, args.label, args.paths, user=args.user,
                             too_large_said=too_large, **common)
    return max(status, remote)
