"""The sink interface: a destination for TickBatches that knows how far it got."""

from __future__ import annotations

import abc
from types import TracebackType

from ..payload.columnar import TickBatch

__all__ = ["Sink"]


class Sink(abc.ABC):
    """Where a stream of TickBatches goes.

    The contract: batches arrive in increasing position order; `write` may buffer; `commit`
    makes everything written so far durable (as the sink defines it) and returns
    `last_committed()`; `last_committed()` is the highest position the sink guarantees to
    hold, or None when it holds nothing, and is where a consumer resumes after a restart
    (subscribe with ``from: last_committed()``, or 0 if None: ``from: N`` delivers the
    records after N). Rows at or below a position the sink already holds must be dropped by
    the sink, so a replayed stream is harmless.
    Every subclass states in its docstring which guarantee it gives (at-most-once,
    at-least-once or exactly-once) and under which failures.
    """

    @abc.abstractmethod
    def write(self, batch: TickBatch) -> None:
        """Accept one batch (it may be buffered until the next commit)."""

    @abc.abstractmethod
    def commit(self) -> int | None:
        """Make every accepted row durable; return the last committed position."""

    @abc.abstractmethod
    def last_committed(self) -> int | None:
        """The highest position durably held, None if none: the resume point."""

    @abc.abstractmethod
    def close(self) -> None:
        """Commit what is buffered and release the sink's resources."""

    def __enter__(self) -> Sink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
