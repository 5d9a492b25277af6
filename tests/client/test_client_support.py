"""Test helpers for the client tests: a fault-injecting TCP proxy and a tiny protocol server.

`MiniServer` speaks the JSON subset of IOT commute protocol v1 (welcome, subscribe with
resume, ticks, publish, commands/acks, 401/403 at the handshake) on the `websockets`
library -- an independent implementation, so client bugs cannot hide by being symmetric.
It keeps its log across restart() so "server killed and restarted" can be tested.
`CutProxy` sits between client and server: it counts connections, can cut every
connection, or freeze (stop forwarding while keeping sockets open = half-open link).

Why MiniServer is not tests/rawserver.RawServer: RawServer plays a fixed script of exact
bytes over one connection (RFC 6455 conformance: its own framing, no protocol state);
MiniServer keeps protocol state (a log, resumable subscriptions, routing of commands to
online devices) across many connections and restarts. Expressing one with the other would
mean writing a WebSocket server loop into RawServer or byte scripts into MiniServer. The
HTTP proxy is tests/proxy.py (shared with the REST tests).

(This module holds no tests itself; it is named test_* only so it may live in tests/.)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

KEY, DEVICE = "L1SEIUDU1MC996W48L8Q", "FY6ODPIVU522SY1"

# the server's byte form: compact, "type" first (docs/protocol.md: control messages are
# recognised by their first bytes)
_dumps = functools.partial(json.dumps, separators=(",", ":"))
WAIT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoopThread:
    """An asyncio loop in a daemon thread; run coroutines on it from the test thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = WAIT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        async def wrap() -> Any:
            return fn(*args)

        return self.run(wrap())

    def close(self) -> None:
        async def cancel_all() -> None:
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()


