"""The reference server's WebSocket side, driven by an independent client (`websockets`).

Every test talks to a real server over loopback; none shares frame code with iotcommute's
own client, so a misunderstanding of the protocol cannot hide on both sides at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from iotcommute.server import ServerThread
from iotcommute.server.registry import (
    DEMO_API_KEY,
    DEMO_USER,
    README_DEVICE_ID,
    README_DEVICE_KEY,
    sim_device_key,
)

T = Any
DEVICE_HEADERS = {
    "X-Device-Id": README_DEVICE_ID,
    "X-Device-Key": README_DEVICE_KEY,
    "X-Role": "device",
}


def run(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def device_headers(
    dev: str = README_DEVICE_ID, key: str = README_DEVICE_KEY, role: str = "device"
) -> dict[str, str]:
    return {"X-Device-Id": dev, "X-Device-Key": key, "X-Role": role}


def token_headers(srv: ServerThread, role: str = "client") -> dict[str, str]:
    s = srv.call(srv.hub.registry.sessions.create, DEMO_USER, DEMO_API_KEY, 60.0)
    return {"Authorization": f"token {DEMO_API_KEY}:{s.access_token}", "X-Role": role}


async def connect(srv: ServerThread, headers: dict[str, str], **kw: Any) -> ClientConnection:
    # No receive queue limit: tests close with ticks unread, and a full queue would stop
    # websockets from reading our close frame (it then waits its 10 s close timeout).
    kw.setdefault("max_queue", None)
    ws = await websockets.connect(srv.ws_url, additional_headers=headers, open_timeout=5, **kw)
    welcome = json.loads(await ws.recv())
    assert welcome["type"] == "welcome" and welcome["version"] == 1
    return ws


async def recv_json(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(msg, str), "expected a text frame"
    out: dict[str, Any] = json.loads(msg)
    return out


async def recv_type(ws: ClientConnection, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    """The next message of this type (ticks and others before it are skipped)."""
    while True:
        m = await recv_json(ws, timeout)
        if m["type"] == kind:
            return m


async def subscribe(
    ws: ClientConnection, frm: int | None = None, devices: Any = "*", fmt: str = "json"
) -> dict[str, Any]:
    await ws.send(
        json.dumps({"type": "subscribe", "id": 1, "devices": devices, "from": frm, "format": fmt})
    )
    return await recv_type(ws, "subscribed")


async def ticks(ws: ClientConnection, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while len(out) < n:
        m = await recv_json(ws)
        if m["type"] == "tick":
            out.append(m)
    return out


def append(srv: ServerThread, device: str, n: int, start: int = 0) -> list[int]:
    def work() -> list[int]:
        return [srv.hub.log.append(device, {"i": start + i, "t": 20.5}, None) for i in range(n)]

    return srv.call(work)


# -- handshake and auth -----------------------------------------------------------


def test_welcome_for_device_and_token_client(ref_server: ServerThread) -> None:
    async def main() -> None:
        append(ref_server, "sim-0001", 3)
        async with await websockets.connect(
            ref_server.ws_url, additional_headers=DEVICE_HEADERS
        ) as ws:
            w = json.loads(await ws.recv())
            assert w == {
                "type": "welcome",
                "version": 1,
                "role": "device",
                "device": README_DEVICE_ID,
                "user": DEMO_USER,
                "position": 3,
                "server": "iotcommute-ref/0.1",
                "log": ref_server.hub.log.log_id,
                "first": 1,
            }
            assert ws.response is not None and ws.response.headers["X-Protocol-Version"] == "1"
        async with await websockets.connect(
            ref_server.ws_url, additional_headers=token_headers(ref_server)
        ) as ws:
            w = json.loads(await ws.recv())
            assert (w["role"], w["device"], w["user"]) == ("client", None, DEMO_USER)

    run(main())


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        (
            {
                "X-Device-Id": README_DEVICE_ID,
                "X-Device-Key": "WRONGKEYWRONGKEYWRON",
                "X-Role": "device",
            },
            401,
            "token",
        ),
        (
            {
                "X-Device-Id": "no-such-device",
                "X-Device-Key": README_DEVICE_KEY,
                "X-Role": "device",
            },
            401,
            "token",
        ),
        ({"X-Role": "client"}, 401, "token"),
        ({"Authorization": "token demo-app:not-a-token", "X-Role": "client"}, 401, "token"),
        ({"Authorization": "Bearer something", "X-Role": "client"}, 401, "token"),
        ({**DEVICE_HEADERS, "X-Role": "admin"}, 403, "permission"),
        (device_headers("sensor-only-1", "SENSORONLY0000000001", "client"), 403, "permission"),
        ({**DEVICE_HEADERS, "X-Protocol-Version": "2"}, 426, "version"),
        # checked in the order 426, 401, 403: the first failing check answers
        ({**DEVICE_HEADERS, "X-Protocol-Version": "one"}, 426, "version"),
        ({"X-Device-Id": "nope", "X-Device-Key": "x", "X-Protocol-Version": "2"}, 426, "version"),
        ({"X-Device-Id": "nope", "X-Device-Key": "x", "X-Role": "admin"}, 401, "token"),
        ({"Authorization": "token demo-app:not-a-token", "X-Role": "device"}, 401, "token"),
    ],
)
def test_handshake_refused(
    ref_server: ServerThread, headers: dict[str, str], status: int, code: str
) -> None:
    async def main() -> None:
        with pytest.raises(InvalidStatus) as info:
            await websockets.connect(ref_server.ws_url, additional_headers=headers, open_timeout=5)
        resp = info.value.response
        assert resp.status_code == status
        body = json.loads(resp.body)
        assert body["type"] == "error" and body["code"] == code
        assert "Retry-After" not in resp.headers  # wrong credentials are not worth retrying
        for secret in (README_DEVICE_KEY, "WRONGKEY", "not-a-token", "something"):
            assert secret not in resp.body.decode()
        if status == 426:
            assert resp.headers["X-Protocol-Version"] == "1"

    run(main())


def test_token_cannot_connect_as_device(ref_server: ServerThread) -> None:
    async def main() -> None:
        with pytest.raises(InvalidStatus) as info:
            await websockets.connect(
                ref_server.ws_url, additional_headers=token_headers(ref_server, "device")
            )
        assert info.value.response.status_code == 403

    run(main())


def test_expired_session_is_401(ref_server: ServerThread) -> None:
    s = ref_server.call(ref_server.hub.registry.sessions.create, DEMO_USER, DEMO_API_KEY, -1.0)

    async def main() -> None:
        hdrs = {"Authorization": f"token {DEMO_API_KEY}:{s.access_token}", "X-Role": "client"}
        with pytest.raises(InvalidStatus) as info:
            await websockets.connect(ref_server.ws_url, additional_headers=hdrs)
        assert info.value.response.status_code == 401

    run(main())


def test_wrong_path_is_404(ref_server: ServerThread) -> None:
    async def main() -> None:
        with pytest.raises(InvalidStatus) as info:
            await websockets.connect(
                ref_server.url + "/v2/stream", additional_headers=DEVICE_HEADERS
            )
        assert info.value.response.status_code == 404

    run(main())


_ALL_WRONG = "X-Protocol-Version: one\r\nX-Device-Id: nope\r\nX-Device-Key: x\r\nX-Role: admin\r\n"


@pytest.mark.parametrize(
    ("path", "ws_version", "status", "header"),
    [
        ("/v2/stream", "8", 404, None),  # the path first, whatever else is wrong
        ("/v1/stream", "8", 426, ("sec-websocket-version", "13")),  # then Sec-WebSocket-Version
        ("/v1/stream", "13", 426, ("x-protocol-version", "1")),  # then X-Protocol-Version
    ],
)
def test_handshake_checks_run_in_the_documented_order(
    ref_server: ServerThread, path: str, ws_version: str, status: int, header: Any
) -> None:
    """docs/protocol.md, section 2: 404, 426 (Sec-WebSocket-Version, then a non-numeric
    X-Protocol-Version), 401, 403; the first failing check answers. (401 before 403 is in
    test_handshake_refused.)"""
    import socket

    head = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: {ws_version}\r\n{_ALL_WRONG}\r\n"
    )
    with socket.create_connection(("127.0.0.1", ref_server.port), timeout=5) as s:
        s.sendall(head.encode())
        data = b""
        while b"\r\n\r\n" not in data and (chunk := s.recv(4096)):
            data += chunk
    lines = data.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    assert lines[0].split()[1] == str(status)
    got = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    if header is not None:
        assert got[header[0]] == header[1]


# -- routing ------------------------------------------------------------------------


def test_publish_reaches_subscribers_in_order(ref_server: ServerThread) -> None:
    async def main() -> None:
        async with (
            await connect(ref_server, DEVICE_HEADERS) as dev,
            await connect(ref_server, token_headers(ref_server)) as cli,
        ):
            sub = await subscribe(cli)
            assert sub["devices"] == "*" and sub["position"] == 0
            await dev.send(
                json.dumps(
                    {
                        "type": "publish",
                        "id": "p1",
                        "data": {"t": 21.5, "on": True},
                        "ts": 1700000000.5,
                    }
                )
            )
            assert await recv_type(dev, "published") == {
                "type": "published",
                "id": "p1",
                "position": 1,
            }
            for i in range(20):
                await dev.send(json.dumps({"type": "publish", "data": {"i": i}}))
            got = await ticks(cli, 21)
            assert got[0] == {
                "type": "tick",
                "device": README_DEVICE_ID,
                "position": 1,
                "ts": 1700000000.5,
                "data": {"t": 21.5, "on": True},
            }
            assert [t["position"] for t in got] == list(range(1, 22))
            assert [t["data"]["i"] for t in got[1:]] == list(range(20))

    run(main())


def test_subscription_filters_devices_and_fleets(ref_server: ServerThread) -> None:
    async def main() -> None:
        other = device_headers("other-0001", "OTHERKEY000000000001", "client")
        async with (
            await connect(ref_server, token_headers(ref_server)) as cli,
            await connect(ref_server, other) as oth,
        ):
            await subscribe(cli, devices=["sim-0002"])
            await subscribe(oth)
            append(ref_server, "sim-0001", 5)
            append(ref_server, "sim-0002", 2)
            append(ref_server, "other-0001", 1)
            got = await ticks(cli, 2)
            assert [(t["device"], t["position"]) for t in got] == [("sim-0002", 6), ("sim-0002", 7)]
            got = await ticks(oth, 1)
            assert [(t["device"], t["position"]) for t in got] == [("other-0001", 8)]
            # a device outside the fleet, and one that does not exist
            await cli.send(json.dumps({"type": "subscribe", "id": 5, "devices": ["other-0001"]}))
            assert await recv_type(cli, "error") == {
                "type": "error",
                "code": "permission",
                "message": "device outside your fleet",
                "id": 5,
            }
            await cli.send(json.dumps({"type": "subscribe", "id": 6, "devices": ["nope"]}))
            err = await recv_type(cli, "error")
            assert (err["code"], err["id"]) == ("not_found", 6)
            await cli.send(json.dumps({"type": "unsubscribe", "id": 7, "devices": ["sim-0002"]}))
            assert await recv_type(cli, "unsubscribed") == {
                "type": "unsubscribed",
                "id": 7,
                "devices": ["sim-0002"],
            }
            await cli.send(json.dumps({"type": "subscribe", "id": 8, "devices": ["sim-0003"]}))
            await recv_type(cli, "subscribed")
            append(ref_server, "sim-0002", 1)
            append(ref_server, "sim-0003", 1)
            got = await ticks(cli, 1)
            assert (got[0]["device"], got[0]["position"]) == ("sim-0003", 10)

    run(main())


def test_tail_subscription_skips_history(ref_server: ServerThread) -> None:
    async def main() -> None:
        append(ref_server, "sim-0001", 10)
        async with await connect(ref_server, token_headers(ref_server)) as cli:
            sub = await subscribe(cli, None)
            assert sub["position"] == 10
            append(ref_server, "sim-0001", 1)
            (t,) = await ticks(cli, 1)
            assert t["position"] == 11

    run(main())


def test_command_ack_round_trip(ref_server: ServerThread) -> None:
    async def main() -> None:
        async with (
            await connect(ref_server, DEVICE_HEADERS) as dev,
            await connect(ref_server, token_headers(ref_server)) as cli,
        ):
            assert ref_server.call(ref_server.hub.online, README_DEVICE_ID)
            await cli.send(
                json.dumps(
                    {
                        "type": "command",
                        "id": "c-17",
                        "device": README_DEVICE_ID,
                        "data": {"led": "on"},
                    }
                )
            )
            cmd = await recv_type(dev, "command")
            assert cmd == {
                "type": "command",
                "id": "c-17",
                "from": DEMO_USER,
                "data": {"led": "on"},
            }
            await dev.send(
                json.dumps({"type": "ack", "id": "c-17", "ok": True, "data": {"led": "on"}})
            )
            assert await recv_type(cli, "ack") == {
                "type": "ack",
                "id": "c-17",
                "ok": True,
                "data": {"led": "on"},
            }
            # integer ids come back as integers; a refusal by the device carries its error
            await cli.send(
                json.dumps({"type": "command", "id": 5, "device": README_DEVICE_ID, "data": {}})
            )
            cmd = await recv_type(dev, "command")
            await dev.send(
                json.dumps({"type": "ack", "id": cmd["id"], "ok": False, "error": "busy"})
            )
            assert await recv_type(cli, "ack") == {
                "type": "ack",
                "id": 5,
                "ok": False,
                "error": "busy",
            }

    run(main())


def test_command_to_offline_device_is_refused_at_once(ref_server: ServerThread) -> None:
    async def main() -> None:
        async with await connect(ref_server, token_headers(ref_server)) as cli:
            await cli.send(
                json.dumps({"type": "command", "id": "c-1", "device": "sensor-only-1", "data": {}})
            )
            assert await recv_type(cli, "ack", timeout=2.0) == {
                "type": "ack",
                "id": "c-1",
                "ok": False,
                "error": "device offline",
            }
            await cli.send(
                json.dumps({"type": "command", "id": "c-2", "device": "other-0001", "data": {}})
            )
            err = await recv_type(cli, "error")
            assert (err["code"], err["id"]) == ("permission", "c-2")

    run(main())


def test_command_timeout_and_disconnect(ref_server_factory: Callable[..., ServerThread]) -> None:
    srv = ref_server_factory(command_timeout=0.3)

    async def main() -> None:
        async with await connect(srv, token_headers(srv)) as cli:
            async with await connect(srv, DEVICE_HEADERS) as dev:
                await cli.send(
                    json.dumps(
                        {"type": "command", "id": "t", "device": README_DEVICE_ID, "data": {}}
                    )
                )
                await recv_type(dev, "command")
                assert await recv_type(cli, "ack") == {
                    "type": "ack",
                    "id": "t",
                    "ok": False,
                    "error": "timeout",
                }
                # a late ack is dropped quietly
                await dev.send(json.dumps({"type": "ack", "id": "t", "ok": True}))
                await cli.send(
                    json.dumps(
                        {"type": "command", "id": "d", "device": README_DEVICE_ID, "data": {}}
                    )
                )
                await recv_type(dev, "command")
            # the device went away before answering
            ack = await recv_type(cli, "ack")
            assert ack == {"type": "ack", "id": "d", "ok": False, "error": "device disconnected"}
        assert srv.call(srv.hub.pending_commands) == 0

    run(main())


def test_hub_send_command_for_rest(ref_server: ServerThread) -> None:
    async def device() -> None:
        async with await connect(ref_server, DEVICE_HEADERS) as dev:
            cmd = await recv_type(dev, "command")
            await dev.send(
                json.dumps({"type": "ack", "id": cmd["id"], "ok": True, "data": cmd["data"]})
            )
            await asyncio.sleep(0.2)

    async def main() -> None:
        task = asyncio.create_task(device())
        while not ref_server.call(ref_server.hub.online, README_DEVICE_ID):
            await asyncio.sleep(0.01)
        assert ref_server.loop is not None
        coro = ref_server.hub.send_command(README_DEVICE_ID, {"x": 1}, 5.0)
        ack = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, ref_server.loop))
        assert ack["ok"] is True and ack["data"] == {"x": 1}
        await task
        with pytest.raises(LookupError):
            ref_server.run(ref_server.hub.send_command("sensor-only-1", {}, 1.0))

    run(main())


# -- positions, resume, gaps ----------------------------------------------------------


def test_resume_after_disconnect_no_loss_no_duplicates(ref_server: ServerThread) -> None:
    async def main() -> None:
        seen: list[int] = []
        append(ref_server, "sim-0001", 50)
        async with await connect(ref_server, token_headers(ref_server)) as cli:
            await subscribe(cli, 0)
            seen += [t["position"] for t in await ticks(cli, 20)]
        append(ref_server, "sim-0002", 30)  # while we are away
        async with await connect(ref_server, token_headers(ref_server)) as cli:
            await subscribe(cli, seen[-1])
            seen += [t["position"] for t in await ticks(cli, 60)]
            with pytest.raises(asyncio.TimeoutError):
                await recv_type(cli, "tick", timeout=0.3)
        assert seen == list(range(1, 81))

    run(main())


def test_gap_message_before_replay_when_trimmed(
    ref_server_factory: Callable[..., ServerThread],
) -> None:
    srv = ref_server_factory(retain=10)

    async def main() -> None:
        append(srv, "sim-0001", 30)
        assert srv.hub.log.first_position == 21
        async with await connect(srv, token_headers(srv)) as cli:
            await subscribe(cli, 5)
            assert await recv_json(cli) == {"type": "gap", "from": 5, "to": 20, "missed": 15}
            got = await ticks(cli, 10)
            assert [t["position"] for t in got] == list(range(21, 31))
        async with await connect(srv, token_headers(srv)) as cli:
            await subscribe(cli, 20)  # exactly at the edge: nothing was missed
            m = await recv_json(cli)
            assert (m["type"], m["position"]) == ("tick", 21)

    run(main())


def test_resume_across_restart_with_sqlite(ref_server_db: ServerThread) -> None:
    srv = ref_server_db

    async def publish(n: int, start: int) -> list[int]:
        async with await connect(srv, DEVICE_HEADERS) as dev:
            out = []
            for i in range(n):
                # ids are idempotency keys per device: a new record needs a new id
                msg = {"type": "publish", "id": start + i, "data": {"i": start + i}}
                await dev.send(json.dumps(msg))
                out.append((await recv_type(dev, "published"))["position"])
            return out

    async def main() -> None:
        first = await publish(25, 0)
        assert first == list(range(1, 26))
        async with await connect(srv, token_headers(srv)) as cli:
            await subscribe(cli, 0)
            seen = await ticks(cli, 10)
        srv.restart()
        assert srv.hub.log.last_position == 25
        second = await publish(5, 25)
        assert second == list(range(26, 31))
        async with await connect(srv, token_headers(srv)) as cli:
            await subscribe(cli, seen[-1]["position"])
            seen += await ticks(cli, 20)
        assert [t["position"] for t in seen] == list(range(1, 31))
        assert [t["data"]["i"] for t in seen] == list(range(30))

    run(main(), timeout=40)


def test_subscriber_closed_with_1001_on_server_stop(ref_server: ServerThread) -> None:
    async def main() -> None:
        cli = await connect(ref_server, token_headers(ref_server))
        await subscribe(cli)
        await asyncio.get_running_loop().run_in_executor(None, ref_server.stop)
        with pytest.raises(ConnectionClosed) as info:
            await recv_json(cli)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001

    run(main())


# -- binary ---------------------------------------------------------------------------


def test_binary_subscription_decodes_to_json_ticks(ref_server: ServerThread) -> None:
    payload = pytest.importorskip("iotcommute.payload")

    async def main() -> None:
        def fill() -> None:
            for i in range(250):
                ref_server.hub.log.append(
                    f"sim-000{1 + i % 3}", {"t": 20.0 + i / 4, "n": i, "ok": i % 2 == 0}, 1.7e9 + i
                )

        ref_server.call(fill)
        async with await connect(ref_server, token_headers(ref_server)) as cj:
            await subscribe(cj, 0)
            as_json = await ticks(cj, 250)
        async with await connect(ref_server, token_headers(ref_server)) as cb:
            await subscribe(cb, 0, fmt="binary")
            got: list[dict[str, Any]] = []
            frames = 0
            while len(got) < 250:
                msg = await asyncio.wait_for(cb.recv(), 5)
                assert isinstance(msg, bytes)
                frames += 1
                got += payload.decode_batch(msg)
            assert frames >= 3  # at most ~100 ticks per frame
        assert got == as_json

    run(main())


def test_device_publishes_binary_batch(ref_server: ServerThread) -> None:
    payload = pytest.importorskip("iotcommute.payload")

    async def main() -> None:
        async with (
            await connect(ref_server, DEVICE_HEADERS) as dev,
            await connect(ref_server, token_headers(ref_server)) as cli,
        ):
            await subscribe(cli)
            batch = [
                {
                    "type": "tick",
                    "device": README_DEVICE_ID,
                    "position": 0,
                    "ts": 1.7e9 + i,
                    "data": {"v": i * 1.5},
                }
                for i in range(5)
            ]
            await dev.send(payload.encode_batch(batch))
            got = await ticks(cli, 5)
            assert [t["data"]["v"] for t in got] == [i * 1.5 for i in range(5)]
            assert [t["position"] for t in got] == [1, 2, 3, 4, 5]
            assert {t["device"] for t in got} == {README_DEVICE_ID}
            await dev.send(b"\x00garbage")
            assert (await recv_type(dev, "error"))["code"] == "input"

    run(main())


# -- bad input ---------------------------------------------------------------------


def test_bad_messages_get_errors_and_keep_the_connection(ref_server: ServerThread) -> None:
    async def main() -> None:
        async with await connect(ref_server, DEVICE_HEADERS) as dev:
            await dev.send("{not json")
            assert (await recv_json(dev))["code"] == "input"
            await dev.send("[1, 2]")
            assert (await recv_json(dev))["code"] == "input"
            await dev.send(json.dumps({"type": "dance", "id": 3}))
            assert await recv_json(dev) == {
                "type": "error",
                "code": "input",
                "message": "unknown message type",
                "id": 3,
            }
            await dev.send(json.dumps({"type": "publish", "id": 4, "data": [1]}))
            assert (await recv_json(dev))["code"] == "input"
            await dev.send(json.dumps({"type": "subscribe", "id": 5, "from": "x"}))
            assert (await recv_json(dev))["code"] == "input"
            await dev.send(json.dumps({"type": "subscribe", "id": 6, "format": "xml"}))
            assert (await recv_json(dev))["code"] == "input"
            await dev.send(json.dumps({"type": "command", "id": 7, "device": "sim-0001"}))
            assert (await recv_json(dev))["code"] == "permission"
            # still alive
            await dev.send(json.dumps({"type": "publish", "id": 8, "data": {"ok": 1}}))
            assert await recv_json(dev) == {"type": "published", "id": 8, "position": 1}
        async with await connect(ref_server, token_headers(ref_server)) as cli:
            await cli.send(json.dumps({"type": "publish", "id": 1, "data": {}}))
            assert (await recv_json(cli))["code"] == "permission"

    run(main())


def test_oversized_message_closes_1009(ref_server_factory: Callable[..., ServerThread]) -> None:
    srv = ref_server_factory(max_size=4096)

    async def main() -> None:
        async with await connect(srv, DEVICE_HEADERS) as dev:
            await dev.send(json.dumps({"type": "publish", "data": {"x": "y" * 3000}}))
            await dev.send(json.dumps({"type": "publish", "data": {"x": "y" * 5000}}))
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await recv_json(dev)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        assert srv.hub.log.last_position == 1

    run(main())


def test_rate_limit_answers_rate_errors(ref_server_factory: Callable[..., ServerThread]) -> None:
    srv = ref_server_factory(max_rate=1.0, max_burst=3)

    async def main() -> None:
        async with await connect(srv, device_headers("sim-0007", sim_device_key(7))) as dev:
            for i in range(6):
                await dev.send(json.dumps({"type": "publish", "id": i, "data": {"i": i}}))
            kinds = [(await recv_json(dev))["type"] for _ in range(6)]
            assert kinds[:3] == ["published"] * 3
            assert "error" in kinds[3:]

    run(main())


def test_binary_subscription_keeps_mixed_shapes_exact(ref_server: ServerThread) -> None:
    """Records of different shapes, an int/float mix and a string value: the binary stream
    (batches plus JSON ticks for what a batch cannot carry) equals the JSON stream exactly."""
    payload = pytest.importorskip("iotcommute.payload")
    datas: list[dict[str, Any]] = [
        {"t": 21.5, "n": 1},
        {"t": 21.5, "n": 2},
        {"t": 22, "n": 3},  # int where floats were: a new batch, so it stays an int
        {"door": True},
        {"status": "ok"},  # a string: cannot go in a batch, sent as a JSON tick
        {"t": 21.75, "n": 4},
        {"big": 2**70},  # out of the i64 range
        {"t": 1.5, "n": 5},
    ]

    def fill() -> None:
        for i, d in enumerate(datas):
            ref_server.hub.log.append(f"sim-000{1 + i % 2}", d, 1.7e9 + i)

    ref_server.call(fill)

    async def main() -> None:
        async with await connect(ref_server, token_headers(ref_server)) as cj:
            await subscribe(cj, 0)
            as_json = await ticks(cj, len(datas))
        async with await connect(ref_server, token_headers(ref_server)) as cb:
            await subscribe(cb, 0, fmt="binary")
            got: list[dict[str, Any]] = []
            while len(got) < len(datas):
                msg = await asyncio.wait_for(cb.recv(), 5)
                got += payload.decode_batch(msg) if isinstance(msg, bytes) else [json.loads(msg)]
        assert got == as_json
        assert [type(v) for t in got for v in t["data"].values()] == [
            type(v) for d in datas for v in d.values()
        ]

    run(main())


def test_resubscribe_from_now_after_unsubscribing_everything(ref_server: ServerThread) -> None:
    async def main() -> None:
        async with await connect(ref_server, token_headers(ref_server)) as cli:
            await subscribe(cli)
            await cli.send(json.dumps({"type": "unsubscribe", "id": 2, "devices": "*"}))
            await recv_type(cli, "unsubscribed")
            append(ref_server, "sim-0001", 3)  # not subscribed: never delivered
            sub = await subscribe(cli, None)
            assert sub["position"] == 3
            append(ref_server, "sim-0001", 1)
            (t,) = await ticks(cli, 1)
            assert t["position"] == 4

    run(main())
