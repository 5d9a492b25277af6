"""The compiled tick codec and its pure twin must agree on everything.

Random valid batches, random corruptions of them (bit flips, truncations, overwrites,
insertions) and random encoder inputs give the same ticks, bytes or error (class, message,
position) on both paths. Without the compiled module (IOTCOMMUTE_NO_EXTENSIONS=1 or no
build) the same properties run on the pure codec alone: it must still only ever return ticks
or raise DecodeError/InputError.
"""

from __future__ import annotations

import math
import struct
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotcommute import _ticks_py
from iotcommute._env import NO_EXTENSIONS
from iotcommute.exceptions import DecodeError, InputError


def _compiled() -> ModuleType | None:
    if NO_EXTENSIONS:
        return None
    try:
        from iotcommute import _ticks
    except ImportError:
        return None
    return _ticks


C = _compiled() or _ticks_py
P = _ticks_py
SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def same(a: Any, b: Any) -> bool:
    """Type- and bit-exact equality (NaN payloads and -0.0 included)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def outcome(fn: Any, *args: Any) -> tuple[Any, ...]:
    """What a call did: its result, or the library error it raised. Anything else propagates."""
    try:
        return ("ok", fn(*args))
    except (DecodeError, InputError) as exc:
        return ("err", type(exc), exc.message, getattr(exc, "position", None))


def assert_agree(fn_name: str, *args: Any) -> tuple[Any, ...]:
    got_c = outcome(getattr(C, fn_name), *args)
    got_p = outcome(getattr(P, fn_name), *args)
    assert same(got_c, got_p), (got_c, got_p)
    return got_c


# --- strategies -------------------------------------------------------------------------------

names = st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12).filter(
    lambda s: len(s.encode()) <= 255
)
finite = st.floats(allow_nan=False, allow_infinity=False)
VALUES = {
    "f64": finite,
    "f32": st.floats(width=32, allow_nan=False, allow_infinity=False),
    "i64": st.integers(-(2**63), 2**63 - 1),
    "i32": st.integers(-(2**31), 2**31 - 1),
    "bool": st.booleans(),
}


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Ticks of one shape plus the explicit field types to encode them with."""
    fields = draw(st.lists(names, max_size=6, unique=True))
    types = {f: draw(st.sampled_from(sorted(VALUES))) for f in fields}
    devices = draw(st.lists(names, min_size=1, max_size=5, unique=True))
    n = draw(st.integers(0, 12))
    ticks = [
        {
            "type": "tick",
            "device": draw(st.sampled_from(devices)),
            "position": draw(st.integers(0, 2**64 - 1)),
            "ts": draw(finite),
            "data": {f: draw(VALUES[types[f]]) for f in fields},
        }
        for _ in range(n)
    ]
    return ticks, types


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    ticks, types = draw(batches())
    buf = bytearray(P.encode_batch(ticks, types))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "truncate", "overwrite", "insert", "header"]))
        if op == "flip" and buf:
            i = draw(st.integers(0, len(buf) - 1))
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del buf[draw(st.integers(0, len(buf))) :]
        elif op == "overwrite" and buf:
            i = draw(st.integers(0, len(buf) - 1))
            chunk = draw(st.binary(min_size=1, max_size=8))
            buf[i : i + len(chunk)] = chunk
        elif op == "insert":
            i = draw(st.integers(0, len(buf)))
            buf[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "header" and len(buf) >= 14:
            # counts are the fields a hostile peer would lie about
            off = draw(st.sampled_from([6, 8, 10]))
            width = 4 if off == 10 else 2
            val = draw(st.integers(0, 2 ** (8 * width) - 1))
            buf[off : off + width] = val.to_bytes(width, "little")
    return bytes(buf)


SIZES = {"f64": 8, "f32": 4, "i64": 8, "i32": 4, "bool": 1}


@st.composite
def row_corrupted(draw: st.DrawFn) -> bytes:
    """Length-preserving damage inside the rows, where only per-row checks can catch it:
    device indexes around the table size and bool bytes other than 0/1."""
    ticks, types = draw(batches())
    if not ticks:
        ticks = [{"device": "d", "position": 1, "ts": 0.0, "data": {}}]
        types = {}
    buf = bytearray(P.encode_batch(ticks, types))
    n_dev = int.from_bytes(buf[6:8], "little")
    row_size = 18 + sum(SIZES[t] for t in types.values())
    start = len(buf) - row_size * len(ticks)
    for _ in range(draw(st.integers(1, 3))):
        row = start + row_size * draw(st.integers(0, len(ticks) - 1))
        bool_offsets = []
        off = row + 18
        for t in types.values():
            if t == "bool":
                bool_offsets.append(off)
            off += SIZES[t]
        flip_bool = draw(st.booleans())
        if bool_offsets and flip_bool:
            buf[draw(st.sampled_from(bool_offsets))] = draw(st.integers(0, 255))
        else:
            idx = draw(st.one_of(st.integers(0, n_dev + 1), st.integers(0, 0xFFFF)))
            buf[row : row + 2] = idx.to_bytes(2, "little")
    return bytes(buf)


loose_values = st.one_of(
    st.floats(), st.integers(-(2**70), 2**70), st.booleans(), st.none(), st.text(max_size=3)
)


@st.composite
def loose_ticks(draw: st.DrawFn) -> list[Any]:
    """Encoder input that is often invalid: wrong types, mixed shapes, odd values."""
    fields = draw(st.lists(st.sampled_from(["a", "b", "c", ""]), max_size=3, unique=True))
    out: list[Any] = []
    for _ in range(draw(st.integers(0, 5))):
        tick: dict[str, Any] = {}
        if draw(st.booleans()) or not out:
            tick["device"] = draw(st.one_of(st.sampled_from(["d1", "d2", ""]), st.integers()))
        if draw(st.booleans()):
            tick["position"] = draw(st.one_of(st.integers(-2, 2**65), st.booleans(), finite))
        if draw(st.integers(0, 9)) > 0:
            tick["ts"] = draw(st.one_of(st.floats(), st.integers(-(2**1100), 2**1100)))
        shape = fields if draw(st.integers(0, 9)) > 0 else fields[:-1]
        tick["data"] = {f: draw(loose_values) for f in shape}
        out.append(tick)
    return out


types_maps = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["f64", "f32", "i64", "i32", "bool", "u8"]),
        max_size=3,
    ),
)


