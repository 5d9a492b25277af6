# cython: annotation_typing=False
"""Frame reader for server-to-client WebSocket frames (RFC 6455 + RFC 7692).

ONE source for both paths: this file runs as the pure-Python fallback and is also
compiled by Cython as ``iotcommute._frames_c`` with the types in
``_speedups/_frames_c.pxd`` (the aiohttp reader_py/reader_c pattern). Keep it plain
Python: no ``import cython`` at run time, no constructs Cython cannot type.

The reader appends events straight into ``self.events`` (a text message is a ``str``,
a binary message ``bytes``, control frames ``Ping``/``Pong``/``CloseReceived``), so the
caller never loops over data messages in Python. On the first violation it stores a
typed error in ``self.error`` and ignores all further input. Results never depend on
how the input is chunked: a frame is only acted on once it is complete, and header
checks are pure functions of header bytes and reader state.
"""

from __future__ import annotations

import codecs
import zlib

from .events import CloseReceived, Ping, Pong
from .exceptions import InvalidUTF8Error, MessageTooBigError, ProtocolError

OP_CONT = 0
OP_TEXT = 1
OP_BINARY = 2
OP_CLOSE = 8
OP_PING = 9
OP_PONG = 10

DEFAULT_MAX_SIZE = 4 * 2**20
DEFAULT_MAX_FRAGMENTS = 1024

_DEFLATE_TAIL = b"\x00\x00\xff\xff"
_Utf8Decoder = codecs.getincrementaldecoder("utf-8")


def close_code_valid(code: int) -> bool:
    """RFC 6455 7.4: codes a peer may put on the wire (1012-1014 are IANA-registered)."""
    return (1000 <= code <= 1003) or (1007 <= code <= 1014) or (3000 <= code <= 4999)


