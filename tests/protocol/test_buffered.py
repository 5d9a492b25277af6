"""Reads into the reader's own memory (get_buffer/buffer_updated) give exactly what
feed_data gives, for both readers, whatever the read sizes; messages never alias the
reused read buffer; ClientProtocol offers the same path through the handshake."""

from __future__ import annotations

import base64
import hashlib
import random
import struct
import zlib
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings

from iotcommute.protocol import ClientProtocol, _frames_py
from tests.compiled import compiled, twins
from tests.protocol.test_differential import SETTINGS, outcome, streams

READERS = twins(_frames_py, "iotcommute.protocol._frames_c")


def buffered_outcome(
    mod: ModuleType, data: bytes, sizes: list[int], kw: dict[str, Any]
) -> tuple[Any, list[object]]:
    """outcome() through get_buffer/buffer_updated, each read at most the next size."""
    r = mod.FrameReader(**kw)
    pos, i = 0, 0
    events: list[object] = []
    while pos < len(data):
        view = r.get_buffer(-1)
        n = min(len(view), len(data) - pos, sizes[i % len(sizes)])
        i += 1
        view[:n] = data[pos : pos + n]
        del view
        r.buffer_updated(n)
        pos += n
        events += r.events
        r.events = []
    e = r.error
    err = None if e is None else (type(e), str(e), e.close_code)
    return (events, err, list(r.pongs), r.closed, r.close_code, r.close_reason), events


@pytest.mark.parametrize("mod", READERS)
@settings(SETTINGS, max_examples=150)
@given(streams())
def test_buffered_reads_equal_feed_data(
    mod: ModuleType, s: tuple[bytes, list[int], dict[str, Any]]
) -> None:
    data, cuts, kw = s
    sizes = [max(1, b - a) for a, b in zip([0, *cuts], [*cuts, len(data)])] or [1]
    assert buffered_outcome(mod, data, sizes, kw)[0] == outcome(mod, data, [], kw)


def _hdr(b0: int, n: int) -> bytes:
    if n < 126:
        return bytes((b0, n))
    if n < 65536:
        return bytes((b0, 126)) + struct.pack("!H", n)
    return bytes((b0, 127)) + struct.pack("!Q", n)


