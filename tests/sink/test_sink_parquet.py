"""ParquetSink: files, rolls, duplicate dropping and resuming from its own files."""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from iotcommute.exceptions import IotCommuteError
from iotcommute.payload import _ticks_py
from iotcommute.payload.columnar import TickBatch, decode_batch_columns

pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (iotcommute[arrow])")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed (iotcommute[arrow])")

from iotcommute.sink import ParquetSink, Sink  # noqa: E402


def batch(first: int, n: int, devices: int = 3, **extra: Any) -> TickBatch:
    ticks = [
        {
            "device": f"dev-{(first + i) % devices}",
            "position": first + i,
            "ts": (first + i) / 10,
            "data": {"v": (first + i) * 2, "x": (first + i) / 4, **extra},
        }
        for i in range(n)
    ]
    return decode_batch_columns(_ticks_py.encode_batch(ticks))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def finals(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".parquet"))


def read_all(d: Path) -> Any:
    return pa.concat_tables(
        [pq.read_table(d / name) for name in finals(d)], promote_options="permissive"
    )


def test_a_commit_writes_one_named_and_tagged_file(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path)
    assert isinstance(sink, Sink) and sink.last_committed() is None
    assert sink.commit() is None  # nothing buffered: no file
    sink.write(batch(1, 100))
    sink.write(batch(101, 50))
    assert finals(tmp_path) == []  # buffered until the roll
    assert sink.commit() == 150 and sink.last_committed() == 150
    name = "ticks-00000000000000000001-00000000000000000150.parquet"
    assert finals(tmp_path) == [name]
    meta = pq.read_metadata(tmp_path / name).metadata
    assert meta[b"iotcommute.first_position"] == b"1"
    assert meta[b"iotcommute.last_position"] == b"150"
    assert meta[b"iotcommute.ticks"] == b"150"
    t = pq.read_table(tmp_path / name)
    assert t.column("position").to_pylist() == list(range(1, 151))
    assert t.column("device").to_pylist() == [f"dev-{p % 3}" for p in range(1, 151)]
    assert t.column("v").to_pylist() == [2 * p for p in range(1, 151)]
    assert pa.types.is_dictionary(t.schema.field("device").type)
    assert pq.ParquetFile(tmp_path / name).metadata.row_group(0).column(3).compression == "ZSTD"
    sink.close()
    sink.close()  # idempotent
    with pytest.raises(IotCommuteError):
        sink.write(batch(151, 1))


def test_rolls_by_size(tmp_path: Path) -> None:
    row = batch(1, 1).nbytes
    with ParquetSink(tmp_path, roll_bytes=row * 250) as sink:
        for first in range(1, 1001, 100):
            sink.write(batch(first, 100))
        # a roll closes at the batch that reaches 250 rows: 300, 600, 900
        assert sink.last_committed() == 900
    names = finals(tmp_path)
    ranges = [tuple(int(x) for x in n[len("ticks-") : -len(".parquet")].split("-")) for n in names]
    assert ranges == [(1, 300), (301, 600), (601, 900), (901, 1000)]
    assert read_all(tmp_path).column("position").to_pylist() == list(range(1, 1001))


def test_rolls_by_time_on_write_and_poll(tmp_path: Path) -> None:
    clock = Clock()
    sink = ParquetSink(tmp_path, roll_seconds=10, clock=clock)
    sink.write(batch(1, 10))
    clock.now = 9.5
    sink.write(batch(11, 10))
    sink.poll()
    assert finals(tmp_path) == []
    clock.now = 10.0
    sink.write(batch(21, 10))  # the oldest buffered row is 10 s old: roll, this batch included
    assert sink.last_committed() == 30 and len(finals(tmp_path)) == 1
    sink.write(batch(31, 5))
    clock.now = 19.0
    sink.poll()
    assert sink.last_committed() == 30
    clock.now = 20.0
    sink.poll()  # a quiet stream still rolls
    assert sink.last_committed() == 35 and len(finals(tmp_path)) == 2
    sink.close()


def test_rows_already_held_are_dropped(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path)
    sink.write(batch(1, 50))
    sink.write(batch(21, 50))  # 21..50 again: only 51..70 are new
    sink.write(batch(1, 70))  # everything again: nothing new
    sink.commit()
    sink.write(batch(60, 20))  # 60..70 committed already
    sink.close()
    assert read_all(tmp_path).column("position").to_pylist() == list(range(1, 80))


def test_reopening_resumes_after_the_files_and_removes_temporaries(tmp_path: Path) -> None:
    with ParquetSink(tmp_path) as sink:
        sink.write(batch(1, 40))
    with ParquetSink(tmp_path) as sink:
        sink.write(batch(41, 10))
    (tmp_path / ".ticks-00000000000000000051-00000000000000000060.parquet.123.tmp").write_bytes(
        b"PAR1 half a file"
    )
    (tmp_path / "notes.txt").write_text("kept")
    (tmp_path / "other-00000000000000000001-00000000000000000999.parquet").write_bytes(b"")
    sink = ParquetSink(tmp_path)
    assert sink.last_committed() == 50
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    assert (tmp_path / "notes.txt").exists()
    sink.write(batch(30, 30))  # a resume that replays: 30..50 dropped
    sink.close()
    got = [pq.read_table(tmp_path / n) for n in finals(tmp_path) if n.startswith("ticks-")]
    assert pa.concat_tables(got).column("position").to_pylist() == list(range(1, 60))


