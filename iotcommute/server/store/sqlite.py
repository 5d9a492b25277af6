"""The durable store of `iotcommute serve --db PATH`: SQLite in WAL mode, one transaction per batch.

Settings, and why:
- `journal_mode=WAL`: a commit appends to the write-ahead log instead of rewriting pages,
  readers never block the writer, and a crash leaves either the whole transaction or none.
- `synchronous=FULL`: the WAL is fsynced at every commit. With NORMAL (the old setting)
  a commit is safe against a process crash but not against power loss or a kernel crash,
  and the server acknowledges a publish as soon as its batch committed, so the ack would
  promise more than the disk holds. The fsync is paid once per batch (group commit: the
  `Log` hands over everything that arrived while the previous batch was written), which
  keeps the append rate high under load.
- Plain `INSERT`, never `INSERT OR REPLACE`: an offset that is already stored is an error
  (a position with two contents), not something to overwrite silently.
- All SQLite calls run on one dedicated thread, so an fsync never stalls the event loop.

Schema: `records` (partition 0; the table of the earlier releases, plus a `pid` column
added on open) or `records_p<N>` for other partitions, keyed by position;
`meta` holds `log_id` and the highest position ever stored per partition, so positions
continue above it even when retention deleted every record.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .base import Entry, LogStore, StoreError

logger = logging.getLogger("iotcommute.server.store")
T = TypeVar("T")


def _table(partition: int) -> str:
    if partition < 0:
        raise ValueError("partitions are numbered from 0")
    return "records" if partition == 0 else f"records_p{int(partition)}"


def _meta_key(partition: int) -> str:
    return "last_position" if partition == 0 else f"last_position:{int(partition)}"


class SqliteStore(LogStore):
    """SQLite file at `path`; see the module docstring for the settings."""

    durable = True

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # Fail here, not later on the loop, for a path SQLite cannot open (a missing
        # directory, a file that is not a database): `iotcommute serve` reports it in a line.
        try:
            probe = sqlite3.connect(str(self.path))
            try:
                probe.execute("PRAGMA schema_version").fetchone()
            finally:
                probe.close()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        self._db: sqlite3.Connection | None = None
        self._exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iotcommute-sqlite")
        self._last: dict[int, int] = {}
        self._tables: set[str] = set()
        self._trim: dict[int, int] = {}
        self._log_id = ""

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._exec, fn, *args)

    # -- opening -----------------------------------------------------------------------
    async def open(self) -> str:
        try:
            await self._run(self._open_sync)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        return self._log_id

    def _open_sync(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None
        db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v NOT NULL)")
            self._tables = set()
            self._ensure_table(db, 0)
            for (name,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'records_p%'"
            ).fetchall():
                self._tables.add(str(name))
            row = db.execute("SELECT v FROM meta WHERE k = 'log_id'").fetchone()
            if row is None:
                log_id = secrets.token_hex(8)
                db.execute("INSERT INTO meta VALUES ('log_id', ?)", (log_id,))
            else:
                log_id = str(row[0])
            self._last = {}
            for table in self._tables:
                part = 0 if table == "records" else int(table[len("records_p") :])
                row = db.execute("SELECT v FROM meta WHERE k = ?", (_meta_key(part),)).fetchone()
                last = int(row[0]) if row else 0
                mx = db.execute(f"SELECT MAX(position) FROM {table}").fetchone()[0]
                if mx is not None:
                    last = max(last, int(mx))
                self._last[part] = last
        except BaseException:
            db.close()
            raise
        self._db = db
        self._log_id = log_id
        logger.info("store opened: %s (last position %d)", self.path, self._last.get(0, 0))

    def _ensure_table(self, db: sqlite3.Connection, partition: int) -> str:
        table = _table(partition)
        if table in self._tables:
            return table
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (position INTEGER PRIMARY KEY, "
            "device TEXT NOT NULL, ts REAL NOT NULL, data BLOB NOT NULL, pid TEXT)"
        )
        cols = {str(r[1]) for r in db.execute(f"PRAGMA table_info({table})").fetchall()}
        if "pid" not in cols:  # a log written by an earlier release
            db.execute(f"ALTER TABLE {table} ADD COLUMN pid TEXT")
        self._tables.add(table)
        return table

    def last_offset(self, partition: int = 0) -> int:
        return self._last.get(partition, 0)

    # -- reading -----------------------------------------------------------------------
    async def read(self, partition: int, after: int, limit: int) -> list[Entry]:
        rows: list[Entry] = await self._run(self._read_sync, partition, after, limit)
        return rows

    def _read_sync(self, partition: int, after: int, limit: int) -> list[Entry]:
        db = self._conn()
        table = _table(partition)
        if table not in self._tables:
            return []
        rows = db.execute(
            f"SELECT position, device, ts, data, pid FROM {table} "
            "WHERE position > ? ORDER BY position LIMIT ?",
            (after, limit),
        ).fetchall()
        return [Entry(int(p), str(d), float(t), bytes(b), pid) for p, d, t, b, pid in rows]

    # -- writing -----------------------------------------------------------------------
    async def append(self, partition: int, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        last = self._last.get(partition, 0)
        if entries[0].offset <= last:
            raise StoreError(f"offset {entries[0].offset} is not above the stored {last}")
        await self._run(self._append_sync, partition, entries)
        self._last[partition] = entries[-1].offset

    def _append_sync(self, partition: int, entries: Sequence[Entry]) -> None:
        db = self._conn()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                table = self._ensure_table(db, partition)
                db.executemany(f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?)", entries)
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                    (_meta_key(partition), entries[-1].offset),
                )
                before = self._trim.pop(partition, None)
                if before is not None:
                    db.execute(f"DELETE FROM {table} WHERE position < ?", (before,))
                db.execute("COMMIT")
            except BaseException:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write failed: {exc}") from exc

    async def trim(self, partition: int, before: int) -> None:
        # Folded into the next append's transaction (or applied at close): deleting the
        # trimmed rows costs no extra fsync.
        if before > self._trim.get(partition, 0):
            self._trim[partition] = before

    def _flush_trims_sync(self) -> None:
        db = self._db
        if db is None or not self._trim:
            return
        try:
            db.execute("BEGIN IMMEDIATE")
            for part, before in self._trim.items():
                table = _table(part)
                if table in self._tables:
                    db.execute(f"DELETE FROM {table} WHERE position < ?", (before,))
            db.execute("COMMIT")
            self._trim.clear()
        except sqlite3.Error:
            logger.warning("could not apply the retention trim on close", exc_info=True)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the store is not open")
        return self._db

    async def close(self) -> None:
        await self._run(self._close_sync)
        self._exec.shutdown(wait=True)

    def _close_sync(self) -> None:
        self._flush_trims_sync()
        if self._db is not None:
            self._db.close()
            self._db = None

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"
