"""Columnar tick batches: one binary batch frame as numpy columns (issue 14).

`decode_batch_columns(frame)` checks a v1 tick batch (docs/protocol-binary.md) exactly as
`payload.decode_batch` does and returns a `TickBatch` whose columns are numpy views straight
over the frame's rows: no per-tick work and no per-tick objects. The wire rows are packed
little-endian records, so one packed structured dtype (`align=False`) describes them and every
numeric column is a strided view; only conversions that need contiguous memory (Arrow, pandas,
polars) copy, once per column.

Lifetime: a `TickBatch` owns its bytes. An immutable `bytes` frame is kept by reference (zero
copy); a `bytearray` or `memoryview` (a buffer a transport may reuse) is copied once, up front.
Arrays handed out are read-only views of those bytes, so they stay valid and unchanged after a
callback returns, whatever happens to the transport's buffers.

The checks and the device table run in Cython (`iotcommute.payload._columnar`) unless
IOTCOMMUTE_NO_EXTENSIONS is set or it is missing; `_parse_py` below is its pure twin and gives
identical batches (tests/payload/test_columnar_differential.py).

Columns: ``device`` (dictionary-encoded: `devices` is the table, `codes` the uint16 index of
each row, as on the wire), ``position`` (int64), ``ts`` (float64, seconds since the epoch),
then one column per data field with its wire type (f64 -> float64, f32 -> float32,
i64 -> int64, i32 -> int32, bool -> bool). A data field named like one of the three leading
columns gets the column name ``data.<name>`` (repeated until unique); `fields` keeps the
original names.

One check is added to the wire spec's: the columnar form keeps positions as int64, so a row
whose position is 2**63 or more (never sent by a server: positions are signed 64-bit in the
protocol) raises DecodeError with that position, after every check decode_batch makes; any
frame decode_batch rejects is rejected here with the identical error.

pyarrow, pandas and polars are imported only inside their conversions (extras
``iotcommute[arrow]``, ``iotcommute[pandas]``, ``iotcommute[polars]``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .._env import NO_EXTENSIONS, warn_fallback
from ..exceptions import DecodeError, InputError
from . import _ticks_py

if TYPE_CHECKING:
    import pandas
    import polars
    import pyarrow

__all__ = [
    "SPEEDUPS",
    "TickBatch",
    "batches_to_arrow",
    "decode_batch_columns",
]

#: wire type code -> (type name, numpy format)
_CODE_TYPES: dict[int, tuple[str, str]] = {
    1: ("f64", "<f8"),
    2: ("i64", "<i8"),
    3: ("i32", "<i4"),
    4: ("bool", "?"),
    5: ("f32", "<f4"),
}
_LETTER_CODE = {"d": 1, "q": 2, "i": 3, "B": 4, "f": 5}
_SIZES = {1: 8, 2: 8, 3: 4, 4: 1, 5: 4}
_RESERVED = ("device", "position", "ts")
ROW_PREFIX = 18


class _Layout:
    """What one field table means for the rows: the packed dtype, the column names and the
    Arrow schema (built on first use). Shared by every batch with the same field table."""

    __slots__ = (
        "_arrow_schema",
        "bool_fields",
        "codes",
        "columns",
        "dtype",
        "fields",
        "internal",
        "key",
        "row_size",
        "types",
        "value_keys",
    )

    def __init__(self, codes: bytes, fields: tuple[str, ...]) -> None:
        self.codes = codes
        self.fields = fields
        self.key = (codes, fields)
        self.types = tuple(_CODE_TYPES[c][0] for c in codes)
        taken = set(fields) | set(_RESERVED)
        columns = list(_RESERVED)
        for name in fields:
            col = name
            if name in _RESERVED:
                col = "data." + name
                while col in taken:
                    col = "data." + col
                taken.add(col)
            columns.append(col)
        self.columns = tuple(columns)
        names = ["d", "p", "t"]
        formats = ["<u2", "<i8", "<f8"]
        offsets = [0, 2, 10]
        off = ROW_PREFIX
        for j, c in enumerate(codes):
            names.append(f"f{j}")
            formats.append(_CODE_TYPES[c][1])
            offsets.append(off)
            off += _SIZES[c]
        self.row_size = off
        #: fields of the structured dtype after the device codes, in column order
        self.value_keys = tuple(names[1:])
        self.dtype = np.dtype(
            {"names": names, "formats": formats, "offsets": offsets, "itemsize": off},
            align=False,
        )
        #: column name -> field of the structured dtype (device: its codes)
        self.internal = dict(zip(columns, names))
        self.bool_fields = tuple(j for j, c in enumerate(codes) if c == 4)
        self._arrow_schema: Any = None

    def arrow_schema(self) -> pyarrow.Schema:
        if self._arrow_schema is None:
            pa = _require("pyarrow", "arrow")
            types = {
                "f64": pa.float64(),
                "f32": pa.float32(),
                "i64": pa.int64(),
                "i32": pa.int32(),
                "bool": pa.bool_(),
            }
            cols = [
                pa.field("device", pa.dictionary(pa.int32(), pa.string()), nullable=False),
                pa.field("position", pa.int64(), nullable=False),
                pa.field("ts", pa.float64(), nullable=False),
            ]
            cols += [
                pa.field(col, types[t], nullable=False)
                for col, t in zip(self.columns[3:], self.types)
            ]
            self._arrow_schema = pa.schema(cols)
        return self._arrow_schema


_layouts: dict[tuple[bytes, tuple[str, ...]], _Layout] = {}


def _layout(codes: bytes, fields: tuple[str, ...]) -> _Layout:
    """One layout object per field table (bounded: a peer could vary tables forever)."""
    key = (codes, fields)
    lay = _layouts.get(key)
    if lay is None:
        if len(_layouts) > 256:
            _layouts.clear()
        lay = _layouts[key] = _Layout(codes, fields)
    return lay


def _require(module: str, extra: str) -> ModuleType:
    """Import an optional library for a conversion, or say which extra provides it."""
    mod = sys.modules.get(module)
    if mod is not None:
        return mod
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"this conversion needs {module}: pip install 'iotcommute[{extra}]' "
            f"(or pip install {module})"
        ) from exc


_LITTLE = sys.byteorder == "little"
_arrow_dict: tuple[Any, Any] = (None, None)  # (device table, its Arrow string array): the last


def _arrow_devices(pa: Any, devices: tuple[str, ...]) -> Any:
    """The device table as an Arrow array, kept while the next batches share the table
    (the compiled parser returns the same tuple for a repeated table)."""
    global _arrow_dict
    cached = _arrow_dict  # one read and one write of a tuple: safe across threads
    if cached[0] is not devices:
        cached = _arrow_dict = (devices, pa.array(devices, pa.string()))
    return cached[1]


class TickBatch:
    """The ticks of one binary batch frame (or of a run of JSON ticks) as columns.

    Holds its frame's bytes (see the module docstring for ownership) and reads every column
    from them: `column(name)` / ``batch[name]`` give read-only numpy views (``device`` is
    materialised as an object array of ids; `codes` + `devices` are its dictionary form).
    Rows keep frame order, which for server batches is increasing position.
    """

    __slots__ = ("_buf", "_devices", "_first", "_last", "_layout", "_n", "_off", "_rows")

    _buf: bytes
    _off: int
    _n: int
    _first: int | None
    _last: int | None
    _devices: tuple[str, ...]
    _layout: _Layout
    _rows: npt.NDArray[np.void] | None

    def __init__(self) -> None:
        raise TypeError("TickBatch is made by decode_batch_columns() or TickBatch.from_ticks()")

    @classmethod
    def _make(
        cls,
        buf: bytes,
        off: int,
        n: int,
        devices: tuple[str, ...],
        layout: _Layout,
        first: int | None,
        last: int | None,
    ) -> TickBatch:
        """`first` and `last`: the first and last row's positions (None without rows), read
        by the parse, so a consumer's per-frame duplicate check reads no bytes again."""
        self = object.__new__(cls)
        self._buf = buf
        self._off = off
        self._n = n
        self._first = first
        self._last = last
        self._devices = devices
        self._layout = layout
        self._rows = None
        return self

    @classmethod
    def from_ticks(
        cls, ticks: Iterable[Mapping[str, Any]], types: Mapping[str, str] | None = None
    ) -> TickBatch:
        """A batch from tick dicts of one data shape (numbers and bools only): exactly the
        batch `decode_batch_columns` gives for the equivalent binary frame, because it is that
        frame (encoded with the same type inference and `types=` as payload.encode_batch).
        Ticks a batch cannot carry raise InputError."""
        raw = _encode(ticks, types)
        try:
            return decode_batch_columns(raw)
        except DecodeError as exc:  # only the int64 position check can fail here
            raise InputError(exc.message) from None

    # --- shape -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    @property
    def fields(self) -> tuple[str, ...]:
        """The data field names, in field-table order."""
        return self._layout.fields

    @property
    def columns(self) -> tuple[str, ...]:
        """Column names: device, position, ts, then one per field (see the module doc)."""
        return self._layout.columns

    @property
    def types(self) -> dict[str, str]:
        """Wire type of each data field: "f64", "f32", "i64", "i32" or "bool"."""
        return dict(zip(self._layout.fields, self._layout.types))

    @property
    def devices(self) -> tuple[str, ...]:
        """The device table (the dictionary of the device column), in frame order."""
        return self._devices

    @property
    def codes(self) -> npt.NDArray[np.uint16]:
        """Each row's index into `devices` (a read-only view of the frame)."""
        codes: npt.NDArray[np.uint16] = self._view()["d"]
        return codes

    @property
    def nbytes(self) -> int:
        """Bytes of the rows this batch covers, as on the wire."""
        return self._n * self._layout.row_size

    @property
    def first_position(self) -> int | None:
        """Position of the first row, None for an empty batch."""
        return self._first

    @property
    def last_position(self) -> int | None:
        """Position of the last row, None for an empty batch."""
        return self._last

    def __repr__(self) -> str:
        if not self._n:
            return f"<TickBatch 0 ticks fields={self.fields!r}>"
        return (
            f"<TickBatch {self._n} ticks positions {self.first_position}..{self.last_position}"
            f" devices={len(self._devices)} fields={self.fields!r}>"
        )

    # --- columns ---------------------------------------------------------------------------

    def _view(self) -> npt.NDArray[np.void]:
        """The rows as one packed structured array over the owned bytes (read-only), made
        on first use and kept: every column is a field of it."""
        rows = self._rows
        if rows is None:
            rows = self._rows = np.frombuffer(self._buf, self._layout.dtype, self._n, self._off)
        return rows

    def column(self, name: str) -> npt.NDArray[Any]:
        """One column by name: a read-only view of the frame (``device``: an object array
        of device ids, built from `codes` and `devices`)."""
        key = self._layout.internal.get(name)
        if key is None:
            raise KeyError(f"no column {name!r}; the columns are {self.columns!r}")
        view = self._view()
        if key == "d":
            ids: npt.NDArray[np.object_] = np.array(self._devices, dtype=object)[view["d"]]
            return ids
        col: npt.NDArray[Any] = view[key]
        return col

    __getitem__ = column

    def to_numpy(self) -> dict[str, npt.NDArray[Any]]:
        """Every column as {name: array}, in `columns` order: read-only views of the frame,
        ``device`` as an object array of ids (`codes` / `devices` are its dictionary form).

        A dict rather than one structured array: column names are free text (any UTF-8
        field name) and each array here is the plain typed column a consumer wants."""
        view = self._view()
        out: dict[str, npt.NDArray[Any]] = {
            "device": np.array(self._devices, dtype=object)[view["d"]]
        }
        for col, key in self._layout.internal.items():
            if key != "d":
                out[col] = view[key]
        return out

    def to_arrow(self) -> pyarrow.RecordBatch:
        """An Arrow RecordBatch: ``device`` as dictionary<int32, string>, position int64,
        ts float64, then the fields with their wire types, none nullable. The schema depends
        only on the field table, so batches of one stream share it. One copy per column."""
        pa = _require("pyarrow", "arrow")
        lay = self._layout
        schema = lay.arrow_schema()
        view = self._view()
        n = self._n
        arrays = [
            pa.DictionaryArray.from_arrays(
                pa.array(view["d"].astype(np.int32)), _arrow_devices(pa, self._devices)
            )
        ]
        for key, field in zip(lay.value_keys, list(schema)[1:]):
            col = np.ascontiguousarray(view[key])
            if col.dtype.kind == "b" or not _LITTLE:
                arrays.append(pa.array(col))
            else:  # the contiguous copy becomes the Arrow buffer as it is
                arrays.append(pa.Array.from_buffers(field.type, n, [None, pa.py_buffer(col)]))
        return pa.RecordBatch.from_arrays(arrays, schema=schema)

    def to_pandas(self) -> pandas.DataFrame:
        """A DataFrame with the same columns; ``device`` is a Categorical over `devices`."""
        pd = _require("pandas", "pandas")
        view = self._view()
        data: dict[str, Any] = {
            "device": pd.Categorical.from_codes(view["d"].astype(np.int32), self._devices)
        }
        for col, key in self._layout.internal.items():
            if key != "d":
                data[col] = np.ascontiguousarray(view[key])
        return pd.DataFrame(data, copy=False)

    def to_polars(self) -> polars.DataFrame:
        """A polars DataFrame with the same columns; ``device`` is Categorical."""
        pl = _require("polars", "polars")
        view = self._view()
        series = [
            pl.Series(
                "device",
                [self._devices[c] for c in view["d"].tolist()],
                dtype=pl.String,
            ).cast(pl.Categorical)
        ]
        for col, key in self._layout.internal.items():
            if key != "d":
                series.append(pl.Series(col, np.ascontiguousarray(view[key])))
        df: polars.DataFrame = pl.DataFrame(series)
        return df

    def rows(self) -> list[tuple[Any, ...]]:
        """One tuple per tick, ``(device, position, ts, *values)``: exactly the rows of
        payload.decode_batch_rows for the same frame."""
        view = self._view()
        devs = self._devices
        cols = [view[k].tolist() for k in self._layout.value_keys]
        return list(zip([devs[c] for c in view["d"].tolist()], *cols))

    def to_dicts(self) -> list[dict[str, Any]]:
        """Tick dicts, exactly as payload.decode_batch gives them for the same frame."""
        names = self._layout.fields
        return [
            {
                "type": "tick",
                "device": r[0],
                "position": r[1],
                "ts": r[2],
                "data": dict(zip(names, r[3:])),
            }
            for r in self.rows()
        ]

    # --- slicing ---------------------------------------------------------------------------

    def slice_after(self, position: int) -> TickBatch:
        """The rows after `position` (rows at or below it sliced off, without copying): for
        dropping duplicates after a resume. Positions must increase within the batch, as in
        every server batch; the result shares this batch's bytes."""
        n, first, last = self._n, self._first, self._last
        if first is None or last is None or first > position:
            return self
        row = self._layout.row_size
        if last <= position:
            return TickBatch._make(
                self._buf, self._off + n * row, 0, self._devices, self._layout, None, None
            )
        p = self._view()["p"]
        k = int(np.searchsorted(p, position, side="right"))
        return TickBatch._make(
            self._buf, self._off + k * row, n - k, self._devices, self._layout, int(p[k]), last
        )

    def filter(self, mask: npt.ArrayLike) -> TickBatch:
        """The rows where `mask` (one bool per row) is true, in order, as a new batch that
        owns a copy of them (the whole batch itself when every row is kept)."""
        keep = np.asarray(mask, dtype=bool)
        if keep.shape != (self._n,):
            raise ValueError(f"filter needs {self._n} booleans, got shape {keep.shape}")
        k = int(keep.sum())
        if k == self._n:
            return self
        kept = self._view()[keep]
        ends = (int(kept["p"][0]), int(kept["p"][-1])) if k else (None, None)
        return TickBatch._make(kept.tobytes(), 0, k, self._devices, self._layout, *ends)

    def _row_bytes(self) -> memoryview:
        """The wire rows this batch covers (for sinks that concatenate batches)."""
        return memoryview(self._buf)[self._off : self._off + self._n * self._layout.row_size]