# --- properties -------------------------------------------------------------------------------


@SETTINGS
@given(batches())
def test_valid_batches_roundtrip_identically(
    batch: tuple[list[dict[str, Any]], dict[str, str]],
) -> None:
    ticks, types = batch
    raw = assert_agree("encode_batch", ticks, types)
    assert raw[0] == "ok"
    got = assert_agree("decode_batch", raw[1])
    assert got[0] == "ok"
    decoded = got[1]
    assert len(decoded) == len(ticks)
    for want, have in zip(ticks, decoded):
        assert have["device"] == want["device"]
        assert have["position"] == want["position"]
        assert same(have["ts"], float(want["ts"]))
        for f, kind in types.items():
            v = want["data"][f]
            expect = float(v) if kind in ("f64", "f32") else v
            assert same(have["data"][f], expect)


@SETTINGS
@given(corrupted())
def test_corruptions_give_identical_results_or_errors(buf: bytes) -> None:
    assert_agree("decode_batch", buf)


@SETTINGS
@given(row_corrupted())
def test_row_damage_gives_identical_results_or_errors(buf: bytes) -> None:
    assert_agree("decode_batch", buf)


@SETTINGS
@given(st.binary(max_size=64), st.booleans())
def test_random_bytes_behind_a_valid_prefix(tail: bytes, with_prefix: bool) -> None:
    buf = (b"\xc1TKB\x01\x00" + tail) if with_prefix else tail
    assert_agree("decode_batch", buf)


@SETTINGS
@given(loose_ticks(), types_maps)
def test_encoders_agree_on_arbitrary_input(ticks: list[Any], types: Any) -> None:
    got = assert_agree("encode_batch", ticks, types)
    if got[0] == "ok":
        assert_agree("decode_batch", got[1])


def test_the_comparison_can_fail() -> None:
    """Guard against a vacuous `same`: it must tell 1 from 1.0 and 0.0 from -0.0."""
    assert not same({"a": 1}, {"a": 1.0})
    assert not same([0.0], [-0.0])
    assert same([math.nan], [math.nan])
    with pytest.raises(AssertionError):
        assert same(("err", DecodeError, "x", None), ("err", DecodeError, "y", None))
