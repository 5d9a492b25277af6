"""Repository-wide pytest options.

``pytest --benchmark`` runs the benchmark suite (benchmarks/) at full size; plain
``pytest`` runs it as a smoke check: tiny sizes, one round, every run still verifying its
message counts. The option lives here, in the root conftest, because pytest only accepts
command-line options registered by conftests it loads before parsing arguments.

The size is resolved in one place: ``bench_scale()`` below (used by the ``bench_scale``
fixture in benchmarks/conftest.py). An explicit ``IOTCOMMUTE_BENCH_SCALE`` wins, else 1
with ``--benchmark`` and ``SMOKE_SCALE`` without. With ``--benchmark`` and no explicit
value, ``IOTCOMMUTE_BENCH_SCALE=1`` is also exported for files that read the variable at
import time (in smoke mode they keep their own small default).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SMOKE_SCALE = 0.002


def pytest_addoption(parser: pytest.Parser) -> None:
    # "--benchmark" is distinct from pytest-benchmark's "--benchmark-*" options: pytest's
    # parser disables abbreviations, so neither can shadow the other.
    parser.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="run benchmarks/ at full size (IOTCOMMUTE_BENCH_SCALE scales it) and write "
        "benchmarks/results/summary.md; without it benchmarks run as a tiny smoke check",
    )


def bench_scale(config: pytest.Config) -> float:
    """The size factor of this run (1 = full size)."""
    env = os.environ.get("IOTCOMMUTE_BENCH_SCALE")
    if env:
        return float(env)
    return 1.0 if config.getoption("benchmark") else SMOKE_SCALE


def pytest_configure(config: pytest.Config) -> None:
    full = bool(config.getoption("benchmark"))
    if full and not os.environ.get("IOTCOMMUTE_BENCH_SCALE"):
        os.environ["IOTCOMMUTE_BENCH_SCALE"] = "1"
    if not full and hasattr(config.option, "benchmark_min_rounds"):
        # Smoke mode: one round and no calibration time, but keep stats (tests may read
        # benchmark.stats), so this is "minimal rounds" rather than --benchmark-disable.
        # Runs before pytest-benchmark's own (trylast) pytest_configure reads them.
        config.option.benchmark_min_rounds = 1
        config.option.benchmark_max_time = 0.0
        config.option.benchmark_warmup = False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """`pytest --benchmark` alone runs benchmarks/ only (explicit paths are honoured)."""
    if not config.getoption("benchmark"):
        return None
    if config.args_source != pytest.Config.ArgsSource.TESTPATHS:
        return None
    tests = config.rootpath / "tests"
    if collection_path == tests or tests in collection_path.parents:
        return True
    return None
