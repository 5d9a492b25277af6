"""The log store interface: what the server's `Log` needs from a durable engine.

The log is a set of *partitions* (the reference server uses partition 0 only), each an
append-only sequence of records addressed by an integer *offset* (the protocol's
"position"). The `Log` keeps the retained records in memory for its cursors and asks the
store for three things only:

- ``open()``: the log's identity and, per partition, the last offset ever stored
  (``last_offset``), so positions continue after a restart and are never handed out twice;
  the retained records are loaded with ``read()``.
- ``append(partition, entries)``: make a batch durable, all or nothing. The `Log` chooses
  the offsets and calls ``append`` for one partition at a time, never concurrently. It
  hands them out contiguously: a call's first offset is ``last_offset + 1`` and the
  entries follow one by one (after a failed call, the re-``open()`` says where to go on),
  so a store may write them as given (SQLite) or, if its engine numbers records itself,
  check them (e.g. a JetStream expected-last-sequence header) and fail on a mismatch.
  Readers must still accept holes (``read`` seeks by value): an older log may have them. Only
  after ``append`` returned does anyone hear of these records (durable before visible).
  An exception means "not known to be stored": the `Log` stops acknowledging and calls
  ``open()`` again before it appends anything else.
- ``trim(partition, before)``: records below ``before`` are no longer needed (retention).

A batch is the group commit unit: the `Log` collects the appends that arrive while the
previous batch is being written and hands them over in one call, so a store should pay
its expensive step (fsync, a round trip) once per call, not once per entry.

Stores that commit without waiting (``immediate = True``: the in-memory store) also offer
``append_now``, which the `Log` calls synchronously so the non-durable hot path (the
firehose benchmark) pays no task switch per record.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import NamedTuple

from ...exceptions import ServerError


class StoreError(ServerError):
    """The log store failed; what was being appended is not known to be durable."""


class Entry(NamedTuple):
    """One stored record.

    `data` is the UTF-8 JSON text of the record's data object, exactly as it is served
    (the `Log` validated that it re-encodes). `pid` is the publish idempotency key
    (see `Log.append`), stored with the record so the duplicate check survives a restart;
    None for records published without an id. The records of one publish batch share it.
    """

    offset: int
    device: str
    ts: float
    data: bytes
    pid: str | None = None


class LogStore(abc.ABC):
    """A durable (or not) home for log partitions; see the module docstring for the contract.

    Methods are called from the server's event loop; a store that blocks (SQLite's fsync)
    runs that work off the loop itself.
    """

    #: records survive a crash of the process (a durable log keeps its `log_id`)
    durable: bool = False
    #: `append_now` is available and commits synchronously
    immediate: bool = False
    #: False for a store that keeps no copy of the records (the default in-memory store:
    #: the Log's window is the only copy); the Log then never hands it any
    keeps_records: bool = True

    @abc.abstractmethod
    async def open(self) -> str:
        """Open (or re-open after a failure) and return the log's identity.

        A durable store returns the same id across restarts; a store whose contents are
        new (a non-durable store, a new file) draws a fresh random id. After `open`,
        `last_offset` reflects what is durable.
        """

    @abc.abstractmethod
    def last_offset(self, partition: int = 0) -> int:
        """The highest offset ever stored in this partition (0 if none), even if trimmed."""

    @abc.abstractmethod
    async def read(self, partition: int, after: int, limit: int) -> list[Entry]:
        """Up to `limit` stored entries with offset > `after`, ascending (seek by value:
        holes in the offsets are fine)."""

    @abc.abstractmethod
    async def append(self, partition: int, entries: Sequence[Entry]) -> None:
        """Store the entries durably, all or none; raise StoreError (or any exception) if
        that cannot be guaranteed. Offsets are ascending and above `last_offset`."""

    def append_now(self, partition: int, entries: Sequence[Entry]) -> None:
        """Synchronous `append`, for stores with `immediate = True` only."""
        raise NotImplementedError(f"{type(self).__name__} cannot append synchronously")

    @abc.abstractmethod
    async def trim(self, partition: int, before: int) -> None:
        """Entries with offset < `before` may be dropped (never the `last_offset` mark)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the engine; pending work is already durable (the Log waits for it)."""
