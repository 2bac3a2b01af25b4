"""The .deb's hash-pinned dependencies (packaging/requirements.txt, build-requirements.txt) and
packaging/update-hashes.py, which rewrites their hashes from an index: here a PEP 503 index in a
temporary directory (file://), so nothing leaves the machine. That the build really fails on a
hash that does not match is tests/integration/test_deb.py's (it builds)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"
SCRIPT = PACKAGING / "update-hashes.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("update_hashes", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def publish(index: Path, name: str, files: dict[str, bytes], as_json: bool = False) -> None:
    """List FILES under NAME in a local index (PEP 503 HTML or PEP 691 JSON), replacing what
    it listed there."""
    project = index / "simple" / name
    project.mkdir(parents=True, exist_ok=True)
    (index / "files").mkdir(exist_ok=True)
    digests = {}
    for fn, data in files.items():
        (index / "files" / fn).write_bytes(data)
        digests[fn] = hashlib.sha256(data).hexdigest()
    if as_json:
        body = json.dumps({"meta": {"api-version": "1.0"}, "name": name, "files": [
            {"filename": fn, "url": f"../../files/{fn}", "hashes": {"sha256": d}}
            for fn, d in digests.items()]})
    else:
        body = "<html><body>" + "".join(
            f'<a href="../../files/{fn}#sha256={d}">{fn}</a>' for fn, d in digests.items()
        ) + "</body></html>"
    (project / "index.html").write_text(body)


def wheel(path: Path, name: str, version: str, tag: str) -> bytes:
    """A minimal wheel pip accepts (it reads the metadata of what it downloads)."""
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\n"
                                       f"Version: {version}\n")
        z.writestr(f"{info}/WHEEL", f"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: {tag}\n")
        z.writestr(f"{info}/RECORD", "")
    return path.read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(pkg: Path, index: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "--index-url", f"file://{index}/simple",
                           "--dir", str(pkg), *args], capture_output=True, text=True, timeout=60)


HEADER = "# generated\n--require-hashes\n"


def block_of(path: Path, name: str) -> str:
    """NAME's pin in PATH with its --hash lines."""
    lines = path.read_text().splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith(f"{name}=="))
    block = [lines[i]]
    while block[-1].endswith("\\"):
        block.append(lines[i + len(block)])
    return "\n".join(block) + "\n"


def layout(tmp_path: Path, pins: str, build: str = "setuptools==80.0\n") -> Path:
    """A packaging/ directory: constraints.txt with PINS, requirements.txt not yet hashed,
    build-requirements.txt with BUILD's pin; setuptools 80.0 on the index."""
    pkg = tmp_path / "packaging"
    pkg.mkdir()
    (pkg / "constraints.txt").write_text("# the pins: edit here\n" + pins)
    (pkg / "requirements.txt").write_text(HEADER)
    (pkg / "build-requirements.txt").write_text("# build\n--require-hashes\n" + build)
    publish(tmp_path / "index", "setuptools", {"setuptools-80.0-py3-none-any.whl": b"st"})
    return pkg


