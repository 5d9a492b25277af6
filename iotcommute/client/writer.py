"""The write side of a connection: the corked outbox (items carry opcode + bytes), the
writability of the socket and who pauses reading.

Memory stays bounded against a peer that never reads: producers wait while the socket is
over its high-water mark (asyncio: `drain()`; threads: `wait_writable()`, which gives up with
OperationTimeout), and reading pauses meanwhile, so the peer's pings cannot make us queue
pongs without bound either.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..exceptions import NotConnectedError, OperationTimeout
from ..protocol import ClientProtocol
from ..protocol.events import State

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["CORK_BYTES", "Writer"]

#: loop-thread sends are corked: one transport.write per loop iteration or per this many
#: queued bytes; a syscall per small frame is what makes small sends expensive
CORK_BYTES = 65536
_OPEN = State.OPEN
_now = time.monotonic

Item = tuple[int, bytes, str | None]  # (opcode, payload, publish id)


class Writer:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.lock = threading.Lock()  # guards open, outbox and the session's offline queue
        self.open = False
        self.outbox: collections.deque[Item] = collections.deque()
        self.flush_pending = False
        self.corked = 0
        self.writable = threading.Event()
        self.writable.set()
        self.write_paused = False
        self.drain_waiters: list[asyncio.Future[None]] = []
        self.user_paused = False
        self.reading_paused = False
        self.bytes_out = self.messages_out = 0

    def opened(self) -> None:
        """The upgrade succeeded: the session re-sends its unacked publishes and offline
        queue first (under the lock, so no producer's message overtakes them)."""
        with self.lock:
            self.engine.session.opened()
            self.open = True

    def closed(self) -> None:
        """The connection is gone: messages never written go back to the offline queue."""
        with self.lock:
            self.open = False
            while self.outbox:
                self.engine.session.offline.appendleft(self.outbox.pop())
            self.corked = 0
        self.set_writable(True)

    def send(
        self,
        op: int,
        data: bytes,
        pid: str | None = None,
        *,
        offline: bool = True,
        waiter: Callable[[Any, BaseException | None], None] | None = None,
    ) -> None:
        """Queue one message (corked); offline it waits in the session's bounded queue. A
        publish (`pid`) is kept by the session until acknowledged (`waiter` then called)."""
        in_loop = self.engine.in_loop_thread()
        with self.lock:
            if pid is not None:
                self.engine.session.track_publish(pid, data, waiter)
            if not self.open:
                if not offline:
                    raise NotConnectedError("not connected")
                self.engine.session.queue_offline(op, data, pid)
                return
            self.outbox.append((op, data, pid))
            self.corked += len(data)
            now = in_loop and self.corked >= CORK_BYTES
            later = not now and not self.flush_pending
            self.flush_pending = self.flush_pending or later
        loop = self.engine.loop
        if now:
            self.flush()
        elif later and loop is not None:
            (loop.call_soon if in_loop else loop.call_soon_threadsafe)(self.flush)

    def wait_writable(self, timeout: float) -> None:
        """Block a producer thread while the socket is over its high-water mark (bounded
        memory against a peer that does not read); OperationTimeout after `timeout`."""
        if not self.engine.in_loop_thread() and not self.writable.wait(timeout):
            raise OperationTimeout(f"the server has not read for {timeout}s; message not sent")

    def pause_reading(self) -> None:
        self.user_paused = True
        self.set_reading()

    def resume_reading(self) -> None:
        self.user_paused = False
        self.set_reading()

    async def drain(self) -> None:
        """Wait until the write buffer is below its high-water mark."""
        if self.writable.is_set() or self.engine.loop is None:
            return
        fut: asyncio.Future[None] = self.engine.loop.create_future()
        self.drain_waiters.append(fut)
        await fut

    def set_reading(self) -> None:
        """Reading pauses for the user's backpressure or while our writes are blocked (a
        peer that never reads cannot make us buffer pongs without bound)."""
        t = self.engine.transport
        want = self.user_paused or self.write_paused
        if t is None or t.is_closing() or want == self.reading_paused:
            return
        self.reading_paused = want
        if want:
            t.pause_reading()
        else:
            t.resume_reading()
            self.engine.last_rx = _now()  # the pause was ours, not the peer's silence

    def set_writable(self, writable: bool) -> None:
        self.write_paused = not writable
        if writable:
            self.writable.set()
            waiters, self.drain_waiters = self.drain_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
        else:
            self.writable.clear()
        self.set_reading()

    def write(self, data: bytes) -> None:
        t = self.engine.transport
        if data and t is not None and not t.is_closing():
            self.bytes_out += len(data)
            t.write(data)

    def emit(self, ws: ClientProtocol, op: int, data: bytes) -> None:
        ws.send_message(op, data)  # text payloads are UTF-8 already (encoded by the session)

    def flush(self) -> None:
        with self.lock:
            self.flush_pending = False
            self.corked = 0
            ws = self.engine.ws
            if ws is None or not self.open or ws.state is not _OPEN:
                return
            items = list(self.outbox)
            self.outbox.clear()
        for op, data, _ in items:
            self.emit(ws, op, data)
        self.messages_out += len(items)
        self.write(ws.data_to_send())

    def write_session(self) -> None:
        """Write what the session asked for (after a user request on the loop thread)."""
        frames = self.engine.session.frames_to_send()
        ws = self.engine.ws
        if not frames or ws is None or ws.state is not _OPEN:
            return
        if self.outbox:
            self.flush()  # corked sends first: keep the caller's order
        for op, data in frames:
            self.emit(ws, op, data)
        self.messages_out += len(frames)
        self.write(ws.data_to_send())
