"""Pure-Python tick codecs: the fallback twin of `_speedups/_ticks.pyx`.

The wire format (v1) is specified in docs/protocol-binary.md. Both implementations must give
the same ticks for a valid batch and the same error (class, message, position) for an invalid
one, so every check happens in the documented order; tests/payload/test_ticks_differential.py holds
them to it.

Speed here comes from struct: one compiled `Struct` per row layout and `iter_unpack`, so each
row is one C call instead of one unpack per field (the KiteTicker anti-pattern).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping
from typing import Any

from ..exceptions import DecodeError, InputError

#: JSON reading for the client's hot paths (a tick message, a control message): orjson's
#: results and errors, json's without orjson. The compiled twin reads the common tick shape
#: itself with the same results. `payload.loads` wraps the errors into DecodeError.
loads_json: Any
try:
    from orjson import loads as loads_json
except ImportError:  # pragma: no cover - orjson ships wheels for every CPython we support
    from json import loads as loads_json

__all__ = [
    "FIELD_TYPES",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_DEVICES",
    "MAX_FIELDS",
    "MAX_TICKS",
    "VERSION",
    "decode_batch",
    "decode_batch_rows",
    "encode_batch",
    "is_batch",
    "loads_json",
    "text_kind",
]

#: 0xC1 can never start (or appear in) valid UTF-8, so a batch is never mistaken for text.
MAGIC = b"\xc1TKB"
VERSION = 1
HEADER_SIZE = 14
MAX_TICKS = 100_000
MAX_DEVICES = 4096
MAX_FIELDS = 255

#: wire type code -> (name, struct letter, size in bytes)
_TYPES: dict[int, tuple[str, str, int]] = {
    1: ("f64", "d", 8),
    2: ("i64", "q", 8),
    3: ("i32", "i", 4),
    4: ("bool", "B", 1),
    5: ("f32", "f", 4),
}
#: type name -> wire code (the `types=` argument of encode_batch uses the names)
FIELD_TYPES: dict[str, int] = {name: code for code, (name, _, _) in _TYPES.items()}

_HEADER = struct.Struct("<4sBBHHI")
_F32 = struct.Struct("<f")
_ROW_PREFIX = "<HQd"  # device index, position, ts
_BOOLS = (False, True)  # indexing by the wire byte rejects anything but 0/1 with IndexError
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_I32_MIN, _I32_MAX = -(2**31), 2**31 - 1
_U64_MAX = 2**64 - 1

_layouts: dict[bytes, struct.Struct] = {}


def _row_struct(letters: str) -> struct.Struct:
    """One cached Struct per row layout: batches of one stream keep the same shape."""
    key = letters.encode("ascii")
    st = _layouts.get(key)
    if st is None:
        if len(_layouts) > 256:  # bounded: a hostile peer could vary the layout forever
            _layouts.clear()
        st = _layouts[key] = struct.Struct(_ROW_PREFIX + letters)
    return st


def is_batch(buf: bytes | bytearray | memoryview) -> bool:
    """True if `buf` starts with the tick-batch magic (any version)."""
    return bytes(buf[:4]) == MAGIC


_CONTROL_PREFIX = '{"type":"'
_TICK_PREFIX = '{"type":"tick"'


def text_kind(text: str) -> int:
    """What a text message is by its envelope prefix alone (docs/protocol.md §4: every
    server message starts exactly with ``{"type":"<name>"``): 1 a tick, 2 another IOT
    commute message, 0 anything else (application text, which is never parsed)."""
    # slices compared: str.startswith parses its arguments on every call (~3x the cost)
    head = text[:14]
    if head == _TICK_PREFIX:
        return 1
    return 2 if head[:9] == _CONTROL_PREFIX else 0


def _read_name(mv: memoryview, off: int, n: int, what: str, i: int) -> tuple[str, int]:
    """One length-prefixed UTF-8 string of a table; `off` points at the length byte."""
    if off >= n:
        raise DecodeError(f"tick batch truncated in the {what} table")
    ln = mv[off]
    off += 1
    if ln == 0:
        raise DecodeError(f"{what} {i} has an empty name")
    if off + ln > n:
        raise DecodeError(f"tick batch truncated in the {what} table")
    try:
        s = str(mv[off : off + ln], "utf-8")
    except UnicodeDecodeError:
        raise DecodeError(f"{what} {i} is not valid UTF-8") from None
    return s, off + ln


def _parse(
    buf: bytes | bytearray | memoryview,
) -> tuple[memoryview, int, list[str], list[str], list[int], struct.Struct, int]:
    """Checks 1-8 of the spec: (view, n_ticks, devices, field names, bool columns, row
    struct, offset of the rows)."""
    mv = memoryview(buf)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    n = len(mv)
    if n < HEADER_SIZE:
        raise DecodeError(f"tick batch truncated: {n} bytes, the header needs {HEADER_SIZE}")
    magic, version, flags, n_dev, n_fld, n_ticks = _HEADER.unpack_from(mv, 0)
    if magic != MAGIC:
        raise DecodeError("not a tick batch (bad magic)")
    if version != VERSION:
        raise DecodeError(f"unsupported tick batch version {version}")
    if flags != 0:
        raise DecodeError(f"reserved tick batch flags set: 0x{flags:02x}")
    if n_dev > MAX_DEVICES:
        raise DecodeError(f"tick batch declares {n_dev} devices, the limit is {MAX_DEVICES}")
    if n_fld > MAX_FIELDS:
        raise DecodeError(f"tick batch declares {n_fld} fields, the limit is {MAX_FIELDS}")
    if n_ticks > MAX_TICKS:
        raise DecodeError(f"tick batch declares {n_ticks} ticks, the limit is {MAX_TICKS}")

    off = HEADER_SIZE
    devices: list[str] = []
    seen: set[str] = set()
    for i in range(n_dev):
        name, off = _read_name(mv, off, n, "device", i)
        if name in seen:
            raise DecodeError(f"device {i} repeats an earlier device id")
        seen.add(name)
        devices.append(name)

    names: list[str] = []
    letters = []
    bool_cols: list[int] = []
    for j in range(n_fld):
        if off >= n:
            raise DecodeError("tick batch truncated in the field table")
        code = mv[off]
        spec = _TYPES.get(code)
        if spec is None:
            raise DecodeError(f"field {j} has unknown type code {code}")
        name, off = _read_name(mv, off + 1, n, "field", j)
        if name in names:  # at most 255 short names, once per batch
            raise DecodeError(f"field {j} repeats an earlier field name")
        names.append(name)
        letters.append(spec[1])
        if code == 4:
            bool_cols.append(j)

    row = _row_struct("".join(letters))
    expected = n_ticks * row.size
    if n - off != expected:
        raise DecodeError(
            f"tick batch rows need {expected} bytes for {n_ticks} ticks, {n - off} present"
        )
    return mv, n_ticks, devices, names, bool_cols, row, off


def _device(devices: list[str], rec: tuple[Any, ...]) -> str:
    """Check 9a: the row's device index is in the table."""
    try:
        device: str = devices[rec[0]]
    except IndexError:
        pos = rec[1]
        raise DecodeError(
            f"tick at position {pos} refers to device {rec[0]}, the table has {len(devices)}",
            position=pos,
        ) from None
    return device


def _with_bools(vals: list[Any], bool_cols: list[int], pos: int) -> list[Any]:
    """Check 9b: bool columns hold 0 or 1 (converted in place)."""
    bools = _BOOLS
    for j in bool_cols:
        try:
            vals[j] = bools[vals[j]]
        except IndexError:
            raise DecodeError(
                f"tick at position {pos}: bool field {j} holds {vals[j]}", position=pos
            ) from None
    return vals


def decode_batch(buf: bytes | bytearray | memoryview) -> list[dict[str, Any]]:
    """Decode one v1 tick batch into tick dicts (the same dicts as JSON ticks)."""
    mv, n_ticks, devices, names, bool_cols, row, off = _parse(buf)
    out: list[dict[str, Any]] = []
    if n_ticks == 0:
        return out
    append = out.append
    for rec in row.iter_unpack(mv[off:]):
        device = _device(devices, rec)
        if bool_cols:
            data = dict(zip(names, _with_bools(list(rec[3:]), bool_cols, rec[1])))
        else:
            data = dict(zip(names, rec[3:]))
        append({"type": "tick", "device": device, "position": rec[1], "ts": rec[2], "data": data})
    return out


def decode_batch_rows(
    buf: bytes | bytearray | memoryview,
) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
    """Decode one v1 tick batch leanly: (field names, rows), each row a tuple
    ``(device, position, ts, *values)`` with the values in field order. The same checks
    and errors as decode_batch; the values are the ones its dicts would hold."""
    mv, n_ticks, devices, names, bool_cols, row, off = _parse(buf)
    out: list[tuple[Any, ...]] = []
    if n_ticks:
        append = out.append
        for rec in row.iter_unpack(mv[off:]):
            device = _device(devices, rec)
            if bool_cols:
                append((device, *rec[1:3], *_with_bools(list(rec[3:]), bool_cols, rec[1])))
            else:
                append((device, *rec[1:]))
    return tuple(names), out


def _utf8_name(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise InputError(f"{what} must be a non-empty str")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{what} is not encodable as UTF-8") from None
    if len(raw) > 255:
        raise InputError(f"{what} is longer than 255 UTF-8 bytes")
    return raw


def encode_batch(
    ticks: Iterable[Mapping[str, Any]], types: Mapping[str, str] | None = None
) -> bytes:
    """Encode ticks sharing one data shape as a v1 batch.

    Field types are inferred per field over the whole batch (bool -> bool, int -> i64,
    float or a mix of int and float -> f64) unless `types` names one ("f64", "f32", "i64",
    "i32", "bool"). A tick without "position" gets 0 (devices publish with positions unset).
    Anything the format cannot carry raises InputError; see docs/protocol-binary.md.
    """
    seq = list(ticks)
    if len(seq) > MAX_TICKS:
        raise InputError(f"a tick batch holds at most {MAX_TICKS} ticks, got {len(seq)}")
    dev_index: dict[str, int] = {}
    dev_raw: list[bytes] = []
    names: list[str] = []
    # per field: 0 unknown, 1 bool seen, 2 only ints, 3 some floats
    kinds: list[int] = []
    rows: list[tuple[int, int, float, list[Any]]] = []
    for i, tick in enumerate(seq):
        if not isinstance(tick, Mapping):
            raise InputError(f"tick {i} is not a mapping")
        device = tick.get("device")
        idx = dev_index.get(device) if isinstance(device, str) else None
        if idx is None:
            raw = _utf8_name(device, f"device of tick {i}")
            if len(dev_raw) >= MAX_DEVICES:
                raise InputError(f"a tick batch holds at most {MAX_DEVICES} devices")
            idx = dev_index[device] = len(dev_raw)  # type: ignore[index]
            dev_raw.append(raw)
        pos = tick.get("position", 0)
        if isinstance(pos, bool) or not isinstance(pos, int) or not 0 <= pos <= _U64_MAX:
            raise InputError(f"position of tick {i} must be an int in [0, 2**64)")
        ts = tick.get("ts")
        if isinstance(ts, bool) or not isinstance(ts, (int, float)):
            raise InputError(f"ts of tick {i} must be a number")
        try:
            ts = float(ts)
        except OverflowError:
            raise InputError(f"ts of tick {i} is out of range") from None
        if not math.isfinite(ts):
            raise InputError(f"ts of tick {i} is not finite")
        data = tick.get("data")
        if not isinstance(data, Mapping):
            raise InputError(f"data of tick {i} must be a mapping")
        if i == 0:
            if len(data) > MAX_FIELDS:
                raise InputError(f"a tick batch holds at most {MAX_FIELDS} fields")
            for name in data:
                if len(names) >= MAX_FIELDS:  # a Mapping's len() may undercount its keys
                    raise InputError(f"a tick batch holds at most {MAX_FIELDS} fields")
                _utf8_name(name, "field name")
                names.append(name)
                kinds.append(0)
        elif len(data) != len(names):
            raise InputError(f"tick {i} has other data fields than tick 0; split the batch")
        vals: list[Any] = []
        for j, name in enumerate(names):
            try:
                v = data[name]
            except KeyError:
                raise InputError(
                    f"tick {i} has other data fields than tick 0; split the batch"
                ) from None
            if isinstance(v, bool):
                if kinds[j] > 1:
                    raise InputError(f"field {name!r} mixes bool and numbers")
                kinds[j] = 1
            elif isinstance(v, int):
                if kinds[j] == 1:
                    raise InputError(f"field {name!r} mixes bool and numbers")
                if not _I64_MIN <= v <= _I64_MAX:
                    raise InputError(f"field {name!r} of tick {i} is out of the i64 range")
                if kinds[j] == 0:
                    kinds[j] = 2
            elif isinstance(v, float):
                if kinds[j] == 1:
                    raise InputError(f"field {name!r} mixes bool and numbers")
                if not math.isfinite(v):
                    raise InputError(f"field {name!r} of tick {i} is not finite")
                kinds[j] = 3
            else:
                raise InputError(f"field {name!r} of tick {i} is not a number or bool")
            vals.append(v)
        rows.append((idx, pos, ts, vals))

    codes: list[int] = []
    for j, name in enumerate(names):
        if types is not None and name in types:
            code = FIELD_TYPES.get(types[name], 0)
            if code == 0:
                raise InputError(f"unknown field type {types[name]!r} for field {name!r}")
            if (code == 4) != (kinds[j] == 1) and kinds[j] != 0:
                raise InputError(f"field {name!r} cannot be encoded as {types[name]}")
            if code in (2, 3) and kinds[j] == 3:
                raise InputError(f"field {name!r} holds floats, it cannot be {types[name]}")
        else:
            code = 4 if kinds[j] == 1 else 2 if kinds[j] == 2 else 1
        codes.append(code)

    parts: list[bytes] = [_HEADER.pack(MAGIC, VERSION, 0, len(dev_raw), len(names), len(seq))]
    for raw in dev_raw:
        parts.append(bytes((len(raw),)) + raw)
    for name, code in zip(names, codes):
        raw = name.encode("utf-8")
        parts.append(bytes((code, len(raw))) + raw)
    row = _row_struct("".join(_TYPES[c][1] for c in codes))
    # i32/f32 ranges are checked per row in field order, exactly like the compiled packer.
    narrow = [(j, c) for j, c in enumerate(codes) if c in (3, 5)]
    for i, (idx, pos, ts, vals) in enumerate(rows):
        for j, c in narrow:
            if c == 3:
                if not _I32_MIN <= vals[j] <= _I32_MAX:
                    raise InputError(f"field {names[j]!r} of tick {i} is out of the i32 range")
            else:
                try:
                    _F32.pack(vals[j])
                except OverflowError:
                    raise InputError(
                        f"field {names[j]!r} of tick {i} is out of the f32 range"
                    ) from None
        parts.append(row.pack(idx, pos, ts, *vals))
    return b"".join(parts)
