"""The asyncio/uvloop connection: drives the sans-IO ClientProtocol (frames) and Session
(IOT commute), reconnects with one backoff policy, keeps the link alive, writes the outbox.

Thread model: `run()` and every method documented "loop thread" run on the event loop's
thread. `send()`, `call()` and `wait_writable()` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from ..events import EOF, Accepted, CloseReceived, Failed, Pong, State
from ..exceptions import (
    ConnectionClosedError,
    ConnectionClosedOK,
    NetworkError,
    NotConnectedError,
    OperationTimeout,
)
from ..protocol import ClientProtocol
from .backoff import Backoff, is_fatal
from .checkpoint import Checkpoint
from .connect import Target, default_ssl_context, open_stream
from .options import Options, Owner
from .session import OP_TEXT, Session

__all__ = ["CORK_BYTES", "Engine"]

log = logging.getLogger("iotcommute.client")
_OPEN = State.OPEN
_now = time.monotonic
#: loop-thread sends are corked: one transport.write per loop iteration or per this many
#: queued bytes; a syscall per small frame is what makes small sends expensive
CORK_BYTES = 65536

Item = tuple[int, bytes, str | None]  # (opcode, payload, publish id)


class _Stream(asyncio.Protocol):
    """Thin asyncio Protocol: forwards everything to the engine (one call per read)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.engine._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.engine.feed(data)

    def eof_received(self) -> bool | None:
        self.engine.feed(b"")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.engine.lost(exc)

    def pause_writing(self) -> None:
        self.engine.set_writable(False)

    def resume_writing(self) -> None:
        self.engine.set_writable(True)


