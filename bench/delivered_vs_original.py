"""Is a message the milter delivered learned by `train` as the message that came? A differential
over the SpamAssassin corpus through a real Postfix with the real milter in front.

Not a test (no assertions): it counts. Run as root (a throwaway Postfix, tests/postfix_instance.py)
from the repository root:

    .venv/bin/python bench/delivered_vs_original.py [--sample N] [--variants K] [--port 40300]
                                                    [--show 3]

1. A Bayes database is trained with `spambridge train` on the corpus' 80 % split
   (bench/bayes_accuracy.py), spam then ham, as an admin would.
2. Every message (or a deterministic sample of N, by a hash of its file name), its mbox
   "From " line taken off, is sent over SMTP twice: once with no milter (`smtpd_milters =`),
   once with `spambridge run` in front (`engine = "bayes"`, `[policy] subject_tag = "[SPAM]"`,
   `tag_only = true`: everything is delivered, spam tagged). Delivered copies are read from
   the instance's Maildir and matched by the queue id in Postfix's Received line.
3. For each message, what `train` does with the copy the milter saw (normalise.stripped with
   the tag, normalise.keys, tokenizer.tokenize) is compared with what it does with:
   * "unfiltered": the copy Postfix delivered without the milter, with the delivery lines on
     top (Return-Path, Delivered-To, Postfix's Received line, which differ between the two
     deliveries by queue id and time only) swapped for the milter copy's own. This is the
     milter's markup alone: every difference here is a cause.
   * "sent": the bytes sent, under the milter copy's delivery lines. Differences here that
     the unfiltered copy shares are Postfix's own rewriting, counted apart: it drops a
     Return-Path the sender wrote (message_drop_headers), and qualifies bare addresses in
     From/To/Reply-To for a local client (local_header_rewrite_clients: 127.0.0.1 is one).
   Key and token-set mismatches are counted by cause (which header field, or the body, tells
   the two apart), with `--show` examples each. A field Postfix adds to a message that came
   without it (Message-Id, Date: cleanup's, different on each delivery) is the milter copy's
   in the unfiltered one too.
4. `--variants K`: the corpus' Subjects are nearly all "Subject: text"; K spam messages of the
   sample are also sent once per Subject form of VARIANTS (a tab or no blank after the colon,
   a fold first, control characters, a lowercase name, ...), each counted apart.

`train` keyed the delivery lines until late on 2026-11-28, so the same message delivered
twice, or delivered and kept as sent, was two messages to it; it now leaves trace fields out
of the key, and the report's "keyed with the delivery lines" says 0 (the figures below are
from before).

On 2026-11-28 (Postfix 3.7.11, all 6,046 messages and --variants 50, 2 cores, about 1 min):
1,877 flagged spam, 1,850 of them tagged (27 have 8-bit Subjects that are not UTF-8, left as
they came); the milter copy and the unfiltered copy had the same key and token set for every
one of the 6,046, and the milter copy's tokens were the ones the milter scored for all 6,046
(Postfix's Received line, which train learns, is the one the milter rebuilds). Against the
bytes sent, 5,830 keys differed, all by Postfix's own rewriting (5,787 the dropped
Return-Path alone; 43 token sets by the qualified addresses). Of the variants, before the
fixes of that day a lowercase or uppercase name (key and tokens) and a tab, no blank, two
blanks or a fold after the colon (key) differed every time; after them, what still differs
is by design: control characters the milter makes blanks in a Subject it rewrites (key and
tokens), a line over 990 octets it folds (key), a Subject opening with the tag already
(docs/bayes.md) and an X-Spam-Prev-Subject, which train trusts on the mail as it came and the
milter removes as forged (key and tokens).

Late on 2026-11-28, with the key that leaves trace fields out (all 6,046, 1 min 17 s): the
same 1,877 / 1,850; milter copy and unfiltered copy the same key and tokens for all 6,046;
"keyed with the delivery lines" 0 of 6,046 (every copy before); against the bytes sent, 50
keys differ instead of 5,830: the 43 whose addresses Postfix qualified (tokens too), and 7
whose body holds a bare CR, which the SMTP client (smtplib) sent as a line end.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bayes_accuracy import DATA, fetch_corpus, split  # noqa: E402
from milterload import MilterProcess  # noqa: E402
from postfix_instance import PostfixInstance, destroy, make_instance  # noqa: E402

from spambridge.bayes.tokenizer import DEFAULT_LIMITS, tokenize  # noqa: E402
from spambridge.message import Envelope  # noqa: E402
from spambridge.train.normalise import keys, stripped  # noqa: E402

TAG = "[SPAM]"
SENDER = "alice@example.net"
RCPT = "bob@test.example"
_QID = re.compile(rb"\A(?:.*\n)*?Received: from [^\n]*\n\tby mx\.test\.example \(Postfix\) "
                  rb"with E?SMTP id ([0-9A-Za-z]+)")
# a header field with its folded lines
_FIELD = re.compile(rb"([^:\n]*):[^\n]*(?:\n[ \t][^\n]*)*\n?")


# Subject forms the corpus lacks (its tagged spam all read "Subject: text"): what the variant
# pass puts in place of a spam message's Subject field
VARIANTS: dict[str, bytes] = {
    "two-blanks": b"Subject:  Special offer for you",
    "tab": b"Subject:\tSpecial offer for you",
    "no-blank": b"Subject:Special offer for you",
    "fold-first": b"Subject:\n Special offer for you",
    "fold-inside": b"Subject: Special offer\n\tfor you",
    "blanks-only": b"Subject:   ",
    "trailing-blanks": b"Subject: Special offer for you  ",
    "lowercase-name": b"subject: Special offer for you",
    "uppercase-name": b"SUBJECT: Special offer for you",
    "control-c0": b"Subject: Special\x07offer\x0cfor you",
    "control-del": b"Subject: Special\x7foffer for you",
    "control-c1": "Subject: Special\u0085offer for you".encode(),
    "long-line": b"Subject: " + b" ".join(b"w%d" % i for i in range(300)),
    "encoded-word": b"Subject: =?UTF-8?Q?Sp=C3=A9cial_offer?= for you",
    "latin-1": b"Subject: Sp\xe9cial offer for you",
    "two-subjects": b"Subject: Special offer\nSubject: for you",
    "tag-already": b"Subject: [SPAM] Special offer for you",
    "prev-subject": b"Subject: *****SPAM***** Special offer\nX-Spam-Prev-Subject: Special offer",
}
_SUBJECT_FIELD = re.compile(rb"(?im)^subject[ \t]*:.*(?:\n[ \t].*)*$")


@dataclass
class Sent:
    name: str  # the corpus file, relative to DATA (and the variant's name)
    spam: bool
    raw: bytes  # as it went into DATA (LF line ends; smtplib writes CRLF)
    variant: str = ""


@dataclass
class Learned:
    msg: bytes  # what train learns and keys (normalise.stripped)
    key: bytes
    tokens: frozenset[str]


@dataclass
class Tally:
    """Mismatches of one comparison, by cause; `examples` keeps a few corpus names each."""

    compared: int = 0
    key: Counter[str] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, name: str, a: Learned, b: Learned, shown: int, why: str = "") -> None:
        """Count a mismatch of `a` and `b` under `why`, or under what tells them apart."""
        self.compared += 1
        if a.key == b.key and a.tokens == b.tokens:
            return
        why = why or cause(a.msg, b.msg)
        if a.key != b.key:
            self.key[why] += 1
        if a.tokens != b.tokens:
            self.tokens[why] += 1
        got = self.examples.setdefault(why, [])
        if len(got) < shown:
            got.append(name)


def corpus(sample: int) -> list[Sent]:
    """The corpus, in a fixed order by a hash of the file names; the first `sample` (0: all)."""
    paths = sorted(DATA.glob("*/*.txt"), key=lambda p: hashlib.sha256(p.name.encode()).digest())
    out = []
    for p in paths[: sample or None]:
        data = p.read_bytes().replace(b"\r\n", b"\n")
        if data.startswith(b"From "):  # the mbox line is no part of what an MTA is sent
            data = data.partition(b"\n")[2]
        out.append(Sent(str(p.relative_to(DATA)), p.parent.name.startswith("spam"), data))
    return out


def variants(msgs: list[Sent], k: int) -> list[Sent]:
    """The first `k` spam messages of `msgs`, each once per VARIANTS Subject."""
    out = []
    for m in [m for m in msgs if m.spam][:k]:
        head, sep, body = m.raw.partition(b"\n\n")
        head = _SUBJECT_FIELD.sub(b"", head).replace(b"\n\n", b"\n").strip(b"\n")
        for kind, subject in VARIANTS.items():
            out.append(Sent(f"{m.name} [{kind}]", True, head + b"\n" + subject + sep + body,
                            kind))
    return out


def train_database(db: Path, work: Path) -> None:
    """`spambridge train` on the 80 % split: its spam, then its ham (an index in that order)."""
    train, _ = split()
    index = work / "train.idx"
    index.write_text("".join(f"{'spam' if m.spam else 'ham'} {m.path}\n"
                             for m in sorted(train, key=lambda m: not m.spam)))
    subprocess.run([sys.executable, "-m", "spambridge", "train", "--db", str(db), "-q",
                    "--index", str(index)], check=True, cwd=ROOT, stdin=subprocess.DEVNULL)


def send_all(pf: PostfixInstance, msgs: list[Sent], threads: int = 2) -> dict[str, int]:
    """Each message over its own SMTP session; queue id → index. A refused one is said."""
    qids: dict[str, int] = {}
    lock = threading.Lock()
    todo: Iterator[int] = iter(range(len(msgs)))

    def worker() -> None:
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            try:
                with smtplib.SMTP("127.0.0.1", pf.port, local_hostname="client.example.net",
                                  timeout=120) as s:
                    s.ehlo()
                    s.mail(SENDER)
                    s.rcpt(RCPT)
                    _, text = s.data(msgs[i].raw)
                qid = text.decode().rsplit(" ", 1)[-1]
                with lock:
                    if qid in qids:
                        print(f"  queue id {qid} given twice", file=sys.stderr)
                    qids[qid] = i
            except (smtplib.SMTPException, OSError) as e:
                print(f"  {msgs[i].name}: not sent: {e}", file=sys.stderr)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return qids


def collect(pf: PostfixInstance, qids: dict[str, int], timeout: float) -> dict[int, bytes]:
    """The delivered copies of `qids` (index → bytes), waiting for them up to `timeout`."""
    new = pf.mail / "inbox" / "new"
    got: dict[int, bytes] = {}
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(got) < len(qids) and time.monotonic() < deadline:
        for p in new.iterdir() if new.is_dir() else ():
            if p.name in seen:
                continue
            seen.add(p.name)
            raw = p.read_bytes()
            m = _QID.match(raw)
            if m and m[1].decode() in qids:
                got[qids[m[1].decode()]] = raw
        if len(got) < len(qids):
            time.sleep(1)
    if len(got) < len(qids):
        print(f"  {len(qids) - len(got)} not delivered within {timeout:.0f}s", file=sys.stderr)
    for p in new.iterdir():  # the next pass finds its own alone
        p.unlink()
    return got


def split_delivery(raw: bytes) -> tuple[bytes, bytes]:
    """(the lines delivery put on top: Return-Path, Delivered-To and Postfix's Received, the
    rest of the message)."""
    m = _QID.match(raw)
    assert m is not None
    end = raw.find(b"\n", m.end())
    while raw[end + 1:end + 2] in (b" ", b"\t"):  # the Received field's folded lines
        end = raw.find(b"\n", end + 1)
    return raw[: end + 1], raw[end + 1:]


def unfiltered(top: bytes, rest: bytes, plain_rest: bytes, sent: bytes) -> bytes:
    """The unfiltered copy under the milter copy's delivery lines, with the milter copy's
    value of each field Postfix added to a message that came without it (its Message-Id and
    Date name the queue id and the time)."""
    names = {n for n, _ in fields(sent)[0]}
    mine = dict(fields(rest)[0])
    head, sep, body = plain_rest.partition(b"\n\n")
    out = []
    for name, whole in fields(head + b"\n")[0]:
        if name not in names and name in mine and name in (b"message-id", b"date"):
            whole = mine[name]
        out.append(whole)
    return top + b"".join(out).rstrip(b"\n") + sep + body


def scored(qid: str, plain_rest: bytes) -> frozenset[str]:
    """The tokens the milter scored: the message as Postfix passed it (the unfiltered copy
    without the delivery lines), under the Received line the milter rebuilds for Postfix's
    own (Postfix hides that one from milters) from what Postfix told it."""
    env = Envelope(client_name="localhost", client_addr="127.0.0.1", helo="client.example.net",
                   mta_host="mx.test.example", sender=SENDER, recipients=[RCPT], rcpt_count=1,
                   queue_id=qid)
    live = env.received_header() + plain_rest.replace(b"\n", b"\r\n")
    return frozenset(tokenize(live, DEFAULT_LIMITS))


def why_untagged(sent: bytes) -> str:
    """Why the milter would leave a flagged message's Subject as it came (headers.py)."""
    m = _SUBJECT_FIELD.search(sent.partition(b"\n\n")[0])
    if m is None:
        return "without a Subject (?)"
    try:
        m[0].decode("utf-8")
    except UnicodeDecodeError:
        return "with an 8-bit Subject that is not UTF-8"
    return "with a Subject tagged already" if TAG.encode() in m[0] else "for another reason"


