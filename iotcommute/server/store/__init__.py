"""Log stores: where the server's log is made durable (see base.LogStore)."""

from __future__ import annotations

from .base import Entry, LogStore, StoreError
from .memory import MemoryStore
from .sqlite import SqliteStore

__all__ = ["Entry", "LogStore", "MemoryStore", "SqliteStore", "StoreError"]
