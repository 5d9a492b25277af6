"""The streaming client: session.py (the IOT commute protocol, sans-IO), engine.py (asyncio
connection, reconnect, keep-alive), sync.py (WebSocket, callbacks) and aio.py (AsyncWebSocket).

Imported lazily so that `iotcommute.client.session` stays free of asyncio for its users.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .aio import AsyncWebSocket
    from .sync import WebSocket

__all__ = ["AsyncWebSocket", "WebSocket"]


def __getattr__(name: str) -> Any:
    if name == "WebSocket":
        from .sync import WebSocket

        return WebSocket
    if name == "AsyncWebSocket":
        from .aio import AsyncWebSocket

        return AsyncWebSocket
    raise AttributeError(f"module 'iotcommute.client' has no attribute {name!r}")
