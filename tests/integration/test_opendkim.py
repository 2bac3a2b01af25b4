"""spambridge beside OpenDKIM in one real Postfix, as README's "Beside OpenDKIM" step says:
`smtpd_milters = <opendkim>, unix:spambridge/spambridge.sock`, and the same list in
non_smtpd_milters (copied there for signing mail from sendmail(1)).

The real opendkim (Debian's opendkim, Debian's own Canonicalization and OversignHeaders) runs as
a milter on 127.0.0.1, signing for test.example and verifying everything else; "outside" mail
is signed beforehand by opendkim in test mode (-t) for example.net, as another Debian site's
opendkim would. No DNS: both public keys come from a TestPublicKeys file (opendkim.conf(5)),
which the verifying milter and the later check of the delivered file (opendkim -t, what a
forwarder's or the recipient's verifier does) read.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import (
    BAYES_WORDS,
    RunningMilter,
    free_port,
    message,
    stop_process,
    train_database,
    wait_until,
)
from postfix_instance import MILTER_SOCKET, Delivered, PostfixInstance

pytestmark = pytest.mark.postfix

OPENDKIM = "/usr/sbin/opendkim"
GENKEY = "/usr/sbin/opendkim-genkey"
SPAMBRIDGE = f"unix:{MILTER_SOCKET}"
Start = Callable[..., RunningMilter]


def require_opendkim() -> None:
    """CI installs it (scripts/setup --test): a missing one is a broken setup, not a skip."""
    for tool in (OPENDKIM, GENKEY):
        if not Path(tool).exists():
            raise RuntimeError(f"{tool} is missing: run scripts/setup --test "
                               "(Debian packages opendkim, opendkim-tools)")


def public_record(txt: Path) -> str:
    """The TXT record opendkim-genkey wrote (zone-file syntax, quoted chunks) as one string."""
    inside = txt.read_text().split("(", 1)[1].split(")", 1)[0]
    return "".join(re.findall(r'"([^"]*)"', inside))


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class OpenDKIM:
    base: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def milter(self) -> str:
        return f"inet:127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return (self.base / "opendkim.log").read_text(errors="replace")

    def _test_mode(self, conf: str, raw: bytes) -> str:
        """`opendkim -x CONF -t FILE`: what it prints for the message (stdout, then stderr)."""
        path = self.base / "message.eml"
        path.write_bytes(raw)
        r = subprocess.run([OPENDKIM, "-x", str(self.base / conf), "-t", str(path)],
                           capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stdout + r.stderr
        return (r.stdout + r.stderr).decode()

    def sign_outside(self, raw: bytes) -> bytes:
        """The message as example.net's opendkim sends it: its DKIM-Signature on top."""
        out = self._test_mode("outside.conf", raw)
        field = out.split("\n", 1)[1]  # after "opendkim: FILE:"
        assert field.startswith("DKIM-Signature: "), out
        return field.rstrip("\n").encode() + b"\n" + raw

    def verify(self, raw: bytes) -> str:
        """What a verifier later on the path says of the message's signature."""
        out = self._test_mode("later.conf", raw)
        [line] = [x for x in out.splitlines() if ": verification (" in x]
        return line


