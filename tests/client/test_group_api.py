"""The consumer-group options of WebSocket and AsyncWebSocket, without a server."""

from __future__ import annotations

import pydoc
from typing import Any

import pytest

from iotcommute import AsyncWebSocket, WebSocket
from iotcommute.exceptions import InputError
from iotcommute.server.registry import README_DEVICE_ID, README_DEVICE_KEY

KEY, DEV = README_DEVICE_KEY, README_DEVICE_ID
URL = "ws://127.0.0.1:9"


def test_help_lists_the_group_option_and_callbacks() -> None:
    for cls in (WebSocket, AsyncWebSocket):
        text = pydoc.plain(pydoc.render_doc(cls))
        for needle in ("on_assign(partitions, ws)", "on_revoke(partitions, ws)", "group  ",
                       "group_commit  ", "commit(self, positions"):  # fmt: skip
            assert needle in text, (cls.__name__, needle)


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"group": "a b"}, "1-64 characters"),
        ({"group": "x" * 65}, "1-64 characters"),
        ({"group": "g", "role": "device"}, "role 'client'"),
        ({"group": "g", "subscribe": ["d1"]}, "subscribe"),
        ({"group": "g", "checkpoint": "pos.txt"}, "checkpoint"),
        ({"group": "g", "group_commit": "later"}, "'auto' or 'manual'"),
        ({"group_commit": "manual"}, "consumer-group member"),
    ],
)
def test_bad_group_options_fail_at_construction(kwargs: dict[str, Any], why: str) -> None:
    kw: dict[str, Any] = {"role": "client", "url": URL, **kwargs}
    with pytest.raises(ValueError, match=why):
        WebSocket(KEY, DEV, **kw)


def test_a_member_does_not_subscribe_by_device() -> None:
    ws = WebSocket(KEY, DEV, "client", url=URL, group="ingest")
    assert ws.stats()["group"] == {
        "name": "ingest",
        "member": None,
        "partitions": {},
        "commits_sent": 0,
        "commits_refused": 0,
        "ticks_dropped": 0,
    }
    with pytest.raises(InputError):
        ws.subscribe("*")
    with pytest.raises(InputError):
        ws.unsubscribe([DEV])


def test_group_callback_signatures_are_checked_by_mypy() -> None:
    """mypy (strict: unused ignores are errors) proves the wrong shape is rejected."""
    ws = AsyncWebSocket(KEY, DEV, "client", url=URL, group="ingest")

    def no_client(partitions: list[int]) -> None: ...

    ws.on_assign = no_client  # type: ignore[assignment]
    ws.on_revoke = lambda partitions, w: None  # the right shape needs no ignore


def test_commit_by_hand_is_for_manual_members() -> None:
    for cls in (WebSocket, AsyncWebSocket):
        auto = cls(KEY, DEV, "client", url=URL, group="g")
        with pytest.raises(InputError, match="manual"):
            auto.commit({0: 1})
        manual = cls(KEY, DEV, "client", url=URL, group="g", group_commit="manual")
        for bad in ({0: -1}, {"0": 1}, {0: 1.5}):
            with pytest.raises(InputError):
                manual.commit(bad)  # type: ignore[arg-type]
        manual.commit({0: 5})  # not connected: nothing owned yet, ignored
        assert manual.partition("sim-0001") == -1  # before the first assign
        plain = cls(KEY, DEV, "client", url=URL)
        assert plain.partition("sim-0001") == -1
