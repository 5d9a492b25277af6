"""The compiled raw delivery loop and its pure twin must deliver, stop and report alike.

Random reads (bytes with and without the batch magic, ticks, control messages, application
text, protocol events) go through both `deliver_data`s with callbacks that record every
call, raise on some messages and set the stop cell after some: the calls, the failures, the
returned index and the last tick or batch must be identical.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotcommute.payload import _deliver_py
from tests.compiled import compiled, skip_unless_built

C: ModuleType | None = compiled("iotcommute.payload._deliver")
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Event:
    """A protocol event (not data): the loop must stop at it."""

    def __repr__(self) -> str:
        return "Event()"


EVENT = Event()
MESSAGES = st.one_of(
    st.binary(max_size=6),
    st.binary(max_size=5).map(lambda b: b"\xc1TKB" + b),
    st.sampled_from(
        [
            '{"type":"tick","device":"d","position":1}',
            '{"type":"tick"',
            '{"type":"ack","id":1}',
            '{"type":"',
            '{"type":"ticks"}',
            "hello",
            "",
            "é{",
        ]
    ),
    st.text(max_size=4),
    st.just(EVENT),
)


def run(
    mod: Any,
    events: list[Any],
    start: int,
    raise_on: set[int],
    stop_after: int | None,
    tracked: bool = True,
) -> tuple[int, Any, list[tuple[Any, bool]], list[tuple[str, str]]]:
    calls: list[tuple[Any, bool]] = []
    failures: list[tuple[str, str]] = []
    stop = [False] if tracked else None
    owner = object()

    def on_message(msg: Any, ws: Any) -> None:
        calls.append((msg, ws is owner))
        if stop is not None and stop_after is not None and len(calls) >= stop_after:
            stop[0] = True
        if len(calls) in raise_on:
            raise ValueError(f"callback {len(calls)}")

    def failed(name: str, exc: Exception) -> None:
        failures.append((name, str(exc)))

    end, latest = mod.deliver_data(events, start, on_message, owner, failed, stop)
    return end, latest, calls, failures


@skip_unless_built(C)
@SETTINGS
@given(
    st.lists(MESSAGES, max_size=12),
    st.integers(0, 13),
    st.sets(st.integers(1, 12), max_size=3),
    st.one_of(st.none(), st.integers(1, 12)),
    st.booleans(),
)
def test_twins_agree(
    events: list[Any], start: int, raise_on: set[int], stop_after: int | None, tracked: bool
) -> None:
    """With a stop cell (a consumer with a cursor) and without (stop=None)."""
    assert C is not None
    start = min(start, len(events))
    got_c = run(C, events, start, raise_on, stop_after, tracked)
    got_p = run(_deliver_py, events, start, raise_on, stop_after, tracked)
    assert got_c == got_p


@pytest.mark.parametrize("mod", [m for m in (C, _deliver_py) if m is not None])
def test_what_stops_the_run(mod: Any) -> None:
    """A control message or an event ends the run before it; the stop cell after the call
    that set it; ticks and batches are the `latest` returned."""
    batch = b"\xc1TKB..."
    tick = '{"type":"tick","position":5}'
    control = '{"type":"welcome"}'
    events = [b"raw", batch, "app text", tick, control, b"after"]
    end, latest, calls, failures = run(mod, events, 0, set(), None)
    assert (end, latest, [m for m, _ in calls], failures) == (
        4,
        tick,
        [b"raw", batch, "app text", tick],
        [],
    )
    assert run(mod, events, 5, set(), None)[:2] == (6, None)
    assert run(mod, [b"a", EVENT, b"b"], 0, set(), None)[:2] == (1, None)
    end, latest, calls, _ = run(mod, [batch, b"x", b"y"], 0, set(), 2)
    assert (end, latest, len(calls)) == (2, batch, 2)
    end, _, calls, failures = run(mod, [b"x", b"y"], 0, {1}, None)
    assert end == 2 and len(calls) == 2 and failures == [("on_message", "callback 1")]
    with pytest.raises(ValueError):
        mod.deliver_data([b"x"], -1, print, None, print, [False])
    with pytest.raises(ValueError):
        mod.deliver_data([b"x"], 0, print, None, print, [])
    # without a stop cell: no last tick is kept, only a control message or an event stops
    end, latest, calls, _ = run(mod, events, 0, set(), 1, tracked=False)
    assert (end, latest, len(calls)) == (4, None, 4)
