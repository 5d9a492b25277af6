"""The non-durable store: positions and a random log id, no copy of the records by default."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from .base import Entry, LogStore


class MemoryStore(LogStore):
    """What `iotcommute serve` uses without `--db`.

    The Log's in-memory window is already the only copy a non-durable log can have, so by
    default this store only counts offsets (appends cost nothing: the firehose path). With
    `keep=True` it also keeps the entries (bounded by `trim`), which makes it a complete
    reference implementation of the interface for tests.

    Every `open()` of a new instance draws a new log id: a restarted non-durable server is
    a different log, and clients learn it from `welcome.log`.
    """

    durable = False
    immediate = True

    def __init__(self, *, keep: bool = False) -> None:
        self.keep = keep
        self.keeps_records = keep
        self._log_id = ""
        self._last: dict[int, int] = {}
        self._entries: dict[int, list[Entry]] = {}

    async def open(self) -> str:
        if not self._log_id:
            self._log_id = secrets.token_hex(8)
        return self._log_id

    def last_offset(self, partition: int = 0) -> int:
        return self._last.get(partition, 0)

    async def read(self, partition: int, after: int, limit: int) -> list[Entry]:
        out = [e for e in self._entries.get(partition, ()) if e.offset > after]
        return out[:limit]

    def append_now(self, partition: int, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        last = self._last.get(partition, 0)
        if entries[0].offset <= last:
            raise ValueError(f"offset {entries[0].offset} is not above {last}")
        self._last[partition] = entries[-1].offset
        if self.keep:
            self._entries.setdefault(partition, []).extend(entries)

    async def append(self, partition: int, entries: Sequence[Entry]) -> None:
        self.append_now(partition, entries)

    async def trim(self, partition: int, before: int) -> None:
        kept = self._entries.get(partition)
        if kept:
            i = 0
            while i < len(kept) and kept[i].offset < before:
                i += 1
            del kept[:i]

    async def close(self) -> None:
        pass
