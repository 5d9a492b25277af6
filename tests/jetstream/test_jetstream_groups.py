"""Partitions and consumer groups on a shared JetStream log (real nats-server, real server
processes): the partition function's vectors, static partition subscriptions, assignment,
rebalancing on join and leave, commits that only the owner can make."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from iotcommute.partition import partition, stable_hash
from iotcommute.server.registry import sim_device_id
from tests.jetstream.jsprocs import (
    GroupMember,
    ServerProc,
    connect,
    device_headers,
    publish_all,
    recv_json,
    recv_type,
    until,
)
from tests.jetstream.natsfixture import NatsServer, nats_server

__all__ = ["nats_server"]

# The vectors of docs/protocol.md, section 14 (32-bit FNV-1a of the UTF-8 bytes).
VECTORS = [
    ("", 0x811C9DC5, 1, 5),
    ("a", 0xE40C292C, 1, 12),
    ("foobar", 0xBF9CF968, 1, 8),
    ("FY6ODPIVU522SY1", 0xED235A9D, 0, 13),
    ("sim-0001", 0x9C7A2B98, 2, 8),
    ("sim-0002", 0x9F7A3051, 2, 1),
    ("sim-0003", 0x9E7A2EBE, 0, 14),
    ("capteur-été", 0x0FD71DCE, 0, 14),
]


@pytest.mark.parametrize(("device", "h", "p3", "p16"), VECTORS)
def test_partition_vectors(device: str, h: int, p3: int, p16: int) -> None:
    assert stable_hash(device) == h
    assert partition(device, 3) == p3
    assert partition(device, 16) == p16
    assert partition(device, 1) == 0


@pytest.fixture
def servers(nats_server: NatsServer) -> Iterator[list[ServerProc]]:
    procs: list[ServerProc] = []
    try:
        for _ in range(2):
            procs.append(
                ServerProc(
                    nats_server.url, "--partitions", "4", "--group-session-timeout", "2"
                ).start()
            )
        yield procs
    finally:
        for p in procs:
            p.stop()


@pytest.mark.timeout(120)
def test_static_partitions_and_group_rebalance(servers: list[ServerProc]) -> None:
    a, b = servers

    async def main() -> None:
        devs = [await connect((a, b)[i % 2].ws_url, device_headers(i + 1)) for i in range(8)]
        for i, (ws, _) in enumerate(devs):
            await publish_all(ws, f"d{i}", 10)
        # static: only the devices of partition 1 (v1 clients simply do not send this)
        cl, _ = await connect(b.ws_url, device_headers(20, role="client"))
        await cl.send(json.dumps({"type": "subscribe", "id": 1, "partitions": [1], "from": 0}))
        sub = await recv_type(cl, "subscribed")
        assert all(partition(d, 4) == 1 for d in sub["devices"])
        ticks: list[dict[str, Any]] = []
        want = sum(1 for i in range(8) if partition(sim_device_id(i + 1), 4) == 1) * 10
        while len(ticks) < want:
            t = await recv_json(cl)
            if t["type"] == "tick":
                ticks.append(t)
        assert all(partition(t["device"], 4) == 1 for t in ticks)
        await cl.close()

        hdr = device_headers(21, role="client")
        m1 = await GroupMember("m1", a.ws_url, "ingest", hdr).start()
        await until(lambda: m1.owned == {0, 1, 2, 3}, 15)
        await until(lambda: len(m1.processed) == 80, 15)
        await until(lambda: all(m1.committed.get(p, 0) > 0 for p in m1.done), 15)
        m2 = await GroupMember("m2", b.ws_url, "ingest", hdr).start()
        await until(lambda: len(m2.owned) == 2 and len(m1.owned) == 2, 15)
        assert m1.owned.isdisjoint(m2.owned)
        # m2 starts its partitions from m1's commits: nothing old is delivered again
        assert m2.processed == []
        for i, (ws, _) in enumerate(devs):
            await publish_all(ws, f"e{i}", 5)
        await until(lambda: len(m1.processed) + len(m2.processed) == 120, 15)
        assert all(p in m2.owned for p, _ in m2.processed)
        # a member that leaves hands its partitions over at once, from its commits
        await until(lambda: all(m2.committed.get(p, 0) >= m2.done[p] for p in m2.owned), 15)
        await m2.close()
        await until(lambda: m1.owned == {0, 1, 2, 3}, 10)
        for i, (ws, _) in enumerate(devs):
            await publish_all(ws, f"f{i}", 2)
        await until(lambda: len(m1.processed) + len(m2.processed) == 136, 15)
        every = sorted(pos for _, pos in m1.processed + m2.processed)
        assert every == list(range(1, 137))  # each record processed exactly once
        # a commit is refused only for a partition that was just revoked (it raced the revoke)
        for m in (m1, m2):
            revoked = {p for kind, ps in m.events if kind == "revoke" for p in ps}
            assert set(m.refused) <= revoked
            assert not m.errors
        await m1.close()
        for ws, _ in devs:
            await ws.close()

    asyncio.run(asyncio.wait_for(main(), 100))


@pytest.mark.timeout(120)
def test_group_goes_on_after_the_engine_restarts(nats_server: NatsServer) -> None:
    """nats-server killed and restarted under a group: the member keeps its partitions (or
    gets them back), later records are delivered and commits are accepted again."""
    srv = ServerProc(nats_server.url, "--partitions", "2", "--group-session-timeout", "2").start()

    async def publish_retrying(ws: Any, pid: str) -> None:
        async def retry() -> None:
            while True:
                await ws.send(json.dumps({"type": "publish", "id": pid, "data": {"x": 1}}))
                m = await recv_json(ws)
                if m["type"] == "published":
                    return
                assert m["code"] == "unavailable", m
                await asyncio.sleep(0.3)

        await asyncio.wait_for(retry(), 30)  # accepted again within 30 s, or TimeoutError

    async def main() -> None:
        dev, _ = await connect(srv.ws_url, device_headers(1))
        m1 = await GroupMember("m1", srv.ws_url, "g", device_headers(22, role="client")).start()
        m1.commit_every = 5
        await until(lambda: m1.owned == {0, 1}, 15)
        for k in range(10):
            await publish_retrying(dev, f"a{k}")
        await until(lambda: len(m1.processed) == 10, 15)
        nats_server.kill()
        await asyncio.sleep(0.5)
        nats_server.start()
        for k in range(10):
            await publish_retrying(dev, f"b{k}")
        await until(lambda: len({pos for _, pos in m1.processed}) == 20, 30)
        n_commits = len(m1.commits)
        for k in range(10):
            await publish_retrying(dev, f"c{k}")
        await until(lambda: len({pos for _, pos in m1.processed}) == 30, 30)
        await until(lambda: len(m1.commits) > n_commits, 30)  # commits work again
        assert sorted({pos for _, pos in m1.processed}) == list(range(1, 31))
        await m1.close()
        await dev.close()

    try:
        asyncio.run(asyncio.wait_for(main(), 100))
    finally:
        srv.stop()


@pytest.mark.timeout(60)
def test_binary_group_member(nats_server: NatsServer) -> None:
    """A member in the binary format gets its partitions' records as tick batches."""
    from iotcommute.payload import decode_batch

    srv = ServerProc(nats_server.url, "--partitions", "2").start()

    async def main() -> None:
        devs = [await connect(srv.ws_url, device_headers(i)) for i in (1, 2, 3)]
        for i, (ws, _) in enumerate(devs):
            await publish_all(ws, f"x{i}", 10)
        cl, _ = await connect(srv.ws_url, device_headers(23, role="client"))
        await cl.send(json.dumps({"type": "subscribe", "id": 1, "group": "b", "format": "binary"}))
        assert (await recv_type(cl, "subscribed"))["format"] == "binary"
        got: list[int] = []
        assigned: set[int] = set()
        while len(got) < 30:
            raw = await asyncio.wait_for(cl.recv(), 10)
            if isinstance(raw, bytes):
                for t in decode_batch(raw):
                    assert partition(t["device"], 2) in assigned
                    got.append(t["position"])
            else:
                m = json.loads(raw)
                if m["type"] == "assign":
                    assigned |= {a["partition"] for a in m["partitions"]}
        assert sorted(got) == list(range(1, 31))
        await cl.close()
        for ws, _ in devs:
            await ws.close()

    try:
        asyncio.run(asyncio.wait_for(main(), 40))
    finally:
        srv.stop()


