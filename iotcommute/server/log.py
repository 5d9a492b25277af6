"""The append-only telemetry log: positions, a retention cap, tailable cursors, SQLite option.

Positions start at 1 and grow by exactly one per record, so the record at position p sits
at index p - first_position: reads are O(1) to locate. The log is capped at `retain`
records; older ones are trimmed and a cursor that asks for them gets a gap first.

A bulk producer (the firehose) appends a `Block` instead of one Record per position: the
log holds one reference to the block per position (a C-level list repeat, no per-record
Python object), readers that need Records get them materialized on demand, and a cursor
reading every device can ask the block for its pre-encoded frames directly.

Readers wait at the tail on a future that the next append resolves (one future for all
waiters, replaced after each wake-up), so an idle cursor costs nothing.

With `db=path` every record is also written to SQLite (WAL) in batches; a restarted
server reloads the retained records and keeps counting positions from where it stopped.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from .wire import OP_TEXT, dumps, frame_header, loads

logger = logging.getLogger("iotcommute.server.log")

_TICK_PREFIX = b'{"type":"tick","device":'


class Record:
    """One telemetry record. `frame()` is the encoded WebSocket text frame, cached."""

    __slots__ = ("_frame", "_shape", "data", "device", "position", "ts")

    def __init__(self, position: int, device: str, ts: float, data: dict[str, Any]) -> None:
        self.position = position
        self.device = device
        self.ts = ts
        self.data = data
        self._frame: bytes | None = None
        self._shape: tuple[Any, ...] | None = None

    def shape(self) -> tuple[Any, ...]:
        """Field names and value types: records of one shape can share a binary batch."""
        sh = self._shape
        if sh is None:
            d = self.data
            sh = self._shape = (tuple(d), tuple(map(type, d.values())))
        return sh

    def as_tick(self) -> dict[str, Any]:
        return {
            "type": "tick",
            "device": self.device,
            "position": self.position,
            "ts": self.ts,
            "data": self.data,
        }

    def frame(self) -> bytes:
        """The JSON tick as a complete server frame; encoded once, shared by all cursors."""
        f = self._frame
        if f is None:
            payload = dumps(self.as_tick())
            f = self._frame = frame_header(OP_TEXT, len(payload)) + payload
        return f

    def __repr__(self) -> str:
        return f"Record({self.position}, {self.device!r}, {self.ts!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return (self.position, self.device, self.ts, self.data) == (
            other.position,
            other.device,
            other.ts,
            other.data,
        )

    __hash__ = None  # type: ignore[assignment]


class Block:
    """Records start..start+n-1 appended in one call; subclasses say what they hold.

    `record(p)` must always return the same Record for a position (materialized once);
    the frame methods may return None to make the caller fall back to Records.
    """

    __slots__ = ("devices", "n", "start")

    def __init__(self, start: int, n: int, devices: frozenset[str]) -> None:
        self.start = start
        self.n = n
        self.devices = devices  # every device with a record in the block (a superset is fine)

    @property
    def end(self) -> int:
        """One past the last position of the block."""
        return self.start + self.n

    def record(self, position: int) -> Record:
        raise NotImplementedError

    def json_frames(self, a: int, b: int) -> bytes | memoryview | None:
        """The JSON tick frames of positions a..b-1, concatenated, or None."""
        return None

    def binary_frames(self, a: int, b: int) -> list[bytes] | None:
        """Binary tick-batch frames of positions a..b-1, in order, or None."""
        return None


def _wake(w: asyncio.Future[None]) -> None:
    if not w.done():
        w.set_result(None)


class Log:
    """Capped append-only log with positions; optionally durable in SQLite."""

    def __init__(self, retain: int = 100_000, db: str | Path | None = None) -> None:
        if retain < 1:
            raise ValueError("retain must be >= 1")
        self.retain = retain
        self._items: list[Record | Block] = []
        self._blocks = False  # a Block was ever appended: reads must materialize
        self._head = 0  # index of the first retained record in _items
        self._last = 0
        self._waiter: asyncio.Future[None] | None = None
        self._db: sqlite3.Connection | None = None
        self._pending: list[tuple[int, str, float, bytes]] = []
        self.appended = 0  # records appended since start (statistics)
        if db is not None:
            self._open_db(Path(db))

    # -- positions -------------------------------------------------------
    @property
    def last_position(self) -> int:
        """Position of the newest record (0 when nothing was ever appended)."""
        return self._last

    @property
    def first_position(self) -> int:
        """Position of the oldest retained record (last_position + 1 when empty)."""
        items = self._items
        if self._head < len(items):
            r = items[self._head]
            if type(r) is Record:
                return r.position
            return self._last - (len(items) - self._head) + 1
        return self._last + 1

    def __len__(self) -> int:
        return len(self._items) - self._head

    # -- writing ---------------------------------------------------------
    def append(self, device: str, data: dict[str, Any], ts: float | None = None) -> int:
        pos = self._last + 1
        rec = Record(pos, device, time.time() if ts is None else float(ts), data)
        self._last = pos
        items = self._items
        items.append(rec)
        self.appended += 1
        if len(items) - self._head > self.retain:
            self._head += 1
            if self._head > 4096 and self._head * 2 > len(items):
                del items[: self._head]
                self._head = 0
        if self._db is not None:
            self._pending.append((pos, device, rec.ts, dumps(data)))
            if len(self._pending) >= 2000:
                self.flush()
        if self._waiter is not None:
            self._wake()
        return pos

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            loop = w.get_loop()
            if asyncio._get_running_loop() is loop:
                if not w.done():
                    w.set_result(None)
            else:  # appended from another thread (a test): wake the loop safely
                loop.call_soon_threadsafe(_wake, w)

    def _trim(self) -> None:
        items = self._items
        excess = len(items) - self._head - self.retain
        if excess > 0:
            self._head += excess
            if self._head > 4096 and self._head * 2 > len(items):
                del items[: self._head]
                self._head = 0

    def extend_block(self, block: Block) -> int:
        """Append the records of a block (block.start must be last_position + 1): one
        list operation and one wake-up for the whole block. Returns the last position."""
        if block.start != self._last + 1 or block.n < 1:
            raise ValueError("a block must start right after the last position")
        self._items += [block] * block.n
        self._blocks = True
        self._last = block.start + block.n - 1
        self.appended += block.n
        self._trim()
        if self._db is not None:
            rows = self._pending
            for p in range(block.start, block.start + block.n):
                r = block.record(p)
                rows.append((p, r.device, r.ts, dumps(r.data)))
            if len(rows) >= 2000:
                self.flush()
        if self._waiter is not None:
            self._wake()
        return self._last

    def block_after(self, after: int) -> Block | None:
        """The block holding position after + 1, if that record came in a block."""
        if not self._blocks or after >= self._last:
            return None
        first = self.first_position
        if after < first - 1:
            return None
        r = self._items[self._head + (after + 1 - first)]
        return r if type(r) is not Record else None  # type: ignore[return-value]

    def last_record(self) -> Record:
        return self._at(self._last, self._items[-1])

    @staticmethod
    def _at(position: int, r: Record | Block) -> Record:
        return r if isinstance(r, Record) else r.record(position)

    # -- reading ---------------------------------------------------------
    def read(
        self, after: int, devices: Collection[str] | None = None, limit: int = 1000
    ) -> list[Record]:
        """Records with position > after (oldest retained first when trimmed), in order;
        scans as far as needed to find `limit` records of these devices."""
        return self.scan(after, devices, limit, max_scan=len(self._items))[0]

    def scan(
        self,
        after: int,
        devices: Collection[str] | None,
        limit: int,
        max_scan: int = 10_000,
    ) -> tuple[list[Record], int]:
        """Like read(), plus the last position examined, so a filtering cursor that found
        nothing for its devices does not scan the same records again."""
        first = self.first_position
        if after < first - 1:
            after = first - 1
        if after >= self._last:
            return [], after
        start = self._head + (after + 1 - first)
        items = self._items
        blocks = self._blocks
        if devices is None:
            end = min(len(items), start + limit)
            out = items[start:end]
            if blocks:
                at = self._at
                out = [at(p, r) for p, r in enumerate(out, after + 1)]
            return out, after + len(out)  # type: ignore[return-value]
        found: list[Record] = []
        end = min(len(items), start + max_scan)
        i = start
        p = after
        while i < end:
            r = items[i]
            i += 1
            p += 1
            if blocks and type(r) is not Record:
                r = r.record(p)  # type: ignore[union-attr]
            if r.device in devices:  # type: ignore[union-attr]
                found.append(r)  # type: ignore[arg-type]
                if len(found) >= limit:
                    break
        return found, p

    def gap(self, after: int) -> tuple[int, int, int] | None:
        """(from, to, missed) when records after `after` were trimmed, else None."""
        first = self.first_position
        if after < first - 1:
            return after, first - 1, first - 1 - after
        return None

    def tail_future(self) -> asyncio.Future[None]:
        """A future resolved by the next append (shared by every waiter; do not cancel it)."""
        w = self._waiter
        if w is None or w.done():
            w = self._waiter = asyncio.get_running_loop().create_future()
        return w

    async def wait(self, after: int) -> None:
        """Return once a record with position > after exists."""
        while self._last <= after:
            await asyncio.shield(self.tail_future())

    # -- durability ------------------------------------------------------
    def _open_db(self, path: Path) -> None:
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS records (position INTEGER PRIMARY KEY, "
            "device TEXT NOT NULL, ts REAL NOT NULL, data BLOB NOT NULL)"
        )
        db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
        row = db.execute("SELECT v FROM meta WHERE k = 'last_position'").fetchone()
        last = int(row[0]) if row else 0
        mx = db.execute("SELECT MAX(position) FROM records").fetchone()[0]
        if mx is not None:
            last = max(last, int(mx))
        rows = db.execute(
            "SELECT position, device, ts, data FROM records WHERE position > ? ORDER BY position",
            (last - self.retain,),
        ).fetchall()
        self._items = [Record(int(p), str(d), float(t), loads(b)) for p, d, t, b in rows]
        self._head = 0
        self._last = last
        self._db = db
        logger.info("log opened: %s, %d records retained, last position %d", path, len(rows), last)

    def flush(self) -> None:
        """Write pending records and trims to SQLite (no-op for the in-memory log)."""
        db = self._db
        if db is None:
            return
        pending, self._pending = self._pending, []
        db.execute("BEGIN")
        try:
            if pending:
                db.executemany("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?)", pending)
            db.execute("DELETE FROM records WHERE position < ?", (self.first_position,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('last_position', ?)", (self._last,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        if self._db is not None:
            self.flush()
            self._db.close()
            self._db = None
