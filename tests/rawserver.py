"""A raw WebSocket test server that plays exact bytes at a client (tests only).

It does the HTTP/1.1 upgrade itself (computing ``Sec-WebSocket-Accept`` and optionally
answering a permessage-deflate offer with given parameters), then runs a *script* of
actions: send these exact bytes, pause, wait for the client's echo / pong / close, drop
the TCP connection.  Everything the client sends back is unmasked and parsed by this
module's own small parser (never by iotcommute), so a bug in the core cannot hide itself
by being symmetric.  The frame encoder here is likewise independent of iotcommute.

Why its own code: conformance tests must judge the core against RFC 6455, not against
the core's own idea of the protocol. A server that keeps IOT commute protocol state across
connections is tests/client/test_client_support.MiniServer; canned HTTP answers for the
REST client are tests/rest/servers.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("iotcommute.tests.rawserver")

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

RSV1 = 4  # rsv value is a 3-bit number: RSV1=4, RSV2=2, RSV3=1

#: Seconds any single network wait may take before the server gives up.
WAIT = 5.0


# --------------------------------------------------------------------------- encoding


def accept_key(key: str) -> str:
    """RFC 6455 4.2.2: base64(SHA-1(key + GUID))."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + GUID).digest()).decode("ascii")


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = None,
    length: int | None = None,
    form: int | None = None,
) -> bytes:
    """Encode one frame exactly as asked, including illegal ones.

    ``length`` lies about the payload length (the header says ``length`` while only
    ``payload`` follows); ``form`` forces the 7/16/64-bit length encoding.
    """
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0x0F)
    mbit = 0x80 if mask is not None else 0
    if form is None:
        form = 7 if n < 126 else 16 if n < 65536 else 64
    if form == 7:
        head = struct.pack("!BB", b0, mbit | n)
    elif form == 16:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask is not None:
        head += mask
        payload = apply_mask(payload, mask)
    return head + payload


def apply_mask(data: bytes, mask: bytes) -> bytes:
    """XOR with the 4-byte key (whole-buffer int trick: fast enough for MiBs)."""
    if not data:
        return b""
    n = len(data)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def close_payload(code: int | None = None, reason: bytes | str = b"") -> bytes:
    if code is None:
        return b""
    if isinstance(reason, str):
        reason = reason.encode("utf-8")
    return struct.pack("!H", code) + reason


def text(s: str | bytes, **kw: object) -> bytes:
    data = s.encode("utf-8") if isinstance(s, str) else s
    return frame(OP_TEXT, data, **kw)  # type: ignore[arg-type]


def binary(b: bytes, **kw: object) -> bytes:
    return frame(OP_BINARY, b, **kw)  # type: ignore[arg-type]


def ping(b: bytes = b"", **kw: object) -> bytes:
    return frame(OP_PING, b, **kw)  # type: ignore[arg-type]


def pong(b: bytes = b"", **kw: object) -> bytes:
    return frame(OP_PONG, b, **kw)  # type: ignore[arg-type]


def close(code: int | None = 1000, reason: bytes | str = b"", **kw: object) -> bytes:
    return frame(OP_CLOSE, close_payload(code, reason), **kw)  # type: ignore[arg-type]


def fragments(opcode: int, data: bytes, size: int, *, rsv_first: int = 0) -> bytes:
    """A message split into frames of ``size`` payload bytes (at least one frame)."""
    parts = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    out = []
    for i, part in enumerate(parts):
        out.append(
            frame(
                opcode if i == 0 else OP_CONT,
                part,
                fin=i == len(parts) - 1,
                rsv=rsv_first if i == 0 else 0,
            )
        )
    return b"".join(out)


# --------------------------------------------------------------------------- deflate


@dataclass(frozen=True)
class DeflateParams:
    """Negotiated permessage-deflate parameters (RFC 7692), from the server's answer."""

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int = 15
    client_max_window_bits: int = 15

    @classmethod
    def parse(cls, value: str) -> DeflateParams:
        items = [p.strip() for p in value.split(";")]
        if items[0] != "permessage-deflate":
            raise ValueError(value)
        kw: dict[str, object] = {}
        for item in items[1:]:
            name, _, val = item.partition("=")
            name = name.strip()
            val = val.strip().strip('"')
            if name in ("server_no_context_takeover", "client_no_context_takeover"):
                kw[name] = True
            elif name in ("server_max_window_bits", "client_max_window_bits"):
                kw[name] = int(val) if val else 15
        return cls(**kw)  # type: ignore[arg-type]


