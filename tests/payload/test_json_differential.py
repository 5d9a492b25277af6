"""The compiled JSON reader (`_ticks.loads_json`) and its pure twin must agree on every input.

The twin is `_ticks_py.loads_json` (orjson's loads, json's without orjson). The compiled
reader parses the common shape of a tick message itself and hands everything else to the
twin, so for every document both give the same value (types, float bits, dict key order,
lists for arrays, which dicts the garbage collector tracks) or the same error (class,
message, position). The documents here: random JSON values serialised in random layouts,
hand-built number strings valid and invalid (around the 18/19-digit integer limit and the
fast-path float limits), tick messages as the firehose sends them and random damage to them,
sequences aimed at the reader's string and key-template caches (mutated results, key orders,
duplicate keys, more strings and shapes than the caches hold, colliding strings), finalizers
that parse while a parse is under way, non-str inputs, and a leak check.
Without the compiled module (not built, or built without `loads_json`) every case skips,
unless IOTCOMMUTE_REQUIRE_EXTENSIONS=1 (then they fail).
"""

from __future__ import annotations

import gc
import itertools
import json
import math
import re
import string
import sys
import tracemalloc
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from benchmarks.firehose import make_small_tick, make_tick, tick_json
from iotcommute.payload import _ticks_py
from tests.compiled import built, compiled, skip_unless_built
from tests.payload.exact import same

_MOD = compiled("iotcommute.payload._ticks")
# A build from before loads_json existed counts as not built for these cases.
C: ModuleType | None = _MOD if hasattr(_MOD, "loads_json") else None
P: Callable[[Any], Any] = _ticks_py.loads_json
pytestmark = skip_unless_built(C)

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def cloads(doc: Any) -> Any:
    return built(C).loads_json(doc)


# --- the comparison ---------------------------------------------------------------------------


def tracking(value: Any) -> tuple[bool, ...]:
    """gc.is_tracked of every dict and list in `value`, depth first."""
    out: list[bool] = []

    def walk(v: Any) -> None:
        if type(v) is dict:
            out.append(gc.is_tracked(v))
            for item in v.values():
                walk(item)
        elif type(v) is list:
            out.append(gc.is_tracked(v))
            for item in v:
                walk(item)

    walk(value)
    return tuple(out)


def outcome(fn: Callable[[Any], Any], doc: Any) -> tuple[Any, ...]:
    """What a call did: its value and the GC tracking of its containers, or its error."""
    try:
        value = fn(doc)
    except Exception as exc:  # the twin's own error is a result to compare
        return ("err", type(exc), str(exc), getattr(exc, "pos", None))
    return ("ok", value, tracking(value))


