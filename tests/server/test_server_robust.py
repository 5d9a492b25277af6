"""The reference server against bad or slow peers, over raw sockets (no client library)."""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotcommute.server import ServerThread
from iotcommute.server.registry import DEMO_USER, README_DEVICE_ID, README_DEVICE_KEY

AUTH = f"X-Device-Id: {README_DEVICE_ID}\r\nX-Device-Key: {README_DEVICE_KEY}\r\nX-Role: client\r\n"


class RawWS:
    """A minimal blocking WebSocket client written for these tests (masks, parses, nothing else)."""

    def __init__(
        self,
        port: int,
        headers: str = AUTH,
        rcvbuf: int | None = None,
        timeout: float = 5.0,
        path: str = "/v1/stream",
    ) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"{headers}\r\n"
            ).encode()
        )
        head = self._read_until(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])

    def _read_until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        head, self.buf = self.buf.split(sep, 1)
        return head

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buf)))
            if not chunk:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send_frame(
        self, opcode: int, payload: bytes, mask: bool = True, fin: bool = True, rsv: int = 0
    ) -> None:
        b0 = (0x80 if fin else 0) | rsv | opcode
        n = len(payload)
        m = 0x80 if mask else 0
        if n < 126:
            head = struct.pack("!BB", b0, m | n)
        elif n < 65536:
            head = struct.pack("!BBH", b0, m | 126, n)
        else:
            head = struct.pack("!BBQ", b0, m | 127, n)
        if mask:
            k = os.urandom(4)
            payload = bytes(b ^ k[i % 4] for i, b in enumerate(payload))
            head += k
        self.sock.sendall(head + payload)

    def send_json(self, obj: Any) -> None:
        self.send_frame(1, json.dumps(obj).encode())

    def recv_frame(self) -> tuple[int, bytes]:
        b0, b1 = self._read(2)
        assert b1 & 0x80 == 0, "server frames must not be masked"
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._read(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._read(8))
        return b0 & 0x0F, self._read(n)

    def recv_json(self) -> dict[str, Any]:
        while True:
            op, payload = self.recv_frame()
            if op == 1:
                out: dict[str, Any] = json.loads(payload)
                return out
            assert op in (9, 10), f"unexpected opcode {op}"

    def recv_close(self) -> int:
        """Skip data frames until the close frame; its code."""
        while True:
            op, payload = self.recv_frame()
            if op == 8:
                return int(struct.unpack("!H", payload[:2])[0]) if payload else 1005

    def close(self) -> None:
        self.sock.close()


def http(port: int, raw: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return int(data.split(b" ", 2)[1]), data


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"opcode": 1, "payload": b'{"type":"x"}', "mask": False}, 1002),  # unmasked client frame
        ({"opcode": 3, "payload": b"x"}, 1002),  # reserved opcode
        ({"opcode": 1, "payload": b"x", "rsv": 0x40}, 1002),  # RSV1 without an extension
        ({"opcode": 9, "payload": b"x", "fin": False}, 1002),  # fragmented control frame
        ({"opcode": 1, "payload": b"\xff\xfe"}, 1007),  # text that is not UTF-8
    ],
)
def test_malformed_frames_fail_the_connection(
    ref_server: ServerThread, frame: dict[str, Any], code: int
) -> None:
    ws = RawWS(ref_server.port)
    assert ws.status == 101
    assert ws.recv_json()["type"] == "welcome"
    ws.send_frame(**frame)
    assert ws.recv_close() == code
    assert ws.sock.recv(10) == b""  # and the server closed the TCP connection
    ws.close()


def test_ping_is_answered_and_close_is_echoed(ref_server: ServerThread) -> None:
    ws = RawWS(ref_server.port)
    ws.recv_json()
    ws.send_frame(9, b"hello")
    assert ws.recv_frame() == (10, b"hello")
    ws.send_frame(8, struct.pack("!H", 1000) + b"bye")
    assert ws.recv_close() == 1000
    ws.close()