def test_one_sink_per_directory(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path)
    with pytest.raises(IotCommuteError, match="another ParquetSink"):
        ParquetSink(tmp_path)
    ParquetSink(tmp_path, prefix="other").close()  # another prefix is another sink
    sink.close()
    ParquetSink(tmp_path).close()


def test_shapes_and_device_tables_change_within_a_roll(tmp_path: Path) -> None:
    with ParquetSink(tmp_path) as sink:
        sink.write(batch(1, 10, devices=2))
        sink.write(batch(11, 10, devices=5))
        sink.write(batch(21, 10, devices=3, flag=True))
        sink.write(batch(31, 10, devices=1))
    (name,) = finals(tmp_path)
    t = pq.read_table(tmp_path / name)
    assert t.column("position").to_pylist() == list(range(1, 41))
    devs = [f"dev-{p % 2}" for p in range(1, 11)] + [f"dev-{p % 5}" for p in range(11, 21)]
    devs += [f"dev-{p % 3}" for p in range(21, 31)] + ["dev-0"] * 10
    assert t.column("device").to_pylist() == devs
    assert t.column("flag").to_pylist() == [None] * 20 + [True] * 10 + [None] * 10
    assert t.column("v").to_pylist() == [2 * p for p in range(1, 41)]


def test_empty_batches_and_no_compression(tmp_path: Path) -> None:
    with ParquetSink(tmp_path, compression=None, fsync=False) as sink:
        sink.write(batch(1, 0))
        sink.write(batch(5, 3))
    (name,) = finals(tmp_path)
    assert name == "ticks-00000000000000000005-00000000000000000007.parquet"
    meta = pq.ParquetFile(tmp_path / name).metadata
    assert meta.row_group(0).column(0).compression == "UNCOMPRESSED"
    with pytest.raises(ValueError):
        ParquetSink(tmp_path, prefix="../x")


def test_float_columns_are_byte_stream_split_and_round_trip_bitwise(tmp_path: Path) -> None:
    """ts and float fields are written BYTE_STREAM_SPLIT (zstd writes them about twice as
    fast) and read back bit for bit: -0.0, subnormals, NaN (with its payload) and infinities
    (the encoder refuses non-finite floats, the decoder carries them: patched into the frame),
    and the nulls of a column that one batch of the roll lacks."""
    xs = [0.0, -0.0, 1 / 3, 5e-324, -1.7976931348623157e308, math.nan, -math.inf, math.inf]
    xs.append(struct.unpack("<d", b"\x01\x00\x00\x00\x00\x00\xf8\xff")[0])  # -NaN, payload 1
    ys = [0.0, -0.0, 0.25, 1e-45, -3.4028234663852886e38, 1.5, 2.5, 3.5, 4.5]
    n = len(xs)
    ticks = [
        {
            "device": f"dev-{i % 2}",
            "position": 1 + i,
            "ts": 1764128635.123456 + i / 1000,
            "data": {"x": 1000.5 + i, "y": ys[i], "v": i},
        }
        for i in range(n)
    ]
    frame = bytearray(_ticks_py.encode_batch(ticks, types={"y": "f32"}))
    for i, x in enumerate(xs):
        at = frame.index(struct.pack("<d", 1000.5 + i))
        frame[at : at + 8] = struct.pack("<d", x)
    other = [{"device": "d9", "position": 20 + i, "ts": -0.0, "data": {"v": i}} for i in range(3)]
    with ParquetSink(tmp_path) as sink:
        sink.write(decode_batch_columns(bytes(frame)))
        sink.write(decode_batch_columns(_ticks_py.encode_batch(other)))
    (name,) = finals(tmp_path)
    group = pq.ParquetFile(tmp_path / name).metadata.row_group(0)
    columns = [group.column(i) for i in range(group.num_columns)]
    encodings = {c.path_in_schema: c.encodings for c in columns}
    for column in ("ts", "x", "y"):
        assert "BYTE_STREAM_SPLIT" in encodings[column], column
    assert "BYTE_STREAM_SPLIT" not in encodings["v"]  # int64: as before
    assert "DELTA_BINARY_PACKED" in encodings["position"]
    t = pq.read_table(tmp_path / name)
    assert t.schema.field("y").type == pa.float32()

    def bits(values: Any, dtype: str) -> list[int]:
        raw: list[int] = np.asarray(values, dtype).view(f"u{np.dtype(dtype).itemsize}").tolist()
        return raw

    ts = [tk["ts"] for tk in ticks] + [-0.0] * 3
    assert bits(t.column("ts").to_numpy(), "<f8") == bits(ts, "<f8")
    assert bits(t.column("x").slice(0, n).to_numpy(), "<f8") == bits(xs, "<f8")
    assert bits(t.column("y").slice(0, n).to_numpy(), "<f4") == bits(ys, "<f4")
    assert t.column("x").null_count == t.column("y").null_count == 3
    assert t.column("x").slice(n).to_pylist() == [None] * 3


