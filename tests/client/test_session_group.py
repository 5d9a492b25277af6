"""A consumer-group member in the sans-IO Session (docs/protocol.md, section 14.3), no sockets."""

from __future__ import annotations

from typing import Any

import pytest

from iotcommute.client.group import COMMIT_EVERY, GroupState
from iotcommute.client.session import Session
from iotcommute.exceptions import InputError, UnavailableError
from iotcommute.partition import partition
from tests.client.sessionkit import Recorder, batch, connect, msg, sent, tick

OF = 4


def dev(p: int, k: int = 0) -> str:
    """The k-th device id "d<i>" of partition p (of OF)."""
    found = [f"d{i}" for i in range(200) if partition(f"d{i}", OF) == p]
    return found[k]


class GroupRecorder(Recorder):
    def __init__(self, *callbacks: str) -> None:
        super().__init__(*callbacks)
        self.events: list[tuple[str, list[int]]] = []
        self.on_assign: Any = lambda ps, w: self.events.append(("assign", list(ps)))
        self.on_revoke: Any = lambda ps, w: self.events.append(("revoke", list(ps)))
        self.on_batch: Any = None


def join(s: Session, parts: dict[int, int], member: str = "m-1") -> dict[str, Any]:
    """Open + welcome + subscribed + assign; returns the subscribe the session sent."""
    (sub,) = connect(s)
    s.receive(
        [
            msg(type="subscribed", id=sub["id"], devices="*", position=0, format=s.format,
                group="g", member=member),
            assign(parts),
        ]
    )  # fmt: skip
    return dict(sub)


def assign(parts: dict[int, int]) -> str:
    items = [{"partition": p, "position": c} for p, c in parts.items()]
    return msg(type="assign", group="g", of=OF, partitions=items)


def revoke(*parts: int) -> str:
    return msg(type="revoke", group="g", partitions=list(parts))


def commits(s: Session) -> list[dict[str, Any]]:
    s.flush_commits()
    return [m for m in sent(s) if m["type"] == "commit"]


def committed(c: dict[str, Any], refused: list[int] = []) -> str:  # noqa: B006
    return msg(type="committed", id=c["id"], partitions=c["partitions"], refused=refused)


def test_joins_with_group_and_no_from_on_every_connection() -> None:
    rec = GroupRecorder("on_tick")
    s = Session(rec, group="ingest")
    sub = join(s, {1: 10})
    assert sub == {"type": "subscribe", "id": sub["id"], "group": "ingest", "format": "json"}
    s.receive([tick(11, dev(1)), tick(12, dev(1))])
    s.closed()
    (again,) = connect(s, position=12)
    assert again["group"] == "ingest" and "from" not in again and "devices" not in again
    assert rec.events == [("assign", [1]), ("revoke", [1])]  # lost with the connection


def test_ticks_of_owned_partitions_only_with_positions_per_partition() -> None:
    rec = GroupRecorder("on_tick")
    s = Session(rec, group="g")
    join(s, {0: 5, 2: 0})
    s.receive([tick(6, dev(0)), tick(7, dev(1)), tick(3, dev(2)), tick(8, dev(2)), tick(5, dev(0))])
    got = [(partition(t["device"], OF), t["position"]) for t in rec.ticks]
    # partition 2 was assigned from 0: its ticks 3 and 8 follow 6 of partition 0; a repeat
    # of partition 0 (5, at its committed position) and a tick of partition 1 are dropped
    assert got == [(0, 6), (2, 3), (2, 8)]
    assert s.stats()["group"]["ticks_dropped"] == 2
    # a partition assigned later is replayed from its committed position
    s.receive([assign({1: 2}), tick(3, dev(1)), tick(9, dev(0))])
    assert [t["position"] for t in rec.ticks[3:]] == [3, 9]
    assert rec.events == [("assign", [0, 2]), ("assign", [1])]


def test_commits_every_n_ticks_per_partition_one_in_flight() -> None:
    s = Session(GroupRecorder("on_ticks"), group="g")
    join(s, {0: 0, 1: 0})
    g = s.group
    assert g is not None
    s.receive([tick(p, dev(p % 2)) for p in range(1, COMMIT_EVERY)])
    assert not g.due
    s.receive([tick(COMMIT_EVERY, dev(0))])
    assert g.due
    (c,) = commits(s)
    assert c["partitions"] == [
        {"partition": 0, "position": COMMIT_EVERY},
        {"partition": 1, "position": COMMIT_EVERY - 1},
    ]
    s.receive([tick(p, dev(0)) for p in range(101, 301)])
    assert not g.due and commits(s) == []  # one commit in flight at a time
    s.receive([committed(c)])
    assert g.due
    (c2,) = commits(s)
    assert c2["partitions"] == [{"partition": 0, "position": 300}]  # 1 did not move
    s.receive([committed(c2)])
    assert commits(s) == []
    assert s.stats()["group"]["partitions"] == {0: 300, 1: COMMIT_EVERY - 1}


