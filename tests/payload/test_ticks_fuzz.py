"""Bounded fuzzing of the tick-batch decoder (the compiled one when built).

Two layers: a hypothesis run with a large example budget (~15 s here) that checks the decoder
only ever returns well-formed ticks or raises DecodeError, and that what it returns survives
an encode/decode round trip; and, when atheris is importable, a short libFuzzer run in a
subprocess seeded with the test vectors (a crash there kills only the child, which the test
reports with its output).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotcommute.exceptions import DecodeError
from iotcommute.payload import _ticks_py
from tests.compiled import compiled

VECTORS = Path(__file__).parent.parent / "vectors" / "ticks_v1.json"


IMPL: ModuleType = compiled("iotcommute.payload._ticks") or _ticks_py
SEEDS = [bytes.fromhex(v["hex"]) for v in json.loads(VECTORS.read_text("utf-8"))["valid"]]
BUDGET = int(os.environ.get("IOTCOMMUTE_FUZZ_EXAMPLES", "10000"))


def check_ticks(ticks: Any) -> None:
    assert type(ticks) is list
    for t in ticks:
        assert list(t) == ["type", "device", "position", "ts", "data"]
        assert t["type"] == "tick" and type(t["device"]) is str and t["device"]
        assert type(t["position"]) is int and 0 <= t["position"] < 2**64
        assert type(t["ts"]) is float and type(t["data"]) is dict
        for k, v in t["data"].items():
            assert type(k) is str and type(v) in (float, int, bool)


def finite(ticks: list[dict[str, Any]]) -> bool:
    return all(
        math.isfinite(t["ts"])
        and all(not isinstance(v, float) or math.isfinite(v) for v in t["data"].values())
        for t in ticks
    )


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
    max_examples=BUDGET,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(mutated())
def test_decoder_never_crashes_and_output_roundtrips(buf: bytes) -> None:
    try:
        ticks = IMPL.decode_batch(buf)
    except DecodeError as exc:
        assert exc.message  # every rejection says what was wrong
        with pytest.raises(DecodeError) as rows_exc:
            IMPL.decode_batch_rows(buf)
        assert (rows_exc.value.message, rows_exc.value.position) == (exc.message, exc.position)
        return
    check_ticks(ticks)
    _names, rows = IMPL.decode_batch_rows(buf)
    assert len(rows) == len(ticks)
    assert repr(rows) == repr(
        [(t["device"], t["position"], t["ts"], *t["data"].values()) for t in ticks]
    )
    if finite(ticks):
        again = IMPL.decode_batch(IMPL.encode_batch(ticks))
        assert again == ticks


HARNESS = textwrap.dedent(
    """
    import sys
    import atheris
    with atheris.instrument_imports():
        from iotcommute.payload import _ticks_py
    from iotcommute.payload import _ticks
    from iotcommute.exceptions import DecodeError

    def one(data: bytes) -> None:
        try:
            rows = _ticks.decode_batch_rows(data)
        except DecodeError:
            rows = None
        try:
            ticks = _ticks.decode_batch(data)
        except DecodeError as exc:
            try:
                _ticks_py.decode_batch(data)
            except DecodeError as twin:
                assert (exc.message, exc.position) == (twin.message, twin.position)
                assert rows is None  # the rows decoder rejects exactly what it rejects
                return
            raise AssertionError("only the compiled decoder rejected the input")
        assert ticks == _ticks_py.decode_batch(data) or repr(ticks) == repr(
            _ticks_py.decode_batch(data)
        )
        assert repr(rows) == repr(_ticks_py.decode_batch_rows(data))

    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
    """
)


def test_atheris_differential(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    if IMPL is _ticks_py:
        pytest.skip("the compiled decoder is not in use")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(SEEDS):
        (corpus / f"seed{i}").write_bytes(seed)
    harness = tmp_path / "fuzz_ticks.py"
    harness.write_text(HARNESS)
    secs = os.environ.get("IOTCOMMUTE_ATHERIS_SECONDS", "8")
    proc = subprocess.run(
        [sys.executable, str(harness), f"-max_total_time={secs}", "-max_len=512", str(corpus)],
        capture_output=True,
        text=True,
        timeout=int(secs) + 60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Done" in proc.stderr or "DONE" in proc.stderr, proc.stderr[-2000:]
