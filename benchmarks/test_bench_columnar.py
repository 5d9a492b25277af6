"""Columnar ingestion speed: tick-batch frames into TickBatches, into Arrow, into Parquet.

In process (section ``columnar``, frames in memory, one core): decoding frames into
TickBatches, Arrow conversions, the Parquet sink. End to end (section ``columnar-e2e``): the
firehose's batch frames over loopback into iotcommute.WebSocket, next to the raw-bytes
ceiling of the same stream. Every case runs in timed rounds (benchmarks/rounds.py) and its
ticks/s go into the run's summary with their median and spread:

    pytest benchmarks/test_bench_columnar.py --benchmark

Shapes: ``5f-10dev`` is test_bench_payload's telemetry (5 fields, 10 devices interleaved, a
device table that repeats from frame to frame); ``11f-firehose`` is the recv benchmark's tick
(11 readings, 100 new devices in every 100-tick frame, so every table differs).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import pytest

from benchmarks import firehose
from benchmarks.rounds import measure
from iotcommute.payload import _ticks_py, columnar
from iotcommute.payload.columnar import TickBatch

IMPLS = [pytest.param(columnar._parse_py, id="py")]
if columnar.columnar_impl is not None:
    IMPLS.insert(0, pytest.param(columnar.columnar_impl.parse_columns, id="c"))


def telemetry(i: int) -> dict[str, Any]:
    return {
        "type": "tick",
        "device": f"dev-{i % 10:04d}",
        "position": 1 + i,
        "ts": 1764128635.123456 + i / 1000,
        "data": {
            "temperature": 21.5 + (i % 7) / 4,
            "humidity": 40.25,
            "pressure": 1013.2,
            "battery": 97 - i % 3,
            "door_open": bool(i & 1),
        },
    }


SHAPES: dict[str, Callable[[int], dict[str, Any]]] = {
    "5f-10dev": telemetry,
    "11f-firehose": firehose.make_tick,
}


def frames(shape: str, per_frame: int, n_frames: int) -> list[bytes]:
    make = SHAPES[shape]
    return [
        _ticks_py.encode_batch([make(f * per_frame + i) for i in range(per_frame)])
        for f in range(n_frames)
    ]


def _measure(
    benchmark: Any,
    bench_scale: firehose.BenchScale,
    once: Callable[[], Any],
    ticks: int,
    shape: str,
    per_frame: int,
    subject: str,
) -> None:
    """Timed rounds of an in-process case (section ``columnar``, case ``shape @per_frame``)."""
    measure(
        benchmark,
        bench_scale,
        once,
        ticks,
        micro=True,
        section="columnar",
        case=f"{shape} @{per_frame}",
        subject=subject,
    )


@pytest.mark.parametrize("touch", ["batch", "columns"])
@pytest.mark.parametrize("per_frame", [100, 1000])
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("parse", IMPLS)
def test_decode_to_tickbatch(
    benchmark: Any,
    bench_scale: firehose.BenchScale,
    parse: Any,
    shape: str,
    per_frame: int,
    touch: str,
) -> None:
    """Frames to TickBatches; ``columns`` also takes every column (codes and each numeric
    column as a numpy view), which is what a consumer of the batch does first."""
    n_frames = bench_scale.n(200_000 // per_frame, minimum=5)
    data = frames(shape, per_frame, min(n_frames, 50))
    data = (data * (n_frames // len(data) + 1))[:n_frames]
    want = _ticks_py.decode_batch(data[1])
    assert columnar._decode_with(parse, data[1]).to_dicts() == want
    decode = columnar._decode_with
    names = columnar._decode_with(parse, data[0]).columns[1:]

    def run_batches() -> None:
        for f in data:
            decode(parse, f)

    def run_columns() -> None:
        for f in data:
            b = decode(parse, f)
            b.codes  # noqa: B018 - the access is the work measured
            for name in names:
                b.column(name)

    kind = "-pure" if parse is columnar._parse_py else ""
    kind += "+columns" if touch == "columns" else ""
    _measure(
        benchmark,
        bench_scale,
        run_batches if touch == "batch" else run_columns,
        n_frames * per_frame,
        shape,
        per_frame,
        f"iotcommute-decode{kind}",
    )


@pytest.mark.parametrize("per_frame", [100, 1000, 10_000])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_to_arrow(
    benchmark: Any, bench_scale: firehose.BenchScale, shape: str, per_frame: int
) -> None:
    """Decoded batches to Arrow RecordBatches (one copy per column, fixed cost per batch)."""
    pytest.importorskip("pyarrow", reason="pyarrow is not installed (iotcommute[arrow])")
    n_frames = bench_scale.n(200_000 // per_frame, minimum=3)
    data = frames(shape, per_frame, min(n_frames, 20))
    batches: list[TickBatch] = [columnar.decode_batch_columns(f) for f in data]
    batches = (batches * (n_frames // len(batches) + 1))[:n_frames]
    assert batches[0].to_arrow().num_rows == per_frame

    def run() -> None:
        for b in batches:
            b.to_arrow()

    _measure(
        benchmark, bench_scale, run, n_frames * per_frame, shape, per_frame, "iotcommute-to_arrow"
    )


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_batches_to_arrow(benchmark: Any, bench_scale: firehose.BenchScale, shape: str) -> None:
    """Many 100-tick batches into one Arrow Table at once (columnar.batches_to_arrow): the
    rows gathered in one pass, no per-batch Arrow arrays."""
    pytest.importorskip("pyarrow", reason="pyarrow is not installed (iotcommute[arrow])")
    per_frame = 100
    n_frames = bench_scale.n(5_000, minimum=5)
    batches = [columnar.decode_batch_columns(f) for f in frames(shape, per_frame, n_frames)]
    assert columnar.batches_to_arrow(batches).num_rows == n_frames * per_frame

    _measure(
        benchmark,
        bench_scale,
        lambda: columnar.batches_to_arrow(batches),
        n_frames * per_frame,
        shape,
        per_frame,
        "iotcommute-batches_to_arrow",
    )


@pytest.mark.parametrize("compression", ["zstd", "none"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_parquet_sink(
    benchmark: Any, bench_scale: firehose.BenchScale, shape: str, compression: str
) -> None:
    """Decoded 100-tick batches written through ParquetSink and committed as one file
    (fsync included): the sink's ticks/s on one core."""
    pytest.importorskip("pyarrow", reason="pyarrow is not installed (iotcommute[arrow])")
    from iotcommute.sink.parquet import ParquetSink

    per_frame = 100
    n_frames = bench_scale.n(5_000, minimum=5)
    data = frames(shape, per_frame, n_frames)  # distinct positions: the sink drops repeats
    batches = [columnar.decode_batch_columns(f) for f in data]
    dirs: list[str] = []

    def run() -> None:
        d = tempfile.mkdtemp(prefix="iotcommute-bench-")
        dirs.append(d)
        sink = ParquetSink(
            d, roll_bytes=1 << 40, compression=None if compression == "none" else compression
        )
        for b in batches:
            sink.write(b)
        sink.close()
        assert sink.last_committed() == batches[-1].last_position

    def once() -> None:
        run()
        shutil.rmtree(dirs.pop(), ignore_errors=True)  # the files: disk stays bounded

    try:
        _measure(
            benchmark,
            bench_scale,
            once,
            n_frames * per_frame,
            shape,
            per_frame,
            f"iotcommute-ParquetSink-{compression}",
        )
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


