"""The Debian package: packaging/build-and-install-deb.sh builds it with dpkg-buildpackage,
installs it with dpkg -i and checks the installed milter (version, shipped config, man pages,
an offline start as user spambridge with its socket group postfix). Runs in CI (root); slow
(about a minute): deselect locally with -m "not deb"."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "packaging" / "build-and-install-deb.sh"

pytestmark = pytest.mark.deb


def installed() -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "spambridge"],
                       capture_output=True, text=True)
    return "install ok installed" in r.stdout


def test_deb_builds_installs_and_runs() -> None:
    if os.geteuid() != 0:
        pytest.fail("building and installing the .deb needs root (CI is root)")
    was_installed = installed()
    out = tempfile.mkdtemp(prefix="sb-deb-")
    try:
        r = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=1200,
                           env={**os.environ, "DEB_OUT": out}, stdin=subprocess.DEVNULL)
        log = r.stdout + r.stderr
        assert r.returncode == 0, log[-6000:]
        assert "spambridge 0.1.0" in log or "==> OK:" in log
        assert "socket: spambridge:postfix 660" in log, log[-3000:]
        assert installed()
        version = subprocess.run(["/usr/bin/spambridge", "--version"], capture_output=True,
                                 text=True, timeout=60)
        assert version.stdout.startswith("spambridge ")
        debs = list(Path(out).glob("spambridge_*.deb"))
        assert debs
        # it needs the very interpreter its virtualenv was built with, not a fixed python3.11
        minor = subprocess.run(["/usr/bin/python3", "-c", "import sys; print('%d.%d' % "
                                "sys.version_info[:2])"], capture_output=True, text=True,
                               timeout=60).stdout.strip()
        depends = subprocess.run(["dpkg-deb", "-f", str(debs[0]), "Depends"],
                                 capture_output=True, text=True, timeout=60).stdout
        assert f"python{minor}," in depends + ",", depends
        # and runs on that python3.X: not on /usr/bin/python3, which an upgrade points at
        # another release's interpreter while python3.X stays installed for this package
        listing = subprocess.run(["dpkg-deb", "-c", str(debs[0])], capture_output=True,
                                 text=True, timeout=60).stdout
        links = [ln.split(" -> ")[1] for ln in listing.splitlines()
                 if "/opt/venvs/spambridge/bin/python" in ln and " -> /" in ln]
        assert links == [f"/usr/bin/python{minor}"], listing
    finally:
        # leave the machine as found: later tests must not pick up /etc/spambridge
        if not was_installed and installed():
            subprocess.run(["dpkg", "--purge", "spambridge"], capture_output=True, timeout=300)
        subprocess.run(["rm", "-rf", out], timeout=60)