def check(doc: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """Both outcomes for `doc`, asserted identical (compiled first, then the twin)."""
    got = outcome(cloads, doc)
    want = outcome(P, doc)
    assert same(got, want), f"doc={doc!r}\n compiled={got!r}\n twin={want!r}"
    return got, want


def check_value(doc: Any) -> Any:
    """The compiled value for `doc` (asserted equal to the twin's, which must not raise)."""
    got, _ = check(doc)
    assert got[0] == "ok", (doc, got)
    return got[1]


@contextmanager
def twin_calls() -> Iterator[list[Any]]:
    """Record the documents the compiled reader hands to its twin (`_json_twin`, a module
    global read at call time), restoring the twin afterwards."""
    names = built(C).__dict__  # the stub leaves the private name out
    assert "_json_twin" in names, "the compiled reader's twin is no longer _json_twin"
    real = names["_json_twin"]
    calls: list[Any] = []

    def spy(doc: Any) -> Any:
        calls.append(doc)
        return real(doc)

    names["_json_twin"] = spy
    try:
        yield calls
    finally:
        names["_json_twin"] = real


def test_the_comparison_can_fail() -> None:
    """Guard against a vacuous comparison: it tells apart what the reader must not confuse."""
    assert not same(outcome(P, "1"), outcome(P, "1.0"))
    assert not same(outcome(P, "0.0"), outcome(P, "-0.0"))
    assert not same(outcome(P, "1"), outcome(P, "true"))
    assert not same(outcome(P, '{"a":1,"b":2}'), outcome(P, '{"b":2,"a":1}'))
    assert not same(outcome(P, "[1]"), ("ok", (1,), (True,)))
    assert not same(outcome(P, "0.1"), outcome(P, "0.10000000000000002"))
    assert not same(outcome(P, "[1,]"), outcome(P, "[1,,]"))  # same class, other message
    untracked = {"a": 1}
    assert gc.is_tracked(untracked) is False
    assert not same(("ok", untracked, tracking(untracked)), ("ok", {"a": 1}, (True,)))


def mantissas(doc: str) -> list[str]:
    """The significant digits of every decimal in `doc` (a document without strings that
    look like numbers)."""
    found = re.findall(r"-?(\d+)\.(\d+)(?:[eE][-+]?\d+)?", doc)
    return [(whole + frac).lstrip("0") or "0" for whole, frac in found]


def test_ticks_are_read_without_the_twin_and_the_rest_by_it() -> None:
    """The differential cases test the compiled reader, not the twin twice: tick messages
    are read without calling the twin; every kind of input outside the subset calls it
    exactly once with the document itself."""
    ticks = [tick_json(i).decode() for i in range(0, 5000, 37)]
    ticks += [json.dumps(make_small_tick(i)) for i in range(50)]
    with twin_calls() as calls:
        for doc in ticks:
            check_value(doc)
    # json.dumps writes some timestamps with 17 significant digits: those (only) are the twin's
    long = [doc for doc in ticks if any(int(m) > 2**53 for m in mantissas(doc))]
    assert calls == long and len(long) < len(ticks) // 10
    outside = [
        b'{"a":1}',
        bytearray(b"[1]"),
        memoryview(b"2"),
        type("S", (str,), {})("[3]"),
        '{"a":"\u00e9"}',
        '{"a":"\U0001f600"}',
        '{"a":"b\\"c"}',
        '{"a":"b\\u0041"}',
        '{"a":"b\tc"}',
        "1234567890123456789",
        "-1234567890123456789",
        "9007199254740993.0",
        "1e23",
        "1e-23",
        "1.5e400",
        json.dumps({f"k{j}": j for j in range(65)}),
        "[" * 33 + "]" * 33,
        '{"a":' * 33 + "1" + "}" * 33,
        '{"a":1,}',
        "[1] x",
        "",
        "nul",
        "NaN",
        1,
        None,
    ]
    for doc in outside:
        with twin_calls() as calls:
            check(doc)
        assert len(calls) == 1 and calls[0] is doc, (doc, calls)


# --- 1. random JSON values in random layouts --------------------------------------------------

EDGE_INTS = [
    0,
    1,
    -1,
    10**17 - 1,
    10**17,
    10**18 - 1,
    10**18,
    -(10**18) + 1,
    -(10**18),
    10**19 - 1,
    10**19,
    -(10**19) + 1,
    2**53,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64 - 1,
    2**64,
    -(2**64),
    10**30,
]
ints = st.one_of(
    st.integers(),
    st.integers(-(2**64), 2**64),
    st.integers(-(10**19), 10**19),
    st.sampled_from(EDGE_INTS),
    st.sampled_from(EDGE_INTS).flatmap(lambda v: st.integers(v - 3, v + 3)),
)
# Floats with few significant digits (the reader's fast path) and any finite float.
short_floats = st.builds(
    lambda m, e: float(f"{m}e{e}"), st.integers(-(2**54), 2**54), st.integers(-30, 30)
)
floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    short_floats,
    st.sampled_from([0.0, -0.0, 5e-324, 1.7976931348623157e308, 2.0**53, 0.1, 1e22, 1e23]),
)
SAFE = string.ascii_letters + string.digits + " -_.:/+#@"
texts = st.one_of(
    st.text(alphabet=SAFE, max_size=40),
    st.text(max_size=12),
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=12),
    st.sampled_from(['"', "\\", "a\\b", 'q"q', "\x00", "\x1f", "\x7f", "\u00e9", "\u2028", ""]),
)
keys = st.one_of(
    st.sampled_from(["type", "device", "position", "ts", "data", "a", "b", "x" * 32, "y" * 33]),
    texts,
)
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(keys, inner, max_size=8)),
    max_leaves=40,
)
layouts = st.fixed_dictionaries(
    {
        "separators": st.sampled_from([(",", ":"), (", ", ": "), (" ,", " :"), (",\n", ":\t")]),
        "indent": st.sampled_from([None, None, 0, 1, 2, "\t", "\r\n "]),
        "ensure_ascii": st.booleans(),
        "sort_keys": st.booleans(),
    }
)
padding = st.text(alphabet=" \t\r\n", max_size=3)


@settings(SETTINGS, max_examples=500)
@given(json_values, layouts, padding, padding)
def test_random_values_in_random_layouts(
    value: Any, layout: dict[str, Any], before: str, after: str
) -> None:
    doc = before + json.dumps(value, **layout) + after
    with twin_calls() as calls:
        check(doc)
    event("twin" if calls else "compiled")


@settings(SETTINGS, max_examples=150)
@given(json_values)
def test_random_values_as_bytes_and_str_subclasses(value: Any) -> None:
    """Non-str input goes to the twin: bytes, bytearray, memoryview, a str subclass."""
    doc = json.dumps(value, ensure_ascii=False)
    raw = doc.encode()

    class Text(str):
        pass

    for form in (raw, bytearray(raw), memoryview(raw), Text(doc), doc):
        check(form)