def test_the_compiled_row_gather_equals_its_twin() -> None:
    """The sink's one-pass gather (compiled) and its numpy twin give the same columns."""
    from iotcommute.payload import columnar

    runs = [
        [batch(1, 7, devices=2), batch(8, 5, devices=2), batch(13, 9, devices=4), batch(22, 1)],
        [batch(1, 3, devices=1, flag=False), batch(4, 2, devices=1, flag=True)],
        [],
    ]
    for run in runs:
        codes = run[0]._layout.codes if run else b"\x01\x02"
        want = columnar._gather_py(run, codes)
        if columnar.columnar_impl is not None:
            for alloc in (None, pa.allocate_buffer):  # bytearrays, or Arrow's memory pool
                got = columnar.columnar_impl.gather_rows(run, codes, alloc)
                assert got[0] == want[0]
                assert bytes(got[1]) == bytes(want[1])
                assert [bytes(c) for c in got[2]] == [bytes(c) for c in want[2]]
        if run:
            flat, codes_le, _cols = want
            devs = [flat[i] for i in memoryview(bytes(codes_le)).cast("i").tolist()]
            assert devs == [d for b in run for d in b["device"].tolist()]
    with pytest.raises(ValueError, match="one field table"):
        columnar._gather(runs[0] + runs[1], runs[0][0]._layout.codes, None)


def test_ingest_frames_reports_corrupt_frames_and_goes_on(tmp_path: Path) -> None:
    import asyncio
    from collections.abc import AsyncIterator

    from iotcommute.exceptions import DecodeError
    from iotcommute.sink.ingest import aingest_frames, ingest_frames, resume_from

    good = [
        _ticks_py.encode_batch(
            [{"device": "d", "position": p, "ts": 0.5, "data": {"v": p}} for p in range(k, k + 10)]
        )
        for k in (1, 11, 21)
    ]
    bad = bytearray(good[1])
    bad[-26:-24] = b"\x07\x00"  # the last row names device 7 of a one-device table
    errors: list[DecodeError] = []
    with ParquetSink(tmp_path / "a") as sink:
        assert resume_from(sink) == 0
        assert (
            ingest_frames([good[0], bytes(bad), b"junk", good[2]], sink, on_error=errors.append)
            == 30
        )
        assert resume_from(sink) == 30
    assert [e.position for e in errors] == [20, None]
    assert read_all(tmp_path / "a").column("position").to_pylist() == [
        *range(1, 11),
        *range(21, 31),
    ]

    async def source() -> AsyncIterator[bytes]:
        for f in good:
            yield f

    with ParquetSink(tmp_path / "b") as sink:
        assert asyncio.run(aingest_frames(source(), sink)) == 30
    assert read_all(tmp_path / "b").column("v").to_pylist() == list(range(1, 31))


def test_unordered_for_a_group_member_and_discard(tmp_path: Path) -> None:
    """ordered=False (a group member): a partition replayed from below the highest position
    is kept, files are named by their lowest and highest position, and discard() takes
    back buffered rows of the devices a member lost."""
    sink = ParquetSink(tmp_path, prefix="g.0", ordered=False)
    sink.write(batch(10, 6))  # dev-1 dev-2 dev-0 dev-1 dev-2 dev-0 at 10..15
    sink.write(batch(3, 3))  # a partition assigned later replays from 3
    assert sink.pending == 9
    assert sink.discard(lambda d: d == "dev-2") == 3  # positions 11, 14 and 5
    assert sink.pending == 6
    assert sink.commit() == 15
    assert finals(tmp_path) == ["g.0-00000000000000000003-00000000000000000015.parquet"]
    t = read_all(tmp_path)
    assert t.column("position").to_pylist() == [10, 12, 13, 15, 3, 4]  # as received
    assert "dev-2" not in t.column("device").to_pylist()
    ordered = ParquetSink(tmp_path / "o")
    ordered.write(batch(10, 6))
    ordered.write(batch(3, 3))  # one subscription: at or below the highest, dropped
    assert ordered.pending == 6


def test_tickbatch_filter_copies_the_kept_rows() -> None:
    b = batch(1, 5)
    same = b.filter([True] * 5)
    assert same is b
    kept = b.filter([True, False, True, False, True])
    assert kept["position"].tolist() == [1, 3, 5] and kept.devices == b.devices
    assert (kept.first_position, kept.last_position) == (1, 5)
    assert b.filter([False, True, True, True, False]).last_position == 4
    assert kept.to_dicts() == [b.to_dicts()[i] for i in (0, 2, 4)]
    none = b.filter([False] * 5)
    assert len(none) == 0 and none.first_position is None and none.last_position is None
    with pytest.raises(ValueError):
        b.filter([True])
