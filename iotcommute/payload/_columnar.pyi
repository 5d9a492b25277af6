# Stub for the compiled columnar parser (_speedups/_columnar.pyx); twin: columnar._parse_py.
from collections.abc import Callable
from typing import Any

def parse_columns(
    buf: bytes, make_layout: Callable[[bytes, tuple[str, ...]], Any]
) -> tuple[tuple[str, ...], Any, int, int, int | None, int | None]: ...
def gather_rows(
    batches: list[Any], codes: bytes, alloc: Callable[[int], Any] | None = None
) -> tuple[list[str], Any, list[Any]]: ...