def test_nesting_and_width_limits() -> None:
    """Either side of the reader's depth (32) and width (64 items) limits, and past them."""
    for depth in range(28, 37):
        check("[" * depth + "]" * depth)
        check("[" * depth + "1" + "]" * depth)
        check('{"k":' * depth + "{}" + "}" * depth)
        check('{"k":[' * (depth // 2) + "0.5" + "]}" * (depth // 2))
        check("[" * depth + "]" * (depth - 1))  # unclosed
    for width in (1, 5, 6, 63, 64, 65, 200):
        obj = {f"w{j}": j for j in range(width)}
        check(json.dumps(obj))
        check(json.dumps(obj))  # again: the template path
        check(json.dumps([obj, obj]))
        check(json.dumps(list(range(width))))
    check(json.dumps(list(range(5000))))
    check(json.dumps([{"a": [{}], "b": []}] * 100))


# --- 2. number strings built by hand -----------------------------------------------------------

digits = st.text(alphabet="0123456789", max_size=25)


@st.composite
def number_texts(draw: st.DrawFn) -> str:
    """A number as text: sign, integer part, fraction, exponent; often invalid."""
    sign = draw(st.sampled_from(["", "", "", "-", "-", "+", "--", " "]))
    whole = draw(
        st.one_of(
            st.sampled_from(["0", "0", "00", "01", "007", "", "1", "9"]),
            st.integers(1, 25).flatmap(
                lambda k: st.text(alphabet="123456789", min_size=1, max_size=1).flatmap(
                    lambda first: st.text(
                        alphabet="0123456789", min_size=k - 1, max_size=k - 1
                    ).map(lambda rest: first + rest)
                )
            ),
            digits,
        )
    )
    frac = ""
    if draw(st.booleans()):
        lead = "0" * draw(st.integers(0, 8))
        trail = "0" * draw(st.integers(0, 8))
        frac = "." + (lead + draw(digits) + trail)[:25]
    exp = ""
    if draw(st.booleans()):
        exp = (
            draw(st.sampled_from("eE"))
            + draw(st.sampled_from(["", "", "+", "-"]))
            + draw(st.text(alphabet="0123456789", max_size=5))
        )
    return sign + whole + frac + exp


@st.composite
def fast_path_decimals(draw: st.DrawFn) -> str:
    """Valid decimals around the fast path's limits: mantissas near 2**53 and up to 19
    digits, decimal exponents near +-22, the point anywhere in the digits."""
    m = draw(
        st.one_of(
            st.integers(0, 2**53 + 2),
            st.integers(2**53 - 100, 2**53 + 100),
            st.integers(0, 10**19),
            st.integers(0, 10**6),
        )
    )
    text = str(m)
    point = draw(st.integers(0, len(text) + 3))  # digits after the point
    if point:
        text = text.rjust(point + 1, "0")
        text = text[:-point] + "." + text[-point:]
    sign = draw(st.sampled_from(["", "-"]))
    form = draw(st.sampled_from(["", "e", "E", "e+", "e-0"]))
    if not form:
        return sign + text
    exp = draw(st.integers(-30, 30))
    if form == "e+":
        return f"{sign}{text}e{exp:+d}"
    if form == "e-0":
        return f"{sign}{text}E{'-' if exp < 0 else '+'}0{abs(exp)}"
    return f"{sign}{text}{form}{exp}"


EDGE_NUMBERS = [
    "0",
    "-0",
    "00",
    "01",
    "-01",
    "0.0",
    "-0.0",
    "0.0e5",
    "-0.0e5",
    "0e0",
    "-0e-0",
    "0e400",
    "0.000e99999",
    "1",
    "9",
    "1.0",
    "1e0",
    "1E+0",
    "1e0000",
    "1e00000",
    "1E+0022",
    "1e22",
    "1e23",
    "1e-22",
    "1e-23",
    "-1e22",
    "-1e-23",
    "1.5e-0",
    "1e400",
    "-1e400",
    "1e-400",
    "-1e-400",
    "1e308",
    "1.7976931348623157e308",
    "1.7976931348623159e308",
    "4.9e-324",
    "2.4703282292062327e-324",
    "2.4703282292062328e-324",
    "2.2250738585072011e-308",
    "2.2250738585072014e-308",
    "9007199254740992",
    "9007199254740993",
    "9007199254740992.0",
    "9007199254740993.0",
    "9007199254740994.0",
    "9007199254740995.0",
    "-9007199254740993.0",
    "9007199254740992e22",
    "9007199254740993e22",
    "9007199254740992e-22",
    "9007199254740993e-22",
    "9007199254740992e23",
    "9007199254740992e-23",
    "900719925474099.3",
    "0.9007199254740993e16",
    "90071992547409.92e-7",
    "12345678901234567",
    "1.2345678901234567",
    "0.12345678901234567",
    "1234567890123456.7",
    "7.3177701707893310e+15",
    "0.1",
    "0.2",
    "0.3",
    "0.30000000000000004",
    "0.1e1",
    "123456789012345678",
    "-123456789012345678",
    "1234567890123456789",
    "-1234567890123456789",
    "999999999999999999",
    "1000000000000000000",
    "-999999999999999999",
    "-1000000000000000000",
    "9999999999999999999",
    "10000000000000000000",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "123456789012345678.9",
    "1.00000000000000000000",
    "1.000000000000000000",
    "1.0000000000000000000",
    "0.0000000000000000000000001",
    "0.0000000000000000000001",
    "0.00000000000000000000001",
    "0.00000000000000000000000000001e10",
    "100000000000000000000000e-22",
    "1" + "0" * 30,
    "1" + "0" * 30 + ".0",
    "1e-0000",
    "5.",
    ".5",
    "-.5",
    "1.e5",
    "01.5",
    "-",
    "+1",
    "--1",
    "1e",
    "1e+",
    "1e-",
    "1E",
    "1.5.5",
    "1ee5",
    "1e5e5",
    "1e5.5",
    "0x10",
    "1_000",
    "Infinity",
    "-Infinity",
    "NaN",
    "\u0661",
]


def in_containers(num: str) -> list[str]:
    return [
        num,
        f" {num} ",
        f"[{num}]",
        f"[{num},{num}]",
        f'{{"k":{num}}}',
        f'{{"a":{num},"b":[{num}],"c":{{"d":{num}}}}}',
        f'[1,{num},"x"]',
    ]


def test_edge_numbers() -> None:
    for num in EDGE_NUMBERS:
        for doc in in_containers(num):
            check(doc)


@settings(SETTINGS, max_examples=1000)
@given(number_texts())
def test_hand_built_numbers(num: str) -> None:
    for doc in in_containers(num):
        check(doc)


@settings(SETTINGS, max_examples=1000)
@given(fast_path_decimals())
def test_decimals_near_the_fast_path_limits(num: str) -> None:
    with twin_calls() as calls:
        got = check_value(num)
    event("twin" if calls else "compiled")
    assert type(got) in (int, float)
    check(f'{{"v":{num},"w":[{num}]}}')


# --- 3. tick messages and damage to them -------------------------------------------------------


def test_firehose_ticks() -> None:
    for i in itertools.chain(range(0, 600), range(10**6, 10**6 + 3000, 7)):
        doc = tick_json(i)
        check(doc.decode())
        if i % 50 == 0:
            check(doc)
            check(json.dumps(make_small_tick(i)))
            check(json.dumps(make_tick(i), indent=2))


def serialise(pairs: list[tuple[str, Any]]) -> str:
    """An object from (key, value) pairs, keys repeated as given; values compact JSON."""
    return "{" + ",".join(f"{json.dumps(k)}:{render(v)}" for k, v in pairs) + "}"


def render(v: Any) -> str:
    if isinstance(v, list) and v and all(isinstance(p, tuple) for p in v):
        return serialise(v)
    return json.dumps(v, separators=(",", ":"))


INSERTS = [*" \t\n\r", *'{}[],:"\\-+.eE0123456789tfnul', "\x00", "\x0b", "\x0c", "\x7f"]
INSERTS += ["\u00e9", "\\u0041", '\\"', "true", "null", "1e999", "  \n\t", ",", '"k":1,']


@st.composite
def damaged_ticks(draw: st.DrawFn) -> str:
    """A firehose tick, with its items (or its data's) reordered, repeated with other
    values, or dropped, then 0-3 edits of its text."""
    i = draw(st.integers(0, 10**7))
    tick = make_tick(i) if draw(st.booleans()) else make_small_tick(i)
    top: list[tuple[str, Any]] = [(k, v) for k, v in tick.items() if k != "data"]
    data: list[tuple[str, Any]] = list(tick["data"].items())
    for pairs in (top, data):
        how = draw(st.sampled_from(["as is", "as is", "dup", "reorder", "drop", "retype"]))
        if how == "dup" and pairs:
            k = draw(st.sampled_from([p[0] for p in pairs]))
            pairs.insert(draw(st.integers(0, len(pairs))), (k, draw(scalars)))
        elif how == "reorder":
            order = draw(st.permutations(range(len(pairs))))
            pairs[:] = [pairs[j] for j in order]
        elif how == "drop" and pairs:
            del pairs[draw(st.integers(0, len(pairs) - 1))]
        elif how == "retype" and pairs:
            j = draw(st.integers(0, len(pairs) - 1))
            pairs[j] = (pairs[j][0], draw(scalars))
    top.insert(draw(st.integers(0, len(top))), ("data", data))
    doc = serialise(top)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["flip", "truncate", "delete", "insert", "ws"]))
        pos = draw(st.integers(0, max(0, len(doc) - 1)))
        if op == "flip" and doc:
            doc = doc[:pos] + chr(ord(doc[pos]) ^ (1 << draw(st.integers(0, 7)))) + doc[pos + 1 :]
        elif op == "truncate":
            doc = doc[:pos]
        elif op == "delete":
            doc = doc[:pos] + doc[pos + 1 :]
        elif op == "insert":
            doc = doc[:pos] + draw(st.sampled_from(INSERTS)) + doc[pos:]
        elif op == "ws":
            # whitespace where JSON allows it: next to a structural character
            marks = [j for j, c in enumerate(doc) if c in "{}[],:"]
            if marks:
                j = draw(st.sampled_from(marks)) + draw(st.integers(0, 1))
                doc = doc[:j] + draw(st.text(alphabet=" \t\n\r", min_size=1, max_size=4)) + doc[j:]
    return doc


