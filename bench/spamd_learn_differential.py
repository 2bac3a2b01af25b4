"""`spambridge train --engine spamd` against `sa-learn` on the same mailboxes: does
SpamAssassin's Bayes end up the same? A differential; not a test (no assertions): it prints
the differences. Run as root from the repository root (spamd drops to debian-spamd):

    .venv/bin/python bench/spamd_learn_differential.py [--sample 300] [--port 15100]
                                                       [--corpus DIR] [--moved 20]

1. The messages: a deterministic sample of `--sample` spam and `--sample` ham of the
   SpamAssassin public corpus (bench/bayes_accuracy.py fetches it into bench/.cache), by a
   hash of the file name, plus hand-made hostile ones (HOSTILE: CRLF, trailing blank lines,
   no Message-Id nor Date, SpamAssassin's own markup and report_safe wrapper, a body "From "
   line, header only, 8-bit, one byte either side of the 500 KiB size limit).
2. Each layout (a Maildir per class, an mbox per class) gets a fresh spamd (--allow-tell, on
   127.0.0.1:`--port`) with a Bayes of its own (A) and a database of its own for sa-learn (B),
   the same SpamAssassin site config (`use_bayes 1`, `bayes_auto_learn 0`, `bayes_auto_expire
   0`, `bayes_path`). A: `spambridge train --engine spamd --spam|--ham`; B: `sa-learn
   --spam|--ham` (`--mbox` for the mbox). Then both again (a repeat must learn nothing), then
   sa-learn over the same mailboxes on a copy of A (a migration: what it learns again is
   another message to SpamAssassin), then `--moved` of the spam, from a Maildir of their own,
   learned as ham (a class move) in both.
3. After each step: `sa-learn --dump magic` (nspam, nham, ntokens) and `--dump data` (each
   token's spam and ham counts) of A and B, and their "seen" databases (the message ids
   SpamAssassin knows a learned message by: a message learned under another id by one tool is
   learned again by the other). Each message whose id differs is named, with why.

On 2026-11-28 (SpamAssassin 4.0.1; 300 + 300 + 12 hostile, about 8 minutes on 2 cores):
before the fix (3a0eee7), 554 of 612 Maildir messages were another message to SpamAssassin
as `train` sent them (their trailing blank lines stripped): sa-learn over the same Maildir
learned them all again. Now, Maildir: the same nspam 305, nham 304, a repeat learns nothing,
the move the same (285 / 324); 6 ids differ (5 corpus files opening with a From_ line, read
as an mbox message, whose ">From " lines are unquoted: 7 tokens of 72,907 and one count;
one over --max-size, skipped by both). mbox: SpamAssassin's ArchiveIterator keeps the blank
line before each separator in the message, so every id differs from sa-learn --mbox's (and
sa-learn's own from the same message in a Maildir: its --ham of the 20 moved spam from a
Maildir learned them without taking the spam back, train's moved them); train sends the
message as delivered. See docs/reliability.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spambridge.config import Config  # noqa: E402
from spambridge.train.normalise import strip_markup  # noqa: E402
from spambridge.train.sources import read_path  # noqa: E402

CORPUS = ROOT / "bench" / ".cache" / "package" / "data"
SITE = Path("/etc/spamassassin")
PY = sys.executable
TAG = Config().policy.subject_tag.encode()


@dataclass(frozen=True)
class Msg:
    name: str
    spam: bool
    raw: bytes


def sample(corpus: Path, n: int) -> list[Msg]:
    """`n` spam and `n` ham, the same ones every run (by a hash of the file name)."""
    def h(p: Path) -> bytes:
        return hashlib.sha256(p.name.encode()).digest()

    out: list[Msg] = []
    for spam in (True, False):
        files = [p for p in corpus.glob("*/*.txt") if p.parent.name.startswith("spam") == spam]
        for p in sorted(files, key=h)[:n]:
            out.append(Msg(f"{p.parent.name}/{p.name}", spam, p.read_bytes()))
    return out


_BASE = (b"From: Alice <alice@example.org>\nTo: bob@example.com\n"
         b"Subject: %s\nDate: Fri, 27 Nov 2026 10:00:00 +0000\nMessage-ID: <%s@example.org>\n")


def _hostile() -> list[Msg]:
    """Messages whose bytes `train` and sa-learn could read or send differently."""
    body = b"Cheap replica watches and casino bonus, order today from our pharmacy.\n" * 5
    marked = (b"X-Spam-Checker-Version: SpamAssassin 4.0.1 (2022-12-14) on mx.example.com\n"
              b"X-Spam-Flag: YES\nX-Spam-Level: ******\n"
              b"X-Spam-Status: Yes, score=6.2 required=5.0 tests=BAYES_99 autolearn=no\n")
    wrapped = (_BASE % (b"[SPAM] wrapped", b"h-wrap")).replace(b"Subject: [SPAM] wrapped\n",
                                                               b"Subject: [SPAM] wrapped\n"
                                                               + marked)
    wrapped += (b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"----------=_X\"\n"
                b"\nThis is a multi-part message in MIME format.\n\n------------=_X\n"
                b"Content-Type: text/plain\n\nSpam detection software report\n\n"
                b"------------=_X\nContent-Type: message/rfc822; x-spam-type=original\n"
                b"Content-Description: original message before SpamAssassin\n"
                b"Content-Disposition: inline\n\n"
                + _BASE % (b"wrapped", b"h-wrap-inner") + b"\n" + body
                + b"\n------------=_X--\n\n")
    big_body = b"lorem ipsum dolor sit amet casino" * 20
    limit = 500 * 1024
    head = _BASE % (b"size limit", b"h-size")

    def sized(n: int, tag: bytes) -> bytes:
        m = head.replace(b"h-size", tag) + b"\n"
        fill = (big_body + b"\n") * ((n - len(m)) // (len(big_body) + 1) + 1)
        return (m + fill)[: n - 2] + b"x\n"  # no blank before the end

    return [Msg(f"hostile/{name}", spam, raw) for name, spam, raw in [
        ("crlf", True, (_BASE % (b"crlf", b"h-crlf") + b"\n" + body).replace(b"\n", b"\r\n")),
        ("trailing-blank-lines", True, _BASE % (b"trailing", b"h-trail") + b"\n" + body
         + b"\n\n\n"),
        ("trailing-blanks", True, _BASE % (b"blanks", b"h-blanks") + b"\n" + body + b"   \n"),
        ("no-newline-at-end", True, _BASE % (b"no eol", b"h-noeol") + b"\n" + body[:-1]),
        ("no-msgid-no-date", True, b"From: x@example.org\nSubject: anonymous offer\n\n" + body),
        ("sa-marked-subject", True, (_BASE % (b"[SPAM] marked", b"h-marked")).replace(
            b"Subject: [SPAM] marked\n", b"Subject: [SPAM] marked\nX-Spam-Prev-Subject: marked\n"
            + marked) + b"\n" + body),
        ("sa-report-safe", True, wrapped),
        ("body-from-line", False, _BASE % (b"quoting", b"h-from") + b"\nHello,\n\n"
         b"From what I saw the minutes are fine.\nSee you Monday.\n"),
        ("header-only", False, _BASE % (b"header only", b"h-head")),
        ("eight-bit", False, (_BASE % (b"R\xe9union \xe0 Paris", b"h-8bit")) + b"\n"
         b"Bonjour, la r\xe9union de lundi est d\xe9plac\xe9e.\n"),
        ("at-size-limit", False, sized(limit, b"h-at-limit")),
        ("over-size-limit", False, sized(limit + 1, b"h-over-limit")),
    ]]


def free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def site_config(where: Path) -> Path:
    """A copy of the system's SpamAssassin site config with a Bayes of our own settings."""
    site = where / "site"
    site.mkdir()
    for f in (*SITE.glob("*.pre"), *SITE.glob("*.cf")):
        shutil.copy(f, site / f.name)
    with open(site / "local.cf", "a") as cf:
        cf.write("\nuse_bayes 1\nbayes_auto_learn 0\nbayes_auto_expire 0\n"
                 f"bayes_path {where}/a/bayes\n")
    return site


