"""The tokenizer's cost on hostile mail: floods of each construct a regex or a loop sees, built
at several sizes, against ordinary mail per byte (the SpamAssassin corpus).

Not a test (speed is not asserted anywhere). Run from the repository root:

    .venv/bin/python bench/tokenizer_hostile.py            # every construct
    .venv/bin/python bench/tokenizer_hostile.py lmtp_tabs  # some of them

Per construct: milliseconds at 128 kB, 512 kB and 1 MB (max_scan_size; the tokenizer looks at
the first [bayes] max_bytes, 512 kB, and tokenizes at most 256 kB of body text, so body floods
level off past that), the growth exponent from 128 to 512 kB (1 = linear, 2 = quadratic) and
the 1 MB cost as a multiple of the corpus' per-byte cost on the bytes looked at. A line marked
"!" grows faster than linear or costs over 20x ordinary mail: a finding.
"""

from __future__ import annotations

import base64
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spambridge.bayes.tokenizer import DEFAULT_LIMITS, tokenize  # noqa: E402

DATA = ROOT / "bench" / ".cache" / "package" / "data"  # bench/bayes_accuracy.py fetches it
H = b"From: a@example.com\nTo: b@example.net\nSubject: hi\nMessage-ID: <x@example.com>\n"


def rep(unit: bytes, n: int) -> bytes:
    return (unit * (n // len(unit) + 1))[:n]


def body(fill: bytes, head: bytes = b"") -> Callable[[int], bytes]:
    return lambda n: H + head + b"\n" + rep(fill, n)


def top(field: bytes) -> Callable[[int], bytes]:
    """The header block made of one field over and over (the ones on top are the sender's
    when a file is checked without the receiving MTA's Received line)."""
    return lambda n: rep(field, n) + b"\nbody\n"


MULTIPART = H + b'Content-Type: multipart/mixed; boundary="b"\n\n'
WIDE16 = b"Content-Type: text/plain; charset=utf-16\n"


def nested_fill(n: int, boundary: bytes | None) -> bytes:
    """99 nested multiparts (message/rfc822 parts when `boundary` is None), the text at the
    bottom filled up to n bytes, each level closed after it: every level's window spans it."""
    levels = DEFAULT_LIMITS.max_parts - 1
    head = tail = b""
    for d in range(levels):
        if boundary is None:
            head += b"Content-Type: message/rfc822\n\nSubject: level\n"
        else:
            b = boundary % d if b"%d" in boundary else boundary * (d + 1)
            head += b'Content-Type: multipart/mixed; boundary="' + b + b'"\n\n--' + b + b"\n"
            tail = b"\n--" + b + b"--\n" + tail
    head = H + head + b"Content-Type: text/plain\n\n"
    return head + rep(b"hello world this is mail\n", max(n - len(head) - len(tail), 0)) + tail


def distinct_words(n: int) -> bytes:
    """Words none of which repeats (4 letters and digits): ~60,000 distinct tokens in the
    256 kB text cap, twelve times the token cap."""
    alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789"
    words = (bytes((alphabet[i // 36**3 % 36], alphabet[i // 36**2 % 36], alphabet[i // 36 % 36],
                    alphabet[i % 36])) for i in range(n // 5 + 1))
    return H + b"\n" + b" ".join(words)[:n]
CASES: dict[str, Callable[[int], bytes]] = {
    "words": body(b"hello world this is mail\n"),
    "lt_flood": body(b"<"),
    "lt_blank": body(b"< \n\t"),
    "comment_unclosed": body(b"<!--"),
    "style_unclosed": body(b"<style"),
    "tags_unclosed": body(b"<" + b"a" * 300),
    "script_tags": body(b"<script", b"Content-Type: text/html\n"),
    "width_eq0": body(b"=0 ", b"Content-Type: text/html\n\n<width"),
    "qp_equals": body(b"=", b"Content-Transfer-Encoding: quoted-printable\n"),
    "b64_junk": body(b"QUJD!@#$", b"Content-Transfer-Encoding: base64\n"),
    "b64_then_text": body(b"QUJDRA==\nfooter words here\n", b"Content-Transfer-Encoding: base64\n"),
    "b64_long_line": body(b"QUJD", b"Content-Transfer-Encoding: base64\n"),
    # lines the base64 block is made of, each a step of whatever finds them (a regex repeat of
    # a group kept ~100 bytes per line: +41 MB for 512 kB of empty lines)
    "b64_blank_lines": body(b"\n", b"Content-Transfer-Encoding: base64\n"),
    "b64_short_lines": body(b"QUJD\n", b"Content-Transfer-Encoding: base64\n"),
    "giant_line": body(b"a"),
    "nul": body(b"\0"),
    "cr_only": body(b"abc def\r"),
    "links": body(b"http://a.example/c?d=e "),
    "entities": body(b"&#65;"),
    "uuencode_begin": body(b"begin 644 x\n"),
    "long_words": body(b"a" * 13 + b"@x.y "),
    "tiny_fields": top(b"a:b\n"),
    "folded_subject": lambda n: b"Subject: x" + rep(b"\n x", n) + b"\n\nbody\n",
    "addresses": top(b'To: a@b, c@d, (x) "y" <z>, ' + b"@" * 50 + b"\n"),
    "encoded_words": lambda n: b"Subject: " + rep(b"=?utf-8?B?QUJD?= ", n) + b"\n\nbody\n",
    "received": top(b"Received: from a.b.c (d [1.2.3.4]) (may be forged) by x; Mon\n"),
    "lmtp_tabs": top(b"Received: x" + b"\t" * 2000 + b"bx\n\tby h with LMTP\n"),
    "parts": lambda n: MULTIPART + rep(b"--b\nContent-Type: text/plain\n\nhello\n", n),
    "near_delimiters": lambda n: MULTIPART + rep(b"--bX\n", n),
    "nested_parts": lambda n: MULTIPART + rep(b'--b\nContent-Type: multipart/mixed; '
                                              b'boundary="b"\n\n', n),
    # the code paths of the reading fixes: lines after a base64 block decoded too, UTF-16/32
    # parts, HTML5 comment endings, nesting cut by the part cap only, the token cap's sample
    "b64_end_then_b64": body(base64.encodebytes(b"hello world this is mail " * 3),
                             b"Content-Transfer-Encoding: base64\n\nQUJDRA==\n"),
    "b64_end_then_text": body(b"hello world this is mail\n",
                              b"Content-Transfer-Encoding: base64\n\nQUJDRA==\n"),
    "b64_end_then_bin": body(b"//79/Pv6+fj39vX0\n",
                             b"Content-Transfer-Encoding: base64\n\nQUJDRA==\n"),
    "b64_end_then_strays": body(b"QUJD REVG!R0hJ\n",
                                b"Content-Transfer-Encoding: base64\n\nQUJDRA==\n"),
    "utf16_bom": lambda n: H + WIDE16 + b"\n\xff\xfe" + rep("hello world this is mail\n"
                                                             .encode("utf-16-le"), n),
    "utf16_no_bom": body("hello world this is mail\n".encode("utf-16-be"), WIDE16),
    "utf16_odd": lambda n: body("hello world this is mail\n".encode("utf-16-le"), WIDE16)(n | 1),
    "utf16_junk": body(bytes(range(256)), WIDE16),
    "utf32_no_bom": body("hello world mail\n".encode("utf-32-le"),
                         b"Content-Type: text/plain; charset=utf-32\n"),
    "utf16_b64": body(base64.encodebytes("hello world this is mail\n".encode("utf-16-le") * 3),
                      WIDE16 + b"Content-Transfer-Encoding: base64\n"),
    "comments_closed": body(b"<!--a-->b ", b"Content-Type: text/html\n"),
    "comments_bang": body(b"<!--a--!>b ", b"Content-Type: text/html\n"),
    "comments_mixed": body(b"<!-- x --!> y <!--> z <!---> w --> ", b"Content-Type: text/html\n"),
    "comment_openers_bang": lambda n: H + b"Content-Type: text/html\n\n" + rep(b"<!--", n - 4)
    + b"--!>",
    "comment_openers_dash": lambda n: H + b"Content-Type: text/html\n\n" + rep(b"<!--", n - 3)
    + b"-->",
    "nested_100": lambda n: nested_fill(n, b"n%d"),
    "nested_100_prefix": lambda n: nested_fill(n, b"n"),
    "nested_100_rfc822": lambda n: nested_fill(n, None),
    "distinct_tokens": distinct_words,
}
SIZES = (128 * 1024, 512 * 1024, 1024 * 1024)


def best_of(msg: bytes, runs: int = 3) -> float:
    best = math.inf
    for _ in range(runs):
        t0 = time.perf_counter()
        tokenize(msg)
        best = min(best, time.perf_counter() - t0)
        if best > 1.0:
            break
    return best


def corpus_ms_per_mb() -> float:
    files = sorted(DATA.glob("*/*.txt"))
    if not files:
        sys.exit(f"no corpus under {DATA}: run bench/bayes_accuracy.py once to fetch it")
    spent = looked = 0.0
    for p in files:
        raw = p.read_bytes()
        t0 = time.perf_counter()
        tokenize(raw)
        spent += time.perf_counter() - t0
        looked += min(len(raw), DEFAULT_LIMITS.max_bytes)
    return spent / (looked / 1e6) * 1e3


def main(names: list[str]) -> None:
    base = corpus_ms_per_mb()
    print(f"corpus: {base:.0f} ms/MB of the bytes looked at")
    print(f"{'construct':18s} {'128 kB':>8s} {'512 kB':>8s} {'1 MB':>8s}  growth  x corpus")
    for name in names or CASES:
        ms = [best_of(CASES[name](n)) * 1e3 for n in SIZES]
        growth = math.log(max(ms[1], 1e-3) / max(ms[0], 1e-3)) / math.log(4)
        ratio = ms[2] / (base * DEFAULT_LIMITS.max_bytes / 1e6)
        flag = "!" if growth > 1.5 or ratio > 20 else " "
        print(f"{name:18s} {ms[0]:8.1f} {ms[1]:8.1f} {ms[2]:8.1f}  {growth:6.2f}  {ratio:7.2f} {flag}",
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
