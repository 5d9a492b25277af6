"""ParquetSink under SIGKILL: exactly once into files across crashes.

A child process streams a generated sequence of positions (batches of random sizes, ticks
encoded, decoded into TickBatches) into a ParquetSink with small rolls, resuming from
`last_committed()` and replaying a few hundred positions before it each time, as a client
resuming a stream might. The test kills it with SIGKILL six times, each at a random moment
after 1-3 files of that run (so every kill interrupts the stream, wherever in a roll it
lands: buffering, the Parquet write, the fsync or the rename), and checks after every kill
that each final file reads back completely with pyarrow (a final name never holds a partial
file). A last run then finishes: together the files must hold every position exactly once,
with the generated values.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (iotcommute[arrow])")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed (iotcommute[arrow])")

TOTAL = 60_000
KILLS = 6

CHILD = """
import random, sys
from iotcommute import payload
from iotcommute.payload.columnar import decode_batch_columns
from iotcommute.sink.parquet import ParquetSink

directory, total, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sink = ParquetSink(directory, roll_bytes=24_000, roll_seconds=3600)
start = sink.last_committed() or 0
rng = random.Random(seed)
pos = max(1, start + 1 - rng.randint(0, 500))  # a resume that replays some positions
print("ready", start, flush=True)
while pos <= total:
    end = min(total, pos + rng.randint(1, 300) - 1)
    ticks = [
        {"device": f"d{p % 7}", "position": p, "ts": p / 10,
         "data": {"v": p * 2, "half": p / 2, "odd": bool(p % 2)}}
        for p in range(pos, end + 1)
    ]
    before = sink.last_committed()
    sink.write(decode_batch_columns(payload.encode_batch(ticks)))
    if sink.last_committed() != before:
        print("committed", sink.last_committed(), flush=True)
    pos = end + 1
sink.close()
print("done", sink.last_committed(), flush=True)
"""


def check_files(d: Path) -> list[int]:
    """Every final file reads back whole and matches its name; returns all positions."""
    positions: list[int] = []
    for name in sorted(p.name for p in d.iterdir() if p.name.endswith(".parquet")):
        first, last = (int(x) for x in name[len("ticks-") : -len(".parquet")].split("-"))
        t = pq.read_table(d / name)
        meta = t.schema.metadata
        assert (
            int(meta[b"iotcommute.first_position"]),
            int(meta[b"iotcommute.last_position"]),
        ) == (
            first,
            last,
        )
        pos = t.column("position").to_pylist()
        assert pos[0] == first and pos[-1] == last and int(meta[b"iotcommute.ticks"]) == len(pos)
        assert t.column("v").to_pylist() == [2 * p for p in pos]
        assert t.column("odd").to_pylist() == [bool(p % 2) for p in pos]
        assert t.column("device").to_pylist() == [f"d{p % 7}" for p in pos]
        positions += pos
    return positions


def start(d: Path, seed: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(d), str(TOTAL), str(seed)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("ready"), line
    return proc


def test_sigkill_at_random_moments_then_resume(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("IOTCOMMUTE_CRASH_SEED", "14")))
    for k in range(KILLS):
        proc = start(tmp_path, seed=k)
        assert proc.stdout is not None
        # After 1-3 files of this run, somewhere in the next roll: while batches are
        # buffered, or inside the Parquet write, the fsync or the rename.
        for _ in range(rng.randint(1, 3)):
            line = proc.stdout.readline()
            assert line.startswith("committed"), line
        time.sleep(rng.uniform(0.0, 0.03))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL and "done" not in out, out
        positions = check_files(tmp_path)
        assert len(positions) == len(set(positions))
    proc = start(tmp_path, seed=KILLS)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out.split()[-2:] == ["done", str(TOTAL)], out
    positions = check_files(tmp_path)
    assert positions == list(range(1, TOTAL + 1))
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
