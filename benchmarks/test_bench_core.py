"""The sans-IO frame reader from memory: compiled vs fallback vs wsproto, and big messages.

Small frames (32-byte binary, 256-byte JSON text) are fed in 64 KiB chunks; big messages
(64 KiB binary, 16 KiB text in 16 fragments, 6000-byte binary) in 256 KiB reads and in an odd
read size that splits frames and headers anywhere (the split-frame path: payload assembled
in place). Every subject parses the same bytes; rates are frames (messages) per second.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

import pytest

from benchmarks import firehose
from benchmarks.rounds import measure
from iotcommute.protocol import _frames_py, _mask_py
from tests.compiled import compiled

_frames_c = compiled("iotcommute.protocol._frames_c")
_mask = compiled("iotcommute.protocol._mask")

CHUNK = 65536
SMALL_FRAMES = 200_000  # per pass at full scale


def _hdr(b0: int, n: int) -> bytes:
    if n < 126:
        return bytes((b0, n))
    if n < 65536:
        return bytes((b0, 126)) + struct.pack("!H", n)
    return bytes((b0, 127)) + struct.pack("!Q", n)


def _small_stream(case: str, n: int) -> list[bytes]:
    if case == "bin32":
        frames = b"".join(b"\x82\x20" + struct.pack("!Q", i) * 4 for i in range(n))
    else:
        texts = [firehose.tick_json(i) for i in range(min(n, 1000))]
        frames = b"".join(
            _hdr(0x81, len(texts[i % len(texts)])) + texts[i % len(texts)] for i in range(n)
        )
    return [frames[i : i + CHUNK] for i in range(0, len(frames), CHUNK)]


def _ours(mod: Any) -> Callable[[list[bytes]], int]:
    def run(chunks: list[bytes]) -> int:
        r = mod.FrameReader()
        n = 0
        for c in chunks:
            r.feed_data(c)
            n += len(r.events)
            r.events = []
        return n

    return run


def _wsproto(chunks: list[bytes]) -> int:
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import Message

    conn = Connection(ConnectionType.CLIENT)
    n = 0
    for c in chunks:
        conn.receive_data(c)
        for ev in conn.events():  # a message split across reads comes in parts
            n += isinstance(ev, Message) and ev.message_finished
    return n


def _impl(which: str) -> Callable[[list[bytes]], int]:
    if which == "wsproto":
        return _wsproto
    mod = _frames_c if which == "compiled" else _frames_py
    if mod is None:
        pytest.skip("compiled frame reader not built")
    return _ours(mod)


SUBJECT = {"compiled": "iotcommute-core", "fallback": "iotcommute-fallback-core"}


@pytest.mark.parametrize("which", ["compiled", "fallback", "wsproto"])
@pytest.mark.parametrize("case", ["bin32", "text256"])
def test_receive_small_frames(
    benchmark: Any, bench_scale: firehose.BenchScale, case: str, which: str
) -> None:
    n = bench_scale.n(SMALL_FRAMES, minimum=500)
    chunks = _small_stream(case, n)
    fn = _impl(which)
    benchmark.group = f"core: {case} frames from memory"
    got = measure(
        benchmark,
        bench_scale,
        lambda: fn(chunks),
        n,
        micro=True,
        section="core",
        case=f"{case} from memory",
        subject=SUBJECT.get(which, which),
        messages=n,
    )
    assert got == n


@pytest.mark.parametrize("which", ["compiled", "fallback"])
def test_encode_32b_frames(benchmark: Any, bench_scale: firehose.BenchScale, which: str) -> None:
    mod = _mask if which == "compiled" else _mask_py
    if mod is None:
        pytest.skip("compiled masking not built")
    payload = b"x" * 32
    n = bench_scale.n(20_000, minimum=100)

    def run() -> None:
        enc = mod.encode_frame
        for _ in range(n):
            enc(2, payload)

    benchmark.group = "core: encode masked 32-byte frames"
    measure(
        benchmark,
        bench_scale,
        run,
        n,
        micro=True,
        section="core",
        case="encode masked bin32",
        subject=SUBJECT[which],
    )


def _big_stream(case: str, scale: firehose.BenchScale) -> tuple[bytes, int]:
    if case == "text16k-in-16":
        row = b'{"k":"value","n":12345678,"t":"abcdefghij"}'
        body = (row * (16384 // len(row) + 1))[:16384]
        one = b"".join(
            _hdr((0x01 if j == 0 else 0) | (0x80 if j == 15 else 0), 1024)
            + body[j * 1024 : (j + 1) * 1024]
            for j in range(16)
        )
        k = scale.n(400, minimum=20)
        return one * k, k
    size = 65536 if case == "bin64k" else 6000
    k = scale.n(200 if size == 65536 else 2000, minimum=20)
    return b"".join(_hdr(0x82, size) + struct.pack("!Q", i) * (size // 8) for i in range(k)), k


@pytest.mark.parametrize("read", [262144, 65521])
@pytest.mark.parametrize("case", ["bin64k", "text16k-in-16", "bin6k"])
@pytest.mark.parametrize("which", ["compiled", "fallback"])
def test_receive_big_messages(
    benchmark: Any, bench_scale: firehose.BenchScale, which: str, case: str, read: int
) -> None:
    fn = _impl(which)
    stream, k = _big_stream(case, bench_scale)
    chunks = [stream[i : i + read] for i in range(0, len(stream), read)]
    benchmark.group = f"core: {case} in {read}-byte reads"
    got = measure(
        benchmark,
        bench_scale,
        lambda: fn(chunks),
        k,
        micro=True,
        section="core",
        case=f"{case} in {read} B reads",
        subject=SUBJECT[which],
    )
    assert got == k


def test_text256_is_the_recv_cases_payload() -> None:
    """The from-memory text frames carry the same JSON ticks as the text256/json256 cases."""
    r = _frames_py.FrameReader()
    r.feed_data(_small_stream("text256", 2)[0])
    assert [json.loads(str(t))["position"] for t in r.events] == [1_000_000, 1_000_001]
