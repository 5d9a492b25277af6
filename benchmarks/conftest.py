"""Benchmark harness fixtures: sizes (``bench_scale``), the firehose process, records,
and the end-of-run summary (only with ``pytest --benchmark``).

Sizes come from one place: the root conftest resolves ``IOTCOMMUTE_BENCH_SCALE`` (1 with
``--benchmark``, a tiny smoke scale without) and ``bench_scale`` turns a full-size count
into the count for this run. Every benchmark file in this folder should size itself with
``bench_scale.n(full_size)`` and run ``bench_scale.rounds`` rounds.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import firehose  # noqa: E402
import peers  # noqa: E402
import summary  # noqa: E402

RECORDS_KEY = pytest.StashKey[list[dict[str, Any]]]()


@dataclass(frozen=True)
class BenchScale:
    """How big this run is. ``full`` is ``--benchmark``; ``factor`` scales every size."""

    full: bool
    factor: float

    @property
    def rounds(self) -> int:
        return 3 if self.full else 1

    @property
    def warmup(self) -> int:
        return 1 if self.full else 0

    def n(self, full_size: int, minimum: int = 2) -> int:
        """The count to use for something that is ``full_size`` at scale 1."""
        return max(minimum, round(full_size * self.factor))


def _scale(config: pytest.Config) -> BenchScale:
    return BenchScale(
        full=bool(config.getoption("benchmark")),
        factor=float(os.environ.get("IOTCOMMUTE_BENCH_SCALE") or "1"),
    )


@pytest.fixture(scope="session")
def bench_scale(pytestconfig: pytest.Config) -> BenchScale:
    return _scale(pytestconfig)


@pytest.fixture(scope="session")
def firehose_server() -> Iterator[firehose.FirehoseProcess]:
    """One firehose/sink/echo process for the whole session (its own GIL)."""
    proc = firehose.FirehoseProcess()
    try:
        yield proc
    finally:
        peers.close_workers()
        proc.close()


@pytest.fixture
def bench_record(pytestconfig: pytest.Config) -> Any:
    """Append a result that is not a timing (latency percentiles, memory) to the summary."""
    records = pytestconfig.stash.setdefault(RECORDS_KEY, [])
    return records.append


def pytest_configure(config: pytest.Config) -> None:
    config.stash[RECORDS_KEY] = []


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not config.getoption("benchmark"):
        return
    session = getattr(config, "_benchmarksession", None)
    metas = list(session.benchmarks) if session is not None else []
    records = config.stash.get(RECORDS_KEY, [])
    if not metas and not records:
        return
    text = summary.build(metas, records, _scale(config).factor)
    out = summary.write(text, metas, records, HERE / "results")
    terminalreporter.section("iotcommute benchmark summary")
    for line in text.splitlines():
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"(written to {out})")