# --- decoding ----------------------------------------------------------------------------------

Parsed = tuple[tuple[str, ...], Any, int, int, int | None, int | None]
Parse = Callable[[bytes, Callable[[bytes, tuple[str, ...]], Any]], Parsed]


def _parse_py(buf: bytes, make_layout: Callable[[bytes, tuple[str, ...]], Any]) -> Parsed:
    """Pure twin of `_columnar.parse_columns`: checks 1-9 of the spec (by _ticks_py's own
    table parser, so the messages are decode_batch's), then the int64 position check, and
    returns (device table, layout, offset of the rows, number of rows, first and last
    position: None without rows)."""
    _mv, n, devices, names, _bools, row, off = _ticks_py._parse(buf)
    codes = bytes(_LETTER_CODE[c] for c in row.format[4:])
    layout = make_layout(codes, tuple(names))
    if n:
        view = np.frombuffer(buf, layout.dtype, n, off)
        bad = view["d"] >= len(devices)
        for j in layout.bool_fields:
            bad |= view[f"f{j}"].view(np.uint8) > 1
        if bad.any():
            i = int(bad.argmax())
            pos = int(view["p"][i]) & 0xFFFFFFFFFFFFFFFF
            idx = int(view["d"][i])
            if idx >= len(devices):
                raise DecodeError(
                    f"tick at position {pos} refers to device {idx}, the table has {len(devices)}",
                    position=pos,
                )
            for j in layout.bool_fields:
                b = int(view[f"f{j}"].view(np.uint8)[i])
                if b > 1:
                    raise DecodeError(
                        f"tick at position {pos}: bool field {j} holds {b}", position=pos
                    )
        neg = view["p"] < 0
        if neg.any():
            _too_big(int(view["p"][int(neg.argmax())]) & 0xFFFFFFFFFFFFFFFF)
        return tuple(devices), layout, off, n, int(view["p"][0]), int(view["p"][-1])
    return tuple(devices), layout, off, n, None, None