class MiniServer:
    def __init__(self, devices: dict[str, str] | None = None, trim_below: int = 0) -> None:
        self.devices = devices or {DEVICE: KEY, "dev-2": "key-2"}
        self.log: list[dict[str, Any]] = []  # log[i] has position i + 1
        self.first_position = 1 + trim_below
        self.handshakes = 0
        self.rejected = 0
        self.answer_404 = False  # a misrouting proxy: every upgrade answered 404
        self.port = free_port()
        self.lt = LoopThread()
        self._server: Any = None
        self._new_data: asyncio.Event | None = None
        self.conns: set[ServerConnection] = set()
        self.online: dict[str, ServerConnection] = {}
        self.received: list[Any] = []
        self.subscriptions = 0  # subscribe requests handled (tests wait on it: no race)
        self._waiting_acks: dict[str, ServerConnection] = {}
        self.start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        async def go() -> None:
            self._new_data = asyncio.Event()
            self._server = await serve(
                self._handler,
                "127.0.0.1",
                self.port,
                process_request=self._check,
                ping_interval=None,
                max_size=2**22,
            )

        self.lt.run(go())

    def stop(self) -> None:
        async def go() -> None:
            self._server.close()
            await self._server.wait_closed()
            self.conns.clear()
            self.online.clear()

        self.lt.run(go())

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        self.lt.close()

    # -- log --------------------------------------------------------------------------
    def _append(self, device: str, data: dict[str, Any], ts: float | None = None) -> int:
        pos = self.first_position + len(self.log)
        self.log.append(
            {
                "type": "tick",
                "device": device,
                "position": pos,
                "ts": ts if ts is not None else time.time(),
                "data": data,
            }
        )
        assert self._new_data is not None
        self._new_data.set()
        self._new_data = asyncio.Event()
        return pos

    def produce(self, n: int, device: str = "dev-2") -> None:
        """Append n ticks (from the test thread)."""

        def go() -> None:
            for i in range(n):
                self._append(device, {"seq": len(self.log) + 1, "v": i * 0.5})

        self.lt.call(go)

    @property
    def last_position(self) -> int:
        return self.first_position + len(self.log) - 1

    # -- protocol ---------------------------------------------------------------------
    def _check(self, conn: ServerConnection, request: Request) -> Response | None:
        self.handshakes += 1
        h = request.headers
        if request.path != "/v1/stream" or self.answer_404:
            return conn.respond(404, "no such endpoint\n")
        if self.devices.get(h.get("X-Device-Id", "")) != h.get("X-Device-Key"):
            self.rejected += 1
            return conn.respond(401, "bad device key\n")
        if h.get("X-Role") not in ("device", "client"):
            self.rejected += 1
            return conn.respond(403, "role not allowed\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        device = ws.request.headers["X-Device-Id"] if ws.request else "?"
        role = ws.request.headers["X-Role"] if ws.request else "?"
        self.conns.add(ws)
        if role == "device":
            self.online[device] = ws
        feeders: list[asyncio.Task[None]] = []
        try:
            await ws.send(
                _dumps(
                    {
                        "type": "welcome",
                        "version": 1,
                        "role": role,
                        "device": device,
                        "position": self.last_position,
                        "server": "mini",
                    }
                )
            )
            async for raw in ws:
                self.received.append(raw)
                if isinstance(raw, bytes):
                    continue
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind == "subscribe":
                    frm = msg.get("from")
                    await ws.send(
                        _dumps(
                            {
                                "type": "subscribed",
                                "id": msg.get("id"),
                                "devices": msg.get("devices"),
                                "position": self.last_position,
                            }
                        )
                    )
                    start = self.last_position if frm is None else frm
                    devs = msg.get("devices")
                    feeders.append(
                        asyncio.create_task(
                            self._feed(ws, start, None if devs == "*" else set(devs))
                        )
                    )
                    self.subscriptions += 1
                elif kind == "publish":
                    pos = self._append(device, msg.get("data") or {}, msg.get("ts"))
                    if msg.get("id") is not None:
                        await ws.send(
                            _dumps({"type": "published", "id": msg["id"], "position": pos})
                        )
                elif kind == "command":
                    target = self.online.get(msg.get("device", ""))
                    if target is None:
                        await ws.send(
                            _dumps(
                                {
                                    "type": "ack",
                                    "id": msg.get("id"),
                                    "ok": False,
                                    "error": "device offline",
                                }
                            )
                        )
                    else:
                        self._waiting_acks[str(msg.get("id"))] = ws
                        await target.send(
                            _dumps(
                                {
                                    "type": "command",
                                    "id": msg.get("id"),
                                    "from": device,
                                    "data": msg.get("data"),
                                }
                            )
                        )
                elif kind == "ack":
                    requester = self._waiting_acks.pop(str(msg.get("id")), None)
                    if requester is not None:
                        await requester.send(raw)
                elif kind == "unsubscribe":
                    for t in feeders:
                        t.cancel()
                    feeders.clear()
        except ConnectionClosed:
            pass
        finally:
            for t in feeders:
                t.cancel()
            self.conns.discard(ws)
            if self.online.get(device) is ws:
                del self.online[device]

    async def _feed(self, ws: ServerConnection, after: int, devices: set[str] | None) -> None:
        cursor = after
        if cursor < self.first_position - 1:
            await ws.send(
                _dumps(
                    {
                        "type": "gap",
                        "from": cursor,
                        "to": self.first_position - 1,
                        "missed": self.first_position - 1 - cursor,
                    }
                )
            )
            cursor = self.first_position - 1
        try:
            while True:
                assert self._new_data is not None
                ev = self._new_data
                idx = cursor - self.first_position + 1
                batch = self.log[idx : idx + 500]
                if not batch:
                    await ev.wait()
                    continue
                for rec in batch:
                    if devices is None or rec["device"] in devices:
                        await ws.send(_dumps(rec))
                cursor = batch[-1]["position"]
        except ConnectionClosed:
            pass

    def broadcast(self, message: str | bytes) -> None:
        """Send one raw message to every connected client (e.g. a corrupt one)."""

        async def go() -> None:
            for ws in list(self.conns):
                await ws.send(message)

        self.lt.run(go())

    def cut_all(self) -> None:
        """Drop every client TCP connection abruptly (no close frame)."""

        def go() -> None:
            for ws in list(self.conns):
                ws.transport.abort()

        self.lt.call(go)


class CutProxy:
    """TCP proxy: counts connections; cut() drops them; freeze() stops forwarding."""

    def __init__(self, target_port: int, ssl: Any = None) -> None:
        """`ssl`: a server SSLContext to terminate TLS here (a wss:// front end)."""
        self.target_port = target_port
        self.port = free_port()
        self.connections = 0
        self.frozen = False
        self.lt = LoopThread()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

        async def go() -> None:
            self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port, ssl=ssl)

        self.lt.run(go())

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            w.close()
            return
        self._writers.update((w, uw))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    while self.frozen:  # half-open: hold the bytes, keep the socket
                        await asyncio.sleep(0.05)
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(r, uw), pump(ur, w))
        self._writers.discard(w)
        self._writers.discard(uw)

    def cut(self) -> None:
        def go() -> None:
            for w in list(self._writers):
                w.transport.abort()
            self._writers.clear()

        self.lt.call(go)

    def close(self) -> None:
        self.cut()

        async def go() -> None:
            assert self._server is not None
            self._server.close()

        with contextlib.suppress(Exception):
            self.lt.run(go())
        self.lt.close()


def wait_for(cond: Callable[[], bool], timeout: float = WAIT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def watch_subscribed(ws: Any) -> threading.Semaphore:
    """Released once per "subscribed" reply: tests append ticks only after the server
    has registered the subscription (a subscription from the tail would miss them)."""
    sem = threading.Semaphore(0)
    prev = ws.on_message

    def on_message(msg: str | bytes, w: Any) -> None:
        if isinstance(msg, str) and '"subscribed"' in msg:
            sem.release()
        if prev is not None:
            prev(msg, w)

    ws.on_message = on_message
    return sem


__all__ = [
    "DEVICE",
    "KEY",
    "CutProxy",
    "Headers",
    "LoopThread",
    "MiniServer",
    "free_port",
    "wait_for",
    "watch_subscribed",
]
