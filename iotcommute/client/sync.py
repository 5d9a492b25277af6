"""WebSocket: the callback API (blocking connect, or a background thread), as in the README.

    from iotcommute import WebSocket
    iws = WebSocket(device_key, device_id, "device")
    iws.on_tick = lambda tick, ws: print(tick)
    iws.connect()                   # blocks until stop(); connect(threaded=True) returns

Callbacks run on the client's own event loop thread (a private uvloop/asyncio loop per
connect(): no process-global reactor, and a stopped client can connect again). Every method
is safe from any thread and from callbacks; send_command() blocks, so inside a callback use
send_command_async().
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Any

from ..exceptions import IotCommuteError, NotConnectedError, OperationTimeout
from .base import ClientBase, Publish, takes
from .options import resolver
from .session import OP_BINARY, OP_TEXT

__all__ = ["WebSocket", "default_loop_factory"]

log = logging.getLogger("iotcommute.client")


def default_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop factory when installed, else asyncio's (never touches the policy)."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    except ImportError:  # pragma: no cover - uvloop is a dependency on CPython/Unix
        return asyncio.new_event_loop


class WebSocket(ClientBase):
    __doc__ = ClientBase.__doc__

    def _post_init(self) -> None:
        if self._max_queue != 10000 or not self._iterate:
            raise TypeError("max_queue and iterate belong to AsyncWebSocket")
        self._thread: threading.Thread | None = None
        self._running = False
        self._run_lock = threading.Lock()
        #: the error that ended a threaded connect() (None after a clean stop)
        self.error: BaseException | None = None

    def connect(self, threaded: bool = False) -> None:
        """Connect and stream until stop()/close(); reconnects on transient failures.

        Blocking (threaded=False): returns after stop(), raises the typed error that ended
        the session (bad credentials, forbidden, version, TLS, a server that was never
        reached after first_connect_retries, or retries exhausted). Ctrl-C ends it cleanly.
        threaded=True: runs in a daemon thread and returns at once; the ending error goes to
        on_error/on_noreconnect and stays in `.error`.
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
            self._engine.stopping = False
        if threaded:
            self._thread = threading.Thread(
                target=self._run_thread, name="iotcommute-websocket", daemon=True
            )
            self._thread.start()
            return
        try:
            self._run()
        except KeyboardInterrupt:
            raise KeyboardInterrupt from None  # one plain traceback, not the loop's chain
        finally:
            self._running = False

    def _run(self) -> None:
        factory = self._loop_factory or default_loop_factory()
        with asyncio.Runner(loop_factory=factory) as runner:
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
        """Close gracefully (close handshake, bounded by close_timeout) and stop reconnecting;
        connect() returns once closed. Safe from any thread or callback."""
        self._engine.call(self._engine.stop, code, reason)

    def stop(self) -> None:
        """Stop for good: the same as close(1000)."""
        self.close()

    # ------------------------------------------------------------------ sending
    def _submit(self, op: int, data: bytes, pid: str | None = None) -> None:
        eng = self._engine
        if eng.write_paused:
            eng.wait_writable(self._opts.open_timeout)
        eng.send(op, data, pid)

    def send(self, data: str | bytes | bytearray | memoryview) -> None:
        """Send a raw text (str) or binary message (queued offline while disconnected)."""
        if isinstance(data, str):
            self._submit(OP_TEXT, data.encode("utf-8"))
        else:
            self._submit(OP_BINARY, bytes(data))

    @takes(ClientBase._publish_request)
    def publish(self, request: Publish) -> int | None:
        fut: concurrent.futures.Future[Any] | None = None
        if request.wait:
            if self._engine.in_loop_thread():
                raise RuntimeError("publish(wait=True) would deadlock inside a callback")
            fut = concurrent.futures.Future()
        eng = self._engine
        if eng.write_paused:
            eng.wait_writable(self._opts.open_timeout)
        waiter = resolver(fut) if fut is not None else None
        eng.send(OP_TEXT, request.frame, request.pid, waiter=waiter)
        if fut is None:
            return None
        try:
            position: int = fut.result(request.timeout)
        except concurrent.futures.TimeoutError:
            raise request.timed_out() from None
        return position

    def publish_batch(self, ticks: list[dict[str, Any]]) -> None:
        """Publish many readings as binary batch frames (numbers/bools; unacknowledged).

        Each item is {"data": {...}, "ts": optional}; device and position are filled in.
        """
        for frame in self._encode_ticks(ticks):
            self._submit(OP_BINARY, frame)

    def send_command_async(
        self, device_id: str, data: Any, timeout: float = 10.0
    ) -> concurrent.futures.Future[dict[str, Any]]:
        """Send a command; the Future resolves to the ack dict. It fails with CommandError
        (the device said no), OperationTimeout, NotConnectedError or ConnectionClosed.
        Safe from callbacks: never blocks. Data JSON cannot encode raises InputError now."""
        cid, frame = self._session.encode_command(device_id, data)
        fut: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        eng = self._engine
        if eng.loop is None or not eng.connected:
            fut.set_exception(NotConnectedError("not connected: cannot send a command"))
            return fut
        eng.call(eng.start_command, cid, frame, timeout, resolver(fut))
        return fut

    def send_command(self, device_id: str, data: Any, timeout: float = 10.0) -> dict[str, Any]:
        """Send a command and block until its ack (see send_command_async for errors)."""
        if self._engine.in_loop_thread():
            raise RuntimeError(
                "send_command() would deadlock inside a callback; use send_command_async()"
            )
        fut = self.send_command_async(device_id, data, timeout)
        try:  # the engine's own timer fires first; the margin only guards a dead loop
            return fut.result(timeout + 5.0)
        except concurrent.futures.TimeoutError:
            raise OperationTimeout(f"no ack within {timeout}s") from None
