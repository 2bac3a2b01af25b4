"""`spambridge check` against the running milter, message by message: a differential review.

Not a test (no assertions): it prints how many messages differ, in what, and a few examples.
Run from the repository root:

    .venv/bin/python bench/check_vs_milter.py [--hostile 300] [--limit N] [--configs A,B]
                                              [--keep DIR]

About a minute and a half on two cores for all of it (--keep DIR keeps the work files and
the trained database, which a later run with the same DIR reuses).

The docs say `check FILE` (and `check --batch`) puts a message through the milter's own
decision path; an admin uses it to learn why the milter did something. So a Bayes database is
trained (`spambridge train --index`) on the 80 % split of the SpamAssassin corpus (see
bench/bayes_accuracy.py, which fetches it), and for each config below the real `spambridge run`
gets each message of the 20 % test split (and `--hostile` messages from tests/hostile.py's
generators, fixed seed) over its unix socket, as Postfix would send it (no mbox "From " line,
no Return-Path: Postfix drops it; the body with CRLF). The same config file then runs `check`
and `check --batch` on three files per message:

- `file`: the file as it is. The milter's Received line is made from the connection, which a
  file does not have; `check` writes `from unknown` on a message not yet delivered and nothing
  on one with a Return-Path (a mailbox file holds the MTA's own line, and `check` goes by it:
  here it is another site's): the Bayes engine mines Received lines, so these scores may
  differ from the milter's, and so may what the milter decided from the client.
- `queued`: what Postfix would deliver had the milter changed nothing: Return-Path, the
  Received line the milter wrote for the scanner (Postfix's own, which the milter never sees),
  then the message. The engine reads the very bytes the milter's engine read (but X-Spam-*
  fields, which `check` takes for the milter's own on a delivered file, and which the Bayes
  engine does not read), so here any difference is a divergence.
- `delivered`: the same with the milter's changes applied (removals, X-Spam-* fields, the
  tagged Subject): the file an admin finds in a mailbox and runs `check` on to learn why it was
  tagged. Mail the milter refused is not delivered, and has no such file.

Compared per message: the verdict (band) of `--batch` and of the milter's log line, the action,
the score as printed (`score=` of `check`, X-Spam-Score and the log line's of the milter), the
SMTP reply (libmilter's %% undone, as the MTA does), the X-Spam-* fields added (names and
values), the Subject (new value, or left), and the names of the forged X-Spam-* fields removed.
Configs: the defaults with `subject_tag`; the same in tag-only mode; `spam_cutoff` 0.5 with
`reject_cutoff` 0.6, so that many messages are refused; and `max_scan_size` 4096, about the
median size, so that many messages are near the limit; and the client in `trusted_networks`,
so that the milter skips every message (a file not delivered yet says nothing of its client,
so `check` scores those). For `file`, each difference is counted apart for mailbox files (with
a Return-Path: `check` adds no Received line) and the others.
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bayes_accuracy import fetch_corpus, split  # noqa: E402
from milterclient import Result  # noqa: E402
from milterload import Delivery, MilterProcess, deliver, toml  # noqa: E402

from spambridge.message import Envelope, split_message  # noqa: E402

PYTHON = sys.executable
SENDER = "<sender@example.net>"
RCPT = "<user@test.example>"
CONFIGS: dict[str, dict[str, dict[str, object]]] = {
    "default": {},
    "tag-only": {"policy": {"tag_only": True}},
    "rejects": {"bayes": {"spam_cutoff": 0.5, "reject_cutoff": 0.6}},
    # about half the messages are near it: whether both count a message's size alike
    "small": {"milter": {"max_scan_size": 4096}},
    # MilterClient's client (192.0.2.10) is trusted: the milter skips every message
    "trusted": {"milter": {"trusted_networks": ["192.0.2.0/24"]}},
}
EXAMPLES = 3  # shown per kind of difference


@dataclass
class Message:
    name: str
    file: bytes  # as on disk
    mta: bytes  # what Postfix hands the milter (headers split from it, body)


@dataclass
class Said:
    """One message as `check` reported it (plain and --batch), or as the milter did it."""

    verdict: str = ""
    action: str = ""
    score: str = ""
    reply: str = ""
    added: list[tuple[str, str]] = field(default_factory=list)
    subject: str | None = None  # the new Subject; None: left as it is
    removed: list[str] = field(default_factory=list)  # names, sorted and unique
    left: int = 0  # forged X-Spam-* fields that stay
    mta: str = ""  # the milter's: what the MTA was told (accept, reject, tempfail)


# ------------------------------------------------------------------------------------------------
# the messages


def mta_view(data: bytes) -> bytes:
    """A file as Postfix would get it over SMTP: no mbox "From " line (the envelope), and no
    Return-Path (Postfix's message_drop_headers)."""
    data = data.replace(b"\r\n", b"\n")
    if data.startswith(b"From ") and b"\n" in data:
        data = data.split(b"\n", 1)[1]
    fields, body = split_message(data)
    # "Name: " and the value as split: split_message takes that one blank off again
    head = b"".join(n.encode("latin-1") + b": " + v + b"\n"
                    for n, v in fields if n.lower() != "return-path")
    return head + b"\n" + body


def hostile(n: int) -> list[Message]:
    """`n` messages from tests/hostile.py, the same ones every run (a fixed seed)."""
    if n <= 0:
        return []
    from hostile import as_file, as_postfix_sends, hostile_message
    from hypothesis import HealthCheck, given, seed, settings

    out: list[Message] = []

    @seed(20261201)
    @settings(max_examples=n, database=None, deadline=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(hostile_message())
    def collect(msg: tuple[list[tuple[str, bytes]], bytes]) -> None:
        if len(out) < n:
            headers, body = msg
            raw = as_file(as_postfix_sends(headers), body)
            out.append(Message(f"hostile-{len(out):04d}", raw, mta_view(raw)))

    collect()
    return out


def corpus(limit: int) -> list[Message]:
    _, test = split()
    msgs = test[:limit] if limit else test
    return [Message(m.path.name, data, mta_view(data))
            for m in msgs for data in [m.path.read_bytes()]]


def train(work: Path, cfg: Path) -> None:
    """The 80 % split, as an admin would teach it: one `train --index` run, spam first."""
    trainset, _ = split()
    index = work / "train.index"
    index.write_text("".join(f"{'spam' if m.spam else 'ham'} {m.path}\n"
                             for m in sorted(trainset, key=lambda m: not m.spam)))
    subprocess.run([PYTHON, "-m", "spambridge", "train", "-c", str(cfg), "-q", "--index",
                    str(index)], check=True, cwd=ROOT)


# ------------------------------------------------------------------------------------------------
# the milter's side


def received(qid: str) -> bytes:
    """The Received line the milter wrote for the scanner (MilterClient's connection), with
    LF line ends: what Postfix puts on top of the message it delivers."""
    env = Envelope(client_name="mail.example.net", client_addr="192.0.2.10",
                   helo="mail.example.net", mta_host="mx.test.example", sender=SENDER,
                   recipients=[RCPT], rcpt_count=1, queue_id=qid)
    return env.received_header().replace(b"\r\n", b"\n")


_LOG = re.compile(r"(?P<qid>Q\w+): from=\S* rcpts=\d+ size=\d+ engine=\S+ score=(?P<score>\S+) "
                  r"action=(?P<action>\w+)(?: would=\w+)? reason=(?P<reason>\S+)")


def milter_side(msgs: list[Message], proc: MilterProcess) -> list[tuple[Said, Result | None]]:
    """Each message over its own connection, two at a time, as Postfix sends it: the fields
    split from it, the body with CRLF line ends."""
    fields = [split_message(m.mta) for m in msgs]

    def one(i: int) -> Delivery:
        heads, body = fields[i]
        return deliver(proc.address, msgs[i].mta, index=i, timeout=60, sender=SENDER,
                       rcpts=(RCPT,), headers=heads,
                       body=body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))

    with ThreadPoolExecutor(max_workers=2) as pool:
        sent = list(pool.map(one, range(len(msgs))))
    logged = {m["qid"]: m for m in _LOG.finditer(proc.log)}
    out: list[tuple[Said, Result | None]] = []
    for i, (d, (heads, _)) in enumerate(zip(sent, fields, strict=True)):
        r = d.result
        line = logged.get(f"Q{i:08X}")
        s = Said()
        if line:
            s.verdict, s.score, s.action = line["reason"], line["score"], line["action"]
        if r is None:
            s.action = f"no reply: {d.error}"
            out.append((s, None))
            continue
        s.mta = r.action
        s.reply = (f"{r.smtp_code} {r.smtp_text.replace('%%', '%')}" if r.smtp_code
                   else "")
        s.added = [(n, v) for n, v in r.added if n != "Subject"]
        new = [v for n, _, v in r.changed if n == "Subject" and v]
        new += [v for n, v in r.added if n == "Subject"]
        s.subject = new[0] if new else None
        s.removed = sorted({n for n, _, v in r.changed if not v})
        if r.action in ("accept", "continue"):
            forged = sum(1 for n, _ in heads if n.lower().startswith("x-spam-"))
            s.left = forged - sum(1 for _, _, v in r.changed if not v)
        out.append((s, r))
    return out


def delivered(m: Message, qid: str, r: Result | None, changes: bool) -> bytes | None:
    """What Postfix would deliver: Return-Path, its Received line, the message, with the
    milter's changes (`changes`) or without."""
    top = b"Return-Path: " + SENDER.encode() + b"\n" + received(qid)
    if not changes:
        return top + m.mta
    if r is None or r.action not in ("accept", "continue"):
        return None
    heads, body = split_message(m.mta)
    seen: Counter[str] = Counter()
    kept: list[tuple[str, bytes]] = []
    gone = {(n.lower(), i) for n, i, v in r.changed if not v}
    subject = {i: v for n, i, v in r.changed if n.lower() == "subject" and v}
    for name, value in heads:
        seen[name.lower()] += 1
        if (name.lower(), seen[name.lower()]) in gone:
            continue
        if name.lower() == "subject" and seen["subject"] in subject:
            value = subject[seen["subject"]].encode("utf-8", "surrogateescape")
        kept.append((name, value))
    kept += [(n, v.encode("utf-8", "surrogateescape")) for n, v in r.added]
    head = b"".join(n.encode("latin-1") + b": " + v + b"\n" for n, v in kept)
    return top + head + b"\n" + body


# ------------------------------------------------------------------------------------------------
# check's side


def run_check(cfg: Path, paths: list[Path], batch: bool) -> str:
    out: list[str] = []
    for start in range(0, len(paths), 2000):  # well within ARG_MAX
        chunk = [str(p) for p in paths[start:start + 2000]]
        r = subprocess.run([PYTHON, "-m", "spambridge", "check", "-c", str(cfg),
                            *(["--batch"] if batch else []), *chunk],
                           capture_output=True, cwd=ROOT)
        out.append(r.stdout.decode("utf-8", "surrogateescape"))
    return "".join(out)


_HEAD = re.compile(r"^(?P<path>/\S+): score=(?P<score>\S+) engine=\S+ verdict=(?P<verdict>\S+) "
                   r"action=(?P<action>\w+)")


def parse_plain(text: str) -> dict[str, Said]:
    """check's report, per path (each block: the first line, then lines indented)."""
    said: dict[str, Said] = {}
    cur: Said | None = None
    in_added = False
    for line in text.split("\n"):
        if m := _HEAD.match(line):
            cur = said[m["path"]] = Said(m["verdict"], m["action"], m["score"])
            in_added = False
        elif cur is None:
            continue
        elif line.startswith("  SMTP reply: "):
            reply = line[len("  SMTP reply: "):]
            cur.reply = "" if reply.startswith("250 ") or reply == "451 (tempfail)" else reply
        elif line.startswith("  headers removed: "):
            cur.removed = line[len("  headers removed: "):].split(", ")
        elif line.startswith("  headers left: "):
            cur.left = int(line.split()[2])
        elif line.startswith("  Subject prefix: "):
            _, sep, new = line.partition("; the Subject becomes ")
            cur.subject = ast.literal_eval(new) if sep else None
        elif line == "  headers added:":
            in_added = True
        elif in_added and line.startswith("    "):
            name, _, value = line[4:].partition(": ")
            if value == "" and line.endswith(":"):
                name = name.rstrip(":")
            cur.added.append((name, value))
        elif in_added and line.startswith("\t") and cur.added:
            name, value = cur.added[-1]
            cur.added[-1] = (name, value + "\n" + line)
        else:
            in_added = False
    return said


def parse_batch(text: str) -> dict[str, tuple[str, str]]:
    out = {}
    for line in text.splitlines():
        path, score, verdict = line.split("\t")
        out[path] = (score, verdict)
    return out


# ------------------------------------------------------------------------------------------------
# comparing


def _has_return_path(data: bytes) -> bool:
    heads, _ = split_message(data.replace(b"\r\n", b"\n").partition(b"\n")[2]
                             if data.startswith(b"From ") else data.replace(b"\r\n", b"\n"))
    return any(n.lower() == "return-path" for n, _ in heads)


_MTA = {"accept": "accept", "tag": "accept", "reject": "reject", "tempfail": "tempfail"}


def _reason(verdict: str) -> str:
    """check's verdict as the log line's reason= gives it: "unchecked=oversize" is
    "oversize" there (the X-Spam-Status says "unchecked=oversize" in both)."""
    return verdict.partition("=")[2] if verdict.startswith(("unchecked=", "skipped=")) else (
        verdict)


def differences(milter: Said, check: Said, batch: tuple[str, str] | None, scope: str
                ) -> list[tuple[str, str]]:
    """(what, how) for each thing check says otherwise than the milter did. `scope`
    "queued" and "delivered" are files from a mailbox, whose X-Spam-* fields `check` takes
    for the milter's own: the fields removed are compared only where the milter removed
    none (in a real mailbox the forged ones are gone)."""
    diffs: list[tuple[str, str]] = []

    def differ(what: str, ours: object, theirs: object) -> None:
        if ours != theirs:
            diffs.append((what, f"milter {ours!r} / check {theirs!r}"))

    differ("verdict", milter.verdict, _reason(check.verdict))
    if batch is not None:
        differ("batch verdict", milter.verdict, _reason(batch[1]))
    differ("action", milter.action, check.action)
    if milter.mta:
        differ("MTA told", milter.mta, _MTA.get(check.action, check.action))
    differ("score", milter.score, check.score)
    flag = dict(milter.added).get("X-Spam-Score")
    if flag is not None:
        differ("X-Spam-Score vs check score", flag, check.score)
    differ("SMTP reply", milter.reply, check.reply)
    differ("headers added", milter.added, check.added)
    differ("Subject", milter.subject, check.subject)
    if scope == "file" or not (milter.removed or milter.left):
        differ("headers removed", milter.removed, check.removed)
        differ("headers left", milter.left, check.left)
    return diffs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hostile", type=int, default=300, help="hostile messages (default 300)")
    ap.add_argument("--limit", type=int, default=0, help="corpus test messages (0: all)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="which of: " +
                    ", ".join(CONFIGS))
    ap.add_argument("--keep", help="work in this directory and keep it (default: a temp dir)")
    args = ap.parse_args()
    fetch_corpus()
    work = Path(args.keep or tempfile.mkdtemp(prefix="check-vs-milter-"))
    work.mkdir(parents=True, exist_ok=True)
    db = work / "bayes.sqlite"
    base = {"milter": {"socket": f"unix:{work}/m.sock", "engine": "bayes"},
            "bayes": {"db": str(db)}, "policy": {"subject_tag": "[SPAM]"}}
    if not db.exists():
        t = time.monotonic()
        (work / "train.toml").write_text(toml(base))
        train(work, work / "train.toml")
        print(f"trained {db} in {time.monotonic() - t:.1f}s")
    msgs = corpus(args.limit) + hostile(args.hostile)
    print(f"{len(msgs)} messages ({len(msgs) - max(0, args.hostile)} corpus, "
          f"{max(0, args.hostile)} hostile)")
    total: Counter[tuple[str, str, str]] = Counter()
    for name in args.configs.split(","):
        sections = {k: dict(v) for k, v in base.items()}
        for k, v in CONFIGS[name].items():
            sections.setdefault(k, {}).update(v)
        here = work / name
        for sub in ("file", "queued", "delivered"):
            (here / sub).mkdir(parents=True, exist_ok=True)
        t = time.monotonic()
        proc = MilterProcess.start(here, sections, f"{work}/m.sock")
        try:
            done = milter_side(msgs, proc)
        finally:
            proc.stop()
        cfg = here / "spambridge.toml"
        files: dict[str, list[tuple[int, Path]]] = defaultdict(list)
        for i, (m, (_, r)) in enumerate(zip(msgs, done, strict=True)):
            qid = f"Q{i:08X}"
            for sub, data in (("file", m.file), ("queued", delivered(m, qid, r, False)),
                              ("delivered", delivered(m, qid, r, True))):
                if data is not None:
                    p = here / sub / f"{i:05d}.eml"
                    p.write_bytes(data)
                    files[sub].append((i, p))
        took = time.monotonic() - t
        print(f"\n== {name}: milter {took:.0f}s; actions "
              f"{dict(Counter(s.action for s, _ in done))}")
        for sub in ("file", "queued", "delivered"):
            t = time.monotonic()
            paths = [p for _, p in files[sub]]
            plain = parse_plain(run_check(cfg, paths, False))
            batch = parse_batch(run_check(cfg, paths, True))
            kinds: Counter[str] = Counter()
            shown: dict[str, list[str]] = defaultdict(list)
            differing = 0
            for i, p in files[sub]:
                c = plain.get(str(p))
                if c is None:
                    kinds["no check report"] += 1
                    continue
                diffs = differences(done[i][0], c, batch.get(str(p)), sub)
                if sub == "file":
                    group = "mailbox file" if _has_return_path(msgs[i].file) else "not delivered"
                    diffs = [(f"{what} [{group}]", how) for what, how in diffs]
                differing += bool(diffs)
                for what, how in diffs:
                    kinds[what] += 1
                    total[(name, sub, what)] += 1
                    if len(shown[what]) < EXAMPLES:
                        shown[what].append(f"{msgs[i].name} ({p}): {how}"[:400])
            print(f"  {sub}: {len(files[sub])} checked in {time.monotonic() - t:.0f}s, "
                  f"{differing} differ")
            for what, n in kinds.most_common():
                print(f"    {what}: {n}")
                for ex in shown[what]:
                    print(f"      {ex}")
    print("\nsummary (config, file kind, difference: messages)")
    for (name, sub, what), n in sorted(total.items()):
        print(f"  {name:9} {sub:9} {what}: {n}")
    if not total:
        print("  none")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
