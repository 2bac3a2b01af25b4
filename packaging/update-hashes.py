#!/usr/bin/env python3
"""Write the sha256 hashes the .deb's build checks: packaging/requirements.txt from the pins in
packaging/constraints.txt (NAME==VERSION, the file to edit), and build-requirements.txt from its
own pin, each pin with the hash of every file the index publishes for that release: wheels for
any platform and the sdist, so pip finds its pick listed on any Debian release and architecture
that builds the package. Standard library only (the build machine's python3).

    packaging/update-hashes.py            # after changing a pin: rewrite the hashes
    packaging/update-hashes.py --check    # exit 1 if a file is not what the pins and index say

The hashes are the index's own (PyPI's simple API, PEP 691 JSON or PEP 503 HTML; --index-url
or $PIP_INDEX_URL for another): the first fetch is trusted, every later build is held to it.
So a pin whose version did not change but whose files did (a wheel added to an old release, a
file gone) is refused unless --accept-changed: that is what the hashes are there to catch, and
someone should look at it before the build trusts it.
"""

from __future__ import annotations

import argparse
import html.parser
import json
import os
import re
import sys
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (where the pins are, the hashed file pip installs)
FILES = (("build-requirements.txt", "build-requirements.txt"),
         ("constraints.txt", "requirements.txt"))
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")
HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")
# what pip installs from; not .egg, .exe or other installers an index may also hold
SDIST = (".tar.gz", ".zip", ".tar.bz2", ".tar.xz", ".tgz", ".tar")
JSON_TYPE = "application/vnd.pypi.simple.v1+json"


def normalize(name: str) -> str:
    """PEP 503: the index's directory name, and how two spellings of a name compare."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(text: str) -> tuple[list[str], list[tuple[str, str, set[str]]]]:
    """The lines before the first pin (comments, pip options: kept as they are) and each pin
    with the hashes it has now."""
    header: list[str] = []
    pins: list[tuple[str, str, set[str]]] = []
    for line in text.splitlines():
        m = PIN.match(line)
        if m:
            pins.append((m.group(1), m.group(2), set()))
        elif pins and line.strip():
            if not line.startswith((" ", "\t")):
                raise SystemExit(f"unexpected line after the pins: {line!r}")
        elif not pins:
            header.append(line)
        if pins:
            pins[-1][2].update(HASH.findall(line))
    return header, pins


class _Links(html.parser.HTMLParser):
    """PEP 503: each file is an <a> whose href ends in #sha256=..."""

    def __init__(self) -> None:
        super().__init__()
        self.files: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href") or ""
        if tag == "a" and "#sha256=" in href:
            url, digest = href.split("#sha256=", 1)
            filename = urllib.parse.unquote(url.rsplit("/", 1)[-1])
            self.files.append((filename, digest))


def index_files(index: str, name: str) -> list[tuple[str, str]]:
    """(filename, sha256) of every file the index lists for NAME."""
    url = f"{index.rstrip('/')}/{normalize(name)}/"
    if url.startswith("file:"):
        url += "index.html"  # what pip reads from a local index too
    req = urllib.request.Request(url, headers={"Accept": f"{JSON_TYPE}, text/html;q=0.1"})
    with urllib.request.urlopen(req, timeout=60) as r:
        body = r.read().decode()
    if body.lstrip().startswith("{"):
        return [(f["filename"], f["hashes"]["sha256"]) for f in json.loads(body)["files"]
                if "sha256" in f.get("hashes", {})]
    links = _Links()
    links.feed(body)
    return links.files


def file_version(filename: str, name: str) -> str | None:
    """The release a file belongs to, if it is a wheel or sdist of NAME."""
    if filename.endswith(".whl"):
        parts = filename[:-4].split("-")
        dist, version = parts[0], parts[1] if len(parts) >= 5 else ""
    else:
        ext = next((e for e in SDIST if filename.endswith(e)), None)
        if ext is None or "-" not in filename:
            return None
        dist, version = filename[: -len(ext)].rsplit("-", 1)
    return version if normalize(dist) == normalize(name) else None


def release_hashes(index: str, name: str, version: str) -> tuple[dict[str, str], set[str]]:
    """sha256 -> filename for the files of NAME==VERSION, and the sha256 of the files of
    NAME's other releases (hashes recorded for one of those mean the pin's version changed)."""
    found: dict[str, str] = {}
    others: set[str] = set()
    for f, digest in index_files(index, name):
        if (file_version(f, name) or "").lower() == version.lower():
            found[digest] = f
        else:
            others.add(digest)
    if not found:
        raise SystemExit(f"{name}=={version}: the index ({index}) has no file of that release")
    return found, others


def render(header: list[str], pins: list[tuple[str, str, list[str]]]) -> str:
    out = list(header)
    for name, version, digests in pins:
        out.append(f"{name}=={version} \\")
        out.extend(f"    --hash=sha256:{d}" + (" \\" if i < len(digests) - 1 else "")
                   for i, d in enumerate(digests))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index-url", default=os.environ.get("PIP_INDEX_URL",
                                                          "https://pypi.org/simple"))
    ap.add_argument("--check", action="store_true",
                    help="change nothing; exit 1 if a file differs from what it should be")
    ap.add_argument("--accept-changed", action="store_true",
                    help="write new hashes also for a pin whose version did not change")
    ap.add_argument("--dir", type=Path, default=HERE, help="where the files are (packaging/)")
    args = ap.parse_args(argv)

    stale = refused = False
    for source, target in FILES:
        path = args.dir / target
        text = path.read_text() if path.exists() else "--require-hashes\n"
        header, recorded = parse(text)
        old = {normalize(n): h for n, _, h in recorded}
        new: list[tuple[str, str, list[str]]] = []
        for name, version, _ in parse((args.dir / source).read_text())[1]:
            was = old.get(normalize(name), set())
            now, others = release_hashes(args.index_url, name, version)
            if was and set(now) != was and not was <= others:
                stale = True
                added = sorted(now[d] for d in set(now) - was)
                gone = len(was - set(now))
                print(f"{target}: {name}=={version}: files changed on the index: "
                      f"new {added or 'none'}, {gone} recorded hash(es) gone", file=sys.stderr)
                refused |= not args.accept_changed
            new.append((name, version, sorted(now)))
        updated = render(header, new)
        if updated != text:
            stale = True
            if args.check:
                print(f"{path} is not up to date: run {Path(__file__).name}", file=sys.stderr)
            elif not refused:
                path.write_text(updated)
                print(f"updated {path}")
    if refused and not args.check:
        print("not written: a pinned release's files changed (above); look at why, then run "
              "again with --accept-changed", file=sys.stderr)
        return 2
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
