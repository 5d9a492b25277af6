"""Payload decoding speed: JSON ticks (orjson vs json vs msgspec) and binary tick batches.

In-process rounds (benchmarks/rounds.py, ``micro``); the summary reports ticks/s per case
with the spread over rounds:

    pytest --benchmark benchmarks/test_bench_payload.py
"""

from __future__ import annotations

import json
from collections.abc import Callable
from types import ModuleType
from typing import Any

import orjson
import pytest

from benchmarks.firehose import BenchScale
from benchmarks.rounds import measure
from iotcommute import payload
from iotcommute.payload import _ticks_py

BATCH = 100


def _compiled() -> ModuleType | None:
    """The compiled tick codec when the package selected it (see payload.ticks_impl)."""
    return payload.ticks_impl if payload.SPEEDUPS else None


C = _compiled()


def make_ticks(n: int, base: int = 1000) -> list[dict[str, Any]]:
    """Telemetry as the simulator sends it: 5 numeric/bool fields, 10 devices interleaved."""
    return [
        {
            "type": "tick",
            "device": f"dev-{i % 10:04d}",
            "position": base + i,
            "ts": 1764128635.123456 + i / 1000,
            "data": {
                "temperature": 21.5 + (i % 7) / 4,
                "humidity": 40.25,
                "pressure": 1013.2,
                "battery": 97 - i % 3,
                "door_open": bool(i & 1),
            },
        }
        for i in range(n)
    ]


def json_tick_256() -> bytes:
    """One JSON tick padded with realistic fields to ~256 bytes (the size the brief fixes)."""
    tick = make_ticks(1)[0]
    tick["data"].update(
        {
            "voltage": 3.3125,
            "rssi": -67,
            "snr": 12.25,
            "firmware_build": 20251126,
            "uptime_s": 86400.5,
        }
    )
    raw = orjson.dumps(tick)
    assert 230 <= len(raw) <= 280, len(raw)
    return raw


def run(
    benchmark: Any,
    scale: BenchScale,
    fn: Callable[[], Any],
    ticks_per_call: int,
    case: str,
    subject: str,
) -> None:
    measure(
        benchmark,
        scale,
        fn,
        ticks_per_call,
        micro=True,
        section="payload",
        case=case,
        subject=subject,
    )


# --- JSON -------------------------------------------------------------------------------------

RAW_JSON = json_tick_256()


@pytest.mark.parametrize("backend", ["orjson", "json", "msgspec", "payload.loads"])
def test_json_tick_decode(benchmark: Any, bench_scale: BenchScale, backend: str) -> None:
    if backend == "orjson":
        fn: Callable[[bytes], Any] = orjson.loads
    elif backend == "json":
        fn = json.loads
    elif backend == "msgspec":
        msgspec = pytest.importorskip("msgspec")
        fn = msgspec.json.Decoder().decode
    else:
        fn = payload.loads
    assert fn(RAW_JSON) == orjson.loads(RAW_JSON)

    def decode_1000() -> None:
        for _ in range(1000):
            fn(RAW_JSON)

    subject = "iotcommute payload.loads" if backend == "payload.loads" else backend
    run(benchmark, bench_scale, decode_1000, 1000, "JSON tick 256 B -> dict", subject)


# --- binary batches ---------------------------------------------------------------------------

TICKS = make_ticks(BATCH)
RAW_BATCH = _ticks_py.encode_batch(TICKS)

IMPLS = [pytest.param(_ticks_py, id="py")]
if C is not None:
    IMPLS.insert(0, pytest.param(C, id="c"))


@pytest.mark.parametrize("form", ["dicts", "rows"])
@pytest.mark.parametrize("impl", IMPLS)
def test_batch_decode_100(
    benchmark: Any, bench_scale: BenchScale, impl: ModuleType, form: str
) -> None:
    """One batch into tick dicts, or into the lean form (on_tick_rows): a tuple per tick."""
    if form == "dicts":
        decode = impl.decode_batch
        assert decode(RAW_BATCH) == TICKS
    else:
        decode = impl.decode_batch_rows
        fields, rows = decode(RAW_BATCH)
        assert [dict(zip(fields, r[3:])) for r in rows] == [t["data"] for t in TICKS]

    def decode_100_batches() -> None:
        for _ in range(100):
            decode(RAW_BATCH)

    run(
        benchmark,
        bench_scale,
        decode_100_batches,
        100 * BATCH,
        f"batch of 100 -> {form}",
        _impl_name(impl),
    )


