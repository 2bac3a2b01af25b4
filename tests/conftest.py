"""Fixtures around tests/harness.py: one real spamd per session, milter processes per test,
fake spamd servers for faults. Helpers are imported from `harness`."""

from __future__ import annotations

import functools
import grp
import os
import pwd
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import (
    FakeSpamd,
    RunningMilter,
    Spamd,
    connectable,
    start_spamd,
    stop_process,
    wait_until,
    write_config,
)


@pytest.fixture(scope="session")
def spamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spamd]:
    base = Path(tempfile.mkdtemp(prefix="sb-spamd-"))
    s = start_spamd(base)
    yield s
    stop_process(s.proc)
    shutil.rmtree(base, ignore_errors=True)



def _set_rlimits(rlimits: dict[int, tuple[int, int]]) -> None:
    """In the child, before exec: the limits a test starts the milter under."""
    for which, (soft, hard) in rlimits.items():
        resource.setrlimit(which, (soft, hard))


@pytest.fixture
def start_milter(tmp_path: Path) -> Iterator[Callable[..., RunningMilter]]:
    """Start `spambridge run` with a config built from keyword sections; stop it after."""
    started: list[RunningMilter] = []
    counter = iter(range(1000))

    def start(config: dict[str, dict[str, object]] | None = None, *args: str,
              wait: bool = True,
              rlimits: dict[int, tuple[int, int]] | None = None) -> RunningMilter:
        """`rlimits`: resource.RLIMIT_* → (soft, hard) the process starts with (as systemd's
        Limit*= settings would give it)."""
        n = next(counter)
        sock = str(tmp_path / f"m{n}.sock")
        cfg = {k: dict(v) for k, v in (config or {}).items()}
        cfg.setdefault("milter", {}).setdefault("socket", f"unix:{sock}")
        cfg.setdefault("bayes", {}).setdefault("db", str(tmp_path / f"bayes{n}.sqlite"))
        cfg_path = write_config(tmp_path / f"m{n}.toml", cfg)
        log_path = tmp_path / f"m{n}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "spambridge", "run", "--config", str(cfg_path),
             "--log-level", "debug", *args],
            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
            preexec_fn=functools.partial(_set_rlimits, rlimits) if rlimits else None,
        )
        m = RunningMilter(proc, cfg["milter"]["socket"].removeprefix("unix:"),  # type: ignore[union-attr]
                          log_path, cfg_path)
        started.append(m)
        if wait:
            wait_until(lambda: proc.poll() is not None or connectable(m.socket_path), 30,
                       "the milter socket")
            if proc.poll() is not None:
                raise RuntimeError(f"spambridge exited {proc.returncode}:\n{m.log}")
        return m

    yield start
    for m in started:
        m.stop()



@pytest.fixture
def fake_spamd() -> Iterator[Callable[[Callable[[socket.socket], None]], FakeSpamd]]:
    made: list[FakeSpamd] = []

    def make(behaviour: Callable[[socket.socket], None]) -> FakeSpamd:
        f = FakeSpamd(behaviour)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory (0755) outside pytest's 0700 tree, so an unprivileged user (the milter's,
    or the one check-config judges for) can reach it."""
    d = Path(tempfile.mkdtemp(prefix="sb-priv-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def user_in_a_group() -> Iterator[tuple[pwd.struct_passwd, grp.struct_group]]:
    """A throwaway system user whose primary group is nogroup and who is a member of a new
    group of its own: what a package sets up when the milter's user must reach a directory
    (or socket) of another group. Needs root; removed afterwards (request it before
    start_milter, so that the milters running as it are stopped first)."""
    if os.geteuid() != 0:
        pytest.skip("creating a user needs root")
    name = f"sbt{os.getpid() % 100000}"
    subprocess.run(["groupadd", "--system", name], check=True, capture_output=True)
    try:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", "--gid", "nogroup", "--groups", name, name],
                       check=True, capture_output=True)
        try:
            yield pwd.getpwnam(name), grp.getgrnam(name)
        finally:
            subprocess.run(["userdel", name], check=False, capture_output=True)
    finally:
        subprocess.run(["groupdel", name], check=False, capture_output=True)
