"""What the docs show an admin, read from the docs themselves: the tests and files the docs
cite exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


DOCS = ["README.md", "docs/bayes.md", "docs/reliability.md", "docs/benchmarks.md",
        "contrib/dovecot/README.md", "contrib/postfix/main.cf.example", "contrib/sendmail/README",
        "contrib/spambridge.toml.example", "packaging/man/spambridge.8",
        "packaging/man/spambridge.toml.5"]


def test_the_tests_the_docs_cite_exist() -> None:
    """docs/reliability.md says which test proves each finding; a renamed test left it citing
    one that no longer exists (test_a_symlink_beside_the_database_is_not_followed_to_hand_root
    _files_away became test_a_link_beside_the_database_does_not_hand_root_files_away)."""
    defined = set(re.findall(r"^def (test_\w+)", "\n".join(
        p.read_text() for p in (ROOT / "tests").rglob("test_*.py")), re.M))
    modules = {p.stem for p in (ROOT / "tests").rglob("test_*.py")}
    missing = []
    for doc in DOCS:
        for name in set(re.findall(r"(?<![\w/])test_\w+", (ROOT / doc).read_text())):
            if name not in defined and name not in modules:
                missing.append(f"{doc}: {name}")
    assert not missing


def test_the_files_the_docs_cite_exist() -> None:
    """Paths in this repository (spambridge/…, tests/…, contrib/…) that the docs name; output
    files the commands shown write (bench/results/) are not in the repository."""
    missing = []
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        for path in set(re.findall(r"(?<![\w/.~:-])((?:spambridge|tests|bench|packaging|contrib|"
                                   r"docs|scripts)/[\w./-]*\w)", text)):
            if path.startswith("bench/results/") or (ROOT / path).exists():
                continue
            missing.append(f"{doc}: {path}")
    assert not missing
