"""ClientProtocol: handshake, events, auto-pong, close, failures; both reader implementations.

Sans-IO: the "server" is bytes built here; one test at the end talks to a real
`websockets` server over loopback to check the handshake and compression end to end.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import os
import re
import socket
import struct
import threading
import zlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from iotcommute.exceptions import (
    ConnectionClosed,
    InputError,
    InvalidHandshake,
    InvalidStatus,
    InvalidUTF8Error,
    MessageTooBigError,
    NotConnectedError,
    PermissionDenied,
    ProtocolError,
    RedirectError,
    TokenError,
    VersionError,
)
from iotcommute.protocol import ClientProtocol, _frames_py, _mask_py
from iotcommute.protocol import connection as protocol
from iotcommute.protocol.events import EOF, Accepted, CloseReceived, Failed, Ping, Pong, State

_frames_c: ModuleType | None
_mask: ModuleType | None
try:
    _frames_c = importlib.import_module("iotcommute.protocol._frames_c")
    _mask = importlib.import_module("iotcommute.protocol._mask")
except ImportError:  # pragma: no cover - depends on the build
    _frames_c = _mask = None

REQUIRE = os.environ.get("IOTCOMMUTE_REQUIRE_EXTENSIONS", "") not in ("", "0")
_skip_c = pytest.mark.skipif(_frames_c is None and not REQUIRE, reason="compiled core not built")
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SECRET = "s3cr3t-device-key-value"


@pytest.fixture(params=[pytest.param("py"), pytest.param("c", marks=_skip_c)], autouse=True)
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run every test with the pure and the compiled reader/encoder behind the protocol."""
    frames_mod = _frames_py if request.param == "py" else _frames_c
    mask_mod = _mask_py if request.param == "py" else _mask
    assert frames_mod is not None and mask_mod is not None
    monkeypatch.setattr(protocol, "FrameReader", frames_mod.FrameReader)
    monkeypatch.setattr(protocol, "encode_frame", mask_mod.encode_frame)
    monkeypatch.setattr(protocol, "close_code_valid", frames_mod.close_code_valid)
    yield request.param


# -- helpers -------------------------------------------------------------------------------


def sframe(opcode: int, payload: bytes = b"", fin: bool = True, rsv1: bool = False) -> bytes:
    """An unmasked server frame."""
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 65536:
        return bytes((b0, 126)) + struct.pack("!H", n) + payload
    return bytes((b0, 127)) + struct.pack("!Q", n) + payload


def parse_client_frames(data: bytes) -> list[tuple[int, bool, bytes]]:
    """Decode masked client frames into (opcode, rsv1, payload); every frame must be masked."""
    out = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert b1 & 0x80, "client frames must be masked"
        n = b1 & 0x7F
        pos += 2
        if n == 126:
            n = struct.unpack("!H", data[pos : pos + 2])[0]
            pos += 2
        elif n == 127:
            n = struct.unpack("!Q", data[pos : pos + 8])[0]
            pos += 8
        key = data[pos : pos + 4]
        pos += 4
        out.append((b0 & 0x0F, bool(b0 & 0x40), _mask_py.apply_mask(data[pos : pos + n], key)))
        pos += n
    return out


def accept_for(request: bytes) -> str:
    key = re.search(rb"Sec-WebSocket-Key: (\S+)", request)
    assert key is not None
    return base64.b64encode(hashlib.sha1(key.group(1) + GUID).digest()).decode()


def response_101(request: bytes, extra: str = "", accept: str | None = None) -> bytes:
    acc = accept if accept is not None else accept_for(request)
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {acc}\r\n{extra}\r\n"
    ).encode()


def opened(extra: str = "", tail: bytes = b"", **kw: Any) -> ClientProtocol:
    p = ClientProtocol("example.test:8765", "/v1/stream", **kw)
    p.send_request()
    req = p.data_to_send()
    p.receive_data(response_101(req, extra) + tail)
    ev = p.events_received()
    assert isinstance(ev[0], Accepted), ev
    assert p.state is State.OPEN
    return p


PMD = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=15\r\n"


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


# -- request -------------------------------------------------------------------------------