def test_a_commit_covers_only_ticks_whose_callback_returned() -> None:
    s: Session
    seen: list[list[dict[str, Any]]] = []

    def on_tick(t: dict[str, Any], ws: Any) -> None:
        s.flush_commits()  # as the engine's timer could, mid-callback
        seen.append([m for m in sent(s) if m["type"] == "commit"])

    rec = GroupRecorder()
    rec.on_tick = on_tick
    s = Session(rec, group="g")
    join(s, {0: 0})
    s.receive([tick(1, dev(0)), tick(2, dev(0))])
    assert seen == [[], []]  # nothing was processed while the callbacks ran
    s.receive([tick(3, dev(0))])
    assert seen[2][0]["partitions"] == [{"partition": 0, "position": 2}]


def test_revoke_drops_the_partition_and_its_later_ticks() -> None:
    rec = GroupRecorder("on_tick")
    s = Session(rec, group="g")
    join(s, {0: 0, 1: 0})
    s.receive([tick(1, dev(0)), tick(2, dev(1)), revoke(1), tick(3, dev(1)), tick(4, dev(0))])
    assert [t["position"] for t in rec.ticks] == [1, 2, 4]
    assert rec.events[-1] == ("revoke", [1])
    rel, c = commits(s)
    # the revoked partition is handed back with what its callbacks finished (release)
    assert rel["release"] is True and rel["partitions"] == [{"partition": 1, "position": 2}]
    assert c["partitions"] == [{"partition": 0, "position": 4}] and "release" not in c
    # assigned again from its committed position: its ticks are delivered again (the
    # documented duplicates after a member's last commit)
    s.receive([committed(c), assign({1: 0}), tick(2, dev(1))])
    assert rec.ticks[-1]["position"] == 2


def test_refused_and_failed_commits() -> None:
    rec = GroupRecorder("on_tick")
    s = Session(rec, group="g")
    join(s, {0: 0, 1: 0})
    s.receive([tick(1, dev(0)), tick(2, dev(1))])
    (c,) = commits(s)
    # the server lost partition 1 meanwhile: revoke first, then the answer refuses it
    s.receive([revoke(1), committed({**c, "partitions": c["partitions"][:1]}, refused=[1])])
    assert s.stats()["group"]["commits_refused"] == 1
    assert s.stats()["group"]["partitions"] == {0: 1}
    s.receive([tick(3, dev(0))])
    rel, c2 = commits(s)
    assert rel["release"] is True and rel["partitions"] == [{"partition": 1, "position": 2}]
    err = msg(type="error", code="unavailable", message="the group store is unavailable",
              id=c2["id"])  # fmt: skip
    s.receive([err])
    assert isinstance(rec.errors[-1], UnavailableError)
    (c3,) = commits(s)  # sent again at the next flush
    assert c3["partitions"] == [{"partition": 0, "position": 3}] and c3["id"] != c2["id"]


def test_binary_batches_split_by_partition() -> None:
    rec = GroupRecorder("on_ticks")
    s = Session(rec, group="g", format="binary")
    join(s, {0: 0})
    s.receive([batch([(1, dev(0)), (2, dev(1)), (3, dev(0, 1))])])
    assert [[t["position"] for t in ts] for ts in rec.lists] == [[1, 3]]
    rows = GroupRecorder("on_tick_rows")
    s2 = Session(rows, group="g", format="binary")
    join(s2, {1: 0})
    s2.receive([batch([(1, dev(0)), (2, dev(1))]), tick(3, dev(1))])
    assert [(r[0], r[1]) for _, rs in rows.rows for r in rs] == [(dev(1), 2), (dev(1), 3)]