def learned(raw: bytes) -> Learned:
    """What `train` (with the milter's subject_tag) keys and learns of `raw`."""
    msg, _ = stripped(raw, TAG.encode(), True)
    return Learned(msg, keys(msg)[0], frozenset(tokenize(msg, DEFAULT_LIMITS)))


def fields(msg: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(header fields as (lower name, whole field), body)."""
    head, _, body = msg.partition(b"\n\n")
    return [(m[1].strip().lower(), m[0]) for m in _FIELD.finditer(head + b"\n") if m[0]], body


def cause(a: bytes, b: bytes) -> str:
    """What tells two normalised messages apart: "header:<name>" for the first field that
    differs (a field only one has, or a different value), "order" if the same fields stand in
    another order, "body", or "same" (the bytes are equal: a difference of tokens alone)."""
    if a == b:
        return "same bytes"
    fa, body_a = fields(a)
    fb, body_b = fields(b)
    ca, cb = Counter(fa), Counter(fb)
    differing = sorted({n for n, _ in (ca - cb) + (cb - ca)})
    if differing:
        return "header:" + ",".join(n.decode("latin-1") for n in differing)
    if fa != fb:
        return "header order"
    return "body" if body_a != body_b else "other"


def report(title: str, t: Tally) -> None:
    print(f"{title}: {t.compared} compared; key differs for {sum(t.key.values())}, "
          f"token set for {sum(t.tokens.values())}")
    for why in sorted(set(t.key) | set(t.tokens), key=lambda w: -(t.key[w] + t.tokens[w])):
        print(f"  {why}: key {t.key[why]}, tokens {t.tokens[why]}   e.g. "
              f"{', '.join(t.examples.get(why, []))}")


def run_pass(pf: PostfixInstance, msgs: list[Sent], label: str, timeout: float
             ) -> dict[int, bytes]:
    start = time.monotonic()
    qids = send_all(pf, msgs)
    got = collect(pf, qids, timeout)
    print(f"{label}: {len(qids)} sent, {len(got)} delivered in "
          f"{time.monotonic() - start:.0f}s", flush=True)
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sample", type=int, default=0, help="messages (0: all 6,046)")
    ap.add_argument("--port", type=int, default=40300, help="Postfix's smtpd on 127.0.0.1")
    ap.add_argument("--variants", type=int, default=0,
                    help="spam messages also sent with each VARIANTS Subject")
    ap.add_argument("--show", type=int, default=3, help="example names per cause")
    ap.add_argument("--timeout", type=float, default=600, help="seconds to wait for delivery")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    fetch_corpus()
    msgs = corpus(args.sample)
    msgs += variants(msgs, args.variants)
    work = Path(tempfile.mkdtemp(prefix="sb-delivered-"))
    db = work / "bayes.sqlite"
    pf: PostfixInstance | None = None
    milter: MilterProcess | None = None
    try:
        t0 = time.monotonic()
        train_database(db, work)
        print(f"trained {db} in {time.monotonic() - t0:.0f}s; {len(msgs)} messages to "
              "deliver", flush=True)
        pf = make_instance(args.port)
        # short queue ids come back once a message has left the queue: two of one pass, or of
        # the two, could share one
        pf.postconf("-e", "enable_long_queue_ids=yes")
        pf.postfix("reload")
        with pf.main_cf(smtpd_milters=""):
            plain = run_pass(pf, msgs, "without the milter", args.timeout)
        milter = MilterProcess.start(work / "milter", {
            "milter": {"socket": f"unix:{pf.milter_socket}", "engine": "bayes"},
            "bayes": {"db": str(db)},
            "policy": {"subject_tag": TAG, "tag_only": True},
        }, str(pf.milter_socket))
        filtered = run_pass(pf, msgs, "with the milter", args.timeout)
    finally:
        if milter is not None:
            milter.stop()
        if args.keep:
            if pf is not None:
                pf.stop()
            print(f"kept {work} and {pf.base if pf else ''}")
        else:
            if pf is not None:
                destroy(pf)
            shutil.rmtree(work, ignore_errors=True)

    summarise(msgs, plain, filtered, args.show)
    return 0


def summarise(msgs: list[Sent], plain: dict[int, bytes], filtered: dict[int, bytes],
              shown: int) -> None:
    by_milter, vs_sent, postfix_own = Tally(), Tally(), Tally()
    by_variant: dict[str, Tally] = {kind: Tally() for kind in VARIANTS}
    tagged = flagged = delivery_keyed = corpus_delivered = 0
    live: Counter[str] = Counter()  # tokens train learns that the milter did not score, …
    untagged: Counter[str] = Counter()
    for i, raw in sorted(filtered.items()):
        if i not in plain:
            continue
        sent = msgs[i]
        top, rest = split_delivery(raw)
        b = learned(raw)
        plain_rest = split_delivery(plain[i])[1]
        a = learned(unfiltered(top, rest, plain_rest, sent.raw))
        if sent.variant:
            if b"\nX-Spam-Flag: YES\n" in rest.partition(b"\n\n")[0] + b"\n":
                by_variant[sent.variant].add(sent.name, a, b, shown)
            continue
        corpus_delivered += 1
        head = rest.partition(b"\n\n")[0] + b"\n"
        flag = b"\nX-Spam-Flag: YES\n" in head
        tag = re.search(rb"(?im)^subject: \[SPAM\]", head) is not None
        flagged += flag
        tagged += tag
        if flag and not tag:
            untagged[why_untagged(sent.raw)] += 1
        by_milter.add(sent.name, a, b, shown)
        s = learned(top + sent.raw)
        vs_sent.add(sent.name, s, b, shown)
        postfix_own.add(sent.name, s, a, shown)
        delivery_keyed += learned(rest).key != b.key
        qid = _QID.match(raw)
        assert qid is not None
        seen = scored(qid[1].decode(), plain_rest)
        live["messages"] += 1
        live["same"] += seen == b.tokens
        live.update(f"learned, not scored: {t}" for t in b.tokens - seen)
        live.update(f"scored, not learned: {t}" for t in seen - b.tokens)
    print(f"\n{corpus_delivered} corpus messages delivered through the milter ({flagged} "
          f"flagged spam, {tagged} with the tag on their Subject)")
    print("flagged, not tagged: " + (", ".join(f"{n} {why}" for why, n in untagged.items())
                                     or "none") + "\n")
    report("milter copy vs unfiltered copy (the milter's markup)", by_milter)
    report("milter copy vs sent (the markup and Postfix's own rewriting)", vs_sent)
    report("  unfiltered copy vs sent (Postfix's own rewriting)", postfix_own)
    print(f"\nkeyed with the delivery lines: {delivery_keyed} of {corpus_delivered} copies have "
          "another key without them (train leaves trace fields out of the key: 0 expected)")
    print(f"\nthe milter copy's tokens are the ones the milter scored (under its rebuilt "
          f"Received line) for {live['same']} of {live['messages']}")
    for what, n in sorted(live.items(), key=lambda kv: -kv[1]):
        if what not in ("messages", "same"):
            print(f"  {what}: {n}")
    if any(t.compared for t in by_variant.values()):
        print("\nSubject variants flagged spam, milter copy vs unfiltered copy:")
        for kind, t in by_variant.items():
            causes = sorted(set(t.key) | set(t.tokens))
            print(f"  {kind}: {t.compared} compared; key differs for {sum(t.key.values())}, "
                  f"token set for {sum(t.tokens.values())}"
                  + (f" ({', '.join(causes)})" if causes else ""))

if __name__ == "__main__":
    raise SystemExit(main())
