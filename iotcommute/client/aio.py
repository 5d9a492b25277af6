"""AsyncWebSocket: the asyncio API, on the caller's running loop.

    async with AsyncWebSocket(key, device_id, "client") as ws:
        async for tick in ws:
            print(tick)

Same options and reconnect/resume behaviour as client.WebSocket (they share
transport.Engine). Ticks go into a bounded queue: above `max_queue` the transport stops
reading from the socket (TCP backpressure reaches the server) and resumes once the
consumer has drained it below `max_queue // 4`, so a slow consumer keeps memory bounded.
The callback attributes (on_tick, on_gap, ...) work too and run on the loop. Ticks are
queued for `async for` unless on_tick/on_ticks/on_tick_rows is set and no iteration has
started (a callback-only user never drains the queue, which would otherwise pause the stream);
iterate=False turns the queue off entirely. With on_tick_rows set, binary batches go to it
in the lean form (see client.WebSocket) and only JSON ticks reach the queue.

send()/publish() are corked: the frames of one loop iteration (at most 64 KiB of them)
go out in one socket write, and a send waits only while the socket's write buffer is over
its high-water mark -- so a tight `await ws.send(...)` loop costs no syscall per frame
and still cannot queue without bound.
"""

from __future__ import annotations

import asyncio
import collections
import os
import ssl as ssl_module
from collections.abc import Callable
from types import TracebackType
from typing import Any

from .. import payload
from ..exceptions import ConnectionClosedOK, NotConnectedError
from .engine import Engine, Options

__all__ = ["AsyncWebSocket"]

Callback = Callable[..., Any] | None


