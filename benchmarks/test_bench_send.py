"""Send rate: a device publishing masked 256-byte JSON text frames into the sink, which
answers once it has read exactly the wire bytes of all of them (so the count is checked)."""

from __future__ import annotations

import json
from typing import Any

import firehose
import peers
import pytest

SIZE = 256


def publish_text(size: int = SIZE) -> str:
    """A publish message padded to exactly ``size`` bytes of ASCII JSON."""
    base = {"type": "publish", "data": firehose.make_tick(7)["data"], "pad": ""}
    short = json.dumps(base, separators=(",", ":"))
    base["pad"] = "x" * (size - len(short))
    text = json.dumps(base, separators=(",", ":"))
    assert len(text.encode()) == size
    return text


@pytest.mark.parametrize("subject_name", peers.ORDER)
def test_send(
    benchmark: Any,
    bench_scale: firehose.BenchScale,
    firehose_server: firehose.FirehoseProcess,
    subject_name: str,
) -> None:
    subject = peers.SUBJECTS[subject_name]
    reason = subject.skip_reason()
    if reason:
        pytest.skip(reason)
    n = bench_scale.n(100_000)
    text = publish_text()
    url = firehose_server.url(f"/sink/{n}/{SIZE}")

    benchmark.group = f"send {SIZE}-byte text frames into a sink"
    benchmark.extra_info.update(
        section="send", case=f"{SIZE}B text", subject=subject_name, items=n, messages=n
    )
    # The sink replies only after n frames' worth of bytes arrived: returning is the check.
    benchmark.pedantic(
        subject.send,
        args=(url, n, text),
        rounds=bench_scale.rounds,
        warmup_rounds=bench_scale.warmup,
        iterations=1,
    )
