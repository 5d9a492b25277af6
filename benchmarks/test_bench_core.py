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

from iotcommute import _frames_py, _mask_py

_frames_c: ModuleType | None
_mask: ModuleType | None
try:
    _frames_c = importlib.import_module("iotcommute._frames_c")
    _mask = importlib.import_module("iotcommute._mask")
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
