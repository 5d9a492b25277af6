"""Batch mode of the sans-IO Session (on_batch / batch_sink), without sockets: slicing,
duplicates, gaps, JSON ticks gathered, corrupt frames, the checkpoint (issue 14)."""

from __future__ import annotations

from typing import Any

import pytest

from iotcommute import payload
from iotcommute.client.session import Session
from iotcommute.exceptions import DataError, DecodeError
from iotcommute.payload import columnar
from iotcommute.payload.columnar import TickBatch
from tests.client.sessionkit import Recorder, batch, connect, msg, tick


class BatchRecorder(Recorder):
    def __init__(self, *callbacks: str) -> None:
        super().__init__(*callbacks)
        self.batches: list[TickBatch] = []
        self.committed_seen: list[int] = []
        self.session: Session | None = None

        def on_batch(b: TickBatch, ws: Any) -> None:
            self.batches.append(b)
            if self.session is not None:
                self.committed_seen.append(self.session.committed)

        self.on_batch: Any = on_batch

    def positions(self) -> list[int]:
        return [p for b in self.batches for p in b["position"].tolist()]


def subscribed(rid: int, position: int) -> str:
    return msg(type="subscribed", id=rid, devices="*", position=position, format="binary")


def started(rec: BatchRecorder, position: int = 0, **kw: Any) -> Session:
    s = Session(rec, format="binary", **kw)
    rec.session = s
    (sub,) = connect(s, position=position)
    s.receive([subscribed(sub["id"], position)])
    return s


def test_binary_batches_arrive_as_tick_batches_in_order() -> None:
    rec = BatchRecorder()
    s = started(rec)
    s.receive([batch([(1, "a"), (2, "b")]), batch([(3, "a")])])
    assert [type(b) for b in rec.batches] == [TickBatch, TickBatch]
    assert rec.positions() == [1, 2, 3]
    assert rec.batches[0]["v"].tolist() == [1, 2]
    assert s.position == 3 and s.committed == 3


def test_the_selector_s_decoder_is_used() -> None:
    # the compiled parser when built (and allowed), the pure twin otherwise: same batches
    rec = BatchRecorder()
    s = started(rec)
    s.receive([batch([(1, "a")])])
    assert rec.batches[0].devices == ("a",)
    assert columnar.SPEEDUPS == (columnar.columnar_impl is not None)


def test_rows_at_or_below_the_cursor_are_sliced_off_without_a_copy() -> None:
    rec = BatchRecorder()
    s = started(rec)
    s.receive([batch([(1, "a"), (2, "a"), (3, "a")])])
    frame = batch([(2, "a"), (3, "a"), (4, "a"), (5, "b")])  # a replay overlapping the cursor
    s.receive([frame])
    last = rec.batches[-1]
    assert last["position"].tolist() == [4, 5]
    assert last._buf is frame  # the received bytes, not a copy
    assert s.stats()["duplicates_dropped"] == 2
    s.receive([batch([(4, "a"), (5, "b")])])  # wholly old: nothing delivered
    assert len(rec.batches) == 2 and s.stats()["duplicates_dropped"] == 4


def test_resume_after_a_reconnect_gives_every_position_once() -> None:
    rec = BatchRecorder()
    s = started(rec)
    s.receive([batch([(1, "a"), (2, "a")])])
    s.closed()
    (sub,) = connect(s, position=6)
    assert sub["from"] == 2
    s.receive([subscribed(sub["id"], 6), batch([(2, "a"), (3, "a")]), batch([(4, "b")])])
    assert rec.positions() == [1, 2, 3, 4]


def test_gaps_are_reported_as_for_dicts_and_move_the_cursor() -> None:
    rec = BatchRecorder()
    s = started(rec)
    s.receive([batch([(1, "a")])])
    s.receive([msg(type="gap", **{"from": 1, "to": 10, "missed": 9}), batch([(9, "a"), (11, "a")])])
    assert len(rec.gaps) == 1 and rec.positions() == [1, 11]


