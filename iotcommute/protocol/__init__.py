"""The WebSocket core, sans-IO: bytes in, events out; no sockets, threads, clocks or asyncio.

Where a frame is born and read:

- ``connection.ClientProtocol``: the client side of RFC 6455 (handshake on wsproto/h11, then
  our own frame reader); the one object a transport drives.
- ``events``: what ``ClientProtocol.events_received()`` returns (a ``str`` is a text message,
  ``bytes`` a binary one, else an event object).
- ``frames``: the selector between the compiled frame reader and masking
  (``_frames_c``, ``_mask``: built from ``_frames_py.py`` + ``_speedups/_frames_c.pxd`` and
  ``_speedups/_mask.pyx``) and their pure twins ``_frames_py`` and ``_mask_py``.
"""

from __future__ import annotations

from .connection import ClientProtocol
from .events import EOF, Accepted, CloseReceived, Failed, Ping, Pong, State

__all__ = [
    "EOF",
    "Accepted",
    "ClientProtocol",
    "CloseReceived",
    "Failed",
    "Ping",
    "Pong",
    "State",
]
