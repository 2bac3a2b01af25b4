"""The version literal in the package and the one in pyproject.toml must agree."""

from __future__ import annotations

import tomllib
from pathlib import Path

import spambridge


def test_version_matches_pyproject() -> None:
    data = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert spambridge.__version__ == data["project"]["version"]
