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


def warn_fallback(what: str) -> None:
    """Say once, loudly, that a compiled module is missing although nobody asked for that.

    pip hides build output, so a failed compile would otherwise go unnoticed until the
    throughput does; IOTCOMMUTE_NO_EXTENSIONS=1 silences it (the fallback was chosen).
    """
    import warnings

    warnings.warn(
        f"iotcommute: compiled speedups not available ({what} missing); using the pure-Python "
        "fallback "
        "(correct, several times slower). Reinstall with a C compiler to build it, or set "
        "IOTCOMMUTE_NO_EXTENSIONS=1 to choose the fallback explicitly.",
        RuntimeWarning,
        stacklevel=3,
    )