@settings(SETTINGS, max_examples=800)
@given(damaged_ticks())
def test_damaged_ticks(doc: str) -> None:
    got, _ = check(doc)
    event(got[0])


def test_every_truncation_and_deletion() -> None:
    docs = [
        tick_json(12345).decode(),
        json.dumps(make_small_tick(3)),
        '{"a":[1,-2.5e-3,true,false,null,{"b":"c"},[]],"d":{},"e":"\\n","f":-0}',
        '[{"k":1,"k":2},{"k":3},"' + "s" * 33 + '",1.5E+10]',
    ]
    for doc in docs:
        for k in range(len(doc) + 1):
            check(doc[:k])
            check(doc[k:])
            check(doc[:k] + doc[k + 1 :])


# --- 4. the caches -----------------------------------------------------------------------------

POOL = [
    tick_json(1).decode(),
    tick_json(2).decode(),
    json.dumps(make_small_tick(5)),
    tick_json(3).decode().replace('"battery"', '"batteri"'),
    '{"data":{"x":1,"y":[2]},"type":"tick"}',
    '{"type":"tick","data":{"y":[2],"x":1}}',
    '{"a":1,"a":{"b":2},"c":3}',
    '{"a":{"b":2},"c":3}',
    '[{"a":1,"c":3},{"c":3,"a":1},{"a":1,"c":3}]',
    '{"s":"' + "q" * 32 + '","t":"' + "q" * 33 + '"}',
    "{}",
    "[]",
    '{"data":{}}',
]


