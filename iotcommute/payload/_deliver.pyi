# Stub for the compiled raw delivery loop (_speedups/_deliver.pyx); same API as _deliver_py.
from collections.abc import Callable
from typing import Any

def deliver_data(
    events: list[Any],
    start: int,
    on_message: Callable[[Any, Any], Any],
    owner: Any,
    failed: Callable[[str, Exception], Any],
    stop: list[bool] | None,
) -> tuple[int, Any]: ...
