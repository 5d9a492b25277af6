"""WebSocket: the callback API (sync, threads), as in the README.

    from iotcommute import WebSocket
    iws = WebSocket(device_key, device_id, "device")
    iws.on_tick = lambda tick, ws: print(tick)
    iws.connect()                   # blocks until stop(); connect(threaded=True) returns

Every callback gets the WebSocket as its LAST argument and runs on the client's own event
loop thread (a private uvloop/asyncio loop created per connect(): no process-global
reactor, and a stopped client can connect again). A callback that raises is logged and
passed to on_error; it never kills the connection.

Callbacks: on_connect(ws), on_tick(tick, ws), on_ticks(ticks, ws) -- the new ticks of
one binary batch frame, or of up to 32 JSON ticks that arrived in one network read, in
stream order and after on_tick ran for each --, on_tick_rows(fields, rows, ws) -- the lean
form of a binary batch: the data field names and one tuple (device, position, ts, *values)
per new tick; when set, binary batches go to it instead of on_tick/on_ticks --,
on_message(raw, ws) (every text/binary message
as received; with no tick consumer set, binary frames are not decoded at all),
on_command(command, ws) (answer with ws.ack()),
on_close(code, reason, ws), on_error(error, ws), on_reconnect(attempt, ws),
on_noreconnect(ws), on_gap(gap, ws).

Delivery: the client remembers the highest log position delivered and re-subscribes from
it after any reconnect, so every tick in the log arrives once and in order (a duplicate
is dropped, a trimmed range is reported by on_gap). stop() inside on_tick ends the
session after the current network read: ticks of that read already decoded are still
delivered, and a later connect() resumes after the last one.

All methods are safe from any thread and from inside callbacks; none of them blocks the
loop thread. The one blocking call, send_command(), refuses to run on the loop thread
(it would deadlock) -- use send_command_async(), which returns a
concurrent.futures.Future, from callbacks. publish() from other threads waits (at most
open_timeout) while the socket's write buffer is over its high-water mark.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import ssl as ssl_module
import threading
from collections.abc import Callable
from typing import Any

from .. import payload
from ..exceptions import IotCommuteError, NotConnectedError, OperationTimeout
from .engine import Engine, Options

__all__ = ["WebSocket", "default_loop_factory"]

log = logging.getLogger("iotcommute.client")

Callback = Callable[..., Any] | None


def default_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop factory when installed, else asyncio's (never touches the policy)."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    except ImportError:  # pragma: no cover - uvloop is a dependency on CPython/Unix
        return asyncio.new_event_loop


class WebSocket:
    """Reconnecting streaming client with callbacks; see the module docstring."""

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
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    ) -> None:
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
        self._loop_factory = loop_factory or default_loop_factory()
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
        self._thread: threading.Thread | None = None
        self._running = False
        self._run_lock = threading.Lock()
        #: the error that ended a threaded connect() (None after a clean stop)
        self.error: BaseException | None = None

    def __repr__(self) -> str:
        # never the key or token: only where we connect and as whom
        state = "connected" if self._engine.connected else "disconnected"
        return (
            f"<WebSocket url={self._opts.url!r} device={self._opts.device_id!r} "
            f"role={self._opts.role!r} {state}>"
        )

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        return self._opts.url or ""

    @property
    def position(self) -> int:
        """Highest log position delivered so far (0: none yet)."""
        return self._engine.position

    def is_connected(self) -> bool:
        return self._engine.connected

    def connect(self, threaded: bool = False) -> None:
        """Connect and stream until stop()/close(); reconnects on transient failures.

        Blocking (threaded=False): returns after stop(), raises the typed error that ended
        the session (fatal: bad credentials, forbidden, version, TLS; or retries exhausted).
        threaded=True: runs in a daemon thread and returns at once; the ending error is
        reported to on_error/on_noreconnect and kept in `.error`.
        """
        if not threaded:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                raise RuntimeError(
                    "connect() would block a running event loop; use connect(threaded=True) "
                    "or iotcommute.AsyncWebSocket"
                )
        with self._run_lock:
            if self._running:
                raise RuntimeError("this WebSocket is already connected; call stop() first")
            self._running = True
            self.error = None
            self._engine.prepare()
        if threaded:
            self._thread = threading.Thread(
                target=self._run_thread, name="iotcommute-websocket", daemon=True
            )
            self._thread.start()
            return
        try:
            self._run()
        finally:
            self._running = False

    def _run(self) -> None:
        with asyncio.Runner(loop_factory=self._loop_factory) as runner:
            runner.run(self._engine.run())

    def _run_thread(self) -> None:
        try:
            self._run()
        except IotCommuteError as exc:
            self.error = exc  # already logged and passed to on_error by the engine
        except BaseException as exc:  # pragma: no cover - a bug; keep it visible
            self.error = exc
            log.exception("websocket thread crashed")
        finally:
            self._running = False

    def join(self, timeout: float | None = None) -> bool:
        """Wait for a threaded connect() to end; True if it has."""
        t = self._thread
        if t is None:
            return True
        t.join(timeout)
        return not t.is_alive()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close gracefully (close handshake, bounded by close_timeout) and stop reconnecting.

        connect() returns once the connection is closed. Safe from any thread/callback.
        """
        eng = self._engine

        def do_close() -> None:
            eng._stopping = True
            if eng._stop_event is not None:
                eng._stop_event.set()
            eng._begin_close(code, reason)

        eng.threadsafe(do_close)

    def stop(self) -> None:
        """Stop for good: same as close(1000) (kept for the Kite-style API)."""
        self._engine.threadsafe(self._engine.stop)

    def stats(self) -> dict[str, Any]:
        """Counters: messages/bytes in/out, reconnects, position, last-message age, rtt..."""
        return self._engine.stats()

    def _drop_connection(self) -> None:
        """Cut the TCP connection without a close handshake (demo/tests: simulate a cut)."""
        self._engine.threadsafe(self._engine.abort)

    # ------------------------------------------------------------------ sending
    def _submit(self, item: str | bytes) -> None:
        eng = self._engine
        if not eng._writable.is_set():
            eng.wait_writable(self._opts.open_timeout)
        eng.submit(item)

    def send(self, data: str | bytes | bytearray | memoryview) -> None:
        """Send a raw text (str) or binary message (queued offline while disconnected)."""
        self._submit(data if isinstance(data, str) else bytes(data))

    def publish(self, data: dict[str, Any], *, ts: float | None = None, id: Any = None) -> None:
        """Publish one telemetry message of this device (device role).

        While disconnected it waits in a bounded queue (offline_queue) replayed on
        reconnect; when that is full (or offline_queue=0) NotConnectedError is raised.
        """
        msg: dict[str, Any] = {"type": "publish", "data": data}
        if ts is not None:
            msg["ts"] = ts
        if id is not None:
            msg["id"] = id
        self._submit(payload.dumps(msg).decode())

    def publish_batch(self, ticks: list[dict[str, Any]]) -> None:
        """Publish many readings in binary batch frames (numeric/bool data fields).

        Each item is a tick dict or just {"data": {...}, "ts": optional}; the device and
        position are filled in (the server assigns positions).
        """
        for frame in self._engine.encode_ticks(ticks):
            self._submit(frame)

    def subscribe(self, devices: str | list[str], from_position: int | None = None) -> None:
        """Subscribe to devices ("*" = all), from now or after `from_position`."""
        self._engine.threadsafe(self._engine._subscribe, devices, from_position)

    def unsubscribe(self, devices: str | list[str]) -> None:
        self._engine.threadsafe(self._engine._unsubscribe, devices)

    def ack(
        self, command_id: str, ok: bool = True, data: Any = None, error: str | None = None
    ) -> None:
        """Answer a command received in on_command (device role)."""
        msg: dict[str, Any] = {"type": "ack", "id": command_id, "ok": ok}
        if data is not None:
            msg["data"] = data
        if error is not None:
            msg["error"] = error
        self._engine.submit(payload.dumps(msg).decode(), queue_offline=False)

    def send_command_async(
        self, device_id: str, data: Any, timeout: float = 10.0
    ) -> concurrent.futures.Future[dict[str, Any]]:
        """Send a command; the Future resolves to the ack dict.

        It fails with CommandError (device said no), OperationTimeout (no ack in time),
        NotConnectedError or ConnectionClosed. Safe from callbacks: never blocks.
        """
        fut: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

        def resolve(ack: Any, exc: BaseException | None) -> None:
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(ack)

        eng = self._engine
        if eng.loop is None or not eng.connected:
            fut.set_exception(NotConnectedError("not connected: cannot send a command"))
            return fut
        eng.threadsafe(eng._start_command, device_id, data, timeout, resolve)
        return fut

    def send_command(self, device_id: str, data: Any, timeout: float = 10.0) -> dict[str, Any]:
        """Send a command and block until its ack (see send_command_async for errors)."""
        if self._engine.in_loop_thread():
            raise RuntimeError(
                "send_command() would deadlock inside a callback; use send_command_async()"
            )
        fut = self.send_command_async(device_id, data, timeout)
        # the engine's own timer fires first; the margin only guards against a dead loop
        try:
            return fut.result(timeout + 5.0)
        except concurrent.futures.TimeoutError:
            raise OperationTimeout(f"no ack within {timeout}s") from None