def mutate(d: Any, how: str, stamp: int) -> None:
    """The same change, applied to a compiled result and to the twin's."""
    if type(d) is list:
        if how == "clear":
            d.clear()
        elif d:
            mutate(d[0], how, stamp)
        d.append(stamp)
        return
    if type(d) is not dict:
        return
    inner = d.get("data")
    if how == "add":
        d[f"new{stamp}"] = stamp
    elif how == "delete" and d:
        del d[next(iter(d))]
    elif how == "replace" and d:
        d[next(iter(d))] = [stamp]
    elif how == "clear":
        d.clear()
    elif how == "grow":
        d.update({f"g{j}": j for j in range(40)})
    elif how == "pop" and d:
        d.popitem()
    elif how == "cycle":
        d["self"] = d
    elif type(inner) is dict:
        if how == "data-add":
            inner["extra"] = stamp
        elif how == "data-delete" and inner:
            del inner[next(iter(inner))]
        elif how == "data-replace" and inner:
            inner[next(reversed(inner))] = {"nested": stamp}


MUTATIONS = [
    "add",
    "delete",
    "replace",
    "clear",
    "grow",
    "pop",
    "cycle",
    "data-add",
    "data-delete",
    "data-replace",
]


def containers(value: Any, seen: set[int]) -> Iterator[int]:
    """ids of every dict and list reachable from `value`."""
    if type(value) in (dict, list) and id(value) not in seen:
        seen.add(id(value))
        yield id(value)
        for item in value.values() if type(value) is dict else value:
            yield from containers(item, seen)


