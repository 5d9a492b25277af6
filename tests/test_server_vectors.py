"""The JSON examples of docs/protocol.md, as scripted conversations checked against the server.

Each tests/vectors/messages/*.json holds either `steps` (connect, send, expect exactly this
message, append a record) or `handshakes` (headers -> status and JSON body). Other
implementations can replay the same files against their server.

In an expected message, `{"$match": "string"}` (or "int") stands for any value of that
type (the log's identity is random), and `{"$same": "name"}` for a value that must equal
the one first seen under that name. A `progress` message that arrives while a step
expects another message is skipped (its timing depends on the server's scheduling).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from iotcommute.server import ServerThread
from iotcommute.server.registry import DEMO_API_KEY, DEMO_USER, README_DEVICE_KEY, Registry

VECTORS = sorted((Path(__file__).parent / "vectors" / "messages").glob("*.json"))
MESSAGE_TYPES = {
    *("welcome", "tick", "subscribed", "unsubscribed", "gap", "command", "ack", "published"),
    *("error", "progress"),
    *("subscribe", "unsubscribe", "publish"),
}


def _headers(srv: ServerThread, spec: dict[str, Any]) -> dict[str, str]:
    if spec["auth"] == "token":
        s = srv.call(srv.hub.registry.sessions.create, DEMO_USER, DEMO_API_KEY, 60.0)
        return {"Authorization": f"token {DEMO_API_KEY}:{s.access_token}", "X-Role": spec["role"]}
    reg: Registry = srv.hub.registry
    dev = reg.device(spec["device"])
    assert dev is not None
    return {"X-Device-Id": dev.id, "X-Device-Key": dev.key, "X-Role": spec["role"]}


_TYPES: dict[str, type | tuple[type, ...]] = {"string": str, "int": int}


def _matches(got: Any, want: Any, seen: dict[str, Any]) -> bool:
    if isinstance(want, dict) and set(want) == {"$match"}:
        t = _TYPES[want["$match"]]
        return isinstance(got, t) and not isinstance(got, bool)
    if isinstance(want, dict) and set(want) == {"$same"}:
        return bool(seen.setdefault(want["$same"], got) == got)
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and set(got) == set(want)
            and all(_matches(got[k], want[k], seen) for k in want)
        )
    if isinstance(want, list):
        return (
            isinstance(got, list)
            and len(got) == len(want)
            and all(_matches(g, w, seen) for g, w in zip(got, want))
        )
    return bool(got == want) and type(got) is type(want)


async def _play(srv: ServerThread, vec: dict[str, Any]) -> None:
    conns: dict[str, ClientConnection] = {}
    seen: dict[str, Any] = {}
    try:
        for step in vec["steps"]:
            if "connect" in step:
                name = step["connect"]
                hdrs = _headers(srv, vec["connections"][name])
                conns[name] = await websockets.connect(srv.ws_url, additional_headers=hdrs)
            elif "send" in step:
                await conns[step["conn"]].send(json.dumps(step["send"]))
            elif "send_text" in step:
                await conns[step["conn"]].send(step["send_text"])
            elif "append" in step:
                dev, data, ts = step["append"]
                srv.call(srv.hub.log.append, dev, data, ts)
            elif "expect" in step:
                while True:
                    raw = await asyncio.wait_for(conns[step["conn"]].recv(), 5.0)
                    got = json.loads(raw)
                    # Control messages are recognisable by their first bytes (type first).
                    assert isinstance(raw, str) and raw.startswith(f'{{"type":"{got["type"]}"')
                    # `progress` may come whenever a cursor passed other devices' records
                    # and reached the tail: only a step that expects one checks it.
                    if got.get("type") != "progress" or step["expect"]["type"] == "progress":
                        break
                assert _matches(got, step["expect"], seen), f"step {step}: got {got}"
            else:  # pragma: no cover - a malformed vector
                raise AssertionError(f"unknown step {step}")
    finally:
        for c in conns.values():
            await c.close()


async def _handshakes(srv: ServerThread, vec: dict[str, Any]) -> None:
    for hs in vec["handshakes"]:
        with pytest.raises(InvalidStatus) as info:
            await websockets.connect(srv.ws_url, additional_headers=hs["headers"], open_timeout=5)
        resp = info.value.response
        assert resp.status_code == hs["status"]
        assert json.loads(resp.body) == hs["body"]
        assert README_DEVICE_KEY.encode() not in resp.body


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_vector(path: Path, ref_server_factory: Callable[..., ServerThread]) -> None:
    vec = json.loads(path.read_text("utf-8"))
    srv = ref_server_factory(**vec.get("server", {}))
    for dev, data, ts in vec.get("setup", {}).get("log", []):
        srv.call(srv.hub.log.append, dev, data, ts)

    async def main() -> None:
        if "handshakes" in vec:
            await _handshakes(srv, vec)
        else:
            await _play(srv, vec)

    asyncio.run(asyncio.wait_for(main(), 30))


def test_vectors_exist_and_every_message_has_a_known_type() -> None:
    assert len(VECTORS) >= 8
    seen: set[str] = set()
    for path in VECTORS:
        vec = json.loads(path.read_text("utf-8"))
        assert vec["description"]
        for step in vec.get("steps", []):
            for key in ("send", "expect"):
                if key in step and not step.get("invalid"):
                    assert step[key]["type"] in MESSAGE_TYPES, (path.name, step)
                    seen.add(step[key]["type"])
    assert seen == MESSAGE_TYPES  # every message type of protocol v1 has an example
