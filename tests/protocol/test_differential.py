"""Differential tests: the compiled and pure paths must agree on every byte stream.

Hypothesis builds mostly-valid server streams (with mutations that break rules), splits
them at random boundaries, and checks that both readers produce identical events and
identical errors, and that the split never changes the outcome.
"""

from __future__ import annotations

import struct
import zlib
from types import ModuleType
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotcommute.protocol import _frames_py, _mask_py
from tests.compiled import built, compiled, skip_unless_built

_frames_c = compiled("iotcommute.protocol._frames_c")
_mask = compiled("iotcommute.protocol._mask")
pytestmark = skip_unless_built(_frames_c, _mask)


def compiled_pair() -> tuple[ModuleType, ModuleType]:
    """The compiled reader and mask (a missing build fails here under REQUIRE)."""
    return built(_frames_c), built(_mask)


SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def frame(opcode: int, payload: bytes, fin: bool, rsv: int, masked: bool) -> bytes:
    n = len(payload)
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    m = 0x80 if masked else 0
    if n < 126:
        head = bytes((b0, m | n))
    elif n < 65536:
        head = bytes((b0, m | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, m | 127)) + struct.pack("!Q", n)
    if masked:
        head += b"abcd"
    return head + payload


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


payloads = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=30).map(lambda s: s.encode("utf-8")),
    st.binary(min_size=120, max_size=300),
    st.sampled_from([b"\xff", b"\xe2\x82", b"\xed\xa0\x80", "€".encode(), b"\x03\xe8ok"]),
)


@st.composite
def message_spec(draw: Any, deflate_on: bool) -> bytes:
    """One message (1-3 fragments, maybe interleaved control frames), sometimes broken."""
    kind = draw(st.integers(0, 9))
    if kind >= 8:  # a control frame, or any opcode at all
        opcode = draw(st.sampled_from([8, 9, 10, 9, 10, 3, 11, 0]))
        payload = draw(payloads)
        if opcode == 8 and payload and draw(st.booleans()):
            code = draw(st.sampled_from([1000, 1001, 1004, 1006, 3000, 999]))
            payload = struct.pack("!H", code) + payload[:20]
        fin = draw(st.integers(0, 9)) > 0
        return frame(opcode, payload, fin, 0, draw(st.integers(0, 30)) == 0)
    opcode = 1 if kind < 4 else 2
    payload = draw(payloads)
    compressed = deflate_on and draw(st.booleans())
    if compressed and draw(st.integers(0, 9)) > 0:
        payload = deflate(payload)
    nfrag = draw(st.integers(1, 3))
    cuts = sorted(
        draw(st.lists(st.integers(0, len(payload)), min_size=nfrag - 1, max_size=nfrag - 1))
    )
    pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)])]
    out = []
    for i, piece in enumerate(pieces):
        op = opcode if i == 0 else 0
        rsv = 4 if compressed and i == 0 else 0
        if draw(st.integers(0, 20)) == 0:
            rsv = draw(st.integers(0, 7))  # break the reserved-bit rules
        if draw(st.integers(0, 30)) == 0:
            op = draw(st.integers(0, 15))  # break the opcode rules
        out.append(frame(op, piece, i == len(pieces) - 1, rsv, draw(st.integers(0, 40)) == 0))
        if draw(st.integers(0, 4)) == 0:
            out.append(
                frame(draw(st.sampled_from([9, 10])), draw(st.binary(max_size=10)), True, 0, False)
            )
    return b"".join(out)


