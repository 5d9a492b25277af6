"""AsyncCommute (httpx.AsyncClient) against the reference server and tiny local
servers: the same calls and the same error mapping as Commute."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import trustme

from iotcommute.exceptions import (
    CommandError,
    DataError,
    InputError,
    NetworkError,
    NotFoundError,
    OperationTimeout,
    PermissionDenied,
    ServerError,
    SessionExpiredError,
    TokenError,
)
from iotcommute.rest import AsyncCommute
from iotcommute.server import rest_api
from tests.rest.servers import Blackhole, Canned, serve
from tests.rest.test_rest import API_KEY, API_SECRET, DEVICE, OTHER_DEVICE, append, login

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")


def run(fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await fn()

    return asyncio.run(main())


@pytest.fixture
def server(ref_server: Any) -> Iterator[Any]:
    yield ref_server
    ref_server.hub.virtual.pop(DEVICE, None)


def test_full_flow(server: Any) -> None:
    rt = login(server)
    server.hub.virtual[DEVICE] = lambda data: {"ok": True, "data": {"got": data}}
    mine = append(server, DEVICE, 12)

    async def flow() -> None:
        async with AsyncCommute(API_KEY, root=server.http_url, timeout=5) as api:
            data = await api.generate_session(rt, API_SECRET)
            assert api.access_token == data["access_token"]
            assert DEVICE in {d["id"] for d in await api.devices()}
            assert (await api.device(DEVICE))["online"] is True
            assert [t["position"] for t in await api.history(DEVICE, limit=5)] == mine[:5]
            got = [t["position"] async for t in api.iter_history(DEVICE, page_size=5)]
            assert got == mine
            ack = await api.send_command(DEVICE, {"op": "x"}, timeout=3)
            assert ack["ok"] is True and ack["data"] == {"got": {"op": "x"}}
            # Concurrent calls each get a connection.
            results = await asyncio.gather(*(api.device(DEVICE) for _ in range(6)))
            assert all(r["id"] == DEVICE for r in results)
            assert await api.invalidate_session() is True
            assert api.access_token is None

    run(flow)


def test_error_mapping(server: Any) -> None:
    rt = login(server)
    calls: list[int] = []

    async def flow() -> None:
        api = AsyncCommute(
            API_KEY, root=server.http_url, on_session_expired=lambda: calls.append(1)
        )
        with pytest.raises(TokenError):
            await api.devices()  # not logged in
        with pytest.raises(TokenError) as ei:
            await api.generate_session(rt, "wrong")
        assert ei.value.status == 401 and ei.value.request_id
        await api.generate_session(login(server), API_SECRET)
        with pytest.raises(NotFoundError):
            await api.device("nope")
        with pytest.raises(PermissionDenied):
            await api.device(OTHER_DEVICE)
        with pytest.raises(InputError):
            await api.history(DEVICE, limit=0)
        with pytest.raises(CommandError) as ce:
            await api.send_command(DEVICE, {"op": "x"})
        assert ce.value.code == "device_offline" and ce.value.status == 409
        rest_api.configure(server.hub, session_ttl=0.1)
        await api.generate_session(login(server), API_SECRET)
        await asyncio.sleep(0.3)
        with pytest.raises(SessionExpiredError):
            await api.devices()
        assert calls == [1]
        await api.aclose()

    run(flow)


def test_server_error(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    rt = login(server)

    def boom(user_id: str) -> list[Any]:
        raise RuntimeError("no")

    monkeypatch.setattr(server.hub.registry, "devices_of", boom)

    async def flow() -> None:
        async with AsyncCommute(API_KEY, root=server.http_url) as api:
            await api.generate_session(rt, API_SECRET)
            with pytest.raises(ServerError) as ei:
                await api.devices()
            assert ei.value.status == 500

    run(flow)


def test_stale_keepalive_connection_is_replaced(server: Any) -> None:
    """The server restarts between two GETs: the pooled connection is dead, and the next
    call goes through on a fresh one without spending a retry."""
    rt = login(server)

    async def flow() -> None:
        async with AsyncCommute(API_KEY, root=server.http_url, retries=0) as api:
            await api.generate_session(rt, API_SECRET)
            token = api.access_token
            await api.devices()  # leaves a keep-alive connection in the pool
            await asyncio.to_thread(server.restart)
            # The restarted server has a new session store: log in again.
            await api.generate_session(await asyncio.to_thread(login, server), API_SECRET)
            assert api.access_token != token
            assert await api.devices()

    run(flow)


def test_timeouts_get_retried_post_not() -> None:
    hole = Blackhole()

    async def flow() -> None:
        api = AsyncCommute(
            "app", root=f"http://127.0.0.1:{hole.port}", access_token="t", timeout=0.3, retries=2
        )
        with pytest.raises(OperationTimeout):
            await api.devices()
        with pytest.raises(OperationTimeout) as ei:
            await api.generate_session("rt", "secret")
        assert str(ei.value) == "timed out (POST /session/token)"

    try:
        run(flow)
    finally:
        n = hole.stop()
    assert n == 3 + 1


def test_refused_and_bodies() -> None:
    async def refused() -> None:
        api = AsyncCommute("app", root="http://127.0.0.1:9", access_token="t", retries=0)
        with pytest.raises(NetworkError) as ei:
            await api.devices()
        assert ei.value.code == "connect"

    run(refused)
    for srv in serve(Canned(200, "text/html", b"<html>")):

        async def bad_body(srv: Canned = srv) -> None:
            api = AsyncCommute("app", root=srv.root, access_token="t")
            with pytest.raises(DataError) as ei:
                await api.devices()
            assert ei.value.request_id == "rid-1"
            srv.answer = (503, "text/plain", b"busy")
            with pytest.raises(ServerError):
                await api.devices()
            await api.aclose()

        run(bad_body)
        assert len(srv.seen) == 1 + 3  # 503 on a GET: tried 1 + 2 retries


def test_tls(caplog: pytest.LogCaptureFixture) -> None:
    ca = trustme.CA()
    srv = Canned()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    for s in serve(srv):

        async def flow(s: Canned = s) -> None:
            with pytest.raises(NetworkError) as ei:
                await AsyncCommute("app", root=s.root, access_token="t").devices()
            assert ei.value.code == "tls" and "CERTIFICATE_VERIFY_FAILED" in str(ei.value)
            with ca.cert_pem.tempfile() as path:
                api = AsyncCommute("app", root=s.root, access_token="t", ca_certs=path)
                assert await api.devices() == [{"id": "d1"}]
                await api.aclose()
            with caplog.at_level(logging.WARNING, logger="iotcommute.rest"):
                api = AsyncCommute("app", root=s.root, access_token="t", verify=False)
            assert await api.devices() == [{"id": "d1"}]
            await api.aclose()

        run(flow)
        assert len(s.seen) == 2
