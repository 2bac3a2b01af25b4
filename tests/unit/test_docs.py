"""What the docs show an admin, read from the docs themselves: the log lines README's Logs
section prints are the ones the milter writes for those cases (with the defaults' cap and
share), every key spambridge.toml(5) lists is shown with the loader's default, the config
snippets the docs give load, and the tests and files the docs cite exist."""

from __future__ import annotations

import argparse
import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from spambridge import cli, config, defaults
from spambridge.config import Config
from spambridge.message import Envelope, MessageBuffer
from spambridge.pipeline import Evaluation, log_decision
from spambridge.policy import decide
from spambridge.verdict import (
    ErrorKind,
    FailAction,
    Outcome,
    ScanError,
    ScoreResult,
    Skipped,
    SkipReason,
)

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MAN5 = ROOT / "packaging" / "man" / "spambridge.toml.5"


def readme_log_lines() -> list[tuple[str, str]]:
    """(level, message) of each decision line in the README's Logs section."""
    logs = README.read_text().split("\n## Logs\n", 1)[1].split("\n## ", 1)[0]
    block = logs.split("```\n", 2)[1]
    lines = [re.fullmatch(r"spambridge\[\d+\]: (\w+) (.*)", line) for line in block.splitlines()]
    assert all(lines), block
    return [(m.group(1), m.group(2)) for m in lines if m]


def field(line: str, name: str) -> str:
    m = re.search(rf" {name}=(\S+)", line)
    assert m, (name, line)
    return m.group(1)


# what the milter decides from, for each (engine, action, reason) the README shows; the error
# texts that depend on the config are written as the defaults give them
CAP = defaults.SCAN_TIMEOUT
CASES: dict[tuple[str, str, str], tuple[Outcome, dict[str, Any]]] = {
    ("spamd", "accept", "ham"): (ScoreResult("spamd", -0.1), {}),
    ("spamd", "tag", "spam"): (ScoreResult("spamd", 7.2), {}),
    ("bayes", "reject", "reject"): (ScoreResult("bayes", 0.999), {}),
    ("spamd", "tag", "reject"): (ScoreResult("spamd", 1000.0), {"tag_only": True}),
    ("-", "accept", "authenticated"): (Skipped(SkipReason.AUTHENTICATED), {}),
    ("spamd", "accept", "oversize"): (
        ScanError(ErrorKind.OVERSIZE, "spamd", f"over max_scan_size {defaults.MAX_SCAN_SIZE}"),
        {}),
    ("spamd", "accept", "unavailable"): (ScanError(
        ErrorKind.UNAVAILABLE, "spamd", "127.0.0.1:783: AIOSpamcConnectionFailed: [Errno 111] "
        "Connect call failed ('127.0.0.1', 783)"), {}),
    ("spamd", "tempfail", "timeout"): (
        ScanError(ErrorKind.TIMEOUT, "spamd", f"no verdict within {CAP:g}s"),  # Pipeline.scan
        {"on_timeout": FailAction("tempfail")}),
    ("bayes", "accept", "ham"): (ScoreResult("bayes", 0.02, failed=ScanError(
        ErrorKind.TIMEOUT, "spamd",  # FallbackScanner, with app.build_scanner's budget
        f"no answer within its {defaults.SPAMD_SHARE * CAP:g}s share")), {}),
    ("spool", "accept", "error"): (ScanError(
        ErrorKind.ERROR, "spool", "spool_dir /var/tmp: [Errno 28] No space left on device"), {}),
}