@pytest.mark.timeout(90)
def test_a_rebalance_waits_for_the_releasing_commit(servers: list[ServerProc]) -> None:
    """A member that gets a rebalance's revoke hands the partitions back with a commit
    marked "release": the next owner starts exactly after it (no duplicates), although the
    member had committed nothing before. Protocol-level members (raw websockets)."""
    a, b = servers

    async def main() -> None:
        devs = [await connect(a.ws_url, device_headers(i + 1)) for i in range(8)]
        for i, (ws, _) in enumerate(devs):
            await publish_all(ws, f"d{i}", 5)
        hdr = device_headers(22, role="client")
        m1, _ = await connect(a.ws_url, hdr)
        await m1.send(json.dumps({"type": "subscribe", "id": 1, "group": "rel"}))
        await recv_type(m1, "subscribed")
        last: dict[int, int] = {}
        owned: set[int] = set()
        revoked: list[int] = []
        m2: Any = None
        while len(revoked) < 2:  # one revoke message per partition here
            m = await recv_json(m1)
            if m["type"] == "assign":
                owned |= {x["partition"] for x in m["partitions"]}
            elif m["type"] == "tick":
                last[partition(m["device"], 4)] = m["position"]
                if sum(1 for _ in last) == 4 and m2 is None and len(owned) == 4:
                    m2, _ = await connect(b.ws_url, hdr)  # joins: a rebalance follows
                    await m2.send(json.dumps({"type": "subscribe", "id": 1, "group": "rel"}))
            elif m["type"] == "revoke":
                revoked += m["partitions"]
        assert m2 is not None
        release = [{"partition": p, "position": last.get(p, 0)} for p in revoked]
        await m1.send(json.dumps({"type": "commit", "id": 7, "partitions": release,
                                  "release": True}))  # fmt: skip
        ans = await recv_type(m1, "committed")
        assert ans["partitions"] == release and ans["refused"] == []
        got: dict[int, int] = {}
        while len(got) < 2:
            m = await recv_json(m2)
            if m["type"] == "assign":
                got.update({x["partition"]: x["position"] for x in m["partitions"]})
            elif m["type"] == "tick":
                p = partition(m["device"], 4)
                assert m["position"] > got[p]  # nothing m1 released is delivered again
        assert got == {p: last.get(p, 0) for p in revoked}
        # the partitions are m2's now: a commit of them from m1 is refused
        await m1.send(json.dumps({"type": "commit", "id": 8, "partitions": release}))
        assert (await recv_type(m1, "committed"))["refused"] == revoked
        for ws in (m1, m2, *(w for w, _ in devs)):
            await ws.close()

    asyncio.run(asyncio.wait_for(main(), 60))
