"""Sans-IO WebSocket client: bytes in, events out; no sockets, threads, clocks or asyncio.

The HTTP upgrade runs on wsproto's handshake machinery (``H11Handshake`` over h11), which
checks Accept/Upgrade/Connection and negotiates permessage-deflate. After the 101 the
bytes go to our own frame reader (compiled when built, see ``iotcommute.protocol.frames``), not to
wsproto's: ours bounds message size, fragments and inflation and builds the events list
without a Python loop per message.

    proto = ClientProtocol("127.0.0.1:8765", "/v1/stream")
    proto.send_request(); sock.send(proto.data_to_send())
    proto.receive_data(sock.recv(65536)); for ev in proto.events_received(): ...
"""

from __future__ import annotations

import json
import logging
import re
import zlib
from collections.abc import Iterable, Sequence

from wsproto import ConnectionType
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.extensions import PerMessageDeflate
from wsproto.handshake import H11Handshake
from wsproto.utilities import ProtocolError as _WsprotoError

from ..exceptions import (
    SENSITIVE_HEADERS,
    ConnectionClosed,
    InputError,
    InvalidHandshake,
    InvalidStatus,
    IotCommuteError,
    NotConnectedError,
    PermissionDenied,
    ProtocolError,
    RedirectError,
    TokenError,
    VersionError,
)
from .events import EOF, Accepted, CloseReceived, Failed, State
from .frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    close_code_valid,
    encode_frame,
)

__all__ = ["ClientProtocol", "State"]

logger = logging.getLogger("iotcommute.protocol")

#: Bytes of a rejection body kept for the error message (the rest is read and dropped).
MAX_REJECTION_BODY = 64 * 1024
MAX_RESPONSE_HEAD = 64 * 1024
_DEFLATE_TAIL = b"\x00\x00\xff\xff"

HeaderList = Sequence[tuple[str | bytes, str | bytes]]


def _hbytes(v: str | bytes) -> bytes:
    return v if isinstance(v, bytes) else v.encode("utf-8")


