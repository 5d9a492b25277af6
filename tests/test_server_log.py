"""The server's log (positions, trimming, cursors, SQLite) and registry (credentials, sessions)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotcommute.server import Log, Registry, demo_registry, load_registry
from iotcommute.server.registry import README_DEVICE_ID, README_DEVICE_KEY, SessionStore


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
    log = Log(retain=5, db=db)
    for i in range(8):
        log.append("d", {"i": i, "ok": True}, 100.0 + i)
    log.close()
    again = Log(retain=5, db=db)
    assert (again.first_position, again.last_position) == (4, 8)
    assert [(r.position, r.ts, r.data) for r in again.read(0)] == [
        (p, 100.0 + p - 1, {"i": p - 1, "ok": True}) for p in range(4, 9)
    ]
    assert again.append("d", {}, 0.0) == 9
    again.close()
    assert Log(retain=100, db=db).last_position == 9


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
