# Stub for the compiled tick-batch codec (_speedups/_ticks.pyx); same API as _ticks_py.
from collections.abc import Iterable, Mapping
from typing import Any

MAGIC: bytes
VERSION: int
HEADER_SIZE: int
MAX_TICKS: int
MAX_DEVICES: int
MAX_FIELDS: int
FIELD_TYPES: dict[str, int]

def is_batch(buf: bytes | bytearray | memoryview) -> bool: ...
def decode_batch(buf: bytes | bytearray | memoryview) -> list[dict[str, Any]]: ...
def encode_batch(
    ticks: Iterable[Mapping[str, Any]], types: Mapping[str, str] | None = None
) -> bytes: ...
def decode_batch_rows(
    buf: bytes | bytearray | memoryview,
) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]: ...

DIRECT_STORES: bool

def _use_direct_stores(on: bool) -> None: ...
def text_kind(text: str) -> int: ...
def loads_json(doc: Any) -> Any: ...