class Engine:
    """One reconnecting connection; see the module docstring for the thread model."""

    def __init__(self, opts: Options, owner: Owner, session: Session) -> None:
        self.opts, self.owner, self.session = opts, owner, session
        session.on_event = self._event
        self.target = Target(opts.url)
        self._ssl = opts.ssl if opts.ssl is not None or not self.target.secure else None
        if self.target.secure and self._ssl is None:
            self._ssl = default_ssl_context()
        self.backoff = Backoff(max_delay=opts.max_reconnect_delay, max_retries=opts.max_retries)
        self.checkpoint = Checkpoint(opts.checkpoint) if opts.checkpoint is not None else None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread_id: int | None = None
        self._ws: ClientProtocol | None = None
        self._transport: asyncio.Transport | None = None
        self._opened: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._close_code, self._close_reason = 1006, ""
        self._failure: BaseException | None = None
        self.stopping = False
        self._wake: asyncio.Event | None = None
        self._lock = threading.Lock()  # guards _open, _outbox and the session's offline queue
        self._open = False
        self._outbox: collections.deque[Item] = collections.deque()
        self._flush_pending = False
        self._corked = 0
        self._writable = threading.Event()
        self._writable.set()
        self.write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._user_paused = False
        self._reading_paused = False
        self._last_rx = self._last_msg = self._ping_sent = 0.0
        self._ping: bytes | None = None
        self.rtt: float | None = None
        self.bytes_in = self.bytes_out = self.messages_out = self.reconnects = 0
        self.on_open: Callable[[], None] | None = None  # AsyncWebSocket's connect() waiter

    # ------------------------------------------------------------------ any thread
    @property
    def connected(self) -> bool:
        return self._open

    def in_loop_thread(self) -> bool:
        return self._thread_id == threading.get_ident()

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) on the loop thread (at once when already there or no loop runs)."""
        loop = self.loop
        if loop is None or loop.is_closed() or not loop.is_running() or self.in_loop_thread():
            fn(*args)
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed meanwhile: nothing left to run it
            pass

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
        in_loop = self.in_loop_thread()
        with self._lock:
            if pid is not None:
                self.session.track_publish(pid, data, waiter)
            if not self._open:
                if not offline:
                    raise NotConnectedError("not connected")
                self.session.queue_offline(op, data, pid)
                return
            self._outbox.append((op, data, pid))
            self._corked += len(data)
            now = in_loop and self._corked >= CORK_BYTES
            later = not now and not self._flush_pending
            self._flush_pending = self._flush_pending or later
        loop = self.loop
        if now:
            self._flush()
        elif later and loop is not None:
            (loop.call_soon if in_loop else loop.call_soon_threadsafe)(self._flush)

    def wait_writable(self, timeout: float) -> None:
        """Block a producer thread while the socket is over its high-water mark (bounded
        memory against a peer that does not read); OperationTimeout after `timeout`."""
        if not self.in_loop_thread() and not self._writable.wait(timeout):
            raise OperationTimeout(f"the server has not read for {timeout}s; message not sent")

    def stats(self) -> dict[str, Any]:
        t = self._transport
        buffered = t.get_write_buffer_size() if t is not None and not t.is_closing() else 0
        age = (_now() - self._last_msg) if self._last_msg else None
        return {
            "connected": self._open,
            **self.session.stats(),
            "bytes_in": self.bytes_in,
            "messages_out": self.messages_out,
            "bytes_out": self.bytes_out,
            "reconnects": self.reconnects,
            "last_message_age": age,
            "rtt": self.rtt,
            "buffered_bytes": buffered,
            "outbox": len(self._outbox),
        }

    # ------------------------------------------------------------------ loop thread
    def stop(self, code: int = 1000, reason: str = "") -> None:
        """The one stop sequence: no more reconnects, corked sends out, close handshake
        (bounded by close_timeout), run() returns."""
        self.stopping = True
        if self._wake is not None:
            self._wake.set()
        ws, t = self._ws, self._transport
        if ws is None or t is None or t.is_closing():
            return
        if ws.state is _OPEN:
            self._flush()
            ws.close(code, reason)
            self._write(ws.data_to_send())
            self._arm_close_deadline(t)
        elif ws.state is State.CONNECTING:
            t.abort()

    def abort(self) -> None:
        """Drop the TCP connection without a close handshake (tests/demo: a cut)."""
        if self._transport is not None:
            self._close_reason = "aborted"
            self._transport.abort()

    def pause_reading(self) -> None:
        self._user_paused = True
        self._set_reading()

    def resume_reading(self) -> None:
        self._user_paused = False
        self._set_reading()

    async def drain(self) -> None:
        """Wait until the write buffer is below its high-water mark."""
        if self._writable.is_set() or self.loop is None:
            return
        fut: asyncio.Future[None] = self.loop.create_future()
        self._drain_waiters.append(fut)
        await fut

    def start_command(self, cid: str, data: bytes, timeout: float, resolve: Any) -> None:
        self.session.start_command(cid, data, resolve)
        if self.loop is not None and self._open:
            self.loop.call_later(timeout, self.session.expire_command, cid, timeout)
        self.write_session()

    def _set_reading(self) -> None:
        """Reading pauses for the user's backpressure or while our writes are blocked (a
        peer that never reads cannot make us buffer pongs without bound)."""
        t = self._transport
        want = self._user_paused or self.write_paused
        if t is None or t.is_closing() or want == self._reading_paused:
            return
        self._reading_paused = want
        if want:
            t.pause_reading()
        else:
            t.resume_reading()
            self._last_rx = _now()  # the pause was ours, not the peer's silence

    def set_writable(self, writable: bool) -> None:
        self.write_paused = not writable
        if writable:
            self._writable.set()
            waiters, self._drain_waiters = self._drain_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
        else:
            self._writable.clear()
        self._set_reading()

    def _write(self, data: bytes) -> None:
        t = self._transport
        if data and t is not None and not t.is_closing():
            self.bytes_out += len(data)
            t.write(data)

    def _emit(self, ws: ClientProtocol, op: int, data: bytes) -> None:
        # TODO(lead): ClientProtocol has no public bytes-text send; the one decode is here
        if op == OP_TEXT:
            ws.send_text(data.decode("utf-8"))
        else:
            ws.send_binary(data)

    def _flush(self) -> None:
        with self._lock:
            self._flush_pending = False
            self._corked = 0
            ws = self._ws
            if ws is None or not self._open or ws.state is not _OPEN:
                return
            items = list(self._outbox)
            self._outbox.clear()
        for op, data, _ in items:
            self._emit(ws, op, data)
        self.messages_out += len(items)
        self._write(ws.data_to_send())

    def write_session(self) -> None:
        """Write what the session asked for (after a user request on the loop thread)."""
        frames = self.session.frames_to_send()
        ws = self._ws
        if not frames or ws is None or ws.state is not _OPEN:
            return
        if self._outbox:
            self._flush()  # corked sends first: keep the caller's order
        for op, data in frames:
            self._emit(ws, op, data)
        self.messages_out += len(frames)
        self._write(ws.data_to_send())

    def feed(self, data: bytes) -> None:
        """The receive path: bytes -> frames (core) -> deliveries (session) -> writes."""
        ws = self._ws
        if ws is None:
            return
        ws.receive_data(data)
        self.bytes_in += len(data)
        self._last_rx = _now()
        events = ws.events_received()
        if events:
            self.session.receive(events)
            self._last_msg = self._last_rx
            if self.checkpoint is not None and self.session.anchored:
                self.checkpoint.save(self.session.committed)
            self.write_session()
        self._write(ws.data_to_send())

    def _event(self, ev: Any) -> None:
        t = type(ev)
        if t is Pong:
            if self._ping is not None and ev.payload == self._ping:
                self.rtt = _now() - self._ping_sent
                self._ping = None
        elif t is Accepted:
            # open at once: the welcome may be in this very read; unacked publishes and
            # the offline queue go out first, in order (feed() writes them)
            with self._lock:
                self.session.opened()
                self._open = True
            if self._opened is not None and not self._opened.done():
                self._opened.set_result(None)
        elif t is CloseReceived:
            self._close_code, self._close_reason = ev.code, ev.reason
            if self._transport is not None:
                self._arm_close_deadline(self._transport)
        elif t is Failed:
            self._failure = ev.exc
            if self._opened is not None and not self._opened.done():
                self._opened.set_exception(ev.exc)
            self._close_transport()
        elif t is EOF:
            self._close_transport()

    def _close_transport(self) -> None:
        t = self._transport
        if t is not None and not t.is_closing():
            if self._ws is not None:
                self._write(self._ws.data_to_send())
            t.close()

    def _arm_close_deadline(self, t: asyncio.Transport) -> None:
        def deadline() -> None:
            if self._transport is t and not (self._closed is not None and self._closed.done()):
                t.abort()

        if self.loop is not None:
            self.loop.call_later(self.opts.close_timeout, deadline)

    def lost(self, exc: Exception | None) -> None:
        with self._lock:
            self._open = False
            while self._outbox:  # never written: back to the front of the offline queue
                op, data, pid = self._outbox.pop()
                self.session.offline.appendleft((op, data, pid))
            self._corked = 0
        self.set_writable(True)
        if exc is not None and self._failure is None:
            self._failure = NetworkError(f"connection lost: {exc}")
        if self._opened is not None and not self._opened.done():
            self._opened.set_exception(
                self._failure or NetworkError("connection closed during the handshake")
            )
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Connect, and reconnect until stop() or a fatal error (which is raised). Before
        the first success, `first_connect_retries` bounds the tries (None: forever)."""
        self.loop = asyncio.get_running_loop()
        self._thread_id = threading.get_ident()
        self._wake = asyncio.Event()
        if self.stopping:
            self._wake.set()
        self.backoff.reset()
        ever_open = False
        try:
            while not self.stopping:
                error: BaseException | None = None
                try:
                    await self._connect_once()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    error = exc
                ever_open = ever_open or self.session.connections > 0
                if self.stopping:
                    break
                if error is not None and (is_fatal(error) or not self.opts.reconnect):
                    self._give_up(error)
                delay = self.backoff.next_delay()
                first = self.opts.first_connect_retries
                if not ever_open and first is not None and self.backoff.attempt > first:
                    delay = None
                if delay is None:
                    self._give_up(error or ConnectionClosedError(1006, "retries exhausted"))
                self.reconnects += 1
                why = f"{type(error).__name__}: {error}" if error is not None else "closed"
                log.warning("%s; retry %d in %.2fs", why, self.backoff.attempt, delay)
                if error is not None:
                    self._report(error)
                self._call("on_reconnect", self.owner.on_reconnect, self.backoff.attempt)
                if not self.stopping:
                    try:
                        await asyncio.wait_for(self._wake.wait(), delay)
                    except TimeoutError:
                        pass
        finally:
            if self._transport is not None and not self._transport.is_closing():
                self._transport.abort()  # cancelled (e.g. Ctrl-C): do not leak the socket
            self.session.closed(ConnectionClosedOK(1000, "client stopped"))
            self.session.stopped()
            if self.checkpoint is not None and self.session.anchored:
                self.checkpoint.save(self.session.committed, force=True)
            self.set_writable(True)

    def _give_up(self, error: BaseException) -> None:
        log.error("giving up: %s", error)
        self._report(error)
        self._call("on_noreconnect", self.owner.on_noreconnect)
        raise error

    async def _connect_once(self) -> None:
        opts, loop = self.opts, self.loop
        assert loop is not None
        self._failure = None
        self._close_code, self._close_reason = 1006, ""
        ws = ClientProtocol(
            host=self.target.host_header,
            path=self.target.path,
            extra_headers=opts.handshake_headers(),
            subprotocols=[],
            compression=opts.compression,
            max_size=opts.max_size,
        )
        self._ws, self._transport = ws, None
        self._opened, self._closed = loop.create_future(), loop.create_future()
        self._reading_paused = False
        self._transport = await open_stream(
            lambda: _Stream(self), self.target, self._ssl, opts.proxy, opts.open_timeout
        )
        ws.send_request()
        self._write(ws.data_to_send())
        try:
            async with asyncio.timeout(opts.open_timeout):
                await self._opened
        except BaseException as exc:
            self._transport.abort()
            if isinstance(exc, TimeoutError):
                raise OperationTimeout("WebSocket handshake timed out") from None
            raise
        self.backoff.connected()
        self._last_rx = _now()
        self._ping = None
        self._set_reading()
        log.info("connected to %s%s", self.target, self.target.path.split("?")[0])
        if self.on_open is not None:
            self.on_open()
        self._call("on_connect", self.owner.on_connect)
        keepalive = loop.create_task(self._keepalive(self._transport))
        if self.stopping:
            self.stop()
        try:
            await self._closed
        finally:
            keepalive.cancel()
            self._open = False
            self.backoff.disconnected()
            self.session.closed(ConnectionClosedError(self._close_code, self._close_reason))
        self._call("on_close", self.owner.on_close, self._close_code, self._close_reason)
        if self._failure is not None:
            raise self._failure
        if not self.stopping:
            code = self._close_code
            cls = ConnectionClosedOK if code in (1000, 1001) else ConnectionClosedError
            raise cls(code, self._close_reason)

    async def _keepalive(self, transport: asyncio.Transport) -> None:
        """Any frame proves life: dead when nothing arrived for ping_interval + ping_timeout
        (or idle_timeout), never while our own reading is paused (a slow consumer)."""
        opts = self.opts
        periods = [x for x in (opts.ping_interval, opts.ping_timeout, opts.idle_timeout) if x]
        if not periods:
            return
        limit = (opts.ping_interval or 0) + (opts.ping_timeout or 0)
        while not transport.is_closing():
            await asyncio.sleep(max(0.05, min(periods) / 4))
            now = _now()
            silent = 0.0 if self._reading_paused else now - self._last_rx
            if opts.idle_timeout and silent > opts.idle_timeout:
                return self._dead(transport, f"no data for {opts.idle_timeout}s")
            if opts.ping_interval and opts.ping_timeout and silent > limit:
                return self._dead(transport, f"no pong or other frame for {limit:g}s")
            if self.write_paused and now - self._last_rx > max(limit, 1.0) * 2:
                return self._dead(transport, "the server stopped reading")
            ws = self._ws
            if (
                opts.ping_interval
                and self._ping is None
                and now - self._ping_sent >= opts.ping_interval
                and ws is not None
                and ws.state is _OPEN
            ):
                self._ping, self._ping_sent = os.urandom(4), now
                ws.send_ping(self._ping)
                self._write(ws.data_to_send())
            elif self._ping is not None and opts.ping_interval:
                if now - self._ping_sent >= opts.ping_interval:
                    self._ping = None  # unanswered, but other frames may prove life

    def _dead(self, transport: asyncio.Transport, why: str) -> None:
        log.warning("connection is dead (%s); aborting", why)
        self._failure = OperationTimeout(f"keep-alive: {why}")
        self._close_reason = why
        transport.abort()

    # ------------------------------------------------------------------ callbacks
    def _call(self, name: str, fn: Callable[..., Any] | None, *args: Any) -> None:
        self.session._call(name, fn, *args)

    def _report(self, exc: BaseException) -> None:
        self.session._on_error(exc)
