"""iotcommute.payload: JSON helpers, the tick-batch vectors and the encoder, on both codecs.

The batch vectors in tests/vectors/ticks_v1.json are frozen bytes: both the compiled codec and
the pure twin must decode them to exactly the listed ticks (types included) and must fail on
the corrupt ones with exactly the listed message and position.
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
import tracemalloc
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from iotcommute import payload
from iotcommute._env import NO_EXTENSIONS
from iotcommute.exceptions import DecodeError, InputError, IotCommuteError
from iotcommute.payload import _ticks_py
from tests.compiled import compiled, twins
from tests.payload.exact import same

VECTORS = json.loads(
    (Path(__file__).parent.parent / "vectors" / "ticks_v1.json").read_text("utf-8")
)


_C = compiled("iotcommute.payload._ticks")
IMPLS = twins(_ticks_py, "iotcommute.payload._ticks")


# --- JSON -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview, str])
def test_loads_accepts_every_buffer_kind(kind: Any) -> None:
    raw = b'{"type":"tick","device":"d","position":3,"ts":1.5,"data":{"t":21.5}}'
    buf = raw.decode() if kind is str else kind(raw)
    assert payload.loads(buf) == {
        "type": "tick",
        "device": "d",
        "position": 3,
        "ts": 1.5,
        "data": {"t": 21.5},
    }


@pytest.mark.parametrize("bad", [b"", b"{", b'{"a":1', b"\xff\xfe", b"[1,]", b"nope"])
def test_loads_bad_json_raises_decode_error(bad: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        payload.loads(bad)
    assert isinstance(info.value, IotCommuteError)
    assert str(info.value).startswith("invalid JSON")


def test_loads_error_never_echoes_the_document() -> None:
    doc = b'{"token": "sekrit-0123456789", oops}'
    with pytest.raises(DecodeError) as info:
        payload.loads(doc)
    assert "sekrit" not in str(info.value) and "sekrit" not in repr(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_dumps_compact_bytes_and_input_error() -> None:
    out = payload.dumps({"type": "publish", "data": {"t": 1.5, "on": True, "name": "é"}})
    assert isinstance(out, bytes)
    assert out == '{"type":"publish","data":{"t":1.5,"on":true,"name":"é"}}'.encode()
    with pytest.raises(InputError):
        payload.dumps({"x": object()})


def test_stdlib_fallback_behaves_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """Switch the module to its no-orjson branch (the implementation, not a socket, is swapped)."""
    monkeypatch.setattr(payload, "_orjson_loads", None)
    monkeypatch.setattr(payload, "_JSONError", ValueError)
    monkeypatch.setattr(payload, "_JSONEncodeError", TypeError)
    raw = b'{"a":[1,2.5,true,null],"b":"\xc3\xa9"}'
    assert payload.loads(memoryview(raw)) == {"a": [1, 2.5, True, None], "b": "é"}
    assert payload.loads(bytearray(raw)) == payload.loads(raw.decode())
    for bad in (b"{", b"\xff", b""):
        with pytest.raises(DecodeError):
            payload.loads(bad)
    assert payload.dumps({"b": "é", "a": [1]}) == '{"b":"é","a":[1]}'.encode()
    with pytest.raises(InputError):
        payload.dumps({1j: 1})


def test_selector_exports() -> None:
    impl = _C if _C is not None and not NO_EXTENSIONS else _ticks_py
    assert payload.SPEEDUPS is (impl is _C)
    assert payload.decode_batch is impl.decode_batch
    assert payload.encode_batch is impl.encode_batch
    assert payload.JSON_BACKEND in ("orjson", "json")


# --- vectors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("vec", VECTORS["valid"], ids=lambda v: v["name"])
def test_valid_vector_decodes(impl: ModuleType, vec: dict[str, Any]) -> None:
    raw = bytes.fromhex(vec["hex"])
    assert impl.is_batch(raw)
    rows = [(t["device"], t["position"], t["ts"], *t["data"].values()) for t in vec["ticks"]]
    for buf in (raw, bytearray(raw), memoryview(raw)):
        assert same(impl.decode_batch(buf), vec["ticks"])
        names, got_rows = impl.decode_batch_rows(buf)
        assert same(got_rows, rows)
        assert not rows or names == tuple(vec["ticks"][0]["data"])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("vec", VECTORS["valid"], ids=lambda v: v["name"])
def test_valid_vector_encodes_byte_exact(impl: ModuleType, vec: dict[str, Any]) -> None:
    assert impl.encode_batch(vec["ticks"], vec["types"]).hex() == vec["hex"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("vec", VECTORS["valid"], ids=lambda v: v["name"])
def test_json_twin_decodes_to_the_same_tick(impl: ModuleType, vec: dict[str, Any]) -> None:
    ticks = impl.decode_batch(bytes.fromhex(vec["hex"]))
    assert len(ticks) == len(vec["json"])
    for tick, text in zip(ticks, vec["json"]):
        assert same(payload.loads(text), tick)
        assert same(payload.loads(payload.dumps(tick)), tick)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("vec", VECTORS["corrupt"], ids=lambda v: v["name"])
def test_corrupt_vector_raises_exact_error(impl: ModuleType, vec: dict[str, Any]) -> None:
    raw = bytes.fromhex(vec["hex"])
    for decode in (impl.decode_batch, impl.decode_batch_rows):
        with pytest.raises(DecodeError) as info:
            decode(raw)
        assert type(info.value) is DecodeError
        assert info.value.message == vec["message"]
        assert info.value.position == vec["position"]


def test_vectors_cover_every_documented_check() -> None:
    names = {v["name"] for v in VECTORS["corrupt"]}
    for needed in (
        "truncated_header",
        "bad_magic",
        "version_2",
        "reserved_flag",
        "too_many_ticks",
        "ticks_count_exceeds_buffer",
        "truncated_rows",
        "trailing_byte",
        "device_bad_utf8",
        "field_unknown_type",
        "row_device_index_out_of_range",
        "row_bool_not_0_or_1",
    ):
        assert needed in names


# --- API details -----------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_is_batch(impl: ModuleType) -> None:
    assert impl.is_batch(b"\xc1TKB\x01")
    assert impl.is_batch(memoryview(b"\xc1TKB"))
    assert not impl.is_batch(b'{"type":"tick"}')
    assert not impl.is_batch(b"\xc1TK")
    assert not impl.is_batch(b"")


@pytest.mark.parametrize("impl", IMPLS)
def test_constants_match_the_twin(impl: ModuleType) -> None:
    for name in ("MAGIC", "VERSION", "HEADER_SIZE", "MAX_TICKS", "MAX_DEVICES", "MAX_FIELDS"):
        assert getattr(impl, name) == getattr(_ticks_py, name)
    assert impl.FIELD_TYPES == _ticks_py.FIELD_TYPES


@pytest.mark.parametrize("impl", IMPLS)
def test_roundtrip_shares_device_strings_and_infers_types(impl: ModuleType) -> None:
    ticks = [
        {"device": "dev-1", "ts": 1, "data": {"a": 1, "b": 2.5, "c": True}},
        {"device": "dev-2", "position": 9, "ts": 2.5, "data": {"c": False, "b": 3, "a": -4}},
        {"device": "dev-1", "position": 10, "ts": 3.0, "data": {"a": 5, "b": 1.0, "c": True}},
    ]
    out = impl.decode_batch(impl.encode_batch(ticks))
    assert [t["device"] for t in out] == ["dev-1", "dev-2", "dev-1"]
    assert out[0]["device"] is out[2]["device"]  # one str object per table entry
    assert [t["position"] for t in out] == [0, 9, 10]  # missing position encodes as 0
    assert same(out[0]["ts"], 1.0)
    assert same(
        [t["data"] for t in out],
        [
            {"a": 1, "b": 2.5, "c": True},
            {"a": -4, "b": 3.0, "c": False},  # a mixed int/float field becomes f64
            {"a": 5, "b": 1.0, "c": True},
        ],
    )
    assert all(t["type"] == "tick" for t in out)


@pytest.mark.parametrize("impl", IMPLS)
def test_f32_rounds_like_struct(impl: ModuleType) -> None:
    ticks = [{"device": "d", "ts": 0.0, "data": {"x": 0.1}}]
    (tick,) = impl.decode_batch(impl.encode_batch(ticks, {"x": "f32"}))
    assert tick["data"]["x"] == struct.unpack("<f", struct.pack("<f", 0.1))[0]
    assert tick["data"]["x"] != 0.1


BAD_INPUTS: list[tuple[str, Any, Any]] = [
    ("not a mapping", [1], None),
    ("no device", [{"ts": 1.0, "data": {}}], None),
    ("empty device", [{"device": "", "ts": 1.0, "data": {}}], None),
    ("long device", [{"device": "x" * 256, "ts": 1.0, "data": {}}], None),
    ("surrogate device", [{"device": "\ud800", "ts": 1.0, "data": {}}], None),
    ("negative position", [{"device": "d", "position": -1, "ts": 1.0, "data": {}}], None),
    ("huge position", [{"device": "d", "position": 2**64, "ts": 1.0, "data": {}}], None),
    ("bool position", [{"device": "d", "position": True, "ts": 1.0, "data": {}}], None),
    ("float position", [{"device": "d", "position": 1.0, "ts": 1.0, "data": {}}], None),
    ("no ts", [{"device": "d", "data": {}}], None),
    ("str ts", [{"device": "d", "ts": "1", "data": {}}], None),
    ("nan ts", [{"device": "d", "ts": math.nan, "data": {}}], None),
    ("huge int ts", [{"device": "d", "ts": 10**400, "data": {}}], None),
    ("no data", [{"device": "d", "ts": 1.0}], None),
    ("list data", [{"device": "d", "ts": 1.0, "data": [1]}], None),
    ("non-str field", [{"device": "d", "ts": 1.0, "data": {1: 1}}], None),
    ("empty field", [{"device": "d", "ts": 1.0, "data": {"": 1}}], None),
    ("str value", [{"device": "d", "ts": 1.0, "data": {"a": "x"}}], None),
    ("none value", [{"device": "d", "ts": 1.0, "data": {"a": None}}], None),
    ("inf value", [{"device": "d", "ts": 1.0, "data": {"a": math.inf}}], None),
    ("i64 overflow", [{"device": "d", "ts": 1.0, "data": {"a": 2**63}}], None),
    (
        "other shape",
        [
            {"device": "d", "ts": 1.0, "data": {"a": 1}},
            {"device": "d", "ts": 1.0, "data": {"b": 1}},
        ],
        None,
    ),
    (
        "more fields",
        [
            {"device": "d", "ts": 1.0, "data": {"a": 1}},
            {"device": "d", "ts": 1.0, "data": {"a": 1, "b": 2}},
        ],
        None,
    ),
    (
        "bool then int",
        [
            {"device": "d", "ts": 1.0, "data": {"a": True}},
            {"device": "d", "ts": 1.0, "data": {"a": 1}},
        ],
        None,
    ),
    (
        "float then bool",
        [
            {"device": "d", "ts": 1.0, "data": {"a": 1.5}},
            {"device": "d", "ts": 1.0, "data": {"a": False}},
        ],
        None,
    ),
    ("unknown type", [{"device": "d", "ts": 1.0, "data": {"a": 1}}], {"a": "u8"}),
    ("bool as i64", [{"device": "d", "ts": 1.0, "data": {"a": True}}], {"a": "i64"}),
    ("int as bool", [{"device": "d", "ts": 1.0, "data": {"a": 1}}], {"a": "bool"}),
    ("float as i32", [{"device": "d", "ts": 1.0, "data": {"a": 1.5}}], {"a": "i32"}),
    ("i32 overflow", [{"device": "d", "ts": 1.0, "data": {"a": 2**31}}], {"a": "i32"}),
    ("f32 overflow", [{"device": "d", "ts": 1.0, "data": {"a": 1e39}}], {"a": "f32"}),
    (
        "too many fields",
        [{"device": "d", "ts": 1.0, "data": {f"f{i}": 1 for i in range(256)}}],
        None,
    ),
    ("too many devices", [{"device": f"d{i}", "ts": 1.0, "data": {}} for i in range(4097)], None),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("ticks", "types"), [p[1:] for p in BAD_INPUTS], ids=[p[0] for p in BAD_INPUTS]
)
def test_encode_rejects_what_the_format_cannot_carry(
    impl: ModuleType, ticks: Any, types: Any
) -> None:
    with pytest.raises(InputError) as info:
        impl.encode_batch(ticks, types)
    if impl is not _ticks_py:
        with pytest.raises(InputError) as twin:
            _ticks_py.encode_batch(ticks, types)
        assert info.value.message == twin.value.message


@pytest.mark.parametrize("impl", IMPLS)
def test_encode_limits_ticks(impl: ModuleType) -> None:
    tick = {"device": "d", "ts": 1.0, "data": {}}
    assert len(impl.decode_batch(impl.encode_batch([tick] * impl.MAX_TICKS))) == impl.MAX_TICKS
    with pytest.raises(InputError):
        impl.encode_batch([tick] * (impl.MAX_TICKS + 1))


@pytest.mark.parametrize("impl", IMPLS)
def test_decode_rejects_non_buffers(impl: ModuleType) -> None:
    with pytest.raises(TypeError):
        impl.decode_batch("\xc1TKB")  # text is never a batch; a str is a caller bug


class _LyingMapping(Mapping[str, Any]):
    """len() says 1 but iteration yields 300 keys: the encoder must not trust len()."""

    def __getitem__(self, key: str) -> Any:
        return 1

    def __iter__(self) -> Iterator[str]:
        return iter([f"f{i}" for i in range(300)])

    def __len__(self) -> int:
        return 1


@pytest.mark.parametrize("impl", IMPLS)
def test_encode_bounds_fields_even_when_len_lies(impl: ModuleType) -> None:
    with pytest.raises(InputError) as info:
        impl.encode_batch([{"device": "d", "ts": 1.0, "data": _LyingMapping()}])
    assert "at most 255 fields" in info.value.message


@pytest.mark.parametrize("impl", IMPLS)
def test_decode_does_not_leak_on_success_or_error(impl: ModuleType) -> None:
    """Reference leaks in the C row loop would show up as memory that is never freed."""
    good = bytes.fromhex(VECTORS["valid"][2]["hex"])
    bad = [bytes.fromhex(v["hex"]) for v in VECTORS["corrupt"]]

    def churn(n: int) -> None:
        for _ in range(n):
            impl.decode_batch(good)
            impl.decode_batch_rows(good)
            for raw in bad:
                with contextlib.suppress(DecodeError):
                    impl.decode_batch(raw)
                with contextlib.suppress(DecodeError):
                    impl.decode_batch_rows(raw)

    churn(50)  # warm caches (struct layouts, freelists)
    tracemalloc.start()
    try:
        churn(50)
        before = tracemalloc.get_traced_memory()[0]
        churn(1000)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # 1000 rounds of ~50 decodes: even one leaked float per round would be 24 kB
    assert grown < 16_000, grown


def test_encode_batches_splits_by_shape_and_keeps_order() -> None:
    ticks = [
        {"device": "a", "position": 1, "ts": 1.0, "data": {"t": 1.5}},
        {"device": "b", "position": 2, "ts": 2.0, "data": {"t": 2.5}},
        {"device": "c", "position": 3, "ts": 3.0, "data": {"on": True}},
        {"device": "a", "position": 4, "ts": 4.0, "data": {"t": 3.5}},
        {"device": "a", "position": 5, "ts": 5.0, "data": {"t": 4.5}},
        {"device": "a", "position": 6, "ts": 6.0, "data": {"t": 5.5}},
        {"device": "a", "position": 7, "ts": 7.0, "data": {"t": 6}},  # int: a new batch
    ]
    batches = payload.encode_batches(ticks, max_ticks=2)
    assert [len(payload.decode_batch(b)) for b in batches] == [2, 1, 2, 1, 1]
    flat = [t for b in batches for t in payload.decode_batch(b)]
    assert [t["position"] for t in flat] == [1, 2, 3, 4, 5, 6, 7]
    assert flat[2]["data"] == {"on": True}
    assert same(flat[6]["data"], {"t": 6})
    assert payload.encode_batches([]) == []
    with pytest.raises(InputError):
        payload.encode_batches(ticks, max_ticks=0)
    with pytest.raises(InputError):
        payload.encode_batches([{"device": "a", "ts": 1.0, "data": {"t": "x"}}])


@pytest.mark.parametrize("backend", ["default", "stdlib"])
def test_data_integers_beyond_int64_are_refused_by_either_json_backend(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """orjson encodes 2**63..2**64-1 and stdlib json any int: the protocol carries neither
    (docs/protocol.md §5), so publish/command data with one is an InputError here."""
    from iotcommute import payload as pl

    if backend == "stdlib":
        monkeypatch.setattr(pl, "_orjson_loads", None)
    ok = {"a": 2**63 - 1, "b": [-(2**63)], "s": "12345678901234567890123", "f": 1e30}
    assert pl.loads(pl.dumps_int64(ok)) == ok
    for wide in (2**63, 2**64 - 1, -(2**63) - 1, 2**70):
        with pytest.raises(InputError):
            pl.dumps_int64({"x": {"y": [1, wide]}})
