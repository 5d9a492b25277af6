"""The compiled columnar parser and its pure twin must give identical batches and errors.

Random valid batches, corruptions of them and random bytes go through both parsers
(`_columnar.parse_columns` and `columnar._parse_py`) and through `_ticks_py.decode_batch`:
the two columnar results must be identical (device table, layout, row range, the values bit
for bit) or raise the identical DecodeError, and that error must be decode_batch's unless
decode_batch accepted the frame and a position is 2**63 or more (the columnar form's one
extra check). Sequences of frames sharing byte-identical tables aim at the compiled table
cache. Then a bounded fuzz of the compiled path: a large hypothesis budget, and a short
atheris run in a subprocess when atheris is importable. Without the compiled module the pure
parser is checked against decode_batch alone.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotcommute.exceptions import DecodeError
from iotcommute.payload import _ticks_py, columnar
from tests.payload.exact import same

COMPILED = columnar.columnar_impl
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VECTORS = Path(__file__).parent.parent / "vectors" / "ticks_v1.json"
SEEDS = [bytes.fromhex(v["hex"]) for v in json.loads(VECTORS.read_text("utf-8"))["valid"]]
BUDGET = int(os.environ.get("IOTCOMMUTE_FUZZ_EXAMPLES", "10000")) // 10


def outcome(parse: Any, buf: bytes) -> tuple[Any, ...]:
    """Everything a parse produced, or the DecodeError it raised."""
    try:
        b = columnar._decode_with(parse, buf)
    except DecodeError as exc:
        return ("err", exc.message, exc.position)
    return (
        "ok",
        b.devices,
        b._layout.key,
        b._off,
        len(b),
        b.codes.tolist(),
        b.to_dicts(),
        b.first_position,
        b.last_position,
    )


def check(buf: bytes) -> tuple[Any, ...]:
    """Both parsers agree, and agree with decode_batch; returns the outcome."""
    got_p = outcome(columnar._parse_py, buf)
    if COMPILED is not None:
        got_c = outcome(COMPILED.parse_columns, buf)
        assert same(got_c, got_p), (got_c, got_p)
    try:
        want = _ticks_py.decode_batch(buf)
    except DecodeError as exc:
        assert got_p == ("err", exc.message, exc.position)
        return got_p
    if got_p[0] == "ok":  # the positions the parse read are the rows' first and last
        ends = (want[0]["position"], want[-1]["position"]) if want else (None, None)
        assert got_p[-2:] == ends, (got_p[-2:], ends)
    if got_p[0] == "err":
        big = [t["position"] for t in want if t["position"] >= 2**63]
        assert big and got_p[2] == big[0] and "2**63" in got_p[1], got_p
    else:
        assert same(got_p[6], want)
    return got_p


# --- strategies ----------------------------------------------------------------------------------

names = st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=1, max_size=8).filter(
    lambda s: len(s.encode()) <= 255
)
VALUES = {
    "f64": st.floats(allow_nan=False, allow_infinity=False),
    "f32": st.floats(width=32, allow_nan=False, allow_infinity=False),
    "i64": st.integers(-(2**63), 2**63 - 1),
    "i32": st.integers(-(2**31), 2**31 - 1),
    "bool": st.booleans(),
}
SIZES = {"f64": 8, "f32": 4, "i64": 8, "i32": 4, "bool": 1}


@st.composite
def valid(draw: st.DrawFn) -> tuple[bytes, dict[str, str], int]:
    """A valid frame, its field types and its number of ticks; positions mostly below 2**63."""
    fields = draw(st.lists(names, max_size=5, unique=True))
    types = {f: draw(st.sampled_from(sorted(VALUES))) for f in fields}
    devices = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    n = draw(st.integers(0, 10))
    top = draw(st.sampled_from([2**63 - 1, 2**64 - 1]))
    ticks = [
        {
            "device": draw(st.sampled_from(devices)),
            "position": draw(st.integers(0, top)),
            "ts": draw(VALUES["f64"]),
            "data": {f: draw(VALUES[types[f]]) for f in fields},
        }
        for _ in range(n)
    ]
    return _ticks_py.encode_batch(ticks, types), types, n


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    buf = bytearray(draw(valid())[0])
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
            off = draw(st.sampled_from([6, 8, 10]))
            width = 4 if off == 10 else 2
            buf[off : off + width] = draw(st.integers(0, 2 ** (8 * width) - 1)).to_bytes(
                width, "little"
            )
    return bytes(buf)


@st.composite
def row_damaged(draw: st.DrawFn) -> bytes:
    """Length-preserving damage inside the rows: device indexes around the table size, bool
    bytes other than 0/1 and positions with the top bit set, several per frame, so the
    order of the checks decides which error is reported."""
    raw, types, n = draw(valid())
    if not n:
        return raw
    buf = bytearray(raw)
    n_dev = int.from_bytes(buf[6:8], "little")
    row = 18 + sum(SIZES[t] for t in types.values())
    start = len(buf) - row * n
    bools, off = [], 18
    for t in types.values():
        if t == "bool":
            bools.append(off)
        off += SIZES[t]
    for _ in range(draw(st.integers(1, 4))):
        r = start + row * draw(st.integers(0, n - 1))
        what = draw(st.sampled_from(["device", "bool", "position"]))
        if what == "bool" and bools:
            buf[r + draw(st.sampled_from(bools))] = draw(st.integers(0, 255))
        elif what == "position":
            buf[r + 9] |= 0x80
        else:
            idx = draw(st.one_of(st.integers(0, n_dev + 1), st.integers(0, 0xFFFF)))
            buf[r : r + 2] = idx.to_bytes(2, "little")
    return bytes(buf)


# --- properties -----------------------------------------------------------------------------------


@SETTINGS
@given(valid())
def test_valid_frames(frame: tuple[bytes, dict[str, str], int]) -> None:
    check(frame[0])


@SETTINGS
@given(corrupted())
def test_corrupted_frames(buf: bytes) -> None:
    check(buf)


@SETTINGS
@given(row_damaged())
def test_row_damage(buf: bytes) -> None:
    check(buf)


@SETTINGS
@given(st.binary(max_size=64), st.booleans())
def test_random_bytes_behind_a_valid_prefix(tail: bytes, with_prefix: bool) -> None:
    check((b"\xc1TKB\x01\x00" + tail) if with_prefix else tail)


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 4)), max_size=12))
def test_sequences_sharing_tables(plan: list[tuple[int, int, int]]) -> None:
    """Frames that repeat an earlier device or field table byte for byte, or differ from it
    only in a count or a later byte, in any order: the cached tables must never leak into a
    frame whose tables differ."""
    device_tables = [["a", "b"], ["a", "bc"], ["a", "b", "c"]]
    field_tables = [{"x": 1.5, "y": True}, {"x": 1.5, "y": 2}, {"x": 1.5}]
    for d, f, n in plan:
        devs = device_tables[d]
        src = [
            {"device": devs[i % len(devs)], "position": i + 1, "ts": 0.5, "data": field_tables[f]}
            for i in range(n)
        ]
        raw = _ticks_py.encode_batch(src)
        if n == 0:  # an empty batch has empty tables; give it the tables anyway
            head = struct.pack("<4sBBHHI", b"\xc1TKB", 1, 0, len(devs), 0, 0)
            raw = head + b"".join(bytes([len(x)]) + x.encode() for x in devs)
        check(raw)
        # the same tables, but the device count lies: one entry fewer or more
        lie = bytearray(raw)
        lie[6:8] = struct.pack("<H", max(0, len(devs) + (1 if n % 2 else -1)))
        check(bytes(lie))


@SETTINGS
@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 40), st.sampled_from(["", "é", "z"])),
        min_size=1,
        max_size=12,
    ),
    st.booleans(),
)
def test_device_ids_around_the_intern_table_word_boundaries(
    plan: list[tuple[int, int, str]], table_at_the_end: bool
) -> None:
    """The compiled intern table keeps an id's first 16 bytes in its slot and compares the
    rest: ids of 1 to 40+ bytes sharing long prefixes (equal up to, across and past 16
    bytes), repeated ids, and a device table that ends the frame (no bytes after the last
    id to read ahead into) must parse exactly as the twin parses them."""
    prefixes = ["", "p" * 8, "q" * 16]
    devs = [prefixes[a] + "x" * k + tail or "y" for a, k, tail in plan]
    if table_at_the_end:  # no fields, no rows: the last id's bytes are the frame's last
        head = struct.pack("<4sBBHHI", b"\xc1TKB", 1, 0, len(devs), 0, 0)
        raw = head + b"".join(bytes([len(x.encode())]) + x.encode() for x in devs)
        check(raw)
        return
    distinct = list(dict.fromkeys(devs))
    ticks = [
        {"device": d, "position": i + 1, "ts": 0.5, "data": {"v": 1.0}}
        for i, d in enumerate(distinct)
    ]
    raw = _ticks_py.encode_batch(ticks)
    check(raw)
    # the same ids, one of them written twice into the table (must be refused as a repeat)
    if distinct:
        first = distinct[0].encode()
        n_dev = struct.unpack_from("<H", raw, 6)[0]
        dup = bytearray(raw[:14]) + bytes([len(first)]) + first + raw[14:]
        dup[6:8] = struct.pack("<H", n_dev + 1)
        check(bytes(dup))


def test_long_ids_that_differ_only_past_their_first_16_bytes() -> None:
    """Two ids equal in length and in their first 16 bytes are two devices; the same id
    twice in a table is a repeat (each as the twin says)."""
    a, b = "q" * 16 + "ab", "q" * 16 + "ac"
    ticks = [
        {"device": d, "position": i + 1, "ts": 0.5, "data": {"v": 1.0}}
        for i, d in enumerate([a, b, a, b])
    ]
    got = check(_ticks_py.encode_batch(ticks))
    assert got[0] == "ok" and got[1] == (a, b) and got[5] == [0, 1, 0, 1]
    head = struct.pack("<4sBBHHI", b"\xc1TKB", 1, 0, 2, 0, 0)
    twice = head + (bytes([18]) + a.encode()) * 2
    assert check(twice)[:2] == ("err", "device 1 repeats an earlier device id")


def test_the_compiled_parser_is_in_use_unless_disabled() -> None:
    if os.environ.get("IOTCOMMUTE_NO_EXTENSIONS"):
        assert COMPILED is None and not columnar.SPEEDUPS
    elif os.environ.get("IOTCOMMUTE_REQUIRE_EXTENSIONS"):
        assert COMPILED is not None and columnar.SPEEDUPS


# --- bounded fuzzing of the compiled path ---------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A seed vector with a few byte edits, or raw bytes: most land past the header checks."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=256))
    buf = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        if not buf:
            break
        i = draw(st.integers(0, len(buf) - 1))
        op = draw(st.integers(0, 3))
        if op == 0:
            buf[i] = draw(st.integers(0, 255))
        elif op == 1:
            del buf[i:]
        elif op == 2:
            buf[i:i] = draw(st.binary(min_size=1, max_size=16))
        else:
            del buf[i : i + draw(st.integers(1, 16))]
    return bytes(buf)


@settings(
    max_examples=max(BUDGET, 100),
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(mutated())
def test_fuzz_the_selected_parser(buf: bytes) -> None:
    """Only a batch or a DecodeError, and the batch reads back as decode_batch's ticks."""
    try:
        b = columnar.decode_batch_columns(buf)
    except DecodeError as exc:
        assert exc.message
        return
    assert len(b) == len(b["position"]) == len(b.codes)
    assert all(c < len(b.devices) for c in b.codes.tolist())
    assert same(b.to_dicts(), _ticks_py.decode_batch(buf))


