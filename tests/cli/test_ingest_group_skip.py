"""`ingest --group` takes over a partition whose last owner died after a file's rename and
before its commit was answered: the rows already in the directory's files are skipped, so
the group writes each row once (files of another log are not trusted). No network: the
client is a stand-in with the three things ingest asks of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iotcommute.payload.columnar import TickBatch

pytest.importorskip("pyarrow", reason="pyarrow is not installed (iotcommute[arrow])")

from iotcommute.cli.ingest import _Ingest
from iotcommute.sink import ParquetSink


class Member:
    """What ingest uses of a group member's WebSocket."""

    def __init__(self, log: str) -> None:
        self.log_id = log
        self.commits: list[dict[int, int]] = []

    def partition(self, device: str) -> int:
        return int(device.rsplit("-", 1)[1]) % 2

    def commit(self, positions: dict[int, int]) -> None:
        self.commits.append(dict(positions))


def ticks(first: int, last: int, device: str) -> TickBatch:
    return TickBatch.from_ticks(
        [
            {"device": device, "position": p, "ts": 1.0, "data": {"v": p}}
            for p in range(first, last + 1)
        ]
    )


def dead_members_file(d: Path, log: str, filed: dict[int, int], rows: TickBatch) -> None:
    meta = {"iotcommute.group_filed": json.dumps(filed), "iotcommute.log": log}
    sink = ParquetSink(d, prefix="g.0", ordered=False, file_metadata=lambda: meta)
    sink.write(rows)
    sink.close()


def positions(d: Path) -> list[int]:
    import pyarrow.parquet as pq

    return sorted(p for f in sorted(d.glob("g.*.parquet"))
                  for p in pq.read_table(f).column("position").to_pylist())  # fmt: skip


@pytest.mark.parametrize("same_log", [True, False])
def test_rows_a_dead_member_filed_are_not_written_again(tmp_path: Path, same_log: bool) -> None:
    # the dead member held partition 0 (device d-0) and filed 41..50; its commit said 40
    dead_members_file(tmp_path, "L1", {0: 50}, ticks(41, 50, "d-0"))
    sink = ParquetSink(tmp_path, prefix="g.1", ordered=False, roll_bytes=1 << 30)
    ing = _Ingest(sink, quiet=True, group="g")
    ws = Member("L1" if same_log else "L2")
    ing.ws = ws
    sink.file_metadata = ing.file_metadata
    ing.on_assign([0, 1], ws)
    assert ing.skip == ({0: 50} if same_log else {})
    ing.on_batch(ticks(41, 55, "d-0"), ws)  # the group resumes after its commit, 40
    ing.on_batch(ticks(60, 62, "d-1"), ws)
    ing.finish()
    if same_log:
        assert positions(tmp_path) == [*range(41, 56), 60, 61, 62]  # each once
    else:  # another log's file vouches for nothing: everything is written
        assert positions(tmp_path) == sorted([*range(41, 51), *range(41, 56), 60, 61, 62])
    assert ws.commits[-1] == {0: 55, 1: 62}
    assert not ing.skip  # passed


def test_a_batch_entirely_below_the_skip_point_commits_without_a_file(tmp_path: Path) -> None:
    dead_members_file(tmp_path, "L1", {0: 50}, ticks(41, 50, "d-0"))
    sink = ParquetSink(tmp_path, prefix="g.1", ordered=False)
    ing = _Ingest(sink, quiet=True, group="g")
    ws = Member("L1")
    ing.ws = ws
    ing.on_assign([0], ws)
    ing.on_batch(ticks(41, 50, "d-0"), ws)
    assert sink.pending == 0 and ws.commits == [{0: 50}]  # nothing to write, all filed
    assert ing.skip == {0: 50}
