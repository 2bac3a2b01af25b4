"""What SpamAssassin sees and scores, rule by rule, when the same mail comes through spambridge
(engine = "spamd") and through Debian's spamass-milter, behind the same real Postfix and the
same real spamd. A differential; not a test (no assertions): it counts and shows. Run as root
from the repository root (a throwaway Postfix, tests/postfix_instance.py, and a spamd):

    .venv/bin/python bench/spamass_differential.py [--sample 300] [--port 15200] [--show 3]
                                                   [--dump DIR]

1. The messages: `--sample` messages of the SpamAssassin public corpus (bench/.cache, fetched
   as bench/bayes_accuracy.py does), ham and spam mixed in an order fixed by a hash of the
   file names, under 250 kB; and a few edge messages made from the first ham and spam of them
   (EDGES: 8-bit header fields, SMTPUTF8 envelope and header, no Date, no Message-Id, 40
   Received lines on top, the null sender, no header at all).
2. Each is sent over SMTP to a Postfix whose smtpd_milters name one milter: first `spambridge
   run` (engine spamd, tag_only, `[spamd] user = "spamass-milter"`, `per_recipient_user =
   "local-part"`: README's translation of Debian's `-u spamass-milter`), then spamass-milter
   (`-m -u spamass-milter`, no `-r`: nothing refused; no `-i`: loopback clients scanned too).
   The client takes turns: 127.0.0.1 with HELO client.example.net, 127.0.0.2 with HELO
   mail.example.org and with HELO [127.0.0.2] (so trust-path rules can differ); MAIL FROM
   the message's Return-Path (else its From), RCPT TO one address per message
   (`rNNNN@test.example`, which names it in both milters' requests).
3. spamd (`-L`, use_bayes 0: nothing drifts between the passes) is reached through a tee
   on 127.0.0.1 that keeps each request and reply: the score and the rule names come from
   spamd's reply to each milter (SYMBOLS for ours, PROCESS for spamc), checked against the
   X-Spam-Status of the delivered copy (Yes/No and the score).
4. Printed: how many messages differ in rules or score, each rule hit under one milter only
   with its counts, the score differences, and for `--show` messages a diff of the header
   lines each milter put before the message's own (what spamd was given). `--dump DIR`
   writes every request (NNNN.ours.eml, NNNN.theirs.eml) and a JSON of the results.

Ports: Postfix `--port`, the tee +1, spamd +2, all on 127.0.0.1.

On 2026-11-28 (Postfix 3.7.11, SpamAssassin 4.0.1, spamass-milter 0.4.0-2; --sample 300: 313
messages, about a minute a pass on 2 cores): 87 differed, all from the two loopback clients,
none from the two XCLIENT internet ones; every differing rule read SpamAssassin's EnvelopeFrom
(HEADER_FROM_DIFFERENT_DOMAINS 67, FREEMAIL_ENVFROM_END_DIGIT 17, FREEMAIL_FORGED_FROMDOMAIN 8,
HK_RANDOM_ENVFROM 2 under spamass-milter only; RISK_FREE and TO_NO_BRKTS_PCNT, which need
`!__LCL__ENV_AND_HDR_FROM_MATCH`, 1 each under ours only), 1 in the Yes/No verdict. For a
trusted client SpamAssassin takes the envelope sender from the last untrusted hop (an older
Received line, naming none) and then from X-Envelope-From on top, which spamass-milter wrote
and we did not. With that field (spambridge/message.py, Envelope.trace_fields): 0 of 313
differ. What else differs in the requests changes no rule: spamass-milter's own Received line
(`with SMTP id unknown`, `(Postfix 3.7.11/8.13.0)`), its X-Envelope-To, folds of the message's
fields as Postfix hands them (LF inside CRLF lines; ours CRLF throughout), an incoming
`X-Spam-Level` it holds back (six X-Spam-* names) and we pass on; the body bytes are the same,
the spamd user too (`-u spamass-milter` and `per_recipient_user = "local-part"`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import difflib
import email.utils
import hashlib
import json
import os
import re
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bayes_accuracy import DATA, fetch_corpus  # noqa: E402
from harness import start_spamd, stop_process  # noqa: E402
from milterload import MilterProcess, stop_pid  # noqa: E402
from postfix_instance import PostfixInstance  # noqa: E402
from postfix_instance import destroy as destroy_postfix  # noqa: E402
from postfix_instance import make_instance as make_postfix  # noqa: E402

MAX_BYTES = 250_000
RULES = "use_bayes 0\nbayes_auto_learn 0\n"  # a fixed spamd: no Bayes, no learning
# (the address we connect from, HELO, what XCLIENT makes Postfix see instead: an internet
# client SpamAssassin does not trust, as loopback ones always are)
CLIENTS = (("127.0.0.1", "client.example.net", ""),
           ("127.0.0.2", "mail.example.org", ""),
           ("127.0.0.1", "mail.sender.example", "ADDR=203.0.113.7 NAME=mail.sender.example"),
           ("127.0.0.2", "[198.51.100.23]", "ADDR=198.51.100.23 NAME=[UNAVAILABLE]"))
SIDES = ("ours", "theirs")  # spambridge, spamass-milter
_RCPT = re.compile(rb"\br(\d{4})@test\.example\b")


@dataclass
class Msg:
    name: str
    raw: bytes  # LF line ends; smtplib sends CRLF
    sender: str
    utf8: bool = False


# -- the messages ----------------------------------------------------------------------------

def envelope_sender(raw: bytes) -> str:
    """MAIL FROM as the message's own header says it came: Return-Path, else From."""
    head = raw.split(b"\n\n", 1)[0].decode("latin-1")
    for name in ("Return-Path", "From"):
        m = re.search(rf"^{name}:[ \t]*(.*(?:\n[ \t].*)*)", head, re.M | re.I)
        if m:
            addr = email.utils.parseaddr(m[1].replace("\n", " "))[1]
            if name == "Return-Path" and m[1].strip() == "<>":
                return ""
            if addr and addr.isascii() and " " not in addr and "@" in addr:
                return addr
    return "alice@example.net"


