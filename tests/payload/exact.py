"""`same()`: the equality the tick-codec tests need, shared by them."""

from __future__ import annotations

import struct
from typing import Any


def same(a: Any, b: Any) -> bool:
    """Type- and bit-exact equality: the same types, float bits (NaN payloads, -0.0 vs 0.0,
    1 vs 1.0), key order, and the same recursively inside dicts, lists and tuples."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return bool(a == b)
