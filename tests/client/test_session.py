"""The sans-IO Session, without sockets: each issue-17 reproduction and the protocol rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from iotcommute.client.checkpoint import Checkpoint
from iotcommute.client.session import Session, Subscription, batch_span
from iotcommute.exceptions import (
    CommandError,
    DataError,
    InputError,
    IotCommuteError,
    NotFoundError,
    OperationTimeout,
    PermissionDenied,
    RateLimitError,
    ServerError,
)
from tests.client.sessionkit import Recorder, batch, connect, msg, sent, tick


def subscribed(rid: int, position: int, devices: Any = "*") -> str:
    return msg(type="subscribed", id=rid, devices=devices, position=position, format="json")


def test_empty_log_then_a_drop_resumes_from_position_zero() -> None:
    rec = Recorder("on_tick")
    s = Session(rec)
    (sub,) = connect(s, position=0)
    assert isinstance(sub, dict) and sub["from"] is None
    s.receive([subscribed(sub["id"], 0)])
    s.closed()
    (again,) = connect(s, position=5)  # records 1-5 were appended while we were away
    assert again["type"] == "subscribe" and again["from"] == 0 and again["devices"] == "*"
    s.receive([subscribed(again["id"], 5), *[tick(p) for p in range(1, 6)]])
    assert [t["position"] for t in rec.ticks] == [1, 2, 3, 4, 5]


def test_a_replay_with_from_position_delivers_the_added_devices_history() -> None:
    rec = Recorder("on_tick")
    s = Session(rec, subscribe=["sim-1"])
    (sub,) = connect(s, position=5)
    s.receive([subscribed(sub["id"], 5, ["sim-1"]), tick(6, "sim-1"), tick(7, "sim-1")])
    s.receive([tick(8, "sim-1")])
    s.subscribe(["sim-2"], from_position=0)
    (replay,) = sent(s)
    assert replay["from"] == 0 and replay["devices"] == ["sim-2"]
    log = [(1, "sim-2"), (2, "sim-1"), (3, "sim-2"), (4, "sim-2"), (5, "sim-1")]
    log += [(6, "sim-1"), (7, "sim-1"), (8, "sim-1"), (9, "sim-2")]
    s.receive([subscribed(replay["id"], 8, ["sim-2"]), *[tick(p, d) for p, d in log]])
    got = [(t["position"], t["device"]) for t in rec.ticks]
    assert got == [(6, "sim-1"), (7, "sim-1"), (8, "sim-1")] + [(p, "sim-2") for p in (1, 3, 4, 9)]
    assert s.stats()["duplicates_dropped"] == 5
    # a drop in the middle of a replay resumes it, the repeats still dropped
    s2 = Session(Recorder("on_tick"), subscribe=["sim-1"])
    (sub,) = connect(s2, position=8)
    s2.receive([subscribed(sub["id"], 7, ["sim-1"]), tick(8, "sim-1")])
    s2.subscribe(["sim-2"], from_position=0)
    (replay,) = sent(s2)
    s2.receive([subscribed(replay["id"], 8, ["sim-2"]), tick(1, "sim-2"), tick(2, "sim-1")])
    s2.closed()
    out = connect(s2, position=9)
    assert [(m["devices"], m["from"]) for m in out] == [(["sim-1", "sim-2"], 2)]
    s2.receive([subscribed(out[0]["id"], 9, ["sim-1", "sim-2"])])
    s2.receive([tick(p, d) for p, d in log[2:]])
    owner = s2.owner
    assert isinstance(owner, Recorder)
    assert [t["position"] for t in owner.ticks] == [8, 1, 3, 4, 9]


def test_on_tick_rows_alone_gets_the_json_fallback_ticks() -> None:
    rec = Recorder("on_tick_rows")
    s = Session(rec, format="binary")
    (sub,) = connect(s)
    s.receive([subscribed(sub["id"], 0)])
    s.receive([batch([(1, "a"), (2, "b")]), tick(3, "a", note="text", n=None), batch([(4, "a")])])
    flat = [(r[0], r[1]) for _, rows in rec.rows for r in rows]
    assert flat == [("a", 1), ("b", 2), ("a", 3), ("a", 4)]
    assert rec.rows[1] == (("note", "n"), [("a", 3, 1.5, "text", None)])
    assert s.position == 4


def test_on_message_alone_does_not_repeat_after_a_drop() -> None:
    rec = Recorder("on_message")
    s = Session(rec, format="binary")
    (sub,) = connect(s)
    s.receive([subscribed(sub["id"], 1)])
    frames = [batch([(p, "a") for p in range(2, 7)]), batch([(p, "a") for p in range(7, 12)])]
    s.receive(frames)
    assert s.position == 11
    s.closed()
    (again,) = connect(s, position=11)
    assert again["from"] == 11
    # a server that resends what we had (or a json tick of it) is not passed on again
    s.receive([subscribed(again["id"], 11), frames[1], tick(11, "a"), tick(12, "a")])
    data = [m for m in rec.messages if isinstance(m, bytes) or '"tick"' in m]
    assert data == [*frames, tick(12, "a")]


def test_a_rejected_subscription_is_not_restored() -> None:
    rec = Recorder("on_tick")
    s = Session(rec, subscribe=["sim-0001"])
    (sub,) = connect(s)
    s.receive([subscribed(sub["id"], 0, ["sim-0001"])])
    s.subscribe(["sim-00O2"])
    (bad,) = sent(s)
    s.receive([msg(type="error", code="not_found", message="unknown device", id=bad["id"])])
    assert isinstance(rec.errors[0], NotFoundError)
    assert s.subscription == Subscription(False, ["sim-0001"])
    s.closed()
    (again,) = connect(s)
    assert again["devices"] == ["sim-0001"]


def test_unsubscribe_from_all_survives_reconnects() -> None:
    rec = Recorder("on_tick")
    s = Session(rec)
    (sub,) = connect(s)
    s.receive([subscribed(sub["id"], 0)])
    s.unsubscribe(["sim-0001"])
    (unsub,) = sent(s)
    s.receive([msg(type="unsubscribed", id=unsub["id"], devices=["sim-0001"])])
    s.closed()
    out = connect(s, position=0)
    assert [(m["type"], m["devices"]) for m in out] == [
        ("subscribe", "*"),
        ("unsubscribe", ["sim-0001"]),
    ]
    # ticks of the excluded device that race the unsubscribe are not delivered
    s.receive([subscribed(out[0]["id"], 0), tick(1, "sim-0001"), tick(2, "sim-0002")])
    assert [t["device"] for t in rec.ticks] == ["sim-0002"]
    assert s.subscription == Subscription(True, ["sim-0001"])


def test_a_gap_is_reported_once_and_moves_the_resume_point() -> None:
    rec = Recorder("on_tick")
    s = Session(rec, position=50)
    (sub,) = connect(s)
    assert sub["from"] == 50
    gap = msg(type="gap", **{"from": 50, "to": 200, "missed": 150})
    s.receive([subscribed(sub["id"], 300), gap, tick(201)])
    assert len(rec.gaps) == 1 and s.position == 201
    s.closed()
    (again,) = connect(s)
    assert again["from"] == 201
    s.receive([gap])  # a server repeating an old gap: not a new loss
    assert len(rec.gaps) == 1


def test_progress_and_empty_gaps_raise_no_false_alarm() -> None:
    rec = Recorder("on_tick")
    s = Session(rec, subscribe=["a"])
    (sub,) = connect(s)
    s.receive([subscribed(sub["id"], 10), tick(11, "a"), msg(type="progress", position=40)])
    assert s.position == 40
    s.receive([msg(type="gap", **{"from": 40, "to": 60, "missed": 0})])
    assert rec.gaps == [] and s.position == 60
    s.closed()
    (again,) = connect(s)
    assert again["from"] == 60


def test_command_ids_cannot_collide_between_clients() -> None:
    a, b = Session(Recorder()), Session(Recorder())
    ids = {a.encode_command("dev", {})[0], b.encode_command("dev", {})[0]}
    ids.add(a.encode_command("dev", {})[0])
    assert len(ids) == 3 and all(i.startswith("c-") for i in ids)


def test_commands_resolve_by_ack_error_timeout_and_drop() -> None:
    s = Session(Recorder(), subscribe=None)
    connect(s)
    results: dict[str, Any] = {}

    def resolver(name: str) -> Any:
        return lambda value, exc: results.__setitem__(name, exc or value)

    for name in ("ok", "no", "err", "late", "lost"):
        cid, data = s.encode_command("dev", {"n": name})
        s.start_command(cid, data, resolver(name))
        results[name + "-id"] = cid
    assert len(sent(s)) == 5
    s.receive([msg(type="ack", id=results["ok-id"], ok=True, data={"x": 1})])
    s.receive([msg(type="ack", id=results["no-id"], ok=False, error="busy")])
    s.receive([msg(type="error", code="permission", message="no", id=results["err-id"])])
    s.expire_command(results["late-id"], 5)
    s.closed()
    assert results["ok"]["data"] == {"x": 1}
    assert isinstance(results["no"], CommandError) and "busy" in str(results["no"])
    assert isinstance(results["err"], PermissionDenied)
    assert isinstance(results["late"], OperationTimeout)
    assert isinstance(results["lost"], IotCommuteError)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("input", InputError),
        ("permission", PermissionDenied),
        ("not_found", NotFoundError),
        ("rate", RateLimitError),
        ("server", ServerError),
        ("unavailable", ServerError),
        ("something-new", ServerError),
    ],
)
def test_stream_error_codes_map_to_their_exceptions(code: str, cls: type[Exception]) -> None:
    rec = Recorder()
    s = Session(rec, subscribe=None)
    connect(s)
    s.receive([msg(type="error", code=code, message="m")])
    assert type(rec.errors[0]) is cls or (code == "unavailable" and isinstance(rec.errors[0], cls))


def test_integers_beyond_64_bits_are_refused_at_publish() -> None:
    s = Session(Recorder())
    with pytest.raises(InputError):
        s.encode_publish({"v": 2**70})
    with pytest.raises(InputError):
        s.encode_publish([1, 2])
    with pytest.raises(InputError):
        s.encode_publish({"v": float("nan")} | {"f": object()})
    with pytest.raises(InputError):
        s.encode_command("dev", {"x": object()})
    with pytest.raises(InputError):
        s.subscribe(5)
    with pytest.raises(InputError):
        s.subscribe([])
    with pytest.raises(InputError):
        s.subscribe("*", from_position=-1)


def test_publishes_are_kept_until_published_and_resent_after_a_reconnect() -> None:
    s = Session(Recorder(), subscribe=None, id_prefix="abc")
    positions: list[Any] = []
    pid1, d1 = s.encode_publish({"n": 1})
    pid2, d2 = s.encode_publish({"n": 2}, ts=5.0)
    assert (pid1, pid2) == ("abc-1", "abc-2")
    s.track_publish(pid1, d1, lambda pos, exc: positions.append(pos))
    s.queue_offline(1, d1, pid1)  # made while offline
    connect(s)  # sent on open, before the welcome's subscriptions
    s.track_publish(pid2, d2)
    s.receive([msg(type="published", id=pid1, position=7)])
    assert positions == [7] and list(s.unacked) == [pid2]
    s.closed()
    s.opened()
    (resent,) = sent(s)
    assert resent == {"type": "publish", "id": "abc-2", "data": {"n": 2}, "ts": 5.0}
    s.receive([msg(type="published", id=pid2, position=8, duplicate=True)])
    assert not s.unacked


def test_a_refused_publish_is_not_resent() -> None:
    rec = Recorder()
    s = Session(rec, subscribe=None)
    connect(s)
    pid, data = s.encode_publish({"deep": 1})
    errors: list[Any] = []
    s.track_publish(pid, data, lambda pos, exc: errors.append(exc))
    s.receive([msg(type="error", code="input", message="too deep", id=pid)])
    assert isinstance(errors[0], InputError) and not s.unacked


def test_the_server_log_reset_resubscribes_from_zero_with_one_gap() -> None:
    rec = Recorder("on_tick")
    s = Session(rec)
    (sub,) = connect(s, position=3, log="L1")
    s.receive([subscribed(sub["id"], 3), tick(4), tick(5)])
    s.closed()
    (again,) = connect(s, position=2, log="L2")
    assert again["from"] == 0
    assert [g.get("reason") for g in rec.gaps] == ["log_reset"]
    s.receive([subscribed(again["id"], 2), tick(1), tick(2)])
    assert [t["position"] for t in rec.ticks] == [4, 5, 1, 2]
    assert any(isinstance(e, DataError) for e in rec.errors)
    s.closed()
    (same,) = connect(s, position=2, log="L2")
    assert same["from"] == 2 and len(rec.gaps) == 1


def test_control_messages_are_recognised_by_their_first_bytes() -> None:
    rec = Recorder("on_message")
    s = Session(rec, subscribe=None)
    connect(s)
    spaced = '{"type": "command", "id": "c-1", "data": {}}'  # application JSON: not control
    own = '{"kind":"x","type":"error","code":"input"}'
    command = msg(type="command", id="c-2", data={"led": 1})
    s.receive([spaced, own, command])
    assert rec.messages[-3:] == [spaced, own, command]
    assert [c["id"] for c in rec.commands] == ["c-2"] and rec.errors == []
    # a tick consumer gets a DecodeError for text that is neither tick nor control
    rec2 = Recorder("on_tick")
    s2 = Session(rec2, subscribe=None)
    connect(s2)
    s2.receive(["{not json", tick(1, "a", type="error")])
    assert len(rec2.errors) == 1 and [t["data"] for t in rec2.ticks] == [{"type": "error"}]


def test_checkpoint_position_only_after_the_user_took_it() -> None:
    rec = Recorder("on_tick")
    s = Session(rec)
    (sub,) = connect(s)
    s.receive([subscribed(sub["id"], 0), tick(1), tick(2)])
    assert s.committed == 2
    s.hold_commit = True  # an iterator's queue holds the ticks
    s.receive([tick(3), tick(4)])
    assert s.committed == 2
    s.commit(3)
    assert s.committed == 3


def test_on_ticks_lists_and_batches_in_stream_order() -> None:
    rec = Recorder("on_tick", "on_ticks")
    s = Session(rec, format="binary")
    (sub,) = connect(s)
    s.receive([subscribed(sub["id"], 0)])
    s.receive([batch([(1, "a"), (2, "a")]), tick(3), batch([(2, "a"), (3, "a"), (4, "b")])])
    assert [[t["position"] for t in ts] for ts in rec.lists] == [[1, 2], [3], [4]]
    assert [t["position"] for t in rec.ticks] == [1, 2, 3, 4]
    assert s.stats()["duplicates_dropped"] == 2


def test_batch_span_reads_positions_without_decoding() -> None:
    assert batch_span(batch([(5, "a"), (9, "b"), (12, "a")])) == (5, 12)
    assert batch_span(b"\x00\x01") is None
    assert batch_span(batch([(5, "a")])[:-1]) is None


def test_a_checkpoint_of_another_log_reads_the_new_log_from_its_start(tmp_path: Path) -> None:
    """A restarted process whose checkpoint belongs to a log the server no longer has (a
    non-durable server restarted meanwhile) must not skip the new log's first records."""
    cp = Checkpoint(tmp_path / "pos.txt")
    assert cp.save(7, "L1", force=True)
    assert Checkpoint(tmp_path / "pos.txt").load() == (7, "L1")
    position, log_id = Checkpoint(tmp_path / "pos.txt").load() or (None, None)
    rec = Recorder("on_tick")
    s = Session(rec, position=position, log_id=log_id)
    (sub,) = connect(s, position=3, log="L2")
    assert sub["from"] == 0
    assert [g.get("reason") for g in rec.gaps] == ["log_reset"]
    (tmp_path / "old.txt").write_text("7\n")  # a checkpoint written before log ids
    assert Checkpoint(tmp_path / "old.txt").load() == (7, None)


@pytest.mark.parametrize("form", ["json", "binary"])
def test_a_raw_callback_that_unsubscribes_filters_the_rest_of_its_read(form: str) -> None:
    """on_message unsubscribes a device in the middle of a read: that device's data later
    in the same read is not passed on (the compiled run of data messages hands the rest of
    the read back to be checked one by one), the other device's is, in order."""
    rec = Recorder()
    s = Session(rec)
    got: list[Any] = []

    def on_message(m: Any, w: Any) -> None:
        got.append(m)
        if len(got) == 1:
            s.unsubscribe(["a"])

    (sub,) = connect(s)
    make = (lambda p, d: tick(p, d)) if form == "json" else (lambda p, d: batch([(p, d)]))
    s.receive([subscribed(sub["id"], 0), make(1, "b")])  # past the first data: no checks
    rec.on_message = on_message
    read: list[Any] = [make(2, "a"), make(3, "b"), make(4, "a"), make(5, "b")]
    want = [read[0], read[1], read[3]]
    s.receive(read)
    assert got == want
    assert s.position == 5