def same_shape(a: Any, b: Any) -> bool:
    """`same`, for values that may hold themselves (the "cycle" mutation)."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return list(a) == list(b) and all(
            (a[k] is a) == (b[k] is b) and (a[k] is a or same_shape(a[k], b[k])) for k in a
        )
    if type(a) is list:
        return len(a) == len(b) and all(same_shape(x, y) for x, y in zip(a, b))
    return same(a, b)


@settings(SETTINGS, max_examples=250)
@given(
    st.lists(
        st.tuples(st.integers(0, len(POOL) - 1), st.sampled_from(MUTATIONS), st.booleans()),
        min_size=2,
        max_size=16,
    )
)
def test_mutated_results_stay_independent(steps: list[tuple[int, str, bool]]) -> None:
    """Changing a result (its items, its data dict) changes neither later results nor
    earlier ones, and no two results share a dict or a list."""
    kept: list[tuple[Any, Any]] = []
    for stamp, (idx, how, change) in enumerate(steps):
        got, want = check(POOL[idx])
        value, twin = got[1], want[1]
        owned: set[int] = set()
        for old, _ in kept:
            list(containers(old, owned))
        mine = set(containers(value, set()))
        assert not mine & owned, "a result shares a container with an earlier one"
        if change:
            mutate(value, how, stamp)
            mutate(twin, how, stamp)
        kept.append((value, twin))
        for old, old_twin in kept:
            assert same_shape(old, old_twin), (old, old_twin)
    for doc in POOL:
        check(doc)


@st.composite
def shuffled_objects(draw: st.DrawFn) -> str:
    """An object over a small key set in any order, with keys repeated (other values)."""
    chosen = draw(st.lists(st.sampled_from(["a", "b", "c", "type", "data"]), unique=True))
    pairs: list[tuple[str, Any]] = [
        (k, draw(st.sampled_from([1, 2.5, None, [1], {}]))) for k in chosen
    ]
    for _ in range(draw(st.integers(0, 2))):
        if chosen:
            key = draw(st.sampled_from(chosen))
            pairs.insert(draw(st.integers(0, len(pairs))), (key, draw(st.integers(0, 9))))
    if draw(st.booleans()) and pairs:
        j = draw(st.integers(0, len(pairs) - 1))
        pairs[j] = (pairs[j][0], list(draw(st.permutations(pairs))))  # a nested object
    return serialise(pairs)


@settings(SETTINGS, max_examples=200)
@given(st.lists(shuffled_objects(), min_size=1, max_size=12))
def test_key_orders_and_duplicates_interleaved(docs: list[str]) -> None:
    for doc in docs:
        check(doc)
        check(tick_json(len(doc)).decode())
    check("[" + ",".join(docs) + "]")
    for doc in reversed(docs):
        check(doc)


def test_more_strings_and_shapes_than_the_caches_hold() -> None:
    """3000 distinct short strings (values and keys) and 300 distinct key shapes, cycled
    twice in different orders, between tick messages."""
    words = [f"{j:x}".rjust(1 + j % 32, "w") for j in range(3000)]
    assert len(set(words)) == 3000
    ticks = [tick_json(i).decode() for i in range(20)]
    for rnd in range(2):
        order = words if rnd == 0 else words[::-1]
        for j in range(0, len(order), 40):
            chunk = order[j : j + 40]
            check(json.dumps(chunk))
            check(json.dumps({w: len(w) for w in chunk}))
            check(ticks[j % 20])
    shapes = [[f"s{k}_{j}" for j in range(1 + k % 9)] for k in range(300)]
    for rnd in range(3):
        for k, names in enumerate(shapes if rnd != 1 else shapes[::-1]):
            check(json.dumps(dict.fromkeys(names, k)))
            check(json.dumps({"type": "tick", "data": dict.fromkeys(names, 0.5)}))
            if k % 5 == 0:
                check(ticks[k % 20])


MASK = (1 << 64) - 1


def str_slot(raw: bytes) -> int:
    """The compiled string cache's slot for a string (a copy of its hash, used only to aim
    strings at one slot: the assertions never rely on it)."""
    h = 0xCBF29CE484222325
    for j in range(0, len(raw), 8):
        h = ((h ^ int.from_bytes(raw[j : j + 8], "little")) * 0x100000001B3) & MASK
    h ^= h >> 29
    return (h ^ len(raw)) & 1023


def colliding(prefix: str, length: int, count: int) -> list[str]:
    """Up to `count` distinct strings of `length` characters starting with `prefix`, all in
    one slot of the string cache (by str_slot): the largest group among the first 50,000."""
    by_slot: dict[int, list[str]] = {}
    tails = itertools.product(string.ascii_letters + string.digits, repeat=length - len(prefix))
    for tail in itertools.islice(tails, 50_000):
        s = prefix + "".join(tail)
        group = by_slot.setdefault(str_slot(s.encode()), [])
        group.append(s)
        if len(group) == count:
            return group
    return max(by_slot.values(), key=len)


def test_strings_at_the_cache_limits() -> None:
    """Strings of 31-34 characters, strings equal in their first 8, 16, 24 or 32 bytes,
    strings aimed at one cache slot, as values and keys, alternated."""
    for length in (1, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 34, 40):
        for prefix_len in (0, 8, 16, 24, 32):
            if prefix_len >= length:
                continue
            prefix = "p" * prefix_len
            group = [prefix + c * (length - prefix_len) for c in "abc"]
            group += [(prefix + "a" * (length - prefix_len))[:-1] + c for c in "xyz"]
            group += colliding(prefix, length, 4)
            for rnd in range(3):
                for s in group if rnd % 2 == 0 else group[::-1]:
                    check(json.dumps(s))
                    check(json.dumps({s: s}))
                    check(json.dumps([s, {"k": s, s: 1}]))
            check(json.dumps(group))
            check(json.dumps(dict.fromkeys(group, 1)))


def test_many_same_length_strings_sharing_a_prefix() -> None:
    """More same-length strings than the cache has slots (so many share one), equal in
    their first 16 or 24 bytes: each must read back as itself."""
    for prefix, length in (("x" * 16, 24), ("y" * 24, 32), ("z" * 8, 12)):
        words = [(prefix + format(j, "x")).ljust(length, "-") for j in range(2500)]
        doc = json.dumps(words)
        check(doc)
        check(json.dumps(words[::-1]))
        check(doc)


PREDICTED = '{"ab":1,"cd":[2]}'
NEAR_MISSES = [
    '{"ab":1,"cd":[2]}',
    '{"ab":"x","cd":{}}',
    '{"ab":1}',
    '{"ab":1,"cd":2,"ef":3}',
    '{"abc":1,"cd":2}',
    '{"a":1,"cd":2}',
    '{"ab":1,"c":2}',
    '{"ab":1,"cde":2}',
    '{"cd":1,"ab":2}',
    '{"ab":1,"ab":2}',
    '{"ab":1,"cd":2,"ab":3}',
    '{"ab":1,"cd":2,"cd":[3]}',
    '{ "ab" : 1 , "cd" : {} }',
    '{"a\\u0062":1,"cd":2}',
    '{"ab\\"":1,"cd":2}',
    '{"ab":1,"cd"',
    '{"ab":1,"cd',
    '{"ab',
    '{"ab"',
    '{"ab":1,"cd":2,}',
    '{"AB":1,"cd":2}',
]


def test_objects_near_the_predicted_keys() -> None:
    """Each depth predicts the next object's keys from the template it used last: objects
    that differ from that prediction anywhere (a key longer, shorter, renamed, reordered,
    repeated, escaped or cut off; items more or fewer), at depths 0 to 2."""
    wraps = ["{}", "[{}]", '{{"k":{}}}', '[1,{{"k":[{}]}}]']
    for wrap in wraps:
        for doc in NEAR_MISSES:
            for _ in range(2):
                check(wrap.format(PREDICTED))
                check(wrap.format(doc))
                check(wrap.format(doc))
            check("[" + ",".join(wrap.format(d) for d in (PREDICTED, doc, PREDICTED)) + "]")


@pytest.mark.skipif(C is None or not C.DIRECT_STORES, reason="no direct stores to switch off")
def test_same_results_without_direct_stores() -> None:
    """The reader's plain path (every store through the dict API), then the direct one."""
    mod = built(C)
    docs = [*POOL, *(tick_json(i).decode() for i in range(40))]
    try:
        mod._use_direct_stores(False)
        assert mod.DIRECT_STORES is False
        for doc in docs * 2:
            check(doc)
    finally:
        mod._use_direct_stores(True)
    assert mod.DIRECT_STORES is True
    for doc in docs * 2:
        check(doc)