def test_the_readme_log_lines_are_the_ones_the_milter_writes(
        caplog: pytest.LogCaptureFixture) -> None:
    """An admin greps for what the README shows. The fallback line had a 7.5 s share and
    7,503 ms, which no default gives (the cap 10 s and spamd's share 0.7 make "its 7s share"),
    and the full spool's had a 2 MiB size, which a spool failure never logs: the milter stops
    taking the body at the failed write, at most max_scan_size in."""
    lines = readme_log_lines()
    assert len(lines) == len(CASES)
    caplog.set_level(logging.INFO, logger="spambridge")
    for level, shown in lines:
        key = (field(shown, "engine"), field(shown, "action"), field(shown, "reason"))
        outcome, policy = CASES[key]
        cfg = Config()
        cfg = replace(cfg, policy=replace(cfg.policy, **policy))
        buf = MessageBuffer(defaults.MAX_SCAN_SIZE, defaults.SPOOL_MEMORY)
        buf.size = int(field(shown, "size"))
        assert buf.size <= defaults.MAX_SCAN_SIZE + 65535, (
            "the milter stops taking a message one body chunk past max_scan_size", shown)
        if key[0] == "spool":
            assert buf.size <= defaults.MAX_SCAN_SIZE, ("a spool failure is found before "
                                                        "max_scan_size", shown)
        ev = Evaluation(decide(outcome, cfg.policy), outcome, int(field(shown, "ms")) / 1000)
        caplog.clear()
        log_decision(ev, buf, Envelope(queue_id="4ABCDEF0123", sender="<a@example.net>",
                                      recipients=["<b@example.org>"]),
                     cfg.policy.tag_only)
        [record] = caplog.records
        assert (record.levelname, record.getMessage()) == (level, shown)
        if "fallback=" in shown:  # Bayes answers only after spamd's share has run out
            assert int(field(shown, "ms")) >= defaults.SPAMD_SHARE * CAP * 1000, shown


def man_keys() -> str:
    """The `.B "key = default"` lines of spambridge.toml(5), under their sections, as TOML."""
    out = []
    for line in MAN5.read_text().splitlines():
        if m := re.fullmatch(r"\.SS (\[\w+\])", line):
            out.append(m.group(1))
        elif m := re.fullmatch(r'\.B "(\w+ = .*)"', line):
            out.append(m.group(1).replace("\\(dq", '"').replace("\\-", "-"))
    return "\n".join(out) + "\n"


def test_the_man_page_shows_every_key_with_the_loaders_default(tmp_path: Path) -> None:
    """spambridge.toml(5) lists each key as `key = default`: all of them, as the loader takes
    them (the example file is held to the same in test_toml_example.py)."""
    from test_toml_example import example_keys

    p = tmp_path / "man.toml"
    p.write_text(man_keys())
    assert replace(config.load(p), source="<defaults>") == config.load(None)
    keys, section = set(), ""
    for line in man_keys().splitlines():
        if m := re.fullmatch(r"\[(\w+)\]", line):
            section = m.group(1)
        else:
            keys.add((section, line.split(" = ")[0]))
    assert keys == example_keys()


def toml_snippets() -> list[tuple[str, str]]:
    """(where, text) of each config file the docs tell an admin to write."""
    out = []
    readme = README.read_text()
    for n, block in enumerate(re.findall(r"```toml\n(.*?)```", readme, re.S)):
        out.append((f"README.md toml block {n + 1}", re.sub(r"^ {3}", "", block, flags=re.M)))
    man = MAN5.read_text()
    out.append(("spambridge.toml(5) EXAMPLE",
                man.split(".SH EXAMPLE\n.nf\n", 1)[1].split("\n.fi\n", 1)[0]))
    sendmail = (ROOT / "contrib" / "sendmail" / "README").read_text()
    block = re.search(r"\n\n( {7}\[milter\]\n.*?)\n\n", sendmail, re.S)
    assert block, "the Sendmail README's spambridge.toml lines are gone"
    out.append(("contrib/sendmail/README", re.sub(r"^ {7}", "", block.group(1), flags=re.M)))
    out.append(("packaging/spambridge.toml", (ROOT / "packaging" / "spambridge.toml").read_text()))
    return out


@pytest.mark.parametrize(("where", "text"), [pytest.param(w, t, id=w) for w, t in toml_snippets()])
def test_the_config_snippets_in_the_docs_load(tmp_path: Path, where: str, text: str) -> None:
    p = tmp_path / "spambridge.toml"
    p.write_text(text)
    assert config.load(p).source == str(p), where
    p.write_text(re.sub(r"^#(\w+ = )", r"\1", text, flags=re.M))  # "#tag_only = true  # ..."
    config.load(p)


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
    """Paths in this repository (spambridge/…, tests/…, contrib/…) that the docs name; what
    the commands shown write (bench/results/, the corpus in bench/.cache/) is not in the
    repository, nor in a clean checkout (CI's)."""
    missing = []
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        for path in set(re.findall(r"(?<![\w/.~:-])((?:spambridge|tests|bench|packaging|contrib|"
                                   r"docs|scripts)/[\w./-]*\w)", text)):
            if path.startswith(("bench/results/", "bench/.cache")) or (ROOT / path).exists():
                continue
            missing.append(f"{doc}: {path}")
    assert not missing


