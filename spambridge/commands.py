"""Sub-commands beyond `run`: `train` and `check`. Parsing only; the work is in the train package
and check.py, imported when the command runs (so `train -` starts fast)."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from typing import Any

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
                   help="print only errors, a message on stdin skipped as too large, and a "
                   "database on a network filesystem")
    t.add_argument("paths", nargs="*", metavar="PATH", default=[])

    c = sub.add_parser(
        "check", help="score messages offline through the milter's decision path",
        description="Run each message through the engine, the policy and the header "
        "rendering exactly as the milter would, and print the score, the verdict, the "
        "headers that would be added and the SMTP reply.",
        epilog="Exit status: 0 when every message was scored (an oversize one, skipped as "
        "the milter would skip it, counts as scored); 1 when one could not be read or "
        "scanned (no database, not trained yet, spamd down), whatever the verdicts; 2 for a "
        "usage error; 78 for a configuration error; 130 on Ctrl-C; 141, quietly, when what "
        "reads its output went away (check --batch ... | head).")
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


def _train(args: argparse.Namespace, cfg: Config) -> int:
    """Check the options' combinations (usage errors, exit 2); train.command does the rest."""
    from spambridge import train

    engine = args.engine or cfg.milter.engine
    if args.selective and args.label == "forget":
        # --selective chooses what to learn; a --forget with it did as if it was not given
        print("spambridge train: --selective chooses what to learn; --forget unlearns what "
              "it is given", file=sys.stderr)
        return 2
    if args.selective and engine == "spamd":
        print("spambridge train: --selective applies to the local Bayes database "
              "(engine bayes or spamd+bayes)", file=sys.stderr)
        return 2
    if args.index is not None and args.paths:
        print("spambridge train: --index takes its paths from the file", file=sys.stderr)
        return 2
    return train.command(cfg, train.Request(
        engine=engine, label="index" if args.index is not None else args.label,
        paths=tuple(args.paths or ["-"]),  # no PATH: one message on stdin
        index=args.index, max_size=args.max_size, mbox=args.mbox, quiet=args.quiet,
        batch_messages=args.batch_size, selective=args.selective, user=args.user))
