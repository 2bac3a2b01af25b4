"""The Debian package: packaging/build-and-install-deb.sh builds it with dpkg-buildpackage,
installs it with dpkg -i and checks the installed milter (version, shipped config, man pages,
an offline start as user spambridge with its socket group postfix). Then its life on an admin's
machine: an upgrade run by a script (no terminal) after the admin edited the config and opened
the database to Dovecot, an upgrade under a running milter, remove, reinstall and purge. The
upgrades use the built package repacked with a newer version (no second build). Runs in CI
(root); slow (about a minute and a half): deselect locally with -m "not deb"."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import message, wait_until
from milterclient import send_one

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "packaging" / "build-and-install-deb.sh"
CONF = Path("/etc/spambridge/spambridge.toml")
STATE = Path("/var/lib/spambridge")
DB = STATE / "bayes.sqlite"
SPOOL = Path("/var/spool/postfix/spambridge")
SOCK = SPOOL / "spambridge.sock"
HAM = ROOT / "tests" / "data" / "bayes" / "html_only.eml"

pytestmark = pytest.mark.deb


def installed() -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "spambridge"],
                       capture_output=True, text=True)
    return "install ok installed" in r.stdout


def admin_env(**extra: str) -> dict[str, str]:
    """The environment without PYTHONPATH: /usr/bin/spambridge must run the installed code,
    not a checkout's."""
    return {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **extra}


def run(*cmd: str | Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    """A command as an admin's script runs it: no terminal on stdin."""
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=admin_env(**env))


def dpkg_version() -> str:
    return run("dpkg-query", "-W", "-f=${Version}", "spambridge").stdout


def mode_owner(path: Path) -> tuple[str, str]:
    st = path.stat()
    return f"{stat.S_IMODE(st.st_mode):o}", pwd.getpwuid(st.st_uid).pw_name


@dataclass
class Built:
    deb: Path
    log: str
    out: Path
    was_installed: bool


@pytest.fixture(scope="module")
def built() -> Iterator[Built]:
    """The package built and installed once by the script, for every test here."""
    if os.geteuid() != 0:
        pytest.fail("building and installing the .deb needs root (CI is root)")
    was_installed = installed()
    out = Path(tempfile.mkdtemp(prefix="sb-deb-"))
    try:
        r = run(SCRIPT, timeout=1200, DEB_OUT=str(out))
        log = r.stdout + r.stderr
        assert r.returncode == 0, log[-6000:]
        debs = list(out.glob("spambridge_*.deb"))
        assert debs, log[-3000:]
        yield Built(debs[0], log, out, was_installed)
    finally:
        # leave the machine as found: later tests must not pick up /etc/spambridge
        if not was_installed and installed():
            subprocess.run(["dpkg", "--purge", "spambridge"], capture_output=True, timeout=300)
        subprocess.run(["rm", "-rf", str(out)], timeout=60)


@pytest.fixture
def package(built: Built) -> Built:
    """The built package installed, on a machine where it was not installed before (the tests
    below edit its config and purge it: not an admin's own installation)."""
    if built.was_installed:
        pytest.skip("spambridge was installed before the tests: not touching its config")
    if not installed():
        r = run("dpkg", "-i", built.deb)
        assert r.returncode == 0, r.stdout + r.stderr
    return built


def newer(built: Built, revision: int, new_conffile: bool) -> Path:
    """The built package as a newer version (VERSION-revision), the shipped config changed or
    not: what the next release looks like to dpkg."""
    root = built.out / f"repack-{revision}"
    subprocess.run(["dpkg-deb", "-R", str(built.deb), str(root)], check=True, timeout=300)
    control = root / "DEBIAN" / "control"
    lines = control.read_text().splitlines()
    version = next(ln.split(": ", 1)[1] for ln in lines if ln.startswith("Version: "))
    control.write_text("\n".join(f"Version: {version}-{revision}" if ln.startswith("Version: ")
                                 else ln for ln in lines) + "\n")
    if new_conffile:
        with (root / CONF.relative_to("/")).open("a") as f:
            f.write("# a comment the next release added\n")
    deb = built.out / f"spambridge_{version}-{revision}.deb"
    subprocess.run(["dpkg-deb", "-Zgzip", "-z1", "-b", str(root), str(deb)], check=True,
                   capture_output=True, timeout=300)
    subprocess.run(["rm", "-rf", str(root)], timeout=60)
    return deb


