"""Benchmark harness fixtures: sizes (``bench_scale``), the firehose process, records,
and the end-of-run summary (only with ``pytest --benchmark``).

Sizes come from one place: ``IOTCOMMUTE_BENCH_SCALE`` if set, else 1 with ``--benchmark``
and a tiny smoke scale without; ``bench_scale`` turns a full-size count into the count for
this run. Every benchmark file in this folder should size itself with
``bench_scale.n(full_size)`` and time itself with ``rounds.measure`` (rounds of
``bench_scale.round_s`` seconds, ``bench_scale.rounds`` of them).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks import firehose, peers, summary

HERE = Path(__file__).parent
# Benchmark files written before benchmarks/ became a package import their siblings by bare
# name (`import firehose`); appended, so the package's own modules are never shadowed.
if str(HERE) not in sys.path:
    sys.path.append(str(HERE))

SMOKE_SCALE = 0.002  # keep equal to the root conftest's SMOKE_SCALE
RECORDS_KEY = pytest.StashKey[list[dict[str, Any]]]()


def _scale(config: pytest.Config) -> firehose.BenchScale:
    env = os.environ.get("IOTCOMMUTE_BENCH_SCALE")
    full = bool(config.getoption("benchmark"))
    # Mirrors bench_scale() in the root conftest (not importable by name: both files are
    # called conftest).
    factor = float(env) if env else 1.0 if full else SMOKE_SCALE
    return firehose.BenchScale(full=full, factor=factor)


@pytest.fixture(scope="session")
def bench_scale(pytestconfig: pytest.Config) -> firehose.BenchScale:
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
    cells = summary.cells_from_metas(metas)
    text = summary.build(cells, records, _scale(config).factor)
    out = summary.write(text, cells, records, HERE / "results")
    terminalreporter.section("iotcommute benchmark summary")
    for line in text.splitlines():
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"(written to {out})")
