"""Tick frames of log records, as every kind of subscriber receives them (JSON or batches)."""

from __future__ import annotations

import logging
from typing import Any

from .log import Record
from .wire import OP_BINARY, encode_frame

logger = logging.getLogger("iotcommute.server")


def json_frames(recs: list[Record]) -> list[bytes]:
    """JSON tick frames of these records, skipping (with an ERROR log) one that cannot be
    encoded: a poison record must not take the stream of every subscriber down."""
    out = []
    for r in recs:
        try:
            out.append(r.frame())
        except Exception:
            logger.error("record %d (device %s) cannot be encoded; skipped", r.position, r.device)
    return out


def binary_frames(payload: Any, recs: list[Record]) -> list[bytes]:
    """Tick batches for these records, in order.

    A batch carries one data shape (same fields, and a field's type is inferred over the
    batch), so consecutive records are grouped by field names *and* value types: an int
    then stays an int after decoding, exactly as in the JSON tick. A record a batch cannot
    carry at all (a string value published as JSON, say) goes out as a JSON tick in its
    place, so one odd record does not cost a binary subscriber its connection.
    """
    frames: list[bytes] = []
    run: list[dict[str, Any]] = []
    run_recs: list[Record] = []
    shape: tuple[Any, ...] | None = None

    def flush() -> None:
        try:
            frames.append(encode_frame(OP_BINARY, payload.encode_batch(run)))
        except Exception:
            for t, r in zip(run, run_recs):  # e.g. a value out of range: only that record
                try:  # falls back to JSON
                    frames.append(encode_frame(OP_BINARY, payload.encode_batch([t])))
                except Exception:
                    frames.extend(json_frames([r]))
        run.clear()
        run_recs.clear()

    for r in recs:
        sig = r.shape()
        if sig is not shape and sig != shape and run:
            flush()
        shape = sig
        run.append(r.as_tick())
        run_recs.append(r)
    if run:
        flush()
    return frames
