"""The server's log (positions, trimming, cursors, SQLite) and registry (credentials, sessions)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotcommute.server import Log, Registry, demo_registry, load_registry
from iotcommute.server.log import Block, Record
from iotcommute.server.registry import README_DEVICE_ID, README_DEVICE_KEY, SessionStore
from iotcommute.server.simulate import Firehose


def test_positions_start_at_one_and_increase() -> None:
    log = Log(retain=100)
    assert (log.first_position, log.last_position, len(log)) == (1, 0, 0)
    assert [log.append("d", {"i": i}, 1.0 + i) for i in range(5)] == [1, 2, 3, 4, 5]
    recs = log.read(2)
    assert [r.position for r in recs] == [3, 4, 5]
    assert recs[0].as_tick() == {
        "type": "tick",
        "device": "d",
        "position": 3,
        "ts": 3.0,
        "data": {"i": 2},
    }
    assert log.read(5) == [] and log.read(99) == []


@settings(max_examples=60, deadline=None)
@given(
    retain=st.integers(1, 20),
    devices=st.lists(st.sampled_from("abc"), min_size=0, max_size=80),
    after=st.integers(0, 90),
    want=st.sets(st.sampled_from("abc")),
    limit=st.integers(1, 30),
)
def test_read_matches_a_model(
    retain: int, devices: list[str], after: int, want: set[str], limit: int
) -> None:
    log = Log(retain=retain)
    for d in devices:
        log.append(d, {}, 0.0)
    n = len(devices)
    kept = list(range(max(1, n - retain + 1), n + 1))
    assert log.first_position == (kept[0] if kept else n + 1)
    model = [p for p in kept if p > after and devices[p - 1] in want][:limit]
    assert [r.position for r in log.read(after, want, limit)] == model
    assert [r.position for r in log.read(after, None, limit)] == [p for p in kept if p > after][
        :limit
    ]
    gap = log.gap(after)
    if kept and after < kept[0] - 1:
        assert gap == (after, kept[0] - 1, kept[0] - 1 - after)
    else:
        assert gap is None


def test_scan_reports_progress_when_nothing_matches() -> None:
    log = Log()
    for _ in range(50):
        log.append("x", {}, 0.0)
    assert log.scan(10, {"y"}, 10) == ([], 50)
    assert log.scan(10, {"y"}, 10, max_scan=5) == ([], 15)


def test_read_finds_sparse_devices_far_ahead() -> None:
    log = Log(retain=100_000)
    for _ in range(30_000):
        log.append("busy", {}, 0.0)
    log.append("rare", {"n": 1}, 0.0)
    assert [r.position for r in log.read(0, {"rare"}, 10)] == [30_001]


def test_trimming_compacts_without_losing_order() -> None:
    log = Log(retain=10)
    for i in range(20_000):
        log.append("d", {"i": i}, 0.0)
    assert (log.first_position, log.last_position, len(log)) == (19_991, 20_000, 10)
    assert [r.data["i"] for r in log.read(0)] == list(range(19_990, 20_000))


def test_tail_waiters_wake_on_append() -> None:
    async def main() -> None:
        log = Log()
        waiter = asyncio.create_task(log.wait(0))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        log.append("d", {}, 0.0)
        await asyncio.wait_for(waiter, 2)

    asyncio.run(main())


def test_record_frame_is_a_server_text_frame() -> None:
    log = Log()
    log.append("dev-0001", {"temperature": 21.5}, 1764128635.123456)
    frame = log.read(0)[0].frame()
    assert frame[0] == 0x81 and frame[1] == len(frame) - 2  # FIN+text, unmasked, short length
    assert frame[2:] == (
        b'{"type":"tick","device":"dev-0001","position":1,"ts":1764128635.123456,'
        b'"data":{"temperature":21.5}}'
    )


def test_sqlite_keeps_positions_and_data(tmp_path: Path) -> None:
    db = tmp_path / "log.sqlite"

    async def main() -> None:
        log = Log(retain=5, db=db)
        await log.open()
        for i in range(8):
            log.append("d", {"i": i, "ok": True}, 100.0 + i)
        await log.close()
        again = Log(retain=5, db=db)
        await again.open()
        assert again.log_id == log.log_id  # a durable log keeps its identity
        assert (again.first_position, again.last_position) == (4, 8)
        assert [(r.position, r.ts, r.data) for r in again.read(0)] == [
            (p, 100.0 + p - 1, {"i": p - 1, "ok": True}) for p in range(4, 9)
        ]
        assert again.append("d", {}, 0.0) == 9
        await again.close()
        third = Log(retain=100, db=db)
        await third.open()
        assert third.last_position == 9
        await third.close()

    asyncio.run(main())


class _Dev2Block(Block):
    """Positions alternate between devices "a" and "b"; data {"p": position}."""

    def __init__(self, start: int, n: int) -> None:
        super().__init__(start, n, frozenset({"a", "b"}))
        self.made: dict[int, Record] = {}

    def record(self, position: int) -> Record:
        assert self.start <= position < self.end
        r = self.made.get(position)
        if r is None:
            dev = "ab"[position % 2]
            r = self.made[position] = Record(position, dev, 1.0, {"p": position})
        return r


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(st.one_of(st.none(), st.integers(1, 40)), min_size=1, max_size=30),
    retain=st.integers(1, 120),
    after=st.integers(0, 400),
    limit=st.integers(1, 50),
)
def test_blocks_read_like_appended_records(
    ops: list[int | None], retain: int, after: int, limit: int
) -> None:
    """A log fed with blocks reads exactly like one fed record by record."""
    log, model = Log(retain=retain), Log(retain=retain)
    for op in ops:
        if op is None:
            p = model.last_position + 1
            model.append("ab"[p % 2], {"p": p}, 1.0)
            log.append("ab"[p % 2], {"p": p}, 1.0)
        else:
            for p in range(model.last_position + 1, model.last_position + op + 1):
                model.append("ab"[p % 2], {"p": p}, 1.0)
            assert log.extend_block(_Dev2Block(log.last_position + 1, op)) == model.last_position
    assert (log.first_position, log.last_position, len(log)) == (
        model.first_position,
        model.last_position,
        len(model),
    )
    assert log.read(after, None, limit) == model.read(after, None, limit)
    assert log.read(after, {"b"}, limit) == model.read(after, {"b"}, limit)
    assert log.scan(after, {"a"}, limit, 7) == model.scan(after, {"a"}, limit, 7)
    assert log.gap(after) == model.gap(after)
    assert log.last_record() == model.last_record()
    blk = log.block_after(after)
    if blk is not None:
        nxt = log.read(after, None, 1)[0]  # after + 1, or the first retained
        assert nxt.position == max(after + 1, log.first_position)
        assert blk.start <= nxt.position < blk.end
        assert nxt is blk.record(nxt.position)


def test_extend_block_must_continue_the_positions() -> None:
    log = Log()
    log.append("a", {}, 1.0)
    with pytest.raises(ValueError):
        log.extend_block(_Dev2Block(5, 3))
    with pytest.raises(ValueError):
        log.extend_block(_Dev2Block(2, 0))
    assert log.block_after(0) is None and log.last_position == 1


def test_firehose_block_frames_match_its_records() -> None:
    """Pre-encoded JSON frames and patched binary batches say what the records say."""
    log = Log(retain=100_000)
    fh = Firehose(log, ["sim-0001", "sim-0002", "sim-0003"], block=700)
    while log.last_position < 2500:  # crosses the 3- to 4-digit boundary of positions
        fh.refill()
    assert log.read(998, None, 3)[0].position == 999  # blocks split at digit boundaries
    for a, b in ((1, 10), (999, 1001), (1000, 1700), (1234, 1500), (2000, 2001)):
        blk = log.block_after(a - 1)
        assert blk is not None
        b = min(b, blk.end)
        recs = log.read(a - 1, None, b - a)
        assert [r.position for r in recs] == list(range(a, b))
        assert bytes(blk.json_frames(a, b) or b"") == b"".join(r.frame() for r in recs)
        for r in recs[:5]:
            assert json.loads(r.frame()[4 if r.frame()[1] == 126 else 2 :]) == r.as_tick()
        payload = pytest.importorskip("iotcommute.payload")
        frames = blk.binary_frames(a, b)
        assert frames is not None
        got = []
        for f in frames:
            assert f[0] == 0x82
            got += payload.decode_batch(f[4 if f[1] == 126 else 2 :])
        assert got == [r.as_tick() for r in recs]


def test_registry_checks_credentials() -> None:
    reg = demo_registry(3)
    dev = reg.check_device(README_DEVICE_ID, README_DEVICE_KEY)
    assert dev is not None and dev.owner == "demo-user"
    assert reg.check_device(README_DEVICE_ID, README_DEVICE_KEY[:-1] + "X") is None
    assert reg.check_device("nope", README_DEVICE_KEY) is None
    assert reg.check_device(README_DEVICE_ID, "") is None
    assert {d.id for d in reg.devices_of("demo-user")} >= {README_DEVICE_ID, "sim-0001", "sim-0003"}
    assert "other-0001" not in {d.id for d in reg.devices_of("demo-user")}
    app = reg.app("demo-app")
    assert app is not None and app.user_id == "demo-user"
    user = reg.user("demo-user")
    assert user is not None and user.password == "demo-pass"
    assert README_DEVICE_KEY not in repr(dev) and "demo-secret" not in repr(app)
    assert "demo-pass" not in repr(user)


def test_sessions_expire_and_request_tokens_are_single_use() -> None:
    now = [1000.0]
    store = SessionStore(clock=lambda: now[0])
    s = store.create("u", "k", ttl=10)
    assert store.get(s.access_token) == s
    assert s.access_token not in repr(s)
    now[0] += 11
    assert store.get(s.access_token) is None
    r = store.create_request_token("u", "k", ttl=5)
    assert store.redeem_request_token(r.request_token) == r
    assert store.redeem_request_token(r.request_token) is None
    s2 = store.create("u", "k")
    assert store.delete(s2.access_token) and store.get(s2.access_token) is None


def test_registry_file(tmp_path: Path) -> None:
    p = tmp_path / "reg.json"
    p.write_text(
        '{"users": [{"user_id": "u1", "password": "pw"}],'
        ' "apps": [{"api_key": "a1", "api_secret": "s1", "user_id": "u1"}],'
        ' "devices": [{"id": "d1", "key": "K1", "owner": "u1", "roles": ["device"]}]}'
    )
    reg = load_registry(p)
    assert isinstance(reg, Registry) and len(reg) == 1
    d = reg.check_device("d1", "K1")
    assert d is not None and d.roles == ("device",)
    p.write_text("[]")
    with pytest.raises(ValueError):
        load_registry(p)
