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
from typing import Any

import pytest

from iotcommute.server.registry import sim_device_id
from tests.jetstream.jsprocs import (
    ServerProc,
    connect,
    device_headers,
    publish_all,
    recv_json,
    recv_type,
)
from tests.jetstream.natsfixture import NatsServer, nats_server

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

        # A batch publish: stored together, answered with first and last; re-sent to the
        # other process: the same positions, as a duplicate.
        batch = {"type": "publish", "id": "bt-1", "batch": [{"data": {"i": i}} for i in range(3)]}
        await dev2.send(json.dumps(batch))
        m = await recv_type(dev2, "published")
        assert (m["first"], m["position"]) == (91, 93)
        dev2b, _ = await connect(a.ws_url, device_headers(2))
        await dev2b.send(json.dumps(batch))
        m2 = await recv_type(dev2b, "published")
        assert m2 == {**m, "duplicate": True}
        await dev2b.close()
        while seen[-1] < 93:
            t = await recv_json(cl)
            if t["type"] == "tick":
                seen.append(t["position"])
        assert seen == list(range(1, 94))

        # A command from a client on a to the device connected to b, and its ack back.
        await cl.send(
            json.dumps({"type": "command", "id": "c-1", "device": sim_device_id(2), "data": {}})
        )
        cmd = await recv_type(dev2, "command")
        assert cmd["id"] == "c-1" and cmd["from"]
        await dev2.send(json.dumps({"type": "ack", "id": "c-1", "ok": True, "data": {"x": 1}}))
        ack = await recv_type(cl, "ack")
        assert ack == {"type": "ack", "id": "c-1", "ok": True, "data": {"x": 1}}
        # a device connected nowhere: refused as offline (no responder), not a timeout
        await cl.send(
            json.dumps({"type": "command", "id": "c-2", "device": sim_device_id(9), "data": {}})
        )
        ack = await recv_type(cl, "ack")
        assert ack["ok"] is False and ack["error"] == "device offline"
        for ws in (cl, dev1, dev2):
            await ws.close()
        assert w1["position"] == 0 and w2["position"] == 0

    asyncio.run(asyncio.wait_for(main(), 60))


def test_engine_away_publishers_get_unavailable(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """nats-server killed under a running server: a publish is answered `unavailable`
    (nothing acknowledged or streamed that is not stored), the server reconnects by itself
    and logs it, and after the restart publishing and streaming go on without loss."""
    import logging

    from iotcommute.server import ServerThread

    caplog.set_level(logging.INFO, logger="iotcommute")
    srv = ServerThread("127.0.0.1", 0, log_url=nats_server.url).start()
    try:

        async def main() -> None:
            dev, _ = await connect(srv.ws_url, device_headers(1))
            cl, _ = await connect(srv.ws_url, device_headers(3, role="client"))
            await cl.send(json.dumps({"type": "subscribe", "id": 1, "from": 0}))
            await recv_type(cl, "subscribed")
            before = await publish_all(dev, "x", 10)
            assert sorted(before.values()) == list(range(1, 11))

            nats_server.kill()
            # publish until refused: the first ones may be in flight when the loss shows
            refused = None
            deadline = time.monotonic() + 15
            k = 0
            while refused is None and time.monotonic() < deadline:
                await dev.send(json.dumps({"type": "publish", "id": f"y-{k}", "data": {"k": k}}))
                m = await recv_json(dev)
                if m["type"] == "error":
                    refused = m
                k += 1
            assert refused is not None and refused["code"] == "unavailable"
            assert refused["id"] == f"y-{k - 1}"

            nats_server.start()

            async def republish() -> dict[str, Any]:
                while True:  # the server reconnects by itself; retry as the device library does
                    await dev.send(json.dumps({"type": "publish", "id": "z-0", "data": {"z": 0}}))
                    m = await recv_json(dev)
                    if m["type"] == "published":
                        return m
                    assert m["type"] == "error" and m["code"] == "unavailable"
                    await asyncio.sleep(0.2)

            # the server must reconnect to NATS by itself within 20 s
            m = await asyncio.wait_for(republish(), 20)
            # the refused publish re-sent: stored once (it may have been stored before the
            # kill and only its PubAck lost: then it is a duplicate with its first position)
            last_ok = m["position"]
            tail = await publish_all(dev, "w", 5)
            assert min(tail.values()) > last_ok
            # the subscriber saw exactly the stored records, in order, each once
            seen: list[int] = []
            while not seen or seen[-1] < max(tail.values()):
                t = await recv_json(cl, 15)
                if t["type"] == "tick":
                    seen.append(t["position"])
            assert seen == sorted(set(seen))
            assert set(before.values()) | set(tail.values()) | {last_ok} <= set(seen)
            for ws in (dev, cl):
                await ws.close()

        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        srv.stop()
    msgs = [r.getMessage() for r in caplog.records]
    assert any("connection lost" in m for m in msgs)
    assert any("re-established" in m for m in msgs)
