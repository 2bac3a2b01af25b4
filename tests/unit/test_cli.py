"""The command line: which flag sets which key, the config file found without -c, and the
exit codes a unit file or a script acts on (0, 1, 2 usage, 78 configuration)."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from spambridge import checkconfig, cli, commands, defaults
from spambridge.config import Config, ConfigError

ROOT = Path(__file__).resolve().parents[2]
PACKAGED_PATH = defaults.CONFIG_PATH  # as the module has it, before a test points it away


@pytest.fixture(autouse=True)
def no_config_of_this_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A /etc/spambridge/spambridge.toml on the machine running the tests is not read."""
    monkeypatch.setattr(defaults, "CONFIG_PATH", str(tmp_path / "none.toml"))


def loaded(*argv: str) -> Any:
    return cli.load_config(cli.build_parser().parse_args(list(argv)))


def test_each_flag_sets_its_own_key() -> None:
    """`run --tag-at 3 --reject-at 9` must not be read the other way round, nor a flag be
    dropped on its way to the config."""
    cfg = loaded("run", "--socket", "inet:8893@127.0.0.1", "--engine", "spamd",
                 "--db", "/srv/b.sqlite", "--spamd", "spamd.example:7830",
                 "--scan-timeout", "4", "--tag-at", "3", "--reject-at", "9", "--tag-only")
    assert cfg.milter.socket == "inet:8893@127.0.0.1"
    assert cfg.milter.engine == "spamd"
    assert cfg.bayes.db == "/srv/b.sqlite"
    assert (cfg.spamd.host, cfg.spamd.port) == ("spamd.example", 7830)
    assert cfg.milter.scan_timeout == 4.0
    assert (cfg.policy.spamd.tag, cfg.policy.spamd.reject) == (3.0, 9.0)
    assert cfg.policy.tag_only


