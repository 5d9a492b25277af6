"""The append-only telemetry log: the window of retained records that cursors read.

The log's records live in a `LogStore` (store/base.py); this window holds the retained
ones in memory, and only those the store has made durable ("durable before visible"):
`append` hands a record a position at once, but readers, the tail waiters and the
publisher's `published` ack hear of it only after the store's append returned. With an
asynchronous (durable) store the appends are group-committed: everything that arrived
while the previous batch was being written goes to the store in one call.

Positions are chosen here, above the store's `last_offset`, so they are never reused after
a restart. Stored positions may have holes (a log written by an older release, a store
that skips), so cursors seek by value: `_pos` holds the position of every window item and
reads bisect it, never `position - first`.

A bulk producer (the firehose) appends a `Block` instead of one Record per position: the
window holds one reference to the block per position (a C-level list repeat, no per-record
Python object), readers that need Records get them materialized on demand, and a cursor
reading every device can ask the block for its pre-encoded frames directly.

Trimmed records stay in the list below `_head` for a while (the trim history, bounded), so
a `gap` can say how many records of the *subscribed* devices were lost, and per-device
counters remember what fell out of the history.

Readers wait at the tail on a future that the next visible append resolves (one future for
all waiters, replaced after each wake-up), so an idle cursor costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from array import array
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Collection, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .store import Entry, LogStore, MemoryStore, SqliteStore, StoreError
from .wire import OP_TEXT, dumps, frame_header, loads

logger = logging.getLogger("iotcommute.server.log")
T = TypeVar("T")

#: a callback told when a position became durable (None) or could not be stored (the error)
Committed = Callable[[BaseException | None], None]


class Record:
    """One telemetry record. `frame()` is the encoded WebSocket text frame, cached.

    `djson`, when set, is the JSON text of `data` as validated and stored: the frame is
    built from it, so a record that was accepted can always be served.
    """

    __slots__ = ("_frame", "_shape", "data", "device", "djson", "pid", "position", "ts")

    def __init__(
        self,
        position: int,
        device: str,
        ts: float,
        data: dict[str, Any],
        djson: bytes | None = None,
        pid: str | None = None,
    ) -> None:
        self.position = position
        self.device = device
        self.ts = ts
        self.data = data
        self.djson = djson
        self.pid = pid
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

    def data_json(self) -> bytes:
        dj = self.djson
        if dj is None:
            dj = self.djson = dumps(self.data)
        return dj

    def frame(self) -> bytes:
        """The JSON tick as a complete server frame; encoded once, shared by all cursors.
        Raises (TypeError/ValueError) for data that cannot be encoded."""
        f = self._frame
        if f is None:
            payload = b"".join(
                (
                    b'{"type":"tick","device":',
                    dumps(self.device),
                    b',"position":',
                    str(self.position).encode(),
                    b',"ts":',
                    dumps(self.ts),
                    b',"data":',
                    self.data_json(),
                    b"}",
                )
            )
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

    def device_counts(self, a: int, b: int) -> dict[str, int]:
        """How many records each device has at positions a..b-1 (for gap accounting)."""
        out: dict[str, int] = {}
        for p in range(a, b):
            d = self.record(p).device
            out[d] = out.get(d, 0) + 1
        return out

    def json_frames(self, a: int, b: int) -> bytes | memoryview | None:
        """The JSON tick frames of positions a..b-1, concatenated, or None."""
        return None

    def binary_frames(self, a: int, b: int) -> list[bytes] | None:
        """Binary tick-batch frames of positions a..b-1, in order, or None."""
        return None


class _Positions:
    """The position of every window item: `base + i` while they are dense (no array to
    maintain: the firehose appends millions per second), an array once a hole appears."""

    __slots__ = ("arr", "base", "n")

    def __init__(self) -> None:
        self.base = 0
        self.n = 0
        self.arr: array[int] | None = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        arr = self.arr
        if arr is not None:
            return arr[i]
        if i < 0:
            i += self.n
        return self.base + i

    def span(self, a: int, b: int) -> Sequence[int]:
        arr = self.arr
        return arr[a:b] if arr is not None else range(self.base + a, self.base + b)

    def add_range(self, a: int, b: int) -> None:
        """Positions a..b-1 follow."""
        if self.arr is None:
            if self.n == 0:
                self.base = a
            elif a != self.base + self.n:
                self._sparse()
        if self.arr is not None:
            self.arr.extend(range(a, b))
        self.n += b - a

    def add(self, positions: list[int]) -> None:
        if self.arr is None and positions[-1] - positions[0] == len(positions) - 1:
            self.add_range(positions[0], positions[-1] + 1)
            return
        if self.arr is None:
            self._sparse()
        assert self.arr is not None
        self.arr.extend(positions)
        self.n += len(positions)

    def _sparse(self) -> None:
        self.arr = array("q", range(self.base, self.base + self.n))

    def drop(self, k: int) -> None:
        """The first k items leave."""
        if self.arr is not None:
            del self.arr[:k]
        else:
            self.base += k
        self.n -= k

    def seek(self, after: int, lo: int, hi: int | None = None) -> int:
        """Index of the first position > after in [lo, hi) (bisect by value)."""
        hi = self.n if hi is None else hi
        arr = self.arr
        if arr is not None:
            return bisect_right(arr, after, lo, hi)
        return min(max(lo, after + 1 - self.base), hi)


_new_entry = tuple.__new__  # Entry(...) without the NamedTuple argument handling


def _wake(w: asyncio.Future[None]) -> None:
    if not w.done():
        w.set_result(None)


def _run_now(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine of an immediate store, which never suspends, to completion."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("an immediate store suspended; open the Log with `await log.open()`")


class Log:
    """The retained window of a log partition, fed by its store.

    `Log(retain)` is an in-memory, non-durable log (usable at once, even without an event
    loop); `Log(retain, db=path)` or `Log(retain, store=...)` must be opened with
    `await log.open()` on the server's loop before use.
    """

    def __init__(
        self,
        retain: int = 100_000,
        db: str | Path | None = None,
        *,
        store: LogStore | None = None,
        partition: int = 0,
        history: int | None = None,
        max_pending: int = 500_000,
    ) -> None:
        if retain < 1:
            raise ValueError("retain must be >= 1")
        if store is None:
            store = SqliteStore(db) if db is not None else MemoryStore()
        self.store = store
        self.partition = partition
        self.retain = retain
        #: trimmed records kept for gap accounting
        self.history = max(1024, retain // 4) if history is None else history
        self.max_pending = max_pending
        self.log_id = ""
        self._items: list[Record | Block] = []
        self._pos = _Positions()  # position of every item of _items
        self._blocks = False  # a Block was ever appended: reads must materialize
        self._head = 0  # index of the first retained record in _items
        self._last = 0  # newest visible (durable) position
        self._assigned = 0  # newest position handed out (>= _last)
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # group commit
        self._pending: list[Record] = []
        self._lock = threading.Lock()
        self._writer: asyncio.Task[None] | None = None
        # callbacks waiting for durability, by position (appended in order: a deque; the
        # rare out-of-order one, a duplicate's earlier position, is inserted in place)
        self._committed: deque[tuple[int, Committed]] = deque()
        #: set while the store is failing: appends are refused until it recovers
        self.failure: BaseException | None = None
        self._recovering: asyncio.Task[None] | None = None
        # publish ids: (device, pid) -> (first, last position), in order of the last position
        self._ids: dict[tuple[str, str], tuple[int, int]] = {}
        self._id_order: deque[tuple[int, tuple[str, str]]] = deque()
        # what fell out of the trim history: device -> [count, highest position]
        self._forgotten: dict[str, list[int]] = {}
        self._forgotten_all = [0, 0, 0]  # records, lowest and highest position
        self._known_from = 0  # lowest position this window ever held (0: none yet)
        self._trimmed_to = 0  # the store was told to drop positions below this
        self.appended = 0  # records made visible since start (statistics)
        self.opened = False
        if store.immediate and not store.durable:
            self._open_loaded(_run_now(store.open()), _run_now(self._read_all(0)))

    # -- opening -----------------------------------------------------------------------
    async def open(self) -> None:
        """Open the store: recover the position counter, load the retained records and
        the publish ids that go with them. Idempotent."""
        self._loop = asyncio.get_running_loop()
        if self.opened:
            return
        log_id = await self.store.open()
        entries = await self._read_all(0)
        self._open_loaded(log_id, entries)
        logger.info(
            "log opened: %r, %d records retained, last position %d",
            self.store,
            len(self),
            self._last,
        )

    async def _read_all(self, after: int) -> list[Entry]:
        out: list[Entry] = []
        while True:
            chunk = await self.store.read(self.partition, after, 10_000)
            if not chunk:
                return out
            out += chunk
            keep = self.retain + self.history  # the newest trimmed ones seed the history
            if len(out) > keep:
                del out[: len(out) - keep]
            after = chunk[-1].offset

    def _open_loaded(self, log_id: str, entries: list[Entry]) -> None:
        self.log_id = log_id
        last = max(self.store.last_offset(self.partition), self._last)
        self._add_entries(entries)
        self._last = self._assigned = max(last, self._last)
        if not self._known_from:  # nothing retained: what came before is unknown
            self._known_from = self._last + 1
        self.opened = True

    def _add_entries(self, entries: list[Entry]) -> None:
        recs = []
        for e in entries:
            if e.offset <= self._last:
                continue
            try:
                data = loads(e.data)
                if not isinstance(data, dict):
                    raise ValueError("data is not an object")
            except ValueError:
                # Written by an older release that did not validate: never served.
                logger.error("stored record %d cannot be decoded; it is not served", e.offset)
                continue
            recs.append(Record(e.offset, e.device, e.ts, data, e.data, e.pid))
            if e.pid is not None:  # the dedup window comes back with the records
                got = self._ids.get((e.device, e.pid))
                first = got[0] if got is not None and got[1] == e.offset - 1 else e.offset
                self._remember(e.device, e.pid, first, e.offset)
        if recs:
            self._visible(recs)

    # -- positions ---------------------------------------------------------------------
    @property
    def last_position(self) -> int:
        """Position of the newest visible record (0 when nothing was ever appended)."""
        return self._last

    @property
    def first_position(self) -> int:
        """Position of the oldest retained record (last_position + 1 when empty)."""
        if self._head < len(self._items):
            return self._pos[self._head]
        return self._last + 1

    @property
    def durable(self) -> bool:
        return self.store.durable

    def __len__(self) -> int:
        return len(self._items) - self._head

    @property
    def accepts_blocks(self) -> bool:
        """`extend_block` works: the in-memory log, whose window is the only copy."""
        return self.store.immediate and not self.store.keeps_records

    def pending(self) -> int:
        """Records handed a position but not yet durable."""
        return len(self._pending)

    # -- writing -----------------------------------------------------------------------
    def append(
        self,
        device: str,
        data: dict[str, Any],
        ts: float | None = None,
        *,
        djson: bytes | None = None,
        pid: str | None = None,
    ) -> int:
        """Append one record; returns its position (visible once durable).

        Raises StoreError while the store is failing or too far behind. Callable from
        another thread (tests) when the log is in memory.
        """
        if self.failure is not None or len(self._pending) >= self.max_pending:
            raise StoreError("the log store is unavailable or too far behind")
        t = time.time() if ts is None else float(ts)
        store = self.store
        if not store.immediate:
            return self.append_many(device, [(t, data, djson)], pid)[1]
        pos = self._assigned = self._assigned + 1
        rec = Record(pos, device, t, data, djson, pid)
        if pid is not None:
            self._remember(device, pid, pos, pos)
        if store.keeps_records:
            store.append_now(self.partition, [self._entry(rec)])
        self._visible([rec])
        return pos

    def append_many(
        self,
        device: str,
        items: Sequence[tuple[float, dict[str, Any], bytes | None]],
        pid: str | None = None,
    ) -> tuple[int, int]:
        """Append (ts, data, djson) records of one device atomically: the store gets them
        in one call. With `pid` (the publish idempotency key) the records are remembered
        under (device, pid), see `find_publish`. Returns the first and last position."""
        if self.failure is not None:
            raise StoreError("the log store is unavailable")
        if not items:
            raise ValueError("nothing to append")
        if len(self._pending) >= self.max_pending:
            raise StoreError("the log store is too far behind")
        store = self.store
        with self._lock:  # positions and the pending batch (appends from a test's thread)
            first = self._assigned + 1
            recs = [
                Record(p, device, ts, data, dj, pid)
                for p, (ts, data, dj) in enumerate(items, first)
            ]
            last = self._assigned = recs[-1].position
            if pid is not None:
                self._remember(device, pid, first, last)
            if not store.immediate:
                self._pending += recs
        if store.immediate:
            if store.keeps_records:
                store.append_now(self.partition, [self._entry(r) for r in recs])
            self._visible(recs)
        elif self._writer is None:
            self._schedule()
        return first, last

    @staticmethod
    def _entry(r: Record) -> Entry:
        dj = r.djson
        if dj is None:
            dj = r.djson = dumps(r.data)
        return _new_entry(Entry, (r.position, r.device, r.ts, dj, r.pid))

    def _remember(self, device: str, pid: str, first: int, last: int) -> None:
        key = (device, pid)
        self._ids[key] = (first, last)
        self._id_order.append((last, key))

    def find_publish(self, device: str, pid: str) -> tuple[int, int] | None:
        """(first, last) position of a publish already stored (or being stored) under this
        id while its records are retained; None otherwise."""
        return self._ids.get((device, pid))

    def when_durable(self, position: int, callback: Committed) -> None:
        """Call `callback(None)` once `position` is durable and visible (now if it is), or
        `callback(error)` if the store failed before that."""
        if position <= self._last:
            callback(None)
        elif self.failure is not None:
            callback(self.failure)
        else:
            c = self._committed
            if not c or c[-1][0] <= position:
                c.append((position, callback))
            else:
                i = len(c)
                while i > 0 and c[i - 1][0] > position:
                    i -= 1
                c.insert(i, (position, callback))

    def _schedule(self) -> None:
        if self._writer is not None:
            return
        loop = self._loop
        if loop is None:
            raise RuntimeError("a durable Log must be opened with `await log.open()` first")
        if asyncio._get_running_loop() is loop:
            self._writer = loop.create_task(self._write_loop())
        else:  # appended from another thread (a test): start the writer on the loop
            loop.call_soon_threadsafe(self._start_writer)

    def _start_writer(self) -> None:
        if self._writer is None and self._pending:
            self._schedule()

    async def _write_loop(self) -> None:
        """Group commit: hand everything pending to the store, make it visible, repeat."""
        try:
            while self._pending and self.failure is None:
                with self._lock:
                    batch, self._pending = self._pending, []
                try:
                    await self.store.append(self.partition, [self._entry(r) for r in batch])
                except asyncio.CancelledError:
                    self._fail(StoreError("the log was closed while writing"), batch)
                    raise
                except Exception as exc:
                    self._fail(exc, batch)
                    return
                self._visible(batch)
                first = self.first_position
                if first > self._trimmed_to:
                    self._trimmed_to = first
                    await self.store.trim(self.partition, first)
        finally:
            self._writer = None

    def _fail(self, exc: BaseException, batch: list[Record]) -> None:
        with self._lock:
            lost = batch + self._pending
            self._pending = []
        logger.error(
            "log store %r failed; %d records (positions %d..%d) not stored, publishes are "
            "refused until it recovers: %s",
            self.store,
            len(lost),
            lost[0].position if lost else 0,
            lost[-1].position if lost else 0,
            exc,
        )
        self.failure = exc
        for r in lost:
            if r.pid is not None and self._ids.get((r.device, r.pid), (0, 0))[1] == r.position:
                del self._ids[(r.device, r.pid)]
        waiting, self._committed = self._committed, deque()
        for _, cb in waiting:
            self._call(cb, exc)
        loop = self._loop
        if loop is not None and not loop.is_closed() and self._recovering is None:
            self._recovering = loop.create_task(self._recover())

    async def _recover(self, delay: float = 0.5) -> None:
        """Re-open the store with backoff; what it holds beyond the window becomes visible
        (a batch whose commit failed may have been stored after all)."""
        try:
            while True:
                await asyncio.sleep(delay)
                try:
                    await self.store.open()
                    entries = await self._read_all(self._last)
                except Exception as exc:
                    logger.error("log store still unavailable: %s", exc)
                    delay = min(delay * 2, 10.0)
                    continue
                self._add_entries(entries)
                # Positions the failed batch took but the store does not hold were never
                # visible, so they may be handed out again; the store's mark may not.
                self._last = self._assigned = max(
                    self._last, self.store.last_offset(self.partition)
                )
                self.failure = None
                logger.warning("log store %r available again (position %d)", self.store, self._last)
                return
        finally:
            self._recovering = None

    @staticmethod
    def _call(cb: Committed, arg: BaseException | None) -> None:
        try:
            cb(arg)
        except Exception:
            logger.exception("commit callback failed")

    def _visible(self, recs: list[Record]) -> None:
        """Durable records join the window: readers, tail waiters and acks hear of them."""
        items = self._items
        if not self._known_from:
            self._known_from = recs[0].position
        items += recs
        self._pos.add([r.position for r in recs])
        last = recs[-1].position
        if last > self._last:
            self._last = last
        if last > self._assigned:
            self._assigned = last
        self.appended += len(recs)
        self._trim()
        committed = self._committed
        while committed and committed[0][0] <= last:
            self._call(committed.popleft()[1], None)
        if self._waiter is not None:
            self._wake()

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
        if excess <= 0:
            return
        self._head += excess
        first = self._pos[self._head] if self._head < len(items) else self._last + 1
        order = self._id_order
        while order and order[0][0] < first:
            _, key = order.popleft()
            got = self._ids.get(key)
            if got is not None and got[1] < first:
                del self._ids[key]
        if self._head > self.history + 4096:
            drop = self._head - self.history
            self._forget(0, drop)
            del items[:drop]
            self._pos.drop(drop)
            self._head -= drop
        if self.store.immediate and self.store.keeps_records:
            _run_now(self.store.trim(self.partition, first))

    def _forget(self, i: int, j: int) -> None:
        """Items i..j-1 leave the trim history: keep their per-device counts."""
        counts = self._counts(i, j, None)
        fa = self._forgotten_all
        if j > i:
            fa[0] += j - i
            fa[1] = self._pos[i] if fa[1] == 0 else fa[1]
            fa[2] = self._pos[j - 1]
        forgotten = self._forgotten
        for d, (n, top) in counts.items():
            f = forgotten.get(d)
            if f is None:
                forgotten[d] = [n, top]
            else:
                f[0] += n
                f[1] = max(f[1], top)

    def _counts(self, i: int, j: int, devices: Collection[str] | None) -> dict[str, list[int]]:
        """device -> [records, highest position] among items i..j-1 (of `devices`)."""
        items, pos = self._items, self._pos
        out: dict[str, list[int]] = {}
        k = i
        while k < j:
            it = items[k]
            p = pos[k]
            if type(it) is Record:
                d = it.device
                if devices is None or d in devices:
                    c = out.get(d)
                    if c is None:
                        out[d] = [1, p]
                    else:
                        c[0] += 1
                        c[1] = p
                k += 1
                continue
            blk: Block = it  # type: ignore[assignment]
            n = min(blk.end - p, j - k)
            if devices is None or not blk.devices.isdisjoint(devices):
                for d, c2 in blk.device_counts(p, p + n).items():
                    if devices is None or d in devices:
                        c = out.get(d)
                        if c is None:
                            out[d] = [c2, p + n - 1]
                        else:
                            c[0] += c2
                            c[1] = p + n - 1
            k += n
        return out

    def extend_block(self, block: Block) -> int:
        """Append the records of a block (block.start must be last_position + 1): one
        list operation and one wake-up for the whole block. Returns the last position.
        For the in-memory log only (the firehose)."""
        if block.start != self._assigned + 1 or block.n < 1:
            raise ValueError("a block must start right after the last position")
        if not self.accepts_blocks:
            raise ValueError("blocks are for the in-memory log")
        if not self._known_from:
            self._known_from = block.start
        self._items += [block] * block.n
        self._pos.add_range(block.start, block.end)
        self._blocks = True
        self._last = self._assigned = block.end - 1
        self.appended += block.n
        self._trim()
        if self._waiter is not None:
            self._wake()
        return self._last

    def block_after(self, after: int) -> Block | None:
        """The block holding the first record after `after`, if that record came in a block."""
        if not self._blocks or after >= self._last:
            return None
        i = self._pos.seek(after, self._head)
        if i >= len(self._items):
            return None
        r = self._items[i]
        return r if type(r) is not Record else None  # type: ignore[return-value]

    def last_record(self) -> Record:
        return self._at(self._pos[-1], self._items[-1])

    @staticmethod
    def _at(position: int, r: Record | Block) -> Record:
        return r if isinstance(r, Record) else r.record(position)

    # -- reading -----------------------------------------------------------------------
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
        if after >= self._last:
            return [], after
        items, pos = self._items, self._pos
        start = pos.seek(after, self._head)
        if start >= len(items):  # a hole at the tail (a record that could not be loaded)
            return [], self._last
        blocks = self._blocks
        if devices is None:
            end = min(len(items), start + limit)
            out = items[start:end]
            if blocks:
                at = self._at
                out = [at(p, r) for p, r in zip(pos.span(start, end), out)]
            return out, pos[end - 1]  # type: ignore[return-value]
        found: list[Record] = []
        end = min(len(items), start + max_scan)
        i = start
        while i < end:
            r = items[i]
            i += 1
            if blocks and type(r) is not Record:
                r = r.record(pos[i - 1])  # type: ignore[union-attr]
            if r.device in devices:  # type: ignore[union-attr]
                found.append(r)  # type: ignore[arg-type]
                if len(found) >= limit:
                    break
        return found, pos[i - 1]

    def gap(
        self, after: int, devices: Collection[str] | None = None
    ) -> tuple[int, int, int] | None:
        """(from, to, missed) when records of `devices` (None: all) with positions after
        `after` were trimmed; None otherwise (also when only other devices lost records).

        `missed` counts the lost records of these devices exactly while they are in the
        trim history; for a cursor older than the history it adds every forgotten record
        of these devices (an upper bound)."""
        first = self.first_position
        if after >= first - 1:
            return None
        i = self._pos.seek(after, 0, self._head)
        missed = sum(c[0] for c in self._counts(i, self._head, devices).values())
        unknown = 0
        if i == 0 and after < self._known_from - 1:
            # Before anything this server remembers (trimmed before a restart, say): the
            # count is an upper bound, and a gap is reported since loss cannot be ruled out.
            unknown = self._known_from - 1 - after
            missed += unknown
        if i == 0 and self._forgotten_all[0]:
            n_all, lo, hi = self._forgotten_all
            forgotten = self._forgotten
            if n_all == hi - lo + 1 and (devices is None or all(d in devices for d in forgotten)):
                # Dense and all of it subscribed: exact.
                missed += max(0, hi - max(after, lo - 1))
            else:
                for d, (n, top) in forgotten.items():
                    if top > after and (devices is None or d in devices):
                        missed += n
        if missed == 0:
            return None
        return after, first - 1, missed

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

    # -- closing -----------------------------------------------------------------------
    async def drain(self) -> None:
        """Wait until every appended record is durable (or the store failed)."""
        while self._writer is not None or (self._pending and self.failure is None):
            w = self._writer
            if w is None:
                self._schedule()
                continue
            await asyncio.shield(w)

    async def close(self) -> None:
        if self._recovering is not None:
            self._recovering.cancel()
        if self.opened:
            await self.drain()
        await self.store.close()
        self.opened = False

    def __repr__(self) -> str:
        return f"Log({self.store!r}, last={self._last}, retained={len(self)})"