def sample(n: int) -> list[Msg]:
    """`n` corpus messages under MAX_BYTES, ham and spam mixed, ordered by a hash of names."""
    fetch_corpus()
    paths = sorted(DATA.glob("*/*.txt"), key=lambda p: hashlib.sha256(p.name.encode()).digest())
    out: list[Msg] = []
    for p in paths:
        if len(out) >= n:
            break
        data = p.read_bytes().replace(b"\r\n", b"\n")
        if data.startswith(b"From "):  # the mbox line is no part of what an MTA is sent
            data = data.partition(b"\n")[2]
        if len(data) <= MAX_BYTES:
            out.append(Msg(f"{p.parent.name}/{p.name}", data, envelope_sender(data)))
    return out


def _drop(raw: bytes, name: bytes) -> bytes:
    head, _, body = raw.partition(b"\n\n")
    kept = re.sub(rb"(?im)^" + name + rb":.*\n(?:[ \t].*\n)*", b"", head + b"\n")
    return kept.rstrip(b"\n") + b"\n\n" + body


def edges(msgs: list[Msg]) -> list[Msg]:
    """Hand-made variants of the first ham and the first spam of the sample."""
    out: list[Msg] = []
    for base in (next(m for m in msgs if "ham" in m.name), next(m for m in msgs if "spam" in m.name)):
        kind = "ham" if "ham" in base.name else "spam"
        head, _, body = base.raw.partition(b"\n\n")
        hops = b"".join(
            b"Received: from relay%d.example.org (relay%d.example.org [198.51.100.%d])\n"
            b"\tby relay%d.example.org (Postfix) with ESMTP id 4A%04d;\n"
            b"\tThu, 26 Nov 2026 10:%02d:00 +0000\n" % (i, i, i, i + 1, i, 59 - i)
            for i in range(40))
        out += [
            Msg(f"edge/{kind}-8bit-headers", re.sub(
                rb"(?im)^Subject:.*$", "Subject: Grüße aus Köln, café".encode("latin-1"), head,
                count=1) + b"\nX-Note: na\xefve r\xe9sum\xe9 \xc3\xa9t\xc3\xa9\n\n" + body,
                base.sender),
            Msg(f"edge/{kind}-smtputf8", re.sub(
                rb"(?im)^From:.*$", "From: José Müller <josé@exämple.org>".encode(), head,
                count=1) + "\nSubject-Extra: ünïcödé\n\n".encode() + body,
                "josé@exämple.org", utf8=True),
            Msg(f"edge/{kind}-no-date", _drop(base.raw, b"Date"), base.sender),
            Msg(f"edge/{kind}-no-message-id", _drop(base.raw, b"Message-Id"), base.sender),
            Msg(f"edge/{kind}-40-received", hops + base.raw, base.sender),
            Msg(f"edge/{kind}-null-sender", base.raw, ""),
        ]
    out.append(Msg("edge/no-header", b"\nJust a body, no header at all.\n", "alice@example.net"))
    return out


