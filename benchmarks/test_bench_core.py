"""Receive rate of the sans-IO core from memory: compiled vs fallback vs wsproto.

32-byte binary frames fed in 64 KiB chunks. IOTCOMMUTE_BENCH_SCALE=1 is full scale
(1,000,000 frames); unset it runs a small smoke size (20,000). frames/s lands in
`extra_info["frames_per_s"]` of the pytest-benchmark report.
"""

from __future__ import annotations

import importlib
import os
import struct
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from iotcommute.protocol import _frames_py, _mask_py

_frames_c: ModuleType | None
_mask: ModuleType | None
try:
    _frames_c = importlib.import_module("iotcommute.protocol._frames_c")
    _mask = importlib.import_module("iotcommute.protocol._mask")
except ImportError:  # pragma: no cover - depends on the build
    _frames_c = _mask = None

SCALE = float(os.environ.get("IOTCOMMUTE_BENCH_SCALE", "0.02"))
N_FRAMES = max(1000, int(1_000_000 * SCALE))
CHUNK = 65536


def _chunks(n: int) -> list[bytes]:
    frames = b"".join(b"\x82\x20" + struct.pack("!Q", i) * 4 for i in range(n))
    return [frames[i : i + CHUNK] for i in range(0, len(frames), CHUNK)]


@pytest.fixture(scope="module")
def chunks() -> list[bytes]:
    return _chunks(N_FRAMES)


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

    conn = Connection(ConnectionType.CLIENT)
    n = 0
    for c in chunks:
        conn.receive_data(c)
        for _ in conn.events():
            n += 1
    return n


IMPLS = [
    pytest.param(
        "compiled", marks=pytest.mark.skipif(_frames_c is None, reason="not built"), id="compiled"
    ),
    pytest.param("fallback", id="fallback"),
    pytest.param("wsproto", id="wsproto"),
]


@pytest.mark.parametrize("which", IMPLS)
def test_receive_32b_frames(benchmark: Any, chunks: list[bytes], which: str) -> None:
    fn = {"compiled": lambda: _ours(_frames_c), "fallback": lambda: _ours(_frames_py)}.get(
        which, lambda: _wsproto
    )()
    # wsproto is ~50x slower: a tenth of the data keeps the run short; rate is per frame.
    data = chunks if which != "wsproto" else chunks[: max(1, len(chunks) // 10)]
    expected = N_FRAMES if which != "wsproto" else None
    result = benchmark.pedantic(fn, args=(data,), rounds=3, iterations=1)
    if expected is not None:
        assert result == expected
    frames = result
    benchmark.extra_info["frames"] = frames
    benchmark.extra_info["frames_per_s"] = frames / benchmark.stats.stats.min


@pytest.mark.parametrize(
    "mod",
    [
        pytest.param(_mask, id="compiled", marks=pytest.mark.skipif(_mask is None, reason="")),
        pytest.param(_mask_py, id="fallback"),
    ],
)
def test_encode_32b_frames(benchmark: Any, mod: Any) -> None:
    payload = b"x" * 32
    n = max(1000, N_FRAMES // 10)

    def run() -> None:
        enc = mod.encode_frame
        for _ in range(n):
            enc(2, payload)

    benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info["frames_per_s"] = n / benchmark.stats.stats.min


# Bigger messages, read in 256 KiB chunks and in an odd size that splits frames and headers
# anywhere: the split-frame path (payload assembled in place) is what these measure.
def _hdr(b0: int, n: int) -> bytes:
    if n < 126:
        return bytes((b0, n))
    if n < 65536:
        return bytes((b0, 126)) + struct.pack("!H", n)
    return bytes((b0, 127)) + struct.pack("!Q", n)


def _big_stream(case: str) -> tuple[bytes, int]:
    if case == "text16k-in-16":
        row = b'{"k":"value","n":12345678,"t":"abcdefghij"}'
        body = (row * (16384 // len(row) + 1))[:16384]
        one = b"".join(
            _hdr((0x01 if j == 0 else 0) | (0x80 if j == 15 else 0), 1024)
            + body[j * 1024 : (j + 1) * 1024]
            for j in range(16)
        )
        k = max(200, int(20_000 * SCALE))
        return one * k, k
    size = 65536 if case == "bin64k" else 6000
    k = max(100, int((10_000 if size == 65536 else 100_000) * SCALE))
    return b"".join(_hdr(0x82, size) + struct.pack("!Q", i) * (size // 8) for i in range(k)), k


@pytest.mark.parametrize("read", [262144, 65521])
@pytest.mark.parametrize("case", ["bin64k", "text16k-in-16", "bin6k"])
@pytest.mark.parametrize("which", IMPLS[:2])
def test_receive_big_messages(benchmark: Any, which: str, case: str, read: int) -> None:
    mod = _frames_c if which == "compiled" else _frames_py
    stream, k = _big_stream(case)
    chunks = [stream[i : i + read] for i in range(0, len(stream), read)]
    result = benchmark.pedantic(_ours(mod), args=(chunks,), rounds=3, iterations=1)
    assert result == k
    benchmark.extra_info["messages_per_s"] = k / benchmark.stats.stats.min