HARNESS = textwrap.dedent(
    """
    import sys
    import atheris
    with atheris.instrument_imports():
        from iotcommute.payload import _ticks_py
    from iotcommute.payload import _columnar, columnar
    from iotcommute.exceptions import DecodeError

    def one(data: bytes) -> None:
        def run(parse):
            try:
                b = columnar._decode_with(parse, data)
            except DecodeError as exc:
                return ("err", exc.message, exc.position)
            return ("ok", b.devices, b._layout.key, b._off, len(b), repr(b.to_dicts()))
        got = run(_columnar.parse_columns)
        assert got == run(columnar._parse_py), data.hex()
        if got[0] == "ok":
            assert got[5] == repr(_ticks_py.decode_batch(data))

    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
    """
)


def test_atheris_differential(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris is not installed")
    if COMPILED is None:
        pytest.skip("the compiled columnar parser is not in use")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(SEEDS):
        (corpus / f"seed{i}").write_bytes(seed)
    harness = tmp_path / "fuzz_columnar.py"
    harness.write_text(HARNESS)
    secs = os.environ.get("IOTCOMMUTE_ATHERIS_SECONDS", "6")
    proc = subprocess.run(
        [sys.executable, str(harness), f"-max_total_time={secs}", "-max_len=512", str(corpus)],
        capture_output=True,
        text=True,
        timeout=int(secs) + 60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Done" in proc.stderr or "DONE" in proc.stderr, proc.stderr[-2000:]


def test_threads_decoding_different_tables_agree_with_the_twin() -> None:
    """The compiled parser's caches (last tables, interned ids) are shared by every thread;
    frames with changing device tables, repeated ids and corrupt names decoded from several
    threads at once must each give the twin's outcome."""
    import threading

    def frame(k: int) -> bytes:
        ids = [f"n{(k * 7 + i) % 900}" for i in range(1 + k % 40)]
        if k % 5 == 0:
            ids.append(ids[0])  # a repeated id: an error raised inside the intern pass
        head = struct.pack("<4sBBHHI", b"\xc1TKB", 1, 0, len(ids), 0, len(ids) if k % 5 else 0)
        table = b"".join(bytes([len(x)]) + x.encode() for x in ids)
        if k % 11 == 0:
            table = table[:-1] + b"\xff"  # invalid UTF-8 in the last id
        rows = b"".join(struct.pack("<HQd", i, k * 100 + i, 0.5) for i in range(len(ids)))
        return head + table + (rows if k % 5 else b"")

    frames = [frame(k) for k in range(300)]
    want = [outcome(columnar._parse_py, f) for f in frames]
    parse = COMPILED.parse_columns if COMPILED is not None else columnar._parse_py
    failures: list[int] = []

    def work(offset: int) -> None:
        for j in range(len(frames)):
            k = (j + offset) % len(frames)
            if not same(outcome(parse, frames[k]), want[k]):
                failures.append(k)

    threads = [threading.Thread(target=work, args=(o * 37,)) for o in range(4)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as CPython allows
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not failures
    assert any(w[0] == "err" for w in want) and any(w[0] == "ok" for w in want)