class FrameReader:
    """Incremental parser of server frames; feed bytes, collect ``events``.

    ``deflate`` enables RSV1 (permessage-deflate was negotiated); ``window_bits`` and
    ``no_context_takeover`` are the *server's* negotiated parameters.
    """

    def __init__(
        self,
        max_size: int = DEFAULT_MAX_SIZE,
        max_fragments: int = DEFAULT_MAX_FRAGMENTS,
        deflate: bool = False,
        window_bits: int = 15,
        no_context_takeover: bool = False,
    ) -> None:
        self.events: list[object] = []
        self.pongs: list[bytes] = []
        self.error: ProtocolError | None = None
        self.closed = False
        self.close_code = 1005
        self.close_reason = ""
        self.max_size = max_size
        self.max_fragments = max_fragments
        self.deflate = deflate
        self.window_bits = window_bits
        self.no_context_takeover = no_context_takeover
        self._tail = bytearray()
        self._need = 0
        self._frag_op = 0
        self._frag_parts: list[object] = []
        self._frag_size = 0
        self._frag_wire = 0
        self._frag_count = 0
        self._frag_compressed = False
        self._decoder: codecs.IncrementalDecoder | None = None
        self._inflater: object = None
        # Validates a text frame while it is still arriving, so bad UTF-8 fails fast.
        self._pdec: codecs.IncrementalDecoder | None = None

    # -- input -----------------------------------------------------------------------

    def feed_data(self, data: bytes | bytearray | memoryview) -> None:
        """Consume ``data`` (any chunk size); complete frames become events."""
        if self.error is not None or self.closed:
            return
        if self._tail:
            self._tail += data
            if len(self._tail) < self._need:
                # A big frame is still arriving: O(chunk), no re-parse.
                if self._pdec is not None:
                    try:
                        self._pdec.decode(data, False)
                    except UnicodeDecodeError:
                        self._fail(InvalidUTF8Error("invalid UTF-8 in text message"))
                return
            self._pdec = None  # the frame is complete: _parse validates it whole
            buf = bytes(self._tail)
            self._tail = bytearray()
        elif type(data) is bytes:
            buf = data
        else:
            buf = bytes(data)
        pos = self._parse(buf)
        if pos < len(buf) and self.error is None and not self.closed:
            self._tail = bytearray(buf[pos:])

    def _parse(self, buf: bytes) -> int:
        """Parse complete frames from ``buf``; return the offset of the first unused byte."""
        p = buf
        n = len(buf)
        pos = 0
        events = self.events
        max_size = self.max_size
        while True:
            avail = n - pos
            if avail < 2:
                self._need = 2
                return pos
            b0 = p[pos]
            b1 = p[pos + 1]
            opcode = b0 & 0x0F
            length = b1 & 0x7F
            if b1 & 0x80:
                self._fail(ProtocolError("masked frame from server"))
                return pos
            if (b0 != 0x82 and b0 != 0x81) or self._frag_op != 0:
                # Anything but an unfragmented, uncompressed data frame: slow-path checks.
                if not self._check_header(b0, b1):
                    return pos
            if length < 126:
                start = pos + 2
            elif length == 126:
                if avail < 4:
                    self._need = 4
                    return pos
                length = (p[pos + 2] << 8) | p[pos + 3]
                start = pos + 4
            else:
                if avail < 10:
                    self._need = 10
                    return pos
                if p[pos + 2] & 0x80:
                    self._fail(ProtocolError("frame length has the most significant bit set"))
                    return pos
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            if opcode < 8 and length > max_size - self._frag_wire:
                # Wire-length check before buffering the payload (inflated size is checked too);
                # written as a subtraction so a 63-bit length cannot overflow a C integer.
                self._fail(MessageTooBigError(f"message over {max_size} bytes"))
                return pos
            end = start + length
            if end > n:
                self._need = end - pos
                if (opcode == OP_TEXT and not (b0 & 0x40)) or (
                    opcode == OP_CONT and self._frag_op == OP_TEXT and not self._frag_compressed
                ):
                    self._start_partial_utf8(opcode, buf[start:n])
                return pos
            # Slicing `p` (a C pointer when compiled) copies straight out of the buffer.
            if b0 == 0x82:
                events.append(p[start:end])
            elif b0 == 0x81:
                try:
                    events.append(p[start:end].decode("utf-8"))
                except UnicodeDecodeError:
                    self._fail(InvalidUTF8Error("invalid UTF-8 in text message"))
                    return pos
            elif not self._frame(b0, p[start:end]):
                return pos
            pos = end

    def _start_partial_utf8(self, opcode: int, part: bytes) -> bool:
        """Validate the arrived part of an incomplete text frame (fail fast on bad UTF-8)."""
        dec = _Utf8Decoder()
        if opcode == OP_CONT and self._decoder is not None:
            dec.setstate(self._decoder.getstate())
        try:
            dec.decode(part, False)
        except UnicodeDecodeError:
            return self._fail(InvalidUTF8Error("invalid UTF-8 in text message"))
        self._pdec = dec
        return True

    def _check_header(self, b0: int, b1: int) -> bool:
        """Checks needing only the first two bytes; False after failing the reader."""
        opcode = b0 & 0x0F
        fin = b0 & 0x80
        if b0 & 0x30:
            return self._fail(ProtocolError("reserved bits RSV2/RSV3 set"))
        if b0 & 0x40 and (not self.deflate or opcode == OP_CONT or opcode > 7):
            return self._fail(ProtocolError("reserved bit RSV1 set without permessage-deflate"))
        if opcode > 7:
            if opcode > OP_PONG:
                return self._fail(ProtocolError(f"reserved opcode {opcode}"))
            if not fin:
                return self._fail(ProtocolError("fragmented control frame"))
            if (b1 & 0x7F) > 125:
                return self._fail(ProtocolError("control frame payload over 125 bytes"))
            return True
        if opcode > OP_BINARY:
            return self._fail(ProtocolError(f"reserved opcode {opcode}"))
        if opcode == OP_CONT:
            if self._frag_op == 0:
                return self._fail(ProtocolError("continuation frame without a message"))
        elif self._frag_op != 0:
            return self._fail(ProtocolError("new data frame inside a fragmented message"))
        # Frames seen so far in this message (0 for a new message: the count is stale).
        count = self._frag_count if opcode == OP_CONT else 0
        if not fin and count + 1 >= self.max_fragments:
            return self._fail(MessageTooBigError(f"message over {self.max_fragments} fragments"))
        return True

    def _frame(self, b0: int, payload: bytes) -> bool:
        """A complete frame that is not a plain unfragmented data frame."""
        opcode = b0 & 0x0F
        if opcode > 7:
            return self._control(opcode, payload)
        fin = (b0 & 0x80) != 0
        if opcode != OP_CONT:
            self._frag_op = opcode
            self._frag_compressed = (b0 & 0x40) != 0
            self._frag_size = 0
            self._frag_wire = 0
            self._frag_count = 0
            self._frag_parts = []
            if self._frag_compressed and (self._inflater is None or self.no_context_takeover):
                self._inflater = zlib.decompressobj(-self.window_bits)
            if opcode == OP_TEXT:
                if self._decoder is None:
                    self._decoder = _Utf8Decoder()
                else:
                    self._decoder.reset()
        self._frag_count += 1
        self._frag_wire += len(payload)
        if self._frag_compressed:
            data = self._inflate(payload, fin)
            if data is None:
                return False
        else:
            data = payload
            self._frag_size += len(data)
        if self._frag_op == OP_TEXT:
            try:
                self._frag_parts.append(self._decoder.decode(data, fin))  # type: ignore[union-attr]
            except UnicodeDecodeError:
                return self._fail(InvalidUTF8Error("invalid UTF-8 in text message"))
        else:
            self._frag_parts.append(data)
        if fin:
            if self._frag_op == OP_TEXT:
                self.events.append("".join(self._frag_parts))  # type: ignore[arg-type]
            else:
                self.events.append(b"".join(self._frag_parts))  # type: ignore[arg-type]
            self._frag_op = 0
            self._frag_wire = 0  # only a message in progress counts against max_size
            self._frag_parts = []
        return True

    def _inflate(self, payload: bytes, fin: bool) -> bytes | None:
        """Inflate one frame of a compressed message, bounded by what max_size still allows."""
        d: zlib._Decompress = self._inflater  # type: ignore[assignment]
        room = self.max_size - self._frag_size
        try:
            # max_length=room+1: producing more than `room` means the message is too big,
            # and zlib stops there, so a deflate bomb never allocates more than max_size.
            out = d.decompress(payload, room + 1)
            if d.eof and d.unused_data:
                self._fail(ProtocolError("data after the final deflate block"))
                return None
            if len(out) <= room and fin and not d.eof:
                out += d.decompress(_DEFLATE_TAIL, room + 1 - len(out))
        except zlib.error:
            self._fail(ProtocolError("invalid permessage-deflate data"))
            return None
        if len(out) > room:
            self._fail(MessageTooBigError(f"message over {self.max_size} bytes after inflation"))
            return None
        if fin and d.eof:
            # The server ended its stream with a BFINAL block (RFC 7692 7.2.3.3): the next
            # message starts a new stream, so it needs a fresh inflater even with takeover.
            self._inflater = None
        self._frag_size += len(out)
        return out

    def _control(self, opcode: int, payload: bytes) -> bool:
        if opcode == OP_PING:
            self.pongs.append(payload)
            self.events.append(Ping(payload))
        elif opcode == OP_PONG:
            self.events.append(Pong(payload))
        else:
            n = len(payload)
            code = 1005
            reason = ""
            if n == 1:
                return self._fail(ProtocolError("close frame with a 1-byte payload"))
            if n >= 2:
                code = (payload[0] << 8) | payload[1]
                if not close_code_valid(code):
                    return self._fail(ProtocolError(f"invalid close code {code}"))
                try:
                    reason = payload[2:].decode("utf-8")
                except UnicodeDecodeError:
                    return self._fail(InvalidUTF8Error("invalid UTF-8 in close reason"))
            self.closed = True
            self.close_code = code
            self.close_reason = reason
            self.events.append(CloseReceived(code, reason))
            return False  # stop parsing: nothing after a close frame counts
        return True

    def _fail(self, exc: ProtocolError) -> bool:
        self.error = exc
        self._tail = bytearray()
        self._pdec = None
        self._frag_parts = []
        return False
