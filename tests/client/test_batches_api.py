"""on_batch (WebSocket) and ws.batches() (AsyncWebSocket) on real sockets (issue 14)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from iotcommute import AsyncWebSocket, DecodeError, WebSocket, payload
from iotcommute.payload.columnar import TickBatch
from iotcommute.server import ServerThread
from tests.client.test_client import DEV, KEY, append, client, finish, start
from tests.client.test_client_support import CutProxy, wait_for, watch_subscribed

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server(ref_server_factory: Callable[..., ServerThread]) -> ServerThread:
    return ref_server_factory(retain=500_000)


def test_on_batch_gets_every_tick_and_kept_batches_keep_their_values(
    server: ServerThread,
) -> None:
    batches: list[TickBatch] = []
    ws = client(server, format="binary")
    ws.on_batch = lambda b, w: batches.append(b)
    start(ws)
    try:
        expected = append(server, 3000)
        wait_for(lambda: sum(map(len, batches)) >= 3000, what="first ticks")
        kept = [(b, b["position"].copy(), b["i"].copy()) for b in batches]
        expected += append(server, 3000)  # more traffic through the same transport
        wait_for(lambda: sum(map(len, batches)) >= 6000, what="more ticks")
        for b, pos, vals in kept:
            assert b["position"].tolist() == pos.tolist()
            assert b["i"].tolist() == vals.tolist()
        got = [p for b in batches for p in b["position"].tolist()]
        assert got == expected
        assert all(isinstance(b, TickBatch) for b in batches)
    finally:
        finish(ws)


def test_on_batch_resumes_across_proxy_cuts_with_every_position_once(
    server: ServerThread,
) -> None:
    proxy = CutProxy(server.port)
    got: list[int] = []
    ws = client(proxy, format="binary")
    ws.on_batch = lambda b, w: got.extend(b["position"].tolist())
    start(ws)
    try:
        expected: list[int] = []
        for k in range(4):
            expected += append(server, 5000)
            goal = len(expected) - 2500
            wait_for(lambda: len(got) >= goal, 30, "progress")  # noqa: B023
            if k < 3:
                proxy.cut()
        wait_for(lambda: len(got) >= len(expected), 30, "all ticks")
        assert got == expected
        assert ws.stats()["connections"] >= 3
    finally:
        finish(ws)
        proxy.close()


def test_a_corrupt_frame_is_a_decode_error_with_its_position_and_the_stream_goes_on() -> None:
    from tests.client.test_client_support import DEVICE as MINI_DEV
    from tests.client.test_client_support import KEY as MINI_KEY
    from tests.client.test_client_support import MiniServer

    srv = MiniServer()
    got: list[int] = []
    errors: list[BaseException] = []
    ws = WebSocket(MINI_KEY, MINI_DEV, "device", url=srv.url, format="binary")
    ws.on_batch = lambda b, w: got.extend(b["position"].tolist())
    ws.on_error = lambda e, w: errors.append(e)
    try:
        start(ws)
        srv.produce(3)
        wait_for(lambda: len(got) == 3, what="first ticks")
        tick = {"type": "tick", "device": "dev-2", "position": 4, "ts": 1.0, "data": {"v": 1}}
        bad = bytearray(payload.encode_batch([tick]))
        bad[-26] = 7  # the row's device index, past the one-entry table
        srv.broadcast(bytes(bad))
        srv.produce(3)
        wait_for(lambda: len(got) == 6, what="ticks after the corrupt frame")
        assert got == [1, 2, 3, 4, 5, 6]
        (err,) = [e for e in errors if isinstance(e, DecodeError)]
        assert err.position == 4
        assert ws.stats()["connections"] == 1
    finally:
        finish(ws)
        srv.close()


def test_async_batches_every_position_once_across_a_cut(server: ServerThread) -> None:
    proxy = CutProxy(server.port)

    async def main() -> tuple[list[int], list[int], int]:
        ws = AsyncWebSocket(
            KEY, DEV, "device", url=proxy.url, format="binary", max_reconnect_delay=0.2
        )
        subscribed = watch_subscribed(ws)
        got: list[int] = []
        committed: list[int] = []
        async with ws:
            while not subscribed.acquire(blocking=False):
                await asyncio.sleep(0.01)
            ws.on_message = None
            expected = await asyncio.to_thread(append, server, 4000)
            cut = False
            async for batch in ws.batches():
                assert isinstance(batch, TickBatch)
                got.extend(batch["position"].tolist())
                committed.append(ws._session.committed)
                if not cut and len(got) >= 2000:
                    cut = True
                    proxy.cut()
                    expected += await asyncio.to_thread(append, server, 4000)
                if len(got) >= len(expected):
                    break
        return got, expected, committed[-1]

    try:
        got, expected, last_committed = asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        proxy.close()
    assert got == expected
    assert last_committed == expected[-1]


def test_async_batches_checkpoint_advances_when_taken(server: ServerThread) -> None:
    async def main() -> list[tuple[int, int]]:
        ws = AsyncWebSocket(KEY, DEV, "device", url=server.url, format="binary")
        subscribed = watch_subscribed(ws)
        seen: list[tuple[int, int]] = []
        async with ws:
            while not subscribed.acquire(blocking=False):
                await asyncio.sleep(0.01)
            ws.on_message = None
            it = ws.batches()
            await asyncio.to_thread(append, server, 300)
            total = 0
            async for batch in it:
                assert batch.last_position is not None
                seen.append((batch.last_position, ws._session.committed))
                total += len(batch)
                if total >= 300:
                    break
        return seen

    seen = asyncio.run(asyncio.wait_for(main(), 30))
    for last, committed in seen:
        assert committed >= last  # taken: checkpointed


def test_on_batch_is_in_help_and_typed() -> None:
    assert "on_batch(batch, ws)" in (WebSocket.__doc__ or "")
    ws = WebSocket(KEY, DEV, "device")
    assert ws.on_batch is None
