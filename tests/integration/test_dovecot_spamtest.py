"""README's "Coming from spamass-milter": the Pigeonhole spamtest settings and the two Sieve
scripts it prints file what each engine flagged into Junk and leave the rest in INBOX — a real
Postfix with the real milter in front, delivering over LMTP to a real Dovecot running Sieve —
and the procmail lines it names match as it says."""

from __future__ import annotations

import re
import shutil
import smtplib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import (
    BAYES_WORDS,
    GTUBE,
    RunningMilter,
    Spamd,
    bayes_mail,
    dovecot_conf,
    free_port,
    message,
    running_dovecot,
    train_database,
    wait_until,
)
from postfix_instance import PostfixInstance
from spamdfakes import SwitchableSpamd, spamd_reply

pytestmark = pytest.mark.postfix

README = Path(__file__).resolve().parents[2] / "README.md"
DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
USERS = ("spamtest", "flag")  # one Sieve script of the README's each
TRAINED = 20  # of each class, as [bayes] min_trained here
Start = Callable[..., RunningMilter]


def readme_settings() -> tuple[str, dict[str, str]]:
    """The `plugin { … }` block and the two Sieve scripts, as the README prints them."""
    text = README.read_text().split("\n## Coming from spamass-milter\n", 1)[1]
    text = text.split("\n## ", 1)[0]
    plugin = re.search(r"```\n(plugin \{\n.*?\n\})\n```", text, re.S)
    scripts = re.findall(r"```sieve\n(.*?)```", text, re.S)
    assert plugin and len(scripts) == 2, "the README's Dovecot settings and Sieve scripts"
    return plugin.group(1), dict(zip(USERS, scripts, strict=True))


@dataclass
class Dovecot:
    port: int
    mail: Path

    def folder_of(self, user: str, subject: str) -> tuple[str, bytes] | None:
        """("INBOX" or "Junk", the stored message) for the message with this Subject."""
        for folder, sub in (("INBOX", "new"), ("Junk", ".Junk/new")):
            d = self.mail / user / sub
            for f in d.iterdir() if d.is_dir() else ():
                raw = f.read_bytes()
                if f"\nSubject: {subject}\n".encode() in raw:
                    return folder, raw
        return None


@pytest.fixture(scope="module")
def dovecot(postfix: PostfixInstance) -> Iterator[Dovecot]:
    """Dovecot's LMTP with Sieve and the README's settings, Postfix delivering to it."""
    top = Path(tempfile.mkdtemp(prefix="spambridge-spamtest-"))
    top.chmod(0o755)
    mail, scripts = top / "mail", top / "sieve"
    for d in (mail, scripts):
        d.mkdir()
        d.chmod(0o777)  # the mail user (nobody) stores mail and compiles the scripts here
    plugin, sieve = readme_settings()
    for user, script in sieve.items():
        (scripts / f"{user}.sieve").write_text(script)
    plugin = plugin.replace("plugin {\n", f"plugin {{\n  sieve = file:{scripts}/%n.sieve\n", 1)
    port = free_port()
    conf = top / "dovecot.conf"
    conf.write_text(dovecot_conf(top, "lmtp", port, f"""
mail_location = maildir:{mail}/%n
lda_mailbox_autocreate = yes
default_login_user = root
protocol lmtp {{
  mail_plugins = $mail_plugins sieve
}}
{plugin}
""", anyone_in=mail))
    try:
        with running_dovecot(DOVECOT, conf, lambda: smtplib.LMTP("127.0.0.1", port).quit(),
                             "Dovecot's LMTP listener"), \
                postfix.main_cf(virtual_transport=f"lmtp:inet:127.0.0.1:{port}"):
            yield Dovecot(port, mail)
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def bayes_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_database(tmp_path_factory.mktemp("spamtest-bayes"), bayes_mail, TRAINED)


def deliver(postfix: PostfixInstance, dovecot: Dovecot, raw: bytes, subject: str
            ) -> dict[str, tuple[str, bytes]]:
    """Send through Postfix (and so the milter) to every user; where each one's Sieve put it."""
    with postfix.smtp() as s:
        s.sendmail("alice@example.net", [f"{u}@test.example" for u in USERS], raw)
    got: dict[str, tuple[str, bytes]] = {}

    def stored() -> bool:
        for u in USERS:
            if (where := dovecot.folder_of(u, subject)) is not None:
                got[u] = where
        return len(got) == len(USERS)

    wait_until(stored, 30, f"{subject!r} in both mailboxes")
    return got


def mix(subject: str) -> bytes:
    """Half spam words, half ham words: the Bayes engine is unsure (0.5, five stars)."""
    words = " ".join(BAYES_WORDS["spam"][:4] + BAYES_WORDS["ham"][:4])
    return message(subject=subject, body=words + "\n")


def bayes_message(label: str) -> Callable[[str], bytes]:
    """A message like those trained as `label`, not one of them, with the Subject given."""
    return lambda subject: bayes_mail(TRAINED, label).replace(
        f"Subject: {label} {TRAINED}\n".encode(), f"Subject: {subject}\n".encode())


