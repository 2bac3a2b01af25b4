"""contrib/spambridge.toml.example must list every key the loader knows, with its real default,
and stay loadable (commented, as shipped, and with every key uncommented)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from spambridge import config

EXAMPLE = Path(__file__).resolve().parents[2] / "contrib" / "spambridge.toml.example"
KEY_LINE = re.compile(r"^#([a-z_]+) = ", re.M)


def uncommented() -> str:
    return KEY_LINE.sub(r"\1 = ", EXAMPLE.read_text())


@pytest.fixture
def asked_keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[tuple[str, str]]]:
    """Every (section, key) the loader asks for while loading."""
    asked: set[tuple[str, str]] = set()
    real_get = config._Section.get

    def get(self: Any, key: str, *a: Any, **kw: Any) -> Any:
        asked.add((self.name, key))
        return real_get(self, key, *a, **kw)

    monkeypatch.setattr(config._Section, "get", get)
    yield asked


def example_keys() -> set[tuple[str, str]]:
    keys, section = set(), ""
    for line in uncommented().splitlines():
        m = re.fullmatch(r"\[(\w+)\]", line.strip())
        if m:
            section = m.group(1)
        elif (k := re.match(r"([a-z_]+) = ", line)):
            keys.add((section, k.group(1)))
    return keys


def test_example_loads_as_shipped(tmp_path: Path) -> None:
    cfg = config.load(EXAMPLE)
    assert replace(cfg, source="<defaults>") == config.load(None)


def test_every_key_uncommented_gives_the_defaults(tmp_path: Path) -> None:
    p = tmp_path / "all.toml"
    p.write_text(uncommented())
    assert replace(config.load(p), source="<defaults>") == config.load(None)


def test_example_lists_every_key(asked_keys: set[tuple[str, str]]) -> None:
    config.from_mapping({})
    assert asked_keys, "the loader no longer goes through _Section.get"
    missing = asked_keys - example_keys()
    assert not missing, f"keys missing from {EXAMPLE.name}: {sorted(missing)}"
    assert example_keys() - asked_keys == set()