# --- 5. what the dicts are, reentrancy, leaks --------------------------------------------------


def test_gc_tracking_matches_the_twin() -> None:
    """A dict holding a dict or a list is tracked, a dict of scalars as the twin's, on the
    first read of a shape and on the template copies after it."""
    docs = [
        '{"a":1}',
        '{"a":1,"b":"x","c":null,"d":true,"e":1.5}',
        '{"a":[]}',
        '{"a":{}}',
        '{"a":1,"b":[1]}',
        '{"a":1,"b":{"c":2}}',
        '{"a":{"b":{"c":{}}}}',
        '[{"a":1},{"a":[]},{"a":{}},{"a":2}]',
        '{"a":1,"a":[]}',
        '{"a":[],"a":1}',
        tick_json(9).decode(),
    ]
    for _ in range(3):
        for doc in docs:
            got, want = check(doc)
            assert got[2] == want[2] == tracking(got[1])
    assert check('{"a":[]}')[0][2] == (True, True)
    assert check('{"a":{}}')[0][2] == (True, False)
    assert check('{"a":{"b":1}}')[0][2] == (True, False)
    # A cycle through a result (a first read and a template copy) is found and collected.
    for _ in range(2):
        marker = Marker()
        alive = weakref.ref(marker)
        d = check_value('{"a":[],"m":null}')
        d["a"].append(d)
        d["m"] = marker
        del d, marker
        gc.collect()
        assert alive() is None


class Marker:
    """Something a weak reference can watch."""


def test_parses_reentered_from_finalizers() -> None:
    """A collection runs during a parse (every dict or list made is a GC allocation) and
    its finalizers parse other documents with other strings and key shapes right then:
    every outer and inner result still equals the twin's."""
    inner_docs = [json.dumps({f"r{k}_{j}": [j] for j in range(1 + k % 7)}) for k in range(160)]
    inner_docs += [json.dumps([f"v{k}_{j}" for j in range(50)]) for k in range(20)]
    inner: list[tuple[str, tuple[Any, ...]]] = []
    state = {"inside": False, "seen": 0}

    class Parses:
        def __init__(self, k: int) -> None:
            self.k = k
            self.me = self  # a cycle: only the collector frees it

        def __del__(self) -> None:
            state["seen"] += int(state["inside"])
            for doc in inner_docs[self.k % 60 :: 9]:
                inner.append((doc, outcome(cloads, doc)))

    outer = [
        tick_json(77).decode(),
        json.dumps([{"a": j, "b": [j]} if j % 2 else {"b": [j], "a": j} for j in range(60)]),
        json.dumps([make_small_tick(j) for j in range(20)]),
    ]
    want = [outcome(P, doc) for doc in outer]
    old = gc.get_threshold()
    gc.set_threshold(5, 1, 1)
    try:
        for k in range(60):
            Parses(k)
            doc = outer[k % len(outer)]
            state["inside"] = True
            try:
                value = cloads(doc)
            finally:
                state["inside"] = False
            assert same(("ok", value, tracking(value)), want[k % len(outer)]), doc
    finally:
        gc.set_threshold(*old)
        gc.collect()
    assert state["seen"] > 0, "no finalizer ran inside a parse: the test tests nothing"
    for doc, got in inner:
        assert same(got, outcome(P, doc)), (doc, got)


