"""AsyncWebSocket on the caller's loop (asyncio and uvloop) against the reference server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from iotcommute import AsyncWebSocket, CommandError, NotConnectedError, TokenError
from iotcommute.server import ServerThread
from iotcommute.server.registry import (
    README_DEVICE_ID,
    README_DEVICE_KEY,
    sim_device_id,
    sim_device_key,
)
from tests.client.test_client_support import CutProxy

pytestmark = pytest.mark.timeout(60)

KEY, DEV = README_DEVICE_KEY, README_DEVICE_ID
SIM1, SIM1_KEY = sim_device_id(1), sim_device_key(1)


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    uvloop = pytest.importorskip("uvloop")
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    factory = asyncio.new_event_loop if request.param == "asyncio" else _uvloop_factory()

    def runner(coro: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(asyncio.wait_for(coro, 45))

    return runner


@pytest.fixture
def server(ref_server_factory: Callable[..., ServerThread]) -> ServerThread:
    return ref_server_factory(retain=500_000)


def append(srv: ServerThread, n: int, device: str = SIM1) -> list[int]:
    def go() -> list[int]:
        log = srv.hub.log
        return [log.append(device, {"i": i, "x": 1.5}) for i in range(n)]

    return srv.call(go)


async def wait_subscribed(ws: AsyncWebSocket) -> None:
    """Resolve on the next "subscribed" reply (so appended ticks are not missed)."""
    fut = asyncio.get_running_loop().create_future()

    def on_message(msg: str | bytes, w: AsyncWebSocket) -> None:
        if isinstance(msg, str) and '"subscribed"' in msg and not fut.done():
            fut.set_result(None)

    ws.on_message = on_message
    await asyncio.wait_for(fut, 10)
    ws.on_message = None


def test_async_for_ticks_in_order(server: ServerThread, run: Any) -> None:
    async def main() -> list[int]:
        ws = AsyncWebSocket(KEY, DEV, "device", url=server.url)
        sub = asyncio.ensure_future(wait_subscribed(ws))
        got: list[int] = []
        async with ws:
            await sub
            expected = await asyncio.to_thread(append, server, 300)
            async for tick in ws:
                got.append(tick["position"])
                if len(got) == 300:
                    break
            assert ws.stats()["position"] == expected[-1]
            assert DEV not in repr(ws) or KEY not in repr(ws)
        assert not ws.is_connected()
        assert got == expected
        return got

    assert len(run(main())) == 300


def test_runs_on_the_callers_loop_without_touching_policy(server: ServerThread, run: Any) -> None:
    policy = asyncio.get_event_loop_policy()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        seen: list[asyncio.AbstractEventLoop] = []
        ws = AsyncWebSocket(KEY, DEV, "device", url=server.url, iterate=False)
        ws.on_connect = lambda w: seen.append(asyncio.get_running_loop())
        async with ws:
            pass
        assert seen == [loop]

    run(main())
    assert asyncio.get_event_loop_policy() is policy


def test_slow_consumer_keeps_memory_bounded(server: ServerThread, run: Any) -> None:
    total, high = 20_000, 200

    async def main() -> None:
        # JSON without compression: every tick costs > 87 wire bytes, so one read into the
        # frame reader's 512 KiB buffer (_READ_SIZE in protocol/_frames_py.py: asyncio and
        # uvloop both fill it) holds < 6100 ticks
        ws = AsyncWebSocket(KEY, DEV, "device", url=server.url, max_queue=high, compression=False)
        sub = asyncio.ensure_future(wait_subscribed(ws))
        async with ws:
            await sub
            expected = await asyncio.to_thread(append, server, total)
            got: list[int] = []
            peak = 0
            paused_seen = False
            async for tick in ws:
                got.append(tick["position"])
                st = ws.stats()
                peak = max(peak, st["queued_ticks"])
                paused_seen = paused_seen or st["reading_paused"]
                if len(got) % 1000 == 0:
                    await asyncio.sleep(0.01)  # a slow consumer
                if len(got) == total:
                    break
            assert got == expected
            assert paused_seen, "the transport never paused reading"
            # bounded: the high-water mark plus at most one network read, not the backlog
            assert peak < high + 6100, peak

    run(main())


def test_commands_and_publish(server: ServerThread, run: Any) -> None:
    async def main() -> None:
        device = AsyncWebSocket(KEY, DEV, "device", url=server.url, subscribe=None)

        def on_command(cmd: dict[str, Any], ws: AsyncWebSocket) -> None:
            if cmd["data"].get("refuse"):
                ws.ack(cmd["id"], ok=False, error="nope")
            else:
                ws.ack(cmd["id"], data={"got": cmd["data"]})

        device.on_command = on_command
        app = AsyncWebSocket(SIM1_KEY, SIM1, "client", url=server.url)
        sub = asyncio.ensure_future(wait_subscribed(app))
        async with device, app:
            await sub
            ack = await app.send_command(DEV, {"fan": 3}, timeout=5)
            assert ack["ok"] and ack["data"] == {"got": {"fan": 3}}
            with pytest.raises(CommandError):
                await app.send_command(DEV, {"refuse": True}, timeout=5)
            await device.publish({"temperature": 3.25})
            tick = await asyncio.wait_for(app.__anext__(), 10)
            assert tick["device"] == DEV and tick["data"] == {"temperature": 3.25}
        with pytest.raises(NotConnectedError):
            await app.send_command(DEV, {}, timeout=1)

    run(main())


def test_bad_credentials_raise_from_async_with(server: ServerThread, run: Any) -> None:
    proxy = CutProxy(server.port)

    async def main() -> None:
        ws = AsyncWebSocket(
            "NOTAKEY0000000000000", DEV, "device", url=proxy.url, max_reconnect_delay=0.01
        )
        with pytest.raises(TokenError):
            async with ws:
                pass

    try:
        run(main())
        assert proxy.connections == 1
    finally:
        proxy.close()


def test_resume_after_cut_is_lossless(server: ServerThread, run: Any) -> None:
    total = 10_000

    async def main() -> None:
        # a small queue and no compression: the cuts happen while most ticks are unread
        ws = AsyncWebSocket(
            KEY,
            DEV,
            "device",
            url=server.url,
            max_reconnect_delay=0.1,
            max_queue=100,
            compression=False,
        )
        sub = asyncio.ensure_future(wait_subscribed(ws))
        async with ws:
            await sub
            expected = await asyncio.to_thread(append, server, total)
            got: list[int] = []
            async for tick in ws:
                got.append(tick["position"])
                if len(got) in (1000, 6000):
                    ws._drop_connection()
                if len(got) == total:
                    break
            assert got == expected
            assert ws.stats()["connections"] >= 2

    run(main())


@pytest.mark.parametrize("callback", ["on_tick", "on_tick_rows"])
def test_callback_only_use_never_stalls_on_a_full_queue(
    server: ServerThread, run: Any, callback: str
) -> None:
    """A consumer that only sets a callback (on_tick on JSON, or on_tick_rows on a binary
    subscription) and never iterates gets every tick once, in order, and no queue fills up
    behind it to pause the stream."""

    async def main() -> None:
        got: list[int] = []
        if callback == "on_tick":
            ws = AsyncWebSocket(KEY, DEV, "device", url=server.url, max_queue=10)
            ws.on_tick = lambda t, w: got.append(t["position"])
        else:
            ws = AsyncWebSocket(KEY, DEV, "device", url=server.url, max_queue=10, format="binary")
            ws.on_tick_rows = lambda fields, rows, w: got.extend(r[1] for r in rows)
        sub = asyncio.ensure_future(wait_subscribed(ws))
        async with ws:
            await sub
            expected = await asyncio.to_thread(append, server, 2000)
            async with asyncio.timeout(20):
                while len(got) < 2000:
                    await asyncio.sleep(0.01)
            assert got == expected
            assert ws.stats()["queued_ticks"] == 0 and not ws.stats()["reading_paused"]

    run(main())


class _Peer:
    """A bare WebSocket peer on a thread: accepts one upgrade, then (after `release()` when
    `stall`) reads and parses every client frame. `frames` keeps (opcode, payload) when
    `keep`, `count` counts data frames. On the client's close frame it answers with a close
    and hangs up, like a server, so the client's close completes at once."""

    def __init__(self, *, stall: bool = False, keep: bool = True) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(30)
        self.port = self.sock.getsockname()[1]
        self.keep = keep
        self.frames: list[tuple[int, bytes]] = []
        self.conn: Any = None
        self.count = 0
        self.closed = threading.Event()
        self._go = threading.Event()
        if not stall:
            self._go.set()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        import base64
        import hashlib

        conn, _ = self.sock.accept()
        self.conn = conn
        conn.settimeout(30)
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            request, _, buf = head.partition(b"\r\n\r\n")
            key = b""
            for line in request.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"sec-websocket-key":
                    key = value.strip()
            accept = base64.b64encode(
                hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
            )
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self._go.wait(30)
            while True:
                buf = self._parse(buf)
                if self.closed.is_set():
                    conn.sendall(b"\x88\x02\x03\xe8")  # close 1000, then hang up
                    return
                try:
                    chunk = conn.recv(1 << 20)
                except OSError:  # the client aborted: that ends this peer too
                    return
                if not chunk:
                    return
                buf += chunk

    def _parse(self, buf: bytes) -> bytes:
        """Consume the complete masked client frames at the start of buf; return the rest."""
        pos = 0
        while len(buf) - pos >= 6:
            op, n = buf[pos] & 0x0F, buf[pos + 1] & 0x7F
            hdr = 2
            if n == 126:
                n, hdr = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif n == 127:
                n, hdr = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            end = pos + hdr + 4 + n
            if end > len(buf):
                break
            if op == 8:
                self.closed.set()
                return b""
            self.count += 1
            if self.keep:
                mask = buf[pos + hdr : pos + hdr + 4]
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(buf[pos + hdr + 4 : end]))
                self.frames.append((op, data))
            pos = end
        return buf[pos:]

    def release(self) -> None:
        self._go.set()

    def close(self) -> None:
        self._go.set()
        self.thread.join(30)
        self.sock.close()