class Deflater:
    """Server-side compressor honouring context takeover and window bits."""

    def __init__(self, params: DeflateParams) -> None:
        self.params = params
        self._obj: zlib._Compress | None = None

    def compress(self, data: bytes) -> bytes:
        if self._obj is None or self.params.server_no_context_takeover:
            # zlib cannot make raw deflate streams with an 8-bit window; 9 is the floor.
            self._obj = zlib.compressobj(
                zlib.Z_DEFAULT_COMPRESSION,
                zlib.DEFLATED,
                -max(9, self.params.server_max_window_bits),
            )
        out = self._obj.compress(data) + self._obj.flush(zlib.Z_SYNC_FLUSH)
        assert out.endswith(b"\x00\x00\xff\xff")
        return out[:-4]


class Inflater:
    """Server-side decompressor of the client's messages (window = client_max_window_bits)."""

    def __init__(self, params: DeflateParams) -> None:
        self.params = params
        self._obj: zlib._Decompress | None = None

    def decompress(self, data: bytes) -> bytes:
        if self._obj is None or self.params.client_no_context_takeover:
            self._obj = zlib.decompressobj(-self.params.client_max_window_bits)
        return self._obj.decompress(data + b"\x00\x00\xff\xff")


# --------------------------------------------------------------------------- parsing


@dataclass
class Frame:
    fin: bool
    rsv: int
    opcode: int
    payload: bytes
    masked: bool
    key: bytes = b""


class FrameParser:
    """Incremental parser of client frames (unmasks; notes violations instead of raising)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.violations: list[str] = []

    def feed(self, data: bytes) -> list[Frame]:
        self.buf += data
        out: list[Frame] = []
        while True:
            buf = self.buf
            if len(buf) < 2:
                return out
            b0, b1 = buf[0], buf[1]
            n = b1 & 0x7F
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    return out
                (n,) = struct.unpack_from("!H", buf, 2)
                pos = 4
            elif n == 127:
                if len(buf) < 10:
                    return out
                (n,) = struct.unpack_from("!Q", buf, 2)
                pos = 10
            masked = bool(b1 & 0x80)
            key = b""
            if masked:
                if len(buf) < pos + 4:
                    return out
                key = bytes(buf[pos : pos + 4])
                pos += 4
            if len(buf) < pos + n:
                return out
            payload = bytes(buf[pos : pos + n])
            del self.buf[: pos + n]
            if masked:
                payload = apply_mask(payload, key)
            else:
                self.violations.append("unmasked client frame")
            out.append(Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, payload, masked, key))


# --------------------------------------------------------------------------- script


@dataclass(frozen=True)
class Send:
    """Write these exact bytes."""

    data: bytes


@dataclass(frozen=True)
class SendChunks:
    """Write ``data`` in TCP pieces of ``size`` bytes (drain + yield between pieces)."""

    data: bytes
    size: int
    delay: float = 0.0


@dataclass(frozen=True)
class SendDeflated:
    """A compressed message built at run time with the connection's compressor.

    ``fragment`` splits the *compressed* payload into frames; ``rsv_cont`` wrongly sets
    RSV1 on continuation frames too; ``corrupt`` replaces the compressed bytes.
    """

    opcode: int
    data: bytes
    fragment: int | None = None
    rsv_cont: bool = False
    corrupt: bytes | None = None
    interleave: bytes = b""  # written after the first fragment (e.g. a ping)
    #: RFC 7692 7.2.3 variants, made with a one-shot compressor (needs
    #: server_no_context_takeover): "bfinal" ends the stream with BFINAL=1 (no tail
    #: stripped), "stored" uses uncompressed blocks, "empty_last" keeps the 00 00 ff ff tail
    #: and sends an empty final fragment.
    variant: str | None = None


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class WaitEcho:
    """Wait until the client has sent ``n`` data messages (or closed / hung up)."""

    n: int
    timeout: float = WAIT


@dataclass(frozen=True)
class WaitPong:
    n: int
    timeout: float = WAIT


@dataclass(frozen=True)
class WaitClose:
    """Wait for the client's close frame; records in ``Result.fail_fast`` whether it came.

    Used by fail-fast cases: the rest of a bad message is only sent after this.
    """

    timeout: float = 3.0


@dataclass(frozen=True)
class Drop:
    """Abort the TCP connection without a close frame."""


@dataclass(frozen=True)
class NoFinalClose:
    """Do not send the server's closing handshake at the end; just wait for the client."""


