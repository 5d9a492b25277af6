"""Frames into a sink: the loop under ``iotcommute ingest`` (issue 14).

`ingest_frames` / `aingest_frames` take binary tick-batch frames from any source (a client's
stream, a file of captured frames, a test), decode each into a TickBatch, write it to the sink
and commit at the end. A corrupt frame is reported to `on_error` as a DecodeError (with the
position when the frame reveals one) and the stream goes on; the sink never sees it.

Where the stream starts is the sink's business: subscribe from ``resume_from(sink)``. The
WebSocket wiring (``on_batch`` / ``batches()`` of the rewritten client feeding a sink, and
the ``iotcommute ingest`` command) comes with the client rewrite; it will be this loop over
the client's batches instead of raw frames.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Callable, Iterable

from ..exceptions import DecodeError
from ..payload.columnar import decode_batch_columns
from .base import Sink

__all__ = ["aingest_frames", "ingest_frames", "resume_from"]

log = logging.getLogger("iotcommute.sink.ingest")

Frame = bytes | bytearray | memoryview
OnError = Callable[[DecodeError], None]


def resume_from(sink: Sink) -> int:
    """The ``from`` of the subscription that continues what the sink holds (``from: N``
    delivers every record after N): its last committed position, or 0 (everything retained)
    when it holds nothing."""
    last = sink.last_committed()
    return 0 if last is None else last


def _report(exc: DecodeError, on_error: OnError | None) -> None:
    if on_error is not None:
        on_error(exc)
    else:
        log.warning("dropped a corrupt tick batch (position %s): %s", exc.position, exc.message)


def ingest_frames(
    frames: Iterable[Frame], sink: Sink, *, on_error: OnError | None = None
) -> int | None:
    """Decode and write every frame, then commit; returns the sink's last committed
    position. Corrupt frames go to `on_error` (default: a warning in the log)."""
    for frame in frames:
        try:
            batch = decode_batch_columns(frame)
        except DecodeError as exc:
            _report(exc, on_error)
            continue
        sink.write(batch)
    return sink.commit()


async def aingest_frames(
    frames: AsyncIterable[Frame], sink: Sink, *, on_error: OnError | None = None
) -> int | None:
    """`ingest_frames` for an async source (the sink's writes stay synchronous: a roll
    blocks the loop for as long as it takes to write one file)."""
    async for frame in frames:
        try:
            batch = decode_batch_columns(frame)
        except DecodeError as exc:
            _report(exc, on_error)
            continue
        sink.write(batch)
    return sink.commit()
