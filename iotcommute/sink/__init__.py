"""Sinks: where columnar tick batches go (issue 14).

`Sink` (base.py) is the interface: write a batch, commit, ask for the last committed position,
close. Each sink states its delivery guarantee in its docstring. `ParquetSink` (parquet.py,
needs pyarrow: ``pip install 'iotcommute[arrow]'``) writes rolled Parquet files and is its own
checkpoint. It is imported lazily so that `iotcommute.sink` works without pyarrow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Sink

if TYPE_CHECKING:
    from .parquet import ParquetSink

__all__ = ["ParquetSink", "Sink"]


def __getattr__(name: str) -> Any:
    if name == "ParquetSink":
        from .parquet import ParquetSink

        return ParquetSink
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
