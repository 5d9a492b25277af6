"""iotcommute: fast, dependable client for the IOT commute device-messaging service.

from iotcommute import WebSocket
iws = WebSocket(device_key, device_id, "device")
iws.on_tick = lambda tick, ws: print(tick)
iws.connect()
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from . import exceptions
from .exceptions import *  # noqa: F403 - the hierarchy is part of the public API

__version__ = "0.1.0"

logging.getLogger("iotcommute").addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from .client.aio import AsyncWebSocket
    from .client.sync import WebSocket
    from .rest import AsyncCommute, Commute

# Heavy modules load on first use so `import iotcommute` stays cheap and partial
# installs (no uvloop) still import.
_LAZY = {
    "WebSocket": ("client.sync", "WebSocket"),
    "AsyncWebSocket": ("client.aio", "AsyncWebSocket"),
    "Commute": ("rest", "Commute"),
    "AsyncCommute": ("rest", "AsyncCommute"),
}


def _speedups() -> bool:
    """True when the compiled frame reader, masking, tick codec and raw delivery loop are
    all in use."""
    from . import payload
    from .protocol import frames

    return frames.SPEEDUPS and payload.SPEEDUPS


def __getattr__(name: str) -> Any:
    if name == "SPEEDUPS":
        value: Any = _speedups()
        globals()[name] = value
        return value
    try:
        mod_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'iotcommute' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(f".{mod_name}", __name__), attr)
    globals()[name] = value
    return value


__all__ = [  # noqa: F405 - SPEEDUPS and the hierarchy resolve lazily / by star import
    "SPEEDUPS",
    "AsyncCommute",
    "AsyncWebSocket",
    "Commute",
    "WebSocket",
    "__version__",
    "exceptions",
    *exceptions.__all__,
]