def test_request_contents() -> None:
    p = ClientProtocol(
        "example.test:8765",
        "/v1/stream",
        extra_headers=[("X-Role", "client"), ("X-Device-Key", SECRET)],
        subprotocols=["iot.v1"],
        client_no_context_takeover=True,
    )
    assert p.state is State.CONNECTING
    assert p.data_to_send() == b""
    p.send_request()
    req = p.data_to_send()
    assert req.startswith(b"GET /v1/stream HTTP/1.1\r\n")
    assert b"Host: example.test:8765\r\n" in req
    assert b"X-Role: client\r\n" in req
    assert b"Sec-WebSocket-Protocol: iot.v1\r\n" in req
    ext = re.search(rb"Sec-WebSocket-Extensions: ([^\r]+)", req)
    assert ext is not None and ext.group(1).startswith(b"permessage-deflate")
    assert b"client_no_context_takeover" in ext.group(1)
    assert p.data_to_send() == b""
    with pytest.raises(NotConnectedError):
        p.send_request()
    assert SECRET not in repr(p) and "example.test" in repr(p)


def test_no_compression_offer() -> None:
    p = ClientProtocol("h", "/", compression=False)
    p.send_request()
    assert b"Sec-WebSocket-Extensions" not in p.data_to_send()


def test_send_before_open() -> None:
    p = ClientProtocol("h", "/")
    with pytest.raises(NotConnectedError):
        p.send_text("x")


# -- accept --------------------------------------------------------------------------------


def test_accept_and_trailing_frames_in_same_chunk() -> None:
    tail = sframe(1, b"welcome") + sframe(2, b"\x01\x02") + sframe(9, b"hb")
    p = ClientProtocol("h", "/", subprotocols=["iot.v1"])
    p.send_request()
    req = p.data_to_send()
    p.receive_data(
        response_101(req, "Sec-WebSocket-Protocol: iot.v1\r\nSet-Cookie: sid=abc\r\n") + tail
    )
    ev = p.events_received()
    acc = ev[0]
    assert isinstance(acc, Accepted)
    assert acc.subprotocol == "iot.v1" and acc.extensions == []
    assert ("set-cookie", "***") in acc.headers
    assert p.handshake_response is acc
    assert ev[1:] == ["welcome", b"\x01\x02", Ping(b"hb")]
    assert parse_client_frames(p.data_to_send()) == [(10, False, b"hb")]
    assert p.events_received() == []


def test_handshake_byte_by_byte() -> None:
    p = ClientProtocol("h", "/")
    p.send_request()
    data = response_101(p.data_to_send()) + sframe(1, b"hi")
    for i in range(len(data)):
        p.receive_data(data[i : i + 1])
    ev = p.events_received()
    assert isinstance(ev[0], Accepted) and ev[1:] == ["hi"]


@pytest.mark.parametrize(
    ("extra", "accept"),
    [
        ("", "d3Jvbmc="),  # wrong accept token
        ("Sec-WebSocket-Protocol: other\r\n", None),  # subprotocol we did not offer
        ("Sec-WebSocket-Extensions: x-unknown\r\n", None),  # extension we did not offer
    ],
)
def test_invalid_101(extra: str, accept: str | None) -> None:
    p = ClientProtocol("h", "/", subprotocols=["iot.v1"])
    p.send_request()
    p.receive_data(response_101(p.data_to_send(), extra, accept))
    ev = p.events_received()
    assert len(ev) == 1 and isinstance(ev[0], Failed)
    assert type(ev[0].exc) is InvalidHandshake
    assert p.state is State.CLOSED
    assert p.data_to_send() == b""
    p.receive_data(sframe(1, b"ignored"))
    assert p.events_received() == []


@pytest.mark.parametrize(
    "answer",
    [
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=abc",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; foo=1",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
        "permessage-deflate, permessage-deflate",
    ],
)
def test_invalid_deflate_answer(answer: str) -> None:
    p = ClientProtocol("h", "/")
    p.send_request()
    p.receive_data(response_101(p.data_to_send(), f"Sec-WebSocket-Extensions: {answer}\r\n"))
    ev = p.events_received()
    assert len(ev) == 1 and isinstance(ev[0], Failed), ev
    assert type(ev[0].exc) is InvalidHandshake
    assert p.state is State.CLOSED


def test_deflate_answer_bigger_window_than_offered() -> None:
    p = ClientProtocol("h", "/", server_max_window_bits=10)
    p.send_request()
    ext = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=12\r\n"
    p.receive_data(response_101(p.data_to_send(), ext))
    ev = p.events_received()
    assert isinstance(ev[0], Failed) and type(ev[0].exc) is InvalidHandshake


def test_server_must_honour_server_no_context_takeover() -> None:
    p = ClientProtocol("h", "/", server_no_context_takeover=True)
    p.send_request()
    p.receive_data(response_101(p.data_to_send(), PMD))
    ev = p.events_received()
    assert isinstance(ev[0], Failed) and type(ev[0].exc) is InvalidHandshake
    p = opened(
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; "
        "server_max_window_bits=9; client_max_window_bits=10\r\n",
        server_no_context_takeover=True,
    )
    acc = p.handshake_response
    assert acc is not None
    assert "server_no_context_takeover" in acc.extensions[0]
    assert "server_max_window_bits=9" in acc.extensions[0]


