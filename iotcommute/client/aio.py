"""AsyncWebSocket: the asyncio API, on the caller's running loop.

    async with AsyncWebSocket(key, device_id, "client") as ws:
        async for tick in ws:
            print(tick)

Ticks go into a bounded queue: above `max_queue` the socket stops being read (TCP
backpressure reaches the server; the keep-alive knows the silence is ours) and resumes below
`max_queue // 4`; the queue can overshoot by the ticks of one read (at most 512 KiB of
wire bytes). Ticks are queued for `async for` unless a tick callback is set and no
iteration has started (a callback-only user never drains the queue); iterate=False turns
the queue off. With a checkpoint, only what the iterator handed out is checkpointed.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..exceptions import ConnectionClosedOK, NotConnectedError
from .base import ClientBase, Publish, takes
from .options import resolver
from .session import OP_BINARY, OP_TEXT

if TYPE_CHECKING:
    from ..payload.columnar import TickBatch

__all__ = ["AsyncWebSocket"]


class AsyncWebSocket(ClientBase):
    __doc__ = ClientBase.__doc__

    def _post_init(self) -> None:
        if self._loop_factory is not None:
            raise TypeError("loop_factory belongs to WebSocket (AsyncWebSocket runs on yours)")
        self._high, self._low = self._max_queue, self._max_queue // 4
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._open_waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._iterating = False
        self._engine.on_open = self._opened
        if self._iterate:
            self._session.sink = self._push
        self._batch_queue: collections.deque[TickBatch] = collections.deque()
        self._batch_ticks = 0  # ticks in _batch_queue (the backpressure measure)
        self._taken: dict[str, Any] | None = None  # (group) the tick handed out last
        if self._session.group is not None:
            self._session.drop_queued = self._drop_partitions

    def stats(self) -> dict[str, Any]:
        s = self._engine.stats()
        s["queued_ticks"] = len(self._queue)
        s["reading_paused"] = self._paused
        return s

    # ------------------------------------------------------------------ lifecycle
    async def connect(self) -> None:
        """Start the session; return once connected. Raises the error that ended it
        before (fatal, first_connect_retries exhausted, or reconnect=False)."""
        if self._task is not None and not self._task.done():
            raise RuntimeError("already connected")
        loop = asyncio.get_running_loop()
        if self._iterate and not self._has_tick_callback():
            # Ticks that arrive before `async for` starts wait in the queue: only what the
            # iterator hands out may be checkpointed or committed, from the first read on.
            self._session.hold_commit = True
        self._engine.stopping = False
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
        task = self._task
        if task is None:
            return
        if self._session.group is not None and self._engine.connected:
            self._group_took()  # closing after its work: the last tick taken is done
        self._engine.stop(code, reason)
        if not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), self._opts.close_timeout + 1.0)
            except TimeoutError:
                self._engine.abort()
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
        if exc is not None:
            self._taken = None  # the work on the last tick failed: not committed
        await self.close()

    async def wait_closed(self) -> None:
        """Wait until the session ends (stop or fatal error, which is raised)."""
        if self._task is not None:
            await self._task

    def _drop_connection(self) -> None:
        self._engine.abort()

    # ------------------------------------------------------------------ iteration
    def _has_tick_callback(self) -> bool:
        return (
            self.on_tick is not None
            or self.on_ticks is not None
            or self.on_tick_rows is not None
            or self.on_batch is not None
        )

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

    def _drop_partitions(self, parts: list[int]) -> None:
        """(group) Partitions revoked or lost: their queued ticks are never handed out
        (the next owner gets them from the group's committed position)."""
        g = self._session.group
        assert g is not None
        gone = set(parts)
        of = g.partition_of
        keep = [t for t in self._queue if of(t["device"]) not in gone]
        self._queue.clear()
        self._queue.extend(keep)
        if self._taken is not None and of(self._taken["device"]) in gone:
            self._taken = None
        if self._paused and len(self._queue) <= self._low:
            self._paused = False
            self._engine.resume_reading()

    def _group_took(self) -> None:
        """(group) Asking for the next tick means the user finished the previous one."""
        taken, self._taken = self._taken, None
        if taken is not None:
            self._session.group_took(taken)
            if self._engine.connected:
                assert self._engine.commits is not None
                self._engine.commits.after_read()
                self._engine.write_session()

    async def _filled(self, q: collections.deque[Any]) -> bool:
        """Wait until `q` holds something (True) or the session ended (False; the error
        that ended it is raised)."""
        while not q:
            task = self._task
            if task is None or task.done():
                if task is not None and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
                return False
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return True

    def __aiter__(self) -> AsyncWebSocket:
        self._iterating = True
        self._session.hold_commit = True  # checkpoint what the user took, not what is queued
        return self

    async def __anext__(self) -> dict[str, Any]:
        group = self._session.group is not None
        if group:
            self._group_took()
        q = self._queue
        if not q and not await self._filled(q):
            raise StopAsyncIteration
        tick = q.popleft()
        if group:
            self._taken = tick
        else:
            self._session.commit(None if not q else tick["position"])
        if self._paused and len(q) <= self._low:
            self._paused = False
            self._engine.resume_reading()
        return tick

    # ------------------------------------------------------------------ batches
    def batches(self) -> AsyncIterator[TickBatch]:
        """``async for batch in ws.batches()``: the new ticks as columnar TickBatches
        (see on_batch for what a batch holds), in order. The session switches to batch
        mode for good (tick dicts are no longer queued for ``async for tick in ws``). The
        checkpoint advances when a batch is taken; queued ticks above `max_queue` pause
        the socket, as for dicts."""
        self._session.batch_sink = self._push_batch
        self._session.hold_commit = True
        self._iterating = True
        if self._queue:  # ticks queued as dicts before batches() was asked for: keep them
            ticks = list(self._queue)
            self._queue.clear()
            self._session.flush_json_run(ticks)
        return self._take_batches()

    def _push_batch(self, batch: TickBatch) -> None:
        self._batch_queue.append(batch)
        self._batch_ticks += len(batch)
        if not self._paused and self._batch_ticks >= self._high:
            self._paused = True
            self._engine.pause_reading()
        self._wake()

    async def _take_batches(self) -> AsyncIterator[TickBatch]:
        q = self._batch_queue
        while True:
            if not q and not await self._filled(q):
                return
            batch = q.popleft()
            self._batch_ticks -= len(batch)
            self._session.commit(None if not q else batch.last_position)
            if self._paused and self._batch_ticks <= self._low:
                self._paused = False
                self._engine.resume_reading()
            yield batch

    # ------------------------------------------------------------------ sending
    async def _send(self, op: int, data: bytes, pid: str | None = None, waiter: Any = None) -> None:
        eng = self._engine
        eng.send(op, data, pid, waiter=waiter)
        if eng.write_paused:  # only above the transport's high-water mark
            await eng.drain()

    async def send(self, data: str | bytes | bytearray | memoryview) -> None:
        """Send a raw text (str) or binary message; corked into one socket write per loop
        iteration, waiting only while the write buffer is over its high-water mark."""
        if isinstance(data, str):
            await self._send(OP_TEXT, data.encode("utf-8"))
        else:
            await self._send(OP_BINARY, bytes(data))

    @takes(ClientBase._publish_request)
    async def publish(self, request: Publish) -> int | None:
        fut: asyncio.Future[Any] | None = None
        if request.wait:
            fut = asyncio.get_running_loop().create_future()
        waiter = resolver(fut) if fut is not None else None
        await self._send(OP_TEXT, request.frame, request.pid, waiter)
        if fut is None:
            return None
        try:
            position: int = await asyncio.wait_for(fut, request.timeout)
        except TimeoutError:
            raise request.timed_out() from None
        return position

    async def publish_batch(self, ticks: list[dict[str, Any]]) -> None:
        """Publish many readings in binary batch frames (see WebSocket.publish_batch)."""
        for frame in self._encode_ticks(ticks):
            await self._send(OP_BINARY, frame)

    async def send_command(
        self, device_id: str, data: Any, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Send a command and return its ack dict (CommandError / OperationTimeout)."""
        cid, frame = self._session.encode_command(device_id, data)
        if not self._engine.connected:
            raise NotConnectedError("not connected: cannot send a command")
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._engine.start_command(cid, frame, timeout, resolver(fut))
        return await fut
