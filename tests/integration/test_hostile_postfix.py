"""Hostile-but-legal mail through a real Postfix in front of the real milter."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from harness import RunningMilter, message
from postfix_instance import PostfixInstance
from spamdfakes import SwitchableSpamd

pytestmark = pytest.mark.postfix

Start = Callable[..., RunningMilter]


def test_a_100_kb_header_is_delivered_and_scanned(postfix: PostfixInstance, start_milter: Start,
                                                  fake: SwitchableSpamd) -> None:
    """A 100 kB References header (a very long thread). libmilter drops the connection on any
    packet over 64 KiB, which would make Postfix answer 451 on every retry; Postfix (3.7,
    defaults) shortens such a header to about 60 kB before any milter sees it, so the message
    is scanned and delivered, and the socket-level fuzz sends at most that much per header."""
    m = start_milter({"milter": {"socket": f"unix:{postfix.milter_socket}", "engine": "spamd"},
                      "spamd": {"host": "127.0.0.1", "port": fake.port}})
    ids = [f"<{n}.{'a' * 40}@lists.example.org>" for n in range(1600)]
    raw = message(subject="long thread", extra_headers="References: " + "\n\t".join(ids) + "\n")
    assert len(raw) > 100_000
    qid = postfix.send(raw)
    got = postfix.wait_delivered(qid)
    [status] = got.all("X-Spam-Status")
    assert status.startswith("No, score=1.5")
    kept = got.raw.count(b"@lists.example.org>")
    assert 0 < kept < len(ids)
    assert len("\n\t".join(ids[:kept])) < 65535
    assert f"{qid}: " in m.log and "Traceback" not in m.log


def test_a_flood_of_forged_x_spam_fields_cannot_crash_postfix(
        postfix: PostfixInstance, start_milter: Start, fake: SwitchableSpamd) -> None:
    """10,500 forged X-Spam-Flag fields in a 200 kB message. Asked to delete them all,
    Postfix's cleanup passes its limit of 10,000 edits per message, panics, and every sender
    waits about a minute while the master throttles it. The milter removes the first 1,000
    (no honest message has more than a few dozen), logs the rest, and the message — and the
    next one — are delivered with our status."""
    m = start_milter({"milter": {"socket": f"unix:{postfix.milter_socket}", "engine": "spamd"},
                      "spamd": {"host": "127.0.0.1", "port": fake.port}})
    forged = "".join(f"X-Spam-Flag: forged{i}\n" for i in range(10_500))
    forged += "X-Spam-Status: No, score=-9.9 forged\n"  # after the flood: not shielded by it
    qid = postfix.send(message(subject="flood", extra_headers=forged))
    got = postfix.wait_delivered(qid)
    flags = got.all("X-Spam-Flag")
    assert len(flags) == 10_500 - 999 and "forged0" not in flags and "forged998" not in flags
    # over MAX_HEADERS (10,000) fields the message is still scanned, with the first 10,000
    # (it was oversize, so accepted unchecked: a spammer's bypass); the verdict goes on top
    # of the forged fields left, and the forged status is gone
    [status] = got.all("X-Spam-Status")
    assert status.startswith("No, score=1.5 ") and "forged" not in status
    assert got.raw.index(b"X-Spam-Status") < got.raw.index(b"X-Spam-Flag: forged")
    assert f"{qid}: 10501 forged X-Spam-* fields, only the first 1000 removed; ours go on top" \
        in m.log
    fields = 7 + 10_501  # message()'s own, then the flood
    [line] = [x for x in m.log.splitlines() if f"{qid}: from=<" in x]
    assert " score=1.5 action=accept reason=ham " in line, line
    assert line.endswith(f" unscanned_fields={fields - 10_000}"), line
    after = postfix.send(message(subject="next"))
    postfix.wait_delivered(after, timeout=10)
    assert "panic" not in postfix.log and "Traceback" not in m.log