class Spamd:
    """A spamd --allow-tell on 127.0.0.1:port, its Bayes in `where`/a."""

    def __init__(self, where: Path, site: Path, port: int) -> None:
        home = where / "home"
        home.mkdir()
        os.chmod(where, 0o755)
        os.chmod(home, 0o777)
        (where / "a").mkdir()
        os.chmod(where / "a", 0o777)
        args = ["spamd", f"--listen=127.0.0.1:{port}", "--max-children=1", "--min-children=1",
                "--allowed-ips=127.0.0.1", f"--helper-home-dir={home}", "--nouser-config",
                "--syslog=stderr", f"--pidfile={home}/spamd.pid", "-L", "--allow-tell",
                f"--siteconfigpath={site}"]
        if os.geteuid() == 0:
            args.append("--username=debian-spamd")
        self.log = open(where / "spamd.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, cwd=home)
        self.address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"spamd exited: {(where / 'spamd.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING SPAMC/1.5\r\n\r\n")
                    if b"PONG" in s.recv(100):
                        return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise SystemExit("spamd did not answer PING in 120 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def lay_out(base: Path, msgs: list[Msg]) -> dict[str, dict[str, Path]]:
    """Each class as a Maildir (one file per message in cur/, as Dovecot names them) and as
    an mbox (messages as the corpus gives them, a From_ line first and a blank line after,
    body "From " lines quoted as mboxo writers do)."""
    out: dict[str, dict[str, Path]] = {"maildir": {}, "mbox": {}}
    for cls in ("spam", "ham"):
        md = base / "maildir" / cls
        for sub in ("cur", "new", "tmp"):
            (md / sub).mkdir(parents=True)
        mb = base / "mbox" / cls
        mb.parent.mkdir(parents=True, exist_ok=True)
        with open(mb, "wb") as box:
            for n, m in enumerate(x for x in msgs if x.spam == (cls == "spam")):
                (md / "cur" / f"1764000000.M{n:05d}P1.host:2,S").write_bytes(m.raw)
                raw = m.raw
                if not raw.startswith(b"From "):
                    raw = b"From MAILER-DAEMON Fri Nov 27 10:00:00 2026\n" + raw
                first, _, rest = raw.partition(b"\n")
                rest = re.sub(rb"(?m)^From ", b">From ", rest)
                box.write(first + b"\n" + rest + (b"" if rest.endswith(b"\n") else b"\n") + b"\n")
        out["maildir"][cls] = md
        out["mbox"][cls] = mb
    return out


def sa(site: Path, db: Path, *args: str) -> str:
    r = subprocess.run(["sa-learn", f"--siteconfigpath={site}", f"--dbpath={db}/bayes", *args],
                       capture_output=True, text=True, timeout=1800, check=False)
    return (r.stdout + r.stderr).strip()


def train(address: str, *args: str) -> str:
    r = subprocess.run([PY, "-m", "spambridge", "train", "--engine", "spamd", "--spamd",
                        address, *args], capture_output=True, text=True, timeout=1800,
                       check=False, cwd=ROOT)
    return (r.stdout + r.stderr).strip()


def magic(site: Path, db: Path) -> dict[str, int]:
    out = {}
    for line in sa(site, db, "--dump", "magic").splitlines():
        f = line.split()
        if "non-token" in f and f[-1] in ("nspam", "nham", "ntokens"):
            out[f[-1]] = int(f[2])
    return out


def tokens(site: Path, db: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for line in sa(site, db, "--dump", "data").splitlines():
        f = line.split()
        if len(f) == 5 and "non-token" not in f:
            out[f[4]] = (int(f[1]), int(f[2]))
    return out


SEEN_DUMP = ('use DB_File; use Fcntl; tie my %h, "DB_File", $ARGV[0], O_RDONLY, 0, $DB_HASH '
             'or die "$ARGV[0]: $!"; print "$_\\t$h{$_}\\n" for keys %h;')


def seen(db: Path) -> dict[str, str]:
    r = subprocess.run(["perl", "-e", SEEN_DUMP, str(db / "bayes_seen")], capture_output=True,
                       text=True, check=False)
    return dict(line.split("\t", 1) for line in r.stdout.splitlines() if "\t" in line)


MSGID = ('use Mail::SpamAssassin; my $sa = Mail::SpamAssassin->new({dont_copy_prefs => 1, '
         'local_tests_only => 1, site_rules_filename => $ARGV[0], '
         'userprefs_filename => "/dev/null"}); $sa->init(1); '
         'for my $f (@ARGV[1..$#ARGV]) { open my $fh, "<:raw", $f or die; local $/; '
         'my $d = <$fh>; my $m = $sa->parse($d); '
         'if ($m->get_header("X-Spam-Checker-Version")) '
         '{ $m = $sa->parse($sa->remove_spamassassin_markup($m), 1); } '
         'print $m->generate_msgid(), "\\n"; $m->finish(); }')


def msgids(site: Path, blobs: list[bytes], work: Path) -> list[str]:
    """SpamAssassin's own id (generate_msgid, what its "seen" database keys) of each message."""
    work.mkdir(exist_ok=True)
    files = []
    for n, b in enumerate(blobs):
        f = work / f"{n}.eml"
        f.write_bytes(b)
        files.append(str(f))
    r = subprocess.run(["perl", "-e", MSGID, str(site), *files], capture_output=True,
                       text=True, check=True, timeout=600)
    return r.stdout.split()


SHOW = 12  # names shown per reason


def why(sa_read: bytes, sent: bytes) -> str:
    """Why a message is another one to SpamAssassin as train sends it."""
    a = sa_read.replace(b"\r\n", b"\n")
    if a.startswith(b"From "):
        a = a.partition(b"\n")[2]
    if not sent:
        return "not sent (too large or not mail)"
    if a.rstrip() == sent.rstrip():
        return "its end (blank lines or spaces)"
    if re.sub(rb"(?m)^>(>*From )", rb"\1", a).rstrip() == sent.rstrip():
        return "a quoted >From line unquoted"
    if b"X-Spam-" in a:
        return "SpamAssassin's markup taken off"
    return "other"


def mbox_cut(path: Path) -> Iterator[bytes]:
    """An mbox cut as SpamAssassin's ArchiveIterator cuts it: at each "From " line, the
    blank line before the next one kept, nothing unquoted."""
    msg: list[bytes] = []
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(b"From ") and msg:
                yield b"".join(msg)
                msg = []
            msg.append(line)
    if msg:
        yield b"".join(msg)


def compare(step: str, site: Path, a: Path, b: Path, label: dict[str, str]) -> None:
    ma, mb = magic(site, a), magic(site, b)
    ta, tb = tokens(site, a), tokens(site, b)
    sa_, sb = seen(a), seen(b)
    only_a = sorted(set(ta) - set(tb))
    only_b = sorted(set(tb) - set(ta))
    counts = sorted(t for t in set(ta) & set(tb) if ta[t] != tb[t])
    print(f"  [{step}] magic train {ma}  sa-learn {mb}")
    print(f"  [{step}] tokens: {len(ta)} / {len(tb)}; only train {len(only_a)}, only sa-learn "
          f"{len(only_b)}, other counts {len(counts)}")
    for t in (only_a[:3] + only_b[:3] + counts[:3]):
        print(f"      {t}: train {ta.get(t)} sa-learn {tb.get(t)}")
    ka, kb = set(sa_), set(sb)
    print(f"  [{step}] seen ids: {len(ka)} / {len(kb)}; only train {len(ka - kb)}, only "
          f"sa-learn {len(kb - ka)}, other class {sum(sa_[k] != sb[k] for k in ka & kb)}")
    lines = ([f"only train: {label.get(k, k)} ({sa_[k]})" for k in sorted(ka - kb)]
             + [f"only sa-learn: {label.get(k, k)} ({sb[k]})" for k in sorted(kb - ka)]
             + [f"other class: {label.get(k, k)} train {sa_[k]} sa-learn {sb[k]}"
                for k in sorted(k for k in ka & kb if sa_[k] != sb[k])])
    for line in lines if len(lines) <= 3 * SHOW else [*lines[:SHOW], "..."]:
        print(f"      {line}")


def one_line(s: str) -> str:
    return " | ".join(x for x in s.splitlines() if x.strip())[:300]


def run_layout(layout: str, boxes: dict[str, Path], msgs: list[Msg], work: Path, port: int,
               moved: int) -> None:
    print(f"== {layout}")
    where = work / f"run-{layout}"
    where.mkdir()
    site = site_config(where)
    b = where / "b"
    b.mkdir()
    # which message each SpamAssassin id is: as sa-learn reads it, as train sends it
    ordered = [m for c in (True, False) for m in msgs if m.spam == c]
    if layout == "maildir":
        sa_bytes = [m.raw for m in ordered]
    else:
        sa_bytes = [x for c in ("spam", "ham") for x in mbox_cut(boxes[c])]
    sent: list[bytes] = []
    for c in ("spam", "ham"):
        for item in read_path(str(boxes[c]), 500 * 1024, layout == "mbox"):
            sent.append(b"" if item.data is None else  # as tell.py sends it
                        strip_markup(item.data, TAG, keep_end=True))
    label: dict[str, str] = {}
    ids_sa = msgids(site, sa_bytes, where / "ids-sa")
    ids_ours = msgids(site, sent, where / "ids-ours")
    for m, i in zip(ordered, ids_sa, strict=False):
        label[i] = f"{m.name} (as sa-learn reads it)"
    for m, i in zip(ordered, ids_ours, strict=False):
        label.setdefault(i, f"{m.name} (as train sends it)")
    whys: dict[str, list[str]] = {}
    for m, x, y, raw, ours in zip(ordered, ids_sa, ids_ours, sa_bytes, sent, strict=False):
        if x != y:
            whys.setdefault(why(raw, ours), []).append(m.name)
    print(f"  ids differ for {sum(map(len, whys.values()))} of {len(ordered)} messages "
          "(sa-learn's reading vs what train sends)")
    for reason, names in sorted(whys.items()):
        print(f"    {len(names)}: {reason}")
        for name in names if len(names) <= SHOW else [*names[:SHOW], "..."]:
            print(f"      {name}")
    mbox = ["--mbox"] if layout == "mbox" else []
    spamd = Spamd(where, site, port)
    a = where / "a"
    try:
        for rnd in ("first", "repeat"):
            for c in ("spam", "ham"):
                t0 = time.monotonic()
                out = train(spamd.address, f"--{c}", *mbox, str(boxes[c]))
                t1 = time.monotonic()
                out_sa = sa(site, b, f"--{c}", *mbox, str(boxes[c]))
                t2 = time.monotonic()
                print(f"  {rnd} --{c}: train ({t1 - t0:.0f} s): {one_line(out)}")
                print(f"  {rnd} --{c}: sa-learn ({t2 - t1:.0f} s): {one_line(out_sa)}")
            compare(rnd, site, a, b, label)
        # the migration: sa-learn over the same mailboxes, on a copy of what train filled
        # (a message under another id there is learned a second time)
        copy = where / "a-copy"
        shutil.copytree(a, copy)
        for c in ("spam", "ham"):
            print(f"  sa-learn --{c} after train: "
                  f"{one_line(sa(site, copy, f'--{c}', *mbox, str(boxes[c])))}")
        # a class move: the first `moved` spam learned as ham, from a Maildir of their own
        mv = where / "moved"
        for sub in ("cur", "new", "tmp"):
            (mv / sub).mkdir(parents=True)
        spam = [m for m in msgs if m.spam and not m.name.startswith("hostile/")][:moved]
        for n, m in enumerate(spam):
            (mv / "cur" / f"1764000001.M{n:05d}P1.host:2,S").write_bytes(m.raw)
        out = train(spamd.address, "--ham", str(mv))
        out_sa = sa(site, b, "--ham", str(mv))
        print(f"  move {moved} spam to ham: train: {one_line(out)}")
        print(f"  move {moved} spam to ham: sa-learn: {one_line(out_sa)}")
        compare("move", site, a, b, label)
    finally:
        spamd.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sample", type=int, default=300)
    ap.add_argument("--port", type=int, default=15100)
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--moved", type=int, default=20)
    ap.add_argument("--layout", choices=("maildir", "mbox", "both"), default="both")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    if not args.corpus.is_dir():
        print(f"{args.corpus}: no corpus (run bench/bayes_accuracy.py once)", file=sys.stderr)
        return 1
    if not free(args.port):
        print(f"127.0.0.1:{args.port} is taken", file=sys.stderr)
        return 1
    msgs = sample(args.corpus, args.sample) + _hostile()
    work = Path(tempfile.mkdtemp(prefix="sb-salearn-", dir="/tmp"))
    os.chmod(work, 0o755)
    try:
        boxes = lay_out(work, msgs)
        print(f"{len(msgs)} messages ({sum(m.spam for m in msgs)} spam), work in {work}")
        for layout in ("maildir", "mbox"):
            if args.layout in (layout, "both"):
                run_layout(layout, boxes[layout], msgs, work, args.port, args.moved)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