def test_every_engine_label_the_metrics_give_is_in_the_readme() -> None:
    """An admin's dashboards and alerts group by `engine` from the README's list: a value
    the milter gives that is not there (the `internal` of a bug, or of no memory to copy a
    message) is a series nobody expects, of mail that went unscanned."""
    from prometheus_client import CollectorRegistry

    from spambridge import metrics

    row = next(ln for ln in README.read_text().splitlines()
               if ln.startswith("| `spambridge_messages_total` |"))
    listed = set(re.search(r"`engine` \(([^)]*)\)", row).group(1).split(", "))  # type: ignore[union-attr]
    m = metrics.Metrics(CollectorRegistry())
    cfg = Config()
    buf = MessageBuffer(1 << 20, 1 << 18)
    outcomes: list[Outcome] = [
        ScoreResult("spamd", 1.0), ScoreResult("bayes", 0.5),
        ScanError(ErrorKind.OVERSIZE, "spamd+bayes"), ScanError(ErrorKind.TIMEOUT, "spamd+bayes"),
        ScanError(ErrorKind.ERROR, "spool", "spool_dir /var/tmp: full"),
        ScanError(ErrorKind.ERROR, "internal", "KeyError()"),  # callbacks: a bug
        ScanError(ErrorKind.ERROR, "internal", "MemoryError: no memory to copy"),  # pipeline
        Skipped(SkipReason.TRUSTED)]
    for out in outcomes:
        m.observe(Evaluation(decide(out, cfg.policy), out, 0.01), buf)
    given = {s.labels["engine"] for fam in m.registry.collect()
             if fam.name == "spambridge_messages" for s in fam.samples}
    assert given <= listed, given - listed


MAN8 = ROOT / "packaging" / "man" / "spambridge.8"
OPTION = re.compile(r"(?<![\w-])(--?[a-zA-Z][\w-]*)")
LONG = re.compile(r"(?<![\w-])(--[a-zA-Z][\w-]*)")


def cli_parsers() -> dict[str, argparse.ArgumentParser]:
    """The program's parser (under "") and each command's, as `spambridge` builds them."""
    parser = cli.build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {"": parser, **sub.choices}


