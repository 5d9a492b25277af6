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

from ._ticks_py import _CONTROL_PREFIX, _TICK_PREFIX

__all__ = ["deliver_data"]


def deliver_data(
    events: list[Any],
    start: int,
    on_message: Callable[[Any, Any], Any],
    owner: Any,
    failed: Callable[[str, Exception], Any],
    stop: list[bool] | None,
) -> tuple[int, Any]:
    """Pass ``events[start:]`` to ``on_message(ev, owner)`` while they are data messages:
    ``bytes``, or text that is not a control message (`payload.text_kind` 0 or 1). A callback
    that raises goes to ``failed("on_message", exc)`` and the run goes on; once ``stop[0]``
    is true after a callback (the session wants each message again), the run ends there.

    Returns (index of the first event not passed on, or ``len(events)``; the last tick or
    tick batch passed on, for the cursor: a text tick, or bytes opening with the batch
    magic's first byte 0xC1, or None). ``stop=None``: a consumer without a cursor (nothing
    stops the run but a control message or an event, and no last tick is kept)."""
    if start < 0:
        raise ValueError("start must be >= 0")
    if stop is not None and len(stop) != 1:
        raise ValueError("stop must be a one-element list")
    # for loops over the list (sliced when the run starts late): cheaper than indexing;
    # text_kind inline: a call per message is most of this loop's cost in pure Python
    run = events[start:] if start else events
    i = start
    if stop is None:
        for ev in run:
            t = type(ev)
            if t is str:
                head = ev[:14]  # slices compared: cheaper than two str.startswith calls
                if head != _TICK_PREFIX and head[:9] == _CONTROL_PREFIX:
                    break  # a control message
            elif t is not bytes:
                break
            i += 1
            try:
                on_message(ev, owner)
            except Exception as exc:
                failed("on_message", exc)
        return i, None
    latest = None
    for ev in run:
        t = type(ev)
        if t is bytes:
            if ev and ev[0] == 0xC1:
                latest = ev
        elif t is str:
            head = ev[:14]
            if head == _TICK_PREFIX:
                latest = ev
            elif head[:9] == _CONTROL_PREFIX:
                break  # a control message
        else:
            break
        i += 1
        try:
            on_message(ev, owner)
        except Exception as exc:
            failed("on_message", exc)
        if stop[0]:
            break
    return i, latest
