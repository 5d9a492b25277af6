"""Fuzz the compiled reader (the pure one too, cheaply): no crash, no hang, bounded memory.

Hypothesis runs a bounded example budget in-process; if atheris is importable a short
bounded libFuzzer run happens in a subprocess (a crash there cannot take pytest down).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import zlib
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotcommute.exceptions import ProtocolError
from iotcommute.protocol import _frames_py
from iotcommute.protocol.events import CloseReceived, Ping, Pong
from tests.compiled import compiled, skip_unless_built, twins

_frames_c = compiled("iotcommute.protocol._frames_c")
_skip_c = skip_unless_built(_frames_c)
IMPLS = twins(_frames_py, "iotcommute.protocol._frames_c")
OK_TYPES = (str, bytes, Ping, Pong, CloseReceived)


def _check(mod: ModuleType, data: bytes, cut: int, **kw: object) -> None:
    r = mod.FrameReader(**kw)
    r.feed_data(data[:cut])
    r.feed_data(data[cut:])
    assert r.error is None or isinstance(r.error, ProtocolError)
    assert all(type(e) in OK_TYPES for e in r.events)
    assert all(len(e) <= r.max_size for e in r.events if isinstance(e, (str, bytes)))


def _headerish() -> st.SearchStrategy[bytes]:
    """Bytes that look like frame headers often enough to get past the first checks."""
    head = st.tuples(
        st.sampled_from([0x81, 0x82, 0x01, 0x00, 0x80, 0x89, 0x8A, 0x88, 0xC1, 0xC2, 0x41]),
        st.integers(0, 127),
    ).map(bytes)
    return st.lists(st.one_of(head, st.binary(max_size=40)), max_size=20).map(b"".join)


FUZZ_INPUT = st.one_of(st.binary(max_size=400), _headerish())


@_skip_c
@settings(max_examples=4000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=FUZZ_INPUT, cut=st.integers(0, 400))
def test_hypothesis_fuzz_compiled(data: bytes, cut: int) -> None:
    assert _frames_c is not None
    _check(_frames_c, data, cut)
    _check(_frames_c, data, cut, deflate=True, max_size=300, max_fragments=4)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=FUZZ_INPUT, cut=st.integers(0, 400))
def test_hypothesis_fuzz_pure(data: bytes, cut: int) -> None:
    _check(_frames_py, data, cut)
    _check(_frames_py, data, cut, deflate=True, max_size=300, max_fragments=4)


@pytest.mark.parametrize("mod", IMPLS)
def test_deflate_bomb_memory_bounded(mod: ModuleType) -> None:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    zero = bytes(2**20)
    bomb = b"".join(c.compress(zero) for _ in range(256)) + c.flush(zlib.Z_SYNC_FLUSH)[:-4]
    data = bytes((0xC2, 127)) + struct.pack("!Q", len(bomb)) + bomb  # 256 MiB inflated
    max_size = 2**20
    tracemalloc.start()
    try:
        r = mod.FrameReader(max_size=max_size, deflate=True)
        for i in range(0, len(data), 65536):
            r.feed_data(data[i : i + 65536])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert type(r.error).__name__ == "MessageTooBigError"
    assert peak < 8 * max_size, peak


@pytest.mark.parametrize("mod", IMPLS)
def test_huge_declared_length_buffers_nothing(mod: ModuleType) -> None:
    tracemalloc.start()
    try:
        r = mod.FrameReader(max_size=2**62)
        r.feed_data(bytes((0x82, 127)) + struct.pack("!Q", 2**62))
        for _ in range(100):
            r.feed_data(bytes(1000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.events == [] and r.error is None
    assert peak < 2**20  # only what arrived is held, never the declared length


ATHERIS_HARNESS = textwrap.dedent(
    """
    import sys
    import atheris
    from iotcommute.protocol import _frames_c
    from iotcommute.exceptions import ProtocolError

    def one(data):
        if not data:
            return
        cut = data[0] % (len(data) + 1)
        for kw in ({}, {"deflate": True, "max_size": 500, "max_fragments": 3}):
            r = _frames_c.FrameReader(**kw)
            r.feed_data(data[1:cut])
            r.feed_data(data[cut:])
            if r.error is not None and not isinstance(r.error, ProtocolError):
                raise AssertionError(repr(r.error))

    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
    """
)


@_skip_c
def test_atheris_short_run(tmp_path: object) -> None:
    pytest.importorskip("atheris")
    harness = os.path.join(str(tmp_path), "harness.py")
    with open(harness, "w") as f:
        f.write(ATHERIS_HARNESS)
    proc = subprocess.run(
        [sys.executable, harness, "-runs=200000", "-max_total_time=8", "-rss_limit_mb=1024"],
        capture_output=True,
        timeout=60,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done" in proc.stderr