def _too_big(pos: int) -> None:
    raise DecodeError(
        f"tick at position {pos}: positions from 2**63 do not fit the int64 position column",
        position=pos,
    )


Gathered = tuple[list[str], Any, Sequence[Any]]


def _gather_py(
    batches: list[TickBatch], codes: bytes, alloc: Callable[[int], Any] | None = None
) -> Gathered:
    """Pure twin of `_columnar.gather_rows`: the rows of consecutive batches of one field
    table as little-endian columns (see there), here by joining the rows and copying each
    column out of the joined records. `alloc` is accepted and not used: numpy allocates."""
    if any(b._layout.codes != codes for b in batches):
        raise ValueError("gather_rows needs batches of one field table")
    if not batches:
        return [], b"", [b""] * (len(codes) + 2)
    dtype = batches[0]._layout.dtype
    view = np.frombuffer(b"".join([b._row_bytes() for b in batches]), dtype)
    uniq: list[str] = []
    index: dict[str, int] = {}
    parts = []
    last: tuple[str, ...] | None = None
    lut = np.empty(0, dtype="<i4")
    at = 0
    for b in batches:
        if b._devices is not last:
            last = b._devices
            found = []
            for d in last:
                v = index.get(d)
                if v is None:
                    v = index[d] = len(uniq)
                    uniq.append(d)
                found.append(v)
            lut = np.array(found, dtype="<i4")
        parts.append(lut[view["d"][at : at + b._n]])
        at += b._n
    dev_codes = np.concatenate(parts).astype("<i4").tobytes() if parts else b""
    cols = [np.ascontiguousarray(view[k]).tobytes() for k in batches[0]._layout.value_keys]
    return uniq, dev_codes, cols