def _impl_name(impl: ModuleType) -> str:
    return "iotcommute-fallback" if impl is _ticks_py else "iotcommute-compiled"


def _firehose_batches(shape: str, identical: bool) -> list[bytes]:
    """10 batches of the recv benchmark's ticks (firehose.py): 100 devices per batch, each
    tick new; or one tick repeated 100 times, where the decoder makes no value at all."""
    from benchmarks.firehose import make_small_tick, make_tick

    make = make_small_tick if shape == "5-readings" else make_tick
    if identical:
        return [_ticks_py.encode_batch([make(0)] * BATCH)] * 10
    return [_ticks_py.encode_batch([make(b * BATCH + i) for i in range(BATCH)]) for b in range(10)]


@pytest.mark.skipif(C is None, reason="compiled tick codec not in use")
@pytest.mark.parametrize("rows", ["new-rows", "identical-rows"])
@pytest.mark.parametrize("shape", ["5-readings", "11-readings"])
def test_batch_decode_dict_floor(
    benchmark: Any, bench_scale: BenchScale, shape: str, rows: str
) -> None:
    """Where the time of dicts goes: identical rows cost only the two dict copies per tick
    (no number objects); the difference to new rows is the unique numbers (position, ts and
    the changed readings), about 15 ns each."""
    assert C is not None
    batches = _firehose_batches(shape, rows == "identical-rows")
    assert C.decode_batch(batches[1]) == _ticks_py.decode_batch(batches[1])
    decode = C.decode_batch

    def decode_100_batches() -> None:
        for _ in range(10):
            for b in batches:
                decode(b)

    run(
        benchmark,
        bench_scale,
        decode_100_batches,
        100 * BATCH,
        f"dict floor, {shape}",
        f"iotcommute-compiled {rows}",
    )


@pytest.mark.skipif(C is None, reason="compiled tick codec not in use")
@pytest.mark.parametrize("direct", ["on", "off"])
@pytest.mark.parametrize("shape", ["5-readings", "11-readings"])
def test_batch_decode_direct_stores(
    benchmark: Any, bench_scale: BenchScale, shape: str, direct: str
) -> None:
    """The private dict layout decision (issue 13): the same decode with the direct value
    stores on and off in one run (device interning on in both)."""
    assert C is not None
    batches = _firehose_batches(shape, False)
    decode = C.decode_batch

    def decode_100_batches() -> None:
        for _ in range(10):
            for b in batches:
                decode(b)

    C._use_direct_stores(direct == "on")
    try:
        if direct == "on" and not C.DIRECT_STORES:
            pytest.skip("direct stores do not work on this interpreter")
        assert decode(batches[1]) == _ticks_py.decode_batch(batches[1])
        run(
            benchmark,
            bench_scale,
            decode_100_batches,
            100 * BATCH,
            f"decode to dicts, {shape}",
            f"iotcommute-compiled direct stores {direct}",
        )
    finally:
        C._use_direct_stores(True)


@pytest.mark.parametrize("impl", IMPLS)
def test_batch_encode_100(benchmark: Any, bench_scale: BenchScale, impl: ModuleType) -> None:
    assert impl.encode_batch(TICKS) == RAW_BATCH
    encode = impl.encode_batch

    def encode_10_batches() -> None:
        for _ in range(10):
            encode(TICKS)

    run(
        benchmark,
        bench_scale,
        encode_10_batches,
        10 * BATCH,
        "encode batch of 100",
        _impl_name(impl),
    )


def test_json_ticks_equivalent_to_batch(benchmark: Any, bench_scale: BenchScale) -> None:
    """The JSON path for the same 100 ticks, for comparison with test_batch_decode_100."""
    frames = [orjson.dumps(t) for t in TICKS]
    loads = payload.loads

    def decode_frames() -> None:
        for f in frames:
            loads(f)

    run(
        benchmark,
        bench_scale,
        decode_frames,
        BATCH,
        "100 JSON ticks -> dicts",
        "iotcommute payload.loads",
    )
