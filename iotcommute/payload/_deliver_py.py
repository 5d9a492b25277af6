"""The raw consumer's hot loop: a read's data messages to ``on_message``, in order.

Pure twin of the compiled ``iotcommute.payload._deliver`` (``_speedups/_deliver.pyx``); the
two behave identically (tests/payload/test_deliver_differential.py). It lives with the
codecs because it knows the envelope (what is data, what is a control message) and nothing
of the session: the client's Session owns every decision and runs this only for the common
stretch of a read, so a data message costs a type check and the call, and control comes back
at the first event that needs the session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import text_kind

__all__ = ["deliver_data"]


def deliver_data(
    events: list[Any],
    start: int,
    on_message: Callable[[Any, Any], Any],
    owner: Any,
    failed: Callable[[str, Exception], Any],
    stop: list[bool],
) -> tuple[int, Any]:
    """Pass ``events[start:]`` to ``on_message(ev, owner)`` while they are data messages:
    ``bytes``, or text that is not a control message (`payload.text_kind` 0 or 1). A callback
    that raises goes to ``failed("on_message", exc)`` and the run goes on; once ``stop[0]``
    is true after a callback (the session wants each message again), the run ends there.

    Returns (index of the first event not passed on, or ``len(events)``; the last tick or
    tick batch passed on, for the cursor: a text tick, or bytes opening with the batch
    magic's first byte 0xC1, or None)."""
    if start < 0:
        raise ValueError("start must be >= 0")
    if len(stop) != 1:
        raise ValueError("stop must be a one-element list")
    latest = None
    i = start
    while i < len(events):  # re-read: a callback could change the list
        ev = events[i]
        t = type(ev)
        if t is bytes:
            if ev and ev[0] == 0xC1:
                latest = ev
        elif t is str:
            kind = text_kind(ev)
            if kind == 2:
                break
            if kind == 1:
                latest = ev
        else:
            break
        i += 1
        try:
            on_message(ev, owner)
        except Exception as exc:
            failed("on_message", exc)
        if not stop or stop[0]:
            break
    return i, latest