@pytest.mark.parametrize("as_json", [False, True])
def test_update_hashes_lists_every_file_of_the_pinned_release_and_only_those(
        tmp_path: Path, as_json: bool) -> None:
    index = tmp_path / "index"
    publish(index, "foo-bar", {
        "foo_bar-1.0-py3-none-any.whl": b"wheel 1.0",
        "foo_bar-1.0-cp311-cp311-manylinux_2_17_aarch64.whl": b"arm wheel 1.0",
        "foo-bar-1.0.tar.gz": b"sdist 1.0",
        "foo_bar-1.0.1-py3-none-any.whl": b"wheel 1.0.1",  # another release
        "foo_bar-1.0-py3.11.egg": b"an egg",  # pip does not install these
    }, as_json)
    publish(index, "milterish", {"milterish-2.0.tar.gz": b"only an sdist"}, as_json)
    pkg = layout(tmp_path, "Foo.Bar==1.0\nmilterish==2.0\n")
    assert run(pkg, index, "--check").returncode == 1

    r = run(pkg, index)
    assert r.returncode == 0, r.stderr
    foo = sorted(sha(d) for d in (b"wheel 1.0", b"arm wheel 1.0", b"sdist 1.0"))
    assert (pkg / "requirements.txt").read_text() == HEADER + (
        "Foo.Bar==1.0 \\\n" + "".join(f"    --hash=sha256:{d} \\\n" for d in foo[:-1])
        + f"    --hash=sha256:{foo[-1]}\n"
        + f"milterish==2.0 \\\n    --hash=sha256:{sha(b'only an sdist')}\n")
    assert (pkg / "build-requirements.txt").read_text() == (
        f"# build\n--require-hashes\nsetuptools==80.0 \\\n    --hash=sha256:{sha(b'st')}\n")
    assert (pkg / "constraints.txt").read_text() == "# the pins: edit here\n" + (
        "Foo.Bar==1.0\nmilterish==2.0\n")
    assert run(pkg, index, "--check").returncode == 0
    # a pin edited in constraints.txt and not carried over: --check says so
    (pkg / "constraints.txt").write_text("milterish==2.0\n")
    r = run(pkg, index, "--check")
    assert r.returncode == 1 and "requirements.txt is not up to date" in r.stderr


def test_a_file_added_to_a_pinned_release_is_refused_until_accepted(tmp_path: Path) -> None:
    """What the hashes guard against, at regeneration time: the release a pin names gained a
    file (or lost one) since its hashes were recorded. Written only with --accept-changed; a
    changed version is not asked about."""
    index = tmp_path / "index"
    publish(index, "foo", {"foo-1.0.tar.gz": b"sdist", "foo-2.0.tar.gz": b"sdist 2"})
    pkg = layout(tmp_path, "foo==1.0\n")
    reqs = pkg / "requirements.txt"
    assert run(pkg, index).returncode == 0
    recorded = reqs.read_text()

    publish(index, "foo", {"foo-1.0.tar.gz": b"sdist", "foo-2.0.tar.gz": b"sdist 2",
                           "foo-1.0-py3-none-any.whl": b"a wheel uploaded later"})
    check = run(pkg, index, "--check")
    assert check.returncode == 1
    assert "foo-1.0-py3-none-any.whl" in check.stderr
    r = run(pkg, index)
    assert r.returncode == 2
    assert "foo==1.0: files changed on the index" in r.stderr
    assert "foo-1.0-py3-none-any.whl" in r.stderr
    assert reqs.read_text() == recorded
    # the sdist replaced (same name, other bytes: what a mirror serving another file looks like)
    publish(index, "foo", {"foo-1.0.tar.gz": b"another sdist", "foo-2.0.tar.gz": b"sdist 2"})
    r = run(pkg, index)
    assert r.returncode == 2 and "1 recorded hash(es) gone" in r.stderr, r.stderr
    assert reqs.read_text() == recorded
    r = run(pkg, index, "--accept-changed")
    assert r.returncode == 0, r.stderr
    assert sha(b"another sdist") in reqs.read_text()

    (pkg / "constraints.txt").write_text("foo==2.0\n")
    r = run(pkg, index)
    assert r.returncode == 0, r.stderr
    assert reqs.read_text() == HEADER + f"foo==2.0 \\\n    --hash=sha256:{sha(b'sdist 2')}\n"


def test_a_release_the_index_does_not_have_is_an_error(tmp_path: Path) -> None:
    index = tmp_path / "index"
    publish(index, "foo", {"foo-1.0.tar.gz": b"sdist"})
    pkg = layout(tmp_path, "foo==1.1\n")
    r = run(pkg, index)
    assert r.returncode != 0
    assert "foo==1.1: the index" in r.stderr and "has no file of that release" in r.stderr
    assert (pkg / "requirements.txt").read_text() == HEADER


