"""Reconnect, lossless resume, keep-alive and the backoff policy (real loopback sockets)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_client_support import CutProxy, MiniServer, wait_for, watch_subscribed

from iotcommute import WebSocket
from iotcommute.client.backoff import Backoff, is_fatal
from iotcommute.exceptions import NetworkError, TokenError
from iotcommute.server import ServerThread
from iotcommute.server.registry import README_DEVICE_ID, README_DEVICE_KEY, sim_device_id

pytestmark = pytest.mark.timeout(90)

KEY, DEV = README_DEVICE_KEY, README_DEVICE_ID


def append(srv: ServerThread, n: int) -> list[int]:
    def go() -> list[int]:
        log = srv.hub.log
        dev = sim_device_id(1)
        return [log.append(dev, {"i": i, "v": i * 0.25}) for i in range(n)]

    return srv.call(go)


@pytest.fixture
def durable_server(ref_server_factory: Callable[..., ServerThread], tmp_path: Path) -> ServerThread:
    # SQLite-backed so the log (and positions) survive restart()
    return ref_server_factory(retain=400_000, db=tmp_path / "log.sqlite")


@pytest.mark.parametrize(
    ("fmt", "loop"), [("binary", "uvloop"), ("json", "uvloop"), ("binary", "asyncio")]
)
def test_every_tick_once_in_order_across_cuts_and_restart(
    durable_server: ServerThread, fmt: str, loop: str
) -> None:
    import asyncio

    srv = durable_server
    proxy = CutProxy(srv.port)
    got: list[int] = []
    connects = threading.Semaphore(0)
    total = 100_000 if fmt == "binary" else 30_000
    ws = WebSocket(
        KEY,
        DEV,
        "device",
        url=proxy.url,
        format=fmt,
        max_reconnect_delay=0.2,
        loop_factory=asyncio.new_event_loop if loop == "asyncio" else None,
    )
    ws.on_tick = lambda t, w: got.append(t["position"])
    ws.on_connect = lambda w: connects.release()
    subscribed = watch_subscribed(ws)
    ws.connect(threaded=True)
    try:
        assert connects.acquire(timeout=10)
        assert subscribed.acquire(timeout=10)
        ws.on_message = None
        expected: list[int] = []
        chunk = total // 10
        for k in range(10):
            expected += append(srv, chunk)
            goal = len(expected) - chunk // 2
            wait_for(lambda: len(got) >= goal, 30, "progress")  # noqa: B023
            if k in (2, 5):
                proxy.cut()  # network cut mid-stream
            elif k == 3:
                ws._drop_connection()  # client-side abort
            elif k == 7:
                srv.restart()  # server killed and restarted on the same port
        wait_for(lambda: len(got) >= total, 60, f"{total} ticks")
        assert len(got) == total
        assert got == expected  # every tick exactly once, in order
        assert ws.stats()["reconnects"] >= 3
        assert ws.stats()["connections"] >= 4
    finally:
        ws.stop()
        ws.join(10)
        proxy.close()


def test_half_open_connection_detected_by_ping_timeout() -> None:
    srv = MiniServer()
    proxy = CutProxy(srv.port)
    closes: list[tuple[int, str]] = []
    errors: list[BaseException] = []
    opened = threading.Semaphore(0)
    ws = WebSocket(
        KEY,
        DEV,
        "device",
        url=proxy.url,
        ping_interval=0.3,
        ping_timeout=0.5,
        max_reconnect_delay=0.1,
    )
    ws.on_connect = lambda w: opened.release()
    ws.on_close = lambda code, reason, w: closes.append((code, reason))
    ws.on_error = lambda e, w: errors.append(e)
    ws.connect(threaded=True)
    try:
        assert opened.acquire(timeout=10)
        wait_for(lambda: ws.stats()["rtt"] is not None, what="a pong")
        proxy.frozen = True  # both sockets stay open, nothing flows: a half-open link
        wait_for(lambda: bool(closes), 10, "dead connection detected")
        assert closes[0][0] == 1006 and "pong" in closes[0][1]
        assert any("keep-alive" in str(e) for e in errors)
        proxy.frozen = False
        proxy.cut()
        assert opened.acquire(timeout=10), "no reconnect after the dead link"
    finally:
        ws.stop()
        ws.join(10)
        proxy.close()
        srv.close()


def test_idle_timeout_without_pings() -> None:
    srv = MiniServer()
    proxy = CutProxy(srv.port)
    closes: list[tuple[int, str]] = []
    ws = WebSocket(
        KEY, DEV, "device", url=proxy.url, ping_interval=None, idle_timeout=0.5, reconnect=False
    )
    ws.on_close = lambda code, reason, w: closes.append((code, reason))
    done = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            ws.connect()
        except BaseException as exc:
            errors.append(exc)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    try:
        assert done.wait(15)
        assert closes and "no data" in closes[0][1]
        assert isinstance(errors[0], NetworkError)
    finally:
        proxy.close()
        srv.close()


def test_close_is_bounded_when_peer_never_answers() -> None:
    srv = MiniServer()
    proxy = CutProxy(srv.port)
    opened = threading.Event()
    ws = WebSocket(KEY, DEV, "device", url=proxy.url, close_timeout=0.3, ping_interval=None)
    ws.on_connect = lambda w: opened.set()
    ws.connect(threaded=True)
    try:
        assert opened.wait(10)
        proxy.frozen = True  # our close frame never reaches the server
        ws.close()
        assert ws.join(10), "close() was not bounded by close_timeout"
    finally:
        proxy.close()
        srv.close()


def test_gap_reported_when_resume_point_was_trimmed(tmp_path: Path) -> None:
    srv = ServerThread(port=0, retain=100).start()
    try:
        append(srv, 300)  # positions 1..300; only 201..300 retained
        cp = tmp_path / "pos"
        cp.write_text("50\n")  # a process that stopped long ago at position 50
        gaps: list[dict[str, Any]] = []
        got: list[int] = []
        ws = WebSocket(KEY, DEV, "device", url=srv.url, checkpoint=cp)
        ws.on_gap = lambda g, w: gaps.append(g)
        ws.on_tick = lambda t, w: got.append(t["position"])
        ws.connect(threaded=True)
        try:
            wait_for(lambda: len(got) >= 100, what="replay after the gap")
            assert gaps and gaps[0]["type"] == "gap" and gaps[0]["from"] == 50
            assert got == list(range(201, 301))
        finally:
            ws.stop()
            ws.join(10)
    finally:
        srv.stop()


def test_duplicates_from_overlapping_subscriptions_are_dropped() -> None:
    srv = MiniServer()
    got: list[int] = []
    ws = WebSocket(KEY, DEV, "device", url=srv.url)
    ws.on_tick = lambda t, w: got.append(t["position"])
    opened = threading.Event()
    ws.on_connect = lambda w: opened.set()
    ws.connect(threaded=True)
    try:
        assert opened.wait(10)
        wait_for(lambda: srv.subscriptions >= 1, what="subscription")
        srv.produce(20)
        wait_for(lambda: len(got) >= 20)
        ws.subscribe("*", from_position=0)  # replays 1..20 again: all duplicates
        wait_for(lambda: srv.subscriptions >= 2, what="second subscription")
        srv.produce(5)
        wait_for(lambda: len(got) >= 25)
        wait_for(lambda: ws.stats()["duplicates_dropped"] >= 20, what="duplicates")
        assert got == list(range(1, 26))
    finally:
        ws.stop()
        ws.join(10)
        srv.close()


# ---------------------------------------------------------------------- backoff policy


def test_backoff_full_jitter_cap_and_retries() -> None:
    b = Backoff(initial=1.0, factor=2.0, max_delay=5.0, max_retries=5, jitter=lambda: 1.0)
    assert [b.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 5.0, 5.0, None]
    low = Backoff(initial=1.0, jitter=lambda: 0.0)
    assert low.next_delay() == 0.0  # full jitter reaches down to zero


def test_backoff_resets_only_after_a_stable_connection() -> None:
    now = [0.0]
    b = Backoff(initial=1.0, reset_after=10.0, jitter=lambda: 1.0, clock=lambda: now[0])
    b.next_delay()
    b.next_delay()
    b.connected()
    now[0] += 3.0
    b.disconnected()  # flapping: keep backing off
    assert b.next_delay() == 4.0
    b.connected()
    now[0] += 30.0
    b.disconnected()  # stable for 30 s: start over
    assert b.next_delay() == 1.0


def test_fatal_classification() -> None:
    assert is_fatal(TokenError("bad key"))
    assert not is_fatal(NetworkError("refused"))
    assert not is_fatal(OSError("boom"))


def test_server_that_lost_its_log_is_followed_not_ignored(
    ref_server_factory: Callable[..., ServerThread],
) -> None:
    from iotcommute.exceptions import DataError

    srv = ref_server_factory()  # in-memory log: a restart starts again at position 1
    got: list[int] = []
    errors: list[BaseException] = []
    ws = WebSocket(KEY, DEV, "device", url=srv.url, max_reconnect_delay=0.1)
    ws.on_tick = lambda t, w: got.append(t["position"])
    ws.on_error = lambda e, w: errors.append(e)
    subscribed = watch_subscribed(ws)
    ws.connect(threaded=True)
    try:
        assert subscribed.acquire(timeout=10)
        append(srv, 50)
        wait_for(lambda: len(got) == 50, what="ticks before the restart")
        srv.restart()
        assert subscribed.acquire(timeout=10), "no re-subscription after the restart"
        fresh = append(srv, 10)  # positions 1..10 again
        wait_for(lambda: len(got) == 60, what="ticks after the log reset")
        assert got[50:] == fresh
        assert any(isinstance(e, DataError) for e in errors)
    finally:
        ws.stop()
        ws.join(10)
