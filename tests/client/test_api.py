"""The client API a new user meets first (issues 11, 12): the first-connect policy, typed
errors for bad local input, publish with an ack, help() text, Ctrl-C, checkpoints and
keep-alive that tell a slow consumer or a busy server from a dead one."""

from __future__ import annotations

import asyncio
import logging
import os
import pydoc
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from iotcommute import (
    AsyncWebSocket,
    InputError,
    InvalidStatus,
    NetworkError,
    OperationTimeout,
    WebSocket,
)
from iotcommute.server import ServerThread
from iotcommute.server.registry import README_DEVICE_ID, README_DEVICE_KEY, sim_device_id
from tests.client.test_client_support import MiniServer, free_port, wait_for

pytestmark = pytest.mark.timeout(60)

KEY, DEV = README_DEVICE_KEY, README_DEVICE_ID


@pytest.fixture
def server(ref_server_factory: Callable[..., ServerThread]) -> ServerThread:
    return ref_server_factory()


def test_first_connect_to_a_closed_port_fails_fast_with_one_warning_per_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="iotcommute")
    retries: list[int] = []
    ws = WebSocket(KEY, DEV, url=f"ws://127.0.0.1:{free_port()}", max_reconnect_delay=0.05)
    ws.on_reconnect = lambda n, w: retries.append(n)
    with pytest.raises(NetworkError, match="cannot connect"):
        ws.connect()
    assert retries == [1, 2, 3]
    lines = [r for r in caplog.records if r.name == "iotcommute.client"]
    assert sum("retry" in r.getMessage() for r in lines) == 3
    assert all(r.levelno >= logging.WARNING for r in lines)
    assert KEY not in caplog.text


def test_first_connect_to_a_404_fails_with_the_status() -> None:
    srv = MiniServer()
    try:
        ws = WebSocket(KEY, DEV, url=srv.url + "/elsewhere", max_reconnect_delay=0.05)
        with pytest.raises(InvalidStatus) as info:
            ws.connect()
        assert info.value.status == 404 and srv.handshakes == 4
    finally:
        srv.close()


def test_a_404_after_the_first_connection_is_retried_not_fatal() -> None:
    """Once connected, a 404 (a proxy misrouting for a while) is retried like a refused
    connection, past the first-connect bound, each one reported; the stream resumes when
    the path answers again (protocol.md section 2: 404 is not fatal)."""
    srv = MiniServer()
    errors: list[BaseException] = []
    connects: list[int] = []
    try:
        ws = WebSocket(KEY, DEV, url=srv.url, max_reconnect_delay=0.05)
        ws.on_error = lambda e, w: errors.append(e)
        ws.on_connect = lambda w: connects.append(1)
        ws.connect(threaded=True)
        wait_for(lambda: len(connects) == 1, what="the first connection")
        srv.answer_404 = True
        before = srv.handshakes
        srv.cut_all()
        wait_for(lambda: srv.handshakes - before >= 6, what="retries past the first-connect bound")
        assert ws.join(0.01) is False  # still trying
        assert any(isinstance(e, InvalidStatus) and e.status == 404 for e in errors)
        srv.answer_404 = False
        wait_for(lambda: len(connects) == 2, what="the stream back once the path answers")
        ws.stop()
        assert ws.join(10) and ws.error is None
    finally:
        srv.close()


def test_first_connect_retries_none_waits_for_the_server() -> None:
    port = free_port()
    retries: list[int] = []
    ws = WebSocket(
        KEY, DEV, url=f"ws://127.0.0.1:{port}", max_reconnect_delay=0.05, first_connect_retries=None
    )
    ws.on_reconnect = lambda n, w: retries.append(n)
    ws.connect(threaded=True)
    try:
        wait_for(lambda: len(retries) >= 6, what="retries beyond the first-connect bound")
        assert ws.join(0.01) is False
    finally:
        ws.stop()
        assert ws.join(10)


def test_open_timeout_holds_for_the_asyncio_api() -> None:
    mute = socket.create_server(("127.0.0.1", 0))  # accepts TCP, never answers the upgrade
    port = mute.getsockname()[1]

    async def main() -> None:
        ws = AsyncWebSocket(
            KEY, DEV, url=f"ws://127.0.0.1:{port}", open_timeout=0.3, first_connect_retries=1,
            max_reconnect_delay=0.05,
        )  # fmt: skip
        with pytest.raises(OperationTimeout):  # a hang is a TimeoutError at 5 s: it fails
            await asyncio.wait_for(ws.connect(), 5)

    try:
        asyncio.run(main())
    finally:
        mute.close()


def test_illegal_header_characters_raise_input_error_before_connecting() -> None:
    for kwargs in (
        {"device_key": KEY + "\r\nX-Evil: 1"},
        {"device_id": "dev\n1"},
        {"headers": {"X-Note": "a\nb"}},
    ):
        args: dict[str, Any] = {"device_key": KEY, "device_id": DEV, **kwargs}
        with pytest.raises(InputError) as info:
            WebSocket(url="ws://127.0.0.1:9", **args)
        assert KEY not in str(info.value) and KEY not in repr(info.value)


