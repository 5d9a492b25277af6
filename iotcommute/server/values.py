"""What the server accepts as telemetry: checked before a record enters the log.

A record that the server could not serve back must never be stored: every subscriber of
its devices would trip over it. So a publish is refused (`error` code `input`, nothing
stored) unless its data is a JSON object whose values nest at most `MAX_DEPTH` levels,
whose numbers are finite and whose integers fit a signed 64-bit integer (what every JSON
library and the binary batch format carry without loss), and whose encoding, the exact
bytes that will be served, is at most the server's message size limit.
"""

from __future__ import annotations

import math
from typing import Any

from .wire import dumps

MAX_DEPTH = 32
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1


class Invalid(ValueError):
    """The value cannot be stored; the message says why (no data echoed)."""


def check_value(value: Any, depth: int = 1) -> None:
    """Raise Invalid unless `value` nests at most MAX_DEPTH levels (`value` itself at
    `depth`), has only finite numbers, 64-bit integers and string keys."""
    stack: list[tuple[Any, int]] = [(value, depth)]
    while stack:
        v, d = stack.pop()
        t = type(v)
        if t is str or t is bool or v is None:
            continue
        if t is int:
            if not INT_MIN <= v <= INT_MAX:
                raise Invalid("integers must fit a signed 64-bit integer")
            continue
        if t is float:
            if not math.isfinite(v):
                raise Invalid("numbers must be finite")
            continue
        if t is dict or t is list:
            if d > MAX_DEPTH:
                raise Invalid(f"values may nest at most {MAX_DEPTH} levels")
            if t is dict:
                for k, x in v.items():
                    if type(k) is not str:
                        raise Invalid("object keys must be strings")
                    if type(x) in (dict, list) or type(x) in (int, float):
                        stack.append((x, d + 1))
            else:
                stack.extend((x, d + 1) for x in v)
            continue
        raise Invalid(f"unsupported value type {t.__name__}")


def encode_data(data: Any, max_size: int) -> bytes:
    """The JSON text of a record's `data` object, validated; raises Invalid."""
    if type(data) is not dict:
        raise Invalid('"data" must be a JSON object')
    check_value(data)
    try:
        out = dumps(data)
    except (TypeError, ValueError) as exc:
        raise Invalid("data cannot be encoded as JSON") from exc
    if len(out) > max_size:
        raise Invalid(f"a record may be at most {max_size} bytes")
    return out


def check_ts(ts: Any) -> float | None:
    """A publish's `ts`: None (server time) or a finite number of seconds; raises Invalid."""
    if ts is None:
        return None
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        raise Invalid('"ts" must be a number')
    f = float(ts)
    if not math.isfinite(f) or (type(ts) is int and not INT_MIN <= ts <= INT_MAX):
        raise Invalid('"ts" must be a finite number')
    return f
