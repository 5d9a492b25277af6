"""Send rate: a device publishing masked 256-byte JSON text frames into the sink, which
answers once it has read exactly the wire bytes of all of them (so the count is checked).

Two cases, so that every subject in a case writes the same way:

* ``256B text, write per frame``: one socket write per frame (the core and the peers);
* ``256B text, batched writes``: a burst of frames gathered into ~64 KiB writes: the public
  iotcommute APIs (which cork their sends), and the core and wsproto doing it by hand.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from benchmarks import firehose, peers
from benchmarks.rounds import measure

SIZE = 256


def publish_text(size: int = SIZE) -> str:
    """A publish message padded to exactly ``size`` bytes of ASCII JSON."""
    base = {"type": "publish", "data": firehose.make_tick(7)["data"], "pad": ""}
    short = json.dumps(base, separators=(",", ":"))
    base["pad"] = "x" * (size - len(short))
    text = json.dumps(base, separators=(",", ":"))
    assert len(text.encode()) == size
    return text


MODES = {"per-frame": f"{SIZE}B text, write per frame", "batched": f"{SIZE}B text, batched writes"}


def _params() -> list[Any]:
    return [
        pytest.param(mode, name, id=f"{mode}-{name}")
        for mode in MODES
        for name in peers.ORDER
        if mode in peers.SUBJECTS[name].send_modes
    ]


@pytest.mark.parametrize(("mode", "subject_name"), _params())
def test_send(
    benchmark: Any,
    bench_scale: firehose.BenchScale,
    firehose_server: firehose.FirehoseProcess,
    mode: str,
    subject_name: str,
) -> None:
    subject = peers.SUBJECTS[subject_name]
    reason = subject.skip_reason()
    if reason:
        pytest.skip(reason)
    n = bench_scale.n(100_000)
    text = publish_text()
    url = firehose_server.url(f"/sink/{n}/{SIZE}")
    batched = mode == "batched"

    def one_stream() -> None:
        # The sink replies only after n frames' worth of bytes arrived: returning is the check.
        subject.send(url, n, text, batched)

    benchmark.group = f"send {MODES[mode]} into a sink"
    measure(
        benchmark,
        bench_scale,
        one_stream,
        n,
        section="send",
        case=MODES[mode],
        subject=subject_name,
        messages=n,
    )