def test_the_shipped_pins_are_hashed_and_cover_the_projects_dependencies() -> None:
    """Offline, what update-hashes.py --check says with the index: requirements.txt pins what
    constraints.txt pins (edited there and not regenerated, the build would install the old
    pins), every pin carries hashes (pip's hash-checking mode refuses one that does not, at
    build time: this says it before a build), and the runtime pins name every dependency
    pyproject.toml declares (the build installs the project with --no-deps)."""
    mod = load_script()
    constraints = [(n, v) for n, v, _ in mod.parse((PACKAGING / "constraints.txt").read_text())[1]]
    hashed = mod.parse((PACKAGING / "requirements.txt").read_text())[1]
    assert [(n, v) for n, v, _ in hashed] == constraints
    build = mod.parse((PACKAGING / "build-requirements.txt").read_text())[1]
    for path in ("requirements.txt", "build-requirements.txt"):
        assert "\n--require-hashes\n" in (PACKAGING / path).read_text(), path
    for name, version, hashes in hashed + build:
        assert hashes, f"{name}=={version} has no --hash"
    pinned = {mod.normalize(n) for n, _ in constraints}
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name = mod.normalize(re.match(r"[A-Za-z0-9._-]+", dep).group(0))  # type: ignore[union-attr]
        assert name in pinned, f"{dep} is not pinned in packaging/constraints.txt"
    assert [n for n, _, _ in build] == ["setuptools"]  # builds pymilter's sdist and the project


def test_pip_refuses_a_file_of_a_pinned_release_that_is_not_listed(tmp_path: Path) -> None:
    """packaging/requirements.txt as pip reads it: a wheel for a pinned release that it does not
    list (here offered by a local mirror, which gives no hash: pip prefers the wheel) stops the
    install with pip's hash error. Offline: --no-index, this directory only."""
    mod = load_script()
    _, pins = mod.parse((PACKAGING / "requirements.txt").read_text())
    name, version, _ = next(p for p in pins if p[0] == "typing-extensions")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / f"typing_extensions-{version}-py3-none-any.whl").write_bytes(b"not the real one")
    reqs = tmp_path / "one.txt"
    reqs.write_text("--require-hashes\n" + block_of(PACKAGING / "requirements.txt", name))
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--isolated", "--no-index",
                        "--find-links", str(mirror), "--no-deps", "-d", str(tmp_path / "dl"),
                        "-r", str(reqs)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE" in r.stderr
    assert f"Got        {sha(b'not the real one')}" in r.stderr


def test_a_wheel_added_to_a_pinned_release_later_is_passed_over(tmp_path: Path) -> None:
    """The hashes update-hashes.py wrote, as pip uses them: a wheel uploaded to the release
    afterwards, one pip would prefer (py311 before py3), is passed over where the index shows
    its hash, and the listed file installed; offered without a hash (a find-links mirror),
    pip takes it and stops at its hash."""
    made = tmp_path / "made"
    made.mkdir()
    index = tmp_path / "index"
    original = wheel(made / "foo-1.0-py3-none-any.whl", "foo", "1.0", "py3-none-any")
    publish(index, "foo", {"foo-1.0-py3-none-any.whl": original})
    pkg = layout(tmp_path, "foo==1.0\n")
    assert run(pkg, index).returncode == 0
    later = wheel(made / "foo-1.0-py311-none-any.whl", "foo", "1.0", "py311-none-any")
    publish(index, "foo", {"foo-1.0-py3-none-any.whl": original,
                           "foo-1.0-py311-none-any.whl": later})

    def download(dest: Path, *where: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pip", "download", "--isolated", "--no-deps",
                               *where, "-d", str(dest), "-r", str(pkg / "requirements.txt")],
                              capture_output=True, text=True, timeout=120)

    r = download(tmp_path / "dl", "--index-url", f"file://{index}/simple")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [f.name for f in (tmp_path / "dl").iterdir()] == ["foo-1.0-py3-none-any.whl"]
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "foo-1.0-py311-none-any.whl").write_bytes(later)
    r = download(tmp_path / "dl-mirror", "--no-index", "--find-links", str(mirror))
    assert r.returncode != 0
    assert "THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE" in r.stderr
