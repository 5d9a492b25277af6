"""A 3-node JetStream cluster with replicas 3: a node (the stream's leader) is SIGKILLed
mid-stream; appends that were refused meanwhile are re-sent with their ids, nothing that was
acknowledged is lost, nothing is stored twice, and a reader on another connection sees the
whole stream in order."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.jetstream.natsfixture import NatsCluster, nats_cluster

__all__ = ["nats_cluster"]


@pytest.mark.timeout(90)
def test_leader_killed_mid_stream(nats_cluster: NatsCluster) -> None:
    from iotcommute.server.cluster import SharedLog
    from iotcommute.server.store.jetstream import JetStreamStore

    deadline = time.monotonic() + 60  # the whole run, the leader's failover included
    n = 600

    async def main() -> dict[str, Any]:
        urls = nats_cluster.urls
        writer = SharedLog(JetStreamStore(urls, name="r3", replicas=3, append_timeout=2.0), 10_000)
        reader = SharedLog(JetStreamStore(urls, name="r3", replicas=3), 10_000)
        await writer.open()
        await reader.open()
        acked: dict[str, int] = {}
        refused = 0
        killed = ""

        async def publish(k: int) -> None:
            nonlocal refused
            pid = f"p-{k}"
            while True:
                fut: asyncio.Future[tuple[BaseException | None, int]] = (
                    asyncio.get_running_loop().create_future()
                )

                def done(
                    err: BaseException | None,
                    a: int,
                    b: int,
                    dup: bool,
                    fut: asyncio.Future[tuple[BaseException | None, int]] = fut,
                ) -> None:
                    if not fut.done():
                        fut.set_result((err, b))

                try:
                    writer.publish("dev-1", [(time.time(), {"k": k}, None)], pid, done)
                    err, pos = await fut
                except Exception as exc:  # refused at once: NATS not connected
                    err, pos = exc, 0
                if err is None:
                    acked[pid] = pos
                    return
                refused += 1
                await asyncio.sleep(0.2)  # the device library re-sends the same id

        for k in range(n):
            if k == n // 3:
                info = await writer.js_store.js.stream_info("r3-p0")  # type: ignore[union-attr]
                assert info.cluster is not None and info.cluster.leader
                killed = info.cluster.leader
                next(s for s in nats_cluster.nodes if s.name == killed).kill()
            await publish(k)
        await asyncio.wait_for(reader.wait(max(acked.values()) - 1), 30)
        got = reader.read(0, None, 10 * n)
        entries = await reader.js_store.read(0, 0, 10 * n)
        await writer.close()
        await reader.close()
        return {"acked": acked, "got": got, "entries": entries, "refused": refused, "k": killed}

    out = asyncio.run(asyncio.wait_for(main(), deadline - time.monotonic()))
    acked, got, entries = out["acked"], out["got"], out["entries"]
    assert len(acked) == n
    # nothing lost, nothing twice: one stored record per publish id, at the acked position
    assert [e.pid for e in entries] == [f"p-{k}" for k in range(n)]
    assert {e.pid: e.offset for e in entries} == acked
    # the reader (another connection) saw the whole stream, in order
    assert [r.position for r in got] == [e.offset for e in entries]
    print(f"leader {out['k']} killed; {out['refused']} appends refused and re-sent")
