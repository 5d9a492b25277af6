"""TickBatch: columns over a tick-batch frame, their lifetime, slicing and conversions.

Every property runs on the parser in use (compiled unless IOTCOMMUTE_NO_EXTENSIONS=1) and on
the pure twin; test_columnar_differential.py compares the two on random and corrupt frames.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from iotcommute.exceptions import DecodeError, InputError
from iotcommute.payload import _ticks_py, columnar
from iotcommute.payload.columnar import TickBatch, decode_batch_columns
from tests.payload.exact import same

VECTORS_FILE = Path(__file__).parent.parent / "vectors" / "ticks_v1.json"
VECTORS = json.loads(VECTORS_FILE.read_text("utf-8"))

Decode = Callable[[bytes | bytearray | memoryview], TickBatch]


def _pure(buf: bytes | bytearray | memoryview) -> TickBatch:
    return columnar._decode_with(columnar._parse_py, buf)


DECODERS = [pytest.param(decode_batch_columns, id="selected"), pytest.param(_pure, id="pure")]


def ticks(n: int, base: int = 1, devices: int = 3) -> list[dict[str, Any]]:
    return [
        {
            "type": "tick",
            "device": f"dev-{i % devices}",
            "position": base + i,
            "ts": 1764128635.5 + i / 8,
            "data": {"temp": 20.0 + i / 4, "count": i * 3 - 7, "open": bool(i % 2)},
        }
        for i in range(n)
    ]


def frame(n: int, base: int = 1, devices: int = 3, types: dict[str, str] | None = None) -> bytes:
    return _ticks_py.encode_batch(ticks(n, base, devices), types)


@pytest.mark.parametrize("decode", DECODERS)
def test_batch_equals_the_dict_and_row_decoders(decode: Decode) -> None:
    raw = frame(50, types={"temp": "f32"})
    b = decode(raw)
    assert len(b) == 50
    assert b.fields == ("temp", "count", "open")
    assert b.columns == ("device", "position", "ts", "temp", "count", "open")
    assert b.types == {"temp": "f32", "count": "i64", "open": "bool"}
    assert b.devices == ("dev-0", "dev-1", "dev-2")
    assert same(b.to_dicts(), _ticks_py.decode_batch(raw))
    assert same(b.rows(), _ticks_py.decode_batch_rows(raw)[1])
    assert (b.first_position, b.last_position) == (1, 50)
    assert b.nbytes == 50 * (18 + 4 + 8 + 1)


@pytest.mark.parametrize("decode", DECODERS)
def test_columns_have_wire_types_and_values(decode: Decode) -> None:
    raw = frame(10, types={"temp": "f32", "count": "i32"})
    b = decode(raw)
    cols = b.to_numpy()
    assert list(cols) == list(b.columns)
    assert cols["position"].dtype == np.int64
    assert cols["ts"].dtype == np.float64
    assert cols["temp"].dtype == np.float32
    assert cols["count"].dtype == np.int32
    assert cols["open"].dtype == np.bool_
    assert cols["device"].tolist() == [f"dev-{i % 3}" for i in range(10)]
    assert b.codes.dtype == np.uint16 and b.codes.tolist() == [i % 3 for i in range(10)]
    assert b["count"].tolist() == [i * 3 - 7 for i in range(10)]
    assert b.column("position").tolist() == list(range(1, 11))
    with pytest.raises(KeyError, match="no column 'nope'"):
        b.column("nope")


def test_columns_are_read_only_views_of_a_bytes_frame() -> None:
    raw = frame(20)
    b = decode_batch_columns(raw)
    owner = np.frombuffer(raw, np.uint8)
    for name in ("position", "ts", "temp", "count", "open"):
        col = b[name]
        assert np.shares_memory(col, owner), name
        assert not col.flags.writeable
        with pytest.raises(ValueError):
            col[0] = col[1]
    assert b._buf is raw  # kept by reference, not copied


@pytest.mark.parametrize("decode", DECODERS)
@pytest.mark.parametrize("kind", ["bytearray", "memoryview"])
def test_a_kept_batch_survives_its_reused_transport_buffer(decode: Decode, kind: str) -> None:
    """A transport reads every frame into one reused buffer; batches kept after their
    callback must still hold their own values after more frames went through it."""
    frames = [frame(30, base=1 + 30 * k, devices=2 + k) for k in range(5)]
    size = len(frames[0])
    assert all(len(f) == size for f in frames[:1])
    scratch = bytearray(max(len(f) for f in frames))
    kept = []
    for f in frames:
        scratch[: len(f)] = f
        view = memoryview(scratch)[: len(f)]
        kept.append(decode(bytearray(view) if kind == "bytearray" else view))
        view.release()
        scratch[:] = b"\xff" * len(scratch)  # the next read overwrites everything
    for f, b in zip(frames, kept):
        assert same(b.to_dicts(), _ticks_py.decode_batch(f))
        assert not np.shares_memory(b["ts"], np.frombuffer(scratch, np.uint8))


@pytest.mark.parametrize("decode", DECODERS)
def test_slice_after_shares_the_frame(decode: Decode) -> None:
    raw = frame(10, base=101)
    b = decode(raw)
    assert b.slice_after(100) is b
    assert b.slice_after(-5) is b
    s = b.slice_after(104)
    assert len(s) == 6 and (s.first_position, s.last_position) == (105, 110)
    assert s["position"].tolist() == list(range(105, 111))
    assert np.shares_memory(s["ts"], b["ts"])
    assert same(s.to_dicts(), b.to_dicts()[4:])
    assert s.devices == b.devices and s.fields == b.fields
    empty = b.slice_after(110)
    assert len(empty) == 0 and empty.first_position is None and empty.last_position is None
    assert empty.to_dicts() == [] and empty["position"].tolist() == []
    assert len(b.slice_after(10**12)) == 0
    assert s.slice_after(107).first_position == 108


@pytest.mark.parametrize("decode", DECODERS)
def test_empty_batch(decode: Decode) -> None:
    b = decode(_ticks_py.encode_batch([]))
    assert len(b) == 0 and b.fields == () and b.devices == ()
    assert b.first_position is None and b.slice_after(5) is b
    assert b.to_dicts() == [] and b.rows() == []
    assert {k: v.tolist() for k, v in b.to_numpy().items()} == {
        "device": [],
        "position": [],
        "ts": [],
    }
    assert "0 ticks" in repr(b)


def test_field_names_that_clash_with_the_leading_columns() -> None:
    raw = _ticks_py.encode_batch(
        [{"device": "d", "position": 7, "ts": 1.0, "data": {"ts": 2.5, "data.ts": 3, "x": True}}]
    )
    b = decode_batch_columns(raw)
    assert b.fields == ("ts", "data.ts", "x")
    assert b.columns == ("device", "position", "ts", "data.data.ts", "data.ts", "x")
    assert b["ts"].tolist() == [1.0]
    assert b["data.data.ts"].tolist() == [2.5]
    assert b["data.ts"].tolist() == [3]
    assert b.to_dicts()[0]["data"] == {"ts": 2.5, "data.ts": 3, "x": True}


def test_from_ticks_is_the_decoded_binary_batch() -> None:
    src = ticks(25, base=40)
    a = TickBatch.from_ticks(src)
    b = decode_batch_columns(_ticks_py.encode_batch(src))
    assert same(a.to_dicts(), b.to_dicts()) and a.to_dicts() == src
    assert a.devices == b.devices and a.types == b.types
    f32 = TickBatch.from_ticks(src, types={"temp": "f32"})
    assert f32["temp"].dtype == np.float32
    with pytest.raises(InputError, match="other data fields"):
        TickBatch.from_ticks([src[0], {**src[1], "data": {"z": 1}}])
    with pytest.raises(InputError, match="2\\*\\*63"):
        TickBatch.from_ticks([{**src[0], "position": 2**63}])
    with pytest.raises(TypeError):
        TickBatch()


@pytest.mark.parametrize("decode", DECODERS)
def test_positions_beyond_int64_are_rejected_after_the_spec_checks(decode: Decode) -> None:
    raw = bytearray(frame(3, base=5))
    row = 18 + 8 + 8 + 1
    start = len(raw) - 3 * row
    raw[start + row + 2 : start + row + 10] = struct.pack("<Q", 2**63 + 1)
    with pytest.raises(DecodeError) as exc:
        decode(bytes(raw))
    assert exc.value.position == 2**63 + 1
    # a later row's bad device index is decode_batch's error, and so ours
    raw[start + 2 * row : start + 2 * row + 2] = struct.pack("<H", 9)
    with pytest.raises(DecodeError) as exc:
        decode(bytes(raw))
    with pytest.raises(DecodeError) as want:
        _ticks_py.decode_batch(bytes(raw))
    assert (exc.value.message, exc.value.position) == (want.value.message, want.value.position)
    assert exc.value.position == 7


@pytest.mark.parametrize("decode", DECODERS)
@pytest.mark.parametrize("vector", VECTORS["corrupt"], ids=lambda v: v["name"])
def test_corrupt_vectors_give_the_decoders_error(decode: Decode, vector: dict[str, Any]) -> None:
    with pytest.raises(DecodeError) as exc:
        decode(bytes.fromhex(vector["hex"]))
    assert exc.value.message == vector["message"]
    assert exc.value.position == vector["position"]


@pytest.mark.parametrize("decode", DECODERS)
@pytest.mark.parametrize("vector", VECTORS["valid"], ids=lambda v: v["name"])
def test_valid_vectors(decode: Decode, vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    big = [t["position"] for t in _ticks_py.decode_batch(raw) if t["position"] >= 2**63]
    if big:  # the one frame shape the int64 position column cannot hold
        with pytest.raises(DecodeError, match="2\\*\\*63") as exc:
            decode(raw)
        assert exc.value.position == big[0]
        return
    assert same(decode(raw).to_dicts(), _ticks_py.decode_batch(raw))


# --- conversions ----------------------------------------------------------------------------------


def _lib(name: str) -> Any:
    return pytest.importorskip(name, reason=f"{name} is not installed (an optional extra)")


def test_to_arrow() -> None:
    pa = _lib("pyarrow")
    b = decode_batch_columns(frame(12, types={"temp": "f32", "count": "i32"}))
    rb = b.to_arrow()
    assert rb.schema == pa.schema(
        [
            pa.field("device", pa.dictionary(pa.int32(), pa.string()), nullable=False),
            pa.field("position", pa.int64(), nullable=False),
            pa.field("ts", pa.float64(), nullable=False),
            pa.field("temp", pa.float32(), nullable=False),
            pa.field("count", pa.int32(), nullable=False),
            pa.field("open", pa.bool_(), nullable=False),
        ]
    )
    assert rb.column("device").to_pylist() == [f"dev-{i % 3}" for i in range(12)]
    assert rb.to_pylist() == [
        {"device": r[0], "position": r[1], "ts": r[2], "temp": r[3], "count": r[4], "open": r[5]}
        for r in b.rows()
    ]
    # the schema is a property of the field table: another batch of the stream shares it
    other = decode_batch_columns(
        frame(3, base=99, devices=1, types={"temp": "f32", "count": "i32"})
    )
    assert other.to_arrow().schema == rb.schema
    assert b.slice_after(10).to_arrow().num_rows == 2


def test_to_pandas() -> None:
    pd = _lib("pandas")
    b = decode_batch_columns(frame(9))
    df = b.to_pandas()
    assert list(df.columns) == list(b.columns)
    assert isinstance(df["device"].dtype, pd.CategoricalDtype)
    assert df["device"].tolist() == b["device"].tolist()
    assert df["position"].tolist() == list(range(1, 10))
    assert df["open"].dtype == bool and df["count"].dtype == np.int64


def test_to_polars() -> None:
    pl = _lib("polars")
    b = decode_batch_columns(frame(9, types={"temp": "f32"}))
    df = b.to_polars()
    assert df.columns == list(b.columns)
    assert df.schema["device"] == pl.Categorical
    assert df.schema["temp"] == pl.Float32
    assert df["device"].cast(pl.String).to_list() == b["device"].tolist()
    assert df["count"].to_list() == b["count"].tolist()


def test_duckdb_reads_the_arrow_batch() -> None:
    duckdb = _lib("duckdb")
    pa = _lib("pyarrow")
    tbl = pa.Table.from_batches([decode_batch_columns(frame(30)).to_arrow()])  # noqa: F841
    # (duckdb finds `tbl` by its name in this frame)
    got = duckdb.sql("select device, count(*), max(position) from tbl group by 1 order by 1")
    assert got.fetchall() == [("dev-0", 10, 28), ("dev-1", 10, 29), ("dev-2", 10, 30)]


@pytest.mark.parametrize(
    ("method", "module", "extra"),
    [
        ("to_arrow", "pyarrow", "arrow"),
        ("to_pandas", "pandas", "pandas"),
        ("to_polars", "polars", "polars"),
    ],
)
def test_a_missing_library_names_its_extra(
    monkeypatch: pytest.MonkeyPatch, method: str, module: str, extra: str
) -> None:
    b = decode_batch_columns(frame(2))
    b._layout._arrow_schema = None if module == "pyarrow" else b._layout._arrow_schema
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(ImportError, match=rf"iotcommute\[{extra}\]"):
        getattr(b, method)()


def test_nan_and_infinities_pass_through() -> None:
    raw = bytearray(frame(1))
    raw[-17:-9] = struct.pack("<d", math.inf)  # temp of the only row
    b = decode_batch_columns(bytes(raw))
    assert b["temp"].tolist() == [math.inf]
    assert same(b.to_dicts(), _ticks_py.decode_batch(bytes(raw)))


def test_batches_to_arrow_equals_the_batches_one_by_one() -> None:
    pa = _lib("pyarrow")
    from iotcommute.payload.columnar import batches_to_arrow

    batches = [
        decode_batch_columns(frame(n, base=b, devices=d))
        for n, b, d in [(5, 1, 2), (7, 6, 3), (0, 13, 1), (4, 13, 1)]
    ]
    table = batches_to_arrow(batches)
    assert table.schema == batches[0].to_arrow().schema
    one_by_one = pa.Table.from_batches([b.to_arrow() for b in batches if len(b)])
    assert table.to_pylist() == one_by_one.to_pylist()  # the empty batch adds nothing
    assert table.column("device").to_pylist() == [d for b in batches for d in b["device"].tolist()]
    # another field table in the middle: the union of the columns, nulls where missing
    other = TickBatch.from_ticks([{"device": "z", "position": 17, "ts": 1.0, "data": {"w": 1.5}}])
    mixed = batches_to_arrow([batches[0], other, batches[3]])
    assert mixed.column("w").to_pylist() == [None] * 5 + [1.5] + [None] * 4
    assert mixed.column("count").to_pylist()[5] is None
    assert batches_to_arrow([batches[2]]).num_rows == 0
    with pytest.raises(ValueError):
        batches_to_arrow([])