@st.composite
def streams(draw: Any) -> tuple[bytes, list[int], dict[str, Any]]:
    deflate_on = draw(st.booleans())
    parts = draw(st.lists(message_spec(deflate_on), max_size=10))
    if draw(st.integers(0, 9)) == 0:
        parts.insert(draw(st.integers(0, len(parts))), draw(st.binary(max_size=20)))
    data = b"".join(parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    kw = {
        "max_size": draw(st.sampled_from([4 * 2**20, 200, 64])),
        "max_fragments": draw(st.sampled_from([1024, 3])),
        "deflate": deflate_on,
        "no_context_takeover": draw(st.booleans()),
    }
    return data, cuts, kw


def outcome(mod: ModuleType, data: bytes, cuts: list[int], kw: dict[str, Any]) -> Any:
    r = mod.FrameReader(**kw)
    prev = 0
    for c in [*cuts, len(data)]:
        r.feed_data(data[prev:c])
        prev = c
    e = r.error
    err = None if e is None else (type(e), str(e), e.close_code)
    return list(r.events), err, list(r.pongs), r.closed, r.close_code, r.close_reason


@SETTINGS
@given(streams())
def test_pure_and_compiled_agree(s: tuple[bytes, list[int], dict[str, Any]]) -> None:
    data, cuts, kw = s
    fc, _ = compiled_pair()
    py = outcome(_frames_py, data, cuts, kw)
    assert outcome(fc, data, cuts, kw) == py
    # The split never matters.
    assert outcome(_frames_py, data, [], kw) == py
    assert outcome(fc, data, list(range(len(data))), kw) == py


@SETTINGS
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=5))
def test_random_bytes_agree(data: bytes, cuts: list[int]) -> None:
    cuts = sorted(c for c in cuts if c <= len(data))
    kw = {"deflate": True, "max_size": 100}
    assert outcome(compiled_pair()[0], data, cuts, kw) == outcome(_frames_py, data, cuts, kw)


@SETTINGS
@given(st.binary(max_size=2000), st.binary(min_size=4, max_size=4))
def test_masking_agrees(data: bytes, key: bytes) -> None:
    _, _mask = compiled_pair()
    assert _mask.apply_mask(data, key) == _mask_py.apply_mask(data, key)
    for opcode in (1, 2, 8, 9):
        assert _mask.encode_frame(opcode, data, key=key) == _mask_py.encode_frame(
            opcode, data, key=key
        )
    assert _mask.encode_frame(0, data, False, True, key) == _mask_py.encode_frame(
        0, data, False, True, key
    )


@st.composite
def valid_streams(draw: Any) -> bytes:
    """Valid server streams only: fragmented text/binary, interleaved pings/pongs, a close."""
    out = []
    for _ in range(draw(st.integers(0, 8))):
        opcode = draw(st.sampled_from([1, 2]))
        if opcode == 1:
            payload = draw(st.text(max_size=200)).encode("utf-8")
        else:
            payload = draw(st.binary(max_size=300))
        nfrag = draw(st.integers(1, 4))
        cuts = sorted(
            draw(st.lists(st.integers(0, len(payload)), min_size=nfrag - 1, max_size=nfrag - 1))
        )
        pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)])]
        for i, piece in enumerate(pieces):
            out.append(frame(opcode if i == 0 else 0, piece, i == len(pieces) - 1, 0, False))
            if draw(st.integers(0, 3)) == 0:
                out.append(
                    frame(
                        draw(st.sampled_from([9, 10])), draw(st.binary(max_size=20)), True, 0, False
                    )
                )
    if draw(st.booleans()):
        reason = draw(st.text(max_size=20)).encode("utf-8")
        out.append(
            frame(
                8,
                struct.pack("!H", draw(st.sampled_from([1000, 1001, 3000]))) + reason,
                True,
                0,
                False,
            )
        )
    return b"".join(out)


def wsproto_outcome(data: bytes) -> list[Any]:
    """The same stream through wsproto, as an independent oracle for valid input."""
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import BytesMessage, CloseConnection, Message, Ping, Pong, TextMessage

    from iotcommute.protocol import events as ev

    conn = Connection(ConnectionType.CLIENT)
    conn.receive_data(data)
    out: list[Any] = []
    parts: list[Any] = []
    for e in conn.events():
        if isinstance(e, (TextMessage, BytesMessage)):
            assert isinstance(e, Message)
            parts.append(e.data)
            if e.message_finished:
                out.append(("" if isinstance(e, TextMessage) else b"").join(parts))
                parts = []
        elif isinstance(e, Ping):
            out.append(ev.Ping(bytes(e.payload)))
        elif isinstance(e, Pong):
            out.append(ev.Pong(bytes(e.payload)))
        elif isinstance(e, CloseConnection):
            out.append(ev.CloseReceived(e.code, e.reason or ""))
            break
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_streams(), st.lists(st.integers(0, 3000), max_size=6))
def test_valid_streams_match_wsproto(data: bytes, cuts: list[int]) -> None:
    cuts = sorted(c for c in cuts if c <= len(data))
    expected = wsproto_outcome(data)
    for mod in (_frames_py, compiled_pair()[0]):
        events, error, *_ = outcome(mod, data, cuts, {})
        assert error is None
        assert events == expected
