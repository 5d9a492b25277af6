"""Message payloads: JSON text frames and binary tick batches.

JSON goes through orjson when it is importable (it parses bytes, bytearray and memoryview
without a copy), else the stdlib. `loads_json` is the untyped-error form the client's hot
paths call: the compiled codec reads the common shape of a tick message itself (~30% fewer
instructions than orjson for a 256-byte tick), with orjson's result for every input.
Tick batches (docs/protocol-binary.md) use the compiled `iotcommute.payload._ticks` unless
IOTCOMMUTE_NO_EXTENSIONS is set or it is missing; `_ticks_py` is the identical pure twin.
decode_batch gives tick dicts (the default everywhere); decode_batch_rows gives the lean
form, (field names, [(device, position, ts, *values), ...]), several times faster where a
consumer does not need dicts (see benchmarks/).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .._env import NO_EXTENSIONS, warn_fallback
from ..exceptions import DecodeError, InputError
from . import _ticks_py

__all__ = [
    "JSON_BACKEND",
    "SPEEDUPS",
    "decode_batch",
    "decode_batch_rows",
    "deliver_data",
    "dumps",
    "dumps_int64",
    "encode_batch",
    "encode_batches",
    "is_batch",
    "loads",
    "loads_json",
    "text_kind",
]

#: the tick codec module in use (the compiled one, or its pure twin), as frames.frames_impl
ticks_impl: ModuleType = _ticks_py

if TYPE_CHECKING or NO_EXTENSIONS:
    from ._ticks_py import (
        decode_batch,
        decode_batch_rows,
        encode_batch,
        is_batch,
        loads_json,
        text_kind,
    )

    SPEEDUPS = False
    from ._deliver_py import deliver_data
else:
    try:
        from . import _ticks
        from ._ticks import (
            decode_batch,
            decode_batch_rows,
            encode_batch,
            is_batch,
            loads_json,
            text_kind,
        )

        ticks_impl = _ticks
        SPEEDUPS = True
    except ImportError:  # pragma: no cover - depends on the build
        warn_fallback("tick codec")
        from ._ticks_py import (
            decode_batch,
            decode_batch_rows,
            encode_batch,
            is_batch,
            loads_json,
            text_kind,
        )

        SPEEDUPS = False
    # the raw consumer's delivery loop (the compiled one cimports _ticks' text_kind_c)
    try:
        from ._deliver import deliver_data
    except ImportError:  # pragma: no cover - depends on the build
        warn_fallback("raw delivery loop")
        from ._deliver_py import deliver_data

        SPEEDUPS = False

_orjson_loads: Callable[[Any], Any] | None
try:
    import orjson

    _orjson_loads = orjson.loads
    _orjson_dumps = orjson.dumps
    _JSONError: type[Exception] = orjson.JSONDecodeError
    _JSONEncodeError: type[Exception] = orjson.JSONEncodeError
    JSON_BACKEND = "orjson"
except ImportError:  # pragma: no cover - orjson ships wheels for every CPython we support
    _orjson_loads = None
    _JSONError = ValueError  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
    _JSONEncodeError = TypeError
    JSON_BACKEND = "json"


def loads(buf: bytes | bytearray | memoryview | str) -> Any:
    """Parse one JSON document; malformed input raises DecodeError.

    `from None`: the original exception can hold the whole document (json's `.doc`), which
    may carry credentials from the peer; the message alone is enough to debug.
    """
    try:
        if _orjson_loads is not None:
            return loads_json(buf)  # orjson's result; the common tick shape read in C
        if isinstance(buf, memoryview):
            buf = buf.tobytes()
        return json.loads(buf)
    except _JSONError as exc:
        raise DecodeError(f"invalid JSON: {_describe(exc)}") from None
    except (ValueError, TypeError) as exc:
        # stdlib path: bad UTF-8 / wrong argument type; orjson path: argument type
        raise DecodeError(f"invalid JSON: {type(exc).__name__}") from None


def _describe(exc: Exception) -> str:
    """Position-only description: never echo the document itself."""
    if isinstance(exc, json.JSONDecodeError):  # orjson's error subclasses it too
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return type(exc).__name__


def dumps(obj: Any) -> bytes:
    """Serialize to compact UTF-8 JSON bytes; unserializable input raises InputError."""
    try:
        if _orjson_loads is not None:
            return _orjson_dumps(obj)
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (_JSONEncodeError, TypeError, ValueError) as exc:
        raise InputError(f"cannot serialize to JSON: {type(exc).__name__}") from None


#: 19 digits or more: the only way an integer of 2**63 or more shows in encoded JSON
_LONG_DIGITS = re.compile(rb"\d{19}")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _refuse_wide_ints(obj: Any) -> None:
    if type(obj) is int:
        if not INT64_MIN <= obj <= INT64_MAX:
            raise InputError("integers must fit a signed 64-bit integer (-2**63 .. 2**63-1)")
    elif isinstance(obj, dict):
        for v in obj.values():
            _refuse_wide_ints(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _refuse_wide_ints(v)


def dumps_int64(obj: Any) -> bytes:
    """`dumps` for what the protocol carries as data (publish, command): integers outside
    the signed 64-bit range raise InputError whatever the JSON backend accepts (the server
    refuses them, and the binary batch cannot hold them). Costs one byte scan; the walk
    over the value runs only when the output holds a run of 19 digits."""
    out = dumps(obj)
    if _LONG_DIGITS.search(out) is not None:
        _refuse_wide_ints(obj)
    return out


def encode_batches(
    ticks: Iterable[Mapping[str, Any]],
    types: Mapping[str, str] | None = None,
    max_ticks: int = 1000,
) -> list[bytes]:
    """Encode ticks of any shapes as consecutive batches, keeping their order.

    A batch needs one data shape, so a new batch starts whenever the data keys or the kinds
    of their values (bool/int/float) change, or after `max_ticks`. Grouping by kind too means
    an int never comes back as a float: every decoded tick equals its JSON twin.
    Concatenating the decoded batches gives back the input order, which is what a
    position-ordered stream needs. Invalid ticks raise InputError.
    """
    if max_ticks < 1:
        raise InputError("max_ticks must be at least 1")
    out: list[bytes] = []
    run: list[Mapping[str, Any]] = []
    shape: tuple[Any, ...] | None = None
    for tick in ticks:
        data = tick.get("data") if isinstance(tick, Mapping) else None
        key = tuple((k, _kind(v)) for k, v in data.items()) if isinstance(data, Mapping) else None
        if run and (key != shape or len(run) >= max_ticks):
            out.append(encode_batch(run, types))
            run = []
        shape = key
        run.append(tick)
    if run:
        out.append(encode_batch(run, types))
    return out


def _kind(v: Any) -> int:
    return (
        0 if isinstance(v, bool) else 1 if isinstance(v, int) else 2 if isinstance(v, float) else 3
    )