def test_oversized_handshake_is_refused(ref_server: ServerThread) -> None:
    huge = "X-Filler: " + "a" * 40000 + "\r\n"
    status, _ = http(
        ref_server.port,
        f"GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n{huge}".encode(),
    )
    assert status == 431


def test_garbage_request_is_400(ref_server: ServerThread) -> None:
    status, _ = http(ref_server.port, b"HELLO\x00\x01 nonsense\r\n\r\n")
    assert status == 400


def test_keep_alive_http_idle_timer_restarts_after_each_response(
    ref_server_factory: Callable[..., ServerThread],
) -> None:
    srv = ref_server_factory(handshake_timeout=1.0)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        for _ in range(3):  # 3 x 0.6 s on one connection: longer than the timeout in total
            s.sendall(b"GET /no/such/path HTTP/1.1\r\nHost: x\r\n\r\n")
            data = s.recv(65536)
            assert data.startswith(b"HTTP/1.1 404"), data[:50]
            time.sleep(0.6)
        time.sleep(1.0)  # idle past the timeout: now the server hangs up
        try:
            assert s.recv(10) == b""
        except ConnectionResetError:
            pass


@pytest.mark.parametrize(
    "head",
    [
        b"GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\n" + AUTH.encode() + b"\r\n",  # no Sec-WebSocket-Key
        b"GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        + AUTH.encode()
        + b"\r\n",  # no "Connection: Upgrade"
    ],
)
def test_invalid_upgrade_requests_are_400(ref_server: ServerThread, head: bytes) -> None:
    status, _ = http(ref_server.port, head)
    assert status == 400


