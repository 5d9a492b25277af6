"""Frame reader and masking rules, bytes in / events out, against BOTH implementations.

The compiled param is skipped only when the extension is not built; CI sets
IOTCOMMUTE_REQUIRE_EXTENSIONS=1 and then a missing build is a failure (see test_built).
"""

from __future__ import annotations

import itertools
import os
import struct
import zlib
from types import ModuleType
from typing import Any

import pytest

from iotcommute.exceptions import InvalidUTF8Error, MessageTooBigError, ProtocolError
from iotcommute.protocol import _frames_py, _mask_py, frames
from iotcommute.protocol.events import CloseReceived, Ping, Pong
from tests.compiled import REQUIRE, built, compiled, twins

_frames_c = compiled("iotcommute.protocol._frames_c")
_mask_c = compiled("iotcommute.protocol._mask")


@pytest.fixture(params=twins(_frames_py, "iotcommute.protocol._frames_c"))
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return built(request.param)


@pytest.fixture(params=twins(_mask_py, "iotcommute.protocol._mask"))
def mask(request: pytest.FixtureRequest) -> ModuleType:
    return built(request.param)


def test_built() -> None:
    """CI builds the extensions; a silent fallback there must fail loudly."""
    if not REQUIRE:
        pytest.skip("IOTCOMMUTE_REQUIRE_EXTENSIONS not set")
    assert _frames_c is not None and _mask_c is not None
    if os.environ.get("IOTCOMMUTE_NO_EXTENSIONS", "") in ("", "0"):
        assert frames.SPEEDUPS


def test_selector_consistent() -> None:
    assert frames.SPEEDUPS == (frames.frames_impl is not _frames_py)
    assert frames.FrameReader is frames.frames_impl.FrameReader
    assert frames.apply_mask is frames.mask_impl.apply_mask


