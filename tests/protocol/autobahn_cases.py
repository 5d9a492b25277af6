"""The conformance case table, modelled on the Autobahn testsuite's client cases.

Section numbers follow Autobahn (1 framing, 2 ping/pong, 3 reserved bits, 4 opcodes,
5 fragmentation, 6 UTF-8, 7 close, 9 limits, 10 misc, 12/13 permessage-deflate); section
0 is ours (the opening handshake).  Case bodies are our own: each is a raw server script
(tests/rawserver.py actions) plus what the client must do about it.

Where Autobahn sends "good frame, bad frame" in one write, we wait for the echo of the
good message first: a sans-IO core that processes the whole buffer before the driver
echoes would otherwise make the expected echo depend on TCP segmentation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from iotcommute.exceptions import (
    HandshakeError,
    InvalidHandshake,
    InvalidStatus,
    InvalidUTF8Error,
    IotCommuteError,
    MessageTooBigError,
    PermissionDenied,
    ProtocolError,
    RedirectError,
    TokenError,
    VersionError,
)
from tests.rawserver import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Action,
    Drop,
    Handshake,
    NoFinalClose,
    Pause,
    Send,
    SendChunks,
    SendDeflated,
    WaitClose,
    WaitEcho,
    WaitPong,
    binary,
    close,
    fragments,
    frame,
    ping,
    pong,
    text,
)

ANY_PONGS = None


@dataclass(frozen=True)
class Case:
    """One conformance case.

    ``echo``: messages the client must receive (as events) and send back, in order.
    ``close``: the close codes the client may send (None in the set: it sends none;
    1005: an empty close payload).  ``error``: the ``Failed`` exception class expected
    (None: no ``Failed`` event).  ``close_received``: the code of the ``CloseReceived``
    event expected when there is no error (None: do not check).  ``pongs``: exact pong
    payloads (None: do not check); ``last_pong``: must be among the pongs.
    ``fail_fast``: every ``WaitClose`` in the script must see the client's close.
    """

    id: str
    desc: str
    script: tuple[Action, ...] = ()
    echo: tuple[str | bytes, ...] = ()
    close: frozenset[int | None] = frozenset({1000})
    error: type[IotCommuteError] | None = None
    close_received: int | None = 1000
    close_reason: str | None = None
    pongs: tuple[bytes, ...] | None = ()
    last_pong: bytes | None = None
    fail_fast: bool = False
    handshake: Handshake = field(default_factory=Handshake)
    client: tuple[tuple[str, Any], ...] = ()
    status: int | None = None
    needs_offer: str | None = None  # else the client must reject the answer (RFC 7692)
    client_close: tuple[int, str] | None = None  # the client closes after the echoes
    may_fail: bool = False  # a Failed event is allowed (but not required) when error is None
    slow: bool = False

    @property
    def client_kwargs(self) -> dict[str, Any]:
        return dict(self.client)


CASES: list[Case] = []


def add(id: str, desc: str, *script: Action, **kw: Any) -> None:
    if "echo" in kw:
        kw["echo"] = tuple(kw["echo"])
    if "pongs" in kw and kw["pongs"] is not None:
        kw["pongs"] = tuple(kw["pongs"])
    if "close" in kw and not isinstance(kw["close"], frozenset):
        c = kw["close"]
        kw["close"] = frozenset(c if isinstance(c, (set, tuple, list)) else {c})
    if "client" in kw and isinstance(kw["client"], dict):
        kw["client"] = tuple(sorted(kw["client"].items()))
    CASES.append(Case(id, desc, tuple(script), **kw))


def fail(
    id: str, desc: str, *script: Action, code: int | set[int | None] = 1002, **kw: Any
) -> None:
    """A case where the client must fail the connection with ``code``."""
    kw.setdefault("error", ProtocolError)
    kw.setdefault("close_received", None)
    add(id, desc, *script, close=code if isinstance(code, set) else {code}, **kw)


def rnd(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def compressible_text(n: int, seed: int) -> str:
    words = ["sensor", "temperature", "21.5", "humidity", "device", "tick", '{"a":1}', "ß", "κόσμε"]
    r = random.Random(seed)
    out: list[str] = []
    size = 0
    while size < n:
        w = r.choice(words)
        out.append(w)
        size += len(w.encode()) + 1
    return " ".join(out).encode()[:n].decode("utf-8", "ignore")


# --------------------------------------------------------------------------- 0 handshake

fail(
    "0.1",
    "Sec-WebSocket-Accept is wrong",
    handshake=Handshake(bad_accept=True),
    error=InvalidHandshake,
    code={None},
)
fail(
    "0.2",
    "HTTP 401 at the upgrade",
    handshake=Handshake(status=401),
    error=TokenError,
    code={None},
    status=401,
)
fail(
    "0.3",
    "HTTP 403 at the upgrade",
    handshake=Handshake(status=403),
    error=PermissionDenied,
    code={None},
    status=403,
)
fail(
    "0.4",
    "HTTP 500 at the upgrade",
    handshake=Handshake(status=500),
    error=InvalidStatus,
    code={None},
    status=500,
)
fail(
    "0.5",
    "HTTP 302 redirect at the upgrade",
    handshake=Handshake(status=302, extra_headers=(("Location", "ws://127.0.0.1:1/x"),)),
    error=RedirectError,
    code={None},
    status=302,
)
fail(
    "0.6",
    "HTTP 426 (protocol version refused)",
    handshake=Handshake(status=426),
    error=VersionError,
    code={None},
    status=426,
)
fail(
    "0.7",
    "101 without Upgrade/Connection headers",
    handshake=Handshake(raw=b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
    error=HandshakeError,
    code={None},
)
fail(
    "0.8",
    "101 with a subprotocol that was not requested",
    handshake=Handshake(extra_headers=(("Sec-WebSocket-Protocol", "chat"),)),
    error=InvalidHandshake,
    code={None},
)
fail(
    "0.9",
    "101 with an extension that was not offered",
    handshake=Handshake(extra_headers=(("Sec-WebSocket-Extensions", "x-unknown"),)),
    error=InvalidHandshake,
    code={None},
)
add(
    "0.11",
    "101 response arrives one byte at a time",
    Send(text("after")),
    echo=["after"],
    handshake=Handshake(chunk=1),
)
add(
    "0.12",
    "101 response and the first frames in one TCP write",
    echo=["glued", b"\x01"],
    handshake=Handshake(glue=text("glued") + binary(b"\x01")),
)
add(
    "0.13",
    "101 response with a close frame glued to it",
    close={1001},
    close_received=1001,
    handshake=Handshake(glue=close(1001)),
)
fail(
    "0.10",
    "garbage instead of an HTTP response",
    handshake=Handshake(raw=b"SSH-2.0-OpenSSH_9.0\r\n\r\n"),
    error=HandshakeError,
    code={None},
)

# --------------------------------------------------------------------------- 1 framing

_SIZES = [0, 125, 126, 127, 128, 65535, 65536]
for i, n in enumerate(_SIZES, 1):
    s = "*" * n
    add(f"1.1.{i}", f"text message, payload {n}", Send(text(s)), echo=[s])
    b = rnd(n, i)
    add(f"1.2.{i}", f"binary message, payload {n}", Send(binary(b)), echo=[b])
add(
    "1.1.8",
    "text 65536 sent in TCP chunks of 997",
    SendChunks(text("*" * 65536), 997),
    echo=["*" * 65536],
)
add(
    "1.2.8",
    "binary 65536 sent in TCP chunks of 997",
    SendChunks(binary(rnd(65536, 8)), 997),
    echo=[rnd(65536, 8)],
)
add(
    "1.3.1",
    "frame header arrives one byte at a time (16-bit length)",
    SendChunks(text("x" * 300), 1),
    echo=["x" * 300],
)
add(
    "1.3.2",
    "frame header arrives one byte at a time (64-bit length)",
    SendChunks(binary(b"\x01" * 70000)[:20], 1),
    Send(binary(b"\x01" * 70000)[20:]),
    echo=[b"\x01" * 70000],
)
fail(
    "1.3.3",
    "server frame is masked (RFC 6455 5.1)",
    Send(text("hello", mask=b"\x01\x02\x03\x04")),
    Send(ping(b"p")),
)
fail(
    "1.3.4",
    "64-bit length with the most significant bit set",
    Send(frame(OP_BINARY, b"", length=1 << 63)),
    code={1002, 1009},
    error=ProtocolError,
)
add(
    "1.3.5",
    "many small messages in one write",
    Send(b"".join(text(f"m{i}") for i in range(200))),
    echo=[f"m{i}" for i in range(200)],
)

# --------------------------------------------------------------------------- 2 ping/pong

add("2.1", "ping, empty payload", Send(ping()), WaitPong(1), pongs=[b""])
add(
    "2.2",
    "ping, small text payload",
    Send(ping(b"Hello, world!")),
    WaitPong(1),
    pongs=[b"Hello, world!"],
)
_bp = b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff"
add("2.3", "ping, small binary payload", Send(ping(_bp)), WaitPong(1), pongs=[_bp])
add("2.4", "ping, payload 125", Send(ping(b"\xfe" * 125)), WaitPong(1), pongs=[b"\xfe" * 125])
fail("2.5", "ping, payload 126 (control frame too big)", Send(ping(b"\xfe" * 126)))
add(
    "2.6",
    "ping 125 sent byte by byte",
    SendChunks(ping(b"\xfe" * 125), 1),
    WaitPong(1),
    pongs=[b"\xfe" * 125],
)
add("2.7", "unsolicited pong, empty", Send(pong()))
add("2.8", "unsolicited pong, payload", Send(pong(b"unsolicited pong payload")))
add(
    "2.9",
    "unsolicited pong, then ping",
    Send(pong(b"unsolicited")),
    Send(ping(b"ping")),
    WaitPong(1),
    pongs=[b"ping"],
)
_pings = [f"payload-{i}".encode() for i in range(10)]
add(
    "2.10",
    "10 pings in one write",
    Send(b"".join(ping(p) for p in _pings)),
    WaitPong(10),
    pongs=ANY_PONGS,
    last_pong=_pings[-1],
)
add(
    "2.11",
    "10 pings, paced",
    *[a for p in _pings for a in (Send(ping(p)), Pause(0.005))],
    WaitPong(10),
    pongs=ANY_PONGS,
    last_pong=_pings[-1],
)
fail("2.12", "fragmented ping", Send(frame(OP_PING, b"ab", fin=False)), Send(frame(OP_CONT, b"cd")))
add(
    "2.13",
    "ping with 125 bytes of binary, in the middle of text messages",
    Send(text("a") + ping(bytes(range(125))) + text("b")),
    WaitEcho(2),
    WaitPong(1),
    echo=["a", "b"],
    pongs=[bytes(range(125))],
)

# --------------------------------------------------------------------------- 3 reserved bits

fail("3.1", "text with RSV=1", Send(text("hello", rsv=1)))
fail(
    "3.2",
    "text, text with RSV=2, ping",
    Send(text("hello")),
    WaitEcho(1),
    Send(text("hello", rsv=2)),
    Send(ping(b"p")),
    echo=["hello"],
)
fail(
    "3.3",
    "text, text with RSV=3, ping (paced)",
    Send(text("hello")),
    WaitEcho(1),
    Pause(0.01),
    Send(text("hello", rsv=3)),
    Pause(0.01),
    Send(ping(b"p")),
    echo=["hello"],
)
fail(
    "3.4",
    "text with RSV=4 (RSV1, deflate not negotiated), ping",
    Send(text("hello")),
    WaitEcho(1),
    Send(text("hello", rsv=4)),
    Send(ping(b"p")),
    echo=["hello"],
    client={"compression": False},
)
fail("3.5", "binary with RSV=5", Send(binary(b"\x00\xff" * 4, rsv=5)))
fail("3.6", "ping with RSV=6", Send(ping(b"p", rsv=6)))
fail("3.7", "close with RSV=7", Send(close(1000, rsv=7)))
fail(
    "3.8",
    "continuation with RSV=2",
    Send(frame(OP_TEXT, b"ab", fin=False)),
    Send(frame(OP_CONT, b"cd", rsv=2)),
)

# --------------------------------------------------------------------------- 4 opcodes

for sec, ops in (("4.1", (3, 4, 5, 6, 7)), ("4.2", (11, 12, 13, 14, 15))):
    kind = "non-control" if sec == "4.1" else "control"
    fail(f"{sec}.1", f"reserved {kind} opcode {ops[0]}", Send(frame(ops[0])))
    fail(
        f"{sec}.2",
        f"reserved {kind} opcode {ops[1]} with payload",
        Send(frame(ops[1], b"reserved opcode payload")),
    )
    fail(
        f"{sec}.3",
        f"text, reserved {kind} opcode {ops[2]}, ping",
        Send(text("hello")),
        WaitEcho(1),
        Send(frame(ops[2])),
        Send(ping(b"p")),
        echo=["hello"],
    )
    fail(
        f"{sec}.4",
        f"text, reserved {kind} opcode {ops[3]} with payload, ping",
        Send(text("hello")),
        WaitEcho(1),
        Send(frame(ops[3], b"payload")),
        Send(ping(b"p")),
        echo=["hello"],
    )
    fail(
        f"{sec}.5",
        f"text, reserved {kind} opcode {ops[4]} with payload, ping (one write)",
        Send(text("hello")),
        WaitEcho(1),
        Send(frame(ops[4], b"payload") + ping(b"p")),
        echo=["hello"],
    )

# --------------------------------------------------------------------------- 5 fragmentation

fail(
    "5.1",
    "ping in 2 fragments",
    Send(frame(OP_PING, b"frag", fin=False)),
    Send(frame(OP_CONT, b"ment")),
)
fail(
    "5.2",
    "pong in 2 fragments",
    Send(frame(OP_PONG, b"frag", fin=False)),
    Send(frame(OP_CONT, b"ment")),
)
_f2 = frame(OP_TEXT, b"fragment1", fin=False) + frame(OP_CONT, b"fragment2")
add("5.3", "text in 2 fragments", Send(_f2), echo=["fragment1fragment2"])
add("5.4", "text in 2 fragments, byte by byte", SendChunks(_f2, 1), echo=["fragment1fragment2"])
add(
    "5.5",
    "text in 2 fragments, paced",
    Send(frame(OP_TEXT, b"fragment1", fin=False)),
    Pause(0.02),
    Send(frame(OP_CONT, b"fragment2")),
    echo=["fragment1fragment2"],
)
_fp = frame(OP_TEXT, b"fragment1", fin=False) + ping(b"pong me") + frame(OP_CONT, b"fragment2")
add(
    "5.6",
    "text in 2 fragments with a ping between",
    Send(_fp),
    WaitPong(1),
    echo=["fragment1fragment2"],
    pongs=[b"pong me"],
)
add(
    "5.7",
    "text in 2 fragments with a ping between, paced",
    Send(frame(OP_TEXT, b"fragment1", fin=False)),
    Pause(0.01),
    Send(ping(b"pong me")),
    WaitPong(1),
    Send(frame(OP_CONT, b"fragment2")),
    echo=["fragment1fragment2"],
    pongs=[b"pong me"],
)
add(
    "5.8",
    "text in 2 fragments with a ping between, byte by byte",
    SendChunks(_fp, 1),
    WaitPong(1),
    echo=["fragment1fragment2"],
    pongs=[b"pong me"],
)
_orphan = frame(OP_CONT, b"non-continuation payload") + text("Hello, world!")
fail("5.9", "continuation (fin) without start, then text", Send(_orphan))
fail("5.10", "continuation (fin) without start, byte by byte", SendChunks(_orphan, 1))
fail(
    "5.11",
    "continuation (fin) without start, paced",
    Send(frame(OP_CONT, b"non-continuation payload")),
    Pause(0.02),
    Send(text("Hello")),
)
_orphan2 = frame(OP_CONT, b"non-continuation payload", fin=False) + text("Hello, world!")
fail("5.12", "continuation (no fin) without start", Send(_orphan2))
fail("5.13", "continuation (no fin) without start, byte by byte", SendChunks(_orphan2, 1))
fail(
    "5.14",
    "continuation (no fin) without start, paced",
    Send(frame(OP_CONT, b"non-continuation", fin=False)),
    Pause(0.02),
    Send(text("Hello")),
)
fail(
    "5.15",
    "text f1,f2 (complete), then continuation f3, text f4",
    Send(frame(OP_TEXT, b"fragment1", fin=False) + frame(OP_CONT, b"fragment2")),
    WaitEcho(1),
    Send(frame(OP_CONT, b"fragment3", fin=False) + frame(OP_TEXT, b"fragment4")),
    echo=["fragment1fragment2"],
)
fail(
    "5.16",
    "continuation, text (no fin), continuation (fin) x2",
    Send(
        (
            frame(OP_CONT, b"f1", fin=False)
            + frame(OP_TEXT, b"f2", fin=False)
            + frame(OP_CONT, b"f3")
        )
        * 2
    ),
)
fail(
    "5.17",
    "continuation (fin), text (no fin), continuation (fin) x2",
    Send((frame(OP_CONT, b"f1") + frame(OP_TEXT, b"f2", fin=False) + frame(OP_CONT, b"f3")) * 2),
)
fail(
    "5.18",
    "text (no fin) then text (fin): missing continuation",
    Send(frame(OP_TEXT, b"fragment1", fin=False) + frame(OP_TEXT, b"fragment2")),
)
_five = [f"fragment{i}".encode() for i in range(1, 6)]
add(
    "5.19",
    "text in 5 fragments with pings between, paced",
    Send(frame(OP_TEXT, _five[0], fin=False)),
    Send(frame(OP_CONT, _five[1], fin=False)),
    Pause(0.02),
    Send(ping(b"pongme 1!")),
    WaitPong(1),
    Send(frame(OP_CONT, _five[2], fin=False)),
    Send(frame(OP_CONT, _five[3], fin=False)),
    Pause(0.02),
    Send(ping(b"pongme 2!")),
    WaitPong(2),
    Send(frame(OP_CONT, _five[4])),
    echo=[b"".join(_five).decode()],
    pongs=[b"pongme 1!", b"pongme 2!"],
)
_five_all = (
    frame(OP_TEXT, _five[0], fin=False)
    + frame(OP_CONT, _five[1], fin=False)
    + ping(b"pongme 1!")
    + frame(OP_CONT, _five[2], fin=False)
    + frame(OP_CONT, _five[3], fin=False)
    + ping(b"pongme 2!")
    + frame(OP_CONT, _five[4])
)
add(
    "5.20",
    "text in 5 fragments with pings between, in TCP chunks of 7",
    SendChunks(_five_all, 7),
    WaitPong(2),
    echo=[b"".join(_five).decode()],
    pongs=[b"pongme 1!", b"pongme 2!"],
)
fail(
    "5.21",
    "close frame without fin",
    Send(frame(OP_CLOSE, b"\x03\xe8", fin=False)),
    Send(frame(OP_CONT, b"")),
)
add(
    "5.22",
    "binary in 10 fragments",
    Send(fragments(OP_BINARY, rnd(100, 22), 10)),
    echo=[rnd(100, 22)],
)
add(
    "5.23",
    "text in 3 empty fragments",
    Send(frame(OP_TEXT, b"", fin=False) + frame(OP_CONT, b"", fin=False) + frame(OP_CONT, b"")),
    echo=[""],
)
add(
    "5.24",
    "empty first fragment, data in the last",
    Send(frame(OP_BINARY, b"", fin=False) + frame(OP_CONT, b"\x00\x01")),
    echo=[b"\x00\x01"],
)
fail(
    "5.25",
    "binary (no fin) then ping then binary: missing continuation",
    Send(frame(OP_BINARY, b"a", fin=False) + ping(b"x")),
    WaitPong(1),
    Send(frame(OP_BINARY, b"b")),
    pongs=[b"x"],
)

# --------------------------------------------------------------------------- 6 UTF-8

add("6.1.1", "empty text", Send(text("")), echo=[""])
add(
    "6.1.2",
    "empty text in 3 fragments",
    Send(frame(OP_TEXT, b"", fin=False) + frame(OP_CONT, b"", fin=False) + frame(OP_CONT, b"")),
    echo=[""],
)
add(
    "6.1.3",
    "text: empty, 'middle', empty fragments",
    Send(
        frame(OP_TEXT, b"", fin=False) + frame(OP_CONT, b"middle", fin=False) + frame(OP_CONT, b"")
    ),
    echo=["middle"],
)
_hello = "Hello-µ@ßöäüàá-UTF-8!!"
_hb = _hello.encode()
add("6.2.1", "valid UTF-8 in one frame", Send(text(_hello)), echo=[_hello])
add(
    "6.2.2",
    "valid UTF-8 fragmented on code points",
    Send(
        frame(OP_TEXT, "Hello-µ@ßöä".encode(), fin=False) + frame(OP_CONT, "üàá-UTF-8!!".encode())
    ),
    echo=[_hello],
)
add("6.2.3", "valid UTF-8, one frame sent byte by byte", SendChunks(text(_hello), 1), echo=[_hello])
add("6.2.4", "valid UTF-8, one fragment per byte", Send(fragments(OP_TEXT, _hb, 1)), echo=[_hello])
_kosme = "κόσμε".encode()
_bad = _kosme + b"\xed\xa0\x80" + b"edited"
fail("6.3.1", "invalid UTF-8 in one frame", Send(text(_bad)), code=1007, error=InvalidUTF8Error)
fail(
    "6.3.2",
    "invalid UTF-8, one fragment per byte",
    Send(fragments(OP_TEXT, _bad, 1)),
    code=1007,
    error=InvalidUTF8Error,
)
# Fail fast: the client must fail as soon as the bad bytes arrive, before the rest.
fail(
    "6.4.1",
    "fail fast: invalid code point in a middle fragment",
    Send(frame(OP_TEXT, _kosme, fin=False)),
    Send(frame(OP_CONT, b"\xf4\x90\x80\x80", fin=False)),
    WaitClose(),
    Send(frame(OP_CONT, b"edited")),
    code=1007,
    error=InvalidUTF8Error,
    fail_fast=True,
)
fail(
    "6.4.2",
    "fail fast: fragment ends inside a sequence made invalid by the next",
    Send(frame(OP_TEXT, _kosme + b"\xf4", fin=False)),
    Send(frame(OP_CONT, b"\x90\x80\x80", fin=False)),
    WaitClose(),
    Send(frame(OP_CONT, b"edited")),
    code=1007,
    error=InvalidUTF8Error,
    fail_fast=True,
)
_one = text(_kosme + b"\xf4\x90\x80\x80" + b"edited" * 100)  # 16-bit length: 4-byte header
_k = 4 + len(_kosme)
fail(
    "6.4.3",
    "fail fast: invalid bytes at the start of a long frame (TCP chunks)",
    Send(_one[: _k + 4]),
    WaitClose(),
    Send(_one[_k + 4 :]),
    code=1007,
    error=InvalidUTF8Error,
    fail_fast=True,
)
fail(
    "6.4.4",
    "fail fast: invalid sequence split across TCP chunks of one frame",
    Send(_one[: _k + 1]),
    Pause(0.01),
    Send(_one[_k + 1 : _k + 2]),
    WaitClose(),
    Send(_one[_k + 2 :]),
    code=1007,
    error=InvalidUTF8Error,
    fail_fast=True,
)
_cont = frame(OP_CONT, b"ok" * 50 + b"\xc0\xaf" + b"z" * 500)  # overlong '/' mid-frame
fail(
    "6.4.8",
    "fail fast: overlong sequence inside a continuation frame still arriving",
    Send(frame(OP_TEXT, _kosme, fin=False)),
    Send(_cont[: 4 + 100 + 2]),
    WaitClose(),
    Send(_cont[4 + 100 + 2 :]),
    code=1007,
    error=InvalidUTF8Error,
    fail_fast=True,
)
fail(
    "6.4.5",
    "truncated sequence at the end of a complete message",
    Send(text(_kosme + b"\xce")),
    code=1007,
    error=InvalidUTF8Error,
)
fail(
    "6.4.6",
    "truncated sequence at the end of a fragmented message",
    Send(frame(OP_TEXT, _kosme, fin=False) + frame(OP_CONT, b"\xe2\x82")),
    code=1007,
    error=InvalidUTF8Error,
)
add(
    "6.4.7",
    "code point split across 3 fragments (valid)",
    Send(
        frame(OP_TEXT, b"a\xf0", fin=False)
        + frame(OP_CONT, b"\x9f", fin=False)
        + frame(OP_CONT, b"\x98\x80b")
    ),
    echo=["a\U0001f600b"],
)

# Vectors: (section, description, [sequences]); validity is decided by Python's strict
# decoder, which follows the Unicode standard (no surrogates, no overlongs, <= U+10FFFF).
_VECTORS: list[tuple[str, str, list[bytes]]] = [
    (
        "6.5",
        "valid sample text",
        [_kosme, "ελληνικά ©".encode(), "日本語テキスト".encode(), "😀 emoji".encode()],
    ),
    ("6.6", "prefixes of κόσμε", [_kosme[:i] for i in range(1, len(_kosme) + 1)]),
    (
        "6.7",
        "first possible sequence of each length",
        [b"\x00", b"\xc2\x80", b"\xe0\xa0\x80", b"\xf0\x90\x80\x80"],
    ),
    ("6.8", "5- and 6-byte sequences", [b"\xf8\x88\x80\x80\x80", b"\xfc\x84\x80\x80\x80\x80"]),
    (
        "6.9",
        "last possible sequence of each length",
        [b"\x7f", b"\xdf\xbf", b"\xef\xbf\xbf", b"\xf4\x8f\xbf\xbf"],
    ),
    (
        "6.10",
        "beyond U+10FFFF",
        [b"\xf7\xbf\xbf\xbf", b"\xfb\xbf\xbf\xbf\xbf", b"\xfd\xbf\xbf\xbf\xbf\xbf"],
    ),
    (
        "6.11",
        "other boundary conditions",
        [
            b"\xed\x9f\xbf",
            b"\xee\x80\x80",
            b"\xef\xbf\xbd",
            b"\xf4\x8f\xbf\xbf",
            b"\xf4\x90\x80\x80",
        ],
    ),
    (
        "6.12",
        "unexpected continuation bytes",
        [
            b"\x80",
            b"\xbf",
            b"\x80\xbf",
            b"\x80\xbf\x80",
            b"\x80\xbf\x80\xbf",
            b"\x80\xbf\x80\xbf\x80",
            b"\x80\xbf\x80\xbf\x80\xbf",
            bytes(range(0x80, 0xC0)),
        ],
    ),
    (
        "6.13",
        "lonely start characters",
        [
            b"".join(bytes([c, 0x20]) for c in range(a, b))
            for a, b in ((0xC0, 0xE0), (0xE0, 0xF0), (0xF0, 0xF8), (0xF8, 0xFC), (0xFC, 0xFE))
        ],
    ),
    (
        "6.14",
        "sequences with the last byte missing",
        [
            b"\xc0",
            b"\xe0\x80",
            b"\xf0\x80\x80",
            b"\xf8\x80\x80\x80",
            b"\xfc\x80\x80\x80\x80",
            b"\xdf",
            b"\xef\xbf",
            b"\xf7\xbf\xbf",
            b"\xfb\xbf\xbf\xbf",
            b"\xfd\xbf\xbf\xbf\xbf",
        ],
    ),
    (
        "6.15",
        "concatenated incomplete sequences",
        [
            b"\xc0\xe0\x80\xf0\x80\x80\xf8\x80\x80\x80\xfc\x80\x80\x80\x80"
            b"\xdf\xef\xbf\xf7\xbf\xbf\xfb\xbf\xbf\xbf\xfd\xbf\xbf\xbf\xbf"
        ],
    ),
    ("6.16", "impossible bytes", [b"\xfe", b"\xff", b"\xfe\xfe\xff\xff"]),
    (
        "6.17",
        "overlong ASCII '/'",
        [
            b"\xc0\xaf",
            b"\xe0\x80\xaf",
            b"\xf0\x80\x80\xaf",
            b"\xf8\x80\x80\x80\xaf",
            b"\xfc\x80\x80\x80\x80\xaf",
        ],
    ),
    (
        "6.18",
        "maximum overlong sequences",
        [
            b"\xc1\xbf",
            b"\xe0\x9f\xbf",
            b"\xf0\x8f\xbf\xbf",
            b"\xf8\x87\xbf\xbf\xbf",
            b"\xfc\x83\xbf\xbf\xbf\xbf",
        ],
    ),
    (
        "6.19",
        "overlong NUL",
        [
            b"\xc0\x80",
            b"\xe0\x80\x80",
            b"\xf0\x80\x80\x80",
            b"\xf8\x80\x80\x80\x80",
            b"\xfc\x80\x80\x80\x80\x80",
        ],
    ),
    (
        "6.20",
        "single UTF-16 surrogates",
        [
            b"\xed\xa0\x80",
            b"\xed\xad\xbf",
            b"\xed\xae\x80",
            b"\xed\xaf\xbf",
            b"\xed\xb0\x80",
            b"\xed\xbe\x80",
            b"\xed\xbf\xbf",
        ],
    ),
    (
        "6.21",
        "paired UTF-16 surrogates",
        [
            b"\xed\xa0\x80\xed\xb0\x80",
            b"\xed\xa0\x80\xed\xbf\xbf",
            b"\xed\xad\xbf\xed\xb0\x80",
            b"\xed\xad\xbf\xed\xbf\xbf",
            b"\xed\xae\x80\xed\xb0\x80",
            b"\xed\xae\x80\xed\xbf\xbf",
            b"\xed\xaf\xbf\xed\xb0\x80",
            b"\xed\xaf\xbf\xed\xbf\xbf",
        ],
    ),
    (
        "6.22",
        "noncharacters (valid)",
        [
            b"\xef\xbf\xbe",
            b"\xef\xbf\xbf",
            b"\xf0\x9f\xbf\xbe",
            b"\xf0\x9f\xbf\xbf",
            b"\xf4\x8f\xbf\xbe",
            b"\xef\xb7\x90",
            b"\xef\xb7\xaf",
        ],
    ),
    (
        "6.23",
        "miscellaneous",
        [
            b"\xef\xbf\xbd",
            b"\xef\xbb\xbf",
            b"\x00\x00",
            b"a\xc3",
            b"\xc3\xa9\xc3",
            b"\xe2\x82\xac",
            b"\xf0\x9f\x98\x80\x80",
        ],
    ),
]


def _utf8_case(id: str, desc: str, payload: bytes, *script: Action) -> None:
    try:
        s = payload.decode("utf-8")
    except UnicodeDecodeError:
        fail(id, desc + " (invalid)", *script, code=1007, error=InvalidUTF8Error)
    else:
        add(id, desc + " (valid)", *script, echo=[s])


for _sec, _desc, _seqs in _VECTORS:
    for _i, _seq in enumerate(_seqs, 1):
        _utf8_case(f"{_sec}.{_i}", f"{_desc} #{_i}", _seq, Send(text(_seq)))
        # The same sequence split one byte per fragment: validation must not depend on
        # where the frames are cut (RFC 6455 8.1).
        _utf8_case(
            f"{_sec}.{_i}.f",
            f"{_desc} #{_i}, one fragment per byte",
            _seq,
            Send(fragments(OP_TEXT, _seq, 1)),
        )

# --------------------------------------------------------------------------- 7 close

add(
    "7.1.1",
    "text, echo, then close",
    Send(text("Hello World!")),
    WaitEcho(1),
    Send(close(1000)),
    echo=["Hello World!"],
)
add("7.1.2", "close twice", Send(close(1000) + close(1000)))
add("7.1.3", "close, then ping: no pong", Send(close(1000)), Send(ping(b"late")), pongs=[])
add("7.1.4", "close, then text: not delivered", Send(close(1000) + text("late")))
add(
    "7.1.5",
    "text fragment, close, continuation: message dropped",
    Send(frame(OP_TEXT, b"fragment1", fin=False)),
    Send(close(1000)),
    Send(frame(OP_CONT, b"fragment2")),
)
add(
    "7.1.6",
    "large text, echo, then close",
    Send(text("BAsd7&jh23" * 26214)),
    WaitEcho(1),
    Send(close(1000)),
    echo=["BAsd7&jh23" * 26214],
)
add("7.3.1", "close with empty payload", Send(close(None)), close={1005, 1000}, close_received=1005)
fail("7.3.2", "close with a 1-byte payload", Send(frame(OP_CLOSE, b"\x03")))
add("7.3.3", "close 1000, no reason", Send(close(1000)), close_reason="")
add(
    "7.3.4",
    "close 1000 with a reason",
    Send(close(1000, "Hello World!")),
    close_reason="Hello World!",
)
add(
    "7.3.5",
    "close 1000 with a 123-byte reason",
    Send(close(1000, "*" * 123)),
    close_reason="*" * 123,
)
fail("7.3.6", "close 1000 with a 124-byte reason (payload 126)", Send(close(1000, "*" * 124)))
add("7.3.7", "close with a UTF-8 reason", Send(close(1000, "κόσμε 😀")), close_reason="κόσμε 😀")
fail(
    "7.5.1",
    "close with an invalid UTF-8 reason",
    Send(close(1000, _bad)),
    code=1007,
    error=InvalidUTF8Error,
)
fail(
    "7.5.2",
    "close reason cut inside a code point",
    Send(close(1000, "κόσμε".encode()[:-1])),
    code=1007,
    error=InvalidUTF8Error,
)
for _i, _code in enumerate(
    (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999), 1
):
    add(
        f"7.7.{_i}",
        f"close with valid code {_code}",
        Send(close(_code)),
        close={_code},
        close_received=_code,
    )
for _i, _code in enumerate(
    (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535), 1
):
    fail(f"7.9.{_i}", f"close with invalid code {_code}", Send(close(_code)))
add(
    "7.13.1",
    "server drops TCP without closing",
    Send(text("bye")),
    WaitEcho(1),
    Drop(),
    echo=["bye"],
    close={None},
    close_received=None,
)
add(
    "7.13.2",
    "server drops TCP in the middle of a frame",
    Send(text("x" * 100)[:50]),
    Drop(),
    close={None},
    close_received=None,
    may_fail=True,
)
add(
    "7.13.3",
    "server sends close and ping in one write; only the close counts",
    Send(close(1001, "going away") + ping(b"late")),
    close={1001},
    close_received=1001,
    close_reason="going away",
    pongs=[],
)

# --------------------------------------------------------------------------- 9 limits

for _i, _n in enumerate((65536, 262144, 1 << 20), 1):
    add(f"9.1.{_i}", f"text message of {_n} bytes", Send(text("*" * _n)), echo=["*" * _n])
for _i, _n in enumerate((65536, 1 << 20, 4 << 20), 1):
    add(
        f"9.2.{_i}",
        f"binary message of {_n} bytes",
        Send(binary(b"\xfe" * _n)),
        echo=[b"\xfe" * _n],
        slow=_n > (1 << 20),
    )
for _i, _fs in enumerate((65536, 4096, 256), 1):
    _m = "x" * (256 * 1024)
    add(
        f"9.3.{_i}",
        f"text of 256 KiB in fragments of {_fs}",
        Send(fragments(OP_TEXT, _m.encode(), _fs)),
        echo=[_m],
    )
add(
    "9.4.1",
    "binary in exactly max_fragments (1024) fragments",
    Send(fragments(OP_BINARY, b"\x01" * 1024, 1)),
    echo=[b"\x01" * 1024],
)
fail(
    "9.4.2",
    "binary in max_fragments + 1 fragments",
    Send(fragments(OP_BINARY, b"\x01" * 1025, 1)),
    code=1009,
    error=MessageTooBigError,
)
fail(
    "9.4.3",
    "max_fragments=8: 9 fragments (fail fast)",
    Send(b"".join(frame(OP_TEXT if i == 0 else OP_CONT, b"ab", fin=False) for i in range(9))),
    WaitClose(),
    Send(frame(OP_CONT, b"end")),
    code=1009,
    error=MessageTooBigError,
    fail_fast=True,
    client={"max_fragments": 8},
)
add(
    "9.5.1",
    "max_size=1000: text of 1000 bytes",
    Send(text("a" * 1000)),
    echo=["a" * 1000],
    client={"max_size": 1000},
)
fail(
    "9.5.2",
    "max_size=1000: text of 1001 bytes",
    Send(text("a" * 1001)),
    code=1009,
    error=MessageTooBigError,
    client={"max_size": 1000},
)
fail(
    "9.5.3",
    "max_size=1000: header announcing 2**40 bytes (fail fast)",
    Send(frame(OP_BINARY, b"\x00" * 10, length=1 << 40)),
    WaitClose(),
    Send(b"\x00" * 1000),
    code=1009,
    error=MessageTooBigError,
    fail_fast=True,
    client={"max_size": 1000},
)
fail(
    "9.5.4",
    "max_size=1000: fragments of 600 + 600 (fail fast)",
    Send(frame(OP_BINARY, b"\x00" * 600, fin=False)),
    Send(frame(OP_CONT, b"\x00" * 600, fin=False)),
    WaitClose(),
    Send(frame(OP_CONT, b"")),
    code=1009,
    error=MessageTooBigError,
    fail_fast=True,
    client={"max_size": 1000},
)
add(
    "9.5.5",
    "max_size=1000: fragments of 500 + 500",
    Send(fragments(OP_BINARY, b"\x02" * 1000, 500)),
    echo=[b"\x02" * 1000],
    client={"max_size": 1000},
)
add(
    "9.5.6",
    "max_size=1000: a 1000-byte text after a 1000-byte binary",
    Send(binary(b"\x03" * 1000) + text("t" * 1000)),
    echo=[b"\x03" * 1000, "t" * 1000],
    client={"max_size": 1000},
)
add(
    "9.6.1",
    "1000 small text messages in one write",
    Send(b"".join(text(f"msg {i:04d}") for i in range(1000))),
    echo=[f"msg {i:04d}" for i in range(1000)],
)
add(
    "9.6.2",
    "1000 small binary messages in one write",
    Send(b"".join(binary(i.to_bytes(2, "big")) for i in range(1000))),
    echo=[i.to_bytes(2, "big") for i in range(1000)],
)
add(
    "9.7.1",
    "100 pings in one write",
    Send(b"".join(ping(str(i).encode()) for i in range(100))),
    WaitPong(100),
    pongs=[str(i).encode() for i in range(100)],
)

# --------------------------------------------------------------------------- 10 misc

_big = "".join(chr(0x41 + i % 26) for i in range(65536))
add(
    "10.1.1",
    "text of 65536 in fragments of 1300",
    Send(fragments(OP_TEXT, _big.encode(), 1300)),
    echo=[_big],
)

# --------------------------------------------------------------------------- 12/13 deflate

_PMD = "permessage-deflate"
_DEFLATE_SETS: list[tuple[str, str, str | None]] = [
    ("13.1", _PMD, None),
    ("13.2", f"{_PMD}; server_no_context_takeover", None),
    ("13.3", f"{_PMD}; client_no_context_takeover", None),
    ("13.4", f"{_PMD}; server_max_window_bits=9", None),
    ("13.5", f"{_PMD}; client_max_window_bits=9", "client_max_window_bits"),
    (
        "13.6",
        f"{_PMD}; server_no_context_takeover; client_no_context_takeover; "
        "server_max_window_bits=9; client_max_window_bits=9",
        "client_max_window_bits",
    ),
    (
        "13.7",
        f"{_PMD}; server_max_window_bits=15; client_max_window_bits=15",
        "client_max_window_bits",
    ),
]


def _repeating(n: int, seed: int) -> str:
    """Text whose repeats are 1024 bytes apart: a client ignoring a 9-bit window or
    no_context_takeover emits back-references our strict inflater rejects."""
    block = rnd(512, seed).hex()
    return (block * (n // len(block) + 1))[:n]


for _i, _n in enumerate((16, 64, 256, 1024, 4096, 16384, 65536, 131072), 1):
    _msgs = [compressible_text(_n, _i * 10 + k) for k in range(5)]
    add(
        f"12.1.{_i}",
        f"deflate: 5 compressed text messages of {_n} bytes",
        *[SendDeflated(OP_TEXT, m.encode()) for m in _msgs],
        echo=_msgs,
        handshake=Handshake(deflate=_PMD),
        client={"compression": True},
    )
    _bins = [(rnd(_n // 4, _i) * 4)[:_n] for _ in range(5)]
    add(
        f"12.2.{_i}",
        f"deflate: 5 compressed binary messages of {_n} bytes",
        *[SendDeflated(OP_BINARY, b) for b in _bins],
        echo=_bins,
        handshake=Handshake(deflate=_PMD),
        client={"compression": True},
    )
for _i, _fs in enumerate((1, 16, 256, 4096), 1):
    _m = compressible_text(20000, 99)
    add(
        f"12.3.{_i}",
        f"deflate: compressed text fragmented every {_fs} compressed bytes",
        SendDeflated(OP_TEXT, _m.encode(), fragment=_fs),
        SendDeflated(OP_TEXT, _m.encode(), fragment=_fs),
        echo=[_m, _m],
        handshake=Handshake(deflate=_PMD),
        client={"compression": True, "max_fragments": 100_000},
    )
_hd = Handshake(deflate=_PMD)
_cc = {"compression": True}
fail(
    "12.4.1",
    "deflate: RSV1 on a continuation frame",
    SendDeflated(OP_TEXT, b"hello hello hello hello", fragment=3, rsv_cont=True),
    handshake=_hd,
    client=_cc,
)
fail("12.4.2", "deflate: RSV1 on a ping", Send(ping(b"x", rsv=4)), handshake=_hd, client=_cc)
fail(
    "12.4.3",
    "deflate: corrupt compressed data",
    SendDeflated(OP_BINARY, b"", corrupt=b"\xff\xff\xff\xff\x00\x11garbage"),
    handshake=_hd,
    client=_cc,
    code={1002, 1007},
)
fail(
    "12.4.4",
    "deflate: decompresses to invalid UTF-8",
    SendDeflated(OP_TEXT, _bad),
    handshake=_hd,
    client=_cc,
    code=1007,
    error=InvalidUTF8Error,
)
fail(
    "12.4.5",
    "deflate: 1 MiB of zeros with max_size=65536 (decompression bomb)",
    SendDeflated(OP_BINARY, b"\x00" * (1 << 20)),
    handshake=_hd,
    client={"compression": True, "max_size": 65536},
    code=1009,
    error=MessageTooBigError,
)
add(
    "12.4.6",
    "deflate: compressed empty message",
    SendDeflated(OP_TEXT, b""),
    echo=[""],
    handshake=_hd,
    client=_cc,
)
add(
    "12.4.7",
    "deflate: uncompressed message on a deflate connection",
    Send(text("plain")),
    SendDeflated(OP_TEXT, b"packed"),
    Send(binary(b"\x00plain")),
    echo=["plain", "packed", b"\x00plain"],
    handshake=_hd,
    client=_cc,
)
add(
    "12.4.8",
    "deflate: ping between compressed fragments",
    SendDeflated(OP_TEXT, b"a" * 5000, fragment=4, interleave=ping(b"mid")),
    WaitPong(1),
    echo=["a" * 5000],
    pongs=[b"mid"],
    handshake=_hd,
    client=_cc,
)
fail(
    "12.4.9",
    "deflate: compressed text whose fragments decode to invalid UTF-8 midway",
    SendDeflated(OP_TEXT, _kosme + b"\xff" + b"z" * 3000, fragment=8),
    handshake=_hd,
    client=_cc,
    code=1007,
    error=InvalidUTF8Error,
)
fail(
    "12.4.10",
    "deflate negotiated although not offered",
    handshake=Handshake(deflate=_PMD, force_extension=True),
    client={"compression": False},
    error=InvalidHandshake,
    code={None},
)
fail(
    "12.4.11",
    "deflate answer with server_max_window_bits=16 (invalid)",
    handshake=Handshake(deflate=f"{_PMD}; server_max_window_bits=16"),
    client=_cc,
    error=InvalidHandshake,
    code={None},
)
fail(
    "12.4.12",
    "deflate answer with an unknown parameter",
    handshake=Handshake(deflate=f"{_PMD}; foo=1"),
    client=_cc,
    error=InvalidHandshake,
    code={None},
)

_snct = Handshake(deflate=f"{_PMD}; server_no_context_takeover")
_m5 = compressible_text(3000, 5)
for _i, (_variant, _what) in enumerate(
    (
        ("bfinal", "a DEFLATE block with BFINAL=1 (RFC 7692 7.2.3.3)"),
        ("stored", "a DEFLATE block with no compression (RFC 7692 7.2.3.6)"),
        ("empty_last", "an empty final fragment (RFC 7692 7.2.3.5)"),
    ),
    1,
):
    add(
        f"12.5.{_i}",
        f"deflate: three messages each ending with {_what}",
        *[SendDeflated(OP_TEXT, (_m5 + str(k)).encode(), variant=_variant) for k in range(3)],
        echo=[_m5 + str(k) for k in range(3)],
        handshake=_snct,
        client=_cc,
    )

for _sec, _answer, _needs in _DEFLATE_SETS:
    for _j, _n in enumerate((64, 2048, 16384), 1):
        _msgs = [_repeating(_n, 7 * _j)] * 3 + [compressible_text(_n, _j)]
        add(
            f"{_sec}.{_j}",
            f"deflate '{_answer}': text messages of {_n}",
            *[SendDeflated(OP_TEXT, m.encode()) for m in _msgs],
            echo=_msgs,
            handshake=Handshake(deflate=_answer),
            client=_cc,
            needs_offer=_needs,
        )
    _bins = [rnd(700, 3) * 3] * 3
    add(
        f"{_sec}.4",
        f"deflate '{_answer}': binary messages with far repeats",
        *[SendDeflated(OP_BINARY, b) for b in _bins],
        echo=_bins,
        handshake=Handshake(deflate=_answer),
        client=_cc,
        needs_offer=_needs,
    )
    add(
        f"{_sec}.5",
        f"deflate '{_answer}': fragmented compressed messages",
        *[SendDeflated(OP_TEXT, _repeating(5000, 5).encode(), fragment=100)] * 2,
        echo=[_repeating(5000, 5)] * 2,
        handshake=Handshake(deflate=_answer),
        client=_cc,
        needs_offer=_needs,
    )

add(
    "7.2.1",
    "client-initiated close after a message",
    NoFinalClose(),
    Send(text("close me")),
    echo=["close me"],
    client_close=(1000, ""),
)
add(
    "7.2.2",
    "client-initiated close with code 4000 and a reason",
    NoFinalClose(),
    Send(binary(b"\x00")),
    echo=[b"\x00"],
    client_close=(4000, "bye κόσμε"),
    close={4000},
    close_received=4000,
)
add(
    "7.2.3",
    "client-initiated close right after the handshake",
    NoFinalClose(),
    client_close=(1001, ""),
    close={1001},
    close_received=1001,
)

_ids = [c.id for c in CASES]
assert len(_ids) == len(set(_ids)), "duplicate case ids"

__all__ = ["CASES", "Case"]

# Quiet "imported but unused" for names kept for case authors.
_ = (OP_PING, Drop, Pause, NoFinalClose)
