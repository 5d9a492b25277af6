# cython: annotation_typing=False
"""Frame reader for server-to-client WebSocket frames (RFC 6455 + RFC 7692).

ONE source for both paths: this file runs as the pure-Python fallback and is also
compiled by Cython as ``iotcommute.protocol._frames_c`` with the types in
``_speedups/_frames_c.pxd`` (the aiohttp reader_py/reader_c pattern). Keep it plain
Python: no ``import cython`` at run time, no constructs Cython cannot type.

The reader appends events straight into ``self.events`` (a text message is a ``str``,
a binary message ``bytes``, control frames ``Ping``/``Pong``/``CloseReceived``), so the
caller never loops over data messages in Python. On the first violation it stores a
typed error in ``self.error`` and ignores all further input. Results never depend on
how the input is chunked: a frame is only acted on once it is complete, and header
checks are pure functions of header bytes and reader state.

Copies: a frame inside one read is sliced out once (a text frame is decoded straight out
of the read). A frame split across reads gets its payload buffer when its header arrives
and each read's share is copied straight into it (compiled: uninitialised ``bytes`` +
memcpy, so the payload is never copied again); only a split header (under 10 bytes) is
kept aside. The uncompressed fragments of a message are copied once, straight out of the
read, into one message buffer reused between messages (text while it is ASCII: it is
decoded once at the end), which becomes the message with one more copy; UTF-8 is still
validated as each piece arrives. (A fragment split across reads is assembled in its own
payload first, then copied into the message buffer.) Compressed messages keep their
inflated pieces and join them once.

Reads can also land in memory the reader owns (``get_buffer``/``buffer_updated``, the
shape of ``asyncio.BufferedProtocol``): compiled, a read goes into a reused buffer that
frames are sliced out of (one copy of each payload byte between the socket and the
message), and while a big binary frame is arriving the next read goes straight into that
frame's payload (no copy at all after the kernel's). Messages never alias the reused buffer:
every slice is a new object, and a payload read into in place is handed out only when whole
and never written again.
"""

from __future__ import annotations

import codecs
import zlib

from ..exceptions import InvalidUTF8Error, MessageTooBigError, ProtocolError
from .events import CloseReceived, Ping, Pong

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

# A frame split across reads gets its whole payload buffer when its header arrives (one copy
# of each byte after the kernel's); above this size the buffer grows as data arrives instead,
# so a huge max_size never turns a lying header into a huge allocation.
_PREALLOC_MAX = 64 * 2**20
# get_buffer: the reused read buffer's size (a BufferedProtocol read fills up to all of it), and
# how much of a big binary frame must still be missing for a read to go straight into it.
# 512 KiB, not 256: on a 256-byte text firehose the client's kernel time fell from ~70 to
# ~50 ns a message (fewer reads, fewer window updates); 1 MiB gained no more and its reads no
# longer fit in L2. The compiled buffer is never zeroed, so only pages a read filled are resident.
# Compiled, a stream whose last read averaged _BIG_MESSAGE bytes a message or more reads
# _READ_SIZE_BIG at a time: each of its messages is a copy out of the read, and with 512 KiB
# reads 4 KiB messages came at 0.97x picows' rate, with 256 KiB at 1.26x (64 KiB: 1.05x and
# 1.16x), while 256-byte text fell from 2.6x to 2.0x with 256 KiB reads (alternating builds,
# 2026-12-04).
_READ_SIZE = 512 * 1024
_READ_SIZE_BIG = 256 * 1024
_BIG_MESSAGE = 2048
_DIRECT_MIN = 16 * 1024


# The fragment buffer of a message bigger than this is dropped once the message is out.
_ACC_KEEP = 2**20


def _is_ascii(buf: bytes, a: int, b: int) -> bool:
    """``buf[a:b]`` is all ASCII."""
    if _COMPILED:
        q = buf
        return _ascii_run(q + a, b - a)  # type: ignore[name-defined,operator,no-any-return]  # noqa: F821
    return (buf if a == 0 and b == len(buf) else buf[a:b]).isascii()


