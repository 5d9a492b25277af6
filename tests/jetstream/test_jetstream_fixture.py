"""The nats-server fixture itself: starts with JetStream, answers, restarts, stops."""

from __future__ import annotations

import asyncio
import time

from tests.jetstream.natsfixture import NatsCluster, NatsServer, nats_cluster, nats_server

__all__ = ["nats_cluster", "nats_server"]


async def _roundtrip(urls: list[str], replicas: int = 1) -> int:
    import nats
    import nats.js.errors

    nc = await nats.connect(servers=urls, connect_timeout=2, max_reconnect_attempts=3)
    try:
        # a replicated stream waits for its RAFT group: seconds on a loaded machine
        js = nc.jetstream(timeout=30)
        await js.add_stream(name="FIXTURE", subjects=["fixture.>"], num_replicas=replicas)
        # the stream's leader answers once elected; until then the engine says "no responders"
        deadline = time.monotonic() + 30
        while True:
            try:
                ack = await js.publish("fixture.a", b"x")
                return int(ack.seq)
            except nats.js.errors.NoStreamResponseError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
    finally:
        await nc.close()


def test_single_server_jetstream(nats_server: NatsServer) -> None:
    assert asyncio.run(_roundtrip([nats_server.url])) == 1
    nats_server.restart()
    # the file store survived the restart: the next record gets the next sequence
    assert asyncio.run(_roundtrip([nats_server.url])) == 2


def test_three_node_cluster(nats_cluster: NatsCluster) -> None:
    assert asyncio.run(_roundtrip(nats_cluster.urls, replicas=3)) == 1
