"""asyncio/uvloop transport driving the sans-IO ClientProtocol, plus the reconnecting engine.

`Engine` is shared by the threaded callback client (client.WebSocket, which runs it on a
private loop) and by aio.AsyncWebSocket (which runs it on the caller's loop). It owns:
connection setup (TCP/TLS, upgrade handshake), the dispatch hot path, keep-alive, the
reconnect loop with resume-from-position, the offline publish queue and pending commands.

Thread model: every method starting with `_` runs on the loop thread. `submit()` and the
`*_threadsafe` helpers may be called from any thread; they never block the loop.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import ssl as ssl_module
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from .. import payload
from .backoff import Backoff, is_fatal
from .checkpoint import Checkpoint
from ..events import EOF, Accepted, CloseReceived, Failed, Pong, State
from ..exceptions import (
    CommandError,
    ConnectionClosedError,
    ConnectionClosedOK,
    DataError,
    DecodeError,
    InputError,
    IotCommuteError,
    NetworkError,
    NotConnectedError,
    NotFoundError,
    PermissionDenied,
    ServerError,
    TimeoutError_,
)
from ..protocol import ClientProtocol

__all__ = ["Engine", "Options", "parse_url"]

_T = TypeVar("_T")
log = logging.getLogger("iotcommute.transport")

DEFAULT_PATH = "/v1/stream"
#: loop-thread sends are corked: one transport.write per loop iteration, or per this many
#: queued bytes (chars for str), whichever comes first -- a syscall per small frame is what
#: makes small sends expensive, and the bound keeps the outbox small
CORK_BYTES = 65536
_monotonic = time.monotonic
#: JSON ticks reach on_ticks in lists of at most this many: a list of every tick of a
#: 256 KiB read keeps ~1000 fresh dicts alive (cold memory, GC survivors) and made on_ticks
#: slower than per-tick on_tick; 32 keeps them in cache and still amortises the call
JSON_TICKS_CHUNK = 32

# The hot path parses with orjson directly (payload.loads adds a Python frame per message);
# on a parse error it calls payload.loads again for the library's DecodeError wording.
_fast_loads: Callable[[Any], Any]
try:
    import orjson

    _fast_loads = orjson.loads
except ImportError:  # pragma: no cover - orjson is a dependency
    _fast_loads = payload.loads
_OPEN = State.OPEN

_ERROR_CODES: dict[str, type[IotCommuteError]] = {
    "input": InputError,
    "permission": PermissionDenied,
    "not_found": NotFoundError,
    "rate": ServerError,
    "server": ServerError,
}


@dataclass
class Options:
    """Every connection option of WebSocket/AsyncWebSocket (validated once, in one place)."""

    device_key: str | None = field(default=None, repr=False)
    device_id: str | None = None
    role: str | None = None  # None: "device" with a device key, "client" with a token
    url: str | None = None
    access_token: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    ssl: ssl_module.SSLContext | None = None
    headers: dict[str, str] | None = field(default=None, repr=False)
    proxy: str | None = field(default=None, repr=False)  # may hold user:password
    ping_interval: float | None = 10.0
    ping_timeout: float | None = 10.0
    idle_timeout: float | None = None
    open_timeout: float = 10.0
    close_timeout: float = 5.0
    reconnect: bool = True
    max_reconnect_delay: float = 30.0
    max_retries: int | None = None
    reconnect_reset_after: float = 10.0
    max_size: int = 4 * 2**20
    compression: bool = True
    format: str = "json"
    subscribe: str | list[str] | None = "*"
    checkpoint: str | os.PathLike[str] | None = None
    offline_queue: int = 10000

    def __post_init__(self) -> None:
        if self.url is None:
            self.url = os.environ.get("IOTCOMMUTE_URL") or "ws://127.0.0.1:8765"
        if self.proxy is not None:
            parse_proxy(self.proxy)  # fail early on a bad proxy URL
        if self.role is None:
            self.role = "client" if self.access_token is not None else "device"
        if self.role not in ("device", "client"):
            raise ValueError("role must be 'device' or 'client'")
        if self.format not in ("json", "binary"):
            raise ValueError("format must be 'json' or 'binary'")
        has_token = self.access_token is not None or self.api_key is not None
        if has_token and (self.access_token is None or self.api_key is None):
            raise ValueError("access_token and api_key go together")
        if not has_token and (self.device_key is None or self.device_id is None):
            raise ValueError("give device_key and device_id, or api_key and access_token")
        if self.offline_queue < 0:
            raise ValueError("offline_queue must be >= 0")
        parse_url(self.url)  # fail early on a bad URL

    def handshake_headers(self) -> list[tuple[str, str]]:
        hdrs: list[tuple[str, str]] = []
        if self.access_token is not None:
            hdrs.append(("Authorization", f"token {self.api_key}:{self.access_token}"))
            if self.device_id is not None:
                hdrs.append(("X-Device-Id", self.device_id))
        else:
            assert self.device_key is not None and self.device_id is not None
            hdrs.append(("X-Device-Key", self.device_key))
            hdrs.append(("X-Device-Id", self.device_id))
        hdrs.append(("X-Role", self.role or "device"))
        hdrs.append(("X-Protocol-Version", "1"))
        extra = self.headers or {}
        if extra:  # a user header replaces a default of the same name
            names = {k.lower() for k in extra}
            hdrs = [(k, v) for k, v in hdrs if k.lower() not in names]
            hdrs.extend(extra.items())
        return hdrs


def parse_url(url: str) -> tuple[bool, str, int, str, str]:
    """(secure, host, port, path, host_header) of a ws:// or wss:// URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError("url must start with ws:// or wss://")
    if parts.username or parts.password:
        raise ValueError("credentials do not belong in the url; use the key arguments")
    secure = parts.scheme == "wss"
    host = parts.hostname
    if not host:
        raise ValueError("url has no host")
    port = parts.port or (443 if secure else 80)
    path = parts.path if parts.path not in ("", "/") else DEFAULT_PATH
    if parts.query:
        path = f"{path}?{parts.query}"
    netloc_host = f"[{host}]" if ":" in host else host
    default_port = (secure and port == 443) or (not secure and port == 80)
    host_header = netloc_host if default_port else f"{netloc_host}:{port}"
    return secure, host, port, path, host_header


