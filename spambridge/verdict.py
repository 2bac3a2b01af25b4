"""Plain values that flow one way: scanner → ScoreResult | ScanError → policy → Decision.

Nothing here does I/O, so policy and header rendering can be tested as tables.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Action(enum.Enum):
    """What the MTA is told at end of message."""

    ACCEPT = "accept"
    TAG = "tag"
    REJECT = "reject"
    TEMPFAIL = "tempfail"


class FailAction(enum.Enum):
    """What an admin may choose for a failure class (`on_timeout = "tempfail"`)."""

    ACCEPT = "accept"
    TEMPFAIL = "tempfail"
    REJECT = "reject"


class ErrorKind(enum.Enum):
    """Why a message could not be scored; each kind has its own policy key."""

    UNAVAILABLE = "unavailable"  # scanner refused / not listening / told us it is unavailable
    TIMEOUT = "timeout"  # no answer within the cap
    OVERSIZE = "oversize"  # above max_scan_size, deliberately not scanned
    ERROR = "error"  # garbage reply, protocol error, internal failure

    @property
    def policy_key(self) -> str:
        return f"on_{self.value}"


class SkipReason(enum.Enum):
    """Mail deliberately not scanned (still cleaned of forged headers)."""

    AUTHENTICATED = "authenticated"
    TRUSTED = "trusted"


class Band(enum.Enum):
    """Where a score falls among the engine's thresholds."""

    HAM = "ham"
    UNSURE = "unsure"  # Bayes only: between ham_cutoff and spam_cutoff
    SPAM = "spam"
    REJECT = "reject"  # spam above the reject threshold


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """A scanner's answer. `score` is on the engine's own scale (SpamAssassin points, or 0..1)."""

    engine: str  # "spamd" or "bayes"
    score: float
    tests: tuple[str, ...] = ()
    clues: tuple[tuple[str, float], ...] = ()  # Bayes: strongest tokens, for --explain
    failed: ScanError | None = None  # the engine this one stood in for, and how it failed
    # Bayes: the message is built to hide text past the tokenizer's structure caps ("parts",
    # tokenizer.HIDING): what was read cannot make it ham
    unread: str = ""

    @property
    def note(self) -> str:
        """"fallback=spamd-timeout" when another engine decided (headers, log, check)."""
        return f"fallback={self.failed.engine}-{self.failed.kind.value}" if self.failed else ""

    @property
    def why(self) -> str:
        """With a note: what the engine it stands for failed with."""
        return self.failed.detail if self.failed else ""


@dataclass(frozen=True, slots=True)
class ScanError(Exception):
    """A typed scan failure; policy maps `kind` to the admin's chosen action."""

    kind: ErrorKind
    engine: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.engine} {self.kind.value}: {self.detail}" if self.detail else (
            f"{self.engine} {self.kind.value}"
        )


@dataclass(frozen=True, slots=True)
class Skipped:
    """The message was not scanned on purpose."""

    reason: SkipReason


Outcome = ScoreResult | ScanError | Skipped


@dataclass(frozen=True, slots=True)
class SmtpReply:
    """A final SMTP reply as libmilter's setreply wants it."""

    code: str  # "550"
    xcode: str  # "5.7.1"
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.xcode} {self.text}"


@dataclass(frozen=True, slots=True)
class Decision:
    """Everything the milter actions (or `spambridge check`) need, and the log fields."""

    action: Action  # what is actually done
    intended: Action  # what the policy wanted before tag-only mode softened it
    headers: tuple[tuple[str, str], ...] = ()  # X-Spam-* to add, in order
    subject_prefix: str = ""  # prepended to Subject when non-empty
    reply: SmtpReply | None = None  # for REJECT / TEMPFAIL
    engine: str = "-"
    score: float | None = None
    shown: str = ""  # the score as the headers give it (headers.shown_score), for the log
    reason: str = ""  # "timeout", "authenticated", … for the log line
