"""JetStreamStore against a real nats-server: the LogStore contract, engine away, trimming.

Every test is bounded (a few seconds) and starts its own nats-server (tests/natsfixture.py);
without the binary the tests are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from iotcommute.server.store.base import Entry, StoreError
from tests.jetstream.natsfixture import NatsServer, nats_server

__all__ = ["nats_server"]

T = TypeVar("T")

pytestmark = pytest.mark.timeout(60)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def entries(first: int, n: int, device: str = "dev-1", pid: str | None = None) -> list[Entry]:
    return [
        Entry(i, device, 1_764_000_000.0 + i, b'{"n":%d}' % i, pid) for i in range(first, first + n)
    ]


def store(url: str, **kw: Any) -> Any:
    from iotcommute.server.store.jetstream import JetStreamStore

    kw.setdefault("append_timeout", 2.0)
    return JetStreamStore(url, **kw)


async def wait_until(pred: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def test_append_read_reopen(nats_server: NatsServer) -> None:
    async def main() -> None:
        s = store(nats_server.url, name="log1")
        log_id = await s.open()
        assert s.last_offset(0) == 0
        assert await s.read(0, 0, 10) == []
        batch = entries(1, 5, pid="p-1")
        await s.append(0, batch)
        assert s.last_offset(0) == 5
        await s.append(0, entries(6, 3))
        got = await s.read(0, 2, 100)
        assert [e.offset for e in got] == [3, 4, 5, 6, 7, 8]
        assert got[0] == batch[2]  # device, ts, data bytes and the publish id round-trip
        assert [e.offset for e in await s.read(0, 0, 4)] == [1, 2, 3, 4]
        await s.close()
        # A new process (a restart) sees the same log: same id, positions continue.
        s2 = store(nats_server.url, name="log1")
        assert await s2.open() == log_id
        assert s2.last_offset(0) == 8
        await s2.append(0, entries(9, 1))
        assert [e.offset for e in await s2.read(0, 7, 10)] == [8, 9]
        await s2.close()
        # Another log name is another log.
        s3 = store(nats_server.url, name="log2")
        assert await s3.open() != log_id
        assert s3.last_offset(0) == 0
        await s3.close()

    run(main())


def test_offset_is_the_stream_sequence_or_nothing(nats_server: NatsServer) -> None:
    """Two writers that both think they own the tail: the engine refuses the second, so a
    position is never stored twice with two contents."""

    async def main() -> None:
        a = store(nats_server.url, name="two")
        b = store(nats_server.url, name="two")
        await a.open()
        await b.open()
        await a.append(0, entries(1, 3, device="a"))
        with pytest.raises(StoreError, match="expected"):
            await b.append(0, entries(1, 2, device="b"))
        # b re-opens (what the Log does after a failure) and continues above a's records
        await b.open()
        assert b.last_offset(0) == 3
        await b.append(0, entries(4, 2, device="b"))
        got = await a.read(0, 0, 100)
        assert [(e.offset, e.device) for e in got] == [
            (1, "a"),
            (2, "a"),
            (3, "a"),
            (4, "b"),
            (5, "b"),
        ]
        # the same offsets again (a retried append after a lost PubAck): refused, not stored
        with pytest.raises(StoreError):
            await a.append(0, entries(4, 2, device="a"))
        assert len(await a.read(0, 0, 100)) == 5
        await a.close()
        await b.close()

    run(main())


def test_partitions_are_separate_sequences(nats_server: NatsServer) -> None:
    async def main() -> None:
        s = store(nats_server.url, name="parts", partitions=3)
        await s.open()
        await s.append(0, entries(1, 2, device="x"))
        await s.append(2, entries(1, 4, device="y"))
        assert [s.last_offset(p) for p in range(3)] == [2, 0, 4]
        assert [e.device for e in await s.read(2, 0, 10)] == ["y"] * 4
        assert await s.read(1, 0, 10) == []
        await s.close()

    run(main())


def test_trimming_by_stream_limits_is_a_jump(nats_server: NatsServer) -> None:
    async def main() -> None:
        s = store(nats_server.url, name="trim", max_msgs=10)
        await s.open()
        for i in range(1, 31, 5):
            await s.append(0, entries(i, 5))
        assert s.last_offset(0) == 30
        assert await s.first_offset(0) == 21
        got = await s.read(0, 0, 100)  # from 0: the oldest retained, 21
        assert [e.offset for e in got] == list(range(21, 31))
        seen: list[int] = []
        f = await s.follow(0, 3, lambda es: seen.extend(e.offset for e in es))
        await wait_until(lambda: len(seen) == 10)
        assert seen == list(range(21, 31))  # the jump from 3 to 21 is the reader's gap
        await f.stop()
        await s.close()

    run(main())


def test_follower_sees_other_writers_in_order(nats_server: NatsServer) -> None:
    async def main() -> None:
        w = store(nats_server.url, name="fol")
        r = store(nats_server.url, name="fol")
        await w.open()
        await r.open()
        got: list[Entry] = []
        f = await r.follow(0, 0, got.extend)
        for i in range(1, 501, 50):
            await w.append(0, entries(i, 50))
        await wait_until(lambda: len(got) == 500)
        assert [e.offset for e in got] == list(range(1, 501))
        await f.stop()
        await w.close()
        await r.close()

    run(main())


def test_engine_away_refuses_then_recovers(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """nats-server killed: appends fail fast with StoreError (nothing buffered without
    bound), the client reconnects by itself and says so, reopen continues the positions,
    and a follower resumes without loss or duplicates."""
    caplog.set_level(logging.INFO, logger="iotcommute.server.store.jetstream")

    async def main() -> None:
        s = store(nats_server.url, name="away")
        r = store(nats_server.url, name="away")
        await s.open()
        await r.open()
        got: list[int] = []
        f = await r.follow(0, 0, lambda es: got.extend(e.offset for e in es))
        await s.append(0, entries(1, 20))
        await wait_until(lambda: len(got) == 20)

        nats_server.kill()

        async def append_twice() -> None:
            # the first append may still go out before the loss is noticed; it cannot be
            # acknowledged, so it fails within append_timeout
            await s.append(0, entries(21, 5))
            await s.append(0, entries(21, 5))

        with pytest.raises(StoreError):  # a timeout here is not a StoreError: it fails
            await asyncio.wait_for(append_twice(), 2.0 * s.append_timeout + 1.0)
        await wait_until(lambda: not s.connected())
        with pytest.raises(StoreError, match="not connected"):
            await s.append(0, entries(21, 5))  # refused at once while away

        nats_server.start()
        await wait_until(lambda: s.connected() and r.connected(), 15.0)
        await s.open()  # what the Log does before appending again
        nxt = s.last_offset(0) + 1
        assert nxt in (21, 26)  # 21..25 may have been stored before the kill, never twice
        await s.append(0, entries(nxt, 10))
        await wait_until(lambda: len(got) == nxt + 9, 15.0)
        assert got == list(range(1, nxt + 10))
        await f.stop()
        await s.close()
        await r.close()

    run(main())
    assert any("connection lost" in r.getMessage() for r in caplog.records)
    assert any("re-established" in r.getMessage() for r in caplog.records)
    # never a credential in what is logged (the URL here has none, but the repr is checked)
    from iotcommute.server.store.jetstream import redact_url

    assert redact_url("nats://user:secret@host:4222") == "nats://host:4222"
    assert "secret" not in repr(store("nats://u:secret@127.0.0.1:1"))


def test_log_url() -> None:
    from iotcommute.server.store.jetstream import store_from_url

    s = store_from_url("nats://a:4222,b:4223/fleet1?replicas=3")
    assert s.servers == ["nats://a:4222", "nats://b:4223"]
    assert (s.name, s.replicas) == ("fleet1", 3)
    assert s.stream(0) == "fleet1-p0" and s.subject(0) == "fleet1.log.0"
    assert store_from_url("nats://h:1").name == "iotcommute"
    for bad in ("http://h:1", "nats://", "nats://h:1?replicas=9", "nats://h:1?x=1", "nats://h/a.b"):
        with pytest.raises(ValueError):
            store_from_url(bad)


def test_reference_server_on_a_jetstream_store(nats_server: NatsServer) -> None:
    """The server's own Log (one writer, positions chosen by the Log and checked by the
    engine) over JetStreamStore: acks after the PubAck, and a restarted server continues
    the same log (same id, positions go on, everything replayable)."""
    import json

    from iotcommute.server import ServerThread
    from tests.jetstream.jsprocs import connect, device_headers, publish_all, recv_json, recv_type

    def server() -> ServerThread:
        return ServerThread("127.0.0.1", 0, store=store(nats_server.url, name="ref")).start()

    async def session(srv: ServerThread, prefix: str) -> tuple[dict[str, int], str, list[int]]:
        dev, welcome = await connect(srv.ws_url, device_headers(1))
        acked = await publish_all(dev, prefix, 20)
        cl, _ = await connect(srv.ws_url, device_headers(2, role="client"))
        await cl.send(json.dumps({"type": "subscribe", "id": 1, "from": 0}))
        await recv_type(cl, "subscribed")
        seen: list[int] = []
        while not seen or seen[-1] < max(acked.values()):
            t = await recv_json(cl)
            if t["type"] == "tick":
                seen.append(t["position"])
        await dev.close()
        await cl.close()
        return acked, str(welcome.get("log")), seen

    srv = server()
    try:
        acked1, log1, seen1 = run(asyncio.wait_for(session(srv, "a"), 30))
    finally:
        srv.stop()
    srv = server()
    try:
        acked2, log2, seen2 = run(asyncio.wait_for(session(srv, "b"), 30))
    finally:
        srv.stop()
    assert sorted(acked1.values()) == list(range(1, 21))
    assert sorted(acked2.values()) == list(range(21, 41))
    assert seen1 == list(range(1, 21)) and seen2 == list(range(1, 41))
    assert log1 == log2 != "None"
