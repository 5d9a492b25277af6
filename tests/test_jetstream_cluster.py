"""Stateless server processes on one JetStream log (real processes, real nats-server).

Two `ReferenceServer` processes share a stream: devices publish to either, a client resumes
on the other process exactly once, a re-sent publish id is stored once across processes,
and a command reaches a device connected to the other process.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest

from iotcommute.server.registry import sim_device_id
from tests.jsprocs import ServerProc, connect, device_headers, publish_all, recv_json, recv_type
from tests.natsfixture import NatsServer, nats_server

__all__ = ["nats_server"]

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def two_servers(nats_server: NatsServer) -> Iterator[tuple[ServerProc, ServerProc]]:
    a = ServerProc(nats_server.url).start()
    try:
        b = ServerProc(nats_server.url).start()
    except BaseException:
        a.stop()
        raise
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def test_two_processes_one_log(two_servers: tuple[ServerProc, ServerProc]) -> None:
    a, b = two_servers

    async def main() -> None:
        dev1, w1 = await connect(a.ws_url, device_headers(1))
        dev2, w2 = await connect(b.ws_url, device_headers(2))
        p1 = await publish_all(dev1, "a", 40)
        p2 = await publish_all(dev2, "b", 40)
        positions = sorted([*p1.values(), *p2.values()])
        assert positions == list(range(1, 81))  # one sequence for both processes

        # A publish re-sent (same id) to the *other* process: stored once, same position.
        dev1b, _ = await connect(b.ws_url, device_headers(1))
        await dev1b.send(json.dumps({"type": "publish", "id": "a-7", "data": {"k": 7}}))
        m = await recv_type(dev1b, "published")
        assert m == {"type": "published", "id": "a-7", "position": p1["a-7"], "duplicate": True}
        await dev1b.close()

        # A client reads part of the log on b, then resumes on a: every record once.
        cl, _ = await connect(b.ws_url, device_headers(3, role="client"))
        await cl.send(json.dumps({"type": "subscribe", "id": 1, "devices": "*", "from": 0}))
        await recv_type(cl, "subscribed")
        seen: list[int] = []
        while len(seen) < 30:
            t = await recv_json(cl)
            if t["type"] == "tick":
                seen.append(t["position"])
        await cl.close()
        more = await publish_all(dev2, "c", 10)  # while the client is away
        cl, _ = await connect(a.ws_url, device_headers(3, role="client"))
        sub = {"type": "subscribe", "id": 2, "devices": "*", "from": seen[-1]}
        await cl.send(json.dumps(sub))
        await recv_type(cl, "subscribed")
        while len(seen) < 90:
            t = await recv_json(cl)
            if t["type"] == "tick":
                seen.append(t["position"])
        assert seen == list(range(1, 91))
        assert max(more.values()) == 90

        # A command from a client on a to the device connected to b, and its ack back.
        await cl.send(
            json.dumps({"type": "command", "id": "c-1", "device": sim_device_id(2), "data": {}})
        )
        cmd = await recv_type(dev2, "command")
        assert cmd["id"] == "c-1" and cmd["from"]
        await dev2.send(json.dumps({"type": "ack", "id": "c-1", "ok": True, "data": {"x": 1}}))
        ack = await recv_type(cl, "ack")
        assert ack == {"type": "ack", "id": "c-1", "ok": True, "data": {"x": 1}}
        # a device connected nowhere: refused as offline (no responder), quickly
        t0 = time.monotonic()
        await cl.send(
            json.dumps({"type": "command", "id": "c-2", "device": sim_device_id(9), "data": {}})
        )
        ack = await recv_type(cl, "ack")
        assert ack["ok"] is False and ack["error"] == "device offline"
        assert time.monotonic() - t0 < 5
        for ws in (cl, dev1, dev2):
            await ws.close()
        assert w1["position"] == 0 and w2["position"] == 0

    asyncio.run(asyncio.wait_for(main(), 60))