def test_deb_builds_installs_and_runs(built: Built) -> None:
    log = built.log
    assert "spambridge 0.1.0" in log or "==> OK:" in log
    assert "socket: spambridge:postfix 660" in log, log[-3000:]
    assert installed()
    version = run("/usr/bin/spambridge", "--version", timeout=60)
    assert version.stdout.startswith("spambridge ")
    deb = str(built.deb)
    # it needs the very interpreter its virtualenv was built with, not a fixed python3.11
    minor = subprocess.run(["/usr/bin/python3", "-c", "import sys; print('%d.%d' % "
                            "sys.version_info[:2])"], capture_output=True, text=True,
                           timeout=60).stdout.strip()
    depends = subprocess.run(["dpkg-deb", "-f", deb, "Depends"],
                             capture_output=True, text=True, timeout=60).stdout
    assert f"python{minor}," in depends + ",", depends
    # and runs on that python3.X: not on /usr/bin/python3, which an upgrade points at
    # another release's interpreter while python3.X stays installed for this package
    listing = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True,
                             text=True, timeout=60).stdout
    links = [ln.split(" -> ")[1] for ln in listing.splitlines()
             if "/opt/venvs/spambridge/bin/python" in ln and " -> /" in ln]
    assert links == [f"/usr/bin/python{minor}"], listing
    # the errors, the man page and README send the admin to docs/bayes.md: it is there
    docs = [ln.split()[-1] for ln in listing.splitlines() if "/usr/share/doc/spambridge/" in ln]
    assert {"./usr/share/doc/spambridge/docs/bayes.md.gz",
            "./usr/share/doc/spambridge/docs/reliability.md.gz"} <= set(docs), docs


def test_the_compiled_milter_module_is_built_here_and_hardened(built: Built) -> None:
    """pymilter's C module is compiled by the package build against libmilter-dev, with
    Debian's hardening: not a wheel from root's pip cache that another Python built (one such
    carried RUNPATH /root/.pyenv/versions/3.11.7/lib, lintian's custom-library-search-path)."""
    files = run("dpkg", "-L", "spambridge").stdout.split()
    modules = [f for f in files if f.endswith(".so")]
    assert any("/milter." in f for f in modules), modules
    for so in modules:
        dyn = run("readelf", "-d", so).stdout
        assert "RPATH" not in dyn and "RUNPATH" not in dyn, f"{so}:\n{dyn}"
        # hardening=+all: -Wl,-z,now (lintian: hardening-no-bindnow)
        assert "BIND_NOW" in dyn, f"{so}:\n{dyn}"


def pins(*files: str) -> dict[str, str]:
    """NAME==VERSION of packaging/FILES, names normalized (PEP 503)."""
    out = {}
    for f in files:
        for m in re.finditer(r"^([A-Za-z0-9][\w.-]*)==(\S+)", (ROOT / "packaging" / f).read_text(),
                             re.M):
            out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return out


def test_the_virtualenv_holds_exactly_the_hash_pinned_distributions(built: Built) -> None:
    """What the build installed is what packaging/requirements.txt and build-requirements.txt
    pin (with their hashes), the project and the venv's own pip: nothing more, nothing else."""
    r = run("/opt/venvs/spambridge/bin/python", "-c",
            "import importlib.metadata as m\n"
            "for d in m.distributions(): print(d.metadata['Name'], d.version)", timeout=60)
    assert r.returncode == 0, r.stderr
    got = {re.sub(r"[-_.]+", "-", name).lower(): version
           for name, version in (ln.split() for ln in r.stdout.splitlines())}
    assert got.pop("spambridge") == "0.1.0"
    got.pop("pip")  # the one venv bootstraps (Debian's python3-pip-whl)
    assert got == pins("requirements.txt", "build-requirements.txt")


def test_a_hash_that_does_not_match_fails_the_build_at_pip(tmp_path: Path) -> None:
    """A copy of the tree whose requirements.txt has one hash altered (what a file replaced on
    the index or a mirror looks like to the build): the build stops at pip's hash check, which
    pip makes before it unpacks (let alone builds) the sdist, and installs nothing. The untouched build is
    test_deb_builds_installs_and_runs's."""
    tree = tmp_path / "tree"
    # what the script copies from a checkout: tracked files and new ones git does not ignore
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], capture_output=True, check=True,
                           timeout=60).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (tree / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tree / f)
    reqs = tree / "packaging" / "requirements.txt"
    text = reqs.read_text()
    pin = re.search(r"^pymilter==\S+ \\\n    --hash=sha256:([0-9a-f]{64})", text, re.M)
    assert pin, text
    good = pin.group(1)
    bad = good[:-1] + ("0" if good[-1] != "0" else "1")
    reqs.write_text(text.replace(good, bad))
    before = dpkg_version()

    r = run(tree / "packaging" / "build-and-install-deb.sh", timeout=900,
            DEB_OUT=str(tmp_path / "out"))
    log = r.stdout + r.stderr
    assert r.returncode != 0, log[-3000:]
    assert "THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE" in log, log[-3000:]
    assert f"Expected sha256 {bad}" in log and f"Got        {good}" in log, log[-3000:]
    assert "dpkg-buildpackage failed" in log
    assert not list((tmp_path / "out").glob("*.deb"))
    assert dpkg_version() == before


