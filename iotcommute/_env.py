"""Runtime switches read from the environment, in one place."""

from __future__ import annotations

import os
import sys


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "no", "false")


#: Forces the pure-Python fallback (also read at build time by setup.py).
NO_EXTENSIONS: bool = _truthy(os.environ.get("IOTCOMMUTE_NO_EXTENSIONS")) or (
    sys.implementation.name != "cpython"
)

#: Default server URL for WebSocket and REST clients.
DEFAULT_URL: str = os.environ.get("IOTCOMMUTE_URL", "ws://127.0.0.1:8765")
