"""An MTA-side milter client for tests, on top of PyPI `miltertest`.

It speaks to the real `spambridge run` process over its socket, as Postfix would: header values
without the space after the colon, folded lines joined by "\\n" + whitespace, and it honours
the protocol steps the milter negotiated away (no DATA, no reply for …).
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass, field

from miltertest import codec, constants
from miltertest.client import MilterConnection

from spambridge import message


def _enc(v: str | bytes) -> bytes:
    return v if isinstance(v, bytes) else v.encode("utf-8", "surrogateescape")


def _dec(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _encode_str(v: str | bytes) -> bytes:
    return _enc(v) + b"\0"


def _decode_str(data: bytes) -> tuple[str, bytes]:
    r = data.split(b"\0", 1)
    if len(r) != 2:
        raise codec.MilterNotEnough("short string")
    return _dec(r[0]), r[1]


def _encode_strpairs(pairs: list[str | bytes]) -> bytes:
    """Macros' names and values: codec's own calls its encode_str, not the table's, and made
    "b'...'" of a bytes value."""
    if len(pairs) % 2:
        raise codec.MilterProtoError("uneven number of name/value pairs")
    return b"".join(map(_encode_str, pairs))


# miltertest encodes strings as strict UTF-8; real mail has 8-bit headers (notes §10).
codec.codectypes["str"] = (_encode_str, _decode_str)
codec.codectypes["strpairs"] = (_encode_strpairs, codec.codectypes["strpairs"][1])
codec.codectypes["buf"] = (_enc, lambda d: (_dec(d), b""))


@dataclass
class Result:
    """What the MTA would do with the message at end of data."""

    action: str  # accept | continue | reject | tempfail | discard | …
    smtp_code: str = ""
    smtp_text: str = ""
    added: list[tuple[str, str]] = field(default_factory=list)
    changed: list[tuple[str, int, str]] = field(default_factory=list)  # (name, index, value)
    seconds: float = 0.0
    stage: str = "eom"

    def header(self, name: str) -> str | None:
        for n, v in self.added:
            if n.lower() == name.lower():
                return v
        return None

    def deleted(self, name: str) -> list[int]:
        return sorted(i for n, i, v in self.changed if n.lower() == name.lower() and v == "")

    @property
    def reply(self) -> str:
        return f"{self.smtp_code} {self.smtp_text}".strip()



def status(r: Result) -> str:
    """The X-Spam-Status value unfolded (a fold after a comma continues the tests list)."""
    return (r.header("X-Spam-Status") or "").replace(",\n\t", ",").replace("\n\t", " ")


_ACTIONS = {
    constants.SMFIR_ACCEPT: "accept",
    constants.SMFIR_CONTINUE: "continue",
    constants.SMFIR_REJECT: "reject",
    constants.SMFIR_TEMPFAIL: "tempfail",
    constants.SMFIR_DISCARD: "discard",
    constants.SMFIR_QUARANTINE: "quarantine",
}


class EarlyReply(Exception):
    def __init__(self, result: Result) -> None:
        super().__init__(result.action)
        self.result = result


def split_message(raw: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    """Split a raw message the way Postfix presents it to a milter — spambridge's own
    splitting, which a review checked against a real Postfix 3.7 field by field (and which
    `check` uses), so a test message reaches the milter as it would through Postfix."""
    return message.split_message(raw.replace(b"\r\n", b"\n"))


class MilterClient:
    def __init__(self, address: str | tuple[str, int], timeout: float = 30.0) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.conn = MilterConnection(self.sock)
        self.actions, self.protocol = self.conn.optneg_mta(strict=False)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn._send(constants.SMFIC_QUIT)
        self.sock.close()

    def __enter__(self) -> MilterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------
    def _skipped(self, flag: int) -> bool:
        return bool(self.protocol & flag)

    def _macros(self, stage: str, macros: dict[str, str] | dict[str, str | bytes] | None
                ) -> None:
        if macros:
            self.conn.send_macro(stage, **macros)

    def _step(self, cmd: str, noreply_flag: int, stage: str, **kw: object) -> str:
        if noreply_flag and self._skipped(noreply_flag):
            self.conn._send(cmd, **kw)
            return "continue"
        r = self.conn.send_get(cmd, **kw)
        action = _ACTIONS.get(r[0])
        if r[0] == constants.SMFIR_REPLYCODE:
            code, text = r[1]["smtpcode"], r[1]["text"]
            raise EarlyReply(Result("reply", code, text, stage=stage))
        if r[0] == constants.SMFIR_SKIP:
            return "skip"
        if action != "continue":
            raise EarlyReply(Result(action or r[0], stage=stage))
        return "continue"

    # -- SMTP stages ------------------------------------------------------------------------
    def connect(self, hostname: str | bytes = "mail.example.net", addr: str = "192.0.2.10",
                port: int = 40000, macros: dict[str, str | bytes] | None = None) -> None:
        base: dict[str, str | bytes] = {"j": "mx.test.example",
                                        "{daemon_name}": "mx.test.example",
                                        "_": _enc(hostname) + f" [{addr}]".encode()}
        self._macros(constants.SMFIC_CONNECT, {**base, **(macros or {})})
        family = constants.SMFIA_INET6 if ":" in addr else constants.SMFIA_INET
        self._step(constants.SMFIC_CONNECT, constants.SMFIP_NR_CONN, "connect",
                   hostname=hostname, family=family, port=port, address=addr)

    def helo(self, name: str = "mail.example.net") -> None:
        self._step(constants.SMFIC_HELO, constants.SMFIP_NR_HELO, "helo", helo=name)

    def mail(self, sender: str = "<sender@example.net>",
             macros: dict[str, str] | None = None) -> None:
        self._macros(constants.SMFIC_MAIL, macros)
        self._step(constants.SMFIC_MAIL, constants.SMFIP_NR_MAIL, "mail", args=[sender])

    def rcpt(self, rcpt: str = "<user@test.example>") -> None:
        self._step(constants.SMFIC_RCPT, constants.SMFIP_NR_RCPT, "rcpt", args=[rcpt])

    def data(self, queue_id: str) -> None:
        self._macros(constants.SMFIC_DATA, {"i": queue_id})
        if not self._skipped(constants.SMFIP_NODATA):
            self._step(constants.SMFIC_DATA, constants.SMFIP_NR_DATA, "data")

    def header(self, name: str, value: str | bytes) -> None:
        self._step(constants.SMFIC_HEADER, constants.SMFIP_NR_HDR, "header", name=name,
                   value=value)

    def eoh(self, queue_id: str) -> None:
        self._macros(constants.SMFIC_EOH, {"i": queue_id})
        self._step(constants.SMFIC_EOH, constants.SMFIP_NR_EOH, "eoh")

    def body(self, body: bytes) -> None:
        for start in range(0, len(body), constants.MILTER_CHUNK_SIZE):
            chunk = body[start:start + constants.MILTER_CHUNK_SIZE]
            if self._step(constants.SMFIC_BODY, constants.SMFIP_NR_BODY, "body",
                          buf=chunk) == "skip":
                return

    def eom(self, queue_id: str) -> Result:
        self._macros(constants.SMFIC_BODYEOB, {"i": queue_id})
        start = time.monotonic()
        replies = self.conn.send_eom()
        res = Result("continue", seconds=time.monotonic() - start)
        for cmd, args in replies:
            if cmd == constants.SMFIR_ADDHEADER or cmd == constants.SMFIR_INSHEADER:
                res.added.append((args["name"], args["value"]))
            elif cmd == constants.SMFIR_CHGHEADER:
                res.changed.append((args["name"], args["index"], args["value"]))
            elif cmd == constants.SMFIR_REPLYCODE:
                res.action = {"4": "tempfail", "5": "reject"}.get(args["smtpcode"][0], "reply")
                res.smtp_code, res.smtp_text = args["smtpcode"], args["text"]
            elif cmd in _ACTIONS:
                res.action = _ACTIONS[cmd]
        return res

    def abort(self) -> None:
        self.conn._send(constants.SMFIC_ABORT)

    # -- one whole message --------------------------------------------------------------------
    def send(
        self,
        raw: bytes,
        *,
        sender: str = "<sender@example.net>",
        rcpts: tuple[str, ...] = ("<user@test.example>",),
        queue_id: str = "4ABCDEF0123",
        mail_macros: dict[str, str] | None = None,
        connected: bool = False,
        client_addr: str = "192.0.2.10",
    ) -> Result:
        """Run one SMTP transaction; returns the end-of-message result (or an early reply)."""
        start = time.monotonic()
        try:
            if not connected:
                self.connect(addr=client_addr)
                self.helo()
            self.mail(sender, mail_macros)
            for r in rcpts:
                self.rcpt(r)
            self.data(queue_id)
            headers, body = split_message(raw)
            for name, value in headers:
                self.header(name, value)
            self.eoh(queue_id)
            self.body(body)
            res = self.eom(queue_id)
        except EarlyReply as e:
            res = e.result
        res.seconds = time.monotonic() - start
        return res


def send_one(address: str | tuple[str, int], raw: bytes, **kw: object) -> Result:
    with MilterClient(address) as c:
        return c.send(raw, **kw)  # type: ignore[arg-type]