def close_code_valid(code: int) -> bool:
    """RFC 6455 7.4: codes a peer may put on the wire (1012-1014 are IANA-registered)."""
    return (1000 <= code <= 1003) or (1007 <= code <= 1014) or (3000 <= code <= 4999)


# True in the Cython build. Code under `if _COMPILED:` uses C helpers declared only in
# _speedups/_frames_c.pxd (uninitialised bytes + memcpy); the pure fallback never runs it.
_COMPILED = type(close_code_valid).__name__ != "function"


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
        # Bytes of a frame header split across reads (under 10 bytes).
        self._tail = b""
        # The frame whose header arrived but whose payload is still arriving: its first
        # byte, length, destination buffer, bytes filled so far and buffer kind
        # (1: compiled, preallocated uninitialised bytes; 3: growing bytearray).
        self._pb0 = 0
        self._plen = 0
        self._pbuf: bytes | bytearray | None = None
        self._pfill = 0
        self._pmode = 0
        self._frag_op = 0
        # Uncompressed text fragments stay bytes while all ASCII (decoded once, joined once);
        # from the first non-ASCII fragment on they are decoded incrementally into str parts.
        self._frag_parts: list[object] = []
        self._frag_ascii = True
        # The uncompressed fragments of the message in progress, copied in once: a buffer
        # reused between messages (compiled; its length is its capacity) and how much of it
        # is filled.
        self._acc = bytearray()
        self._acc_len = 0
        self._frag_size = 0
        self._frag_wire = 0
        self._frag_count = 0
        self._frag_compressed = False
        self._decoder: codecs.IncrementalDecoder | None = None
        self._inflater: object = None
        # Validates a text frame while it is still arriving, so bad UTF-8 fails fast;
        # `_pascii` skips the decoder while everything so far was ASCII.
        self._pdec: codecs.IncrementalDecoder | None = None
        self._pascii = True
        # get_buffer/buffer_updated: the reused read buffer (compiled: bytes written only
        # through the views get_buffer hands out; pure: a bytearray) and its view, and
        # whether the last view handed out was the arriving frame's payload instead.
        self._rbuf: bytes | bytearray | None = None
        self._rview: memoryview | None = None
        self._rdirect = False
        self._rsize = _READ_SIZE  # compiled: how much of _rbuf the next read may fill

    # -- input -----------------------------------------------------------------------

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Writable memory for the next read (``asyncio.BufferedProtocol.get_buffer``);
        pass the number of bytes read to ``buffer_updated`` before anything else. The view
        is only valid until then."""
        if _COMPILED:
            if (
                self._pbuf is not None
                and self._pmode == 1
                and self._pdec is None
                and self._plen - self._pfill >= _DIRECT_MIN
                and self.error is None
                and not self.closed
            ):
                # The read goes straight into the arriving frame's payload.
                self._rdirect = True
                return _writable_view(self._pbuf, self._pfill, self._plen - self._pfill)  # type: ignore[name-defined,no-any-return]  # noqa: F821
            self._rdirect = False
            if self._rbuf is None:
                self._rbuf = _new_bytes(_READ_SIZE)  # type: ignore[name-defined]  # noqa: F821
            return _writable_view(self._rbuf, 0, self._rsize)  # type: ignore[name-defined,no-any-return]  # noqa: F821
        if self._rview is None:
            self._rbuf = bytearray(_READ_SIZE)
            self._rview = memoryview(self._rbuf)
        return self._rview

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were read into the last ``get_buffer`` view: consume them."""
        if _COMPILED:
            if self._rdirect:
                self._rdirect = False
                if self.error is None and not self.closed and nbytes > 0:
                    self._pfill += nbytes
                    if self._pfill == self._plen:
                        self._complete()
                return
            if self.error is None and not self.closed and nbytes > 0:
                k = len(self.events)
                self._feed(self._rbuf, nbytes)  # type: ignore[arg-type]
                k = len(self.events) - k  # the messages this read completed
                self._rsize = _READ_SIZE if k * _BIG_MESSAGE > nbytes else _READ_SIZE_BIG
            return
        if self._rview is not None and nbytes > 0:
            self.feed_data(self._rview[:nbytes])

    def feed_data(self, data: bytes | bytearray | memoryview) -> None:
        """Consume ``data`` (any chunk size); complete frames become events."""
        if self.error is not None or self.closed:
            return
        buf = data if type(data) is bytes else bytes(data)
        self._feed(buf, len(buf))

    def _feed(self, buf: bytes, n: int) -> None:
        """Consume ``buf[:n]``."""
        if self.error is not None or self.closed:
            return
        if self._pbuf is not None and n < self._plen - self._pfill:
            # The middle of a big frame: all of this read belongs to it (the common case
            # for small reads, kept to the fewest calls for the pure-Python path).
            if self._pmode == 3 and self._pdec is None:
                self._pbuf += buf if n == len(buf) else memoryview(buf)[:n]
                self._pfill += n
            else:
                self._fill(buf, 0, n)
            return
        pos = 0
        while pos < n:
            if self._pbuf is not None:
                # A frame is still arriving: copy this read's share straight into place.
                k = self._plen - self._pfill
                if k > n - pos:
                    k = n - pos
                if self._pmode == 3 and self._pdec is None and pos == 0:
                    self._pbuf += buf if k == len(buf) else memoryview(buf)[:k]
                    self._pfill += k
                elif not self._fill(buf, pos, pos + k):
                    return
                pos += k
                if self._pfill == self._plen and not self._complete():
                    return
            elif self._tail:
                # Complete the split header with exactly its missing bytes (a header alone
                # is parsed as a frame whose payload has not arrived), so the rest of this
                # read is parsed in place, not copied.
                hdr = self._tail
                k = len(hdr)
                b1 = hdr[1] if k > 1 else buf[pos]
                m = (2 if (b1 & 0x7F) < 126 else 4 if (b1 & 0x7F) == 126 else 10) - k
                if m > n - pos:
                    m = n - pos
                hdr = hdr + buf[pos : pos + m]
                self._tail = b""
                self._parse(hdr, 0, len(hdr))
                pos += m
            else:
                self._parse(buf, pos, n)
                return
            if self.error is not None or self.closed:
                return

    def _parse(self, buf: bytes, pos: int, n: int) -> int:
        """Parse frames from ``buf[pos:n]``; return the offset after what was used.
        A split header is kept in ``_tail``, a split payload starts a fill."""
        p = buf
        events = self.events
        max_size = self.max_size
        # Read once: only the slow path (_frame) changes them, and refreshes these.
        frag = self._frag_op
        limit = max_size - self._frag_wire  # the longest data frame that still fits
        while True:
            avail = n - pos
            if avail < 2:
                if avail:
                    self._tail = buf[pos:n]
                return n
            b0 = p[pos]
            b1 = p[pos + 1]
            length = b1 & 0x7F
            if b1 & 0x80:
                self._fail(ProtocolError("masked frame from server"))
                return pos
            if (b0 != 0x82 and b0 != 0x81) or frag != 0:
                # Anything but an unfragmented, uncompressed data frame: slow-path checks.
                if not self._check_header(b0, b1):
                    return pos
            if length < 126:
                start = pos + 2
            elif length == 126:
                if avail < 4:
                    self._tail = buf[pos:n]
                    return n
                length = (p[pos + 2] << 8) | p[pos + 3]
                start = pos + 4
            else:
                if avail < 10:
                    self._tail = buf[pos:n]
                    return n
                if p[pos + 2] & 0x80:
                    self._fail(ProtocolError("frame length has the most significant bit set"))
                    return pos
                if _COMPILED:  # read in place: no slice and int object per big frame
                    length = _be63(p + pos + 2)  # type: ignore[name-defined,operator]  # noqa: F821
                else:
                    length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            if length > limit and (b0 & 0x0F) < 8:
                # Wire-length check before buffering the payload (inflated size is checked too);
                # written as a subtraction so a 63-bit length cannot overflow a C integer.
                self._fail(MessageTooBigError(f"message over {max_size} bytes"))
                return pos
            end = start + length
            if end > n:
                self._begin(b0, length, buf, start, n)
                return n
            # Slicing `p` (a C pointer when compiled) copies straight out of the buffer.
            if b0 == 0x82:
                events.append(p[start:end])
            elif b0 == 0x81:
                try:
                    if _COMPILED:  # ASCII without CPython's per-word decode loop
                        events.append(_text(p + start, end - start))  # type: ignore[name-defined,operator]  # noqa: F821
                    else:
                        events.append(p[start:end].decode("utf-8"))
                except UnicodeDecodeError:
                    self._fail(InvalidUTF8Error("invalid UTF-8 in text message"))
                    return pos
            else:
                if not self._frame(b0, buf, start, end):
                    return pos
                frag = self._frag_op
                limit = max_size - self._frag_wire
            pos = end

    def _begin(self, b0: int, length: int, buf: bytes, start: int, n: int) -> None:
        """A frame whose payload is not all here: allocate its buffer once, start filling."""
        opcode = b0 & 0x0F
        self._pb0 = b0
        self._plen = length
        self._pfill = 0
        if _COMPILED and length <= _PREALLOC_MAX:
            # Uninitialised bytes, filled with memcpy before anyone can see them.
            self._pbuf = _new_bytes(length)  # type: ignore[name-defined]  # noqa: F821
            self._pmode = 1
        else:
            # Pure Python: `+=` of whole reads is the cheapest fill there is (one C call).
            self._pmode = 3
            if opcode != OP_TEXT and opcode != OP_CONT:
                self._pbuf = bytearray(memoryview(buf)[start:n])
                self._pfill = n - start
                self._pdec = None
                return
            self._pbuf = bytearray()
        self._pdec = None
        if (opcode == OP_TEXT and not (b0 & 0x40)) or (
            opcode == OP_CONT and self._frag_op == OP_TEXT and not self._frag_compressed
        ):
            dec = _Utf8Decoder()
            self._pascii = True
            if opcode == OP_CONT and not self._frag_ascii and self._decoder is not None:
                dec.setstate(self._decoder.getstate())
                self._pascii = False
            self._pdec = dec
        self._fill(buf, start, n)

    def _fill(self, buf: bytes, a: int, b: int) -> bool:
        """Append ``buf[a:b]`` to the arriving frame; False after failing on bad UTF-8."""
        k = b - a
        if k <= 0:
            return True
        if self._pdec is not None:
            part = buf if (a == 0 and b == len(buf)) else buf[a:b]  # read at once, not kept
            if not (self._pascii and part.isascii()):
                self._pascii = False
                try:
                    self._pdec.decode(part, False)
                except UnicodeDecodeError:
                    return self._fail(InvalidUTF8Error("invalid UTF-8 in text message"))
        if self._pmode == 1:
            q = buf
            _copy_into(self._pbuf, self._pfill, q + a, k)  # type: ignore[name-defined,operator]  # noqa: F821
        else:
            grow: bytearray = self._pbuf  # type: ignore[assignment]
            grow += buf if k == len(buf) else memoryview(buf)[a:b]
        self._pfill += k
        return True

    def _complete(self) -> bool:
        """The arriving frame is whole: hand its payload to the usual frame logic."""
        payload = self._pbuf if self._pmode == 1 else bytes(self._pbuf)  # type: ignore[arg-type]
        b0 = self._pb0
        self._pbuf = None
        self._pdec = None  # the frame is complete: it is validated whole below
        if b0 == 0x82:
            self.events.append(payload)
        elif b0 == 0x81:
            try:
                self.events.append(payload.decode("utf-8"))  # type: ignore[union-attr]
            except UnicodeDecodeError:
                return self._fail(InvalidUTF8Error("invalid UTF-8 in text message"))
        else:
            return self._frame(b0, payload, 0, len(payload))  # type: ignore[arg-type]
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

    def _frame(self, b0: int, buf: bytes, a: int, b: int) -> bool:
        """A complete frame, payload ``buf[a:b]``, that is not a plain unfragmented data
        frame. Uncompressed fragments are copied once, straight from ``buf``, into the
        message's buffer (``_acc``; text while it is all ASCII), which becomes the message
        with one more copy at the end; compressed ones are kept as inflated and joined."""
        opcode = b0 & 0x0F
        if opcode > 7:
            return self._control(opcode, buf[a:b])
        fin = (b0 & 0x80) != 0
        if opcode != OP_CONT:
            self._frag_op = opcode
            self._frag_compressed = (b0 & 0x40) != 0
            self._frag_size = 0
            self._frag_wire = 0
            self._frag_count = 0
            self._frag_parts = []
            self._acc_len = 0
            if self._frag_compressed and (self._inflater is None or self.no_context_takeover):
                self._inflater = zlib.decompressobj(-self.window_bits)
            self._frag_ascii = True
            if opcode == OP_TEXT:
                if self._decoder is None:
                    self._decoder = _Utf8Decoder()
                else:
                    self._decoder.reset()
        self._frag_count += 1
        self._frag_wire += b - a
        if self._frag_compressed:
            data = self._inflate(buf[a:b], fin)
            if data is None or not self._add_part(data, fin):
                return False
        else:
            self._frag_size += b - a
            if self._frag_op == OP_TEXT and not (self._frag_ascii and _is_ascii(buf, a, b)):
                if not self._add_part(buf[a:b], fin):
                    return False
            else:
                self._acc_add(buf, a, b)
        if fin:
            parts = self._frag_parts
            if self._frag_op == OP_TEXT and not self._frag_ascii:
                self.events.append("".join(parts))  # type: ignore[arg-type]
            elif not self._frag_compressed:
                self.events.append(self._acc_take(self._frag_op == OP_TEXT))
            elif self._frag_op != OP_TEXT:
                self.events.append(parts[0] if len(parts) == 1 else b"".join(parts))  # type: ignore[arg-type]
            else:
                self.events.append(b"".join(parts).decode("ascii"))  # type: ignore[arg-type]
            self._frag_op = 0
            self._frag_wire = 0  # only a message in progress counts against max_size
            self._frag_parts = []
        return True

    def _add_part(self, data: bytes, fin: bool) -> bool:
        """Add a compressed message's inflated piece, or a non-ASCII text piece."""
        parts = self._frag_parts
        if self._frag_op == OP_TEXT:
            if self._frag_ascii and data.isascii():
                parts.append(data)  # valid UTF-8 whatever comes next: decode it once at the end
            else:
                if self._frag_ascii:
                    self._frag_ascii = False
                    # The ASCII prefix cannot leave a partial sequence: the decoder starts clean.
                    if self._frag_compressed:
                        prefix = b"".join(parts).decode("ascii")  # type: ignore[arg-type]
                    else:
                        prefix = self._acc_take(True)  # type: ignore[assignment]
                    parts = [prefix]
                    self._frag_parts = parts
                try:
                    parts.append(self._decoder.decode(data, fin))  # type: ignore[union-attr]
                except UnicodeDecodeError:
                    return self._fail(InvalidUTF8Error("invalid UTF-8 in text message"))
        else:
            parts.append(data)
        return True

    def _acc_add(self, buf: bytes, a: int, b: int) -> None:
        """Append ``buf[a:b]`` to the message's buffer (one copy)."""
        n = b - a
        if _COMPILED:
            _acc_reserve(self._acc, self._acc_len + n)  # type: ignore[name-defined]  # noqa: F821
            q = buf
            _acc_copy(self._acc, self._acc_len, q + a, n)  # type: ignore[name-defined,operator]  # noqa: F821
        elif n == len(buf):
            self._acc += buf
        else:
            self._acc += memoryview(buf)[a:b]
        self._acc_len += n

    def _acc_take(self, text: bool) -> bytes | str:
        """The message's buffer as the message (one copy); the buffer is emptied."""
        if _COMPILED:
            if text:
                out = _acc_ascii(self._acc, self._acc_len)  # type: ignore[name-defined]  # noqa: F821
            else:
                out = _acc_bytes(self._acc, self._acc_len)  # type: ignore[name-defined]  # noqa: F821
            if len(self._acc) > _ACC_KEEP:
                self._acc = bytearray()  # a big message's buffer is not kept
        else:
            out = self._acc.decode("ascii") if text else bytes(self._acc)
            self._acc = bytearray()
        self._acc_len = 0
        return out  # type: ignore[no-any-return]

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
        self._tail = b""
        self._pbuf = None
        self._pdec = None
        self._frag_parts = []
        self._acc_len = 0
        return False
