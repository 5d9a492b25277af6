"""Round-trip latency at a steady rate against the echo server: p50/p99 per subject.

One message in flight; sends are scheduled at absolute slots of 1/RATE s (a late slot
does not push back the next one). Results go to the summary (not pytest-benchmark's
table: the wall time of a paced run says nothing). The spread of p50 and p99 is their
min-max over the run's ``rounds`` consecutive slices (in time order).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from benchmarks import firehose, peers

RATE = 1000.0  # msg/s; asyncio timers have ~1 ms granularity, so 1k/s paces cleanly
PAYLOAD = '{"type":"echo","seq":12345678,"v":21.5}'


def percentile(sorted_values: list[float], q: float) -> float:
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[idx]


@pytest.mark.parametrize("subject_name", peers.ORDER)
def test_latency(
    bench_scale: firehose.BenchScale,
    firehose_server: firehose.FirehoseProcess,
    bench_record: Callable[[dict[str, Any]], None],
    subject_name: str,
) -> None:
    subject = peers.SUBJECTS[subject_name]
    reason = subject.skip_reason()
    if reason:
        pytest.skip(reason)
    m = bench_scale.n(3000, minimum=20)
    rtts = subject.latency(firehose_server.url("/echo"), m, RATE, PAYLOAD)
    assert len(rtts) == m
    assert all(r > 0 for r in rtts)
    k = bench_scale.rounds
    step = -(-m // k)
    slices = [sorted(rtts[i : i + step]) for i in range(0, m, step)]
    p50s = [percentile(sl, 0.50) * 1e6 for sl in slices]
    p99s = [percentile(sl, 0.99) * 1e6 for sl in slices]
    rtts.sort()
    bench_record(
        {
            "section": "latency",
            "subject": subject_name,
            "rate": RATE,
            "messages": m,
            "p50_us": percentile(rtts, 0.50) * 1e6,
            "p99_us": percentile(rtts, 0.99) * 1e6,
            "max_us": rtts[-1] * 1e6,
            "p50_range": [min(p50s), max(p50s)],
            "p99_range": [min(p99s), max(p99s)],
        }
    )