# engine case: (config, messages as (kind, make(subject) -> bytes, folder, status pattern))
SPAMD_MAIL = [
    ("ham", lambda s: message(subject=s), "INBOX", r"No, score=-?\d+\.\d required=5\.0 "),
    ("spam", lambda s: message(subject=s, body=f"{GTUBE}\n"), "Junk",
     r"Yes, score=\d+\.\d required=5\.0 tests=.*GTUBE"),
]
BAYES = r"score=[01]\.\d{4} required=0\.9000 tests=none engine=bayes"
BAYES_MAIL = [
    ("ham", bayes_message("ham"), "INBOX", rf"No, {BAYES}"),
    ("unsure", mix, "INBOX", rf"No, {BAYES} unsure=yes"),
    ("spam", bayes_message("spam"), "Junk", rf"Yes, {BAYES}"),
]
FALLBACK_MAIL = [(k, make, folder, f"{status} fallback=spamd-unavailable")
                 for k, make, folder, status in BAYES_MAIL if k != "unsure"]
UNCHECKED_MAIL = [("spam", lambda s: message(subject=s, body=f"{GTUBE}\n"), "INBOX",
                   r"No, unchecked=unavailable$")]  # spamtest 0: "not tested"
CASES = {
    "spamd": ("spamd", True, SPAMD_MAIL),
    "spamd, spamd down": ("spamd", False, UNCHECKED_MAIL),
    "bayes": ("bayes", False, BAYES_MAIL),
    "spamd+bayes": ("spamd+bayes", True, SPAMD_MAIL),
    "spamd+bayes, spamd down": ("spamd+bayes", False, FALLBACK_MAIL),
}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.spamd) if CASES[c][1]
                                  else c for c in CASES])
def test_readme_sieve_and_spamtest_settings_file_spam_into_junk_for_each_engine(
        case: str, postfix: PostfixInstance, dovecot: Dovecot, bayes_db: Path,
        start_milter: Start, request: pytest.FixtureRequest) -> None:
    engine, real_spamd, mail = CASES[case]
    if real_spamd:
        spamd: Spamd = request.getfixturevalue("spamd")
        host, port = spamd.host, spamd.port
    else:
        host, port = "127.0.0.1", free_port()  # nothing listens: spamd is down
    # tag-only: GTUBE and Bayes' reject band are delivered, flagged, as at a site that files
    # spam into Junk rather than refusing it
    start_milter({"milter": {"socket": f"unix:{postfix.milter_socket}", "engine": engine},
                  "spamd": {"host": host, "port": port},
                  "bayes": {"db": str(bayes_db), "min_trained": TRAINED},
                  "policy": {"tag_only": True}})
    for kind, make, folder, status in mail:
        subject = f"{kind} via {case}"
        got = deliver(postfix, dovecot, make(subject), subject)
        raw = got["flag"][1]
        [value] = re.findall(rb"^X-Spam-Status: (.*(?:\n\t.*)*)", raw, re.M)
        assert re.match(status, value.decode().replace("\n\t", " ")), (kind, value)
        # both scripts, each in its own user's mailbox
        assert {u: where[0] for u, where in got.items()} == dict.fromkeys(USERS, folder), kind
        # procmail and maildrop: the lines that mean spam whichever engine decided
        spam = folder == "Junk"
        assert bool(re.search(rb"^X-Spam-Flag: YES", raw, re.M)) is spam, kind
        assert bool(re.search(rb"^X-Spam-Status: Yes", raw, re.M)) is spam, kind
        # and the one the README keeps for spamd: five Bayes stars are not spam
        stars = bool(re.search(rb"^X-Spam-Level: \*\*\*\*\*", raw, re.M))
        assert stars is (spam or kind == "unsure"), kind


def test_mail_under_a_threshold_it_rounds_to_is_left_in_the_inbox_by_both_scripts(
        postfix: PostfixInstance, dovecot: Dovecot, start_milter: Start,
        fake: SwitchableSpamd) -> None:
    """tag_at = 5.04, and spamd answers 5.0: not tagged, so no X-Spam-Flag and the second
    script leaves it in INBOX. X-Spam-Status read `No, score=5.0 required=5.0`, and the
    spamtest script, 10 "from the tag threshold up", filed the same message into Junk."""
    fake.reply = spamd_reply(5.0, 5.0)
    start_milter({"milter": {"socket": f"unix:{postfix.milter_socket}", "engine": "spamd"},
                  "spamd": {"host": "127.0.0.1", "port": fake.port},
                  "policy": {"tag_at": 5.04}})
    subject = "just under tag_at"
    got = deliver(postfix, dovecot, message(subject=subject), subject)
    assert {u: where[0] for u, where in got.items()} == dict.fromkeys(USERS, "INBOX")
    [value] = re.findall(rb"^X-Spam-Status: (.*)", got["flag"][1], re.M)
    assert value.startswith(b"No, score=4.9 required=5.0 "), value  # as SpamAssassin's
