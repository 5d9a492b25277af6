"""Server-side frame encoding and JSON helpers.

Outgoing server frames are unmasked (RFC 6455 5.1), so encoding one is just a header in
front of the payload. We encode them here instead of through wsproto so that a tick frame
can be encoded once and the same bytes written to every subscriber. This file shares no
code with the client's frame reader on purpose: the tests should not check our client
against itself.
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any


def _std_dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


try:
    import orjson

    def dumps(obj: Any) -> bytes:
        try:
            return orjson.dumps(obj)
        except TypeError:  # e.g. an integer beyond 64 bits, which stdlib json writes fine
            return _std_dumps(obj)

    def loads(buf: bytes | bytearray | memoryview | str) -> Any:
        return orjson.loads(buf)

except ImportError:  # pragma: no cover - orjson is a dependency on CPython

    def dumps(obj: Any) -> bytes:
        return _std_dumps(obj)

    def loads(buf: bytes | bytearray | memoryview | str) -> Any:
        if isinstance(buf, memoryview):
            buf = bytes(buf)
        return json.loads(buf)


_LONG_NUMBER = re.compile(r"[0-9]{19}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads_exact(buf: str | bytes) -> Any:
    """`loads`, except that integers keep their exact value at any size (orjson reads an
    integer beyond 64 bits as a float): so the server can refuse them instead of storing
    a different number. Only text with a run of 19 digits takes the slow path."""
    text = buf if isinstance(buf, str) else bytes(buf).decode("utf-8")
    if _LONG_NUMBER.search(text) is None:
        return loads(text)
    return json.loads(text, parse_constant=_no_constant)


OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_H16 = struct.Struct("!BBH")
_H64 = struct.Struct("!BBQ")


def frame_header(opcode: int, length: int) -> bytes:
    b0 = 0x80 | opcode  # FIN, no RSV bits: we never compress
    if length < 126:
        return bytes((b0, length))
    if length < 65536:
        return _H16.pack(b0, 126, length)
    return _H64.pack(b0, 127, length)


def encode_frame(opcode: int, payload: bytes) -> bytes:
    return frame_header(opcode, len(payload)) + payload


def text_frame(obj: Any) -> bytes:
    return encode_frame(OP_TEXT, dumps(obj))


def close_frame(code: int, reason: str = "") -> bytes:
    payload = struct.pack("!H", code) + reason.encode("utf-8")[:120]
    return encode_frame(OP_CLOSE, payload)
