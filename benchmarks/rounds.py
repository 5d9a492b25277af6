"""Timed rounds of a fixed duration: the one way every benchmark here is timed.

A benchmark gives ``once`` (one stream, one batch of calls: a unit of work whose item count
is known) and ``measure`` calibrates how many times a round repeats it so that a round lasts
about ``BenchScale.round_s``, then runs ``BenchScale.rounds`` such rounds through
pytest-benchmark. The calibration call doubles as the warm-up (imports, first connection,
caches). ``extra_info`` records ``items`` per round and ``reps``; the summary turns each
round's time into a rate, so its median and spread (min-max over rounds) come from rounds
of the same length for every subject.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from typing import Any, TypeVar

from benchmarks.firehose import BenchScale

T = TypeVar("T")
MAX_REPS = 100_000


#: in-process benchmarks from memory (no sockets, no other process) are steady with rounds
#: this much shorter than the end-to-end ones
MICRO = 0.25


def calibrate(scale: BenchScale, once: Callable[[], Any], round_s: float) -> int:
    """How many calls of ``once`` make a round of ``round_s`` seconds (1 in smoke mode)."""
    if not scale.full:
        return 1
    t0 = time.perf_counter()
    once()
    elapsed = time.perf_counter() - t0
    if elapsed <= 0:
        return MAX_REPS
    return max(1, min(MAX_REPS, math.ceil(round_s / elapsed)))


#: a stream shorter than this is mostly connection set-up and TCP's ramp-up, not streaming:
#: 2,000 tick frames through WebSocket took 8.2 ms (24 M ticks/s) where 40,000 ran at 57 M
STEADY_STREAM_S = 0.25
#: what a subject's stream may grow to: at most this many times the case's length, and for
#: the tick cases (every message distinct, held by the firehose) this many bytes
MAX_STREAM_FACTOR = 20
MAX_DISTINCT_BYTES = 512 * 2**20


def steady_n(
    scale: BenchScale, stream: Callable[[int], Any], n: int, message_bytes: int | None = None
) -> int:
    """The stream length to time a subject with: ``n``, or a multiple of it when one stream
    of ``n`` (run once here, after a warm-up stream) lasts under ``STEADY_STREAM_S``, so that
    a fast subject is timed streaming, not connecting. ``message_bytes``: the size of a
    distinct message the firehose must hold (tick cases), which bounds the growth."""
    if not scale.full:
        return n
    stream(n)  # warm-up: imports, first connection
    t0 = time.perf_counter()
    stream(n)
    took = time.perf_counter() - t0
    factor = min(MAX_STREAM_FACTOR, math.ceil(STEADY_STREAM_S / max(took, 1e-6)))
    if message_bytes:
        factor = min(factor, max(1, MAX_DISTINCT_BYTES // (n * message_bytes)))
    return n * max(1, factor)


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process so far, all its threads included."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def measure(
    benchmark: Any,
    scale: BenchScale,
    once: Callable[[], T],
    items: int,
    micro: bool = False,
    cpu: bool = False,
    **info: Any,
) -> T:
    """Time ``scale.rounds`` rounds of ``reps`` calls of ``once`` (``items`` items each);
    ``micro``: an in-process benchmark, rounds of ``MICRO`` x ``round_s``. ``cpu``: also
    record each round's CPU time of this process (``extra_info["cpu_s"]``), for a subject
    that runs in it: where the firehose is what limits the rate (big frames), the rates of
    all fast clients meet and their CPU per message is what still tells them apart."""
    reps = calibrate(scale, once, scale.round_s * (MICRO if micro else 1.0))
    box: list[T] = []
    cpu_s: list[float] = []

    def one_round() -> None:
        c0 = _cpu_s() if cpu else 0.0
        for _ in range(reps):
            box[:] = [once()]
        if cpu:
            cpu_s.append(_cpu_s() - c0)

    benchmark.extra_info.update(info, items=items * reps, reps=reps)
    if cpu:
        benchmark.extra_info["cpu_s"] = cpu_s  # filled by the rounds below
    benchmark.pedantic(one_round, rounds=scale.rounds, warmup_rounds=0, iterations=1)
    return box[0]
