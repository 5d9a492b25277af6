"""Persist the last delivered log position so a restarted process resumes where it stopped.

The file holds the position and the identity of the server's log it belongs to (welcome's
`log`), so a restarted process that meets another log (a non-durable server restarted)
reads that log from its start instead of skipping its first records. A file with a
position only (older versions) still loads.

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
        self._saved: tuple[int, str | None] | None = None
        self._last_write = 0.0

    def load(self) -> tuple[int, str | None] | None:
        """The stored (position, log id), or None when there is no usable checkpoint."""
        try:
            with open(self.path, encoding="ascii") as f:
                words = f.read().split()
            value = int(words[0])
            log_id = words[1] if len(words) > 1 else None
        except FileNotFoundError:
            return None
        except (OSError, ValueError, IndexError) as exc:
            log.warning("ignoring unreadable checkpoint %s: %s", self.path, exc)
            return None
        self._saved = (value, log_id)
        return (value, log_id) if value >= 0 else None

    def save(self, position: int, log_id: str | None = None, *, force: bool = False) -> bool:
        """Store `position` (of the log `log_id`) unless a write happened less than
        `interval` ago."""
        if (position, log_id) == self._saved:
            return False
        now = time.monotonic()
        if not force and now - self._last_write < self.interval:
            return False
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="ascii") as f:
                f.write(f"{position} {log_id}\n" if log_id else f"{position}\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot write checkpoint %s: %s", self.path, exc)
            return False
        self._saved = (position, log_id)
        self._last_write = now
        return True