def test_missing_upgrade_header() -> None:
    p = ClientProtocol("h", "/")
    p.send_request()
    acc = accept_for(p.data_to_send())
    p.receive_data(
        f"HTTP/1.1 101 OK\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {acc}\r\n\r\n".encode()
    )
    ev = p.events_received()
    assert isinstance(ev[0], Failed) and type(ev[0].exc) is InvalidHandshake


def test_garbage_response() -> None:
    p = ClientProtocol("h", "/")
    p.send_request()
    p.receive_data(b"SSH-2.0-OpenSSH\r\n\r\n")
    ev = p.events_received()
    assert isinstance(ev[0], Failed) and type(ev[0].exc) is InvalidHandshake


# -- rejection -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (401, TokenError),
        (403, PermissionDenied),
        (426, VersionError),
        (302, RedirectError),
        (404, InvalidStatus),
        (500, InvalidStatus),
        (200, InvalidStatus),
    ],
)
def test_rejection_status(status: int, cls: type[Exception]) -> None:
    p = ClientProtocol("h", "/", extra_headers=[("X-Device-Key", SECRET)])
    p.send_request()
    body = b'{"type":"error","code":"token","message":"bad key"}'
    resp = (
        f"HTTP/1.1 {status} Whatever\r\nContent-Length: {len(body)}\r\n"
        f"Location: ws://other.test/v1/stream\r\nSet-Cookie: session={SECRET}\r\n"
        f"X-Device-Key: {SECRET}\r\n\r\n"
    ).encode() + body
    p.receive_data(resp[:30])
    assert p.events_received() == []
    p.receive_data(resp[30:])
    ev = p.events_received()
    assert len(ev) == 1 and isinstance(ev[0], Failed)
    exc = ev[0].exc
    assert type(exc) is cls
    assert exc.status == status  # type: ignore[attr-defined]
    assert exc.headers["set-cookie"] == "***"  # type: ignore[attr-defined]
    assert exc.headers["x-device-key"] == "***"  # type: ignore[attr-defined]
    assert "bad key" in str(exc)
    assert exc.body == body  # type: ignore[attr-defined]
    for text in (str(exc), repr(exc), repr(ev[0]), repr(exc.headers)):  # type: ignore[attr-defined]
        assert SECRET not in text
    if cls is RedirectError:
        assert exc.location == "ws://other.test/v1/stream"  # type: ignore[attr-defined]
    assert p.state is State.CLOSED


@pytest.mark.parametrize(
    ("ctype", "body", "reason"),
    [
        ("text/html", b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>"
         b"<body><h1>Not Found</h1>" + b"x" * 5000 + b"</body></html>", ": 404 Not Found"),
        ("text/html", b"<html><body><p>no title</p></body></html>", ""),
        ("application/json", b'{"message":"invalid device id or key"}',
         ": invalid device id or key"),
        ("text/plain", b"first line\nsecond line", ": first line"),
        ("text/plain", b"y" * 500, ": " + "y" * 119 + "\u2026"),
    ],
)  # fmt: skip
def test_rejection_message_is_one_short_line(ctype: str, body: bytes, reason: str) -> None:
    """A web server's page never becomes the message (the raw body stays on .body)."""
    p = ClientProtocol("h", "/")
    p.send_request()
    head = f"HTTP/1.1 404 Not Found\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}"
    p.receive_data(head.encode() + b"\r\n\r\n" + body)
    ev = p.events_received()
    assert len(ev) == 1 and isinstance(ev[0], Failed)
    exc = ev[0].exc
    assert exc.message == "server rejected the WebSocket upgrade: 404" + reason  # type: ignore[attr-defined]
    assert exc.body == body  # type: ignore[attr-defined]