_parse: Parse = _parse_py
_gather: Callable[[list[TickBatch], bytes, Callable[[int], Any] | None], Gathered] = _gather_py
_encode: Callable[..., bytes] = _ticks_py.encode_batch
#: the compiled parser module when in use, else None
columnar_impl: ModuleType | None = None

if NO_EXTENSIONS:
    SPEEDUPS = False
else:
    try:
        from . import _columnar, _ticks

        _parse = _columnar.parse_columns
        _gather = _columnar.gather_rows
        _encode = _ticks.encode_batch
        columnar_impl = _columnar
        SPEEDUPS = True
    except ImportError:  # pragma: no cover - depends on the build
        warn_fallback("columnar decoder")
        SPEEDUPS = False


def _decode_with(parse: Parse, buf: bytes | bytearray | memoryview) -> TickBatch:
    if type(buf) is not bytes:
        buf = bytes(buf)  # the one copy: never alias a buffer the caller may reuse
    devices, layout, off, n, first, last = parse(buf, _layout)
    return TickBatch._make(buf, off, n, devices, layout, first, last)


def decode_batch_columns(buf: bytes | bytearray | memoryview) -> TickBatch:
    """Check one v1 tick batch frame and return its ticks as a `TickBatch`.

    Raises DecodeError exactly where payload.decode_batch does (same message and position),
    and also for a position of 2**63 or more (see the module docstring). A `bytes` frame is
    kept by reference; anything else is copied once."""
    if type(buf) is not bytes:
        buf = bytes(buf)
    devices, layout, off, n, first, last = _parse(buf, _layout)
    return TickBatch._make(buf, off, n, devices, layout, first, last)