def test_plain_http_goes_to_rest_and_keeps_alive(ref_server: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", ref_server.port), timeout=5) as s:
        for _ in range(2):  # two requests on one connection
            s.sendall(b"GET /no/such/path HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(65536)
            head, body = data.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            clen = next(h for h in lines if h.lower().startswith(b"content-length"))
            n = int(clen.split(b":")[1])
            while len(body) < n:
                body += s.recv(65536)
            assert head.startswith(b"HTTP/1.1 404")
            assert json.loads(body)


def test_credentials_in_url_are_not_accepted(ref_server: ServerThread) -> None:
    query = f"?device_id={README_DEVICE_ID}&device_key={README_DEVICE_KEY}&api_key=demo-app"
    ws = RawWS(ref_server.port, headers="X-Role: client\r\n", path="/v1/stream" + query)
    assert ws.status == 401
    ws.close()


@pytest.mark.parametrize("batch", [1, 20])  # records per write: 1 = "high-water + one frame"
def test_slow_consumer_buffer_stays_bounded(
    ref_server_factory: Callable[..., ServerThread], batch: int
) -> None:
    high, low = 64 * 1024, 16 * 1024
    srv = ref_server_factory(
        write_high=high, write_low=low, write_batch=batch, track_buffer=True, retain=200_000
    )

    def fill() -> int:
        for i in range(60_000):
            srv.hub.log.append("sim-0001", {"i": i, "temperature": 21.5, "humidity": 40.25}, None)
        # the largest frame of all (their `ts` floats print with 17 or 18 digits: a sample
        # of two frames could miss the longest by a few bytes, and so did the bound)
        return max(len(r.frame()) for r in srv.hub.log.read(0, None, 60_000))

    frame_max = srv.call(fill)
    ws = RawWS(srv.port, rcvbuf=8192)
    ws.recv_json()
    ws.send_json({"type": "subscribe", "id": 1, "devices": "*", "from": 0})

    def conn_state() -> tuple[bool, int, int, int]:
        (c,) = [c for c in srv.hub.connections if c.peer_id == README_DEVICE_ID]
        assert c.transport is not None
        return c.paused, c.sent_ticks, c.max_buffer_seen, c.transport.get_write_buffer_size()

    # We do not read: the server fills the socket buffers and must then pause the cursor.
    deadline = time.monotonic() + 20
    while not srv.call(conn_state)[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    paused, sent, max_seen, size = srv.call(conn_state)
    assert paused, f"the cursor should pause on a client that does not read ({sent} sent)"
    assert sent < 60_000
    assert max_seen <= high + batch * frame_max
    assert size <= high + batch * frame_max
    # Now read everything: nothing lost, nothing twice, in order.
    expect = 1
    while expect <= 60_000:
        m = ws.recv_json()
        if m["type"] == "tick":
            assert m["position"] == expect
            expect += 1
    assert srv.call(conn_state)[2] <= high + batch * frame_max
    ws.close()


@pytest.mark.parametrize("fmt", ["json", "binary"])
def test_firehose_slow_consumer_buffer_stays_bounded(
    ref_server_factory: Callable[..., ServerThread], fmt: str
) -> None:
    """The firehose's pre-encoded writes obey write_high too, and it produces only as fast
    as the reader takes ticks (one block ahead at most)."""
    high, low = 64 * 1024, 16 * 1024
    srv = ref_server_factory(
        firehose=True,
        simulate=3,
        write_high=high,
        write_low=low,
        write_batch=20,
        track_buffer=True,
        retain=200_000,
    )
    payload = pytest.importorskip("iotcommute.payload") if fmt == "binary" else None
    ws = RawWS(srv.port, rcvbuf=8192)
    ws.recv_json()
    ws.send_json({"type": "subscribe", "id": 1, "devices": "*", "from": None, "format": fmt})

    def conn_state() -> tuple[bool, int, int, int]:
        (c,) = [c for c in srv.hub.connections if c.peer_id == README_DEVICE_ID]
        assert c.transport is not None
        return c.paused, c.sent_ticks, c.max_buffer_seen, srv.hub.log.last_position

    deadline = time.monotonic() + 20
    while not srv.call(conn_state)[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    paused, sent, max_seen, last = srv.call(conn_state)
    assert paused, f"the cursor should pause on a client that does not read ({sent} sent)"
    # one write is at most max(write_batch, write_high // 1024) ticks of < 400 bytes
    assert max_seen <= high + (high // 1024) * 400
    assert last <= sent + 2048 + 1  # lazily produced: not a runaway log
    got: list[int] = []
    while len(got) < 20_000:
        op, data = ws.recv_frame()
        if op == 2:
            assert payload is not None
            got += [t["position"] for t in payload.decode_batch(data)]
        elif op == 1:
            m = json.loads(data)
            if m["type"] == "tick":
                got.append(m["position"])
    assert got == list(range(got[0], got[0] + len(got)))
    assert srv.call(conn_state)[2] <= high + (high // 1024) * 400
    ws.close()


def test_stuck_consumer_is_dropped(ref_server_factory: Callable[..., ServerThread]) -> None:
    srv = ref_server_factory(write_high=32 * 1024, write_low=8 * 1024, stuck_timeout=0.5)
    srv.call(
        lambda: [srv.hub.log.append("sim-0001", {"i": i, "pad": 1.5}, None) for i in range(50_000)]
    )
    ws = RawWS(srv.port, rcvbuf=4096)
    ws.recv_json()
    ws.send_json({"type": "subscribe", "id": 1, "devices": "*", "from": 0})
    deadline = time.monotonic() + 15
    while srv.call(lambda: len(srv.hub.connections)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert srv.call(lambda: len(srv.hub.connections)) == 0
    ws.close()


def test_keepalive_pings_and_drops_silent_peers(
    ref_server_factory: Callable[..., ServerThread],
) -> None:
    srv = ref_server_factory(ping_interval=0.2, ping_timeout=0.3)
    ws = RawWS(srv.port)
    ws.recv_json()
    op, _ = ws.recv_frame()
    assert op == 9  # the server pings
    # We never answer and send nothing: the server gives up on us.
    with pytest.raises((EOFError, ConnectionResetError)):
        while True:
            op, payload = ws.recv_frame()
            if op == 8:
                assert struct.unpack("!H", payload[:2])[0] == 1011
    ws.close()


def test_answering_pings_keeps_the_connection(
    ref_server_factory: Callable[..., ServerThread],
) -> None:
    srv = ref_server_factory(ping_interval=0.2, ping_timeout=0.3)
    ws = RawWS(srv.port)
    ws.recv_json()
    pings = 0
    while pings < 6:  # well past ping_interval + ping_timeout
        op, payload = ws.recv_frame()
        assert op == 9
        ws.send_frame(10, payload)
        pings += 1
    ws.send_json({"type": "subscribe", "id": 1})
    assert ws.recv_json()["type"] == "subscribed"
    ws.close()


def test_handshake_timeout_drops_idle_sockets(
    ref_server_factory: Callable[..., ServerThread],
) -> None:
    srv = ref_server_factory(handshake_timeout=0.3)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(b"GET /v1/stream HTTP/1.1\r\n")  # ... and never finish
        assert s.recv(10) == b""


def test_session_user_is_the_command_sender(ref_server: ServerThread) -> None:
    # The welcome of a token client names the user, never the token.
    s = ref_server.call(ref_server.hub.registry.sessions.create, DEMO_USER, "demo-app", 60.0)
    ws = RawWS(
        ref_server.port,
        headers=f"Authorization: token demo-app:{s.access_token}\r\nX-Role: client\r\n",
    )
    raw = ws.recv_frame()[1]
    assert s.access_token.encode() not in raw
    assert json.loads(raw)["user"] == DEMO_USER
    ws.close()


@pytest.mark.parametrize("fmt", ["json", "binary"])
def test_firehose_streams_real_positions(
    ref_server_factory: Callable[..., ServerThread], fmt: str
) -> None:
    # retain: the firehose runs ahead of this reader by what the socket buffers hold
    srv = ref_server_factory(firehose=True, simulate=3, retain=200_000)
    payload = pytest.importorskip("iotcommute.payload") if fmt == "binary" else None
    ws = RawWS(srv.port)
    ws.recv_json()
    ws.send_json({"type": "subscribe", "id": 1, "devices": "*", "from": None, "format": fmt})
    sub = ws.recv_json()
    got: list[dict[str, Any]] = []
    while len(got) < 5000:
        op, data = ws.recv_frame()
        if op == 2:
            assert payload is not None
            got += payload.decode_batch(data)
        elif op == 1:
            msg = json.loads(data)
            assert msg["type"] == "tick", msg
            got.append(msg)
    first = sub["position"] + 1
    assert [t["position"] for t in got] == list(range(first, first + len(got)))
    assert {t["device"] for t in got} == {"sim-0001", "sim-0002", "sim-0003"}
    # the frames encoded once by the firehose say exactly what the log holds
    recs = srv.call(srv.hub.log.read, first - 1, None, 50)
    assert [r.as_tick() for r in recs] == got[:50]
    if fmt == "binary":  # and the patched batch templates were in use, not a fallback
        fh = srv.hub.binary_batch.__self__  # type: ignore[union-attr]
        assert fh.binary_ok and any(t is not None for t in fh._templates.values())
    ws.close()


@pytest.mark.parametrize("fmt", ["json", "binary"])
def test_firehose_resume_mid_block_and_filtered(
    ref_server_factory: Callable[..., ServerThread], fmt: str
) -> None:
    """Resuming inside a firehose block, for every device or only one, loses nothing."""
    # A subscriber left streaming drives the firehose as far ahead as the socket buffers
    # hold (~100k binary ticks on a loaded machine): retain enough that frm is never trimmed,
    # or the server rightly answers with a gap (CI once read it as the first tick).
    srv = ref_server_factory(firehose=True, simulate=3, retain=5_000_000)
    payload = pytest.importorskip("iotcommute.payload") if fmt == "binary" else None
    refill = srv.hub.refill
    assert refill is not None
    while srv.call(lambda: srv.hub.log.last_position) < 30_000:
        srv.call(refill)
    frm = 9017  # not a block boundary
    for devices, want in (("*", None), (["sim-0002"], "sim-0002")):
        recs = srv.call(srv.hub.log.read, frm, None if want is None else {want}, 4000)
        assert len(recs) == 4000 and srv.call(lambda: srv.hub.log.first_position) == 1
        ws = RawWS(srv.port)
        ws.recv_json()
        sub = {"type": "subscribe", "id": 1, "devices": devices, "from": frm, "format": fmt}
        ws.send_json(sub)
        ok = ws.recv_json()
        assert ok["type"] == "subscribed", ok
        got: list[dict[str, Any]] = []
        while len(got) < 4000:
            op, data = ws.recv_frame()
            if op == 2:
                assert payload is not None
                got += payload.decode_batch(data)
            elif op == 1:
                msg = json.loads(data)
                assert msg["type"] == "tick", msg  # no gap, no error
                got.append(msg)
        del got[4000:]
        assert got == [r.as_tick() for r in recs]
        pos = [t["position"] for t in got]
        if want is None:
            assert pos == list(range(frm + 1, frm + 4001))
        else:
            assert {t["device"] for t in got} == {want} and pos == sorted(set(pos))
            assert pos[0] <= frm + 3
        ws.close()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    junk=st.one_of(
        st.binary(min_size=1, max_size=300),
        st.builds(
            lambda op, body: struct.pack("!BB", 0x80 | op, 0x80 | len(body)) + b"\0\0\0\0" + body,
            st.integers(0, 15),
            st.binary(max_size=100),
        ),
    )
)
def test_random_bytes_never_hurt_the_server(
    ref_server: ServerThread, junk: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    ws = RawWS(ref_server.port)
    ws.recv_json()
    ws.sock.sendall(junk)
    ws.sock.settimeout(0.2)
    try:
        while ws.sock.recv(65536):
            pass
    except (TimeoutError, ConnectionResetError):
        pass
    ws.close()
    # The server still works: a fresh peer is served normally.
    ok = RawWS(ref_server.port)
    assert ok.recv_json()["type"] == "welcome"
    ok.send_json({"type": "subscribe", "id": 1})
    assert ok.recv_json()["type"] == "subscribed"
    ok.close()
    # ... and nothing reached the server's or the loop's error log.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_slow_consumer_overtaken_by_trimming_gets_a_gap(
    ref_server_factory: Callable[..., ServerThread],
) -> None:
    srv = ref_server_factory(write_high=32 * 1024, write_low=8 * 1024, retain=20_000)

    def fill(n: int) -> None:
        for i in range(n):
            srv.hub.log.append("sim-0001", {"i": i, "pad": 1.25}, None)

    srv.call(fill, 20_000)
    ws = RawWS(srv.port, rcvbuf=8192)
    ws.recv_json()
    ws.send_json({"type": "subscribe", "id": 1, "devices": "*", "from": 0})
    assert ws.recv_json()["type"] == "subscribed"

    def paused() -> bool:  # stopped by flow control, or everything went into socket buffers
        return any(c.paused or c.cursor == 20_000 for c in srv.hub.connections)

    deadline = time.monotonic() + 20
    while not srv.call(paused) and time.monotonic() < deadline:
        time.sleep(0.05)
    srv.call(fill, 40_000)  # the log moves 40 000 ahead: the cursor's next records are gone
    positions: list[int] = []
    gaps: list[dict[str, Any]] = []
    while not positions or positions[-1] < 60_000:
        m = ws.recv_json()
        if m["type"] == "tick":
            positions.append(m["position"])
        else:
            assert m["type"] == "gap"
            gaps.append(m)
    assert len(gaps) == 1
    g = gaps[0]
    assert g["to"] == 40_000 and g["missed"] == g["to"] - g["from"]
    assert positions == sorted(set(positions))
    assert len(positions) + g["missed"] == 60_000
    ws.close()
