"""Persist the last delivered log position so a restarted process resumes where it stopped.

Writes are atomic (temp file + os.replace: a reader sees the old or the new position, never
a torn file) and throttled (at most one write per `interval` seconds) because the hot path
calls `save()` after every network read. No fsync: losing the last second on power loss
only means a few ticks are delivered again, which is the documented at-least-once guarantee
across process restarts.
"""

from __future__ import annotations

import logging
import os
import time

__all__ = ["Checkpoint"]

log = logging.getLogger("iotcommute.checkpoint")


class Checkpoint:
    def __init__(self, path: str | os.PathLike[str], interval: float = 1.0) -> None:
        self.path = os.fspath(path)
        self.interval = interval
        self._saved: int | None = None
        self._last_write = 0.0

    def load(self) -> int | None:
        """The stored position, or None when there is no usable checkpoint."""
        try:
            with open(self.path, encoding="ascii") as f:
                value = int(f.read().strip())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable checkpoint %s: %s", self.path, exc)
            return None
        self._saved = value
        return value if value >= 0 else None

    def save(self, position: int, *, force: bool = False) -> bool:
        """Store `position` unless a write happened less than `interval` ago."""
        if position == self._saved:
            return False
        now = time.monotonic()
        if not force and now - self._last_write < self.interval:
            return False
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="ascii") as f:
                f.write(f"{position}\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot write checkpoint %s: %s", self.path, exc)
            return False
        self._saved = position
        self._last_write = now
        return True