def cli_actions(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Option string → its action; -h/--help left out (argparse's own, not in the man page)."""
    return {o: a for a in p._actions if not isinstance(a, argparse._HelpAction)
            for o in a.option_strings}


def roff(line: str) -> str:
    """One line of spambridge(8) as the reader sees it: font macros' arguments joined as
    groff joins them (.BR and the like without spaces), escapes and font changes undone."""
    if m := re.fullmatch(r"\.([BIR][BIR]|B|I)(?: (.*))?", line):
        args = [q or w for q, w in re.findall(r'"([^"]*)"|(\S+)', m.group(2) or "")]
        line = (" " if len(m.group(1)) == 1 else "").join(args)
    elif line.startswith("."):
        return ""
    line = re.sub(r"\\f[BIRP]", "", line)
    return (line.replace("\\-", "-").replace("\\(em", "\u2014").replace("\\(dq", '"')
            .replace("\\e", "\\"))


def man8() -> list[tuple[str, str, str, str]]:
    """(section, subsection, tag, body) of each .TP item of spambridge(8), and of each run of
    other text (tag ""), as plain text: one item per line of the SYNOPSIS (up to .br)."""
    items: list[tuple[str, str, str, str]] = []
    sh = ss = tag = ""
    body: list[str] = []
    want_tag = False

    def flush() -> None:
        if tag or body:
            items.append((sh, ss, tag, " ".join(b for b in body if b)))

    for line in MAN8.read_text().splitlines():
        if m := re.fullmatch(r"\.(SH|SS|TP|PP|br)(?: (.*))?", line):
            flush()
            tag, body = "", []
            if m.group(1) == "SH":
                sh, ss = m.group(2), ""
            elif m.group(1) == "SS":
                ss = m.group(2).replace("\\-", "-")
            want_tag = m.group(1) == "TP"
        elif want_tag:
            tag, want_tag = roff(line), False
        else:
            body.append(roff(line))
    flush()
    return items


def man_commands() -> list[str]:
    return [tag for sh, _, tag, _ in man8() if sh == "COMMANDS" and tag]


def man_owners(ss: str, body: str) -> set[str]:
    """The commands an item of OPTIONS is about: its `.SS COMMAND options`, or run and
    check-config (which takes run's options) and those its text says it is "also taken by"."""
    if ss:
        return {ss.removesuffix(" options")}
    said = " ".join(re.findall(r"taken by ([^.;]*)", body))
    if "every command" in said:
        return set(man_commands())
    return {"run", "check-config"} | {c for c in man_commands()
                                       if re.search(rf"(?<![\w-]){c}(?![\w-])", said)}


def man_synopsis() -> dict[str, list[str]]:
    """Each synopsis line after `spambridge` (a command, or "" for the program's own), by
    what it starts with."""
    out: dict[str, list[str]] = {}
    for sh, _, _, body in man8():
        if sh == "SYNOPSIS" and (m := re.fullmatch(r"spambridge ((?:[a-z][\w-]*)?)(.*)", body)):
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


def man_options() -> dict[str, set[str]]:
    """Each command's options as spambridge(8) documents them: the .TP tags of OPTIONS, under
    the commands they belong to; the program's own (--version) are the ones its synopsis
    gives bare `spambridge`."""
    own = set(OPTION.findall(" ".join(man_synopsis().get("", []))))
    out: dict[str, set[str]] = {c: set() for c in ["", *man_commands()]}
    for sh, ss, tag, body in man8():
        if sh == "OPTIONS" and tag:
            opts = set(OPTION.findall(tag))
            for c in {""} if opts <= own else man_owners(ss, body):
                out.setdefault(c, set()).update(opts)
    return out


def test_the_man_page_documents_every_command() -> None:
    """COMMANDS describes each command `spambridge` has, and no other."""
    assert sorted(man_commands()) == sorted(c for c in cli_parsers() if c)


def test_the_man_page_documents_each_commands_options() -> None:
    """spambridge(8)'s OPTIONS list what each command takes (run's options, said to be "also
    taken by" the others that take them, then a section per command): every option a command
    takes, and none it does not (a renamed or removed flag, or one said of the wrong
    command, fails at once with `unrecognized arguments`)."""
    documented = man_options()
    diff = {}
    for name, p in cli_parsers().items():
        takes = set(cli_actions(p))
        if takes != documented.get(name):
            diff[name or "spambridge"] = {
                "undocumented": sorted(takes - documented.get(name, set())),
                "not taken": sorted(documented.get(name, set()) - takes)}
    assert not diff


def test_the_man_page_names_only_options_the_command_takes() -> None:
    """The options the text names (the synopsis, a command's description, an option's, or
    anywhere else for some command) are ones it takes; a synopsis without `[options]` gives
    them all."""
    parsers = cli_parsers()
    takes = {c: set(cli_actions(p)) for c, p in parsers.items()}
    wrong = []
    for c, lines in man_synopsis().items():
        named = set(OPTION.findall(" ".join(lines)))
        if "run's options" in " ".join(lines):
            named |= takes["run"]
        wrong += [f"SYNOPSIS {c}: {o}" for o in sorted(named - takes.get(c, set()))]
        if not any("options" in line for line in lines):  # all of them, in one form or another
            wrong += [f"SYNOPSIS {c}: {a.option_strings[-1]} not shown"
                      for a in set(cli_actions(parsers[c]).values())
                      if not named & set(a.option_strings)]
    for sh, ss, tag, body in man8():
        if sh in ("SYNOPSIS", "EXAMPLES"):  # EXAMPLES: command lines, as the docs' below
            continue
        if sh == "COMMANDS" and tag:
            owners = {tag}
        elif sh == "OPTIONS" and tag and not set(OPTION.findall(tag)) <= takes[""]:
            owners = man_owners(ss, body)
        else:
            owners = set(takes)  # some command
        for o in set(LONG.findall(body)):
            if not any(o in takes.get(c, set()) for c in owners):
                wrong.append(f"{sh} {tag or body[:30]!r}: {o} ({', '.join(sorted(owners))})")
    assert not wrong


def help_default(text: str) -> str | None:
    """The built-in default a help text or the man page gives ("default: [milter] engine,
    else bayes" → bayes), or the config key it comes from when there is none."""
    m = re.search(r"default: ([^;)]*)", " ".join(text.split()))
    return re.split(r",? (?:else|or) ", m.group(1))[-1].split(", ")[0].strip() if m else None


def test_the_man_page_gives_the_defaults_the_help_gives() -> None:
    """An option whose --help gives a default has the same one in spambridge(8); one with a
    default of its own (not the config's), the value it has."""
    parsers = cli_parsers()
    actions = {o: a for p in parsers.values() for o, a in cli_actions(p).items()}
    wrong = []
    for sh, _, tag, body in man8():
        if sh != "OPTIONS" or not tag:
            continue
        tagged = list(dict.fromkeys(actions[o] for o in OPTION.findall(tag) if o in actions))
        shown = help_default(body)
        values: list[str | None] = [*shown.split(" and ")] if shown else []
        if len(values) != len(tagged):  # "else 5 and 15" of --tag-at and --reject-at
            values = [shown] * len(tagged)
        for action, value in zip(tagged, values, strict=True):
            name = action.option_strings[-1]
            if value != help_default(action.help or ""):
                wrong.append(f"{name}: man {value!r}, --help {help_default(action.help or '')!r}")
            if action.default not in (None, False, "") and value is not None and (
                    action.type(value) if callable(action.type) else value) != action.default:
                wrong.append(f"{name}: man {value!r}, default {action.default!r}")
    assert not wrong


DOC_COMMANDS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob(
    "*.md")), "contrib/dovecot/README.md", "contrib/sendmail/README",
    "contrib/postfix/main.cf.example", "contrib/dovecot/sieve/spambridge-learn-ham.sh",
    "contrib/dovecot/sieve/spambridge-learn-spam.sh", "packaging/systemd/spambridge.service",
    "packaging/spambridge.toml", "packaging/man/spambridge.8", "packaging/man/spambridge.toml.5"]


