"""Peak memory against stream length: each subject receives JSON ticks (decoded to dicts)
in a fresh worker process. The peak RSS (VmHWM, reset after a warm-up connection) and its
growth over the RSS before the stream are recorded for a short and a 10x longer stream; a
client that keeps memory bounded shows about the same growth for both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from benchmarks import firehose, peers

CASE = "json256"
LENGTHS = {"short": 10_000, "long": 100_000}


@pytest.mark.parametrize("length", list(LENGTHS))
@pytest.mark.parametrize("subject_name", peers.ORDER)
def test_memory(
    bench_scale: firehose.BenchScale,
    firehose_server: firehose.FirehoseProcess,
    bench_record: Callable[[dict[str, Any]], None],
    subject_name: str,
    length: str,
) -> None:
    subject = peers.SUBJECTS[subject_name]
    reason = subject.skip_reason()
    if reason:
        pytest.skip(reason)
    n = bench_scale.n(LENGTHS[length], minimum=20 if length == "short" else 200)
    inner = subject.inner if isinstance(subject, peers.InWorker) else subject
    env = {"IOTCOMMUTE_NO_EXTENSIONS": "1"} if isinstance(subject, peers.InWorker) else {}
    firehose_server.prepare(CASE, 10)
    firehose_server.prepare(CASE, n)
    worker = peers.Worker(env)  # fresh process: ru_maxrss is a process-lifetime peak
    try:
        got = worker.call(
            op="mem",
            subject=inner.name,
            case=CASE,
            n=n,
            decoder=inner.decoders[0],
            url=firehose_server.url(f"/recv/{CASE}/{n}"),
            url_warm=firehose_server.url(f"/recv/{CASE}/10"),
        )
    finally:
        worker.close()
    assert got["count"] == firehose.CASES[CASE].expected(n)
    assert got["base_kib"] > 0 and got["peak_kib"] > 0
    bench_record(
        {
            "section": "memory",
            "subject": subject_name,
            "case": CASE,
            "messages": n,
            "peak_growth_mib": max(0, got["peak_kib"] - got["base_kib"]) / 1024,
            "base_mib": got["base_kib"] / 1024,
        }
    )