def test_rejection_body_until_eof_and_bounded() -> None:
    p = ClientProtocol("h", "/")
    p.send_request()
    p.receive_data(b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\nno ")
    p.receive_data(b"access")
    assert p.events_received() == []
    p.receive_data(b"")
    ev = p.events_received()
    assert isinstance(ev[0], Failed) and type(ev[0].exc) is PermissionDenied
    assert ev[0].exc.body == b"no access"  # type: ignore[attr-defined]
    # An endless body: fail once the bound is reached instead of buffering forever.
    p = ClientProtocol("h", "/")
    p.send_request()
    p.receive_data(b"HTTP/1.1 500 Oops\r\nConnection: close\r\n\r\n")
    for _ in range(100):
        p.receive_data(b"x" * 1000)
    ev = p.events_received()
    assert len(ev) == 1 and isinstance(ev[0], Failed) and type(ev[0].exc) is InvalidStatus
    assert len(ev[0].exc.body) == protocol.MAX_REJECTION_BODY  # type: ignore[attr-defined]


def test_eof_before_response() -> None:
    p = ClientProtocol("h", "/")
    p.send_request()
    p.receive_data(b"HTTP/1.1 10")
    p.receive_data(b"")
    ev = p.events_received()
    assert isinstance(ev[0], Failed) and isinstance(ev[0].exc, InvalidHandshake)
    assert ev[1] == EOF()
    assert p.state is State.CLOSED


# -- open connection -----------------------------------------------------------------------


def test_send_frames_masked() -> None:
    p = opened(compression=False)
    p.send_text("héllo")
    p.send_binary(b"\x00\x01")
    p.send_binary(bytearray(b"ba"))
    p.send_binary(memoryview(b"mv"))
    p.send_ping(b"p")
    p.send_pong(b"q")
    out = p.data_to_send()
    assert parse_client_frames(out) == [
        (1, False, "héllo".encode()),
        (2, False, b"\x00\x01"),
        (2, False, b"ba"),
        (2, False, b"mv"),
        (9, False, b"p"),
        (10, False, b"q"),
    ]
    with pytest.raises(InputError):
        p.send_ping(b"x" * 126)


def test_large_message_in_chunks() -> None:
    p = opened()
    msg = os.urandom(3 * 2**20)
    data = sframe(2, msg)
    for i in range(0, len(data), 65536):
        p.receive_data(data[i : i + 65536])
    assert p.events_received() == [msg]


def test_auto_pong_and_pong_event() -> None:
    p = opened()
    p.receive_data(sframe(9, b"a") + sframe(10, b"b") + sframe(9, b""))
    assert p.events_received() == [Ping(b"a"), Pong(b"b"), Ping(b"")]
    assert parse_client_frames(p.data_to_send()) == [(10, False, b"a"), (10, False, b"")]


def test_server_close_is_echoed() -> None:
    p = opened()
    p.receive_data(sframe(1, b"last") + sframe(8, struct.pack("!H", 1001) + b"going away"))
    assert p.events_received() == ["last", CloseReceived(1001, "going away")]
    assert parse_client_frames(p.data_to_send()) == [(8, False, struct.pack("!H", 1001))]
    assert p.state is State.CLOSED
    assert p.close_received == CloseReceived(1001, "going away")
    with pytest.raises(ConnectionClosed):
        p.send_text("x")
    p.receive_data(b"")
    assert p.events_received() == [EOF()]


def test_server_close_without_code() -> None:
    p = opened()
    p.receive_data(sframe(8))
    assert p.events_received() == [CloseReceived(1005, "")]
    assert parse_client_frames(p.data_to_send()) == [(8, False, b"")]


def test_client_close_handshake() -> None:
    p = opened()
    p.close(1000, "bye")
    assert p.state is State.CLOSING
    assert parse_client_frames(p.data_to_send()) == [(8, False, struct.pack("!H", 1000) + b"bye")]
    p.close()  # no-op while closing
    assert p.data_to_send() == b""
    # Messages still in flight are delivered; no pong after our close.
    p.receive_data(sframe(1, b"inflight") + sframe(9, b"x") + sframe(8, struct.pack("!H", 1000)))
    assert p.events_received() == ["inflight", Ping(b"x"), CloseReceived(1000, "")]
    assert p.data_to_send() == b""
    assert p.state.name == "CLOSED"  # (.name: mypy narrowed p.state to CLOSING above)


def test_close_argument_checks() -> None:
    p = opened()
    with pytest.raises(InputError):
        p.close(1006)
    with pytest.raises(InputError):
        p.close(1000, "x" * 124)
    p.close(4000, "x" * 123)
    assert p.state is State.CLOSING


def test_close_while_connecting() -> None:
    p = ClientProtocol("h", "/")
    p.send_request()
    p.data_to_send()
    p.close()
    assert p.state is State.CLOSED
    assert p.data_to_send() == b""


def test_eof_while_open() -> None:
    p = opened()
    p.receive_data(sframe(2, b"x") + sframe(2, b"partial")[:3])
    p.receive_data(b"")
    assert p.events_received() == [b"x", EOF()]
    assert p.state is State.CLOSED


@pytest.mark.parametrize(
    ("data", "cls", "code"),
    [
        (bytes((0x82, 0x81)) + b"abcd" + b"x", ProtocolError, 1002),  # masked server frame
        (sframe(1, b"\xff\xfe"), InvalidUTF8Error, 1007),
        (sframe(2, b"x" * 2000), MessageTooBigError, 1009),
        (sframe(2, b"a", fin=False) + sframe(0, b"a", fin=False) * 4, MessageTooBigError, 1009),
        (sframe(3, b""), ProtocolError, 1002),
        (sframe(2, b"x", rsv1=True), ProtocolError, 1002),  # not negotiated
    ],
)
def test_failure_queues_close(data: bytes, cls: type[Exception], code: int) -> None:
    p = opened(max_size=1000, max_fragments=4, compression=False)
    p.receive_data(sframe(1, b"before") + data)
    ev = p.events_received()
    assert ev[0] == "before"
    assert isinstance(ev[-1], Failed) and type(ev[-1].exc) is cls
    assert ev[-1].exc.close_code == code  # type: ignore[attr-defined]
    assert parse_client_frames(p.data_to_send()) == [(8, False, struct.pack("!H", code))]
    assert p.state is State.CLOSED
    p.receive_data(sframe(1, b"after"))
    p.receive_data(b"")
    assert p.events_received() == []


def test_failure_after_client_close_sends_no_second_close() -> None:
    p = opened()
    p.close()
    p.data_to_send()
    p.receive_data(sframe(1, b"\xff"))
    assert isinstance(p.events_received()[-1], Failed)
    assert p.data_to_send() == b""


# -- compression ---------------------------------------------------------------------------


def test_compression_negotiated_both_ways() -> None:
    p = opened(PMD)
    acc = p.handshake_response
    assert acc is not None and acc.extensions[0].startswith("permessage-deflate")
    msg = "temperature=21.5;" * 20
    p.send_text(msg)
    p.send_text(msg)
    p.send_binary(b"tiny")  # below the threshold: sent uncompressed
    frames = parse_client_frames(p.data_to_send())
    assert [(op, rsv1) for op, rsv1, _ in frames] == [(1, True), (1, True), (2, False)]
    d = zlib.decompressobj(-15)
    for _, _, payload in frames[:2]:
        assert d.decompress(payload + b"\x00\x00\xff\xff").decode() == msg
    assert len(frames[1][2]) < len(frames[0][2])  # context takeover pays off
    z = deflate(b"incoming " * 50)
    p.receive_data(sframe(2, z, rsv1=True) + sframe(2, b"raw"))
    assert p.events_received() == [b"incoming " * 50, b"raw"]


def test_client_no_context_takeover() -> None:
    p = opened(
        "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n",
        client_no_context_takeover=True,
    )
    p.send_binary(b"abcdefgh" * 20)
    p.send_binary(b"abcdefgh" * 20)
    frames = parse_client_frames(p.data_to_send())
    for _, rsv1, payload in frames:
        assert rsv1
        assert zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff") == b"abcdefgh" * 20
    assert frames[0][2] == frames[1][2]


def test_deflate_bomb_through_protocol() -> None:
    p = opened(PMD, max_size=2**20)
    p.receive_data(sframe(2, deflate(b"\x00" * (32 * 2**20)), rsv1=True))
    ev = p.events_received()
    assert isinstance(ev[-1], Failed) and type(ev[-1].exc) is MessageTooBigError


# -- one real server -----------------------------------------------------------------------


def test_against_websockets_server() -> None:
    from websockets.sync.server import serve

    def handler(ws: Any) -> None:
        for m in ws:
            ws.send(m)
            ws.send(m * 3)
        ws.close()

    with serve(handler, "127.0.0.1", 0, compression="deflate") as srv:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        port = srv.socket.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            p = ClientProtocol(f"127.0.0.1:{port}", "/")
            got: list[Any] = []

            def pump() -> None:
                out = p.data_to_send()
                if out:
                    s.sendall(out)
                p.receive_data(s.recv(65536))
                got.extend(p.events_received())

            p.send_request()
            while p.handshake_response is None:
                pump()
            assert p.handshake_response.extensions
            p.send_text("ü" * 200)
            p.send_binary(b"\x00" * 70000)
            p.send_ping(b"hi")
            while len([g for g in got if isinstance(g, (str, bytes))]) < 4:
                pump()
            p.close(1000, "done")
            while p.state is not State.CLOSED:
                pump()
            data = [g for g in got if isinstance(g, (str, bytes))]
            assert data == ["ü" * 200, "ü" * 600, b"\x00" * 70000, b"\x00" * 210000]
            assert Pong(b"hi") in got
            assert got[-1] == CloseReceived(1000, "done")
        srv.shutdown()