def test_a_replay_window_filters_rows_one_by_one() -> None:
    rec = BatchRecorder()
    s = Session(rec, format="binary", subscribe=["a"])
    rec.session = s
    (sub,) = connect(s, position=0)
    s.receive([subscribed(sub["id"], 0), batch([(1, "a"), (3, "a")])])
    s.subscribe(["b"], from_position=0)
    (req,) = [m for m in (s.frames_to_send())]
    s.receive([subscribed(2, 3), batch([(1, "a"), (2, "b"), (3, "a"), (4, "b"), (5, "a")])])
    assert rec.positions() == [1, 3, 2, 4, 5]
    # the re-packed batch keeps the field types
    assert rec.batches[-1].types == {"v": "i64"}
    assert req is not None


def test_json_ticks_are_gathered_into_batches_in_stream_order() -> None:
    rec = BatchRecorder()
    s = started(rec)
    s.receive([tick(1, "a"), tick(2, "b"), batch([(3, "a")]), tick(4, "a", x=1.5)])
    assert rec.positions() == [1, 2, 3, 4]
    assert [len(b) for b in rec.batches] == [2, 1, 1]
    assert rec.batches[2].types == {"x": "f64"}


def test_a_tick_no_batch_can_hold_goes_to_on_ticks_or_on_error() -> None:
    rec = BatchRecorder("on_ticks")
    s = started(rec)
    s.receive([tick(1, "a"), tick(2, "a", name="x"), tick(3, "a")])
    assert rec.positions() == [1, 3]
    assert [[t["position"] for t in lst] for lst in rec.lists] == [[2]]
    rec2 = BatchRecorder()
    s2 = started(rec2)
    s2.receive([tick(1, "a", name="x")])
    assert len(rec2.errors) == 1 and isinstance(rec2.errors[0], DataError)
    assert "position 1" in str(rec2.errors[0])


def test_a_corrupt_frame_is_a_decode_error_with_its_position_and_the_stream_goes_on() -> None:
    rec = BatchRecorder()
    s = started(rec)
    good = batch([(1, "a")])
    bad = bytearray(batch([(2, "a")]))
    bad[-26] = 9  # the device index of the only row (row: u16 device, i64 pos, f64 ts, i64 v)
    s.receive([good, bytes(bad), batch([(3, "a")])])
    assert rec.positions() == [1, 3]
    (err,) = rec.errors
    assert isinstance(err, DecodeError) and err.position == 2


def test_the_checkpoint_moves_only_after_the_callback_returned() -> None:
    rec = BatchRecorder()
    s = started(rec, position=0)
    s.receive([batch([(1, "a")]), batch([(2, "a")])])
    assert rec.committed_seen == [0, 0]
    assert s.committed == 2


def test_a_raising_callback_goes_to_on_error_and_the_stream_goes_on() -> None:
    rec = BatchRecorder()

    def boom(b: TickBatch, ws: Any) -> None:
        raise ValueError("boom")

    rec.on_batch = boom
    s = started(rec)
    s.receive([batch([(1, "a")])])
    assert isinstance(rec.errors[0], ValueError) and s.position == 1


def test_the_batch_sink_with_hold_commit_checkpoints_only_what_was_taken() -> None:
    rec = Recorder()
    s = Session(rec, format="binary")
    got: list[TickBatch] = []
    s.batch_sink = got.append
    s.hold_commit = True
    (sub,) = connect(s)
    s.receive([subscribed(sub["id"], 0), batch([(1, "a"), (2, "a")])])
    assert s.committed == 0 and len(got) == 1
    s.commit(got[0].last_position)
    assert s.committed == 2


@pytest.mark.parametrize("n", [1, 50])
def test_kept_batches_do_not_alias_reused_buffers(n: int) -> None:
    rec = BatchRecorder()
    s = started(rec)
    frame = bytearray(
        payload.encode_batch(
            [{"device": "a", "position": p, "ts": 1.0, "data": {"v": p}} for p in range(1, n + 1)]
        )
    )
    s.receive([bytes(frame)])
    frame[:] = b"\0" * len(frame)
    assert rec.batches[0]["v"].tolist() == list(range(1, n + 1))