Action = (
    Send | SendChunks | SendDeflated | Pause | WaitEcho | WaitPong | WaitClose | Drop | NoFinalClose
)


@dataclass(frozen=True)
class Handshake:
    """How to answer the upgrade.

    ``deflate`` is the Sec-WebSocket-Extensions answer (sent only when the client offered
    permessage-deflate unless ``force_extension``); ``raw`` replaces the whole response.
    """

    status: int = 101
    deflate: str | None = None
    force_extension: bool = False
    bad_accept: bool = False
    extra_headers: Sequence[tuple[str, str]] = ()
    raw: bytes | None = None
    chunk: int | None = None  # write the 101 response in pieces of this size
    glue: bytes = b""  # frames written in the same write() as the 101 response


@dataclass
class Result:
    """Everything the client did, as seen on the wire."""

    port: int = 0
    request_line: str = ""
    request_headers: list[tuple[str, str]] = field(default_factory=list)
    extension_offer: str = ""
    deflate: DeflateParams | None = None
    frames: list[Frame] = field(default_factory=list)
    messages: list[str | bytes] = field(default_factory=list)
    pings: list[bytes] = field(default_factory=list)
    pongs: list[bytes] = field(default_factory=list)
    close_frames: list[bytes] = field(default_factory=list)  # raw close payloads
    frames_after_close: list[Frame] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    fail_fast: list[bool] = field(default_factory=list)
    eof: bool = False
    done: bool = False

    @property
    def close_code(self) -> int | None:
        """The client's close code; None if it sent none; 1005 if the payload was empty."""
        if not self.close_frames:
            return None
        p = self.close_frames[0]
        if len(p) < 2:
            return 1005
        return int(struct.unpack("!H", p[:2])[0])

    @property
    def close_reason(self) -> bytes:
        return self.close_frames[0][2:] if self.close_frames else b""

    def header(self, name: str) -> str | None:
        for k, v in self.request_headers:
            if k.lower() == name.lower():
                return v
        return None