def test_iterator_commits_what_the_user_finished() -> None:
    queue: list[dict[str, Any]] = []
    rec = GroupRecorder()
    s = Session(rec, group="g")
    s.sink = queue.extend
    s.hold_commit = True
    dropped: list[list[int]] = []

    def drop(parts: list[int]) -> None:
        dropped.append(parts)
        queue[:] = [t for t in queue if partition(t["device"], OF) not in parts]

    s.drop_queued = drop
    join(s, {0: 0, 1: 0})
    s.receive([tick(1, dev(0)), tick(2, dev(1)), tick(3, dev(0))])
    assert commits(s) == []  # queued, not processed
    s.group_took(queue.pop(0))
    (c,) = commits(s)
    assert c["partitions"] == [{"partition": 0, "position": 1}]
    s.receive([committed(c), revoke(1)])
    assert dropped == [[1]] and [t["position"] for t in queue] == [3]
    s.group_took(queue.pop(0))
    rel, c2 = commits(s)
    # nothing of partition 1 was taken: it is released at the group's position
    assert rel["release"] is True and rel["partitions"] == [{"partition": 1, "position": 0}]
    assert c2["partitions"] == [{"partition": 0, "position": 3}]


def test_device_subscriptions_do_not_apply_to_a_member() -> None:
    s = Session(GroupRecorder("on_tick"), group="g")
    with pytest.raises(InputError):
        s.subscribe("*")
    with pytest.raises(InputError):
        s.unsubscribe(["d1"])
    for bad in ("", "a b", "x" * 65, "é"):
        with pytest.raises(ValueError):
            GroupState(bad)


def test_a_refused_join_is_reported() -> None:
    rec = GroupRecorder("on_tick")
    s = Session(rec, group="g")
    (sub,) = connect(s)
    s.receive([msg(type="error", code="input", message="consumer groups need a shared log",
                   id=sub["id"])])  # fmt: skip
    assert isinstance(rec.errors[0], InputError)
    assert commits(s) == []


def test_batches_in_a_group_carry_owned_partitions_once() -> None:
    """on_batch in a group member: rows of partitions not owned, and repeats within a
    tenure, are filtered out of the TickBatch."""
    got: list[list[tuple[str, int]]] = []
    rec = GroupRecorder()
    rec.on_batch = lambda b, ws: got.append(list(zip(b["device"], b["position"].tolist())))
    s = Session(rec, group="g", format="binary")
    join(s, {0: 1})
    s.receive([batch([(1, dev(0)), (2, dev(1)), (3, dev(0, 1))]), batch([(3, dev(0, 1)),
               (4, dev(0))])])  # fmt: skip
    assert got == [[(dev(0, 1), 3)], [(dev(0), 4)]]
    (c,) = commits(s)
    assert c["partitions"] == [{"partition": 0, "position": 4}]  # auto: the callback returned


def test_manual_commits_follow_only_what_the_user_says_was_stored() -> None:
    rec = GroupRecorder("on_tick")
    s = Session(rec, group="g", group_manual=True)
    join(s, {0: 0, 1: 0})
    g = s.group
    assert g is not None
    s.receive([tick(p, dev(p % 2)) for p in range(1, 2 * COMMIT_EVERY)])
    assert commits(s) == []  # the callbacks returned; nothing is stored yet
    s.group_done({0: 10, 1: 7, 3: 50})  # 3 is not owned: ignored
    (c,) = [m for m in sent(s) if m["type"] == "commit"]  # sent at once
    assert c["partitions"] == [{"partition": 0, "position": 10}, {"partition": 1, "position": 7}]
    s.group_done({0: 20})
    assert commits(s) == []  # one commit in flight
    s.receive([committed(c)])
    (c2,) = commits(s)
    assert c2["partitions"] == [{"partition": 0, "position": 20}]
    # a position beyond what this tenure delivered is capped at it
    s.receive([committed(c2), revoke(1), assign({1: 7}), tick(9, dev(1))])
    s.group_done({1: 500})
    rel, c3 = [m for m in sent(s) if m["type"] == "commit"]
    assert rel["release"] is True and rel["partitions"] == [{"partition": 1, "position": 7}]
    assert c3["partitions"] == [{"partition": 1, "position": 9}]
    g.took(dev(0), 30)  # an iterator's step does not commit in manual mode either
    assert g.owned[0].done == 20


def test_a_revoked_partition_is_released_with_what_on_revoke_stored() -> None:
    """Manual commits: on_revoke may still commit the revoked partitions (a sink rolled
    them into a file); the release carries that, capped at what was delivered."""
    s: Session
    rec = GroupRecorder("on_tick")
    rec.on_revoke = lambda ps, w: s.group_done({p: 6 for p in ps})
    s = Session(rec, group="g", group_manual=True)
    join(s, {0: 0, 1: 0})
    s.receive([tick(p, dev(1)) for p in range(1, 6)] + [tick(6, dev(0)), revoke(1)])
    (rel,) = [m for m in sent(s) if m.get("release")]
    assert rel["partitions"] == [{"partition": 1, "position": 5}]  # 6 was never delivered
    g = s.group
    assert g is not None and not g.releasing and list(g.owned) == [0]
