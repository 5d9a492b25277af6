"""Receive benchmarks: every subject takes the same pre-encoded frames from the firehose
process and delivers each message (ticks: each decoded dict) to a counting callback.

iotcommute's client APIs (aio, sync; compiled and fallback) take the raw cases with a raw
``on_message`` and the tick cases with ``on_tick``; their ``-ticks`` variants take the tick
cases with ``on_ticks`` (one call per network read with the list of new ticks).
``text256`` and ``json256`` carry the same 256-byte JSON ticks: consumed raw (str), and
decoded to dicts (peers with orjson, iotcommute with its own decoding).

A round repeats the stream (a new connection each time) for about ``round_s`` seconds
(benchmarks/rounds.py), so every subject's rounds last the same. A subject whose stream of
the case's length ends within ``rounds.STEADY_STREAM_S`` gets a longer one
(``rounds.steady_n``): a short stream is mostly connection set-up and TCP's ramp-up.

Every round asserts the delivered count, so the smoke run (plain ``pytest``) checks each
subject end to end over a real loopback socket.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from benchmarks import firehose, peers
from benchmarks.rounds import measure, steady_n


def _params() -> list[Any]:
    out = []
    for case in firehose.CASES.values():
        for name in peers.RECV_ORDER:
            subject = peers.SUBJECTS[name]
            if subject.batches_only and case.kind != "ticks-batch":
                continue
            if subject.ticks_only and not case.kind.startswith("ticks"):
                continue
            if case.compressed and not subject.deflate:
                continue
            dec = peers.SUBJECTS[name].decoders[0]
            out.append(pytest.param(case.name, name, dec, id=f"{case.name}-{name}"))
    return out


def skip_unless_runnable(subject: peers.Subject, case: firehose.Case) -> None:
    reason = subject.skip_reason()
    if reason:
        pytest.skip(reason)
    if case.compressed and not subject.deflate:
        pytest.skip(f"{subject.name} has no permessage-deflate")
    if subject.batches_only and case.kind != "ticks-batch":
        pytest.skip(f"{subject.name} is the lean (on_tick_rows) variant: batch cases only")
    if subject.ticks_only and not case.kind.startswith("ticks"):
        pytest.skip(f"{subject.name} is the per-batch (on_ticks) variant: tick cases only")
    if case.kind == "ticks-batch" and not firehose.batch_codec_available():
        pytest.skip("iotcommute.payload.encode_batch/decode_batch not available yet")


@pytest.mark.parametrize(("case_name", "subject_name", "decoder"), _params())
def test_recv(
    benchmark: Any,
    bench_scale: firehose.BenchScale,
    firehose_server: firehose.FirehoseProcess,
    case_name: str,
    subject_name: str,
    decoder: str,
) -> None:
    case = firehose.CASES[case_name]
    subject = peers.SUBJECTS[subject_name]
    skip_unless_runnable(subject, case)

    def stream(n: int) -> peers.Counter:
        counter = peers.Counter(case, n, decoder)
        subject.recv(firehose_server.url(f"/recv/{case_name}/{n}"), counter, case.compressed)
        assert counter.count == counter.expected, (subject_name, counter.count, counter.expected)
        return counter

    # tick cases: the firehose holds every distinct message, which bounds a longer stream
    one = None
    if case.kind.startswith("ticks"):
        one = len(firehose.encode_message(case, firehose.case_messages(case, 1)[0]))
    base = bench_scale.n(case.base_n)
    firehose_server.prepare(case_name, base)  # tick cases: built once per length, cached
    n = steady_n(bench_scale, stream, base, one)
    firehose_server.prepare(case_name, n)
    benchmark.group = f"recv {case_name}: {case.description}"
    counter = measure(
        benchmark,
        bench_scale,
        lambda: stream(n),
        case.expected(n),
        cpu=not isinstance(subject, peers.InWorker),  # a worker's CPU is not this process's
        section="recv",
        case=case_name,
        subject=subject_name,
        decoder=decoder,
        messages=n,
    )
    if isinstance(subject, peers.InWorker):
        return  # the worker checked its own count; the payload stayed in that process
    last = counter.last
    if subject.batches_only:  # the lean form: (device, position, ts, *values)
        assert isinstance(last, tuple) and isinstance(last[0], str)
        assert isinstance(last[1], int) and len(last) > 3
    elif case.kind.startswith("ticks"):
        assert isinstance(last, dict) and last["type"] == "tick"
        assert isinstance(last["data"], dict) and isinstance(last["position"], int)
    elif case.name == "text16k":
        assert isinstance(last, str) and len(last) == 16384
    elif case.kind == "text":
        assert isinstance(last, str) and json.loads(last)["type"] == "tick"
    else:
        assert isinstance(last, bytes | bytearray) and len(last) == len(
            firehose.case_messages(case, 1)[0]
        )


@pytest.mark.parametrize("subject_name", ["iotcommute-aio", "iotcommute-core"])
def test_recv_direct_stores_off(
    benchmark: Any,
    bench_scale: firehose.BenchScale,
    firehose_server: firehose.FirehoseProcess,
    subject_name: str,
) -> None:
    """batch100 to dicts with the tick decoder's direct dict stores off (issue 13): next to
    the same subject's batch100 row (stores on) in the same run."""
    from iotcommute import payload

    if not payload.SPEEDUPS or not payload.ticks_impl.DIRECT_STORES:
        pytest.skip("the compiled tick codec's direct stores are not in use")
    case = firehose.CASES["batch100"]
    subject = peers.SUBJECTS[subject_name]
    skip_unless_runnable(subject, case)
    n = bench_scale.n(case.base_n)
    firehose_server.prepare(case.name, n)
    url = firehose_server.url(f"/recv/{case.name}/{n}")

    def one_stream() -> None:
        counter = peers.Counter(case, n, subject.decoders[0])
        subject.recv(url, counter, False)
        assert counter.count == counter.expected

    payload.ticks_impl._use_direct_stores(False)
    try:
        benchmark.group = "recv batch100: direct dict stores off"
        measure(
            benchmark,
            bench_scale,
            one_stream,
            case.expected(n),
            section="recv",
            case=case.name,
            subject=f"{subject_name} (direct stores off)",
            decoder=subject.decoders[0],
            messages=n,
        )
    finally:
        payload.ticks_impl._use_direct_stores(True)
