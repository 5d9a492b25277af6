"""Plain `pytest` keeps the benchmark smoke runs to one summary line (no result tables)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(120)
def test_smoke_mode_prints_one_line_instead_of_tables() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "benchmarks/test_bench_payload.py",
            "-k",
            "test_json_tick_decode and orjson",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "benchmarks: 1 smoke runs (one round at scale" in out, out
    assert "benchmark:" not in out and "Min " not in out, out  # pytest-benchmark's table
    assert len(out.splitlines()) <= 6, out
    assert max(len(line) for line in out.splitlines()) <= 120, out
