"""The compiled tick codec and its pure twin must agree on everything.

Random valid batches, random corruptions of them (bit flips, truncations, overwrites,
insertions) and random encoder inputs give the same ticks, bytes or error (class, message,
position) on both paths. Batches whose columns repeat 1-3 values across interleaved devices,
and sequences of batches sharing byte-identical tables, aim at the compiled decoder's
change-only row copies and its table cache; every returned dict must be its own object.
Without the compiled module (IOTCOMMUTE_NO_EXTENSIONS=1 or no build) the same properties run
on the pure codec alone: it must still only ever return ticks or raise DecodeError/InputError,
and its dicts must be distinct too.
"""

from __future__ import annotations

import math
import struct
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from iotcommute.exceptions import DecodeError, InputError
from iotcommute.payload import _ticks_py
from tests.compiled import compiled
from tests.payload.exact import same

C: ModuleType = compiled("iotcommute.payload._ticks") or _ticks_py
P = _ticks_py
SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


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
    got = decode_both(raw[1])
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
    decode_both(buf)


@SETTINGS
@given(row_corrupted())
def test_row_damage_gives_identical_results_or_errors(buf: bytes) -> None:
    decode_both(buf)


@SETTINGS
@given(st.binary(max_size=64), st.booleans())
def test_random_bytes_behind_a_valid_prefix(tail: bytes, with_prefix: bool) -> None:
    buf = (b"\xc1TKB\x01\x00" + tail) if with_prefix else tail
    decode_both(buf)


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


# --- repetitive rows and repeated tables ------------------------------------------------------
#
# The compiled decoder starts each row from a copy of the previous row of the same device and
# stores only the values whose bytes changed, and it reuses the parsed tables of the previous
# batch when the next one repeats them byte for byte. Random batches rarely repeat a value or
# a table, so these batches are built from raw bytes with 1-3 distinct values per column and
# few devices, and decoded in sequences that share tables.

F64, I64, I32, BOOL, F32 = 1, 2, 3, 4, 5
CODE_SIZE = {F64: 8, I64: 8, I32: 4, BOOL: 1, F32: 4}
_D = struct.Struct("<d")
# Bit patterns a value-by-value comparison would confuse: signed zeros, NaN payloads.
ODD_F64 = [
    _D.pack(0.0),
    _D.pack(-0.0),
    _D.pack(math.inf),
    bytes.fromhex("000000000000f87f"),  # quiet NaN
    bytes.fromhex("010000000000f8ff"),  # negative NaN with a payload
    bytes.fromhex("010000000000f07f"),  # signalling NaN
]
ODD_F32 = [
    struct.pack("<f", 0.0),
    struct.pack("<f", -0.0),
    bytes.fromhex("0000c07f"),  # quiet NaN
    bytes.fromhex("0100c0ff"),  # negative NaN with a payload
    bytes.fromhex("0100807f"),  # signalling NaN (widening may quieten it; both must agree)
]


def raw_values(code: int) -> st.SearchStrategy[bytes]:
    """Wire bytes of one valid value of a field type."""
    size = CODE_SIZE[code]
    if code == BOOL:
        return st.sampled_from([b"\x00", b"\x01"])
    if code in (I64, I32):
        small = st.integers(-3, 3).map(lambda v: v.to_bytes(size, "little", signed=True))
    else:
        fmt = "<d" if code == F64 else "<f"
        small = st.sampled_from(ODD_F64 if code == F64 else ODD_F32) | st.integers(-3, 3).map(
            lambda v: struct.pack(fmt, v / 2)
        )
    return small | st.binary(min_size=size, max_size=size)


short_names = st.text(alphabet="ab\u00e9\u2603", min_size=1, max_size=3)


class Table:
    """A device table and a field table, and their wire bytes."""

    def __init__(self, devices: list[str], fields: list[tuple[int, str]]) -> None:
        self.devices = devices
        self.fields = fields
        raw = bytearray()
        for dev in devices:
            b = dev.encode()
            raw += bytes([len(b)]) + b
        for code, name in fields:
            b = name.encode()
            raw += bytes([code, len(b)]) + b
        self.raw = bytes(raw)

    def batch(self, rows: list[bytes], n_dev: int | None = None, n_fld: int | None = None) -> bytes:
        """A batch of these tables; the counts can be made to lie about them."""
        head = struct.pack(
            "<4sBBHHI",
            b"\xc1TKB",
            1,
            0,
            len(self.devices) if n_dev is None else n_dev,
            len(self.fields) if n_fld is None else n_fld,
            len(rows),
        )
        return head + self.raw + b"".join(rows)


