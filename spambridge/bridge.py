"""One asyncio loop in a helper thread; libmilter threads hand it coroutines and wait
with a deadline, so no MTA reply ever waits on a scanner longer than the cap."""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

T = TypeVar("T")

# libmilter owns these (HUP and TERM mean stop, INT abort); USR1 is our reload, taken by sigwait.
OWNED_SIGNALS = frozenset({signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1})


@contextmanager
def signals_blocked() -> Iterator[None]:
    """Threads started inside inherit a mask without libmilter's signals, so a TERM is never
    delivered to a helper thread (which would kill the process instead of stopping it)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, OWNED_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def result_within(fut: concurrent.futures.Future[T], timeout: float,
                  slow: Callable[[], None] | None = None, slow_after: float = 0.0) -> T:
    """`fut`'s result, waited for at most `timeout` seconds (TimeoutError past them); `slow`
    is called once if it is not ready after `slow_after` (the pool nudger's poke: only a scan
    that holds its libmilter worker for a while can leave a ready session without one)."""
    if slow is not None and slow_after < timeout:
        deadline = time.monotonic() + timeout
        try:
            return fut.result(slow_after)
        except concurrent.futures.TimeoutError:
            slow()
        timeout = max(0.0, deadline - time.monotonic())
    return fut.result(timeout)


class AsyncBridge:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="spambridge-loop", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> AsyncBridge:
        with signals_blocked():
            self._thread.start()
        return self

    def run(self, coro: Coroutine[Any, Any, T], timeout: float,
            slow: Callable[[], None] | None = None, slow_after: float = 0.0) -> T:
        """Run `coro` on the loop; raise TimeoutError (after cancelling it) past `timeout`.
        `slow`: see result_within."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return result_within(fut, timeout, slow, slow_after)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError(f"no result within {timeout:.2f}s") from None
        except concurrent.futures.CancelledError:
            raise TimeoutError("cancelled") from None

    def stop(self, timeout: float = 5.0) -> None:
        if not self._thread.is_alive():
            self.loop.close()
            return

        async def _drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with suppress(Exception):
            asyncio.run_coroutine_threadsafe(_drain(), self.loop).result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()