# -- the tee: what spamd is given ------------------------------------------------------------

@dataclass
class Exchange:
    request: bytes
    reply: bytes


class Tee:
    """A TCP relay to spamd that keeps every request and reply (one connection each)."""

    def __init__(self, port: int, upstream: int) -> None:
        self.upstream = upstream
        self.seen: list[Exchange] = []
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", port))
        self.threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        req: list[bytes] = []
        rep: list[bytes] = []
        try:
            up = socket.create_connection(("127.0.0.1", self.upstream), timeout=120)
        except OSError:
            conn.close()
            return
        conn.settimeout(120)

        def pump(src: socket.socket, dst: socket.socket, keep: list[bytes]) -> None:
            try:
                while chunk := src.recv(65536):
                    keep.append(chunk)
                    dst.sendall(chunk)
                dst.shutdown(socket.SHUT_WR)  # spamc half-closes after the message
            except OSError:
                pass

        back = threading.Thread(target=pump, args=(up, conn, rep), daemon=True)
        back.start()
        pump(conn, up, req)
        back.join(130)
        conn.close()
        up.close()
        with self.lock:
            self.seen.append(Exchange(b"".join(req), b"".join(rep)))

    def close(self) -> None:
        self.sock.close()

    def take(self) -> list[Exchange]:
        with self.lock:
            out, self.seen = self.seen, []
        return out


@dataclass
class Verdict:
    """spamd's answer to one milter for one message, and what was delivered."""
    request: bytes = b""  # the message as spamd got it (no spamc protocol header)
    user: str = ""
    spam: bool | None = None
    score: float | None = None
    rules: list[str] = field(default_factory=list)
    delivered: str = ""  # the X-Spam-Status of the delivered copy, unfolded, its first field
    error: str = ""


