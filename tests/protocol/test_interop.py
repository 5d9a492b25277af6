"""Interop of the sans-IO client core with INDEPENDENT servers over loopback sockets.

Servers: ``websockets`` (websockets.asyncio.server.serve) and ``aiohttp``
(web.WebSocketResponse), both in-process on 127.0.0.1:0.  The client side is
tests/coredriver.py driving ``iotcommute.protocol.ClientProtocol``.  Each scenario is
chosen by the request path; the server handler records what it saw in ``obs`` so both
ends are checked.  Every wait has a timeout (the driver's and ``asyncio.wait_for``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from iotcommute.exceptions import MessageTooBigError
from iotcommute.protocol import ClientProtocol
from iotcommute.protocol.events import EOF, CloseReceived, Event, Failed, Ping, Pong, State
from tests.protocol.coredriver import Outcome, run_client

aiohttp_web = pytest.importorskip("aiohttp.web")
ws_server = pytest.importorskip("websockets.asyncio.server")
import websockets.exceptions  # noqa: E402
from aiohttp import WSMsgType  # noqa: E402

SERVERS = ["websockets", "aiohttp"]
T = 10.0  # seconds: upper bound of any single wait
BIG = 16 * 2**20

Obs = dict[str, Any]


# --------------------------------------------------------------------------- servers


async def _ws_handler(ws: Any, obs: Obs) -> None:
    """websockets handler: the scenario is the request path."""
    path = ws.request.path
    obs["path"] = path
    obs["extensions"] = list(ws.protocol.extensions)
    try:
        if path in ("/echo", "/big", "/compress"):
            async for msg in ws:
                await ws.send(msg)
        elif path == "/fragments":
            await ws.send(["frag1", "frag2", "frag3"])
            await ws.send([b"\x00a", b"", b"\x01b"])
            await ws.send("after")
            await asyncio.wait_for(ws.wait_closed(), T)
        elif path == "/ping":
            waiter = await ws.ping(b"server-ping")
            await asyncio.wait_for(waiter, T)
            obs["server_ping_answered"] = True
            await ws.send("pong-ok")
            async for msg in ws:
                await ws.send(msg)
        elif path.startswith("/close/"):
            code = int(path.rsplit("/", 1)[1])
            await ws.send("closing")
            await ws.close(code, f"reason {code}")
        elif path == "/drop":
            await ws.send("dropping")
            await asyncio.sleep(0.05)
            ws.transport.abort()
        elif path == "/oversize":
            await ws.send(b"\x00" * 2000)
            await asyncio.wait_for(ws.wait_closed(), T)
    except websockets.exceptions.ConnectionClosed:
        pass
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.wait_closed(), T)
        obs["close_code"] = ws.close_code
        obs["close_reason"] = ws.close_reason
        obs["done"] = True


async def _aio_handler(request: Any, obs: Obs) -> Any:
    """aiohttp handler: same scenarios (aiohttp has no public API to send fragments)."""
    path = request.path
    obs["path"] = path
    ws = aiohttp_web.WebSocketResponse(
        max_msg_size=0, heartbeat=None, autoping=path != "/ping", compress=True
    )
    await ws.prepare(request)
    obs["compress"] = ws.compress
    try:
        if path in ("/echo", "/big", "/compress", "/ping"):
            if path == "/ping":
                await ws.ping(b"server-ping")
            while True:
                msg = await asyncio.wait_for(ws.receive(), T)
                if msg.type == WSMsgType.TEXT:
                    await ws.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
                elif msg.type == WSMsgType.PING:
                    obs.setdefault("pings", []).append(msg.data)
                    await ws.pong(msg.data)
                elif msg.type == WSMsgType.PONG:
                    obs["server_ping_answered"] = msg.data == b"server-ping"
                    await ws.send_str("pong-ok")
                else:
                    obs["last_msg"] = (msg.type, msg.data, msg.extra)
                    break
        elif path.startswith("/close/"):
            code = int(path.rsplit("/", 1)[1])
            await ws.send_str("closing")
            await ws.close(code=code, message=f"reason {code}".encode())
        elif path == "/drop":
            await ws.send_str("dropping")
            await asyncio.sleep(0.05)
            request.transport.abort()
        elif path == "/oversize":
            await ws.send_bytes(b"\x00" * 2000)
            msg = await asyncio.wait_for(ws.receive(), T)
            obs["last_msg"] = (msg.type, msg.data, msg.extra)
    finally:
        if not ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), T)
        obs["close_code"] = ws.close_code
        obs["done"] = True
    return ws


@contextlib.asynccontextmanager
async def serve(kind: str, obs: Obs) -> AsyncIterator[int]:
    """Start the named independent server on 127.0.0.1:0; yield its port."""
    if kind == "websockets":

        async def handler(ws: Any) -> None:
            await _ws_handler(ws, obs)

        async with ws_server.serve(
            handler, "127.0.0.1", 0, max_size=None, ping_interval=None, compression="deflate"
        ) as server:
            yield server.sockets[0].getsockname()[1]
    else:

        async def aio(request: Any) -> Any:
            return await _aio_handler(request, obs)

        app = aiohttp_web.Application()
        app.router.add_get("/{tail:.*}", aio)
        runner = aiohttp_web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = aiohttp_web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            yield runner.addresses[0][1]
        finally:
            await asyncio.wait_for(runner.cleanup(), T)


async def _wait_obs(obs: Obs) -> None:
    for _ in range(int(T / 0.01)):
        if obs.get("done"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"server handler did not finish: {obs}")


def run(
    kind: str,
    path: str,
    *,
    on_open: Callable[[ClientProtocol], None] | None = None,
    on_event: Callable[[ClientProtocol, Event], None] | None = None,
    **kw: Any,
) -> tuple[Outcome, Obs]:
    obs: Obs = {}

    async def go() -> Outcome:
        async with serve(kind, obs) as port:
            kw.setdefault("timeout", 30.0)
            out = await run_client(port, path=path, on_open=on_open, on_event=on_event, **kw)
            await _wait_obs(obs)
        return out

    out = asyncio.run(go())
    assert not out.timed_out, f"client hung: {out.events[-5:]} {obs}"
    return out, obs


def close_after(
    n: int, code: int = 1000, reason: str = ""
) -> Callable[[ClientProtocol, Event], None]:
    """on_event: close once ``n`` messages have arrived."""
    seen = [0]

    def cb(proto: ClientProtocol, ev: Event) -> None:
        if isinstance(ev, (str, bytes)):
            seen[0] += 1
            if seen[0] == n and proto.state is State.OPEN:
                proto.close(code, reason)

    return cb


def sender(*msgs: str | bytes) -> Callable[[ClientProtocol], None]:
    def cb(proto: ClientProtocol) -> None:
        for m in msgs:
            if isinstance(m, str):
                proto.send_text(m)
            else:
                proto.send_binary(m)

    return cb


def assert_clean_close(out: Outcome, code: int = 1000) -> None:
    assert out.failed is None, out.events
    closes = out.of(CloseReceived)
    assert len(closes) == 1 and closes[0].code == code, out.events
    assert isinstance(out.events[-1], EOF), out.events[-3:]
    assert out.state is State.CLOSED


# --------------------------------------------------------------------------- tests


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", SERVERS)
def test_echo_text_and_binary(kind: str) -> None:
    msgs: list[str | bytes] = ["hello", b"\x00\xff\x01binary", "κόσμε 😀" * 50, "", b""]
    out, obs = run(
        kind,
        "/echo",
        on_open=sender(*msgs),
        on_event=close_after(len(msgs), 1000, "bye"),
        compression=False,
    )
    assert out.messages == msgs
    assert_clean_close(out)
    assert obs["close_code"] == 1000
    if kind == "websockets":
        assert obs["close_reason"] == "bye"
        assert obs["extensions"] == []
    else:
        assert obs["last_msg"][:3] == (WSMsgType.CLOSE, 1000, "bye")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["websockets"])  # aiohttp has no API to send fragments
def test_fragmented_from_server(kind: str) -> None:
    out, _ = run(kind, "/fragments", on_event=close_after(3))
    assert out.messages == ["frag1frag2frag3", b"\x00a\x01b", "after"]
    assert_clean_close(out)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", SERVERS)
def test_16_mib_message(kind: str) -> None:
    big = bytes(range(256)) * (BIG // 256)
    out, obs = run(
        kind,
        "/big",
        on_open=sender(big),
        on_event=close_after(1),
        max_size=32 * 2**20,
        compression=False,
        timeout=60.0,
    )
    assert len(out.messages) == 1 and out.messages[0] == big
    assert_clean_close(out)
    assert obs["close_code"] == 1000


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", SERVERS)
@pytest.mark.parametrize(
    "offer",
    [
        {},
        {"server_max_window_bits": 10},
        {"client_no_context_takeover": True},
        {"server_no_context_takeover": True, "client_max_window_bits": 12},
    ],
    ids=["default", "smwb10", "cnct", "snct-cmwb12"],
)
def test_compression(kind: str, offer: dict[str, Any]) -> None:
    text = ("temperature=21.5 humidity=40 device=dev-0001 " * 200)[:8000]
    blob = bytes(range(64)) * 300
    msgs: list[str | bytes] = [text, blob, text, "small", blob]
    out, obs = run(
        kind,
        "/compress",
        on_open=sender(*msgs),
        on_event=close_after(len(msgs)),
        compression=True,
        **offer,
    )
    if kind == "aiohttp" and offer and out.failed is not None:
        pytest.fail(f"aiohttp answer rejected: {out.failed!r}")
    assert out.messages == msgs, out.events[:3]
    assert_clean_close(out)
    acc = out.accepted
    assert acc is not None
    assert len(acc.extensions) == 1 and acc.extensions[0].startswith("permessage-deflate")
    params = dict(
        (p.strip().partition("=")[0], p.strip().partition("=")[2])
        for p in acc.extensions[0].split(";")[1:]
    )
    if "server_max_window_bits" in offer:
        assert params.get("server_max_window_bits") == str(offer["server_max_window_bits"])
    if offer.get("server_no_context_takeover"):
        assert "server_no_context_takeover" in params
    smwb = int(params["server_max_window_bits"] or 15)
    cmwb = int(params.get("client_max_window_bits") or 15)
    if "server_max_window_bits" in offer:
        assert smwb <= offer["server_max_window_bits"]
    if "client_max_window_bits" in offer:
        assert cmwb <= offer["client_max_window_bits"]
    if kind == "websockets":
        (ext,) = obs["extensions"]
        assert ext.name == "permessage-deflate"
        # The server's view of the same agreement must match the client's.
        assert ext.local_max_window_bits == smwb
        assert ext.remote_max_window_bits == cmwb
        assert ext.local_no_context_takeover == ("server_no_context_takeover" in params)
        assert ext.remote_no_context_takeover == ("client_no_context_takeover" in params)
        assert ext.remote_no_context_takeover == bool(offer.get("client_no_context_takeover"))
    else:
        assert obs["compress"] == smwb


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", SERVERS)
def test_ping_pong_both_directions(kind: str) -> None:
    def on_open(proto: ClientProtocol) -> None:
        proto.send_ping(b"client-ping")

    def on_event(proto: ClientProtocol, ev: Event) -> None:
        if ev == "pong-ok" and proto.state is State.OPEN:
            proto.close()

    out, obs = run(kind, "/ping", on_open=on_open, on_event=on_event)
    assert Pong(b"client-ping") in out.events
    assert Ping(b"server-ping") in out.events
    assert obs.get("server_ping_answered") is True
    assert "pong-ok" in out.messages
    assert_clean_close(out)
    if kind == "aiohttp":
        assert obs["pings"] == [b"client-ping"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", SERVERS)
@pytest.mark.parametrize("code", [1000, 1001, 1011, 4000])
def test_server_closes(kind: str, code: int) -> None:
    out, obs = run(kind, f"/close/{code}", on_event=None)
    assert out.messages == ["closing"]
    assert_clean_close(out, code)
    assert out.of(CloseReceived)[0].reason == f"reason {code}"
    # The core echoes the server's code (RFC 6455 5.5.1).
    assert obs["close_code"] == code


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", SERVERS)
def test_client_closes_with_custom_code(kind: str) -> None:
    out, obs = run(kind, "/echo", on_open=sender("one"), on_event=close_after(1, 4001, "done"))
    assert out.messages == ["one"]
    if kind == "websockets":
        assert_clean_close(out, 4001)
        assert (obs["close_code"], obs["close_reason"]) == (4001, "done")
    else:
        # aiohttp answers any close with 1000 instead of echoing the code.
        assert_clean_close(out, 1000)
        assert obs["last_msg"][:3] == (WSMsgType.CLOSE, 4001, "done")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", SERVERS)
def test_server_drops_tcp(kind: str) -> None:
    out, _ = run(kind, "/drop", on_event=None)
    assert out.messages == ["dropping"]
    assert out.of(CloseReceived) == []
    assert out.failed is None
    assert isinstance(out.events[-1], EOF)
    assert out.state is State.CLOSED


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", SERVERS)
def test_oversize_message_closes_1009(kind: str) -> None:
    out, obs = run(kind, "/oversize", on_event=None, max_size=1000, compression=False)
    assert out.messages == []
    exc = out.failed
    assert isinstance(exc, MessageTooBigError) and exc.close_code == 1009
    assert [e for e in out.events if isinstance(e, Failed)] == [Failed(exc)]
    if kind == "websockets":
        assert obs["close_code"] == 1009
    else:
        assert obs["last_msg"][:2] == (WSMsgType.CLOSE, 1009)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", SERVERS)
def test_many_messages_interleaved_with_pings(kind: str) -> None:
    """500 messages with client pings between them: order kept, every pong answered."""
    msgs = [f"m{i}" if i % 2 else f"b{i}".encode() for i in range(500)]

    def on_open(proto: ClientProtocol) -> None:
        for i, m in enumerate(msgs):
            if isinstance(m, str):
                proto.send_text(m)
            else:
                proto.send_binary(m)
            if i % 50 == 0:
                proto.send_ping(str(i).encode())

    out, _ = run(kind, "/echo", on_open=on_open, on_event=close_after(len(msgs)))
    assert out.messages == msgs
    assert [p.payload for p in out.of(Pong)] == [str(i).encode() for i in range(0, 500, 50)]
    assert_clean_close(out)