def test_templates_freed_by_a_collection_inside_the_copy() -> None:
    """A cached key template copied for an object whose keys were read one by one (the
    depth predicted another shape) while a collection runs inside that copy's allocation
    (CPython 3.11 collects inside allocations; the dict free list is emptied first so the
    copy allocates), and the collection's finalizers parse 300 other key shapes, replacing
    and freeing every cached template and reusing their memory: the result is still the
    twin's, GC tracking included."""
    inner: list[tuple[str, tuple[Any, ...]]] = []
    state = {"inside": False, "seen": 0}

    class Parses:
        def __init__(self, k: int) -> None:
            self.k = k
            self.me = self  # a cycle: only the collector frees it

        def __del__(self) -> None:
            state["seen"] += int(state["inside"])
            for j in range(300):
                doc = f'{{"f{self.k}_{j}":[{j}]}}'
                inner.append((doc, outcome(cloads, doc)))

    first, other = '{"a":1}', '{"b":1}'
    want = outcome(P, first)
    results: list[tuple[Any, ...]] = []
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    try:
        for k in range(40):
            cloads(first)
            cloads(first)  # its template is cached
            cloads(other)  # and this depth now predicts another shape
            gc.disable()
            Parses(k)
            hold: list[dict[str, int]] = [{} for _ in range(200)]  # the dict free list is empty
            gc.set_threshold(1)
            gc.enable()
            state["inside"] = True
            try:
                results.append(outcome(cloads, first))
            finally:
                state["inside"] = False
                gc.set_threshold(*threshold)
            del hold
    finally:
        gc.set_threshold(*threshold)
        if enabled:
            gc.enable()
        else:
            gc.disable()
        gc.collect()
    if not state["seen"]:
        assert sys.version_info >= (3, 12), "no finalizer ran inside a parse on 3.11"
        pytest.skip("this interpreter does not collect inside an allocation")
    bad = [got for got in results if not same(got, want)]
    assert not bad, f"{len(bad)} of {len(results)} differ: {bad[0]!r} != twin {want!r}"
    for doc, got in inner:
        assert same(got, outcome(P, doc)), (doc, got)


def test_no_leaks() -> None:
    """20,000 reads each of a tick (compiled), a tick with an escape in its last key (read
    nearly to its end, then the twin), a truncated tick (the same, then the twin's error)
    and the tick as bytes leave no objects, memory or references behind: to the inputs, to
    the cached keys and strings, or to None, True and False."""
    tick = tick_json(42).decode()
    escaped = tick.replace('"door"', '"do\\u006fr"')  # the last key holds an escape
    truncated = tick[:-1]
    as_bytes = tick.encode()
    docs = [tick, escaped, truncated, as_bytes]
    assert check_value(escaped) == check_value(tick)
    assert check(truncated)[0][0] == "err"
    loads = built(C).loads_json

    def run(n: int) -> None:
        for _ in range(n):
            for doc in docs:
                try:
                    loads(doc)
                except ValueError:
                    pass

    held = loads(tick)  # its keys and short strings are the cached ones
    shared = [*held, *held["data"], held["type"], held["device"]]

    def counts() -> list[int]:
        return [sys.getrefcount(o) for o in (*docs, *shared)]

    def singletons() -> list[int]:
        return [sys.getrefcount(o) for o in (None, True, False)]

    run(500)
    gc.collect()
    refs = counts()
    refs_singletons = singletons()
    tracemalloc.start()
    try:
        run(200)
        gc.collect()
        objects = len(gc.get_objects())
        memory = tracemalloc.get_traced_memory()[0]
        run(20_000)
        gc.collect()
        objects_after = len(gc.get_objects())
        memory_after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert counts() == refs
    # None, True and False are used everywhere; a leak per read would be 20,000 and more
    drift = [abs(a - b) for a, b in zip(singletons(), refs_singletons)]
    assert max(drift) < 1000, drift
    # one leaked object or reference per read would be 20,000 of them
    assert objects_after - objects < 200, (objects, objects_after)
    assert memory_after - memory < 64 * 1024, (memory, memory_after)


# --- 6. other inputs ---------------------------------------------------------------------------


def test_non_str_inputs_and_str_subclasses() -> None:
    class Text(str):
        pass

    class Loud(str):
        def __str__(self) -> str:
            return '{"loud":1}'

    raw = tick_json(5)
    for doc in (
        raw,
        bytearray(raw),
        memoryview(raw),
        memoryview(raw)[::2],
        memoryview(bytearray(raw)),
        b"",
        b"\xff",
        b'{"a":"\xc3\xa9"}',
        bytearray(b"[1,]"),
        Text(raw.decode()),
        Text("[1,]"),
        Loud('{"quiet":1}'),
        1,
        1.5,
        None,
        [1],
        {"a": 1},
        object(),
        "\u00e9",
        '"\u00e9"',
        '"\U0001f600"',
        '"\ud800"',
        '["a", "\u0100"]',
        math.pi,
    ):
        check(doc)
