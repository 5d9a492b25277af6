"""Failover of a consumer group on a shared JetStream log (issue 15, "done when").

Three server processes on one nats-server; six devices publish with ids; a group of three
members in three processes consumes. Mid-stream one server process is SIGKILLed (its member
and its devices' connections die with it; the devices reconnect to another process and
re-send), then one member vanishes without a goodbye, then a new member joins. Afterwards:
the union of what the members processed equals the log per partition (0 lost), duplicates
only within the commit window of a member that lost a partition, every accepted commit came
from the partition's owner, and every acknowledged publish is in the log exactly once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import pytest

from iotcommute.partition import partition
from tests.jetstream.jsprocs import GroupMember, Publisher, ServerProc, device_headers, until
from tests.jetstream.natsfixture import NatsServer, nats_server

__all__ = ["nats_server"]

PARTITIONS = 4


@pytest.mark.timeout(120)
def test_group_failover_nothing_lost(nats_server: NatsServer) -> None:
    deadline = time.monotonic() + 60  # the whole failover, start-up included
    procs = [
        ServerProc(nats_server.url, "--partitions", str(PARTITIONS), "--group-session-timeout", "2")
        for _ in range(3)
    ]
    try:
        for p in procs:
            p.start()
        urls = [p.ws_url for p in procs]
        left = deadline - time.monotonic()
        asyncio.run(asyncio.wait_for(scenario(nats_server, procs, urls), left))
    finally:
        for p in procs:
            p.stop()


async def scenario(nats: NatsServer, procs: list[ServerProc], urls: list[str]) -> None:
    from iotcommute.server.store.jetstream import JetStreamStore

    hdr = device_headers(30, role="client")
    members = [await GroupMember(f"m{i + 1}", urls[i], "g", hdr).start() for i in range(3)]
    await until(lambda: sum(len(m.owned) for m in members) == PARTITIONS)
    pubs = [Publisher(i + 1, urls, 150) for i in range(6)]
    tasks = [asyncio.get_running_loop().create_task(p.run()) for p in pubs]

    def acked() -> int:
        return sum(len(p.acked) for p in pubs)

    await until(lambda: acked() >= 250)
    procs[2].kill()  # SIGKILL a server process: members[2] and its devices lose it
    members[2].kill()
    await until(lambda: acked() >= 500)
    members[0].kill()  # a member vanishes (no close, no last commit)
    await until(lambda: acked() >= 650)
    members.append(await GroupMember("m4", urls[1], "g", hdr).start())
    await asyncio.gather(*tasks)
    assert any(p.reconnects for p in pubs)  # the kill did hit publishers mid-stream

    # the log as the engine holds it
    store = JetStreamStore(nats.url)
    await store.open()
    log = await store.read(0, 0, 100_000)
    await store.close()
    by_part: dict[int, set[int]] = {p: set() for p in range(PARTITIONS)}
    for e in log:
        by_part[partition(e.device, PARTITIONS)].add(e.offset)
    # every acknowledged publish is stored exactly once, at the position it was told
    pids = Counter((e.device, e.pid) for e in log)
    assert len(log) == sum(p.n for p in pubs) == len(pids)
    assert max(pids.values()) == 1
    stored = {json.loads(e.pid or "null"): e.offset for e in log}  # ids kept as JSON text
    for pub in pubs:
        for pid, pos in pub.acked.items():
            assert stored[pid] == pos

    everything = {(p, pos) for p, ps in by_part.items() for pos in ps}
    await until(lambda: set().union(*(set(m.processed) for m in members)) >= everything, 30)
    # the new member and the survivors took over partitions of the lost ones
    assert members[3].processed
    assert sum(kind == "assign" for kind, _ in members[1].events + members[3].events) >= 2
    # 0 lost: the union of what was processed is the log, per partition
    seen: dict[int, Counter[int]] = {p: Counter() for p in range(PARTITIONS)}
    for m in members:
        for p, pos in m.processed:
            seen[p][pos] += 1
    for p in range(PARTITIONS):
        assert set(seen[p]) == by_part[p], f"partition {p}"
    # duplicates only within a commit window: every processing of a record but the last
    # one happened in a tenure (assign..revoke or kill) whose last accepted commit stayed
    # below it, i.e. the owner lost the partition before committing that record
    runs: dict[tuple[int, int], list[tuple[float, str, int]]] = {}
    for m in members:
        for p, pos, ten, at in m.processed_in:
            runs.setdefault((p, pos), []).append((at, m.name, ten))
    by_name = {m.name: m for m in members}
    for (p, pos), who in runs.items():
        who.sort()
        for _, name, ten in who[:-1]:
            last_commit = by_name[name].tenure_commit.get((p, ten), 0)
            assert last_commit < pos, f"{pos} of partition {p} again after a commit: {who}"
    # commits: positions never go back, and only a member that owned the partition
    # (assigned and not revoked, in its own view) had one accepted
    for m in members:
        for p in {q for q, _ in m.commits}:
            mine = [c for q, c in m.commits if q == p]
            assert mine == sorted(mine)
            assert any(kind == "assign" and p in ps for kind, ps in m.events)
    dups = sum(n - 1 for c in seen.values() for n in c.values())
    print(f"{len(log)} records, {dups} delivered twice (commit windows)")
    for m in members:
        await m.close()