def test_an_upgrade_from_a_script_keeps_the_admins_config_and_database(package: Built) -> None:
    """No terminal (unattended upgrades, CI, ssh host 'cmd'): dpkg's question about the edited
    config cannot be answered, and DEBIAN_FRONTEND=noninteractive does not reach it. The
    admin's file stays, the new one lands beside it; the database and the directory modes
    contrib/dovecot set (2770, so the mail user can train) stay too."""
    CONF.write_text(CONF.read_text().replace("#tag_only = false", "tag_only = true"))
    r = run("/usr/bin/spambridge", "train", "--spam", HAM)
    assert r.returncode == 0, r.stderr
    STATE.chmod(0o2770)  # contrib/dovecot/README.md
    DB.chmod(0o660)
    deb = newer(package, 1, new_conffile=True)

    r = run(SCRIPT, SPAMBRIDGE_DEB=str(deb))
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    assert dpkg_version().endswith("-1")
    assert "tag_only = true" in CONF.read_text()
    assert "a comment the next release added" in Path(f"{CONF}.dpkg-dist").read_text()
    assert f"the package's new one is {CONF}.dpkg-dist" in log
    assert "tag-only" in log  # the milter the script started ran on the admin's config
    assert mode_owner(STATE) == ("2770", "spambridge")
    assert mode_owner(DB) == ("660", "spambridge")
    check = run("/usr/bin/spambridge", "check-config", "--no-postfix")
    assert "(1 spam, 0 ham" in check.stdout + check.stderr, check.stdout + check.stderr


def test_an_upgrade_leaves_a_running_milter_serving(package: Built) -> None:
    """The service runs while dpkg replaces its files (without systemd here nothing restarts
    it): it keeps answering, and the install script does not trip over its socket."""
    log = package.out / "running.log"
    with log.open("wb") as out:
        milter = subprocess.Popen(
            ["setpriv", "--reuid=spambridge", "--regid=spambridge", "--init-groups",
             "/usr/bin/spambridge", "run", "--config", str(CONF)],  # the unit's ExecStart
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=admin_env())
    try:
        wait_until(lambda: "listening on" in log.read_text(), 30, "the milter to listen")
        deb = newer(package, 2, new_conffile=False)
        r = run(SCRIPT, SPAMBRIDGE_DEB=str(deb))
        out_ = r.stdout + r.stderr
        assert r.returncode == 0, out_[-4000:]
        assert "a milter already listens on" in out_
        assert dpkg_version().endswith("-2")
        result = send_one(str(SOCK), message())
        assert result.action == "accept"
        assert (result.header("X-Spam-Checker-Version") or "").startswith("spambridge ")
        assert milter.poll() is None
    finally:
        milter.send_signal(signal.SIGTERM)
        assert milter.wait(timeout=30) == 0, log.read_text()


def test_remove_keeps_config_and_database_purge_removes_them_not_the_user(package: Built) -> None:
    CONF.write_text(CONF.read_text() + "\n# the admin was here\n")
    if not DB.exists():
        assert run("/usr/bin/spambridge", "train", "--spam", HAM).returncode == 0

    r = run("dpkg", "-r", "spambridge")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "config-files" in run("dpkg-query", "-W", "-f=${Status}", "spambridge").stdout
    assert not Path("/usr/bin/spambridge").exists()
    assert not Path("/opt/venvs/spambridge").exists()  # nothing left behind in the venv
    assert "the admin was here" in CONF.read_text()
    assert DB.exists()
    assert SPOOL.is_dir()

    # reinstalled: the admin's config as it was, no question asked
    r = run("dpkg", "-i", package.deb)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "the admin was here" in CONF.read_text()
    assert DB.exists()

    r = run("dpkg", "-P", "spambridge")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not installed()
    for gone in (CONF.parent, STATE, SPOOL, Path("/opt/venvs/spambridge")):
        assert not gone.exists(), gone
    # Debian policy: the system user stays (files it owned may remain, e.g. in backups)
    assert pwd.getpwnam("spambridge").pw_dir == str(STATE)