# --- many batches at once -----------------------------------------------------------------------


def batches_to_arrow(batches: Sequence[TickBatch]) -> pyarrow.Table:
    """Many batches as one Arrow Table, in order: the fast way to Arrow for small frames.

    `TickBatch.to_arrow` pays a fixed cost per batch (one Arrow array per column); here
    consecutive batches of one field table are gathered as wire rows into columns in one pass
    (compiled when available) with their device tables unified into one dictionary, so a
    batch costs little more than its bytes. The schema is to_arrow's; when field tables
    differ, the table has the union of their columns (values missing from a batch are null,
    so those columns are nullable; clashing types are promoted)."""
    pa = _require("pyarrow", "arrow")
    runs: list[list[TickBatch]] = []
    for b in batches:
        if not b._n:
            continue
        if runs and (runs[-1][0]._layout is b._layout or runs[-1][0]._layout.key == b._layout.key):
            runs[-1].append(b)
        else:
            runs.append([b])
    if not runs:
        if batches:
            return pa.Table.from_batches([batches[0].to_arrow()])
        raise ValueError("batches_to_arrow needs at least one batch (for the schema)")
    tables = [pa.Table.from_batches([_run_to_arrow(pa, run)]) for run in runs]
    if len(tables) == 1:
        return tables[0]
    table = pa.concat_tables(tables, promote_options="permissive")
    schema = pa.schema([f if f.name in _RESERVED else f.with_nullable(True) for f in table.schema])
    return table.cast(schema)


