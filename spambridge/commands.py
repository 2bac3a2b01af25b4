"""Sub-commands beyond `run`: `train` and `check` (the local-engine issue fills these in)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from spambridge.config import Config

ArgAdder = Callable[[argparse.ArgumentParser], None]


def add_parsers(sub: Any, config_arg: ArgAdder, engine_args: ArgAdder,
                policy_args: ArgAdder) -> None:
    return None


def dispatch(args: argparse.Namespace, cfg: Config) -> int:
    raise SystemExit(f"spambridge: unknown command {args.command!r}")