def command_texts(doc: str, commands: list[str]) -> list[str]:
    """The code a doc shows: of Markdown, the fenced blocks' lines (a line ending in `\\`
    joined to the next) and the inline code (`train --spam -` is `spambridge train --spam -`);
    of a man page, its text; of others, each line."""
    text = (ROOT / doc).read_text()
    if doc.endswith(".md"):
        blocks = re.findall(r"^ *```[^\n]*\n(.*?)^ *```", text, re.S | re.M)
        prose = re.sub(r"^ *```[^\n]*\n.*?^ *```", "", text, flags=re.S | re.M)
        inline = re.findall(r"`([^`\n]+)`", prose)
        return ([ln for b in blocks for ln in b.replace("\\\n", " ").splitlines()]
                + [re.sub(rf"^(?=(?:{'|'.join(commands)})\s)", "spambridge ", c) for c in inline])
    if "/man/" in doc:
        return [roff(ln) for ln in text.replace("\\\\\n", " ").splitlines()]
    return text.replace("\\\n", " ").splitlines()


def doc_command_flags(text: str) -> list[tuple[str, str]]:
    """(command, flag) of each `spambridge COMMAND ... --flag` in a command line, up to where
    the shell would end that command (; | && # < > or a comment)."""
    out = []
    for m in re.finditer(r"(?<![\w-])spambridge(?=\s+([a-z][\w-]*)(?:\s|$))", text):
        rest = re.split(r";|\s\|\|?\s|&&|\s#|\s[<>]|\s2>", text[m.end():], maxsplit=1)[0]
        out += [(m.group(1), flag) for flag in OPTION.findall(rest)]
    return out


def test_the_commands_the_docs_show_take_the_flags_they_are_given() -> None:
    """A command line an admin copies from the docs (README, docs/, contrib/, the unit, the
    man pages) names only flags that command takes."""
    parsers = cli_parsers()
    wrong, seen = [], 0
    for doc in DOC_COMMANDS:
        for text in command_texts(doc, [c for c in parsers if c]):
            for command, flag in doc_command_flags(text):
                if command not in parsers:
                    continue  # prose: "spambridge adds --", not a command line
                seen += 1
                if flag not in {"-h", "--help", *cli_actions(parsers[command])}:
                    wrong.append(f"{doc}: spambridge {command} {flag}")
    assert seen > 30  # the extraction still finds the docs' command lines
    assert not wrong