def _run_to_arrow(pa: Any, run: list[TickBatch]) -> pyarrow.RecordBatch:
    """Consecutive batches of one field table as one RecordBatch."""
    layout = run[0]._layout
    # Outputs from Arrow's memory pool: its allocator keeps freed memory, so a sink's next
    # roll reuses it instead of faulting fresh pages in (that was most of the time here).
    devices, dev_codes, cols = _gather(run, layout.codes, pa.allocate_buffer)
    total = sum(b._n for b in run)
    if _LITTLE:
        indices = pa.Array.from_buffers(pa.int32(), total, [None, _arrow_buffer(pa, dev_codes)])
    else:  # pragma: no cover - big-endian hosts
        indices = pa.array(np.frombuffer(dev_codes, "<i4").astype(np.int32))
    arrays = [pa.DictionaryArray.from_arrays(indices, pa.array(devices, pa.string()))]
    schema = layout.arrow_schema()
    for field, col in zip(list(schema)[1:], cols):
        if pa.types.is_boolean(field.type):
            arrays.append(pa.array(np.frombuffer(col, np.bool_)))
        elif _LITTLE:
            arrays.append(pa.Array.from_buffers(field.type, total, [None, _arrow_buffer(pa, col)]))
        else:  # pragma: no cover - big-endian hosts: let numpy swap the bytes
            dt = np.dtype(field.type.to_pandas_dtype()).newbyteorder("<")
            arrays.append(pa.array(np.frombuffer(col, dt).astype(dt.newbyteorder("="))))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _arrow_buffer(pa: Any, data: Any) -> Any:
    """An Arrow buffer over gathered bytes (the compiled gather already returns them)."""
    return data if isinstance(data, pa.Buffer) else pa.py_buffer(data)
