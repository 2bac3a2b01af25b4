"""Unit tests build pipelines on an AsyncBridge they never start (the threaded path does not
need its loop). An unclosed loop keeps a self-pipe and an epoll descriptor until a garbage
collection closes them in the middle of some later test, which then sees descriptors vanish
(test_listener once did): every bridge a test made is stopped when it ends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from spambridge.bridge import AsyncBridge


@pytest.fixture(autouse=True)
def _bridges_stopped(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    made: list[AsyncBridge] = []
    init = AsyncBridge.__init__

    def recorded(self: AsyncBridge) -> None:
        init(self)
        made.append(self)

    monkeypatch.setattr(AsyncBridge, "__init__", recorded)
    yield
    for bridge in made:
        bridge.stop()