def _reply_parts(raw: bytes) -> tuple[dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    hdrs["status"] = lines[0]
    return hdrs, body


def unfold(v: str) -> str:
    return re.sub(r"\r?\n[ \t]+", " ", v).strip()


def status_rules(status: str) -> list[str]:
    m = re.search(r"\btests=(.*?)(?:\s+(?:autolearn|engine|version)=|$)", unfold(status))
    if not m or m[1].strip() == "none":
        return []
    return [r for r in re.split(r"[,\s]+", m[1]) if r]


def verdict(ex: Exchange) -> tuple[int | None, Verdict]:
    """Which message (by its rNNNN recipient) and what spamd said of it."""
    rh, message = _reply_parts(ex.request)
    m = _RCPT.search(message)
    v = Verdict(request=message, user=rh.get("user", ""))
    hdrs, body = _reply_parts(ex.reply)
    if "EX_OK" not in hdrs["status"]:
        v.error = hdrs["status"] or "no reply"
        return (int(m[1]) if m else None), v
    sm = re.match(r"(True|False|Yes|No)\s*;\s*(-?[\d.]+)\s*/", hdrs.get("spam", ""))
    if sm:
        v.spam, v.score = sm[1] in ("True", "Yes"), float(sm[2])
    verb = rh["status"].split()[0] if rh["status"] else ""
    if verb == "SYMBOLS":
        v.rules = [r for r in body.decode("latin-1").strip().split(",") if r]
    else:  # PROCESS: the message back with SpamAssassin's X-Spam-Status
        head = body.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        st = re.search(r"^X-Spam-Status:(.*(?:\r?\n[ \t].*)*)", head, re.M)
        v.rules = status_rules(st[1]) if st else []
    return (int(m[1]) if m else None), v


# -- the two passes --------------------------------------------------------------------------

def smtp_send(port: int, i: int, msg: Msg) -> str:
    addr, helo, xclient = CLIENTS[i % len(CLIENTS)]
    rcpt = f"r{i:04d}@test.example"
    try:
        with smtplib.SMTP("127.0.0.1", port, local_hostname=helo, timeout=180,
                          source_address=(addr, 0)) as s:
            s.ehlo()
            if xclient:
                code, text = s.docmd("XCLIENT", f"{xclient} HELO={helo}")
                if code != 220:
                    return f"XCLIENT {code} {text!r}"
                s.ehlo()
            s.mail(msg.sender, ["SMTPUTF8", "BODY=8BITMIME"] if msg.utf8 else [])
            s.rcpt(rcpt)
            code, text = s.data(msg.raw)
    except smtplib.SMTPResponseException as e:
        return f"{e.smtp_code} {e.smtp_error!r}"
    except (smtplib.SMTPException, OSError) as e:
        return f"no reply: {e}"
    return "250" if code == 250 else f"{code} {text!r}"


def send_all(port: int, msgs: list[Msg], threads: int = 2) -> dict[int, str]:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return dict(enumerate(pool.map(lambda i: smtp_send(port, i, msgs[i]),
                                       range(len(msgs)))))


def collect(pf: PostfixInstance, want: set[int], timeout: float) -> dict[int, bytes]:
    """Message number → the delivered copy (by its X-Original-To), the files removed."""
    got: dict[int, bytes] = {}
    new = pf.mail / "inbox" / "new"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in sorted(new.glob("*")) if new.is_dir() else ():
            raw = p.read_bytes()
            head = raw.split(b"\n\n", 1)[0]
            m = re.search(rb"(?m)^X-Original-To: r(\d{4})@test\.example", head)
            if m:
                got[int(m[1])] = raw
            p.unlink()
        if want <= set(got):
            break
        time.sleep(0.5)
    return got


def delivered_status(raw: bytes) -> str:
    """The X-Spam-Status the milter wrote: the last one with a score= (a corpus message may
    carry an old SpamAssassin's, with hits=)."""
    head = raw.split(b"\n\n", 1)[0].decode("latin-1")
    found = [unfold(v) for v in re.findall(r"(?m)^X-Spam-Status:(.*(?:\n[ \t].*)*)", head)]
    ours = [v for v in found if "score=" in v]
    return ours[-1] if ours else ""


def run_pass(side: str, pf: PostfixInstance, tee: Tee, msgs: list[Msg]) -> dict[int, Verdict]:
    t0 = time.monotonic()
    replies = send_all(pf.port, msgs)
    got = collect(pf, {i for i, r in replies.items() if r == "250"}, 120)
    time.sleep(1)
    out: dict[int, Verdict] = {}
    for ex in tee.take():
        i, v = verdict(ex)
        if i is not None:
            out[i] = v
    for i in range(len(msgs)):
        v = out.setdefault(i, Verdict(error="spamd not asked"))
        if replies.get(i) != "250":
            v.error = v.error or f"SMTP {replies.get(i)}"
        v.delivered = delivered_status(got[i]) if i in got else "not delivered"
    bad = sum(1 for v in out.values() if v.error)
    print(f"{side}: {len(msgs)} messages in {time.monotonic() - t0:.0f} s, "
          f"{len(got)} delivered, {bad} with an error", flush=True)
    return out


def start_spamass(pf: PostfixInstance, spamd_port: int, work: Path) -> subprocess.Popen[bytes]:
    """Debian's spamass-milter on the socket Postfix names, as its defaults run it but for -i
    (which would pass loopback clients unscanned) and with -m (headers only, as ours)."""
    exe = shutil.which("spamass-milter") or "/usr/sbin/spamass-milter"
    sock = pf.milter_socket
    # its `sendmail -bv` of each recipient goes to this instance, not the system's Postfix
    env = {**os.environ, "MAIL_CONFIG": str(pf.etc)}
    proc = subprocess.Popen(
        [exe, "-p", f"unix:{sock}", "-m", "-u", "spamass-milter", "--", "-d", "127.0.0.1",
         "-p", str(spamd_port)], env=env, preexec_fn=lambda: os.umask(0o007),
        stdout=open(work / "spamass-milter.log", "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not sock.exists():
        time.sleep(0.05)
    if not sock.exists():
        stop_pid(proc, 10)
        raise RuntimeError("spamass-milter did not start")
    return proc


# -- the report ------------------------------------------------------------------------------

def preamble(request: bytes) -> list[str]:
    """The lines a milter put on top of the message's own header: its X-Envelope-* fields
    and its Received field, continuation lines included."""
    lines = request.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    n = 0
    while n < len(lines) and lines[n].lower().startswith("x-envelope-"):
        n += 1
    if n < len(lines) and lines[n].lower().startswith("received:"):
        n += 1
        while n < len(lines) and lines[n][:1] in (" ", "\t"):
            n += 1
    return lines[:n]


def client(i: int) -> str:
    """The client Postfix saw for message `i`: "127.0.0.2 HELO mail.example.org"."""
    addr, helo, xclient = CLIENTS[i % len(CLIENTS)]
    return f"{xclient.split()[0].removeprefix('ADDR=') if xclient else addr} HELO {helo}"


def report(msgs: list[Msg], res: dict[str, dict[int, Verdict]], show: int) -> dict[str, object]:
    ours, theirs = res["ours"], res["theirs"]
    only: dict[str, Counter[str]] = {"ours": Counter(), "theirs": Counter()}
    both: Counter[str] = Counter()
    where: dict[str, list[str]] = {}
    diffs: list[int] = []
    score_d: Counter[float] = Counter()
    flag_d = 0
    errors = 0
    for i, m in enumerate(msgs):
        a, b = ours[i], theirs[i]
        if a.error or b.error or a.score is None or b.score is None:
            errors += 1
            print(f"  {i:04d} {m.name}: ours {a.error or a.score} theirs {b.error or b.score}")
            continue
        ra, rb = set(a.rules), set(b.rules)
        for r in ra & rb:
            both[r] += 1
        for r in ra - rb:
            only["ours"][r] += 1
            where.setdefault(r, []).append(m.name)
        for r in rb - ra:
            only["theirs"][r] += 1
            where.setdefault(r, []).append(m.name)
        d = round(a.score - b.score, 1)
        if ra != rb or d:
            diffs.append(i)
            score_d[d] += 1
        if a.spam != b.spam:
            flag_d += 1
        for side, v in (("ours", a), ("theirs", b)):
            if v.score is not None and f"score={v.score:.1f}" not in v.delivered:
                print(f"  {i:04d} {side}: delivered {v.delivered[:60]!r} vs spamd {v.score}")
    n = len(msgs)
    print(f"\n{n} messages ({sum(1 for m in msgs if m.name.startswith('edge/'))} edge), "
          f"{errors} not compared, {len(diffs)} differ in rules or score, "
          f"{flag_d} in the Yes/No verdict")
    print("score (ours - theirs): " + (", ".join(
        f"{d:+.1f}: {c}" for d, c in sorted(score_d.items())) or "the same for all"))
    print("\nrule                        only ours  only theirs  both")
    for r in sorted(set(only["ours"]) | set(only["theirs"]),
                    key=lambda r: -(only["ours"][r] + only["theirs"][r])):
        print(f"{r:28s} {only['ours'][r]:9d} {only['theirs'][r]:12d} {both[r]:5d}   "
              f"e.g. {', '.join(where[r][:3])}")
    per_client = Counter(client(i) for i in diffs)
    print("\ndiffering, by client: " + "; ".join(
        f"{c}: {per_client[c]}/{sum(1 for i in range(n) if client(i) == c)}"
        for c in dict.fromkeys(client(i) for i in range(len(CLIENTS)))))
    users = [(ours[i].user, theirs[i].user) for i in range(n)]
    other = [u for u in users if u[0] != u[1]]
    print(f"\nspamd user (User: of the request) the same for {n - len(other)} of {n}"
          + (f"; e.g. ours {other[0][0]!r}, theirs {other[0][1]!r}" if other else ""))
    for i in diffs[:show]:
        a, b = ours[i], theirs[i]
        print(f"\n--- {i:04d} {msgs[i].name} ({client(i)}): ours {a.score} "
              f"{sorted(set(a.rules) - set(b.rules))}, theirs {b.score} "
              f"{sorted(set(b.rules) - set(a.rules))}")
        for ln in difflib.unified_diff(preamble(b.request), preamble(a.request), "theirs",
                                       "ours", lineterm="", n=0):
            print("  " + ln)
    return {"messages": n, "not_compared": errors, "differ": len(diffs), "verdict_differs": flag_d,
            "only": {k: dict(v) for k, v in only.items()}, "both": dict(both),
            "score_diff": {str(k): v for k, v in score_d.items()},
            "per_message": [{"name": m.name, "client": client(i),
                             "ours": [ours[i].score, sorted(ours[i].rules)],
                             "theirs": [theirs[i].score, sorted(theirs[i].rules)]}
                            for i, m in enumerate(msgs)]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sample", type=int, default=300)
    ap.add_argument("--port", type=int, default=15200)
    ap.add_argument("--show", type=int, default=3)
    ap.add_argument("--no-edges", action="store_true")
    ap.add_argument("--dump", type=Path)
    args = ap.parse_args()
    if not 1 <= args.sample <= 1000:
        ap.error("bounded on purpose: 1-1000 messages")
    msgs = sample(args.sample)
    if not args.no_edges:
        msgs += edges(msgs)
    print(f"{len(msgs)} messages, {sum(map(len, (m.raw for m in msgs))) // len(msgs)} bytes "
          "on average", flush=True)
    work = Path(tempfile.mkdtemp(prefix="sb-samdiff-"))
    os.chmod(work, 0o755)
    spamd = start_spamd(work / "spamd", rules=RULES, port=args.port + 2)
    tee = Tee(args.port + 1, spamd.port)
    pf = make_postfix(args.port)
    res: dict[str, dict[int, Verdict]] = {}
    try:
        with pf.main_cf(smtputf8_enable="yes", smtpd_authorized_xclient_hosts="127.0.0.0/8"):
            sb = MilterProcess.start(work / "sb", {
                "milter": {"socket": f"unix:{pf.milter_socket}", "engine": "spamd",
                           "scan_timeout": 45.0},
                "spamd": {"host": "127.0.0.1", "port": tee.sock.getsockname()[1],
                          "user": "spamass-milter", "per_recipient_user": "local-part"},
                "policy": {"tag_only": True}, "log": {"level": "info"}},
                str(pf.milter_socket))
            try:
                tee.take()  # its start-up PING
                res["ours"] = run_pass("spambridge", pf, tee, msgs)
            finally:
                sb.stop()
            sam = start_spamass(pf, tee.sock.getsockname()[1], work)
            try:
                res["theirs"] = run_pass("spamass-milter", pf, tee, msgs)
            finally:
                stop_pid(sam, 10)
    finally:
        tee.close()
        destroy_postfix(pf)
        stop_process(spamd.proc)
    out = report(msgs, res, args.show)
    if args.dump:
        args.dump.mkdir(parents=True, exist_ok=True)
        for side in SIDES:
            for i, v in res[side].items():
                (args.dump / f"{i:04d}.{side}.eml").write_bytes(v.request)
        (args.dump / "results.json").write_text(json.dumps(out, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