def test_the_default_config_file_is_read_when_there(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Without -c, the file at the default path counts: a mistake in it is exit 78 naming
    its line, not the built-in defaults run silently."""
    path = tmp_path / "spambridge.toml"
    path.write_text('[milter]\nengine = "bayes"\nscan_timout = 3\n')
    monkeypatch.setattr(defaults, "CONFIG_PATH", str(path))
    assert cli.main(["check-config", "--no-postfix"]) == cli.EX_CONFIG == 78
    assert (f"spambridge: configuration error: {path}:3: [milter] scan_timout: unknown key"
            in capsys.readouterr().err)


def test_syntax_only_reads_the_file_as_a_reload_does(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The packaged unit's first ExecReload: a file with an error fails `systemctl reload`
    (the milter only logged it and kept its config, and the reload reported success); a good
    file passes whatever Postfix or spamd would say (a reload needs neither)."""
    path = tmp_path / "spambridge.toml"
    path.write_text('[milter]\nengine = "spamd"\n[spamd]\nport = 1\n')  # nothing listens
    assert cli.main(["check-config", "--syntax-only", "-c", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: OK\n"
    path.write_text('[policy]\ntag_at = 9\nreject_at = 3\n')
    assert cli.main(["check-config", "--syntax-only", "-c", str(path)]) == 78
    assert (f"spambridge: configuration error: {path}:3: [policy] reject_at: reject_at (3) "
            "must not be below tag_at (9)" in capsys.readouterr().err)


def test_syntax_only_checks_the_spool_dir_as_a_reload_does(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A reload refuses a spool_dir it cannot write, and kept the whole running config (a
    tag_only change too) while `systemctl reload` said it had worked: ExecReload's check
    refuses it as well, with the reload's own words."""
    from spambridge import app

    path = tmp_path / "spambridge.toml"
    missing = tmp_path / "gone"
    path.write_text(f'[policy]\ntag_only = true\n[milter]\nspool_dir = "{missing}"\n')
    assert cli.main(["check-config", "--syntax-only", "-c", str(path)]) == 78
    said = (f"{path}:4: [milter] spool_dir: {missing}: No such file or directory; a message "
            "above spool_memory would get on_error")
    assert capsys.readouterr().err == f"spambridge: configuration error: {said}\n"
    with pytest.raises(ConfigError, match="^" + re.escape(said) + "$"):
        app._checking_spool(lambda: cli.load_config(
            cli.build_parser().parse_args(["run", "-c", str(path)])))()
    missing.mkdir()
    assert cli.main(["check-config", "--syntax-only", "-c", str(path)]) == 0


def test_the_default_config_path_is_the_one_packaged() -> None:
    """The .deb installs the conffile and the unit passes it: the path the CLI falls back to
    (and its --help names) is that one."""
    assert PACKAGED_PATH == "/etc/spambridge/spambridge.toml"
    install = (ROOT / "packaging/debian/spambridge.install").read_text().split()
    assert install[install.index("packaging/spambridge.toml") + 1].rstrip("/") == (
        os.path.dirname(PACKAGED_PATH).lstrip("/"))
    unit = (ROOT / "packaging/systemd/spambridge.service").read_text()
    assert f"--config {PACKAGED_PATH}" in unit


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """`spambridge` alone prints the help and exits 2, as any other usage error."""
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_check_config_passes_its_flags_on(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    """--no-postfix and --postfix-config reach the check, and its status is the exit code."""
    seen: dict[str, Any] = {}

    def fake(cfg: Any, postfix: bool = True, postfix_config: str | None = None) -> int:
        seen.update(postfix=postfix, postfix_config=postfix_config)
        return 1

    monkeypatch.setattr(checkconfig, "main", fake)
    assert cli.main(["check-config", "--no-postfix"]) == 1
    assert seen == {"postfix": False, "postfix_config": None}
    assert cli.main(["check-config", "--postfix-config", "/srv/pf"]) == 1
    assert seen == {"postfix": True, "postfix_config": "/srv/pf"}


def test_check_config_takes_the_flags_run_takes(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """An admin whose milter starts with flags (`run --socket ... --engine spamd`, as the
    README shows for spamass-milter's users) checks that command line before a restart:
    check-config refused every one of run's flags (exit 2), and without them it judged the
    file's socket and engine, not the ones the milter would use."""
    path = tmp_path / "spambridge.toml"
    path.write_text(f'[milter]\nsocket = "unix:{tmp_path}/file.sock"\n'
                    f'spool_dir = "{tmp_path}"\n')
    flags = ["--socket", f"unix:{tmp_path}/flag.sock", "--engine", "spamd",
             "--spamd", f"{tmp_path}/spamd.sock", "--scan-timeout", "4", "--tag-at", "3",
             "--reject-at", "9", "--tag-only", "--db", f"{tmp_path}/b.sqlite",
             "--log-level", "debug"]
    assert cli.main(["check-config", "--no-postfix", "-c", str(path), *flags]) == 1
    assert capsys.readouterr().out.splitlines()[0] == (
        f"{path}: OK (engine=spamd, socket=unix:{tmp_path}/flag.sock, scan_timeout=4s)")
    # a flag run refuses, check-config refuses as run does (78, the flag named)
    assert cli.main(["check-config", "--no-postfix", "-c", str(path),
                     "--scan-timeout", "0"]) == 78
    assert capsys.readouterr().err == ("spambridge: configuration error: command line: "
                                       "--scan-timeout: must be between 0.1 and 120, not 0.0\n")


def test_check_config_names_the_file_line_and_key_run_names(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What stops `run` at start (a user that does not exist: exit 78, "FILE:LINE: [milter]
    user: ...") check-config warns of; its warning named the key alone, so the admin matched
    it to the file by hand. It now says it as `run` does: the file's line, or the flag."""
    from spambridge import privileges

    path = tmp_path / "spambridge.toml"
    path.write_text(f'[milter]\nspool_dir = "{tmp_path}"\nuser = "no-such-user-sb"\n'
                    f'engine = "spamd"\n[spamd]\nsocket = "{tmp_path}/spamd.sock"\n')
    with pytest.raises(ConfigError) as refused:
        privileges._user(loaded("run", "-c", str(path)), "no-such-user-sb")  # run's words
    assert str(refused.value) == f"{path}:3: [milter] user: no such user 'no-such-user-sb'"
    assert cli.main(["check-config", "--no-postfix", "-c", str(path)]) == 1
    assert f"warning: {refused.value}\n" in capsys.readouterr().out
    # a key a flag gave is the flag's, as in run's errors
    assert cli.main(["check-config", "--no-postfix", "-c", str(path),
                     "--socket", f"unix:{path}/s.sock"]) == 1
    assert ("warning: command line: [milter] socket: " in capsys.readouterr().out)


@pytest.mark.parametrize(("error", "status", "message"), [
    (ConfigError("/etc/x.toml:3: [milter] user: no such user 'x'"), 78,
     "spambridge: configuration error: /etc/x.toml:3: [milter] user: no such user 'x'"),
    (OSError("cannot open /srv/m.eml"), 1, "spambridge: cannot open /srv/m.eml"),
    (KeyboardInterrupt(), 130, ""),
])
def test_what_a_command_raises_is_its_exit_code(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                error: BaseException, status: int,
                                                message: str) -> None:
    """A config problem found only when the command runs (a user, a directory) is 78 as at
    load time, which systemd does not retry; anything else the system refused is 1."""
    def fail(args: Any, cfg: Any) -> int:
        raise error

    monkeypatch.setattr(commands, "dispatch", fail)
    assert cli.main(["check", str(tmp_path / "m.eml")]) == status
    assert message in capsys.readouterr().err


def test_check_config_does_what_its_help_says_of_ctrl_c(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    """check-config can wait on postconf or a name lookup; an admin who gives up with Ctrl-C
    gets 130, as --help and spambridge(8) say, not a traceback."""
    assert "130 on Ctrl-C" in _help("check-config", capsys)

    def interrupted(cfg: Any, postfix: bool, postfix_config: str | None) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(checkconfig, "main", interrupted)
    assert cli.main(["check-config", "--no-postfix"]) == 130
    assert "Traceback" not in capsys.readouterr().err


def test_run_uses_the_log_level_flag_over_the_file(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    """`run --log-level debug` (the way to see one message's decision) wins over [log]."""
    from spambridge import app

    cfg = tmp_path / "s.toml"
    cfg.write_text('[log]\nlevel = "warning"\n')
    levels: list[str] = []
    monkeypatch.setattr(cli, "setup_logging", lambda level, unblocked: levels.append(level))

    def run(cfg: Any, reload: Any) -> int:
        raise ConfigError("stop here")

    monkeypatch.setattr(app, "run", run)
    assert cli.main(["run", "-c", str(cfg), "--log-level", "debug"]) == 78
    assert cli.main(["run", "-c", str(cfg)]) == 78
    assert levels == ["debug", "warning"]


def test_run_blocks_the_milters_signals_before_it_reads_the_config(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A reload (USR1) or a stop sent while the config was read and the milter's modules
    imported (0.2 s, before app.run blocked them) killed the process: exit 138, no line.
    Blocked from the start of `run`, they wait for the milter's own handling."""
    seen: list[set[signal.Signals]] = []
    real = cli.load_config

    def load_config(args: Any) -> Any:
        seen.append(signal.pthread_sigmask(signal.SIG_BLOCK, []))
        return real(args)

    monkeypatch.setattr(cli, "load_config", load_config)
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    try:
        cfg = tmp_path / "s.toml"
        cfg.write_text('[milter]\nspool_dir = "/nonexistent/spool"\n')  # stops at start
        cli.main(["check-config", "--syntax-only", "-c", str(cfg)])
        assert signal.SIGUSR1 not in seen[-1]  # the other commands keep theirs
        from spambridge import app

        def exit_(status: int) -> None:
            raise SystemExit(status)

        monkeypatch.setattr(app, "run", lambda cfg, reload: 0)
        monkeypatch.setattr(cli, "setup_logging", lambda level, unblocked: None)
        monkeypatch.setattr(cli, "libmilter_syslog", lambda: None)
        monkeypatch.setattr(cli.os, "_exit", exit_)
        with pytest.raises(SystemExit):
            cli.main(["run", "-c", str(cfg)])
        assert {signal.SIGUSR1, signal.SIGTERM, signal.SIGHUP, signal.SIGINT} <= seen[-1]
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def test_an_unknown_engine_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """argparse lists the engines and exits 2, before any config is read."""
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "--engine", "spamassassin"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'spamassassin'" in err and "spamd+bayes" in err


@pytest.mark.parametrize(("text", "size"), [
    ("500000", 500_000), ("500k", 512_000), ("500K", 512_000), ("2M", 2_097_152),
    ("2mb", 2_097_152), ("12kB", 12_288), ("0", 0)])
def test_train_sizes_are_binary(text: str, size: int) -> None:
    """--max-size 500k is sa-learn's 500 KiB, not 500,000 bytes."""
    assert commands.size(text) == size


def test_train_defaults_are_the_ones_its_help_gives() -> None:
    """--max-size 500k (as sa-learn, and as train.py's own default), --batch-size 2000, no
    spamd user of its own (then [spamd] user)."""
    from spambridge import train

    args = cli.build_parser().parse_args(["train", "--spam"])
    assert args.max_size == commands.size("500k") == train.DEFAULT_MAX_SIZE
    assert args.batch_size == 2000
    assert args.user == ""


@pytest.mark.parametrize("index", [False, True])
def test_train_with_both_engines_fails_when_either_fails(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          index: bool) -> None:
    """engine spamd+bayes teaches both: the local database failing is exit 1 even when spamd
    learnt (a Sieve script or cron job must see it), and the other way round."""
    from spambridge import train

    msg = tmp_path / "m.eml"
    msg.write_bytes(b"Subject: x\n\nbody\n")
    listing = tmp_path / "index"
    listing.write_text(f"spam {msg}\nham {msg}\n")
    argv = ["train", "--engine", "spamd+bayes", "--db", str(tmp_path / "b.sqlite"),
            *(["--index", str(listing)] if index else ["--spam", str(msg)])]
    for local, remote in ((1, 0), (0, 1), (0, 0)):
        monkeypatch.setattr(train, "run", lambda *a, _s=local, **k: _s)
        monkeypatch.setattr(train, "run_spamd", lambda *a, _s=remote, **k: _s)
        assert cli.main(argv) == max(local, remote), (local, remote)


@pytest.mark.parametrize("charset", ["utf-8", "latin-1"])
def test_a_name_the_locale_cannot_print_does_not_stop_a_command(tmp_path: Path,
                                                                 charset: str) -> None:
    """Under a UTF-8 locale such as de_DE.UTF-8 (stdout UTF-8, strict) `check` of a file whose
    name holds a Latin-1 byte (a folder copied from an old system), and `check-config` of a
    config beside it, stopped with a UnicodeEncodeError traceback half-way through; under a
    Latin-1 locale `train` naming a database under почта did. (LANG=C was spared: Python runs
    in UTF-8 mode there.) PYTHONIOENCODING gives the command the stdout such a locale does."""
    import subprocess
    import sys

    old = tmp_path / os.fsdecode(b"Entw\xfcrfe")  # not UTF-8
    old.mkdir()
    msg = old / "1.eml"
    msg.write_bytes(b"Subject: hi\n\nhello\n")
    db = tmp_path / "почта" / "bayes.sqlite"
    cfg = old / "sb.toml"
    cfg.write_text(f'[bayes]\ndb = "{db}"\n')

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "spambridge", *args, "-c", str(cfg)],
                              capture_output=True, timeout=60,
                              env={**os.environ, "PYTHONIOENCODING": charset})

    r = run("check", "--batch", str(msg), str(old / "nope.eml"))
    assert b"Traceback" not in r.stderr, r.stderr.decode(errors="replace")
    # stdout names the file as it is on disk (as under LANG=C), so a script can open it
    assert r.stdout.splitlines() == [os.fsencode(msg) + b"\t-\tunchecked=unavailable",
                                     os.fsencode(old / "nope.eml") + b"\t-\tunreadable"]
    # stderr as the milter's log lines write such a byte, not Python's \udcfc
    assert b"/Entw\\xfcrfe/nope.eml: cannot read" in r.stderr
    r = run("check", str(msg))
    assert r.stdout.startswith(os.fsencode(msg) + b": score=- "), r.stderr
    r = run("check-config", "--no-postfix")
    assert r.stdout.startswith(os.fsencode(cfg) + b": OK "), r.stderr
    r = run("train", "--forget", str(msg))
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"No Bayes database at {db}: nothing to forget\n".encode(
        charset, "backslashreplace")


def test_a_spamd_user_spamd_cannot_be_sent_is_a_usage_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`train --engine spamd --user jörg` (a Dovecot script passes the IMAP user) sent nothing:
    each message failed as "spamd error: UnicodeEncodeError", exit 1 after the whole run."""
    msg = tmp_path / "m.eml"
    msg.write_bytes(b"Subject: x\n\nbody\n")
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--engine", "spamd", "--spamd", "127.0.0.1:9", "--user", "jörg",
                  "--spam", str(msg)])
    assert e.value.code == 2
    assert ("argument --user: must be printable ASCII, as spamd's User header is; 'ö' is not"
            in capsys.readouterr().err)


def _help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_train_does_what_its_help_says_of_exit_statuses(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    """A Sieve script or a cron job acts on the status: `train --help` names each one, and
    each is what a run gives — a folder with a file that is not mail is no error, a named
    file that is not mail is, and so is a bad config."""
    text = _help("train", capsys)
    for part in ("Exit status: 0 when the run finished", "1 when a PATH given could not be "
                 "read or is not mail", "2 for a usage error", "78 for a configuration error",
                 "130 on Ctrl-C and 143 on SIGTERM"):
        assert part in text
    db = str(tmp_path / "b.sqlite")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "m.eml").write_bytes(b"Subject: x\n\nbody\n")
    (folder / "notes.json").write_bytes(b'{"not": "mail"}\n')
    assert cli.main(["train", "-q", "--db", db, "--spam", str(folder)]) == 0
    assert cli.main(["train", "-q", "--db", db, "--spam", str(folder)]) == 0  # already trained
    assert cli.main(["train", "-q", "--db", db, "--spam", str(folder / "notes.json")]) == 1
    assert cli.main(["train", "-q", "--db", db, "--spam", str(tmp_path / "missing")]) == 1
    bad = tmp_path / "bad.toml"
    bad.write_text("[bayes]\nmin_traned = 1\n")
    assert cli.main(["train", "-c", str(bad), "--db", db, "--spam", str(folder)]) == 78
    with pytest.raises(SystemExit) as usage:
        cli.main(["train", "--spam", "--ham", str(folder)])
    assert usage.value.code == 2


def test_check_does_what_its_help_says_of_exit_statuses(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    """`check --help` names its statuses, and a spam verdict is no failure (status 0), while
    a database not trained yet is (1): a script tells "scored" from "could not score". Why
    is said on the message's `why:` line only, not as a running milter's incident too."""
    text = _help("check", capsys)
    for part in ("Exit status: 0 when every message was scored", "1 when one could not be "
                 "read or scanned", "whatever the verdicts", "2 for a usage error",
                 "78 for a configuration error"):
        assert part in text
    db = str(tmp_path / "b.sqlite")
    spam, ham = tmp_path / "spam.eml", tmp_path / "ham.eml"
    spam.write_bytes(b"Subject: cheap pills now\n\nbuy cheap pills viagra casino\n")
    ham.write_bytes(b"Subject: meeting notes\n\nthe agenda for tomorrow's project meeting\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text("[bayes]\nmin_trained = 1\n")
    assert cli.main(["train", "-q", "-c", str(cfg), "--db", db, "--spam", str(spam)]) == 0
    capsys.readouterr()
    assert cli.main(["check", "-c", str(cfg), "--db", db, str(spam)]) == 1  # no ham yet
    said = capsys.readouterr()
    assert "  why: not trained yet: 1 spam, 0 ham" in said.out
    # said once, on the message's own line: not again as the running milter's incident
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any("until it answers again" in m for m in logged), logged
    assert cli.main(["train", "-q", "-c", str(cfg), "--db", db, "--ham", str(ham)]) == 0
    capsys.readouterr()
    assert cli.main(["check", "-c", str(cfg), "--db", db, str(spam)]) == 0
    assert "action=reject" in capsys.readouterr().out  # a reject is a verdict, not a failure
    assert cli.main(["check", "-c", str(cfg), "--db", db, str(tmp_path / "missing")]) == 1
    bad = tmp_path / "bad.toml"
    bad.write_text("[policy]\ntag_at = 'five'\n")
    assert cli.main(["check", "-c", str(bad), "--db", db, str(spam)]) == 78


def test_check_says_a_long_error_once(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      caplog: pytest.LogCaptureFixture) -> None:
    """An error longer than the milter's decision line holds (a database `check` cannot open,
    under a long path) is on the `why:` line whole: the milter's "the error in full" warning
    only printed it a second time, timestamped, on stderr."""
    db = tmp_path / ("d" * 150) / "b.sqlite"
    msg = tmp_path / "m.eml"
    msg.write_bytes(b"Subject: notes\n\nthe agenda for tomorrow\n")
    assert cli.main(["check", "--db", str(db), str(msg)]) == 1
    assert (f"  why: {db}: no Bayes database (train one with `spambridge train`)\n"
            in capsys.readouterr().out)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_check_says_when_a_file_is_an_mbox_or_no_mail(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    """An mbox got one score for all its messages, binary junk an "unsure" 0.5, with no word:
    an admin checking the wrong file took the score for a verdict on a message."""
    msg = b"From: a@example.org\nSubject: notes\n\nthe agenda for tomorrow\n"
    sep = b"From a@example.org Mon Jan  1 00:00:00 2024\n"
    (tmp_path / "box.mbox").write_bytes(sep + msg + b"\n" + sep + msg)
    (tmp_path / "junk.bin").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "one.eml").write_bytes(sep + msg)  # a delivered message with its From_ line
    (tmp_path / "nul.eml").write_bytes(msg.replace(b"notes", b"no\0tes"))
    db = str(tmp_path / "b.sqlite")
    paths = [str(tmp_path / n) for n in ("box.mbox", "junk.bin", "one.eml", "nul.eml")]
    cli.main(["check", "--db", db, "--batch", *paths])
    err = capsys.readouterr().err
    assert f"{paths[0]}: holds several messages (an mbox): scored as one" in err
    assert (f"{paths[1]}: does not look like mail (its first line is no header field): scored "
            "all the same") in err
    assert "one.eml" not in err
    # a header that has every field a message has: the NUL is why, not a missing field
    assert f"{paths[3]}: does not look like mail (a NUL byte in its header)" in err


def test_debug_logging_adds_no_asyncio_chatter(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--log-level debug` printed asyncio's "Using selector: EpollSelector" at every start;
    the docs promise only the metrics endpoint's dropped connections beyond `info`."""
    import asyncio

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as at a real start: basicConfig takes effect
    monkeypatch.setattr(root, "level", root.level)
    asyncio_log = logging.getLogger("asyncio")
    monkeypatch.setattr(asyncio_log, "level", asyncio_log.level)
    ours = logging.getLogger("spambridge")
    monkeypatch.setattr(ours, "level", logging.NOTSET)  # (`check` in another test set it)
    cli.setup_logging("debug")
    seen: list[logging.LogRecord] = []
    handler = root.handlers[0]
    monkeypatch.setattr(handler, "emit", seen.append)
    asyncio.run(asyncio.sleep(0))  # a new event loop logs its selector at DEBUG
    logging.getLogger("spambridge").debug("metrics: dropped a connection")
    assert [r.name for r in seen] == ["spambridge"]


def test_a_ca_file_spamd_cannot_use_is_a_configuration_error(tmp_path: Path) -> None:
    """`[spamd] tls = true` with a ca_file that is not there, or holds no certificate: `run`
    said only the bare path, or OpenSSL's source line (78, but no file, line or key), and
    `check-config` stopped with it (exit 1) before its own warning; a CA directory (OpenSSL's
    capath) is still one."""
    import subprocess
    import sys

    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    (tmp_path / "certs").mkdir()

    cfg = tmp_path / "sb.toml"

    def run(*args: str, ca_file: Path) -> subprocess.CompletedProcess[str]:
        cfg.write_text(f'[milter]\nengine = "spamd"\nsocket = "unix:{tmp_path}/milter.sock"\n'
                       f'spool_dir = "{tmp_path}"\n\n[spamd]\nhost = "127.0.0.1"\n'
                       f'tls = true\nca_file = "{ca_file}"\n')
        return subprocess.run([sys.executable, "-m", "spambridge", *args, "-c", str(cfg)],
                              capture_output=True, text=True, timeout=60)

    for ca_file, why in ((tmp_path / "nonexistent.pem", "no such file"),
                         (junk, "no CA certificate in it (OpenSSL: no certificate or crl "
                                "found)")):
        r = run("run", ca_file=ca_file)
        assert (r.returncode, r.stderr) == (78, f"spambridge: configuration error: {cfg}:9: "
                                                f"[spamd] ca_file: {ca_file}: {why}\n")
        assert not (tmp_path / "milter.sock").exists()
        r = run("train", "--engine", "spamd", "--spam", str(junk), ca_file=ca_file)
        assert (r.returncode, r.stderr) == (78, f"spambridge: configuration error: {cfg}:9: "
                                                f"[spamd] ca_file: {ca_file}: {why}\n")
    r = run("check-config", "--no-postfix", ca_file=tmp_path / "nonexistent.pem")
    assert (r.returncode, r.stderr) == (1, "")
    assert [line for line in r.stdout.splitlines() if "[spamd] ca_file" in line] == [
        f"warning: {cfg}:9: [spamd] ca_file: {tmp_path}/nonexistent.pem cannot be read"]
    r = run("check-config", "--no-postfix", ca_file=junk)
    assert (r.returncode, r.stderr) == (1, "")
    assert [line for line in r.stdout.splitlines() if "[spamd] ca_file" in line] == [
        f"warning: {cfg}:9: [spamd] ca_file: {junk}: no CA certificate in it (OpenSSL: no "
        "certificate or crl found)"]
    r = run("check-config", "--no-postfix", ca_file=tmp_path / "certs")
    assert "[spamd] ca_file" not in r.stdout + r.stderr


def test_the_first_byte_a_surrogate_stands_for_is_written_as_the_others() -> None:
    """0x80, the lowest byte Python holds as a surrogate (U+DC80), is written as the byte on
    stdout and as \\x80 on stderr, like 0xff: not as Python's \\udc80."""
    name = os.fsdecode(b"/srv/mail/\x80\xff.eml")
    assert name.encode("ascii", "spambridge-stdout") == b"/srv/mail/\x80\xff.eml"
    assert name.encode("ascii", "spambridge-stderr") == b"/srv/mail/\\x80\\xff.eml"


@pytest.mark.parametrize("stop", [130, 143])
def test_an_index_run_stopped_in_its_local_half_teaches_spamd_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        stop: int) -> None:
    """`train --index` with spamd+bayes stopped by Ctrl-C (or SIGTERM) while the local
    database learns: the command stops with that status, spamd's runs are not started."""
    from spambridge import train

    msg = tmp_path / "m.eml"
    msg.write_bytes(b"Subject: x\n\nbody\n")
    listing = tmp_path / "index"
    listing.write_text(f"spam {msg}\nham {msg}\n")
    told: list[str] = []
    monkeypatch.setattr(train, "run", lambda *a, **k: stop)
    monkeypatch.setattr(train, "run_spamd", lambda cfg, label, *a, **k: told.append(label) or 0)
    assert cli.main(["train", "--engine", "spamd+bayes", "--db", str(tmp_path / "b.sqlite"),
                     "--index", str(listing)]) == stop
    assert told == []


def test_an_index_with_paths_is_a_usage_error(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """`train --index FILE PATH`: the paths come from the file; one given as well would be
    left unread in silence."""
    listing = tmp_path / "index"
    listing.write_text("spam a.eml\n")
    assert cli.main(["train", "--db", str(tmp_path / "b.sqlite"), "--index", str(listing),
                     str(tmp_path / "c.eml")]) == 2
    assert capsys.readouterr().err == "spambridge train: --index takes its paths from the file\n"
    assert not (tmp_path / "b.sqlite").exists()


def test_forget_with_selective_is_a_usage_error(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`train --forget --selective`: --selective chooses what to learn, and was silently
    ignored by a --forget, which unlearns whatever it is given."""
    assert cli.main(["train", "--db", str(tmp_path / "b.sqlite"), "--forget", "--selective",
                     str(tmp_path / "c.eml")]) == 2
    assert capsys.readouterr().err == ("spambridge train: --selective chooses what to learn; "
                                       "--forget unlearns what it is given\n")
    assert not (tmp_path / "b.sqlite").exists()


@pytest.mark.parametrize("n", ["0", "-5"])
def test_a_batch_of_no_message_is_a_usage_error(n: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`--batch-size 0` (or less) was taken as 1, silently."""
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--db", str(tmp_path / "b.sqlite"), "--ham", "--batch-size", n,
                  str(tmp_path / "c.eml")])
    assert e.value.code == 2
    assert f"argument --batch-size: {int(n)}: a batch holds at least 1 message" in \
        capsys.readouterr().err
    assert not (tmp_path / "b.sqlite").exists()


def test_max_size_0_on_stdin_with_both_engines_is_no_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`train --max-size 0 -` (no limit) under spamd+bayes: the message is kept whole for
    spamd's reading and is not called too large, which spamd's summary would count."""
    import io
    import sys

    from spambridge import train

    raw = b"Subject: x\n\n" + b"body\n" * 1000
    seen: dict[str, Any] = {}

    def run_spamd(*a: Any, too_large_said: bool = False, **k: Any) -> int:
        seen["too_large_said"], seen["stdin"] = too_large_said, sys.stdin.buffer.read()
        return 0

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    monkeypatch.setattr(train, "run", lambda *a, **k: 0)
    monkeypatch.setattr(train, "run_spamd", run_spamd)
    assert cli.main(["train", "--engine", "spamd+bayes", "--db", str(tmp_path / "b.sqlite"),
                     "--max-size", "0", "--spam", "-"]) == 0
    assert seen == {"too_large_said": False, "stdin": raw}


def test_a_slow_stderr_holds_each_logging_thread_no_longer_than_log_wait() -> None:
    """A stderr that takes each line in 60 ms (under LOG_WAIT: not stuck) held the threads
    that log one behind another: each waited for its line while holding the handler's lock,
    so the tenth of ten decision lines logged at once waited 0.6 s (100 at once: 6 s, past
    the MTA's milter timeouts), where a logging thread waits at most LOG_WAIT for its line."""
    written: list[str] = []

    class Slow(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            time.sleep(0.06)  # a slow stderr, not a stuck one
            written.append(record.getMessage())

    queued = cli._Unblocked()
    writer = cli._Writer(queued, Slow())
    writer.start()
    n = 10
    start = threading.Barrier(n)
    took: list[float] = []

    def decide(i: int) -> None:
        record = logging.makeLogRecord({"name": "spambridge", "levelno": logging.INFO,
                                        "msg": f"Q{i}: action=accept"})
        start.wait(5)
        t0 = time.monotonic()
        queued.handle(record)
        took.append(time.monotonic() - t0)

    threads = [threading.Thread(target=decide, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert writer.stop_within(10.0)
    assert sorted(written) == sorted(f"Q{i}: action=accept" for i in range(n))  # none lost
    assert max(took) < cli.LOG_WAIT + 0.15, sorted(round(t, 2) for t in took)


def test_a_line_logged_on_the_event_loop_does_not_wait_for_stderr() -> None:
    """spamd scans run on the bridge's asyncio loop, and a pool member's news is logged
    there: waiting up to LOG_WAIT for that line to be written held every scan in flight, and
    behind a stderr not taking lines it marked stderr stuck for the threads that answer mail.
    A thread that logs from a loop does not wait; its line is written all the same."""
    import asyncio

    release = threading.Event()
    written: list[str] = []

    class Held(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            release.wait(10)  # stderr not taking lines until the test says so
            written.append(record.getMessage())

    queued = cli._Unblocked()
    writer = cli._Writer(queued, Held())
    writer.start()

    async def pool_news() -> None:
        queued.handle(logging.makeLogRecord({"name": "spambridge.pool", "levelno": 30,
                                             "msg": "spamd server 127.0.0.1:783 is down"}))

    try:
        asyncio.run(pool_news())
        assert not queued.stuck  # it did not wait: nothing said stderr had stopped
    finally:
        release.set()
        assert writer.stop_within(10.0)
    assert written == ["spamd server 127.0.0.1:783 is down"]


@pytest.mark.parametrize(("received", "addr", "local", "auth", "skip"), [
    (b"from mail.example.net (mail.example.net [192.0.2.10])\n\tby mx.test.example (Postfix) "
     b"with ESMTPS id 4ABC\n\tfor <u@test.example>; Wed, 25 Nov 2026 10:00:00 +0000",
     "192.0.2.10", False, False, "trusted"),
    (b"from pc ([IPv6:2001:db8::5])\n\tby mx.test.example (Postfix) with ESMTPSA id 4ABC;"
     b" Wed, 25 Nov 2026 10:00:00 +0000", "2001:db8::5", False, True, "authenticated"),
    (b"from pc (pc.example.org [198.51.100.7]) by mx.test.example (8.17.1/8.17.1) with ESMTPA"
     b" id 5ABC; Wed, 25 Nov 2026 10:00:00 +0000", "198.51.100.7", False, True, None),
    (b"by mx.test.example (Postfix, from userid 0)\n\tid 4ABC; Wed, 25 Nov 2026 10:00:00 +0000",
     "127.0.0.1", True, False, None),
])
def test_check_decides_a_delivered_message_with_what_the_milter_knew(
        received: bytes, addr: str, local: bool, auth: bool, skip: str | None) -> None:
    """The Received line our MTA wrote on a mailbox file is how `check` knows the connection
    the milter decided with: the client's address, AUTH (RFC 3848's ...A), a local pickup."""
    from dataclasses import replace

    from spambridge import check
    from spambridge.config import Config, parse_network
    from spambridge.message import parse_raw

    cfg = Config()
    cfg = replace(cfg, milter=replace(cfg.milter, trusted_networks=(
        parse_network("192.0.2.0/24"),), skip_authenticated="2001:db8::5" in addr))
    buf = parse_raw(b"Return-Path: <a@example.org>\nReceived: " + received
                    + b"\nFrom: a@example.org\n\nbody\n")
    env, why = check._envelope(1, buf, cfg)
    assert (env.client_addr, env.local, bool(env.auth_user)) == (addr, local, auth)
    assert (why.value if why else None) == skip
    live, why = check._envelope(1, parse_raw(b"Received: " + received + b"\n\nbody\n"), cfg)
    assert (live.client_addr, live.local, live.auth_user, why) == ("", False, "", None)


def trusting_the_inner_relay() -> Config:
    """The milter's config with the inner relays of the _TWO_TIER copies trusted."""
    from dataclasses import replace

    from spambridge.config import parse_network

    cfg = Config()
    return replace(cfg, milter=replace(cfg.milter, trusted_networks=(
        parse_network("10.0.0.0/8"),)))


# a copy delivered behind a second relay: Dovecot's LMTP hop, the inner relay's line (its
# client is our MTA, in trusted_networks), then our MTA's, then what the sender wrote
_TWO_TIER = (b"Return-Path: <a@example.org>\n"
             b"Delivered-To: u@test.example\n"
             b"Received: from inner.test.example\n\tby imap.test.example with LMTP\n\tid x"
             b"; Wed, 25 Nov 2026 10:00:02 +0000\n"
             b"Received: from mx.test.example (mx.test.example [10.0.0.5])\n\tby inner.test"
             b".example (Postfix) with ESMTP id 5DEF; Wed, 25 Nov 2026 10:00:01 +0000\n"
             b"Received: from mail.example.net (mail.example.net [203.0.113.5])\n\tby mx.test"
             b".example (Postfix) with ESMTP id 4ABC; Wed, 25 Nov 2026 10:00:00 +0000\n"
             b"Received: from forged (forged [10.9.9.9]) by mx.test.example (Postfix);"
             b" Wed, 25 Nov 2026 09:00:00 +0000\n"
             b"From: a@example.org\nSubject: hello\n")


@pytest.mark.parametrize(("checker", "host", "addr", "skip"), [
    (b"spambridge 0.1.0 on mx.test.example", "mx.test.example", "203.0.113.5", None),
    # written by another: the first hop stands for ours, as before
    (b"SpamAssassin 3.4.6 (2021-04-09) on mx.test.example", "", "10.0.0.5", "trusted"),
    (b"spambridge 0.1.0", "", "10.0.0.5", "trusted"),
    # a host whose line is not there: the first hop too
    (b"spambridge 0.1.0 on other.test.example", "other.test.example", "10.0.0.5", "trusted"),
])
def test_check_finds_our_mtas_line_behind_a_second_relay(
        checker: bytes, host: str, addr: str, skip: str | None) -> None:
    """Behind a second relay the first Received line is that relay's, and its client is our
    MTA: in trusted_networks, `check` on every delivered message said "skipped: trusted"
    where the milter had scored it. The milter names its MTA in X-Spam-Checker-Version (as
    SpamAssassin does); the line that MTA wrote is the one read, and the field `check` shows
    is the milter's own."""
    from spambridge import check
    from spambridge.message import parse_raw

    cfg = trusting_the_inner_relay()
    buf = parse_raw(_TWO_TIER + b"X-Spam-Checker-Version: " + checker + b"\n\nbody\n")
    env, why = check._envelope(1, buf, cfg)
    assert (env.client_addr, why.value if why else None) == (addr, skip)
    assert env.mta_host == host
    assert not any(n.startswith("X-Spam") for n, _ in buf.headers)


@pytest.mark.parametrize(("ours", "host"), [
    (b"spambridge 0.1.0 on mx.test.example", "mx.test.example"),
    (b"spambridge 0.1.0", ""),  # an MTA that sent no macro j: the first Received line
])
def test_check_reads_our_mtas_line_despite_a_forged_checker_left_by_a_flood(
        ours: bytes, host: str) -> None:
    """A sender sends more forged X-Spam-* fields than the milter removes (MAX_OWNED): the
    milter puts its own on top, and the last forged ones stay at the bottom of the header.
    One of them, "X-Spam-Checker-Version: spambridge ... on evil.example", beside a Received
    line the sender wrote "by evil.example" from a trusted address, had `check` read that
    line: "skipped: trusted" for a message the milter scored (ours is the first such field)."""
    from spambridge import check
    from spambridge.message import parse_raw

    cfg = trusting_the_inner_relay()
    raw = (b"Return-Path: <a@example.org>\nDelivered-To: u@test.example\n"
           b"Received: from mx.test.example\n\tby imap.test.example with LMTP\n\tid x"
           b"; Wed, 25 Nov 2026 10:00:02 +0000\n"
           b"X-Spam-Checker-Version: " + ours + b"\n"
           b"X-Spam-Status: No, score=1.0 required=5.0 tests=none engine=spamd\n"
           b"Received: from mail.example.net (mail.example.net [203.0.113.5])\n\tby mx.test"
           b".example (Postfix) with ESMTP id 4ABC; Wed, 25 Nov 2026 10:00:00 +0000\n"
           b"Received: from friend (friend [10.9.9.9]) by evil.example (Postfix) with ESMTP;"
           b" Wed, 25 Nov 2026 09:00:00 +0000\n"
           b"From: a@example.org\nSubject: hello\n"
           b"X-Spam-Checker-Version: spambridge 0.1.0 on evil.example\n\nbody\n")
    buf = parse_raw(raw)
    env, why = check._envelope(1, buf, cfg)
    assert (env.mta_host, env.client_addr, why) == (host, "203.0.113.5", None)


@pytest.mark.parametrize(("inner_for", "our_helo"), [
    # the recipient, as RCPT TO spelt it, in the "for" clause of the inner relay's line
    (b'"u+ by mx.test.example"@test.example', b"mail.example.net"),
    # the client's HELO words in our own line
    (b"u@test.example", b"x by evil.example"),
])
def test_check_finds_our_mtas_line_by_its_by_clause_only(inner_for: bytes,
                                                        our_helo: bytes) -> None:
    """Behind a second relay, a recipient `"u+ by mx.test.example"@test.example` put our
    MTA's name into the relay's line ("for <...>"), taken for the line our MTA wrote: its
    client is our MTA, in trusted_networks, and `check` said "skipped: trusted" for mail the
    milter scored. Only the host of the "by" clause says who wrote a line."""
    from spambridge import check
    from spambridge.message import parse_raw

    cfg = trusting_the_inner_relay()
    raw = (b"Return-Path: <a@example.org>\nDelivered-To: u@test.example\n"
           b"Received: from inner.test.example\n\tby imap.test.example with LMTP\n\tid x"
           b"; Wed, 25 Nov 2026 10:00:02 +0000\n"
           b"Received: from mx.test.example (mx.test.example [10.0.0.5])\n\tby inner.test"
           b".example (Postfix) with ESMTP id 5DEF\n\tfor <" + inner_for + b">; Wed, 25 Nov"
           b" 2026 10:00:01 +0000\n"
           b"Received: from " + our_helo + b" (mail.example.net [203.0.113.5])\n\tby mx.test"
           b".example (Postfix) with ESMTP id 4ABC; Wed, 25 Nov 2026 10:00:00 +0000\n"
           b"Received: from friend (friend [10.9.9.9]) by evil.example (Postfix) with ESMTP;"
           b" Wed, 25 Nov 2026 09:00:00 +0000\n"
           b"From: a@example.org\nSubject: hello\n"
           b"X-Spam-Checker-Version: spambridge 0.1.0 on mx.test.example\n\nbody\n")
    env, why = check._envelope(1, parse_raw(raw), cfg)
    assert (env.client_addr, why) == ("203.0.113.5", None)


def test_what_delivery_wrote_behind_a_second_relay_counts_toward_no_limit() -> None:
    """The milter had neither relay's Received line nor what Dovecot wrote: a message at
    max_scan_size as the milter had it is not oversize to `check`."""
    from spambridge.message import parse_raw

    head = (_TWO_TIER + b"X-Spam-Checker-Version: spambridge 0.1.0 on mx.test.example\n"
            + b"\n").replace(b"\n", b"\r\n")
    milter_had = head[head.index(b"Received: from forged"):].replace(
        b"X-Spam-Checker-Version: spambridge 0.1.0 on mx.test.example\r\n", b"")
    body = b"x" * 1000 + b"\r\n"
    size = parse_raw(milter_had + body).size
    assert not parse_raw(head + body, size).oversize
    assert parse_raw(head + body + b"y", size).oversize


@pytest.mark.parametrize(("received", "addr", "auth"), [
    # a client's HELO is its own to write: an address literal (Postfix takes any), words
    # (Postfix joins HELO's arguments with blanks), all before the comment smtpd writes
    (b"from [192.0.2.10] (unknown [203.0.113.5])\n\tby mx.test.example (Postfix) with ESMTP"
     b" id 4ABC\n\tfor <u@test.example>; Wed, 25 Nov 2026 10:00:00 +0000", "203.0.113.5", False),
    (b"from x [192.0.2.10] with ESMTPA (unknown [203.0.113.5])\n\tby mx.test.example (Postfix)"
     b" with ESMTP id 4ABC\n\tfor <u@test.example>; Wed, 25 Nov 2026 10:00:00 +0000",
     "203.0.113.5", False),
    # and a recipient its RCPT TO spells, quoted, in the "for" clause after the protocol
    (b"from mail.example.net (mail.example.net [203.0.113.5])\n\tby mx.test.example (Postfix)"
     b" with ESMTP id 4ABC\n\tfor <\"u+ with ESMTPA\"@test.example>; Wed, 25 Nov 2026 10:00:00"
     b" +0000", "203.0.113.5", False),
    # Sendmail's client comment may end "(may be forged)", its AUTH comment stand before "by"
    (b"from [192.0.2.10] (pc.example.org [203.0.113.5] (may be forged))\n\t(authenticated bits=0)"
     b"\n\tby mx.test.example (8.17.1/8.17.1) with ESMTPSA id 5ABC; Wed, 25 Nov 2026 10:00:00"
     b" +0000", "203.0.113.5", True),
])
def test_check_reads_the_client_from_the_comment_our_mta_wrote(
        received: bytes, addr: str, auth: bool) -> None:
    """What a sender wrote (its HELO, its RCPT TO) stands in our MTA's Received line beside
    the client's address and protocol: `check` on a delivered spam whose client said
    "HELO [192.0.2.10]" (any trusted address) said "skipped: trusted", and one whose HELO said
    "with ESMTPA" said "skipped: authenticated", where the milter had scanned both."""
    from dataclasses import replace

    from spambridge import check
    from spambridge.config import Config, parse_network
    from spambridge.message import parse_raw

    cfg = Config()
    cfg = replace(cfg, milter=replace(cfg.milter, trusted_networks=(
        parse_network("192.0.2.0/24"),), skip_authenticated=True))
    buf = parse_raw(b"Return-Path: <a@example.org>\nReceived: " + received
                    + b"\nFrom: a@example.org\n\nbody\n")
    env, why = check._envelope(1, buf, cfg)
    assert (env.client_addr, bool(env.auth_user)) == (addr, auth)
    assert (why.value if why else None) == ("authenticated" if auth else None)