@st.composite
def tables(draw: st.DrawFn, max_devices: int = 6) -> Table:
    devices = draw(st.lists(short_names, min_size=1, max_size=max_devices, unique=True))
    fields = draw(
        st.lists(
            st.tuples(st.sampled_from([F64, I64, I32, BOOL, BOOL, F32]), short_names),
            max_size=5,
            unique_by=lambda f: f[1],
        )
    )
    return Table(devices, fields)


@st.composite
def value_pools(draw: st.DrawFn, values: st.SearchStrategy[bytes]) -> list[bytes]:
    """1-3 distinct wire values for one column; the others often differ from the first in a
    single bit anywhere, which only a comparison of every byte can tell apart."""
    first = draw(values)
    pool = [first]
    for _ in range(draw(st.integers(0, 2))):
        if len(first) > 1 and draw(st.booleans()):
            bit = draw(st.integers(0, 8 * len(first) - 1))
            near = bytearray(first)
            near[bit // 8] ^= 1 << (bit % 8)
            pool.append(bytes(near))
        else:
            pool.append(draw(values))
    return pool


@st.composite
def repetitive_rows(draw: st.DrawFn, table: Table) -> list[bytes]:
    """Rows whose every column takes only 1-3 distinct values, devices interleaved; sometimes
    more rows than devices (a device repeats), sometimes fewer (every row a new device)."""
    n_dev = len(table.devices)
    regime = draw(st.sampled_from(["many", "few", "any"]))
    if regime == "many":
        n = draw(st.integers(n_dev + 1, 3 * n_dev + 4))
    elif regime == "few" and n_dev > 1:
        n = draw(st.integers(1, n_dev - 1))
    else:
        n = draw(st.integers(0, 10))
    # A single device for every row, or the devices in turn, or drawn at random.
    pattern = draw(st.sampled_from(["one", "round", "random"]))
    dev_pool = draw(st.lists(st.integers(0, n_dev - 1), min_size=1, max_size=3))
    u64 = st.integers(0, 2**64 - 1).map(lambda v: v.to_bytes(8, "little"))
    positions = draw(value_pools(u64))
    stamps = draw(value_pools(raw_values(F64)))
    pools = [draw(value_pools(raw_values(code))) for code, _ in table.fields]
    rows = []
    for i in range(n):
        if pattern == "one":
            idx = dev_pool[0]
        elif pattern == "round":
            idx = i % n_dev
        else:
            idx = draw(st.sampled_from(dev_pool))
        row = struct.pack("<H", idx) + draw(st.sampled_from(positions))
        row += draw(st.sampled_from(stamps))
        rows.append(row + b"".join(draw(st.sampled_from(pool)) for pool in pools))
    return rows


def bool_offsets(table: Table) -> list[int]:
    """Offsets of the bool columns within a row."""
    out, off = [], 18
    for code, _ in table.fields:
        if code == BOOL:
            out.append(off)
        off += CODE_SIZE[code]
    return out


@st.composite
def damaged_rows(draw: st.DrawFn, table: Table, rows: list[bytes]) -> list[bytes]:
    """Length-preserving damage right after repeats: row k is preceded by rows of its own
    device holding the same valid values, then carries a bool byte other than 0/1 or a device
    index past the table."""
    rows = list(rows)
    if not rows:
        return rows
    for _ in range(draw(st.integers(1, 2))):
        k = draw(st.integers(0, len(rows) - 1))
        row = bytearray(rows[k])
        if draw(st.booleans()) and k >= 1:
            # make rows k-2 and k-1 exact repeats of row k (same device, same values)
            for back in range(1, min(k, draw(st.integers(1, 2))) + 1):
                rows[k - back] = bytes(row)
        bools = bool_offsets(table)
        if draw(st.integers(0, 2)) > 0 and bools:
            row[draw(st.sampled_from(bools))] = draw(st.integers(2, 255))
        else:
            n_dev = len(table.devices)
            idx = draw(st.one_of(st.integers(n_dev, n_dev + 1), st.integers(n_dev, 0xFFFF)))
            row[0:2] = idx.to_bytes(2, "little")
        rows[k] = bytes(row)
    return rows


@st.composite
def repetitive_batches(draw: st.DrawFn) -> bytes:
    table = draw(tables(max_devices=draw(st.sampled_from([2, 6, 20]))))
    rows = draw(repetitive_rows(table))
    if draw(st.booleans()):
        rows = draw(damaged_rows(table, rows))
    return table.batch(rows)


def as_kind(raw: bytes, kind: str) -> bytes | bytearray | memoryview:
    return bytearray(raw) if kind == "bytearray" else memoryview(raw) if kind == "mv" else raw


def has_nan(obj: Any) -> bool:
    if isinstance(obj, float):
        return math.isnan(obj)
    if isinstance(obj, dict):
        return any(has_nan(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(has_nan(v) for v in obj)
    return False


def decode_both(buf: bytes | bytearray | memoryview) -> tuple[Any, ...]:
    """Decode with both codecs; they must agree exactly (values, types, float bits, key
    order, or error class, message and position). Returns the compiled outcome."""
    got_c = outcome(C.decode_batch, buf)
    got_p = outcome(P.decode_batch, buf)
    assert same(got_c, got_p), (bytes(buf).hex(), got_c, got_p)
    if not has_nan(got_p):
        assert got_c == got_p, (bytes(buf).hex(), got_c, got_p)
    # The lean rows: the same on both paths, the same error, the same values as the dicts.
    rows_c = outcome(C.decode_batch_rows, buf)
    rows_p = outcome(P.decode_batch_rows, buf)
    assert same(rows_c, rows_p), (bytes(buf).hex(), rows_c, rows_p)
    if got_p[0] == "ok":
        names, rows = rows_p[1]
        assert same(rows, as_rows(got_p[1])), (bytes(buf).hex(), rows, got_p)
        assert not got_p[1] or names == tuple(got_p[1][0]["data"])
    else:
        assert same(rows_p, got_p), (bytes(buf).hex(), rows_p, got_p)
    return got_c


def as_rows(ticks: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What decode_batch_rows gives for the batch decode_batch gave `ticks` for."""
    return [(t["device"], t["position"], t["ts"], *t["data"].values()) for t in ticks]


def assert_isolated(ticks: list[dict[str, Any]]) -> None:
    """Every tick dict and data dict is its own object: no id repeats, and a write to one is
    seen through no other. Leaves the dicts as they were."""
    ids = [id(t) for t in ticks] + [id(t["data"]) for t in ticks]
    assert len(set(ids)) == len(ids)
    mark = "\x00mark"
    for i, t in enumerate(ticks):
        t[mark] = i
        t["data"][mark] = i
        for key in list(t["data"]):
            if key != mark:
                t["data"][key] = (i, t["data"][key])
    for i, t in enumerate(ticks):
        assert t.pop(mark) == i
        assert t["data"].pop(mark) == i
        for key, val in t["data"].items():
            assert type(val) is tuple and val[0] == i, (i, key, val)
            t["data"][key] = val[1]


# A table no generated batch uses (its device id is not in `short_names`' alphabet): decoding
# it first puts the compiled table cache in the same state for every example and its replay.
RESET = Table(["\x00reset"], [(F64, "x")]).batch([bytes(26)])
REPEAT_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@REPEAT_SETTINGS
@given(repetitive_batches(), st.sampled_from(["bytes", "bytearray", "mv"]))
def test_repetitive_rows_decode_identically(raw: bytes, kind: str) -> None:
    decode_both(RESET)
    got = decode_both(as_kind(raw, kind))
    event("ok" if got[0] == "ok" else "bad bool" if "bool" in got[2] else "bad device")
    if got[0] == "ok":
        assert_isolated(got[1])
        assert same(got, outcome(P.decode_batch, raw))  # the check left them as decoded
        # decoding again (now from the cached tables) gives equal but new dicts
        again = decode_both(raw)
        assert not {id(t) for t in got[1]} & {id(t) for t in again[1]}


@st.composite
def table_variant(draw: st.DrawFn, table: Table) -> Table:
    """Another table with the same counts (so only the bytes tell it apart), or any other."""
    how = draw(st.sampled_from(["code", "rotate", "rename", "other"]))
    if how == "code" and table.fields:
        code, name = table.fields[0]
        new = draw(st.sampled_from([c for c in CODE_SIZE if c != code]))
        return Table(table.devices, [(new, name), *table.fields[1:]])
    if how == "rotate" and len(table.devices) > 1:
        return Table(table.devices[1:] + table.devices[:1], table.fields)
    if how == "rename" and (table.devices[-1] + "b") not in table.devices:
        return Table([*table.devices[:-1], table.devices[-1] + "b"], table.fields)
    return draw(tables())


@st.composite
def batch_sequences(draw: st.DrawFn) -> list[bytes]:
    """Batches sharing byte-identical tables with different rows, then a batch with another
    table, then the first table again; with damaged batches and lying counts mixed in."""
    first = draw(tables())
    other = draw(table_variant(first))
    seq: list[bytes] = []

    def some_of(table: Table, lo: int, hi: int) -> None:
        for _ in range(draw(st.integers(lo, hi))):
            rows = draw(repetitive_rows(table))
            if draw(st.integers(0, 3)) == 0:
                rows = draw(damaged_rows(table, rows))
            seq.append(table.batch(rows))

    some_of(first, 2, 4)
    extra = draw(st.sampled_from(["none", "trailing", "truncated", "devices+1", "fields-1"]))
    rows = draw(repetitive_rows(first))
    if extra == "trailing":  # same tables, rows one byte too long
        seq.append(first.batch(rows) + b"\x00")
    elif extra == "truncated":  # cut inside the tables or the rows
        full = first.batch(rows)
        seq.append(full[: draw(st.integers(14, len(full) - 1))])
    elif extra == "devices+1":  # same table bytes, counts that read them differently
        seq.append(first.batch(rows, n_dev=len(first.devices) + 1))
    elif extra == "fields-1" and first.fields:
        seq.append(first.batch(rows, n_fld=len(first.fields) - 1))
    some_of(other, 1, 2)
    some_of(first, 1, 3)
    return seq


@settings(REPEAT_SETTINGS, max_examples=150)
@given(batch_sequences(), st.sampled_from(["bytes", "bytearray", "mv", "reused"]))
def test_batches_sharing_tables_decode_identically(seq: list[bytes], kind: str) -> None:
    decode_both(RESET)
    scratch = bytearray()
    kept: list[tuple[bytes, list[dict[str, Any]]]] = []
    for raw in seq:
        if kind == "reused":
            # one receive buffer overwritten in place, as a reader reusing its buffer would
            if len(scratch) == len(raw):
                scratch[:] = raw
            else:
                scratch = bytearray(raw)
            buf: bytes | bytearray | memoryview = scratch
        else:
            buf = as_kind(raw, kind)
        got = decode_both(buf)
        if got[0] == "ok":
            kept.append((raw, got[1]))
    # Later batches (cache hits and misses) changed nothing in earlier results, and no dict
    # is shared between any two ticks of any of the batches.
    everything = [t for _, ticks in kept for t in ticks]
    assert_isolated(everything)
    for raw, ticks in kept:
        assert same(ticks, P.decode_batch(raw))
    # Writing into the results does not reach the decoder's cached tables.
    for _, ticks in kept:
        for t in ticks:
            t["device"] = t["type"] = None
            t["data"]["\x00extra"] = 1
    for raw in seq:
        decode_both(raw)


@pytest.mark.skipif(C is P, reason="compiled tick codec not in use")
def test_uncached_big_table_alternating_with_a_small_one() -> None:
    """Tables past the cache's size limit are parsed every time, and alternating them with a
    cached one gives the same results as the twin."""
    big = Table([chr(0x41 + i % 26) * 200 + str(i) for i in range(60)], [(BOOL, "on")])
    small = Table(["d"], [(BOOL, "on"), (I32, "n")])
    for i in range(4):
        rows_big = [struct.pack("<HQd?", (i + k) % 60, k, 1.0, bool(k & 1)) for k in range(70)]
        decode_both(big.batch(rows_big))
        rows_small = [struct.pack("<HQd?i", 0, k, 1.0, True, i) for k in range(3)]
        decode_both(small.batch(rows_small))
        same_row = struct.pack("<HQd?", 7, 4, 1.0, True)
        bad = [same_row] * 5 + [same_row[:-1] + b"\x07"]  # repeats, then a bad bool
        assert decode_both(big.batch(bad))[3] == 4


# --- device ids interned across batches -------------------------------------------------------
#
# The compiled decoder keeps the str of every device id it has seen, keyed by its bytes, and
# finds an id repeated within one table by stamping it with the table's number. Batches of a
# firehose name changing subsets of a population, so these sequences draw subsets, repeat ids
# inside a table, and spoil some ids' UTF-8 between cache hits.

POPULATION = [f"dev-{i:04d}" for i in range(64)] + ["\u00e9t\u00e9", "\u2603-1", "a"]


def device_table_batch(ids: list[bytes]) -> bytes:
    """A one-field batch naming `ids` (raw bytes, possibly invalid), one row per id."""
    head = struct.pack("<4sBBHHI", b"\xc1TKB", 1, 0, len(ids), 1, len(ids))
    table = b"".join(bytes([len(b)]) + b for b in ids) + bytes([I32, 1]) + b"n"
    rows = b"".join(struct.pack("<HQdi", k, k + 1, 0.5, k) for k in range(len(ids)))
    return head + table + rows


@st.composite
def device_subsets(draw: st.DrawFn) -> list[bytes]:
    ids = [d.encode() for d in draw(st.lists(st.sampled_from(POPULATION), max_size=12))]
    how = draw(st.sampled_from(["as is", "as is", "repeat", "bad utf8", "empty", "cut"]))
    if how == "repeat" and ids:
        ids.insert(draw(st.integers(0, len(ids))), draw(st.sampled_from(ids)))
    elif how == "bad utf8" and ids:
        k = draw(st.integers(0, len(ids) - 1))
        ids[k] = ids[k][:-1] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"]))
    elif how == "empty":
        ids.insert(draw(st.integers(0, len(ids))), b"")
    raw = device_table_batch(ids)
    if how == "cut":
        raw = raw[: draw(st.integers(14, len(raw)))]
    return [raw]


@settings(REPEAT_SETTINGS, max_examples=200)
@given(st.lists(device_subsets(), min_size=1, max_size=8))
def test_device_subsets_decode_identically(seq: list[list[bytes]]) -> None:
    for (raw,) in seq:
        decode_both(raw)
        decode_both(raw)  # the same table again: the cached-table path


def test_repeated_device_found_after_cache_hits() -> None:
    ids = [b"dev-0001", b"dev-0002", b"dev-0003"]
    decode_both(device_table_batch(ids))  # all three now cached
    for dup in ([*ids, b"dev-0002"], [b"x", b"dev-0003", b"dev-0003"], [b"y", b"y"]):
        got = decode_both(device_table_batch(dup))
        assert got[0] == "err" and "repeats an earlier device id" in got[2], got


def test_device_population_bigger_than_the_cache() -> None:
    """More distinct ids than the compiled cache keeps (it empties itself): same results, and
    a repeat inside one table is still found on either side of the emptying."""
    population = [f"sensor-{i:05d}".encode() for i in range(12_000)]
    for start in range(0, len(population), 1500):
        ids = population[start : start + 1500]
        got = decode_both(device_table_batch(ids))
        assert got[0] == "ok" and [t["device"] for t in got[1]] == [i.decode() for i in ids]
        got = decode_both(device_table_batch([*ids[:700], ids[3], *ids[700:]]))
        assert got[0] == "err" and got[2] == "device 700 repeats an earlier device id"


# --- what the dicts are -----------------------------------------------------------------------


def test_decoded_dicts_track_like_the_twin() -> None:
    """The garbage collector sees the compiled decoder's dicts exactly as the twin's: tick
    dicts (they hold a dict) tracked, number-only data dicts untracked, at every row."""
    import gc

    rows = [struct.pack("<HQdd", k % 2, k + 1, 0.5, float(k % 3)) for k in range(6)]
    raw = Table(["a", "b"], [(F64, "x")]).batch(rows)
    got = decode_both(raw)[1]
    want = P.decode_batch(raw)
    assert [gc.is_tracked(t) for t in got] == [gc.is_tracked(t) for t in want] == [True] * 6
    assert [gc.is_tracked(t["data"]) for t in got] == [gc.is_tracked(t["data"]) for t in want]
    # A cycle made through a decoded tick is collected.
    t = got[0]
    t["data"]["self"] = t
    del got, t
    assert gc.collect() >= 2


def test_decoded_dicts_behave_as_dicts() -> None:
    """Values stored straight into the dicts' entries read back through every dict
    operation: lookup, iteration, update, deletion, copy, comparison and resizing."""
    rows = [struct.pack("<HQdddd", 0, k + 1, 1.5 + k, k, -k, 2 * k) for k in range(4)]
    raw = Table(["dev"], [(F64, "x"), (F64, "y"), (F64, "z")]).batch(rows)
    ticks = decode_both(raw)[1]
    for k, t in enumerate(ticks):
        assert t == {
            "type": "tick",
            "device": "dev",
            "position": k + 1,
            "ts": 1.5 + k,
            "data": {"x": float(k), "y": -float(k), "z": 2.0 * k},
        }
        d = t["data"]
        assert d.get("x") == float(k) and "y" in d and next(iter(d.items())) == ("x", float(k))
        del d["x"]
        d.update({f"k{i}": i for i in range(40)})  # forces a resize of the copied table
        assert d["k39"] == 39 and d["y"] == -float(k) and "x" not in d
        assert dict(t) == t and t.copy() == t
        t.pop("ts")
        assert list(t) == ["type", "device", "position", "data"]


@pytest.mark.skipif(C is P, reason="compiled tick codec not in use")
def test_direct_stores_proven_on_this_interpreter() -> None:
    """On the CPython versions the layout mirror was written for, the import-time proof
    passed, so the fast path is the one being tested here."""
    import platform
    import sys

    expected = platform.python_implementation() == "CPython" and (3, 11) <= sys.version_info < (
        3,
        15,
    )
    if hasattr(sys, "_is_gil_enabled") and not sys._is_gil_enabled():
        expected = False
    assert C.DIRECT_STORES is expected


def test_decode_reentered_from_finalizers_during_a_decode() -> None:
    """A collection can run inside a decode (every dict it makes is a GC allocation), and a
    finalizer can decode other batches right then: with a collection forced every few
    allocations and finalizers that decode batches with other device and field tables (and
    empty the device cache), every outer and inner result still equals the twin's."""
    import gc

    population = [f"node-{i:05d}".encode() for i in range(6000)]
    other = [device_table_batch(population[k : k + 900]) for k in range(0, 6000, 900)]
    inner: list[tuple[str, bytes, Any]] = []
    during = [False, 0]  # inside an outer decode; inner decodes seen there

    class Decodes:
        def __init__(self, raw: bytes) -> None:
            self.raw = raw
            self.me = self  # a cycle: only the collector frees it

        def __del__(self) -> None:
            during[1] += during[0]
            for name in ("decode_batch", "decode_batch_rows"):
                inner.append((name, self.raw, outcome(getattr(C, name), self.raw)))

    rows = [struct.pack("<HQdd", k % 7, k + 1, 0.5, float(k % 3)) for k in range(300)]
    outer = Table([f"dev-{i}" for i in range(7)], [(F64, "x")]).batch(rows)
    want = outcome(P.decode_batch, outer)
    want_rows = outcome(P.decode_batch_rows, outer)
    old = gc.get_threshold()
    gc.set_threshold(5, 1, 1)
    try:
        for k in range(40):
            Decodes(other[k % len(other)])
            during[0] = True
            got, got_rows = outcome(C.decode_batch, outer), outcome(C.decode_batch_rows, outer)
            during[0] = False
            assert same(got, want) and same(got_rows, want_rows)
    finally:
        gc.set_threshold(*old)
        gc.collect()
    assert during[1] > 0, "no finalizer ran inside a decode: the test tests nothing"
    for name, raw, got in inner:
        assert got[0] == "ok" and same(got, outcome(getattr(P, name), raw))


# --- text_kind: the envelope check of raw text ---------------------------------------------------

ENVELOPE_PIECES = [
    '{"type":"',
    "tick",
    '"',
    "ticks",
    "error",
    "{",
    '"type"',
    ":",
    " ",
    "é",
    "😀",
    "\x00",
]


@SETTINGS
@given(st.lists(st.one_of(st.sampled_from(ENVELOPE_PIECES), st.text(max_size=3)), max_size=6))
def test_text_kind_agrees(pieces: list[str]) -> None:
    """Compiled and pure text_kind give the same kind for text of any character width,
    mostly made of the envelope's own pieces (the prefixes they must tell apart)."""
    text = "".join(pieces)
    got = assert_agree("text_kind", text)
    want = 0 if not text.startswith('{"type":"') else 1 if text.startswith('{"type":"tick"') else 2
    assert got == ("ok", want)


def test_text_kind_on_the_protocol_messages() -> None:
    """Every server message form of docs/protocol.md: ticks are 1, the rest 2; application
    text (any JSON without the exact envelope, or none) is 0."""
    for text, want in [
        ('{"type":"tick","device":"d","position":1,"ts":0.5,"data":{}}', 1),
        ('{"type":"welcome","version":1}', 2),
        ('{"type":"error","code":"input"}', 2),
        ('{"type":"ticker"}', 2),
        ('{"type": "tick"}', 0),
        ('{ "type":"tick"}', 0),
        ('{"kind":"tick"}', 0),
        ("hello", 0),
        ("", 0),
    ]:
        assert assert_agree("text_kind", text) == ("ok", want), text