def test_bad_local_input_is_a_typed_input_error() -> None:
    ws = WebSocket(KEY, DEV, url="ws://127.0.0.1:9")
    with pytest.raises(InputError):
        ws.publish_batch([{}])
    with pytest.raises(InputError):
        ws.send_command("sim-0001", {"x": object()})
    with pytest.raises(InputError):
        ws.subscribe(5)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        ws.publish({"big": 2**70})
    with pytest.raises(InputError):
        WebSocket(KEY, DEV, url="ws://127.0.0.1:9", subscribe=5)  # type: ignore[arg-type]


def test_publish_wait_returns_the_position(server: ServerThread) -> None:
    ws = WebSocket(KEY, DEV, url=server.url, subscribe=None)
    opened = threading.Event()
    ws.on_connect = lambda w: opened.set()
    ws.connect(threaded=True)
    try:
        assert opened.wait(10)
        first = ws.publish({"t": 1.5}, wait=True, timeout=5)
        second = ws.publish({"t": 2.5}, wait=True, timeout=5)
        assert isinstance(first, int) and second == first + 1
        assert ws.stats()["unacked_publishes"] == 0
    finally:
        ws.stop()
        ws.join(10)

    async def main() -> None:
        async with AsyncWebSocket(KEY, DEV, url=server.url, subscribe=None) as aws:
            pos = await aws.publish({"t": 3.5}, wait=True, timeout=5)
            assert pos == (second or 0) + 1

    asyncio.run(main())


def test_a_device_can_opt_out_of_fleet_telemetry(server: ServerThread) -> None:
    got: list[Any] = []
    ws = WebSocket(KEY, DEV, url=server.url, subscribe=None)
    ws.on_tick = lambda t, w: got.append(t)
    opened = threading.Event()
    ws.on_connect = lambda w: opened.set()
    ws.connect(threaded=True)
    try:
        assert opened.wait(10) and ws.subscription is None
        server.call(lambda: server.hub.log.append(sim_device_id(1), {"v": 1.0}))
        time.sleep(0.3)
        assert got == []
    finally:
        ws.stop()
        ws.join(10)


def test_help_lists_callbacks_and_parameters() -> None:
    for cls in (WebSocket, AsyncWebSocket):
        text = pydoc.plain(pydoc.render_doc(cls))
        for callback in (
            "on_connect(ws)",
            "on_tick(tick, ws)",
            "on_ticks(ticks, ws)",
            "on_tick_rows(fields, rows, ws)",
            "on_message(message, ws)",
            "on_command(command, ws)",
            "on_close(code, reason, ws)",
            "on_error(error, ws)",
            "on_reconnect(attempt, ws)",
            "on_noreconnect(ws)",
            "on_gap(gap, ws)",
        ):
            assert callback in text, (cls.__name__, callback)
        for param, default in (
            ("ping_interval", "default 20.0"),
            ("open_timeout", "default 10.0"),
            ("first_connect_retries", "default 3"),
            ("max_size", "default 4194304"),
            ("offline_queue", "default 10000"),
            ("subscribe", "None (no telemetry"),
        ):
            assert param in text and default in text, (cls.__name__, param)
        assert "seconds" in text and "bytes" in text
        assert "publish(" in text and "wait" in text