def _bare_client(peer: _Peer, **kw: Any) -> AsyncWebSocket:
    return AsyncWebSocket(
        KEY,
        DEV,
        "device",
        url=peer.url,
        subscribe=None,
        ping_interval=None,
        reconnect=False,
        **kw,
    )


def test_corked_sends_keep_order_and_go_out_before_close(run: Any) -> None:
    """Small sends are coalesced per loop iteration; nothing is lost or reordered, a
    protocol write (subscribe) and the close frame wait for the sends queued before them."""
    from iotcommute.client.writer import CORK_BYTES

    peer = _Peer()
    n = 3000  # > CORK_BYTES worth of frames: the size bound flushes too, not only the loop

    async def main() -> None:
        async with _bare_client(peer) as ws:
            for i in range(n // 2):
                await ws.send(f"text {i}")
            ws.subscribe("*")  # written at once, but after the sends queued above
            for i in range(n // 2, n):
                await ws.send(f"binary {i}".encode() + b"y" * 32)
        # the context exit closed right after the last send, without yielding first

    try:
        assert n * 40 > CORK_BYTES
        run(main())
        peer.thread.join(30)
        assert peer.closed.is_set()
        texts = [(1, f"text {i}".encode()) for i in range(n // 2)]
        binaries = [(2, f"binary {i}".encode() + b"y" * 32) for i in range(n // 2, n)]
        assert peer.frames[: n // 2] == texts
        assert peer.frames[n // 2][0] == 1 and b'"subscribe"' in peer.frames[n // 2][1]
        assert peer.frames[n // 2 + 1 :] == binaries
    finally:
        peer.close()


def test_send_waits_for_drain_only_above_the_high_water_mark(run: Any) -> None:
    """A peer that stops reading: sends complete until the socket buffers fill, then the
    sender waits (memory stays bounded) and resumes once the peer reads again."""
    n = 200_000  # 256-byte frames: ~53 MB, far more than loopback buffers hold
    frame = "z" * 256
    peer = _Peer(stall=True, keep=False)

    async def main() -> None:
        ws = _bare_client(peer)
        await ws.connect()
        sent = 0

        async def producer() -> None:
            nonlocal sent
            for _ in range(n):
                await ws.send(frame)
                sent += 1

        task = asyncio.ensure_future(producer())
        while not ws._engine.write_paused:  # the stalled peer fills the buffers
            assert not task.done(), "every send completed although the peer reads nothing"
            await asyncio.sleep(0.01)
        stalled_at = sent
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert sent == stalled_at and not task.done()  # waiting for drain, not queueing
        assert ws.stats()["outbox"] == 0 and ws.stats()["buffered_bytes"] < 4 * 2**20
        peer.release()
        await asyncio.wait_for(task, 40)
        await ws.close()

    try:
        run(main())
        peer.thread.join(30)
        assert peer.closed.is_set() and peer.count == n
    finally:
        peer.close()