def parse_proxy(url: str) -> tuple[str, int, str | None]:
    """(host, port, Proxy-Authorization value or None) of an http:// CONNECT proxy URL."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError("proxy must be an http://host:port URL (HTTP CONNECT)")
    auth = None
    if parts.username is not None:
        from base64 import b64encode
        from urllib.parse import unquote

        cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + b64encode(cred.encode()).decode("ascii")
    return parts.hostname, parts.port or 8080, auth


class _ConnectReply(asyncio.Protocol):
    """Collects the proxy's answer to CONNECT (the head only; nothing follows it)."""

    def __init__(self, done: asyncio.Future[bytes]) -> None:
        self._buf = bytearray()
        self._done = done

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if b"\r\n\r\n" in self._buf and not self._done.done():
            self._done.set_result(bytes(self._buf))
        elif len(self._buf) > 16384 and not self._done.done():
            self._done.set_exception(NetworkError("proxy answer too long"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_exception(NetworkError("proxy closed the connection"))


def default_ssl_context() -> ssl_module.SSLContext:
    """Verifying context (certifi's CA bundle when installed, else the system store)."""
    try:
        import certifi

        return ssl_module.create_default_context(cafile=certifi.where())
    except ImportError:  # pragma: no cover - certifi is a dependency
        return ssl_module.create_default_context()


def _text_error(text: str) -> DecodeError:
    """The error for a text message that is not a protocol message (never echoes it)."""
    try:
        msg = payload.loads(text)
    except DecodeError as exc:
        return DecodeError(f"undecodable text message: {exc}")
    if not isinstance(msg, dict):
        return DecodeError(f"text message is a JSON {type(msg).__name__}, not an object")
    return DecodeError("text message without a type")


def _ignore(*args: Any) -> None:
    """Stand-in for a missing on_message (keeps the raw loop free of None checks)."""


class Owner(Protocol):
    """What the engine reads callbacks from (WebSocket / AsyncWebSocket)."""

    on_connect: Callable[..., Any] | None
    on_tick: Callable[..., Any] | None
    on_ticks: Callable[..., Any] | None
    on_tick_rows: Callable[..., Any] | None
    on_message: Callable[..., Any] | None
    on_command: Callable[..., Any] | None
    on_close: Callable[..., Any] | None
    on_error: Callable[..., Any] | None
    on_reconnect: Callable[..., Any] | None
    on_noreconnect: Callable[..., Any] | None
    on_gap: Callable[..., Any] | None


class _Stream(asyncio.Protocol):
    """Thin asyncio Protocol: forwards everything to the engine (one call per read chunk)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._engine._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._engine._feed(data)

    def eof_received(self) -> bool | None:
        self._engine._feed(b"")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._engine._lost(exc)

    def pause_writing(self) -> None:
        self._engine._set_writable(False)

    def resume_writing(self) -> None:
        self._engine._set_writable(True)


class Engine:
    """Reconnecting WebSocket session; see the module docstring for the thread model."""

    def __init__(self, opts: Options, owner: Owner) -> None:
        self.opts = opts
        self.owner = owner
        secure, self._host, self._port, self._path, self._host_header = parse_url(opts.url or "")
        self._ssl: ssl_module.SSLContext | None = opts.ssl
        if secure and self._ssl is None:
            self._ssl = default_ssl_context()
        self.backoff = Backoff(
            max_delay=opts.max_reconnect_delay,
            max_retries=opts.max_retries,
            reset_after=opts.reconnect_reset_after,
        )
        self.checkpoint = Checkpoint(opts.checkpoint) if opts.checkpoint is not None else None
        #: highest log position delivered (0: none yet); `_anchored` once it means something
        self.position = 0
        self._anchored = False
        if self.checkpoint is not None:
            saved = self.checkpoint.load()
            if saved is not None:
                self.position = saved
                self._anchored = True
        # subscriptions to restore on reconnect: None = nothing, "*" = all, else a set
        sub = opts.subscribe
        self._subs: str | set[str] | None = (
            None if not sub else "*" if sub == "*" else {sub} if isinstance(sub, str) else set(sub)
        )
        self._req_ids = itertools.count(1)
        self._cmd_ids = itertools.count(1)
        # hooks for aio: extra tick sink (list of fresh ticks per read) + stop notification
        self.tick_sink: Callable[[list[dict[str, Any]]], None] | None = None
        self.open_hook: Callable[[], None] | None = None

        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread_id: int | None = None
        self._ws: ClientProtocol | None = None
        self._transport: asyncio.Transport | None = None
        self._handshake: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._close_code = 1006
        self._close_reason = ""
        self._failure: BaseException | None = None
        self._stopping = False
        self._stop_event: asyncio.Event | None = None
        self._reading_paused = False
        self._want_pause = False

        # send path shared with producer threads
        self._lock = threading.Lock()
        self._open = False
        self._outbox: collections.deque[str | bytes] = collections.deque()
        self._offline: collections.deque[str | bytes] = collections.deque()
        self._flush_pending = False
        self._corked = 0  # bytes (chars) queued in _outbox by loop-thread sends
        self._writable = threading.Event()
        self._writable.set()
        #: mirror of "not _writable.is_set()" for the loop thread's per-send check
        self.write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []

        # pending commands: id -> (resolve(ack, exc), timer)
        self._pending: dict[str, tuple[Callable[[Any, BaseException | None], None], Any]] = {}

        # keep-alive and stats
        self._last_rx = 0.0
        self._last_msg = 0.0
        self._ping_payload: bytes | None = None
        self._ping_sent = 0.0
        self._last_ping = 0.0
        self.rtt: float | None = None
        self.messages_in = 0
        self.bytes_in = 0
        self.messages_out = 0
        self.bytes_out = 0
        self.reconnects = 0
        self.duplicates = 0
        self.connections = 0

    # ------------------------------------------------------------------ public helpers
    @property
    def connected(self) -> bool:
        return self._open

    def in_loop_thread(self) -> bool:
        return self._thread_id == threading.get_ident()

    def stats(self) -> dict[str, Any]:
        transport = self._transport
        buffered = 0
        if transport is not None and not transport.is_closing():
            buffered = transport.get_write_buffer_size()
        return {
            "connected": self._open,
            "messages_in": self.messages_in,
            "bytes_in": self.bytes_in,
            "messages_out": self.messages_out,
            "bytes_out": self.bytes_out,
            "reconnects": self.reconnects,
            "connections": self.connections,
            "duplicates_dropped": self.duplicates,
            "position": self.position,
            "last_message_age": (_monotonic() - self._last_msg) if self._last_msg else None,
            "rtt": self.rtt,
            "buffered_bytes": buffered,
            "outbox": len(self._outbox),
            "offline_queued": len(self._offline),
            "pending_commands": len(self._pending),
        }

    def submit(self, item: str | bytes, *, queue_offline: bool = True) -> None:
        """Send a message from any thread; queue it while disconnected (offline policy)."""
        with self._lock:
            if not self._open:
                if not queue_offline or len(self._offline) >= self.opts.offline_queue:
                    raise NotConnectedError(
                        "not connected"
                        if not queue_offline or not self.opts.offline_queue
                        else "not connected and the offline queue is full"
                    )
                self._offline.append(item)
                return
            loop = self.loop
            assert loop is not None
            if self._thread_id == threading.get_ident():
                self._cork(item)
                return
            self._outbox.append(item)
            if self._flush_pending:
                return
            self._flush_pending = True
        loop.call_soon_threadsafe(self._flush)

    def send_in_loop(self, item: str | bytes) -> None:
        """submit() for code on the loop thread (AsyncWebSocket): no lock, no thread check.

        Writes are corked (see CORK_BYTES); backpressure is the caller's `write_paused`
        check, which only the transport's high-water mark sets.
        """
        if not self._open:
            self.submit(item)
            return
        # _cork() inlined: this runs once per AsyncWebSocket.send()
        self._outbox.append(item)
        self._corked += len(item)
        if self._corked >= CORK_BYTES:
            self._flush()
        elif not self._flush_pending:
            self._flush_pending = True
            loop = self.loop
            assert loop is not None
            loop.call_soon(self._flush)

    def _cork(self, item: str | bytes) -> None:
        self._outbox.append(item)
        self._corked += len(item)
        if self._corked >= CORK_BYTES:
            self._flush()
        elif not self._flush_pending:
            self._flush_pending = True
            loop = self.loop
            assert loop is not None
            loop.call_soon(self._flush)

    def wait_writable(self, timeout: float | None = None) -> bool:
        """Block a producer thread while the socket write buffer is over its high mark."""
        if self.in_loop_thread():
            return True
        return self._writable.wait(timeout)

    async def drain(self) -> None:
        """Await until the write buffer is below its high mark (loop thread)."""
        if self._writable.is_set():
            return
        assert self.loop is not None
        fut: asyncio.Future[None] = self.loop.create_future()
        self._drain_waiters.append(fut)
        await fut

    def threadsafe(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) on the loop thread (now if already there)."""
        loop = self.loop
        if loop is None or loop.is_closed() or not loop.is_running():
            fn(*args)  # no loop thread yet (or any more): nothing to race with
            return
        if self.in_loop_thread():
            fn(*args)
        else:
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # loop closed between the check and the call
                pass

    def encode_ticks(self, ticks: list[dict[str, Any]]) -> list[bytes]:
        """Binary batch frames for a device's readings (positions are the server's job)."""
        now = time.time()
        dev = self.opts.device_id or ""
        full = [
            {
                "type": "tick",
                "device": t.get("device") or dev,
                "position": 0,
                "ts": t.get("ts") or now,
                "data": t["data"],
            }
            for t in ticks
        ]
        return payload.encode_batches(full)

    # ------------------------------------------------------------------ subscriptions
    def _subscribe(self, devices: str | list[str], from_position: int | None) -> None:
        """Record the subscription (restored on reconnect) and send it when connected."""
        if devices == "*" or self._subs == "*":
            self._subs = "*"
        else:
            cur = self._subs if isinstance(self._subs, set) else set()
            cur.update([devices] if isinstance(devices, str) else devices)
            self._subs = cur
        if from_position is not None and not self._anchored:
            # an explicit start point: resume from it after a drop too
            self.position = max(0, from_position)
            self._anchored = True
        if self._open:
            self._send_subscribe(devices, from_position)

    def _unsubscribe(self, devices: str | list[str]) -> None:
        if devices == "*":
            self._subs = None
        elif isinstance(self._subs, set):
            self._subs.difference_update([devices] if isinstance(devices, str) else devices)
        if self._open:
            msg = {"type": "unsubscribe", "id": next(self._req_ids), "devices": devices}
            self._write_now(payload.dumps(msg).decode())

    def _send_subscribe(self, devices: str | list[str] | set[str], frm: int | None) -> None:
        devs: str | list[str] = (
            devices
            if isinstance(devices, str) and devices == "*"
            else ([devices] if isinstance(devices, str) else sorted(devices))
        )
        msg = {
            "type": "subscribe",
            "id": next(self._req_ids),
            "devices": devs,
            "from": frm,
            "format": self.opts.format,
        }
        self._write_now(payload.dumps(msg).decode())

    # ------------------------------------------------------------------ commands
    def _start_command(
        self,
        device_id: str,
        data: Any,
        timeout: float,
        resolve: Callable[[Any, BaseException | None], None],
    ) -> None:
        if not self._open:
            resolve(None, NotConnectedError("not connected: cannot send a command"))
            return
        assert self.loop is not None
        cid = f"c-{next(self._cmd_ids)}"

        def expire() -> None:
            if self._pending.pop(cid, None) is not None:
                resolve(None, TimeoutError_(f"no ack for command {cid} within {timeout}s"))

        timer = self.loop.call_later(timeout, expire)
        self._pending[cid] = (resolve, timer)
        msg = {"type": "command", "id": cid, "device": device_id, "data": data}
        self._write_now(payload.dumps(msg).decode())

    def _fail_pending(self, exc: BaseException) -> None:
        pending, self._pending = self._pending, {}
        for resolve, timer in pending.values():
            timer.cancel()
            resolve(None, exc)

    # ------------------------------------------------------------------ send path (loop)
    def _write_now(self, item: str | bytes) -> None:
        ws, transport = self._ws, self._transport
        if ws is None or transport is None or transport.is_closing() or ws.state is not _OPEN:
            return
        if self._outbox:
            self._flush()  # corked sends go first: keep the caller's order
        if isinstance(item, str):
            ws.send_text(item)
        else:
            ws.send_binary(item)
        data = ws.data_to_send()
        self.messages_out += 1
        self.bytes_out += len(data)
        transport.write(data)

    def _flush(self) -> None:
        self._flush_pending = False
        self._corked = 0
        ws, transport = self._ws, self._transport
        if ws is None or transport is None or not self._open or ws.state is not _OPEN:
            return
        outbox = self._outbox
        # Only this (loop) thread removes items and producers only append, so the n items
        # counted here are there to pop; later ones have scheduled their own flush.
        n = len(outbox)
        popleft = outbox.popleft
        send_text, send_binary = ws.send_text, ws.send_binary
        for _ in range(n):
            item = popleft()
            if isinstance(item, str):
                send_text(item)
            else:
                send_binary(item)
        if n:
            data = ws.data_to_send()
            self.messages_out += n
            self.bytes_out += len(data)
            transport.write(data)

    def _set_writable(self, writable: bool) -> None:
        self.write_paused = not writable
        if writable:
            self._writable.set()
            waiters, self._drain_waiters = self._drain_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
        else:
            self._writable.clear()

    # ------------------------------------------------------------------ flow control
    def pause_reading(self) -> None:
        self._want_pause = True
        t = self._transport
        if t is not None and not self._reading_paused and not t.is_closing():
            t.pause_reading()
            self._reading_paused = True

    def resume_reading(self) -> None:
        self._want_pause = False
        t = self._transport
        if t is not None and self._reading_paused and not t.is_closing():
            t.resume_reading()
        self._reading_paused = False

    # ------------------------------------------------------------------ receive path
    def _feed(self, data: bytes) -> None:
        ws = self._ws
        if ws is None:
            return
        ws.receive_data(data)
        self.bytes_in += len(data)
        self._last_rx = _monotonic()
        events = ws.events_received()
        if events:
            self._dispatch(events)
        out = ws.data_to_send()
        if out:
            t = self._transport
            if t is not None and not t.is_closing():
                t.write(out)

    def _dispatch(self, events: list[Any]) -> None:
        """The hot path: one call per network read, callbacks bound to locals.

        Binary frames are tick batches only for someone who wants ticks; a raw on_message
        consumer gets the bytes untouched and pays nothing for decoding (_dispatch_raw).
        """
        owner = self.owner
        if (
            owner.on_tick is None
            and owner.on_ticks is None
            and owner.on_tick_rows is None
            and self.tick_sink is None
        ):
            self._dispatch_raw(events, owner.on_message)
        else:
            self._dispatch_ticks(events)
        if self.checkpoint is not None and self.position:
            self.checkpoint.save(self.position)

    def _dispatch_raw(self, events: list[Any], on_message: Callable[..., Any] | None) -> None:
        """No tick consumer: every data message goes straight to on_message.

        Text is still parsed for control messages (subscribed, command, ack, ...) and tick
        positions (resume point); text that is not protocol JSON is the application's own
        data here, so it is not reported as a DecodeError.
        """
        owner = self.owner
        if on_message is None:
            on_message = _ignore
        other = 0
        for ev in events:
            t = type(ev)
            if t is bytes:
                try:
                    on_message(ev, owner)
                except Exception as exc:
                    self._callback_failed("on_message", exc)
            elif t is str:
                try:
                    on_message(ev, owner)
                except Exception as exc:
                    self._callback_failed("on_message", exc)
                self._raw_text(ev)
            else:
                other += 1
                self._event(ev)
        nmsg = len(events) - other
        if nmsg:
            self.messages_in += nmsg
            self._last_msg = self._last_rx
        if self.position:
            self._anchored = True

    def _raw_text(self, ev: str) -> None:
        # Protocol messages are JSON objects: skip the parse (a failed parse of a big text
        # costs more than delivering it) for anything that cannot be one.
        doc = ev.strip()
        if doc[:1] != "{" or doc[-1:] != "}":
            return
        try:
            msg = _fast_loads(doc)
            kind = msg["type"]
        except Exception:
            return
        if kind == "tick":
            pos = msg.get("position")
            if type(pos) is int and pos > self.position:
                self.position = pos
            return
        if self.position:
            self._anchored = True
        self._control(kind, msg)

    def _dispatch_ticks(self, events: list[Any]) -> None:
        """Tick consumers present: JSON ticks and binary batches decode to dicts.

        on_ticks/tick_sink get each binary batch frame as its own list (no copy; the ticks
        of one frame die together, which keeps the garbage collector's young generation
        small) and the JSON ticks of one read together, in stream order. With on_tick_rows
        set, binary batches go to it alone, in the lean form (payload.decode_batch_rows).
        """
        owner = self.owner
        on_tick = owner.on_tick
        on_ticks = owner.on_ticks
        on_rows = owner.on_tick_rows
        on_message = owner.on_message
        sink = self.tick_sink
        loads = _fast_loads
        decode_batch = payload.decode_batch
        pending: list[dict[str, Any]] | None = (
            [] if (on_ticks is not None or sink is not None) else None
        )
        last = self.position
        other = 0
        dups = 0
        for ev in events:
            t = type(ev)
            if t is bytes:
                if on_message is not None:
                    try:
                        on_message(ev, owner)
                    except Exception as exc:
                        self._callback_failed("on_message", exc)
                if on_rows is not None:
                    if pending:
                        self._deliver_ticks(pending, sink, on_ticks)
                        pending = []
                    last, n_dups = self._deliver_rows(ev, last, on_rows)
                    dups += n_dups
                    continue
                ticks = self._decoded(decode_batch, ev)
                if not ticks:
                    continue
                if ticks[0]["position"] > last:
                    # batch fast path: a batch is a slice of the log (positions
                    # increasing), so one comparison proves the whole batch is new
                    last = ticks[-1]["position"]
                    if pending:
                        self._deliver_ticks(pending, sink, on_ticks)
                        pending = []
                    if on_tick is not None:
                        for tick in ticks:
                            try:
                                on_tick(tick, owner)
                            except Exception as exc:
                                self._callback_failed("on_tick", exc)
                    if pending is not None:
                        self._deliver_ticks(ticks, sink, on_ticks)
                    continue
                for tick in ticks:
                    pos = tick["position"]
                    if pos <= last:
                        dups += 1
                        continue
                    last = pos
                    if on_tick is not None:
                        try:
                            on_tick(tick, owner)
                        except Exception as exc:
                            self._callback_failed("on_tick", exc)
                    if pending is not None:
                        pending.append(tick)
            elif t is str:
                if on_message is not None:
                    try:
                        on_message(ev, owner)
                    except Exception as exc:
                        self._callback_failed("on_message", exc)
                try:
                    msg = loads(ev)
                    kind = msg["type"]
                except Exception:
                    self._report(_text_error(ev))
                    continue
                if kind == "tick":
                    pos = msg.get("position")
                    if type(pos) is int and pos > last:  # the common case first
                        last = pos
                        if on_tick is not None:
                            try:
                                on_tick(msg, owner)
                            except Exception as exc:
                                self._callback_failed("on_tick", exc)
                        if pending is not None:
                            pending.append(msg)
                            if len(pending) >= JSON_TICKS_CHUNK:
                                self._deliver_ticks(pending, sink, on_ticks)
                                pending = []
                    elif type(pos) is int:
                        dups += 1
                    else:
                        self._report(DecodeError("tick without an integer position"))
                    continue
                # control messages may read/change the position: sync it around them
                self.position = last
                if last:
                    self._anchored = True
                self._control(kind, msg)
                last = self.position
            else:
                other += 1
                self.position = last
                self._event(ev)
                last = self.position
        self.position = last
        if last:
            self._anchored = True
        nmsg = len(events) - other
        if nmsg:
            self.messages_in += nmsg
            self._last_msg = self._last_rx
        if dups:
            self.duplicates += dups
        if pending:
            self._deliver_ticks(pending, sink, on_ticks)

    def _decoded(self, decode: Callable[[bytes], _T], ev: bytes) -> _T | None:
        """decode(ev), or None once the failure is reported (the stream goes on)."""
        try:
            return decode(ev)
        except DecodeError as exc:
            self._report(exc)
        except Exception as exc:
            self._report(DecodeError(f"undecodable tick batch: {exc}"))
        return None

    def _deliver_rows(self, ev: bytes, last: int, on_rows: Callable[..., Any]) -> tuple[int, int]:
        """One binary batch to on_tick_rows, past `last` only; returns (last, duplicates)."""
        decoded = self._decoded(payload.decode_batch_rows, ev)
        if decoded is None or not decoded[1]:
            return last, 0
        fields, rows = decoded
        dups = 0
        if rows[0][1] > last:  # a batch is a slice of the log: one comparison suffices
            last = rows[-1][1]
        else:
            fresh = []
            for row in rows:
                if row[1] <= last:
                    dups += 1
                    continue
                last = row[1]
                fresh.append(row)
            if not fresh:
                return last, dups
            rows = fresh
        try:
            on_rows(fields, rows, self.owner)
        except Exception as exc:
            self._callback_failed("on_tick_rows", exc)
        return last, dups

    def _deliver_ticks(
        self,
        ticks: list[dict[str, Any]],
        sink: Callable[[list[dict[str, Any]]], None] | None,
        on_ticks: Callable[..., Any] | None,
    ) -> None:
        if sink is not None:
            sink(ticks)
        if on_ticks is not None:
            try:
                on_ticks(ticks, self.owner)
            except Exception as exc:
                self._callback_failed("on_ticks", exc)

    def _control(self, kind: Any, msg: Any) -> None:
        owner = self.owner
        if kind == "welcome":
            log.debug("welcome: server %s, log position %s", msg.get("server"), msg.get("position"))
        elif kind == "subscribed":
            pos = msg.get("position")
            if type(pos) is not int:
                return
            if not self._anchored:
                if pos > self.position:
                    # nothing delivered yet: resume from the subscription point after a drop
                    self.position = pos
                    self._anchored = True
            elif pos < self.position:
                # The log's tail is behind what we delivered: the server lost its log
                # (in-memory log, restarted) and reuses positions. It restarts our cursor
                # at its tail, so follow it -- otherwise every new tick looks like a duplicate.
                self._report(
                    DataError(
                        f"server log went back from position {self.position} to {pos} "
                        "(log lost on the server); continuing from its tail"
                    )
                )
                self.position = pos
        elif kind == "gap":
            log.warning(
                "gap: %s ticks after position %s were trimmed", msg.get("missed"), msg.get("from")
            )
            self._call("on_gap", owner.on_gap, msg)
        elif kind == "command":
            self._call("on_command", owner.on_command, msg)
        elif kind == "ack":
            entry = self._pending.pop(str(msg.get("id")), None)
            if entry is not None:
                resolve, timer = entry
                timer.cancel()
                if msg.get("ok"):
                    resolve(msg, None)
                else:
                    resolve(None, CommandError(str(msg.get("error") or "command failed")))
        elif kind == "error":
            cls = _ERROR_CODES.get(str(msg.get("code")), ServerError)
            exc = cls(str(msg.get("message") or "server error"), code=msg.get("code"))
            entry = self._pending.pop(str(msg.get("id")), None)
            if entry is not None:
                resolve, timer = entry
                timer.cancel()
                resolve(None, exc)
            else:
                self._report(exc)
        # "published", "unsubscribed" and unknown types need nothing (on_message saw them)

    def _event(self, ev: Any) -> None:
        t = type(ev)
        if t is Pong:
            if self._ping_payload is not None and ev.payload == self._ping_payload:
                self.rtt = _monotonic() - self._ping_sent
                self._ping_payload = None
        elif t is Accepted:
            hs = self._handshake
            if hs is not None and not hs.done():
                hs.set_result(None)
        elif t is CloseReceived:
            self._close_code, self._close_reason = ev.code, ev.reason
            if self.loop is not None and self._transport is not None:
                # the server closes TCP after our echo; do not wait for it forever
                self.loop.call_later(self.opts.close_timeout, self._close_deadline, self._transport)
        elif t is Failed:
            exc = ev.exc
            self._failure = exc
            hs = self._handshake
            if hs is not None and not hs.done():
                hs.set_exception(exc)
            self._close_transport()  # run() reports the failure once
        elif t is EOF:
            self._close_transport()

    def _close_transport(self) -> None:
        ws, t = self._ws, self._transport
        if t is None or t.is_closing():
            return
        if ws is not None:
            out = ws.data_to_send()
            if out:
                t.write(out)
        t.close()

    def _lost(self, exc: Exception | None) -> None:
        with self._lock:
            self._open = False
            # never-written messages go back to the front of the offline queue
            if self._outbox:
                self._offline.extendleft(reversed(self._outbox))
                self._outbox.clear()
                self._corked = 0
                while len(self._offline) > self.opts.offline_queue:
                    self._offline.pop()
        self._set_writable(True)
        if exc is not None and self._failure is None:
            self._failure = NetworkError(f"connection lost: {exc}")
        hs = self._handshake
        if hs is not None and not hs.done():
            hs.set_exception(self._failure or NetworkError("connection closed during handshake"))
        closed = self._closed
        if closed is not None and not closed.done():
            closed.set_result(None)

    # ------------------------------------------------------------------ callbacks
    def _call(self, name: str, fn: Callable[..., Any] | None, *args: Any) -> None:
        if fn is None:
            return
        try:
            fn(*args, self.owner)
        except Exception as exc:
            self._callback_failed(name, exc)

    def _callback_failed(self, name: str, exc: Exception) -> None:
        log.exception("%s callback raised", name, exc_info=exc)
        on_error = self.owner.on_error
        if on_error is not None:
            try:
                on_error(exc, self.owner)
            except Exception:
                log.exception("on_error callback raised")

    def _report(self, exc: BaseException) -> None:
        log.warning("%s: %s", type(exc).__name__, exc)
        on_error = self.owner.on_error
        if on_error is not None:
            try:
                on_error(exc, self.owner)
            except Exception:
                log.exception("on_error callback raised")

    # ------------------------------------------------------------------ lifecycle
    def prepare(self) -> None:
        """Arm a new session (called synchronously by connect(), before run() starts, so
        a stop() issued right after connect() is not lost)."""
        self._stopping = False

    def stop(self) -> None:
        """Close gracefully and do not reconnect (loop thread)."""
        self._stopping = True
        if self._stop_event is not None:
            self._stop_event.set()
        self._begin_close(1000, "")

    def abort(self) -> None:
        """Drop the TCP connection without a close handshake (tests/demo: simulate a cut)."""
        t = self._transport
        if t is not None:
            self._close_reason = "aborted"
            t.abort()

    def _begin_close(self, code: int, reason: str) -> None:
        ws, t = self._ws, self._transport
        if ws is None or t is None or t.is_closing():
            return
        if ws.state is State.OPEN:
            if self._outbox:
                self._flush()  # corked sends go out before the close frame
            ws.close(code, reason)
            out = ws.data_to_send()
            if out:
                t.write(out)
            assert self.loop is not None
            self.loop.call_later(self.opts.close_timeout, self._close_deadline, t)
        elif ws.state is State.CONNECTING:
            t.abort()
        # CLOSING: a close is under way and its deadline is armed

    def _close_deadline(self, t: asyncio.Transport) -> None:
        if self._transport is t and not (self._closed is not None and self._closed.done()):
            log.debug("close handshake timed out; aborting")
            t.abort()

    async def run(self) -> None:
        """Connect, and reconnect until stop() or a fatal error (which is raised)."""
        self.loop = asyncio.get_running_loop()
        self._thread_id = threading.get_ident()
        self._stop_event = asyncio.Event()
        if self._stopping:  # stop() came before the loop started
            self._stop_event.set()
        self.backoff.reset()
        attempt = 0
        last_error: BaseException | None = None
        try:
            while not self._stopping:
                error: BaseException | None = None
                try:
                    await self._connect_once()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    error = exc
                    last_error = exc
                if self._stopping:
                    break
                if error is not None:
                    if is_fatal(error):
                        log.error("giving up: %s", error)
                        self._report(error)
                        self._call("on_noreconnect", self.owner.on_noreconnect)
                        raise error
                    self._report(error)
                if not self.opts.reconnect:
                    if error is not None:
                        raise error
                    break
                delay = self.backoff.next_delay()
                if delay is None:
                    log.error("giving up after %d attempts", self.backoff.attempt)
                    self._call("on_noreconnect", self.owner.on_noreconnect)
                    if last_error is not None:
                        raise last_error
                    break
                attempt += 1
                self.reconnects += 1
                log.info("reconnecting in %.2fs (attempt %d)", delay, attempt)
                self._call("on_reconnect", self.owner.on_reconnect, attempt)
                if self._stopping:
                    break
                try:
                    await asyncio.wait_for(self._stop_event.wait(), delay)
                except TimeoutError:
                    pass
        finally:
            t = self._transport
            if t is not None and not t.is_closing():
                t.abort()  # cancelled (e.g. Ctrl-C): do not leak the socket
            self._fail_pending(ConnectionClosedOK(1000, "client stopped"))
            if self.checkpoint is not None and self._anchored:
                self.checkpoint.save(self.position, force=True)
            self._set_writable(True)

    async def _connect_once(self) -> None:
        loop = self.loop
        assert loop is not None
        opts = self.opts
        self._failure = None
        self._close_code, self._close_reason = 1006, ""
        ws = ClientProtocol(
            host=self._host_header,
            path=self._path,
            extra_headers=opts.handshake_headers(),
            subprotocols=[],
            compression=opts.compression,
            max_size=opts.max_size,
        )
        self._ws = ws
        self._transport = None
        self._handshake = loop.create_future()
        self._closed = loop.create_future()
        self._reading_paused = False
        try:
            async with asyncio.timeout(opts.open_timeout):
                if opts.proxy is not None:
                    await self._open_via_proxy(opts.proxy)
                else:
                    await loop.create_connection(
                        lambda: _Stream(self),
                        self._host,
                        self._port,
                        ssl=self._ssl,
                        server_hostname=self._host if self._ssl is not None else None,
                    )
        except ssl_module.SSLCertVerificationError as exc:
            err = NetworkError(f"TLS certificate verification failed: {exc.verify_message}")
            err.fatal = True  # a wrong certificate does not fix itself: no retry storm
            raise err from None
        except TimeoutError:
            raise TimeoutError_(f"connect to {self._host}:{self._port} timed out") from None
        except OSError as exc:
            raise NetworkError(f"cannot connect to {self._host}:{self._port}: {exc}") from None
        transport = self._transport
        assert transport is not None
        ws.send_request()
        transport.write(ws.data_to_send())
        try:
            async with asyncio.timeout(opts.open_timeout):
                await self._handshake
        except TimeoutError:
            transport.abort()
            raise TimeoutError_("WebSocket handshake timed out") from None
        except BaseException:
            transport.abort()
            raise
        # open: restore subscriptions from the last position, replay the offline queue
        self.connections += 1
        self.backoff.connected()
        now = _monotonic()
        self._last_rx = self._last_ping = now
        self._ping_payload = None
        if self._subs is not None:
            self._send_subscribe(self._subs, self.position if self._anchored else None)
        with self._lock:
            self._open = True
            self._outbox.extendleft(reversed(self._offline))
            self._offline.clear()
            self._flush()
        if self._want_pause:
            self.pause_reading()
        log.info("connected to %s:%s%s", self._host, self._port, self._path.split("?")[0])
        if self.open_hook is not None:
            self.open_hook()
        self._call("on_connect", self.owner.on_connect)
        keepalive = loop.create_task(self._keepalive(transport))
        if self._stopping:  # stop() raced with the handshake
            self._begin_close(1000, "")
        try:
            await self._closed
        finally:
            keepalive.cancel()
            self._open = False
            self.backoff.disconnected()
            self._fail_pending(ConnectionClosedError(self._close_code, self._close_reason))
        code, reason = self._close_code, self._close_reason
        self._call("on_close", self.owner.on_close, code, reason)
        if self._failure is not None:
            raise self._failure
        if not self._stopping:
            cls = ConnectionClosedOK if code in (1000, 1001) else ConnectionClosedError
            raise cls(code, reason)

    async def _open_via_proxy(self, proxy: str) -> None:
        """HTTP CONNECT tunnel, then TLS inside it for wss:// (end-to-end with the server)."""
        loop = self.loop
        assert loop is not None
        phost, pport, auth = parse_proxy(proxy)
        reply: asyncio.Future[bytes] = loop.create_future()
        try:
            raw, _ = await loop.create_connection(lambda: _ConnectReply(reply), phost, pport)
        except OSError as exc:
            raise NetworkError(f"cannot connect to the proxy {phost}:{pport}: {exc}") from None
        target = f"[{self._host}]" if ":" in self._host else self._host
        head = f"CONNECT {target}:{self._port} HTTP/1.1\r\nHost: {target}:{self._port}\r\n"
        if auth is not None:
            head += f"Proxy-Authorization: {auth}\r\n"
        raw.write((head + "\r\n").encode("latin-1"))
        try:
            answer = await reply
        except BaseException:
            raw.abort()
            raise
        status_line = answer.split(b"\r\n", 1)[0].decode("latin-1", "replace")
        parts = status_line.split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if status != 200 or answer.index(b"\r\n\r\n") + 4 != len(answer):
            raw.abort()
            err = NetworkError(f"proxy refused the tunnel: {status_line[:100]}", status=status)
            err.fatal = status == 407  # wrong proxy credentials: retrying cannot help
            raise err
        stream = _Stream(self)
        if self._ssl is not None:
            tls = await loop.start_tls(raw, stream, self._ssl, server_hostname=self._host)
            if tls is None:  # pragma: no cover - only when the transport closed meanwhile
                raise NetworkError("proxy tunnel closed during the TLS handshake")
            stream.connection_made(tls)
        else:
            raw.set_protocol(stream)
            stream.connection_made(raw)

    async def _keepalive(self, transport: asyncio.Transport) -> None:
        opts = self.opts
        intervals = [x for x in (opts.ping_interval, opts.ping_timeout, opts.idle_timeout) if x]
        if not intervals:
            return
        tick = max(0.05, min(intervals) / 4)
        while True:
            await asyncio.sleep(tick)
            if transport.is_closing():
                return
            now = _monotonic()
            if opts.idle_timeout and now - self._last_rx > opts.idle_timeout:
                self._dead(transport, f"no data for {opts.idle_timeout}s")
                return
            if self._ping_payload is not None:
                if opts.ping_timeout and now - self._ping_sent > opts.ping_timeout:
                    self._dead(transport, f"no pong within {opts.ping_timeout}s")
                    return
            elif opts.ping_interval and now - self._last_ping >= opts.ping_interval:
                ws = self._ws
                if ws is None or ws.state is not _OPEN:
                    return
                self._ping_payload = os.urandom(4)
                self._ping_sent = self._last_ping = now
                ws.send_ping(self._ping_payload)
                transport.write(ws.data_to_send())

    def _dead(self, transport: asyncio.Transport, why: str) -> None:
        log.warning("connection is dead (%s); aborting", why)
        self._failure = TimeoutError_(f"keep-alive: {why}")
        self._close_reason = why
        transport.abort()
