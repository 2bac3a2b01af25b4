"""Let libmilter's listener see a stop request within a fraction of a second, not 5 s later.

On TERM/HUP libmilter's signal thread sets the stop flag and then waits for the listener's
lock to close the listening socket; the listener — our main thread, inside `milter.main()` —
holds that lock while it sits in a poll() with a 5-second timeout (MI_CHK_TIME) and looks at
the flag only when the poll returns. So an idle milter took 4-6 s to exit, and a `systemctl
restart` left Postfix that long without a milter (milter_default_action for each new session).
Nothing outside libmilter can see the flag, but the listener treats EINTR as "check the stop
flag", so a helper thread interrupts the listener's poll with a signal whose handler does
nothing, every WAKE_EVERY seconds, until `main()` returns. The ticks cost an idle milter about
0.6 ms of CPU a second (bench/milter_stop.py, docs/benchmarks.md): mostly waking a Python
thread, which a longer period would trade against a longer restart gap.
"""

from __future__ import annotations

import signal
import threading
import time

from spambridge.bridge import signals_blocked

WAKE_SIGNAL = signal.SIGUSR2  # not one libmilter owns (bridge.OWNED_SIGNALS)
WAKE_EVERY = 0.2  # seconds: the longest an idle milter waits before it sees a stop request


class ListenerWaker:
    """Created, started and stopped by the thread that runs `milter.main()`."""

    def __init__(self) -> None:
        self._target = threading.get_ident()
        self._done = False
        self._thread = threading.Thread(target=self._run, name="spambridge-wake", daemon=True)

    def start(self) -> ListenerWaker:
        # a handler must exist (the signal's default action ends the process, and an ignored
        # signal interrupts nothing); Python's interrupts the poll and runs ours later
        signal.signal(WAKE_SIGNAL, _ignore)
        # and it must reach this thread: a mask inherited blocking it (masks survive exec)
        # would leave every stop to libmilter's 5-second poll
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {WAKE_SIGNAL})
        with signals_blocked():
            self._thread.start()
        return self

    def stop(self) -> None:
        """Called once `main()` has returned: no more signals (bar one already on its way,
        which the no-op handler takes)."""
        self._done = True

    def _run(self) -> None:
        # a plain sleep: Event.wait costs 40 % more CPU per wake-up (its condition and lock),
        # and nothing needs to wait for this thread to end
        while not self._done:
            time.sleep(WAKE_EVERY)
            if not self._done:
                signal.pthread_kill(self._target, WAKE_SIGNAL)


def _ignore(signum: int, frame: object) -> None:
    """The wake signal's handler: interrupting the poll was all it was for."""