class _Conn:
    """One client connection: a reader task parses, the script runs in the handler."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        result: Result,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.result = result
        self.parser = FrameParser()
        self.changed = asyncio.Event()
        self.server_closed = False
        self.inflater: Inflater | None = None
        self.deflater: Deflater | None = None
        self._frag: list[Frame] = []

    # ---- reading side
    async def read_loop(self) -> None:
        r = self.result
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                for f in self.parser.feed(data):
                    self._on_frame(f)
                self.changed.set()
        except (ConnectionError, OSError):
            pass
        finally:
            r.eof = True
            r.violations.extend(self.parser.violations)
            self.changed.set()

    def _on_frame(self, f: Frame) -> None:
        r = self.result
        if r.close_frames:
            r.frames_after_close.append(f)
            return
        r.frames.append(f)
        allowed_rsv = (
            RSV1 if (self.inflater is not None and f.opcode in (OP_TEXT, OP_BINARY)) else 0
        )
        if f.rsv & ~allowed_rsv:
            r.violations.append(f"client set rsv={f.rsv} on opcode {f.opcode}")
        if f.opcode >= 8:
            if not f.fin:
                r.violations.append("client fragmented a control frame")
            if len(f.payload) > 125:
                r.violations.append("client control frame payload > 125")
            if f.opcode == OP_CLOSE:
                r.close_frames.append(f.payload)
            elif f.opcode == OP_PING:
                r.pings.append(f.payload)
            elif f.opcode == OP_PONG:
                r.pongs.append(f.payload)
            else:
                r.violations.append(f"client sent reserved opcode {f.opcode}")
            return
        if f.opcode == OP_CONT:
            if not self._frag:
                r.violations.append("client continuation without start")
                return
        elif f.opcode in (OP_TEXT, OP_BINARY):
            if self._frag:
                r.violations.append("client started a message inside another")
                self._frag = []
        else:
            r.violations.append(f"client sent reserved opcode {f.opcode}")
            return
        self._frag.append(f)
        if f.fin:
            first = self._frag[0]
            data = b"".join(x.payload for x in self._frag)
            self._frag = []
            if first.rsv & RSV1:
                assert self.inflater is not None
                try:
                    data = self.inflater.decompress(data)
                except zlib.error as e:
                    r.violations.append(f"client sent bad deflate data: {e}")
                    return
            if first.opcode == OP_TEXT:
                try:
                    r.messages.append(data.decode("utf-8"))
                except UnicodeDecodeError:
                    r.violations.append("client sent invalid UTF-8 text")
                    r.messages.append(data)
            else:
                r.messages.append(data)

    async def wait_for(self, pred: Callable[[], bool], timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not pred():
            left = deadline - loop.time()
            if left <= 0:
                return False
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                return pred()
        return True

    def _has(self, items: list[Any], n: int) -> Callable[[], bool]:
        return lambda: len(items) >= n or self._gone()

    def _gone(self) -> bool:
        return self.result.eof or bool(self.result.close_frames)

    # ---- writing side
    async def write(self, data: bytes) -> None:
        if self.writer.is_closing():
            return
        self.writer.write(data)
        with contextlib.suppress(ConnectionError, OSError):
            await asyncio.wait_for(self.writer.drain(), WAIT)

    async def run(self, script: Sequence[Action], expect_messages: int = 0) -> None:
        r = self.result
        final_close = True
        for act in script:
            if isinstance(act, Send):
                if act.data[:1] and (act.data[0] & 0x0F) == OP_CLOSE:
                    self.server_closed = True
                await self.write(act.data)
            elif isinstance(act, SendChunks):
                for i in range(0, len(act.data), act.size):
                    await self.write(act.data[i : i + act.size])
                    await asyncio.sleep(act.delay)
            elif isinstance(act, SendDeflated):
                await self.write(self._deflated(act))
            elif isinstance(act, Pause):
                await asyncio.sleep(act.seconds)
            elif isinstance(act, WaitEcho):
                await self.wait_for(self._has(r.messages, act.n), act.timeout)
            elif isinstance(act, WaitPong):
                await self.wait_for(self._has(r.pongs, act.n), act.timeout)
            elif isinstance(act, WaitClose):
                r.fail_fast.append(await self.wait_for(self._gone, act.timeout))
            elif isinstance(act, Drop):
                self.writer.transport.abort()
                return
            elif isinstance(act, NoFinalClose):
                final_close = False
        # Let the echoes arrive before closing: a close in the same TCP segment as the
        # message would (rightly) stop the client from echoing it.
        await self.wait_for(self._has(r.messages, expect_messages), WAIT)
        # Closing handshake: the server closes first unless the client already did.
        if final_close and not self.server_closed and not self._gone():
            self.server_closed = True
            await self.write(close(1000))
        await self.wait_for(self._gone, WAIT)
        if r.close_frames and not self.server_closed:
            # Echo the client's close (code only: RFC 6455 5.5.1) so the client can finish.
            self.server_closed = True
            code = r.close_code
            await self.write(close(None if code == 1005 else code))
        # The server closes TCP first (RFC 6455 7.1.1); keep reading to see stray bytes.
        with contextlib.suppress(OSError, RuntimeError):
            if self.writer.can_write_eof():
                self.writer.write_eof()
        await self.wait_for(lambda: r.eof, 1.0)

    def _deflated(self, act: SendDeflated) -> bytes:
        assert self.deflater is not None, "permessage-deflate was not negotiated"
        payload = act.corrupt if act.corrupt is not None else self.deflater.compress(act.data)
        if act.variant is not None:
            wbits = -max(9, self.deflater.params.server_max_window_bits)
            level = 0 if act.variant == "stored" else 6
            c = zlib.compressobj(level, zlib.DEFLATED, wbits)
            if act.variant == "bfinal":
                payload = c.compress(act.data) + c.flush(zlib.Z_FINISH)
            else:
                payload = c.compress(act.data) + c.flush(zlib.Z_SYNC_FLUSH)
                if act.variant == "stored":
                    payload = payload[:-4]
            if act.variant == "empty_last":
                return frame(act.opcode, payload, fin=False, rsv=RSV1) + frame(OP_CONT, b"")
        if act.fragment is None:
            return frame(act.opcode, payload, rsv=RSV1)
        parts = [payload[i : i + act.fragment] for i in range(0, len(payload), act.fragment)] or [
            b""
        ]
        out = []
        for i, part in enumerate(parts):
            out.append(
                frame(
                    act.opcode if i == 0 else OP_CONT,
                    part,
                    fin=i == len(parts) - 1,
                    rsv=RSV1 if (i == 0 or act.rsv_cont) else 0,
                )
            )
            if i == 0:
                out.append(act.interleave)
        return b"".join(out)


class RawServer:
    """``async with RawServer(script, handshake) as srv:`` -> ``srv.port``; ``srv.result``.

    Serves exactly one connection (a case); later connections are refused by closing.
    """

    def __init__(
        self,
        script: Sequence[Action] = (),
        handshake: Handshake | None = None,
        expect_messages: int = 0,
    ) -> None:
        self.script = list(script)
        self.expect_messages = expect_messages
        self.handshake = handshake or Handshake()
        self.result = Result()
        self.finished = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._served = False
        self.port = 0

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self.result.port = self.port
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), WAIT)

    async def wait_done(self, timeout: float = 10.0) -> Result:
        await asyncio.wait_for(self.finished.wait(), timeout)
        return self.result

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._served:
            writer.close()
            return
        self._served = True
        try:
            await self._serve(reader, writer)
        except Exception:  # pragma: no cover - surfaced through Result
            log.exception("raw server case crashed")
            self.result.violations.append("server crashed")
        finally:
            writer.close()
            self.result.done = True
            self.finished.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        r = self.result
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            r.violations.append("no complete upgrade request")
            return
        lines = head.decode("latin-1").split("\r\n")
        r.request_line = lines[0]
        for line in lines[1:]:
            if not line:
                continue
            k, _, v = line.partition(":")
            r.request_headers.append((k.strip(), v.strip()))
        r.extension_offer = ", ".join(
            v for k, v in r.request_headers if k.lower() == "sec-websocket-extensions"
        )
        hs = self.handshake
        conn = _Conn(reader, writer, r)
        if hs.raw is not None:
            writer.write(hs.raw)
            await writer.drain()
            reader_task = asyncio.create_task(conn.read_loop())
            await conn.wait_for(lambda: r.eof, 2.0)
            reader_task.cancel()
            return
        key = r.header("Sec-WebSocket-Key") or ""
        accept = accept_key(key)
        if hs.bad_accept:
            accept = accept_key(key + "x")
        if hs.status != 101:
            body = b"nope"
            resp = [f"HTTP/1.1 {hs.status} Refused", f"Content-Length: {len(body)}"]
            resp += [f"{k}: {v}" for k, v in hs.extra_headers]
            writer.write(("\r\n".join(resp) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
            reader_task = asyncio.create_task(conn.read_loop())
            await conn.wait_for(lambda: r.eof, 2.0)
            reader_task.cancel()
            return
        resp = [
            "HTTP/1.1 101 Switching Protocols",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Accept: {accept}",
        ]
        offered = "permessage-deflate" in r.extension_offer
        if hs.deflate is not None and (offered or hs.force_extension):
            resp.append(f"Sec-WebSocket-Extensions: {hs.deflate}")
            r.deflate = DeflateParams.parse(hs.deflate)
            conn.deflater = Deflater(r.deflate)
            conn.inflater = Inflater(r.deflate)
        resp += [f"{k}: {v}" for k, v in hs.extra_headers]
        head_out = ("\r\n".join(resp) + "\r\n\r\n").encode("latin-1")
        if hs.chunk:
            for i in range(0, len(head_out), hs.chunk):
                await conn.write(head_out[i : i + hs.chunk])
                await asyncio.sleep(0)
        else:
            if hs.glue[:1] and (hs.glue[0] & 0x0F) == OP_CLOSE:
                conn.server_closed = True
            writer.write(head_out + hs.glue)
        reader_task = asyncio.create_task(conn.read_loop())
        try:
            await conn.run(self.script, self.expect_messages)
        finally:
            if not reader_task.done():
                reader_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader_task