@pytest.fixture(scope="module")
def opendkim() -> Iterator[OpenDKIM]:
    require_opendkim()
    base = Path(tempfile.mkdtemp(prefix="sb-opendkim-"))
    records = []
    for domain, selector in (("example.net", "out"), ("test.example", "loc")):
        subprocess.run([GENKEY, "-D", str(base), "-d", domain, "-s", selector, "-b", "2048"],
                       check=True, capture_output=True, timeout=60)
        records.append(f"{selector}._domainkey.{domain} {public_record(base / f'{selector}.txt')}")
    (base / "public-keys").write_text("\n".join(records) + "\n")
    (base / "keys-local").write_text(f"loc test.example:loc:{base}/loc.private\n")
    (base / "signing-local").write_text("test.example loc\n")
    (base / "keys-outside").write_text(f"out example.net:out:{base}/out.private\n")
    (base / "signing-outside").write_text("example.net out\n")
    debian = "Canonicalization relaxed/simple\nOversignHeaders From\n"  # /etc/opendkim.conf's
    # keys under /tmp: opendkim calls a key unsafe when a directory above it is world-writable
    debian += "RequireSafeKeys no\n"
    port = free_port()
    (base / "milter.conf").write_text(
        f"{debian}Syslog no\nBackground no\nMode sv\nSocket inet:{port}@127.0.0.1\n"
        f"KeyTable file:{base}/keys-local\nSigningTable file:{base}/signing-local\n"
        f"TestPublicKeys {base}/public-keys\nAuthservID mx.test.example\n"
        f"PidFile {base}/opendkim.pid\n")
    (base / "outside.conf").write_text(
        f"{debian}Syslog no\nMode s\nKeyTable file:{base}/keys-outside\n"
        f"SigningTable file:{base}/signing-outside\n")
    (base / "later.conf").write_text(
        f"Syslog no\nMode v\nTestPublicKeys {base}/public-keys\nAuthservID later.example\n")
    with open(base / "opendkim.log", "wb") as log:
        proc = subprocess.Popen([OPENDKIM, "-f", "-x", str(base / "milter.conf")],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    od = OpenDKIM(base, port, proc)
    try:
        wait_until(lambda: proc.poll() is not None or answers(port), 30, "opendkim's socket")
        assert proc.poll() is None, od.log
        yield od
    finally:
        stop_process(proc)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def trained_db() -> Iterator[Path]:
    where = Path(tempfile.mkdtemp(prefix="sb-dkim-bayes-"))
    yield train_database(where, lambda n, label: mail(label, n), 20)
    shutil.rmtree(where, ignore_errors=True)


def mail(label: str, n: int, sender: str = "alice@example.net", extra: str = "") -> bytes:
    """A message the trained database calls `label` ("spam" or "ham")."""
    words = BAYES_WORDS[label]
    body = " ".join(words[(n * 3 + i) % len(words)] for i in range(40)) + f" uniq{n}x{label}\n"
    return message(subject=f"Invoice {n}", body=body, extra_headers=extra, sender=sender)


def start_spambridge(pf: PostfixInstance, db: Path, start_milter: Start) -> RunningMilter:
    # reject_cutoff 1.0: spam is tagged (the tag band), not refused
    return start_milter({"milter": {"socket": f"unix:{pf.milter_socket}", "engine": "bayes"},
                         "bayes": {"db": str(db), "min_trained": 20, "reject_cutoff": 1.0},
                         "policy": {"subject_tag": "[SPAM]"}})


def authentication_results(got: Delivered) -> str:
    [ar] = got.all("Authentication-Results")
    return " ".join(ar.split())


def submitted_locally(pf: PostfixInstance, raw: bytes, sender: str) -> Delivered:
    pf.sendmail(raw, sender)
    found: list[str] = []

    def picked_up() -> bool:
        found[:] = re.findall(rf"\]: ([0-9A-F]{{6,}}): uid=0 from=<{re.escape(sender)}>", pf.log)
        return bool(found)

    wait_until(picked_up, 10, "pickup's line for the local submission")
    return pf.wait_delivered(found[-1])


FORGED = "X-Spam-Flag: NO\nX-Spam-Status: No, score=-50.0\n"
README = Path(__file__).resolve().parents[2] / "README.md"
README_DKIM_SOCKET = "inet:127.0.0.1:8891"  # what README's step 8 writes for opendkim's socket


def documented_order(od: OpenDKIM) -> str:
    """smtpd_milters as README's "Beside OpenDKIM" step writes it, with our opendkim's port."""
    step = README.read_text().split("**Beside OpenDKIM", 1)[1].split("\n## ", 1)[0]
    [value] = re.findall(r"^ *smtpd_milters = (.*)$", step, re.M)
    assert README_DKIM_SOCKET in value and SPAMBRIDGE in value, value
    return value.replace(README_DKIM_SOCKET, od.milter)


def test_opendkim_before_spambridge_verifies_the_mail_as_sent_and_signs_what_leaves(
        postfix: PostfixInstance, opendkim: OpenDKIM, trained_db: Path,
        start_milter: Start) -> None:
    """The order README documents (read from it), in both lists, as guides copy it. In: opendkim judges the message as the
    sender signed it (dkim=pass, what a DMARC check acts on), though spambridge then tags it;
    spambridge changes no field the signature covers but the Subject it was told to tag, and
    an untagged message still verifies as delivered. Out: the signature opendkim made before
    spambridge added its X-Spam-* fields verifies at the recipient, for mail over SMTP and for
    spam submitted with sendmail(1), whose Subject spambridge leaves alone (it used to tag it
    after the signing: a broken signature, a DMARC reject, a bounced invoice)."""
    m = start_spambridge(postfix, trained_db, start_milter)
    with postfix.main_cf(smtpd_milters=documented_order(opendkim),
                         non_smtpd_milters="$smtpd_milters"):
        # in: spam from outside, signed over From, To, Subject, Date, with forged X-Spam-*
        sent = opendkim.sign_outside(mail("spam", 901, extra=FORGED))
        got = postfix.wait_delivered(postfix.send(sent))
        assert "dkim=pass" in authentication_results(got) and \
            "header.d=example.net" in authentication_results(got), got.raw.decode()
        assert got.all("Subject") == ["[SPAM] Invoice 901"]
        assert got.all("X-Spam-Flag") == ["YES"] and "-50.0" not in got.raw.decode()
        assert "failed" in opendkim.verify(got.raw)  # the tag is a change the signer signed
        untagged = got.raw.replace(b"Subject: [SPAM] Invoice 901", b"Subject: Invoice 901")
        assert "d=example.net, 2048-bit key) succeeded" in opendkim.verify(untagged)

        # in: ham from outside: forged fields gone, ours added, still verifies as delivered
        got = postfix.wait_delivered(postfix.send(
            opendkim.sign_outside(mail("ham", 902, extra=FORGED))))
        assert "dkim=pass" in authentication_results(got)
        assert got.all("X-Spam-Status")[0].startswith("No, score=") and "-50.0" not in \
            got.raw.decode()
        assert "d=example.net, 2048-bit key) succeeded" in opendkim.verify(got.raw)

        # out over SMTP (127.0.0.1: opendkim's default InternalHosts): signed, then scanned
        got = postfix.wait_delivered(postfix.send(mail("ham", 903, "carol@test.example"),
                                                  sender="carol@test.example"))
        assert got.all("X-Spam-Status")[0].startswith("No, score=")
        assert "d=test.example, 2048-bit key) succeeded" in opendkim.verify(got.raw)

        # out with sendmail(1): spam is tagged by its X-Spam-* fields only
        got = submitted_locally(postfix, mail("spam", 904, "dave@test.example"),
                                "dave@test.example")
        assert got.all("DKIM-Signature"), got.raw.decode()
        assert "d=test.example, 2048-bit key) succeeded" in opendkim.verify(got.raw)
        assert got.all("Subject") == ["Invoice 904"]
        assert got.all("X-Spam-Flag") == ["YES"]
        assert got.all("X-Spam-Status")[0].startswith("Yes, score=")
    line = next(x for x in m.log.splitlines() if "from=<dave@test.example>" in x)
    assert "action=tag reason=spam" in line and "mode=local" in line, line


def test_spambridge_before_opendkim_makes_the_verifier_judge_the_tagged_message(
        postfix: PostfixInstance, opendkim: OpenDKIM, trained_db: Path,
        start_milter: Start) -> None:
    """Why the order matters: Postfix hands each milter the message with the changes the
    milters before it made. Listed first, spambridge tags the Subject of a correctly signed
    message before opendkim verifies it, and opendkim reports dkim=fail — a sender's
    p=reject DMARC policy would then refuse its mail, invoices and all."""
    start_spambridge(postfix, trained_db, start_milter)
    with postfix.main_cf(smtpd_milters=f"{SPAMBRIDGE}, {opendkim.milter}"):
        sent = opendkim.sign_outside(mail("spam", 911))
        assert "succeeded" in opendkim.verify(sent)
        got = postfix.wait_delivered(postfix.send(sent))
        assert got.all("Subject") == ["[SPAM] Invoice 911"]
        ar = authentication_results(got)
        assert "dkim=fail" in ar and "header.d=example.net" in ar, ar