# --- end to end over a loopback socket -----------------------------------------------------------
#
# The firehose process (benchmarks/firehose.py, its own GIL) sends the recv benchmark's binary
# batch cases: ``batch100`` (100 eleven-reading ticks per frame, ~100 bytes a tick) and
# ``batch100x5`` (100 five-reading ticks per frame). One client per round, iotcommute.WebSocket
# (its own uvloop thread), counting ticks in:
#   raw    on_message only: the bytes are received and framed, nothing decoded (the ceiling)
#   dicts  on_ticks: one dict per tick
#   rows   on_tick_rows: one tuple per tick
#   batch  on_batch: one TickBatch per frame (the columns touched: codes and positions)
#   arrow  on_batch, batches gathered into Arrow tables 64 frames at a time (batches_to_arrow)

E2E_MODES = ["raw", "dicts", "rows", "batch", "arrow"]
E2E_STREAM_FACTOR = 20
#: the summary's subject per mode; the raw ceiling is the reference every ratio is taken to
E2E_SUBJECTS = {
    "raw": "raw-bytes ceiling",
    "dicts": "iotcommute-dicts",
    "rows": "iotcommute-rows",
    "batch": "iotcommute-TickBatch",
    "arrow": "iotcommute-Arrow",
}


def _e2e_round(url: str, mode: str, per_frame: int, expected: int) -> int:
    from iotcommute import WebSocket

    ws = WebSocket(
        "bench-key",
        "bench-device",
        "client",
        url=url,
        ping_interval=None,
        reconnect=False,
        compression=False,
        max_size=2**26,
        subscribe=None,
    )
    count = [0]
    kept: list[TickBatch] = []

    def done(n: int) -> None:
        count[0] += n
        if count[0] >= expected:
            if kept:
                columnar.batches_to_arrow(kept)
                kept.clear()
            ws.stop()

    if mode == "raw":
        ws.on_message = lambda m, w: done(per_frame)
    elif mode == "dicts":
        ws.on_ticks = lambda ts, w: done(len(ts))
    elif mode == "rows":
        ws.on_tick_rows = lambda f, rs, w: done(len(rs))
    elif mode == "batch":

        def on_batch(b: TickBatch, w: Any) -> None:
            b.codes  # noqa: B018 - a consumer's first touch
            b.column("position")
            done(len(b))

        ws.on_batch = on_batch
    else:
        pytest.importorskip("pyarrow", reason="pyarrow is not installed (iotcommute[arrow])")

        def on_arrow(b: TickBatch, w: Any) -> None:
            kept.append(b)
            if len(kept) >= 64:
                columnar.batches_to_arrow(kept)
                kept.clear()
            done(len(b))

        ws.on_batch = on_arrow
    try:
        ws.connect()
    except Exception:
        if count[0] < expected:
            raise
    return count[0]