class AsyncWebSocket:
    def __init__(
        self,
        device_key: str | None = None,
        device_id: str | None = None,
        role: str | None = None,
        *,
        url: str | None = None,
        access_token: str | None = None,
        api_key: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        headers: dict[str, str] | None = None,
        proxy: str | None = None,
        ping_interval: float | None = 10.0,
        ping_timeout: float | None = 10.0,
        idle_timeout: float | None = None,
        open_timeout: float = 10.0,
        close_timeout: float = 5.0,
        reconnect: bool = True,
        max_reconnect_delay: float = 30.0,
        max_retries: int | None = None,
        max_size: int = 4 * 2**20,
        compression: bool = True,
        format: str = "json",
        subscribe: str | list[str] | None = "*",
        checkpoint: str | os.PathLike[str] | None = None,
        offline_queue: int = 10000,
        max_queue: int = 10000,
        iterate: bool = True,
    ) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        self._opts = Options(
            device_key=device_key,
            device_id=device_id,
            role=role,
            url=url,
            access_token=access_token,
            api_key=api_key,
            ssl=ssl,
            headers=headers,
            proxy=proxy,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            idle_timeout=idle_timeout,
            open_timeout=open_timeout,
            close_timeout=close_timeout,
            reconnect=reconnect,
            max_reconnect_delay=max_reconnect_delay,
            max_retries=max_retries,
            max_size=max_size,
            compression=compression,
            format=format,
            subscribe=subscribe,
            checkpoint=checkpoint,
            offline_queue=offline_queue,
        )
        self.on_connect: Callback = None
        self.on_tick: Callback = None
        self.on_ticks: Callback = None
        self.on_tick_rows: Callback = None
        self.on_message: Callback = None
        self.on_command: Callback = None
        self.on_close: Callback = None
        self.on_error: Callback = None
        self.on_reconnect: Callback = None
        self.on_noreconnect: Callback = None
        self.on_gap: Callback = None
        self._engine = Engine(self._opts, self)
        self._engine.open_hook = self._opened
        self._high = max_queue
        self._low = max_queue // 4
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._open_waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._iterating = False
        if iterate:
            self._engine.tick_sink = self._push

    def __repr__(self) -> str:
        state = "connected" if self._engine.connected else "disconnected"
        return (
            f"<AsyncWebSocket url={self._opts.url!r} device={self._opts.device_id!r} "
            f"role={self._opts.role!r} {state}>"
        )

    @property
    def position(self) -> int:
        return self._engine.position

    def is_connected(self) -> bool:
        return self._engine.connected

    def stats(self) -> dict[str, Any]:
        s = self._engine.stats()
        s["queued_ticks"] = len(self._queue)
        s["reading_paused"] = self._paused
        return s

    # ------------------------------------------------------------------ lifecycle
    async def connect(self) -> None:
        """Start the session; return once connected (raises if the first attempts fail
        fatally, or with reconnect=False)."""
        if self._task is not None and not self._task.done():
            raise RuntimeError("already connected")
        loop = asyncio.get_running_loop()
        self._engine.prepare()
        self._open_waiter = loop.create_future()
        self._task = loop.create_task(self._engine.run())
        self._task.add_done_callback(self._ended)
        await asyncio.wait([self._open_waiter, self._task], return_when=asyncio.FIRST_COMPLETED)
        if not self._open_waiter.done():
            self._open_waiter.cancel()
            self._task.result()  # raises the error that ended the session
            raise ConnectionClosedOK(1000, "closed before it was established")

    def _opened(self) -> None:
        w = self._open_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved here; re-raised to the user by __anext__/close
        self._wake()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close gracefully (bounded by close_timeout) and stop reconnecting."""
        eng = self._engine
        task = self._task
        if task is None:
            return
        eng._stopping = True
        if eng._stop_event is not None:
            eng._stop_event.set()
        eng._begin_close(code, reason)
        if not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), self._opts.close_timeout + 1.0)
            except TimeoutError:
                eng.abort()
                task.cancel()

    async def __aenter__(self) -> AsyncWebSocket:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def wait_closed(self) -> None:
        """Wait until the session ends (stop or fatal error, which is raised)."""
        if self._task is not None:
            await self._task

    def _drop_connection(self) -> None:
        """Cut the TCP connection without a close handshake (tests: simulate a cut)."""
        self._engine.abort()

    # ------------------------------------------------------------------ iteration
    def _push(self, batch: list[dict[str, Any]]) -> None:
        if not self._iterating and (
            self.on_tick is not None or self.on_ticks is not None or self.on_tick_rows is not None
        ):
            return  # callback-style use: nobody will drain a queue, so keep none
        self._queue.extend(batch)
        if not self._paused and len(self._queue) >= self._high:
            self._paused = True
            self._engine.pause_reading()
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def __aiter__(self) -> AsyncWebSocket:
        self._iterating = True
        return self

    async def __anext__(self) -> dict[str, Any]:
        q = self._queue
        while not q:
            task = self._task
            if task is None or task.done():
                if task is not None and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        tick = q.popleft()
        if self._paused and len(q) <= self._low:
            self._paused = False
            self._engine.resume_reading()
        return tick

    # ------------------------------------------------------------------ sending
    async def _send(self, item: str | bytes) -> None:
        eng = self._engine
        eng.send_in_loop(item)
        if eng.write_paused:  # only above the transport's high-water mark
            await eng.drain()

    async def send(self, data: str | bytes | bytearray | memoryview) -> None:
        """Send a raw text (str) or binary message.

        Small sends are corked into one socket write per loop iteration (or per 64 KiB);
        the call waits only while the socket's write buffer is over its high-water mark.
        """
        eng = self._engine
        eng.send_in_loop(data if isinstance(data, str) else bytes(data))
        if eng.write_paused:
            await eng.drain()

    async def publish(
        self, data: dict[str, Any], *, ts: float | None = None, id: Any = None
    ) -> None:
        msg: dict[str, Any] = {"type": "publish", "data": data}
        if ts is not None:
            msg["ts"] = ts
        if id is not None:
            msg["id"] = id
        await self._send(payload.dumps(msg).decode())

    async def publish_batch(self, ticks: list[dict[str, Any]]) -> None:
        """Publish many readings in binary batch frames (see WebSocket.publish_batch)."""
        for frame in self._engine.encode_ticks(ticks):
            await self._send(frame)

    def subscribe(self, devices: str | list[str], from_position: int | None = None) -> None:
        self._engine._subscribe(devices, from_position)

    def unsubscribe(self, devices: str | list[str]) -> None:
        self._engine._unsubscribe(devices)

    def ack(
        self, command_id: str, ok: bool = True, data: Any = None, error: str | None = None
    ) -> None:
        msg: dict[str, Any] = {"type": "ack", "id": command_id, "ok": ok}
        if data is not None:
            msg["data"] = data
        if error is not None:
            msg["error"] = error
        self._engine.submit(payload.dumps(msg).decode(), queue_offline=False)

    async def send_command(
        self, device_id: str, data: Any, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Send a command and return its ack dict (CommandError / OperationTimeout)."""
        if not self._engine.connected:
            raise NotConnectedError("not connected: cannot send a command")
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def resolve(ack: Any, exc: BaseException | None) -> None:
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(ack)

        self._engine._start_command(device_id, data, timeout, resolve)
        return await fut
