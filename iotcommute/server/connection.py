"""One TCP connection of the reference server: HTTP (h11) then, after an upgrade, WebSocket.

The request head is parsed with h11. A non-upgrade request goes to
`iotcommute.server.rest_api.handle` (404 when that module is absent). An upgrade to
/v1/stream is authenticated from the headers, then the raw request bytes are handed to
`wsproto.WSConnection(SERVER)`, which completes the handshake and decodes the client's
masked frames for the rest of the connection. Outgoing frames are encoded in `wire.py`.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from .frames import binary_frames, json_frames
from .registry import ROLES, _eq
from .store import StoreError
from .values import INT_MAX, Invalid, check_ts, check_value, encode_data
from .wire import OP_BINARY, OP_PING, OP_PONG, close_frame, dumps, encode_frame, loads_exact

if TYPE_CHECKING:
    from .app import ReferenceServer

logger = logging.getLogger("iotcommute.server")

STREAM_PATH = "/v1/stream"
PROTOCOL_VERSION = 1
SERVER_NAME = "iotcommute-ref/0.1"
#: records in one `publish` with a `batch`
MAX_PUBLISH_BATCH = 10_000
#: empty fragments in one incoming message
MAX_EMPTY_FRAGMENTS = 1024
#: at most one `progress` per connection per this many seconds
PROGRESS_INTERVAL = 0.1

_rest_module: Any = None


def _rest_handler() -> Callable[..., Any] | None:
    """rest_api.handle if that module exists (it is written separately), else None."""
    global _rest_module
    if _rest_module is None:
        try:
            _rest_module = importlib.import_module("iotcommute.server.rest_api")
        except ImportError:
            _rest_module = False
    if _rest_module is False:
        return None
    handler: Callable[..., Any] = _rest_module.handle
    return handler


class _Reject(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: list[tuple[str, str]] | None = None
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or []


class ServerConnection(asyncio.Protocol):
    """HTTP + WebSocket state of one peer. All methods run on the server's event loop."""

    def __init__(self, server: ReferenceServer) -> None:
        self.server = server
        self.hub = server.hub
        self.cfg = server.config
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.cfg.max_head)
        self._cycle = bytearray()  # raw bytes of the current request, for wsproto
        self._req: h11.Request | None = None
        self._body = bytearray()
        self._busy = False  # a REST request is being handled
        self.ws: WSConnection | None = None
        self.closed = False
        self._close_sent = False
        self._awaiting_close = False
        # identity (after the handshake)
        self.role = ""
        self.device_id: str | None = None  # set for the device role
        self.peer_id = ""  # "from" in commands: device id or user id
        self.fleet: frozenset[str] = frozenset()
        # incoming message assembly
        self._parts: list[Any] = []
        self._size = 0
        self._fragments = 0
        # subscription / cursor
        self.cursor: int | None = None
        self.devices: set[str] = set()
        self.binary = False
        self._pump: asyncio.Task[None] | None = None
        self._kick: asyncio.Future[None] | None = None
        self.paused = False
        self._resumed: asyncio.Event = asyncio.Event()
        self._resumed.set()
        self._stuck: asyncio.TimerHandle | None = None
        self._reading_paused = False
        self._backlog = False  # wsproto holds events we did not handle yet
        self._skipped = False  # the cursor passed records it did not send since the last report
        self._progress_at = 0.0
        self.token: str | None = None  # the access token this stream was opened with
        self._expiry: asyncio.TimerHandle | None = None
        self.sent_ticks = 0
        self.max_buffer_seen = 0
        self.group_member: Any = None  # [jetstream hook] a consumer-group membership
        # keep-alive and rate limit
        self._last_rx = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._tokens = float(self.cfg.max_burst)
        self._tokens_at = time.monotonic()

    # -- asyncio.Protocol --------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast, not a check.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=self.cfg.write_high, low=self.cfg.write_low)
        pn = transport.get_extra_info("peername")
        self.peer = f"{pn[0]}:{pn[1]}" if isinstance(pn, tuple) else str(pn)
        self.hub.connections.add(self)
        self._timer = self.loop.call_later(self.cfg.handshake_timeout, self._handshake_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.hub.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        for h in (self._stuck, self._expiry):
            if h is not None:
                h.cancel()
        if self.token is not None:
            self.hub.stream_closed(self.token, self)
        if self.device_id is not None and self.role == "device":
            self.hub.device_disconnected(self.device_id, self)
        if self._pump is not None:
            self._pump.cancel()
        if self.group_member is not None:  # [jetstream hook]
            from .groups import handle_lost

            handle_lost(self)
        self._resumed.set()
        self._kick_pump()
        logger.debug("%s: connection lost (%s)", self.peer, exc)

    def pause_writing(self) -> None:
        """The peer is not reading what we send: stop reading what it sends (its pings,
        invalid messages and requests would each add an answer to the buffer) and drop it
        if this lasts for the stuck timeout."""
        self.paused = True
        self._resumed.clear()
        self._pause_reading()
        if self._stuck is None:
            self._stuck = self.loop.call_later(self.cfg.stuck_timeout, self._stuck_out)

    def resume_writing(self) -> None:
        self.paused = False
        self._resumed.set()
        if self._stuck is not None:
            self._stuck.cancel()
            self._stuck = None
        if self._backlog and self.ws is not None and not self.closed:
            self._backlog = False
            self._ws_events()
        if not self._busy and not self.paused:
            self._resume_reading()

    def _pause_reading(self) -> None:
        t = self.transport
        if not self._reading_paused and t is not None and not t.is_closing():
            self._reading_paused = True
            t.pause_reading()

    def _resume_reading(self) -> None:
        t = self.transport
        if self._reading_paused and t is not None and not t.is_closing():
            self._reading_paused = False
            t.resume_reading()
            # Reading resumed: silence while paused was ours, not the peer's.
            self._last_rx = time.monotonic()

    def _stuck_out(self) -> None:
        self._stuck = None
        if self.paused and not self.closed:
            logger.warning(
                "%s: not reading for %.0f s, dropping it", self.peer, self.cfg.stuck_timeout
            )
            self.abort()

    def data_received(self, data: bytes) -> None:
        self._last_rx = time.monotonic()
        if self.ws is not None:
            self._ws_data(data)
        else:
            self._http_data(data)

    def eof_received(self) -> bool | None:
        if self.ws is None:
            self.h11.receive_data(b"")
        return None  # close our side too

    # -- writing helpers ---------------------------------------------------
    def write(self, data: bytes) -> None:
        t = self.transport
        if t is not None and not self.closed and not t.is_closing():
            t.write(data)

    def send_json(self, obj: Any) -> None:
        payload = dumps(obj)
        self.write(encode_frame(0x1, payload))

    def send_error(self, code: str, message: str, msg_id: Any = None) -> None:
        err: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if msg_id is not None:
            err["id"] = msg_id
        self.send_json(err)

    def close(self, code: int = 1000, reason: str = "", *, wait: bool = False) -> None:
        """Send a close frame (once), then close the TCP connection.

        With `wait` (a close we start: shutdown, keepalive), the peer gets close_timeout
        to answer with its own close frame before we hang up, so a peer that is still
        sending does not get a reset that could destroy our close frame in its buffers.
        Otherwise (an echo of the peer's close, or failing the connection) we close now.
        """
        if self.closed or self.transport is None:
            return
        self.closed = True  # no more application messages either way
        if self.ws is not None and not self._close_sent:
            self._close_sent = True
            self.transport.write(close_frame(code, reason))
            if wait:
                self._awaiting_close = True
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = self.loop.call_later(self.cfg.close_timeout, self.abort)
                return
        self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _handshake_timeout(self) -> None:
        if self.ws is None and not self._busy:
            logger.info("%s: no request in time, closing", self.peer)
            self.abort()

    # -- HTTP side ---------------------------------------------------------
    def _http_data(self, data: bytes) -> None:
        self._cycle += data
        self.h11.receive_data(data)
        self._http_events()

    def _http_events(self) -> None:
        while not self.closed and not self._busy and self.ws is None:
            try:
                ev = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint or 400
                self._raw_error(status, "bad request")
                return
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                if ev is h11.PAUSED and self._req is not None and self._is_upgrade(self._req):
                    return  # handled when the Request arrived
                return
            if isinstance(ev, h11.Request):
                self._req = ev
                self._body = bytearray()
                if self._is_upgrade(ev):
                    self._upgrade(ev)
                    return
            elif isinstance(ev, h11.Data):
                self._body += ev.data
                if len(self._body) > self.cfg.max_body:
                    self._raw_error(413, "request body too large")
                    return
            elif isinstance(ev, h11.EndOfMessage):
                req = self._req
                assert req is not None
                self._busy = True
                self._pause_reading()
                self.loop.create_task(self._rest(req, bytes(self._body)))
                return
            elif isinstance(ev, h11.ConnectionClosed):
                self.close()
                return

    @staticmethod
    def _is_upgrade(req: h11.Request) -> bool:
        for name, value in req.headers:
            if name == b"upgrade" and value.lower() == b"websocket":
                return True
        return False

    def _raw_error(self, status: int, message: str) -> None:
        body = dumps({"type": "error", "code": "input", "message": message})
        reason = {
            400: "Bad Request",
            413: "Payload Too Large",
            431: "Request Header Fields Too Large",
        }
        head = (
            f"HTTP/1.1 {status} {reason.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode("latin-1")
        self.write(head + body)
        self.close()

    def _respond(self, status: int, headers: Iterable[tuple[Any, Any]], body: bytes) -> None:
        hs: list[tuple[bytes, bytes]] = []
        for k, v in headers:
            kb = k.encode("latin-1") if isinstance(k, str) else bytes(k)
            vb = v.encode("latin-1") if isinstance(v, str) else bytes(v)
            if kb.lower() not in (b"content-length", b"transfer-encoding"):
                hs.append((kb, vb))
        hs.append((b"content-length", str(len(body)).encode()))
        hs.append((b"server", SERVER_NAME.encode()))
        try:
            out = self.h11.send(h11.Response(status_code=status, headers=hs))
            out += self.h11.send(h11.Data(data=body)) if body else b""
            out += self.h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            logger.exception("%s: could not send HTTP response", self.peer)
            self.abort()
            return
        self.write(out)

    async def _rest(self, req: h11.Request, body: bytes) -> None:
        method = req.method.decode("ascii", "replace")
        target = req.target.decode("latin-1")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in req.headers]
        handler = _rest_handler()
        try:
            if handler is None:
                status, rheaders, rbody = (
                    404,
                    [("Content-Type", "application/json")],
                    dumps({"type": "error", "code": "not_found", "message": "no such endpoint"}),
                )
            else:
                status, rheaders, rbody = await handler(self.hub, method, target, headers, body)
                if isinstance(rheaders, Mapping):
                    rheaders = list(rheaders.items())
                if isinstance(rbody, str):
                    rbody = rbody.encode("utf-8")
        except Exception:
            logger.exception("REST handler failed for %s %s", method, target.split("?")[0])
            status, rheaders, rbody = (
                500,
                [("Content-Type", "application/json")],
                dumps({"type": "error", "code": "server", "message": "internal error"}),
            )
        if self.closed:
            return
        self._respond(int(status), rheaders, bytes(rbody))
        self._busy = False
        if not self.paused:
            self._resume_reading()
        # A keep-alive connection gets handshake_timeout of idleness before the next request.
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(self.cfg.handshake_timeout, self._handshake_timeout)
        if self.h11.our_state is h11.MUST_CLOSE or self.h11.their_state is h11.MUST_CLOSE:
            self.close()
            return
        try:
            self.h11.start_next_cycle()
        except h11.LocalProtocolError:
            self.close()
            return
        self._cycle = bytearray(self.h11.trailing_data[0])
        self._http_events()

    # -- handshake ---------------------------------------------------------
    def _upgrade(self, req: h11.Request) -> None:
        headers: dict[str, str] = {}
        for k, v in req.headers:
            headers[k.decode("latin-1")] = v.decode("latin-1")
        try:
            path = req.target.decode("latin-1").split("?", 1)[0]
            if path != STREAM_PATH:
                raise _Reject(404, "not_found", f"no WebSocket endpoint here; use {STREAM_PATH}")
            self._authenticate(headers)
        except _Reject as rej:
            logger.info("%s: handshake refused: %d %s", self.peer, rej.status, rej.code)
            body = dumps({"type": "error", "code": rej.code, "message": rej.message})
            hs = [("Content-Type", "application/json"), ("Connection", "close"), *rej.headers]
            self._respond(rej.status, hs, body)
            self.close()
            return
        ws = WSConnection(ConnectionType.SERVER)
        try:
            ws.receive_data(bytes(self._cycle))
            first = next(ws.events(), None)
        except Exception as exc:  # wsproto refuses e.g. a missing Sec-WebSocket-Key
            logger.info("%s: invalid upgrade request: %s", self.peer, type(exc).__name__)
            first = None
        self._cycle = bytearray()
        if not isinstance(first, Request):
            self._raw_error(400, "invalid WebSocket upgrade request")
            return
        extra = [(b"x-protocol-version", b"1"), (b"server", SERVER_NAME.encode())]
        self.write(ws.send(AcceptConnection(extra_headers=extra)))
        self.ws = ws
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(self.cfg.ping_interval, self._keepalive)
        if self.role == "device" and self.device_id is not None:
            self.hub.device_connected(self.device_id, self)
        logger.info("%s: %s %s connected", self.peer, self.role, self.peer_id)
        self.send_json(
            {
                "type": "welcome",
                "version": PROTOCOL_VERSION,
                "role": self.role,
                "device": self.device_id,
                "user": self._owner,
                "position": self.hub.log.last_position,
                "server": SERVER_NAME,
                "log": self.hub.log.log_id,
                "first": self.hub.log.first_position,
            }
        )
        if self.token is not None:
            self.hub.stream_opened(self.token, self)
            left = self.hub.registry.sessions.remaining(self.token)
            if left is not None:
                self._expiry = self.loop.call_later(max(0.0, left), self._session_expired)
        self._ws_events()  # frames that arrived together with the request

    def _authenticate(self, headers: dict[str, str]) -> None:
        if headers.get("sec-websocket-version", "13").strip() != "13":
            raise _Reject(
                426, "version", "unsupported WebSocket version", [("Sec-WebSocket-Version", "13")]
            )
        version = headers.get("x-protocol-version", str(PROTOCOL_VERSION)).strip()
        if version != str(PROTOCOL_VERSION):
            raise _Reject(
                426,
                "version",
                f"unsupported protocol version; this server speaks {PROTOCOL_VERSION}",
                [("X-Protocol-Version", str(PROTOCOL_VERSION))],
            )
        # Order: 404 (path), 426 (versions), 401 (credentials), 403 (role): a wrong key is
        # reported as such even when the role is wrong too.
        auth = headers.get("authorization", "")
        role = headers.get("x-role", "").strip().lower() or ("client" if auth else "device")
        reg = self.hub.registry
        if auth:
            scheme, _, cred = auth.partition(" ")
            api_key, _, token = cred.strip().partition(":")
            if scheme.lower() != "token" or not api_key or not token:
                raise _Reject(401, "token", "invalid credentials")
            session = reg.sessions.get(token)
            if session is None or not _eq(session.api_key, api_key):
                raise _Reject(401, "token", "invalid or expired access token")
            if role not in ROLES:
                raise _Reject(403, "permission", "unknown role; use device or client")
            if role != "client":
                raise _Reject(403, "permission", "an access token may only connect as a client")
            self.role = "client"
            self.token = token
            self.peer_id = session.user_id
            self._owner = session.user_id
        else:
            dev_id = headers.get("x-device-id", "")
            key = headers.get("x-device-key", "")
            dev = reg.check_device(dev_id, key) if dev_id and key else None
            if dev is None:
                raise _Reject(401, "token", "invalid device id or key")
            if role not in ROLES:
                raise _Reject(403, "permission", "unknown role; use device or client")
            if role not in dev.roles:
                raise _Reject(403, "permission", f"this device may not connect as {role}")
            self.role = role
            self.device_id = dev.id
            self.peer_id = dev.id
            self._owner = dev.owner
        self.fleet = reg.fleet_ids(self._owner)

    _owner: str = ""

    # -- WebSocket side ----------------------------------------------------
    def _ws_data(self, data: bytes) -> None:
        ws = self.ws
        assert ws is not None
        ws.receive_data(data)
        self._ws_events()

    def _ws_events(self) -> None:
        ws = self.ws
        assert ws is not None
        if self._awaiting_close:
            # We sent a close frame; only the peer's answer matters now.
            for ev in ws.events():
                if isinstance(ev, CloseConnection) and self.transport is not None:
                    self.transport.close()
                    return
            return
        for ev in ws.events():
            if self.closed:
                return
            if self.paused:
                # Our answers are piling up: leave the rest of what was read in wsproto's
                # buffer (at most one read) until the peer drains ours (resume_writing).
                self._backlog = True
                self._handle(ev)
                return
            self._handle(ev)

    def _handle(self, ev: Any) -> None:
        """One wsproto event of an upgraded connection."""
        if isinstance(ev, (TextMessage, BytesMessage)):
            self._size += len(ev.data)
            if self._size > self.cfg.max_size:
                logger.info("%s: message over %d bytes, closing 1009", self.peer, self.cfg.max_size)
                self.close(1009, "message too big")
                return
            if ev.data:
                self._add_part(ev.data)
            elif not ev.message_finished:
                # An empty fragment carries nothing; a stream of them only costs CPU,
                # but a peer that sends them is not a real client.
                self._fragments += 1
                if self._fragments > MAX_EMPTY_FRAGMENTS:
                    logger.info("%s: too many empty fragments, closing 1009", self.peer)
                    self.close(1009, "too many empty fragments")
                    return
            if not ev.message_finished:
                return
            parts, self._parts, self._size = self._parts, [], 0
            self._fragments = 0
            if isinstance(ev, TextMessage):
                self._on_text(_join_text(parts))
            else:
                self._on_binary(_join_bytes(parts))
        elif isinstance(ev, Ping):
            self.write(encode_frame(OP_PONG, bytes(ev.payload)))
        elif isinstance(ev, Pong):
            pass  # _last_rx already updated
        elif isinstance(ev, CloseConnection):
            ws = self.ws
            if ws is not None and ws.state is ConnectionState.REMOTE_CLOSING:
                # The peer closed: echo its code (RFC 6455 5.5.1) unless we already sent one.
                code = ev.code if ev.code not in (1005, 1006, 1015) else 1000
                self.close(code)
            else:
                # wsproto reports a frame it could not parse this way; we fail the connection.
                logger.info("%s: protocol error (%s): closing %d", self.peer, ev.reason, ev.code)
                self.close(ev.code, "protocol error")
            return

    def _add_part(self, data: str | bytes | bytearray) -> None:
        """Collect a fragment; past a few, into one growing buffer (memory ~ message size,
        whatever the number of fragments)."""
        parts = self._parts
        accumulating = len(parts) == 1 and isinstance(parts[0], (io.StringIO, bytearray))
        if not accumulating and len(parts) < 8:
            parts.append(data)
            return
        if not accumulating:
            acc: io.StringIO | bytearray
            if isinstance(data, str):
                acc = io.StringIO()
                acc.write("".join(parts))
            else:
                acc = bytearray(b"".join(parts))
            parts[:] = [acc]
        acc = parts[0]
        if isinstance(acc, io.StringIO):
            acc.write(str(data))
        else:
            acc.extend(data.encode() if isinstance(data, str) else data)

    def _rate_ok(self) -> bool:
        if self.cfg.max_rate <= 0:
            return True
        now = time.monotonic()
        self._tokens = min(
            float(self.cfg.max_burst), self._tokens + (now - self._tokens_at) * self.cfg.max_rate
        )
        self._tokens_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _on_text(self, text: str) -> None:
        try:
            msg = loads_exact(text)
        except ValueError:
            self.send_error("input", "message is not valid JSON")
            return
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            self.send_error("input", 'a message must be a JSON object with a "type"')
            return
        msg_id = msg.get("id")
        if not self._rate_ok():
            self.send_error("rate", "too many messages; slow down", msg_id)
            return
        handler = _HANDLERS.get(msg["type"])
        if handler is None:
            self.send_error("input", "unknown message type", msg_id)
            return
        try:
            handler(self, msg)
        except Exception:
            logger.exception("%s: handler for %s failed", self.peer, msg["type"])
            self.send_error("server", "internal error", msg_id)

    def _on_binary(self, buf: bytes) -> None:
        if self.role != "device" or self.device_id is None:
            self.send_error("permission", "only the device role may publish tick batches")
            return
        if not self._rate_ok():
            self.send_error("rate", "too many messages; slow down")
            return
        try:
            payload = importlib.import_module("iotcommute.payload")
        except ImportError:
            self.send_error("input", "binary tick batches are not supported by this server build")
            return
        try:
            ticks = payload.decode_batch(buf)
        except Exception as exc:  # DecodeError, or anything a hostile batch provokes
            self.send_error("input", f"invalid tick batch: {type(exc).__name__}")
            return
        items: list[tuple[float, dict[str, Any], bytes | None]] = []
        now = time.time()
        try:
            for t in ticks:
                data = t.get("data")
                if not isinstance(data, dict):
                    raise Invalid("a tick without data")
                check_value(data)  # NaN or infinity in a batch: the whole batch is refused
                ts = t.get("ts")
                ok_ts = isinstance(ts, (int, float)) and math.isfinite(ts) and ts > 0
                items.append((float(ts) if ok_ts else now, data, None))
        except Invalid as exc:
            self.send_error("input", f"invalid tick batch: {exc}")
            return
        if not items:
            return
        try:
            self.hub.log.append_many(self.device_id, items)
        except StoreError:
            self.send_error("unavailable", "the log store is unavailable; retry later")

    # -- message handlers --------------------------------------------------
    def _h_publish(self, msg: dict[str, Any]) -> None:
        msg_id = msg.get("id")
        if self.role != "device" or self.device_id is None:
            self.send_error("permission", "only the device role may publish", msg_id)
            return
        batch = msg.get("batch")
        try:
            if msg_id is not None and (
                isinstance(msg_id, bool)
                or not isinstance(msg_id, (str, int))
                or (isinstance(msg_id, int) and abs(msg_id) > INT_MAX)
            ):
                raise Invalid('"id" must be a string or a 64-bit integer')
            now = time.time()
            max_size = self.cfg.max_size
            items: list[tuple[float, Any, bytes | None]] = []
            if batch is None:
                ts = check_ts(msg.get("ts"))
                items.append((now if ts is None else ts, msg.get("data"), None))
            else:
                if "data" in msg:
                    raise Invalid('a publish has either "data" or "batch"')
                if not isinstance(batch, list) or not batch:
                    raise Invalid('"batch" must be a non-empty list of {"ts", "data"} objects')
                if len(batch) > MAX_PUBLISH_BATCH:
                    raise Invalid(f'"batch" may hold at most {MAX_PUBLISH_BATCH} records')
                for t in batch:
                    if not isinstance(t, dict):
                        raise Invalid('"batch" must be a non-empty list of {"ts", "data"} objects')
                    ts = check_ts(t.get("ts"))
                    items.append((now if ts is None else ts, t.get("data"), None))
            checked = [(ts, data, encode_data(data, max_size)) for ts, data, _ in items]
        except Invalid as exc:
            self.send_error("input", str(exc), msg_id)
            return
        log = self.hub.log
        pid = None if msg_id is None else dumps(msg_id).decode()
        if pid is not None:
            found = log.find_publish(self.device_id, pid)
            if found is not None:  # a re-sent publish: stored once, answered again
                self._answer_publish(msg_id, found, batch is not None, duplicate=True)
                return
        if getattr(log, "shared", False):  # [jetstream hook, issue 15] engine-made positions
            from .cluster import publish_shared

            publish_shared(self, self.device_id, checked, pid, msg_id, batch is not None)
            return
        try:
            first_last = log.append_many(self.device_id, checked, pid)
        except StoreError:
            self.send_error("unavailable", "the log store is unavailable; retry later", msg_id)
            return
        self._answer_publish(msg_id, first_last, batch is not None, duplicate=False)

    def _answer_publish(
        self, msg_id: Any, first_last: tuple[int, int], batch: bool, *, duplicate: bool
    ) -> None:
        """`published` once the records are durable (durable before visible); `error`
        `unavailable` if the store failed first. Publishes without an id get no answer
        unless the store failed."""
        first, last = first_last

        def done(err: BaseException | None) -> None:
            if self.closed:
                return
            if err is not None:
                self.send_error(
                    "unavailable", "the log store failed; not stored, retry later", msg_id
                )
            elif msg_id is not None:
                out: dict[str, Any] = {"type": "published", "id": msg_id, "position": last}
                if batch:
                    out["first"] = first
                if duplicate:
                    out["duplicate"] = True
                self.send_json(out)

        self.hub.log.when_durable(last, done)

    def _parse_devices(self, msg: dict[str, Any]) -> set[str] | str | None:
        """The requested device set, "*" or None after sending an error. Shape errors
        (`input`) are checked by the caller first; here: unknown devices (`not_found`),
        then devices of another fleet (`permission`)."""
        devices = msg.get("devices", "*")
        msg_id = msg.get("id")
        if devices == "*":
            return "*"
        wanted = set(devices)
        foreign = wanted - self.fleet
        if foreign:
            reg = self.hub.registry
            if any(reg.device(d) is None for d in foreign):
                self.send_error("not_found", "unknown device in subscription", msg_id)
            else:
                self.send_error("permission", "device outside your fleet", msg_id)
            return None
        return wanted

    def _devices_shape_ok(self, msg: dict[str, Any]) -> bool:
        devices = msg.get("devices", "*")
        if devices == "*":
            return True
        if (
            not isinstance(devices, list)
            or not devices
            or not all(isinstance(d, str) for d in devices)
        ):
            self.send_error(
                "input", '"devices" must be "*" or a non-empty list of device ids', msg.get("id")
            )
            return False
        return True

    def _h_subscribe(self, msg: dict[str, Any]) -> None:
        # Validation order: devices (shape), from, format (all `input`), then unknown
        # devices (`not_found`), then foreign devices (`permission`); nothing changes on error.
        msg_id = msg.get("id")
        if "group" in msg or "partitions" in msg:  # [jetstream hook, issue 15]
            from . import groups

            if "group" in msg:
                groups.handle_subscribe(self, msg)
                return
            n = self.server.partitions
            devs = groups.partition_devices(self, msg["partitions"], n)
            if devs is None:
                self.send_error("input", f'"partitions": a list of integers 0..{n - 1}', msg_id)
                return
            if not devs:
                self.send_error("input", "none of your devices is in these partitions", msg_id)
                return
            msg = {**msg, "devices": devs}
        if not self._devices_shape_ok(msg):
            return
        frm = msg.get("from")
        if frm is not None and (
            isinstance(frm, bool) or not isinstance(frm, int) or not 0 <= frm <= INT_MAX
        ):
            self.send_error("input", '"from" must be null or a position >= 0', msg_id)
            return
        fmt = msg.get("format", "json")
        if fmt not in ("json", "binary"):
            self.send_error("input", '"format" must be "json" or "binary"', msg_id)
            return
        if fmt == "binary":
            try:
                importlib.import_module("iotcommute.payload")
            except ImportError:
                self.send_error("input", "binary format not supported by this server build", msg_id)
                return
        devices = self._parse_devices(msg)
        if devices is None:
            return
        log = self.hub.log
        had_devices = bool(self.devices)
        self.devices |= set(self.fleet) if isinstance(devices, str) else devices
        self.binary = fmt == "binary"
        last = log.last_position
        if frm is not None:
            # A new cursor for the whole connection. A position beyond the log (a server
            # that lost its in-memory log) starts at the tail.
            self.cursor = min(frm, last)
            self._skipped = False
        elif self.cursor is None or not had_devices:
            # "from now": also after an unsubscribe of everything, whose cursor stood still.
            self.cursor = last
            self._skipped = False
        self.send_json(
            {
                "type": "subscribed",
                "id": msg_id,
                "devices": "*" if devices == "*" else sorted(devices),
                "position": last,
                "format": fmt,
            }
        )
        if self._pump is None:
            self._pump = self.loop.create_task(self._run_pump())
        self._kick_pump()

    def _h_unsubscribe(self, msg: dict[str, Any]) -> None:
        if not self._devices_shape_ok(msg):
            return
        devices = self._parse_devices(msg)
        if devices is None:
            return
        removed = set(self.devices) if isinstance(devices, str) else devices & self.devices
        self.devices -= removed
        self.send_json(
            {
                "type": "unsubscribed",
                "id": msg.get("id"),
                "devices": "*" if devices == "*" else sorted(devices),
            }
        )

    def _h_command(self, msg: dict[str, Any]) -> None:
        cmd_id = msg.get("id")
        if self.role != "client":
            self.send_error("permission", "only the client role may send commands", cmd_id)
            return
        if (
            isinstance(cmd_id, bool)
            or not isinstance(cmd_id, (str, int))
            or (isinstance(cmd_id, int) and abs(cmd_id) > INT_MAX)
        ):
            self.send_error("input", 'a command needs an "id" (string or integer)', cmd_id)
            return
        device = msg.get("device")
        if not isinstance(device, str):
            self.send_error("input", 'a command needs a "device"', cmd_id)
            return
        data = msg.get("data", {})
        try:
            check_value(data)
        except Invalid as exc:
            self.send_error("input", f'"data": {exc}', cmd_id)
            return
        if device not in self.fleet:
            code = "not_found" if self.hub.registry.device(device) is None else "permission"
            self.send_error(code, "no such device in your fleet", cmd_id)
            return
        try:
            self.hub.route_command(device, cmd_id, data, self.peer_id, self._ack_back, origin=self)
        except KeyError:  # (a LookupError too: test it first)
            self.send_error(
                "input", "a command with this id is already pending on this connection", cmd_id
            )
        except LookupError:
            self.send_json({"type": "ack", "id": cmd_id, "ok": False, "error": "device offline"})

    def _session_expired(self) -> None:
        self._expiry = None
        if not self.closed:
            logger.info("%s: session expired, closing the stream", self.peer)
            self.close(1008, "session expired", wait=True)

    def _ack_back(self, ack: dict[str, Any]) -> None:
        if not self.closed:
            self.send_json(ack)

    def _h_commit(self, msg: dict[str, Any]) -> None:  # [jetstream hook, issue 15]
        from .groups import handle_commit

        handle_commit(self, msg)

    def _h_ack(self, msg: dict[str, Any]) -> None:
        if self.role != "device" or self.device_id is None:
            self.send_error(
                "permission", "only the device role may acknowledge commands", msg.get("id")
            )
            return
        if not self.hub.deliver_ack(self.device_id, msg):
            logger.debug("%s: ack for unknown or expired command", self.peer)

    # -- the cursor --------------------------------------------------------
    def _kick_pump(self) -> None:
        k = self._kick
        if k is not None and not k.done():
            k.set_result(None)

    async def _run_pump(self) -> None:
        try:
            await self._pump_loop()
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("%s: cursor failed", self.peer)
            self.close(1011, "internal error")

    async def _pump_loop(self) -> None:
        """Stream log records to this peer, never faster than its socket drains."""
        log = self.hub.log
        cfg = self.cfg
        transport = self.transport
        assert transport is not None
        payload: Any = None
        while not self.closed:
            if self.paused:
                await self._resumed.wait()  # the stuck timer drops a peer that never reads
                continue
            cursor = self.cursor
            if cursor is None or not self.devices:
                await self._wait_kick(None)
                continue
            # Every device of the registry: skip the per-record filter.
            devices = None if len(self.devices) == len(self.hub.registry) else self.devices
            if cursor < log.first_position - 1:
                gap = log.gap(cursor, devices)
                if gap is not None:
                    # Only when a subscribed device lost records after the cursor.
                    self.send_json({"type": "gap", "from": gap[0], "to": gap[1], "missed": gap[2]})
                    self._skipped = False
                else:
                    self._skipped = True
                cursor = self.cursor = log.first_position - 1
            blk = log.block_after(cursor)
            if blk is not None and (devices is None or blk.devices <= devices):
                # A bulk-appended block (the firehose): its frames come pre-encoded, in
                # writes of about write_high / 4 (~256-byte ticks), so the buffer still
                # exceeds write_high by at most one write.
                a = max(cursor + 1, blk.start)
                b = min(blk.end, a + max(cfg.write_batch, cfg.write_high // 1024))
                out: Any = blk.binary_frames(a, b) if self.binary else (blk.json_frames(a, b),)
                if out is not None and out[0] is not None:
                    self.cursor = b - 1
                    self.sent_ticks += b - a
                    self._skipped = False
                    transport.writelines(out)
                    if cfg.track_buffer:
                        size = transport.get_write_buffer_size()
                        if size > self.max_buffer_seen:
                            self.max_buffer_seen = size
                    await asyncio.sleep(0)
                    continue
            recs, last = log.scan(cursor, devices, cfg.write_batch)
            if not recs:
                if last != cursor:
                    self.cursor = last
                    self._skipped = True
                    continue
                refill = self.hub.refill
                if refill is not None and log.accepts_blocks:
                    refill()
                    continue
                if self._skipped:
                    wait = self._progress_at + PROGRESS_INTERVAL - time.monotonic()
                    if wait <= 0:
                        self._skipped = False
                        self._progress_at = time.monotonic()
                        self.send_json({"type": "progress", "position": cursor})
                        continue
                    await self._wait_kick(log, wait)
                    continue
                if refill is not None:
                    refill()
                await self._wait_kick(log)
                continue
            if self.binary:
                if payload is None:
                    payload = importlib.import_module("iotcommute.payload")
                frames = []
                fast = self.hub.binary_batch
                for i in range(0, len(recs), 100):
                    chunk = recs[i : i + 100]
                    pre = fast(chunk) if fast is not None else None
                    if pre is not None:
                        frames.append(encode_frame(OP_BINARY, pre))
                    else:
                        frames += binary_frames(payload, chunk)
            else:
                try:
                    frames = [r.frame() for r in recs]
                except Exception:
                    frames = json_frames(recs)
            self.cursor = last
            self._skipped = last != recs[-1].position
            self.sent_ticks += len(recs)
            transport.writelines(frames)
            if cfg.track_buffer:
                size = transport.get_write_buffer_size()
                if size > self.max_buffer_seen:
                    self.max_buffer_seen = size
            # Let other peers and the reader side run between batches.
            await asyncio.sleep(0)

    async def _wait_kick(self, log: Any, timeout: float | None = None) -> None:
        k = self._kick = self.loop.create_future()
        if log is None:
            await k
            return
        tail = log.tail_future()
        await asyncio.wait((k, tail), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not k.done():
            k.cancel()

    # -- keep-alive ----------------------------------------------------------
    def _keepalive(self) -> None:
        if self.closed:
            return
        idle = time.monotonic() - self._last_rx
        # While we do not read (the peer's buffer is full: the stuck timer decides), its
        # silence is ours, not the peer's.
        if idle > self.cfg.ping_interval + self.cfg.ping_timeout and not self._reading_paused:
            logger.info("%s: no data for %.0f s, closing", self.peer, idle)
            self.close(1011, "keepalive timeout", wait=True)
            return
        self.write(encode_frame(OP_PING, str(int(time.time())).encode()))
        self._timer = self.loop.call_later(self.cfg.ping_interval, self._keepalive)

    def __repr__(self) -> str:
        return f"ServerConnection({self.peer}, role={self.role!r}, id={self.peer_id!r})"


def _join_text(parts: list[Any]) -> str:
    if len(parts) == 1:
        p = parts[0]
        return p.getvalue() if isinstance(p, io.StringIO) else str(p)
    return "".join(parts)


def _join_bytes(parts: list[Any]) -> bytes:
    if len(parts) == 1:
        return bytes(parts[0])
    return b"".join(parts)


_HANDLERS: dict[str, Callable[[ServerConnection, dict[str, Any]], None]] = {
    "publish": ServerConnection._h_publish,
    "subscribe": ServerConnection._h_subscribe,
    "unsubscribe": ServerConnection._h_unsubscribe,
    "command": ServerConnection._h_command,
    "ack": ServerConnection._h_ack,
    "commit": ServerConnection._h_commit,  # [jetstream hook]
}