@pytest.mark.parametrize("mode", E2E_MODES)
@pytest.mark.parametrize("case_name", ["batch100", "batch100x5"])
def test_e2e_websocket(
    benchmark: Any,
    bench_scale: firehose.BenchScale,
    firehose_server: firehose.FirehoseProcess,
    case_name: str,
    mode: str,
) -> None:
    """Ticks/s end to end through iotcommute.WebSocket for one way of taking them (above)."""
    if not firehose.batch_codec_available():
        pytest.skip("the batch codec is not available")
    case = firehose.CASES[case_name]
    # 20x the recv benchmark's stream (40,000 frames, 4 M ticks at scale 1): the raw path
    # must be timed streaming; 2,000 frames of it were mostly connection set-up and TCP
    # ramp-up (8.2 ms, 24 M ticks/s, against 57 M at 40,000), which flattered every ratio
    # to it
    n = bench_scale.n(E2E_STREAM_FACTOR * case.base_n)
    firehose_server.prepare(case_name, n)
    url = firehose_server.url(f"/recv/{case_name}/{n}")
    expected = case.expected(n)
    per_frame = expected // n

    def one_round() -> None:
        got = _e2e_round(url, mode, per_frame, expected)
        assert got == expected, (mode, got, expected)

    benchmark.group = f"e2e {case_name}: {case.description}"
    measure(
        benchmark,
        bench_scale,
        one_round,
        expected,
        section="columnar-e2e",
        case=f"{case_name} ({per_frame} ticks a frame)",
        subject=E2E_SUBJECTS[mode],
    )
