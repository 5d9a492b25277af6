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


def measure(
    benchmark: Any,
    scale: BenchScale,
    once: Callable[[], T],
    items: int,
    micro: bool = False,
    **info: Any,
) -> T:
    """Time ``scale.rounds`` rounds of ``reps`` calls of ``once`` (``items`` items each);
    ``micro``: an in-process benchmark, rounds of ``MICRO`` x ``round_s``."""
    reps = calibrate(scale, once, scale.round_s * (MICRO if micro else 1.0))
    box: list[T] = []

    def one_round() -> None:
        for _ in range(reps):
            box[:] = [once()]

    benchmark.extra_info.update(info, items=items * reps, reps=reps)
    benchmark.pedantic(one_round, rounds=scale.rounds, warmup_rounds=0, iterations=1)
    return box[0]
