"""Events produced by the sans-IO core (`iotcommute.protocol.ClientProtocol`).

Data messages are NOT wrapped: a text message is a plain ``str`` and a binary message a
plain ``bytes`` in the list returned by ``events_received()``, so the hot path allocates
nothing per message beyond the payload itself. Everything else is one of the small
classes below (``__slots__``, compared by value so tests can use ``==``).
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = [
    "EOF",
    "Accepted",
    "CloseReceived",
    "Event",
    "Failed",
    "Ping",
    "Pong",
    "State",
]


class State(enum.IntEnum):
    """Connection state of the client protocol."""

    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


class _Base:
    __slots__ = ()

    def _key(self) -> tuple[Any, ...]:
        slots: tuple[str, ...] = self.__slots__
        return tuple(getattr(self, s) for s in slots)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash((type(self).__name__, *(repr(v) for v in self._key())))

    def __repr__(self) -> str:
        slots: tuple[str, ...] = self.__slots__
        args = ", ".join(f"{s}={getattr(self, s)!r}" for s in slots)
        return f"{type(self).__name__}({args})"


class Accepted(_Base):
    """The server accepted the upgrade (status 101).

    ``headers`` is the list of response headers as ``(name, value)`` str pairs (lower-case
    names; sensitive values redacted), ``extensions`` the negotiated extension strings
    (e.g. ``["permessage-deflate; server_max_window_bits=15"]``).
    """

    __slots__ = ("extensions", "headers", "status", "subprotocol")

    def __init__(
        self,
        headers: list[tuple[str, str]],
        subprotocol: str | None = None,
        extensions: list[str] | None = None,
        status: int = 101,
    ) -> None:
        self.headers = headers
        self.subprotocol = subprotocol
        self.extensions = extensions if extensions is not None else []
        self.status = status


class Ping(_Base):
    """A ping arrived (a pong with the same payload is already queued)."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes = b"") -> None:
        self.payload = payload


class Pong(_Base):
    """A pong arrived."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes = b"") -> None:
        self.payload = payload


class CloseReceived(_Base):
    """The server sent a close frame (1005 when it carried no code).

    If we had not sent a close yet, the echo is already queued.
    """

    __slots__ = ("code", "reason")

    def __init__(self, code: int = 1005, reason: str = "") -> None:
        self.code = code
        self.reason = reason


class Failed(_Base):
    """Terminal: a protocol violation or a rejected handshake; ``exc`` is typed.

    For protocol violations a close frame with ``exc.close_code`` is already queued.
    """

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def _key(self) -> tuple[Any, ...]:
        # Exceptions do not compare by value; compare what identifies the failure.
        e = self.exc
        return (type(e), str(e), getattr(e, "close_code", None), getattr(e, "status", None))


class EOF(_Base):
    """The peer closed the TCP stream (``receive_data(b"")``)."""

    __slots__ = ()


#: Anything ``events_received()`` may return.
Event = str | bytes | Accepted | Ping | Pong | CloseReceived | Failed | EOF