def _big_stream(rnd: random.Random) -> bytes:
    """Big and small binary, text (non-ASCII), fragmented and compressed frames."""
    out = []
    for i in range(60):
        k = rnd.choice([0, 5, 125, 126, 1000, 20_000, 70_000, 300_000])
        kind = i % 4
        if kind == 0:
            out.append(_hdr(0x82, k) + rnd.randbytes(k))
        elif kind == 1:
            t = ("é€x" * (k // 6 + 1)).encode()[: k - k % 6]
            out.append(_hdr(0x81, len(t)) + t)
        elif kind == 2:
            body = rnd.randbytes(k)
            half = len(body) // 2
            out.append(_hdr(0x02, half) + body[:half] + _hdr(0x80, len(body) - half) + body[half:])
        else:
            c = zlib.compressobj(1, zlib.DEFLATED, -15)
            z = (c.compress(rnd.randbytes(k // 4) * 4) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
            out.append(_hdr(0xC2, len(z)) + z)
    out.append(_hdr(0x88, 2) + struct.pack("!H", 1000))
    return b"".join(out)


@pytest.mark.parametrize("mod", READERS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_big_frames_buffered(mod: ModuleType, seed: int) -> None:
    rnd = random.Random(seed)
    data = _big_stream(rnd)
    kw = {"max_size": 2**26, "deflate": True}
    sizes = [rnd.choice([1, 9, 1000, 16_384, 70_000, 300_000]) for _ in range(50)]
    got, events = buffered_outcome(mod, data, sizes, kw)
    assert got == outcome(mod, data, [], kw)
    assert got[1] is None and got[3]  # no error, closed by the close frame
    # Messages are their own objects: equal to the stream's payloads after every later read.
    big = [e for e in events if isinstance(e, bytes | str) and len(e) > 1]
    assert len({id(e) for e in big}) == len(big)
    assert got == buffered_outcome(mod, data, [len(data)], kw)[0]


@pytest.mark.parametrize("mod", READERS)
def test_a_frame_too_big_fails_mid_read(mod: ModuleType) -> None:
    data = _hdr(0x82, 100_000) + bytes(100_000) + _hdr(0x82, 3) + b"abc"
    kw = {"max_size": 50_000}
    assert buffered_outcome(mod, data, [70_000], kw)[0] == outcome(mod, data, [], kw)


def test_compiled_reads_big_binary_frames_in_place() -> None:
    """Compiled: while a big binary frame arrives, get_buffer is a view of its payload."""
    mod = compiled("iotcommute.protocol._frames_c")
    if mod is None:
        pytest.skip("compiled frame reader not built")
    r = mod.FrameReader(max_size=2**26)
    payload = bytes(range(256)) * 1024  # 256 KiB
    data = _hdr(0x82, len(payload)) + payload
    view = r.get_buffer(-1)
    view[:1000] = data[:1000]
    r.buffer_updated(1000)
    view = r.get_buffer(-1)
    assert len(view) == len(data) - 1000  # exactly the rest of the payload
    view[:] = data[1000:]
    del view
    r.buffer_updated(len(data) - 1000)
    assert r.events == [payload]
    # The next read goes to the reused buffer, not into the message handed out.
    view = r.get_buffer(-1)
    view[:5] = b"\x82\x03xyz"
    r.buffer_updated(5)
    assert r.events == [payload, b"xyz"]


def test_compiled_read_size_follows_the_message_size() -> None:
    """Compiled: after a read of big messages (2 KiB or more on average) the next read may
    fill 256 KiB of the buffer, after a read of small ones 512 KiB (see _READ_SIZE_BIG)."""
    mod = compiled("iotcommute.protocol._frames_c")
    if mod is None:
        pytest.skip("compiled frame reader not built")
    r = mod.FrameReader(max_size=2**26)
    assert len(r.get_buffer(-1)) == 512 * 1024
    for size, count, then in ((4096, 50, 256), (100, 1000, 512), (2100, 60, 256)):
        data = (_hdr(0x82, size) + bytes(size)) * count
        view = r.get_buffer(-1)
        view[: len(data)] = data
        del view
        r.buffer_updated(len(data))
        assert len(r.events) == count and all(len(m) == size for m in r.events)
        r.events = []
        assert len(r.get_buffer(-1)) == then * 1024, (size, then)


def test_client_protocol_buffered_through_the_handshake() -> None:
    p = ClientProtocol("example.test", "/x", compression=False)
    p.send_request()
    request = p.data_to_send().decode("latin-1")
    key = next(
        line.split(":", 1)[1].strip()
        for line in request.split("\r\n")
        if line.lower().startswith("sec-websocket-key")
    )
    accept = base64.b64encode(
        hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    ).decode()
    head = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
    ).encode()
    big = bytes(70_000)
    data = head + _hdr(0x81, 2) + b"hi" + _hdr(0x82, len(big)) + big + _hdr(0x89, 1) + b"p"
    pos = 0
    events: list[object] = []
    sizes = [len(head) + 10, 20_000, 100, 1_000_000]
    while pos < len(data):
        size = sizes.pop(0) if sizes else 1_000_000
        view = p.get_buffer(-1)
        n = min(len(view), len(data) - pos, size)
        view[:n] = data[pos : pos + n]
        del view
        p.buffer_updated(n)
        pos += n
        events += p.events_received()
    messages = [e for e in events if type(e) in (str, bytes)]
    assert messages == ["hi", big]
    assert p.data_to_send()[:2] == b"\x8a\x81"  # the ping was answered (masked pong)