def test_ctrl_c_in_a_blocking_connect_ends_without_a_chained_traceback() -> None:
    code = (
        "from iotcommute import WebSocket\n"
        f"ws = WebSocket({KEY!r}, {DEV!r}, url='ws://127.0.0.1:{free_port()}',"
        " first_connect_retries=None, max_reconnect_delay=0.05)\n"
        "ws.on_reconnect = lambda n, w: print('retry', n, flush=True)\n"
        "ws.connect()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("retry")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert "KeyboardInterrupt" in err
    assert "CancelledError" not in err and "During handling" not in err


def test_async_checkpoint_holds_only_what_the_iterator_handed_out(
    server: ServerThread, tmp_path: Path
) -> None:
    cp = tmp_path / "pos"

    async def main() -> list[int]:
        ws = AsyncWebSocket(KEY, DEV, url=server.url, checkpoint=cp, max_queue=50)
        got: list[int] = []
        async with ws:
            await asyncio.sleep(0.2)
            positions = await asyncio.to_thread(
                server.call,
                lambda: [server.hub.log.append(sim_device_id(1), {"v": i}) for i in range(500)],
            )
            async for tick in ws:
                got.append(tick["position"])
                if len(got) == 10:
                    break
            assert ws.stats()["queued_ticks"] > 0  # more arrived than were taken
        assert got == positions[:10]
        return got

    got = asyncio.run(main())
    assert int(cp.read_text().split()[0]) == got[-1]  # "position log-id"


def test_async_checkpoint_ignores_ticks_queued_before_the_loop_starts(
    server: ServerThread, tmp_path: Path
) -> None:
    """Ticks that arrive between `async with` and `async for` wait in the queue: they are
    not checkpointed until the iterator hands them out (else a restart would skip them)."""
    cp = tmp_path / "pos"

    async def main() -> list[int]:
        ws = AsyncWebSocket(KEY, DEV, url=server.url, checkpoint=cp, max_queue=50)
        got: list[int] = []
        async with ws:
            positions = await asyncio.to_thread(
                server.call,
                lambda: [server.hub.log.append(sim_device_id(1), {"v": i}) for i in range(30)],
            )
            deadline = asyncio.get_running_loop().time() + 10
            while ws.stats()["queued_ticks"] < 30:  # all of them read before the loop
                assert asyncio.get_running_loop().time() < deadline, ws.stats()
                await asyncio.sleep(0.02)
            async for tick in ws:
                got.append(tick["position"])
                if len(got) == 5:
                    break
        assert got == positions[:5]
        return got

    got = asyncio.run(main())
    assert int(cp.read_text().split()[0]) == got[-1]


def test_keepalive_spares_a_paused_consumer(server: ServerThread) -> None:
    async def main() -> None:
        ws = AsyncWebSocket(
            KEY, DEV, url=server.url, ping_interval=0.2, ping_timeout=0.2, max_queue=20,
            compression=False,
        )  # fmt: skip
        async with ws:
            await asyncio.sleep(0.2)
            await asyncio.to_thread(
                server.call,
                lambda: [server.hub.log.append(sim_device_id(1), {"v": i}) for i in range(300)],
            )
            await asyncio.sleep(1.5)  # the consumer reads nothing: reading is paused
            assert ws.stats()["reading_paused"]
            n = 0
            async for _ in ws:
                n += 1
                if n == 300:
                    break
            assert ws.stats()["connections"] == 1 and ws.stats()["reconnects"] == 0

    asyncio.run(main())


def test_keepalive_any_frame_proves_life() -> None:
    """A server that streams but never answers pings is alive (docs/protocol.md, 9)."""
    from tests.client.test_aio import _Peer

    class Streamer(_Peer):
        def _parse(self, buf: bytes) -> bytes:
            return b""  # never answers pings (nor reads anything)

    peer = Streamer()
    closes: list[Any] = []
    got: list[Any] = []
    ws = WebSocket(
        KEY, DEV, url=peer.url, ping_interval=0.5, ping_timeout=0.5, subscribe=None,
        reconnect=False, close_timeout=0.3,
    )  # fmt: skip
    ws.on_close = lambda c, r, w: closes.append((c, r))
    ws.on_message = lambda m, w: got.append(m)
    ws.connect(threaded=True)
    try:
        # frames may only follow the peer's 101 answer: wait until the client is open
        wait_for(lambda: peer.conn is not None and ws.is_connected(), what="the connection")
        deadline = time.monotonic() + 3.0  # three times the silence limit, no pong ever
        assert peer.conn is not None
        while time.monotonic() < deadline:  # a text frame every 50 ms, no pong ever
            peer.conn.sendall(b"\x81\x02hi")
            time.sleep(0.05)
        assert closes == [] and ws.is_connected() and len(got) > 10
    finally:
        ws.stop()
        ws.join(10)
        peer.close()


def test_a_peer_that_never_reads_cannot_grow_our_buffers() -> None:
    """Pings from a peer that reads nothing: we stop reading once our pongs fill the socket
    (no unbounded pong buffer); a producer thread gets OperationTimeout instead of queueing."""
    from tests.client.test_aio import _Peer

    class Pinger(_Peer):
        def _parse(self, buf: bytes) -> bytes:
            return b""

    peer = Pinger(stall=True)  # accepts, then reads nothing
    ws = WebSocket(
        KEY, DEV, url=peer.url, subscribe=None, ping_interval=None, reconnect=False,
        open_timeout=0.5, close_timeout=0.3,
    )  # fmt: skip
    ws.connect(threaded=True)
    try:
        wait_for(lambda: peer.conn is not None and ws.is_connected(), what="the connection")
        assert peer.conn is not None
        ping = b"\x89\x7d" + b"p" * 125
        peer.conn.settimeout(3)
        sent = 0
        try:
            while sent < 200_000:  # 25 MB of pings; stops when we no longer read them
                peer.conn.sendall(ping * 100)
                sent += 100
        except (TimeoutError, OSError):
            pass
        peer.conn.settimeout(30)
        assert sent < 200_000, "the client kept reading pings it could not answer"
        st = ws.stats()
        assert st["buffered_bytes"] < 4 * 2**20, st
        with pytest.raises(OperationTimeout):
            for _ in range(100_000):
                ws.send("x" * 1000)
        assert ws.stats()["outbox"] < 1000
    finally:
        ws.close()
        ws.join(10)
        peer.close()


def test_callback_signatures_are_checked_by_mypy() -> None:
    """mypy (strict: unused ignores are errors) proves these assignments are rejected."""
    ws = WebSocket(KEY, DEV, url="ws://127.0.0.1:9")

    def one_argument(tick: dict[str, Any]) -> None: ...

    def wrong_types(code: str, reason: int, w: Any) -> None: ...

    ws.on_tick = one_argument  # type: ignore[assignment]
    ws.on_close = wrong_types  # type: ignore[assignment]
    ws.on_tick = lambda tick, w: None  # the right shape needs no ignore