def _redacted(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    out = []
    for k, v in headers:
        name = k.decode("latin-1").lower()
        out.append((name, "***" if name in SENSITIVE_HEADERS else v.decode("latin-1")))
    return out


class _StrictDeflate(PerMessageDeflate):
    """permessage-deflate that fails on a response we did not offer (RFC 7692 7.1).

    wsproto ignores unknown parameters and lets int() errors escape; a client must
    instead fail the connection, so every parameter is checked before wsproto applies it.
    """

    def finalize(self, offer: str) -> None:
        if self.enabled():
            raise InvalidHandshake("permessage-deflate accepted twice")
        seen: set[str] = set()
        for param in offer.split(";")[1:]:
            name, eq, value = param.strip().partition("=")
            name, value = name.strip(), value.strip().strip('"')
            if name in seen:
                raise InvalidHandshake(f"duplicate permessage-deflate parameter {name[:40]!r}")
            seen.add(name)
            if name in ("server_no_context_takeover", "client_no_context_takeover"):
                if eq:
                    raise InvalidHandshake(f"permessage-deflate {name} takes no value")
            elif name in ("server_max_window_bits", "client_max_window_bits"):
                offered = (
                    self.server_max_window_bits if name[0] == "s" else self.client_max_window_bits
                )
                if not (value.isdigit() and 8 <= int(value) <= offered):
                    raise InvalidHandshake(f"invalid permessage-deflate {name}={value[:20]!r}")
            else:
                raise InvalidHandshake(f"unknown permessage-deflate parameter {name[:40]!r}")
        if self.server_no_context_takeover and "server_no_context_takeover" not in seen:
            raise InvalidHandshake("server ignored server_no_context_takeover")
        super().finalize(offer)


class ClientProtocol:
    """Client side of one WebSocket connection (RFC 6455, RFC 7692), sans-IO.

    See docs/design.md "Core (sans-IO) contract". Extra keyword arguments beyond the
    contract tune the permessage-deflate offer (window bits, no-context-takeover) and
    outgoing compression: messages shorter than ``compress_threshold`` bytes go out
    uncompressed (RFC 7692 lets each message choose; tiny ones only lose by deflating).
    """

    def __init__(
        self,
        host: str,
        path: str = "/",
        *,
        extra_headers: HeaderList = (),
        subprotocols: Sequence[str] = (),
        compression: bool = True,
        max_size: int = 4 * 2**20,
        max_fragments: int = 1024,
        client_max_window_bits: int = 15,
        server_max_window_bits: int = 15,
        client_no_context_takeover: bool = False,
        server_no_context_takeover: bool = False,
        compress_threshold: int = 64,
        compress_level: int = 6,
    ) -> None:
        self.host = host
        self.path = path
        self.extra_headers = [(_hbytes(k), _hbytes(v)) for k, v in extra_headers]
        self.subprotocols = list(subprotocols)
        self.compression = compression
        self.max_size = max_size
        self.max_fragments = max_fragments
        self.compress_threshold = compress_threshold
        self.compress_level = compress_level
        self._pmd_offer = (
            _StrictDeflate(
                client_no_context_takeover=client_no_context_takeover,
                client_max_window_bits=client_max_window_bits,
                server_no_context_takeover=server_no_context_takeover,
                server_max_window_bits=server_max_window_bits,
            )
            if compression
            else None
        )
        self.state = State.CONNECTING
        self.handshake_response: Accepted | None = None
        #: Close frame the server sent (code, reason), once received.
        self.close_received: CloseReceived | None = None
        #: Close code we sent, once sent.
        self.close_sent: int | None = None
        #: Terminal failure, once failed.
        self.failure: IotCommuteError | None = None
        self._hs = H11Handshake(ConnectionType.CLIENT)
        self._out: list[bytes] = []
        self._events: list[object] = []
        self._reader: FrameReader | None = None
        self._request_sent = False
        self._reject_status = 0
        self._reject_headers: list[tuple[bytes, bytes]] = []
        self._reject_body = bytearray()
        self._head = bytearray()  # the response head, until its blank line arrived
        # Outgoing compression (set when permessage-deflate is negotiated).
        self._deflate = False
        self._compressor: zlib._Compress | None = None
        self._c_wbits = 15
        self._c_no_takeover = False
        # get_buffer/buffer_updated before the frame reader exists (the handshake), and
        # whether the last view handed out was the reader's.
        self._hs_view: memoryview | None = None
        self._view_from_reader = False

    def __repr__(self) -> str:
        # Deliberately no headers: they carry device keys and tokens.
        return f"<ClientProtocol {self.host}{self.path} {self.state.name}>"

    # -- output -------------------------------------------------------------------------

    def send_request(self) -> None:
        """Queue the HTTP upgrade request."""
        if self._request_sent:
            raise NotConnectedError("the upgrade request was already sent")
        self._request_sent = True
        try:
            data = self._hs.send(
                Request(
                    host=self.host,
                    target=self.path,
                    extensions=[self._pmd_offer] if self._pmd_offer is not None else [],
                    subprotocols=self.subprotocols,
                    extra_headers=self.extra_headers,
                )
            )
        except (_WsprotoError, ValueError, UnicodeError) as exc:
            # Never echo header values: they may hold credentials.
            raise InputError(f"cannot build the upgrade request: {type(exc).__name__}") from None
        self._out.append(data)

    def data_to_send(self) -> bytes:
        """Everything queued since the last call (``b""`` if nothing)."""
        out = self._out
        if not out:
            return b""
        self._out = []
        return out[0] if len(out) == 1 else b"".join(out)

    def _check_open(self) -> None:
        if self.state is not State.OPEN:
            if self.state is State.CONNECTING:
                raise NotConnectedError("the WebSocket handshake has not completed")
            cr = self.close_received
            raise ConnectionClosed(cr.code if cr else 1006, cr.reason if cr else "")

    def _send_message(self, opcode: int, payload: bytes | bytearray | memoryview) -> None:
        if self._deflate and len(payload) >= self.compress_threshold:
            c = self._compressor
            if c is None:
                c = zlib.compressobj(self.compress_level, zlib.DEFLATED, -self._c_wbits)
            data = c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH)
            if data.endswith(_DEFLATE_TAIL):
                data = data[:-4]
            self._compressor = None if self._c_no_takeover else c
            self._out.append(encode_frame(opcode, data, True, True))
        else:
            self._out.append(encode_frame(opcode, payload))

    def send_text(self, text: str) -> None:
        self._check_open()
        self._send_message(OP_TEXT, text.encode("utf-8"))

    def send_binary(self, data: bytes | bytearray | memoryview) -> None:
        self._check_open()
        self._send_message(OP_BINARY, data)

    def send_message(self, opcode: int, payload: bytes | bytearray | memoryview) -> None:
        """A whole message whose payload is already encoded: ``OP_TEXT`` (UTF-8, the
        caller's promise: not checked here) or ``OP_BINARY``; no decode and re-encode."""
        if opcode not in (OP_TEXT, OP_BINARY):
            raise InputError("a message is OP_TEXT or OP_BINARY")
        self._check_open()
        self._send_message(opcode, payload)

    def send_ping(self, payload: bytes = b"") -> None:
        self._check_open()
        if len(payload) > 125:
            raise InputError("ping payload over 125 bytes")
        self._out.append(encode_frame(OP_PING, payload))

    def send_pong(self, payload: bytes = b"") -> None:
        self._check_open()
        if len(payload) > 125:
            raise InputError("pong payload over 125 bytes")
        self._out.append(encode_frame(OP_PONG, payload))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Queue a close frame (state CLOSING). No-op once closing or closed."""
        if self.state is State.CONNECTING:
            self.state = State.CLOSED  # nothing to close at the WebSocket level yet
            return
        if self.state is not State.OPEN:
            return
        if code != 1005 and not close_code_valid(code):
            raise InputError(f"invalid close code {code}")
        payload = b"" if code == 1005 else code.to_bytes(2, "big") + reason.encode("utf-8")
        if len(payload) > 125:
            raise InputError("close reason over 123 bytes")
        self._out.append(encode_frame(OP_CLOSE, payload))
        self.close_sent = code
        self.state = State.CLOSING

    # -- input --------------------------------------------------------------------------

    def events_received(self) -> list[object]:
        """Events since the last call: ``str``/``bytes`` messages and event objects."""
        ev = self._events
        if not ev:
            return []
        self._events = []
        if self._reader is not None:
            self._reader.events = self._events
        return ev

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Writable memory for the next read (``asyncio.BufferedProtocol.get_buffer``): the
        alternative to ``receive_data`` in which, once open, reads land in the frame reader's
        own memory (one copy of each payload byte to the message, none for big binary frames
        read straight into place). Call ``buffer_updated`` with the count read before
        anything else; the view is only valid until then."""
        reader = self._reader
        if reader is not None and self.failure is None:
            self._view_from_reader = True
            return reader.get_buffer(sizehint)
        self._view_from_reader = False
        if self._hs_view is None:
            self._hs_view = memoryview(bytearray(65536))
        return self._hs_view

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were read into the last ``get_buffer`` view: consume them. (EOF is not
        a read: report it with ``receive_data(b"")``, from ``eof_received``.)"""
        if nbytes <= 0:
            return
        reader = self._reader
        if self._view_from_reader:
            self._view_from_reader = False
            if reader is None or self.failure is not None:
                return
            reader.buffer_updated(nbytes)
            if reader.pongs or reader.closed or reader.error is not None:
                self._after_control(reader)
            return
        assert self._hs_view is not None
        self.receive_data(bytes(self._hs_view[:nbytes]))
        if self._reader is not None:
            self._hs_view = None  # open: the reader's memory takes over

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the network; ``b""`` means EOF."""
        if self.failure is not None:
            return
        reader = self._reader
        if reader is None:
            if self.state is State.CLOSED:
                return
            self._receive_handshake(bytes(data))
            return
        if not data:
            self._eof()
            return
        reader.feed_data(data)
        if reader.pongs or reader.closed or reader.error is not None:
            self._after_control(reader)

    def _eof(self) -> None:
        if self.state is not State.CLOSED or self.failure is None:
            self._events.append(EOF())
        self.state = State.CLOSED
        self._reader = None

    def _after_control(self, reader: FrameReader) -> None:
        """Rare path: answer pings, echo a close, fail on a violation."""
        if reader.pongs:
            if self.state is State.OPEN:
                for payload in reader.pongs:
                    self._out.append(encode_frame(OP_PONG, payload))
            reader.pongs = []
        if reader.error is not None:
            self._fail(reader.error)
        elif reader.closed and self.close_received is None:
            self.close_received = CloseReceived(reader.close_code, reader.close_reason)
            if self.state is State.OPEN:
                code = reader.close_code
                payload = b"" if code == 1005 else code.to_bytes(2, "big")
                self._out.append(encode_frame(OP_CLOSE, payload))
                self.close_sent = code
            self.state = State.CLOSED

    def _fail(self, exc: IotCommuteError) -> None:
        logger.debug("connection failed: %s", exc)
        if isinstance(exc, ProtocolError) and self.state is State.OPEN:
            self._out.append(encode_frame(OP_CLOSE, exc.close_code.to_bytes(2, "big")))
            self.close_sent = exc.close_code
        self.failure = exc
        self.state = State.CLOSED
        self._events.append(Failed(exc))

    # -- handshake ----------------------------------------------------------------------

    def _receive_handshake(self, data: bytes) -> None:
        self._handshake_step(data)
        if not data and self._reader is None:
            # EOF during the handshake: Failed (unless already failed) then EOF.
            if self.failure is None:
                if self._reject_status:
                    self._rejected()
                else:
                    self._fail(InvalidHandshake("connection closed before the handshake completed"))
            self._events.append(EOF())
            self.state = State.CLOSED

    def _handshake_step(self, data: bytes) -> None:
        hs = self._hs
        rest = b""
        if data and not self._reject_status:
            # wsproto gets the response head only: what follows it is ours (frames after a 101,
            # a body after a refusal), so no private state of wsproto or h11 is ever read.
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > MAX_RESPONSE_HEAD:
                    self._fail(InvalidHandshake("handshake response head too large"))
                return
            data, rest = bytes(self._head[: end + 4]), bytes(self._head[end + 4 :])
            self._head = bytearray()
        try:
            hs.receive_data(data if data else None)
            for ev in hs.events():
                if isinstance(ev, AcceptConnection):
                    self._accepted(ev)
                    if rest:
                        self.receive_data(rest)
                    return
                if isinstance(ev, RejectConnection):
                    self._reject_status = ev.status_code
                    self._reject_headers = list(ev.headers)
                    if not ev.has_body:
                        self._rejected()
                        return
                    if rest:
                        self._handshake_step(rest)
                        return
                elif isinstance(ev, RejectData):
                    room = MAX_REJECTION_BODY - len(self._reject_body)
                    self._reject_body += ev.data[:room]
                    if ev.body_finished or len(ev.data) > room:
                        self._rejected()
                        return
        except InvalidHandshake as exc:
            self._fail(exc)
        except (_WsprotoError, ValueError) as exc:
            self._fail(InvalidHandshake(f"invalid handshake response: {exc}"))

    def _accepted(self, ev: AcceptConnection) -> None:
        ext_strings: list[str] = []
        deflate = False
        s_bits, s_no_takeover = 15, False
        for ext in ev.extensions:
            if isinstance(ext, PerMessageDeflate) and ext.enabled():
                deflate = True
                s_bits = ext.server_max_window_bits
                s_no_takeover = ext.server_no_context_takeover
                # zlib cannot compress with an 8-bit raw window; 9 is the smallest it does.
                self._c_wbits = max(9, ext.client_max_window_bits)
                self._c_no_takeover = ext.client_no_context_takeover
                params = [f"server_max_window_bits={s_bits}"]
                params.append(f"client_max_window_bits={ext.client_max_window_bits}")
                if s_no_takeover:
                    params.append("server_no_context_takeover")
                if self._c_no_takeover:
                    params.append("client_no_context_takeover")
                ext_strings.append("permessage-deflate; " + "; ".join(params))
        self._deflate = deflate
        self.handshake_response = Accepted(
            _redacted(ev.extra_headers), ev.subprotocol, ext_strings, 101
        )
        self._events.append(self.handshake_response)
        self.state = State.OPEN
        reader = FrameReader(self.max_size, self.max_fragments, deflate, s_bits, s_no_takeover)
        reader.events = self._events
        self._reader = reader

    def _rejected(self) -> None:
        status = self._reject_status
        headers = self._reject_headers
        str_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
        msg = f"server rejected the WebSocket upgrade: {status}"
        reason = _short_reason(bytes(self._reject_body), str_headers)
        if reason:
            msg += f": {reason}"
        exc: InvalidStatus | TokenError | PermissionDenied | VersionError
        if 300 <= status < 400:
            location = next((v for k, v in str_headers if k.lower() == "location"), None)
            exc = RedirectError(msg, location=location, status=status, headers=str_headers)
        else:
            cls: type[InvalidStatus | TokenError | PermissionDenied | VersionError]
            by_status: dict[int, type[TokenError | PermissionDenied | VersionError]] = {
                401: TokenError,
                403: PermissionDenied,
                426: VersionError,
            }
            cls = by_status.get(status, InvalidStatus)
            exc = cls(msg, status=status, headers=str_headers)
        # The raw body stays available to callers (bounded; it may carry a JSON error).
        vars(exc)["body"] = bytes(self._reject_body)
        self._fail(exc)


_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def _short_reason(body: bytes, headers: list[tuple[str, str]]) -> str:
    """One short line from a rejection's body for the error message: a JSON error's
    message, an HTML page's title, or a text body's first line (never a whole page; the
    raw body stays on the exception as ``.body``)."""
    text = body[:4096].decode("utf-8", "replace").strip()
    if not text:
        return ""
    ctype = next((v for k, v in headers if k.lower() == "content-type"), "").lower()
    if "json" in ctype or text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            for key in ("message", "error", "detail"):
                if isinstance(obj.get(key), str):
                    text = obj[key]
                    break
    elif "html" in ctype or text.startswith("<"):
        m = _TITLE.search(text)
        text = m.group(1) if m else ""
    line = " ".join(text.split("\n", 1)[0].split())
    return line if len(line) <= 120 else line[:119] + "…"