# -- helpers ----------------------------------------------------------------------------


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = None,
    length: int | None = None,
) -> bytes:
    """A server frame (unmasked unless `mask`); `length` overrides the encoded length."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes((b0, mbit | n))
    elif n < 65536:
        head = bytes((b0, mbit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, mbit | 127)) + struct.pack("!Q", n)
    if mask is not None:
        head += mask
        payload = _mask_py.apply_mask(payload, mask)
    return head + payload


def run(
    impl: ModuleType, data: bytes, chunk: int | None = None, **kw: Any
) -> tuple[list[Any], Any]:
    r = impl.FrameReader(**kw)
    if chunk is None:
        r.feed_data(data)
    else:
        for i in range(0, len(data), chunk):
            r.feed_data(data[i : i + chunk])
    return list(r.events), r.error


def err(impl: ModuleType, data: bytes, **kw: Any) -> Any:
    events, error = run(impl, data, **kw)
    assert error is not None, events
    # Same outcome whatever the chunking.
    for chunk in (1, 3, 7):
        ev2, e2 = run(impl, data, chunk, **kw)
        assert ev2 == events
        assert type(e2) is type(error) and str(e2) == str(error)
    return error


def error_of(reader: Any) -> Any:
    """(A call, so mypy does not keep an earlier `is None` narrowing.)"""
    return reader.error


def deflate(data: bytes, wbits: int = 15, c: Any = None) -> bytes:
    c = c or zlib.compressobj(6, zlib.DEFLATED, -wbits)
    out: bytes = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


# -- data frames ------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_binary_lengths(impl: ModuleType, n: int) -> None:
    payload = bytes(i & 0xFF for i in range(n))
    data = frame(2, payload) + frame(2, b"after")
    for chunk in (None, 1 if n < 70000 else 4093, 65536):
        events, error = run(impl, data, chunk)
        assert error is None
        assert events == [payload, b"after"]
        assert type(events[0]) is bytes


def test_text_is_plain_str(impl: ModuleType) -> None:
    events, error = run(impl, frame(1, "héllo €".encode()) + frame(1, b""))
    assert error is None
    assert events == ["héllo €", ""]
    assert type(events[0]) is str


def test_any_chunking_identical(impl: ModuleType) -> None:
    stream = (
        frame(1, "a€".encode() * 50)
        + frame(9, b"p")
        + frame(2, b"\x00" * 300, fin=False)
        + frame(10, b"q")
        + frame(0, b"\x01" * 70000)
        + frame(1, b"x")
    )
    whole, e = run(impl, stream)
    assert e is None and len(whole) == 5
    for chunk in (1, 2, 5, 127, 65536, 10**6):
        assert run(impl, stream, chunk) == (whole, None)


def test_every_split_point(impl: ModuleType) -> None:
    # Split headers and split payloads (assembled in place) at every offset, including a
    # split inside a multi-byte character and fragments that switch from ASCII to UTF-8.
    stream = (
        frame(2, b"")
        + frame(1, "é€".encode() * 40)
        + frame(2, bytes(range(256)) * 2)
        + frame(1, b"abc", fin=False)
        + frame(9, b"ping")
        + frame(0, "dé".encode(), fin=False)
        + frame(0, b"f" * 130)
        + frame(1, "€".encode() * 3, fin=False)
        + frame(0, b"xyz")
        + frame(2, b"\x07")
    )
    whole, e = run(impl, stream)
    assert e is None and len(whole) == 7
    assert whole[4] == "abcdé" + "f" * 130 and whole[5] == "€€€xyz"
    for i in range(len(stream) + 1):
        r = impl.FrameReader()
        r.feed_data(stream[:i])
        r.feed_data(stream[i:])
        assert (r.events, r.error) == (whole, None), i
    for i in range(0, len(stream), 97):
        r = impl.FrameReader()
        cuts = [0, i, i + 1, i + 3, i + 50, len(stream)]
        for a, b in itertools.pairwise(cuts):
            r.feed_data(stream[a:b])
        assert (r.events, r.error) == (whole, None), i


def test_big_frame_split_headers(impl: ModuleType) -> None:
    # 64-bit and 16-bit length headers split at each byte, then the payload in odd reads.
    payload = bytes(i & 0xFF for i in range(70001))
    stream = frame(2, payload) + frame(1, b"t" * 300) + frame(2, b"end")
    for cut in range(1, 14):
        r = impl.FrameReader()
        r.feed_data(stream[:cut])
        for i in range(cut, len(stream), 9973):
            r.feed_data(stream[i : i + 9973])
        assert (r.events, r.error) == ([payload, "t" * 300, b"end"], None), cut


def test_fragmented_text_ascii_then_multibyte(impl: ModuleType) -> None:
    data = frame(1, b"abc", fin=False) + frame(0, b"d\xc3", fin=False) + frame(0, b"\xa9e")
    assert run(impl, data) == (["abcdée"], None)
    data = frame(1, b"\xc3", fin=False) + frame(0, b"\xa9", fin=False) + frame(0, b"zz")
    assert run(impl, data) == (["ézz"], None)
    bad = frame(1, b"abc", fin=False) + frame(0, b"ok", fin=False) + frame(0, b"\xc3(")
    assert type(err(impl, bad)) is InvalidUTF8Error
    assert run(impl, bad[:-4])[1] is None  # the ASCII prefix alone is fine


def test_frame_larger_than_preallocation(impl: ModuleType) -> None:
    # Over _PREALLOC_MAX the payload buffer grows as data arrives instead.
    size = impl._PREALLOC_MAX + 5 if hasattr(impl, "_PREALLOC_MAX") else 64 * 2**20 + 5
    chunk = b"z" * 2**22
    r = impl.FrameReader(max_size=2**30)
    r.feed_data(bytes((0x82, 127)) + size.to_bytes(8, "big"))
    left = size
    while left:
        piece = chunk if left >= len(chunk) else chunk[:left]
        r.feed_data(piece)
        left -= len(piece)
    r.feed_data(frame(2, b"next"))
    assert r.error is None and len(r.events) == 2
    assert len(r.events[0]) == size and r.events[0][-3:] == b"zzz" and r.events[1] == b"next"
    del r


def test_accepts_bytearray_and_memoryview(impl: ModuleType) -> None:
    r = impl.FrameReader()
    data = frame(2, b"abc") + frame(1, b"xyz")
    r.feed_data(bytearray(data[:3]))
    r.feed_data(memoryview(data)[3:])
    assert r.events == [b"abc", "xyz"]


def test_partial_frame_waits(impl: ModuleType) -> None:
    r = impl.FrameReader()
    data = frame(2, b"x" * 1000)
    r.feed_data(data[:500])
    assert r.events == [] and r.error is None
    r.feed_data(data[500:])
    assert r.events == [b"x" * 1000]


# -- header rules -----------------------------------------------------------------------


def test_masked_server_frame_fails(impl: ModuleType) -> None:
    e = err(impl, frame(2, b"hi", mask=b"abcd"))
    assert type(e) is ProtocolError and e.close_code == 1002


@pytest.mark.parametrize("rsv", [1, 2, 4, 3, 7])
def test_reserved_bits_without_extension(impl: ModuleType, rsv: int) -> None:
    e = err(impl, frame(2, b"x", rsv=rsv))
    assert type(e) is ProtocolError and e.close_code == 1002


@pytest.mark.parametrize("rsv", [1, 2, 3, 5])
def test_rsv2_rsv3_fail_even_with_deflate(impl: ModuleType, rsv: int) -> None:
    assert err(impl, frame(2, b"x", rsv=rsv), deflate=True).close_code == 1002


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
def test_reserved_opcodes(impl: ModuleType, opcode: int) -> None:
    e = err(impl, frame(2, b"ok") + frame(opcode, b"x"))
    assert type(e) is ProtocolError and "opcode" in str(e)
    assert run(impl, frame(2, b"ok") + frame(opcode, b"x"))[0] == [b"ok"]


@pytest.mark.parametrize("opcode", [8, 9, 10])
def test_control_frame_rules(impl: ModuleType, opcode: int) -> None:
    assert err(impl, frame(opcode, b"x" * 126)).close_code == 1002
    assert err(impl, frame(opcode, b"x", fin=False)).close_code == 1002
    assert err(impl, frame(opcode, b"", rsv=4), deflate=True).close_code == 1002


def test_control_frame_125_ok(impl: ModuleType) -> None:
    assert run(impl, frame(9, b"x" * 125)) == ([Ping(b"x" * 125)], None)


def test_continuation_without_start(impl: ModuleType) -> None:
    assert err(impl, frame(0, b"x")).close_code == 1002
    assert err(impl, frame(0, b"x", fin=False)).close_code == 1002


@pytest.mark.parametrize("opcode", [1, 2])
def test_new_message_inside_fragmented(impl: ModuleType, opcode: int) -> None:
    e = err(impl, frame(2, b"a", fin=False) + frame(opcode, b"b"))
    assert type(e) is ProtocolError


def test_63bit_length_inside_fragmented_message(impl: ModuleType) -> None:
    # frag_wire + length would overflow a signed 64-bit integer in the compiled reader.
    data = frame(2, b"abc", fin=False) + bytes((0x80, 127)) + struct.pack("!Q", 2**63 - 1)
    e = err(impl, data + b"x" * 20)
    assert type(e) is MessageTooBigError
    e = err(impl, data + b"x" * 20, max_size=2**62)
    assert type(e) is MessageTooBigError


def test_64bit_length_msb(impl: ModuleType) -> None:
    data = bytes((0x82, 127)) + struct.pack("!Q", 1 << 63)
    assert type(err(impl, data, max_size=2**62)) is ProtocolError


# -- fragmentation and UTF-8 --------------------------------------------------------------


def test_fragments_with_interleaved_control(impl: ModuleType) -> None:
    data = (
        frame(1, "é".encode()[:1], fin=False)
        + frame(9, b"p1")
        + frame(0, "é".encode()[1:] + b"x", fin=False)
        + frame(10, b"q")
        + frame(0, b"yz")
        + frame(2, b"b1", fin=False)
        + frame(0, b"b2")
    )
    for chunk in (None, 1):
        r = impl.FrameReader()
        if chunk:
            for i in range(len(data)):
                r.feed_data(data[i : i + 1])
        else:
            r.feed_data(data)
        assert r.events == [Ping(b"p1"), Pong(b"q"), "éxyz", b"b1b2"]
        assert r.pongs == [b"p1"]


def test_invalid_utf8_single_frame(impl: ModuleType) -> None:
    e = err(impl, frame(1, b"ok") + frame(1, b"\xff"))
    assert type(e) is InvalidUTF8Error and e.close_code == 1007
    assert run(impl, frame(1, b"ok") + frame(1, b"\xff"))[0] == ["ok"]


def test_invalid_utf8_fails_fast_across_fragments(impl: ModuleType) -> None:
    # The first fragment is already invalid: fail without waiting for the rest.
    r = impl.FrameReader()
    r.feed_data(frame(1, b"ab\xc3\x28", fin=False))
    assert type(r.error) is InvalidUTF8Error


def test_invalid_utf8_fails_fast_inside_incomplete_frame(impl: ModuleType) -> None:
    # A 1 MiB text frame whose start is bad: fail before the rest of it arrives.
    data = frame(1, b"ok" + b"\xff" + b"a" * 2**20)
    r = impl.FrameReader()
    r.feed_data(data[:100])
    assert type(r.error) is InvalidUTF8Error
    # Bad bytes in a later chunk of the same frame are caught on arrival too.
    r = impl.FrameReader()
    r.feed_data(frame(1, b"a" * 2**20)[:10])  # just the header
    r.feed_data(b"a" * 50)
    r.feed_data(b"a" * 50)
    assert r.error is None
    r.feed_data(b"\xc3\x28")
    assert type(error_of(r)) is InvalidUTF8Error
    # A continuation carries the decoder state of the previous fragment.
    r = impl.FrameReader()
    cont = frame(1, b"ab\xe2", fin=False) + frame(0, b"\x82\xac" + b"z" * 1000)
    r.feed_data(cont[:20])
    r.feed_data(cont[20:40])
    assert r.error is None
    r.feed_data(cont[40:])
    assert r.events == ["ab€" + "z" * 1000]
    r = impl.FrameReader()
    bad = frame(1, b"ab\xe2", fin=False) + frame(0, b"\x28" + b"z" * 1000)
    r.feed_data(bad[:12])
    assert type(r.error) is InvalidUTF8Error


def test_partial_validation_skips_compressed_and_binary(impl: ModuleType) -> None:
    r = impl.FrameReader()
    r.feed_data(frame(2, b"\xff" * 1000)[:100])
    assert r.error is None
    z = deflate("é".encode() * 2000)
    r = impl.FrameReader(deflate=True)
    data = frame(1, z, rsv=4)
    for i in range(0, len(data), 7):
        r.feed_data(data[i : i + 7])
    assert r.error is None and r.events == ["é" * 2000]


def test_truncated_utf8_at_message_end(impl: ModuleType) -> None:
    e = err(impl, frame(1, b"a\xe2\x82", fin=False) + frame(0, b""))
    assert type(e) is InvalidUTF8Error


@pytest.mark.parametrize(
    "bad", [b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80"]
)
def test_invalid_utf8_sequences(impl: ModuleType, bad: bytes) -> None:
    assert type(err(impl, frame(1, bad))) is InvalidUTF8Error
    assert type(err(impl, frame(1, bad[:1], fin=False) + frame(0, bad[1:]))) is InvalidUTF8Error


def test_max_fragments(impl: ModuleType) -> None:
    ok = frame(2, b"a", fin=False) + frame(0, b"b", fin=False) + frame(0, b"c")
    assert run(impl, ok, max_fragments=3) == ([b"abc"], None)
    bad = frame(2, b"a", fin=False) + frame(0, b"b", fin=False) + frame(0, b"c", fin=False)
    e = err(impl, bad + frame(0, b"d"), max_fragments=3)
    assert type(e) is MessageTooBigError and e.close_code == 1009
    # The count is per message: several messages at the limit in a row are fine.
    assert run(impl, ok * 3, max_fragments=3) == ([b"abc"] * 3, None)
    assert run(impl, ok + frame(1, b"x", fin=False) + frame(0, b"y"), 2, max_fragments=3) == (
        [b"abc", "xy"],
        None,
    )


# -- size limits ----------------------------------------------------------------------------


def test_max_size_checked_on_header(impl: ModuleType) -> None:
    r = impl.FrameReader(max_size=1000)
    # Only the header of a huge frame: fails before any payload is buffered.
    r.feed_data(bytes((0x82, 127)) + struct.pack("!Q", 2**40))
    assert type(r.error) is MessageTooBigError and r.error.close_code == 1009
    assert run(impl, frame(2, b"x" * 1000), max_size=1000) == ([b"x" * 1000], None)
    assert type(err(impl, frame(1, b"x" * 1001), max_size=1000)) is MessageTooBigError


def test_max_size_fragmented(impl: ModuleType) -> None:
    data = frame(2, b"x" * 600, fin=False) + frame(0, b"x" * 401)
    assert type(err(impl, data, max_size=1000)) is MessageTooBigError
    data = frame(2, b"x" * 600, fin=False) + frame(0, b"x" * 400) + frame(2, b"y" * 1000)
    assert run(impl, data, max_size=1000)[1] is None


def test_default_max_size(impl: ModuleType) -> None:
    r = impl.FrameReader()
    assert r.max_size == 4 * 2**20 and r.max_fragments == 1024
    r.feed_data(bytes((0x82, 127)) + struct.pack("!Q", 4 * 2**20 + 1))
    assert type(r.error) is MessageTooBigError


# -- close frames ----------------------------------------------------------------------------


def test_close_empty_is_1005(impl: ModuleType) -> None:
    r = impl.FrameReader()
    r.feed_data(frame(8) + frame(2, b"ignored"))
    assert r.events == [CloseReceived(1005, "")]
    assert r.closed and r.close_code == 1005 and r.error is None


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1011, 1014, 3000, 4999])
def test_close_valid_codes(impl: ModuleType, code: int) -> None:
    events, error = run(impl, frame(8, struct.pack("!H", code) + "bye ✓".encode()))
    assert error is None and events == [CloseReceived(code, "bye ✓")]


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
def test_close_invalid_codes(impl: ModuleType, code: int) -> None:
    e = err(impl, frame(8, struct.pack("!H", code)))
    assert type(e) is ProtocolError and e.close_code == 1002


def test_close_one_byte_payload(impl: ModuleType) -> None:
    assert type(err(impl, frame(8, b"\x03"))) is ProtocolError


def test_close_invalid_utf8_reason(impl: ModuleType) -> None:
    e = err(impl, frame(8, struct.pack("!H", 1000) + b"\xff"))
    assert type(e) is InvalidUTF8Error and e.close_code == 1007


def test_input_after_close_or_error_ignored(impl: ModuleType) -> None:
    r = impl.FrameReader()
    r.feed_data(frame(8, struct.pack("!H", 1000)))
    r.feed_data(frame(2, b"late"))
    assert r.events == [CloseReceived(1000, "")]
    r = impl.FrameReader()
    r.feed_data(frame(2, b"a") + frame(5, b"") + frame(2, b"b"))
    r.feed_data(frame(2, b"c"))
    assert r.events == [b"a"] and r.error is not None


# -- permessage-deflate ------------------------------------------------------------------------


def test_deflate_message(impl: ModuleType) -> None:
    msg = "température ".encode() * 100
    data = frame(1, deflate(msg), rsv=4) + frame(2, b"plain")
    for chunk in (None, 1):
        assert run(impl, data, chunk, deflate=True) == ([msg.decode(), b"plain"], None)


def test_deflate_context_takeover(impl: ModuleType) -> None:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    m1, m2 = b"hello world " * 20, b"hello world " * 21
    data = frame(2, deflate(m1, c=c), rsv=4) + frame(2, deflate(m2, c=c), rsv=4)
    assert run(impl, data, deflate=True) == ([m1, m2], None)
    # The second message relies on the first's window: without takeover it cannot inflate.
    e = err(impl, data, deflate=True, no_context_takeover=True)
    assert type(e) is ProtocolError


def test_deflate_no_context_takeover(impl: ModuleType) -> None:
    m1, m2 = b"abc" * 50, b"abc" * 60
    data = frame(2, deflate(m1), rsv=4) + frame(2, deflate(m2), rsv=4)
    assert run(impl, data, deflate=True, no_context_takeover=True) == ([m1, m2], None)


def test_deflate_window_bits(impl: ModuleType) -> None:
    msg = os.urandom(600) * 4  # repeats 600 bytes back: beyond a 512-byte window
    data = frame(2, deflate(msg, wbits=15), rsv=4)
    assert run(impl, data, deflate=True, window_bits=15) == ([msg], None)
    small = frame(2, deflate(msg, wbits=9), rsv=4)
    assert run(impl, small, deflate=True, window_bits=9) == ([msg], None)
    # Note: zlib does not reject distances beyond a small window when the referenced
    # bytes are still in its output buffer, so a server overshooting its negotiated
    # window is not always detectable; we do not assert on that.


def test_deflate_fragmented(impl: ModuleType) -> None:
    msg = ("ü" * 5000).encode()
    z = deflate(msg)
    data = frame(1, z[:10], fin=False, rsv=4) + frame(9, b"") + frame(0, z[10:20], fin=False)
    data += frame(0, z[20:])
    assert run(impl, data, 5, deflate=True) == ([Ping(b""), msg.decode()], None)


def test_deflate_bfinal_block_with_takeover(impl: ModuleType) -> None:
    def final(data: bytes) -> bytes:
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush(zlib.Z_FINISH)  # ends with a BFINAL block

    data = frame(2, final(b"one" * 30), rsv=4) + frame(2, final(b"two" * 30), rsv=4)
    assert run(impl, data, 3, deflate=True) == ([b"one" * 30, b"two" * 30], None)
    # Data after the final block inside the same message is a violation.
    z = final(b"x" * 30)
    bad = frame(2, z, fin=False, rsv=4) + frame(0, deflate(b"more"))
    assert type(err(impl, bad, deflate=True)) is ProtocolError


def test_deflate_rsv1_on_continuation(impl: ModuleType) -> None:
    z = deflate(b"abc" * 10)
    data = frame(2, z[:3], fin=False, rsv=4) + frame(0, z[3:], rsv=4)
    assert type(err(impl, data, deflate=True)) is ProtocolError


def test_deflate_corrupt(impl: ModuleType) -> None:
    assert type(err(impl, frame(2, b"\xff\xff\xff\xff", rsv=4), deflate=True)) is ProtocolError


def test_deflate_invalid_utf8(impl: ModuleType) -> None:
    e = err(impl, frame(1, deflate(b"ok \xff"), rsv=4), deflate=True)
    assert type(e) is InvalidUTF8Error


def test_deflate_bomb_bounded(impl: ModuleType) -> None:
    bomb = deflate(b"\x00" * (64 * 2**20))  # 64 MiB of zeros -> ~64 KiB on the wire
    assert len(bomb) < 100_000
    r = impl.FrameReader(max_size=2**20, deflate=True)
    r.feed_data(frame(2, bomb, rsv=4))
    assert type(r.error) is MessageTooBigError and r.error.close_code == 1009
    assert r.events == []


def test_deflate_exact_max_size(impl: ModuleType) -> None:
    msg = b"a" * 1000
    assert run(impl, frame(2, deflate(msg), rsv=4), max_size=1000, deflate=True) == ([msg], None)
    e = err(impl, frame(2, deflate(msg + b"a"), rsv=4), max_size=1000, deflate=True)
    assert type(e) is MessageTooBigError
    z = deflate(msg + b"a")
    frag = frame(2, z[:5], fin=False, rsv=4) + frame(0, z[5:])
    assert type(err(impl, frag, max_size=1000, deflate=True)) is MessageTooBigError


# -- masking and encoding ------------------------------------------------------------------


def test_mask_rfc_example(mask: ModuleType) -> None:
    # RFC 6455 5.7: "Hello" masked with 37 fa 21 3d.
    key = bytes.fromhex("37fa213d")
    assert mask.apply_mask(b"Hello", key) == bytes.fromhex("7f9f4d5158")
    assert mask.encode_frame(1, b"Hello", key=key) == bytes.fromhex("818537fa213d7f9f4d5158")


@pytest.mark.parametrize("n", [0, 1, 3, 4, 7, 8, 9, 15, 16, 17, 100, 1000, 65537])
def test_mask_roundtrip_and_twins(mask: ModuleType, n: int) -> None:
    data = os.urandom(n)
    key = os.urandom(4)
    masked = mask.apply_mask(data, key)
    assert masked == bytes(b ^ key[i % 4] for i, b in enumerate(data))
    assert mask.apply_mask(masked, key) == data
    assert mask.apply_mask(bytearray(data), key) == masked
    assert mask.apply_mask(memoryview(data), key) == masked
    assert masked == _mask_py.apply_mask(data, key)


def test_mask_bad_key(mask: ModuleType) -> None:
    with pytest.raises(ValueError):
        mask.apply_mask(b"abc", b"abc")
    with pytest.raises(ValueError):
        mask.encode_frame(2, b"abc", key=b"abcde")


@pytest.mark.parametrize("n", [0, 125, 126, 65535, 65536])
def test_encode_frame_header(mask: ModuleType, n: int) -> None:
    payload = os.urandom(n)
    key = b"\x01\x02\x03\x04"
    out = mask.encode_frame(2, payload, key=key)
    assert out == _mask_py.encode_frame(2, payload, key=key)
    assert out[0] == 0x82 and out[1] & 0x80
    hlen = 2 if n < 126 else 4 if n < 65536 else 10
    assert len(out) == hlen + 4 + n
    assert out[hlen : hlen + 4] == key
    assert _mask_py.apply_mask(out[hlen + 4 :], key) == payload
    assert out[:hlen] == mask.frame_header(2, n) and out[1] & 0x7F == (
        n if n < 126 else 126 if n < 65536 else 127
    )


def test_encode_flags(mask: ModuleType) -> None:
    assert mask.encode_frame(1, b"", fin=False, rsv1=True, key=b"abcd")[0] == 0x41
    assert mask.encode_frame(9, b"", key=b"abcd")[0] == 0x89


def test_mask_keys_fresh(mask: ModuleType) -> None:
    keys = {mask.new_mask_key() for _ in range(3000)}  # crosses the 4 KiB pool refill
    assert all(len(k) == 4 for k in keys)
    assert len(keys) > 2990  # 32-bit random keys: collisions are vanishingly rare
    f1 = mask.encode_frame(2, b"same")
    f2 = mask.encode_frame(2, b"same")
    assert f1[2:6] != f2[2:6] or f1 != f2
