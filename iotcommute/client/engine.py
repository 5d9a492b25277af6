"""The asyncio/uvloop connection: drives the sans-IO ClientProtocol (frames) and Session
(IOT commute), reconnects with one backoff policy, keeps the link alive, writes the outbox.

Thread model: `run()` and every method documented "loop thread" run on the event loop's
thread. `send()`, `call()` and `wait_writable()` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..backoff import Backoff, is_fatal
from ..exceptions import (
    ConnectionClosedError,
    ConnectionClosedOK,
    NetworkError,
    OperationTimeout,
    SessionExpiredError,
)
from ..protocol import ClientProtocol
from ..protocol.events import EOF, Accepted, CloseReceived, Failed, Pong, State
from .checkpoint import Checkpoint
from .connect import Target, default_ssl_context, open_stream
from .groupio import GroupCommits
from .keepalive import KeepAlive
from .options import Options, Owner
from .session import Session
from .writer import CORK_BYTES, Writer

__all__ = ["CORK_BYTES", "Engine"]

log = logging.getLogger("iotcommute.client")
_OPEN = State.OPEN
_now = time.monotonic


class _Stream(asyncio.BufferedProtocol):
    """Thin asyncio BufferedProtocol: reads land in the frame reader's own memory (one copy
    of each payload byte from the socket to the message, none for a big binary frame read
    straight into place); everything else is forwarded to the engine, one call per read."""

    def __init__(self, engine: Engine, ws: ClientProtocol) -> None:
        self.engine = engine
        # The read path is bound straight to the core and the engine: no Python frame of
        # this class per read (uvloop and asyncio's SSL layer look both up as attributes).
        self.get_buffer = ws.get_buffer  # type: ignore[method-assign]
        self.buffer_updated = engine.feed_read  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.engine.transport = transport  # type: ignore[assignment]

    def eof_received(self) -> bool | None:
        self.engine.feed(b"")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.engine.lost(exc)

    def pause_writing(self) -> None:
        self.engine.out.set_writable(False)

    def resume_writing(self) -> None:
        self.engine.out.set_writable(True)


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
        if self.checkpoint is not None:
            self.checkpoint.load()  # knows what is on disk: no rewrite of it uses up a slot
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread_id: int | None = None
        self.ws: ClientProtocol | None = None
        self.transport: asyncio.Transport | None = None
        self._opened: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._close_code, self._close_reason = 1006, ""
        self._failure: BaseException | None = None
        self.stopping = False
        self._wake: asyncio.Event | None = None
        self.last_rx = self._last_msg = 0.0
        self.keepalive = KeepAlive(self)
        self.bytes_in = self.reconnects = 0
        self.out = out = Writer(self)
        # the write side's public interface, on the engine
        self.send, self.wait_writable, self.drain = out.send, out.wait_writable, out.drain
        self.pause_reading, self.resume_reading = out.pause_reading, out.resume_reading
        self.write, self.write_session = out.write, out.write_session
        self.on_open: Callable[[], None] | None = None  # AsyncWebSocket's connect() waiter
        #: a group member's graceful close waits for its last commit's answer: (code, reason)
        self.commits = GroupCommits(self) if session.group is not None else None
        self.in_read = False  # the session is delivering a read (callbacks may call stop)

    # ------------------------------------------------------------------ any thread
    @property
    def connected(self) -> bool:
        return self.out.open

    @property
    def write_paused(self) -> bool:
        return self.out.write_paused

    @property
    def reading_paused(self) -> bool:
        return self.out.reading_paused

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

    def stats(self) -> dict[str, Any]:
        t = self.transport
        buffered = t.get_write_buffer_size() if t is not None and not t.is_closing() else 0
        age = (_now() - self._last_msg) if self._last_msg else None
        return {
            "connected": self.out.open,
            **self.session.stats(),
            "bytes_in": self.bytes_in,
            "messages_out": self.out.messages_out,
            "bytes_out": self.out.bytes_out,
            "reconnects": self.reconnects,
            "last_message_age": age,
            "rtt": self.keepalive.rtt,
            "buffered_bytes": buffered,
            "outbox": len(self.out.outbox),
        }

    # ------------------------------------------------------------------ loop thread
    def stop(self, code: int = 1000, reason: str = "") -> None:
        """The one stop sequence: no more reconnects, corked sends out, close handshake
        (bounded by close_timeout), run() returns."""
        self.stopping = True
        if self._wake is not None:
            self._wake.set()
        ws, t = self.ws, self.transport
        if ws is None or t is None or t.is_closing():
            return
        if ws.state is _OPEN:
            if self.commits is not None and self.commits.last_commit(code, reason):
                return
            self.close_now(ws, t, code, reason)
        elif ws.state is State.CONNECTING:
            t.abort()

    def close_now(self, ws: ClientProtocol, t: asyncio.Transport, code: int, reason: str) -> None:
        self.out.flush()
        ws.close(code, reason)
        self.write(ws.data_to_send())
        self._arm_close_deadline(t)

    def abort(self) -> None:
        """Drop the TCP connection without a close handshake (tests/demo: a cut)."""
        if self.transport is not None:
            self._close_reason = "aborted"
            self.transport.abort()

    def start_command(self, cid: str, data: bytes, timeout: float, resolve: Any) -> None:
        self.session.start_command(cid, data, resolve)
        if self.loop is not None and self.out.open:
            self.loop.call_later(timeout, self.session.expire_command, cid, timeout)
        self.write_session()

    def feed(self, data: bytes) -> None:
        """Bytes from the network (``b""``: EOF) through the core, then `_received`."""
        ws = self.ws
        if ws is None:
            return
        ws.receive_data(data)
        self._received(ws, len(data))

    def feed_read(self, nbytes: int) -> None:
        """A read of ``nbytes`` into the core's `get_buffer` view (the receive path)."""
        ws = self.ws
        if ws is None:
            return
        ws.buffer_updated(nbytes)
        self._received(ws, nbytes)

    def _received(self, ws: ClientProtocol, nbytes: int) -> None:
        """After the core took a read: frames -> deliveries (session) -> writes."""
        self.bytes_in += nbytes
        self.last_rx = _now()
        events = ws.events_received()
        if events:
            self.in_read = True
            try:
                self.session.receive(events)
            finally:
                self.in_read = False
            self._last_msg = self.last_rx
            if self.checkpoint is not None and self.session.anchored:
                self.checkpoint.save(self.session.committed, self.session.log_id)
            if self.commits is not None:
                self.commits.after_read()
            self.write_session()
        out = ws.data_to_send()
        if out:  # most reads answer nothing: no call into the writer
            self.write(out)

    def _event(self, ev: Any) -> None:
        t = type(ev)
        if t is Pong:
            self.keepalive.pong(ev.payload)
        elif t is Accepted:
            # open at once: the welcome may be in this very read; unacked publishes and
            # the offline queue go out first, in order (feed() writes them)
            self.out.opened()
            if self._opened is not None and not self._opened.done():
                self._opened.set_result(None)
        elif t is CloseReceived:
            self._close_code, self._close_reason = ev.code, ev.reason
            if self.transport is not None:
                self._arm_close_deadline(self.transport)
        elif t is Failed:
            self._failure = ev.exc
            if self._opened is not None and not self._opened.done():
                self._opened.set_exception(ev.exc)
            self._close_transport()
        elif t is EOF:
            self._close_transport()

    def _close_transport(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            if self.ws is not None:
                self.write(self.ws.data_to_send())
            t.close()

    def _arm_close_deadline(self, t: asyncio.Transport) -> None:
        def deadline() -> None:
            if self.transport is t and not (self._closed is not None and self._closed.done()):
                t.abort()

        if self.loop is not None:
            self.loop.call_later(self.opts.close_timeout, deadline)

    def lost(self, exc: Exception | None) -> None:
        self.out.closed()
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
                    self.session.notify_error(error)
                self.session.callback("on_reconnect", self.owner.on_reconnect, self.backoff.attempt)
                if not self.stopping:
                    try:
                        await asyncio.wait_for(self._wake.wait(), delay)
                    except TimeoutError:
                        pass
        finally:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.abort()  # cancelled (e.g. Ctrl-C): do not leak the socket
            self.session.closed(ConnectionClosedOK(1000, "client stopped"))
            self.session.stopped()
            if self.checkpoint is not None and self.session.anchored:
                self.checkpoint.save(self.session.committed, self.session.log_id, force=True)
            self.out.set_writable(True)

    def _give_up(self, error: BaseException) -> None:
        log.error("giving up: %s", error)
        self.session.notify_error(error)
        self.session.callback("on_noreconnect", self.owner.on_noreconnect)
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
        self.ws, self.transport = ws, None
        self._opened, self._closed = loop.create_future(), loop.create_future()
        self.out.reading_paused = False
        self.transport = await open_stream(
            lambda: _Stream(self, ws), self.target, self._ssl, opts.proxy, opts.open_timeout
        )
        ws.send_request()
        self.write(ws.data_to_send())
        try:
            async with asyncio.timeout(opts.open_timeout):
                await self._opened
        except BaseException as exc:
            self.transport.abort()
            if isinstance(exc, TimeoutError):
                raise OperationTimeout("WebSocket handshake timed out") from None
            raise
        self.backoff.connected()
        self.last_rx = _now()
        self.keepalive.ping = None
        self.out.set_reading()
        log.info("connected to %s%s", self.target, self.target.path.split("?")[0])
        if self.on_open is not None:
            self.on_open()
        self.session.callback("on_connect", self.owner.on_connect)
        keepalive = loop.create_task(self.keepalive.run(self.transport))
        timer = loop.create_task(self.commits.run()) if self.commits is not None else None
        if self.stopping:
            self.stop()
        try:
            await self._closed
        finally:
            keepalive.cancel()
            if timer is not None:
                timer.cancel()
            if self.commits is not None:
                self.commits.close_after = None
            self.out.open = False
            self.backoff.disconnected()
            self.session.closed(ConnectionClosedError(self._close_code, self._close_reason))
        self.session.callback("on_close", self.owner.on_close, self._close_code, self._close_reason)
        if self._failure is not None:
            raise self._failure
        if not self.stopping:
            code = self._close_code
            if code == 1008:  # the token was logged out or expired: a reconnect gets a 401
                raise SessionExpiredError(
                    "the server ended the stream (1008): the access token was logged out "
                    "or its session expired; log in again"
                )
            cls = ConnectionClosedOK if code in (1000, 1001) else ConnectionClosedError
            raise cls(code, self._close_reason)

    def dead(self, transport: asyncio.Transport, why: str) -> None:
        """The keep-alive's verdict: abort, and report why once the connection ended."""
        log.warning("connection is dead (%s); aborting", why)
        self._failure = OperationTimeout(f"keep-alive: {why}")
        self._close_reason = why
        transport.abort()
