"""Helpers for the scale-out tests: server processes on a JetStream log, protocol clients.

The clients are `websockets` connections speaking the protocol directly (independent of
iotcommute's own client, which is tested elsewhere).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from iotcommute.server.registry import sim_device_id, sim_device_key

ROOT = Path(__file__).resolve().parents[2]  # the repository


class ServerProc:
    """`iotcommute serve --log NATS_URL --port 0 ...` as a child process; `args` are more
    serve options. A silent group member loses its partitions after 3 s unless
    `--group-session-timeout` says otherwise (the CLI's 10 s would slow the tests)."""

    def __init__(self, nats_url: str, *args: str) -> None:
        serve = ["serve", "--port", "0", "--log", nats_url, "--group-session-timeout", "3"]
        self.args = [sys.executable, "-m", "iotcommute", *serve, *args]
        self.proc: subprocess.Popen[str] | None = None
        self.ws_url = ""

    def start(self, timeout: float = 20.0) -> ServerProc:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            self.args,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        # The first stdout line is "iotcommute serve: listening on URL" (logs go to stderr);
        # bounded by the deadline through a reader thread would be nicer, but the child
        # prints or dies quickly. The banner that follows is a few lines: the pipe holds it.
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("iotcommute serve: listening on "):
                self.ws_url = line.split()[-1]
                return self
            if not line and self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError("the server process did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


async def until(pred: Callable[[], object], timeout: float | None = 20.0) -> None:
    """Until ``pred()`` holds, polled every 50 ms. A wait past ``timeout`` seconds raises
    TimeoutError, so a hang fails at the bound (nothing is timed after the fact); None: no
    bound of its own, the test's pytest timeout bounds it."""

    async def poll() -> None:
        while not pred():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout)


def device_headers(i: int, role: str = "device") -> dict[str, str]:
    return {"X-Device-Id": sim_device_id(i), "X-Device-Key": sim_device_key(i), "X-Role": role}


async def connect(url: str, headers: dict[str, str]) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await websockets.connect(url, additional_headers=headers, open_timeout=5, max_queue=None)
    welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert welcome["type"] == "welcome"
    return ws, welcome


async def recv_json(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(msg, str)
    out: dict[str, Any] = json.loads(msg)
    return out


async def recv_type(ws: ClientConnection, kind: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        m = await recv_json(ws, max(0.01, deadline - time.monotonic()))
        if m["type"] == kind:
            return m


async def publish_all(
    ws: ClientConnection, prefix: str, n: int, timeout: float = 20.0
) -> dict[str, int]:
    """Publish n records with ids `prefix-k` and wait for every `published`: id -> position."""
    for k in range(n):
        await ws.send(json.dumps({"type": "publish", "id": f"{prefix}-{k}", "data": {"k": k}}))
    got: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while len(got) < n:
        m = await recv_json(ws, max(0.01, deadline - time.monotonic()))
        if m["type"] == "published":
            got[m["id"]] = m["position"]
        elif m["type"] == "error":
            raise AssertionError(f"publish refused: {m}")
    return got


class GroupMember:
    """A consumer-group member speaking the protocol: it processes ticks of the partitions
    it owns, commits after processing (every `commit_every` ticks and when idle), and keeps
    a record of everything for the checks: `processed` [(partition, position)], `commits`
    [(partition, position)] accepted by the server."""

    def __init__(self, name: str, url: str, group: str, headers: dict[str, str]) -> None:
        self.name = name
        self.url = url
        self.group = group
        self.headers = headers
        self.ws: ClientConnection | None = None
        self.of = 0
        self.owned: set[int] = set()
        self.done: dict[int, int] = {}  # partition -> last processed position
        self.committed: dict[int, int] = {}
        self.processed: list[tuple[int, int]] = []
        self.commits: list[tuple[int, int]] = []
        self.refused: list[int] = []
        self.events: list[tuple[str, list[int]]] = []
        #: (partition, tenure) for every processed record, in order; a tenure is one
        #: assign..revoke span; `tenure_commit[(p, tenure)]` = last accepted commit in it
        self.tenure: dict[int, int] = {}
        self.processed_in: list[tuple[int, int, int, float]] = []
        self.tenure_commit: dict[tuple[int, int], int] = {}
        self.errors: list[dict[str, Any]] = []
        self.task: asyncio.Task[None] | None = None
        self.commit_every = 20
        self._n = 0
        self.member_id = ""

    async def start(self) -> GroupMember:
        self.ws, _ = await connect(self.url, self.headers)
        sub = {"type": "subscribe", "id": "g", "group": self.group}
        await self.ws.send(json.dumps(sub))
        m = await recv_type(self.ws, "subscribed")
        self.member_id = m["member"]
        self.task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def _commit(self) -> None:
        todo = [
            {"partition": p, "position": pos}
            for p, pos in self.done.items()
            if p in self.owned and pos > self.committed.get(p, 0)
        ]
        if todo and self.ws is not None:
            self._n += 1
            await self.ws.send(json.dumps({"type": "commit", "id": self._n, "partitions": todo}))

    async def _run(self) -> None:
        from iotcommute.partition import partition

        ws = self.ws
        assert ws is not None
        since = 0
        try:
            while True:
                try:
                    raw = await asyncio.wait_for(ws.recv(), 0.2)
                except TimeoutError:
                    if since:
                        since = 0
                        await self._commit()
                    continue
                m = json.loads(raw)
                t = m["type"]
                if t == "tick":
                    p = partition(m["device"], self.of)
                    assert p in self.owned, (self.name, "tick of a partition not owned", p)
                    self.processed.append((p, m["position"]))
                    self.processed_in.append((p, m["position"], self.tenure[p], time.monotonic()))
                    self.done[p] = m["position"]
                    since += 1
                    if since >= self.commit_every:
                        since = 0
                        await self._commit()
                elif t == "assign":
                    self.of = m["of"]
                    for a in m["partitions"]:
                        self.owned.add(a["partition"])
                        self.tenure[a["partition"]] = self.tenure.get(a["partition"], 0) + 1
                        self.done[a["partition"]] = a["position"]
                        self.committed[a["partition"]] = a["position"]
                    self.events.append(("assign", [a["partition"] for a in m["partitions"]]))
                elif t == "revoke":
                    for p in m["partitions"]:
                        self.owned.discard(p)
                    self.events.append(("revoke", m["partitions"]))
                elif t == "committed":
                    for c in m["partitions"]:
                        self.commits.append((c["partition"], c["position"]))
                        key = (c["partition"], self.tenure[c["partition"]])
                        self.tenure_commit[key] = c["position"]
                        self.committed[c["partition"]] = c["position"]
                    self.refused += m["refused"]
                elif t == "error":
                    self.errors.append(m)
        except (websockets.ConnectionClosed, OSError):
            return

    def kill(self) -> None:
        """Vanish like a SIGKILLed process: no close frame, no last commit."""
        if self.task is not None:
            self.task.cancel()
        if self.ws is not None:
            self.ws.transport.abort()

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.ws is not None:
            await self.ws.close()


class Publisher:
    """A device publishing `n` records with ids, one at a time, each until its `published`;
    when its server goes away it reconnects to another one and re-sends the unacked
    publish with the same id (what the device library does)."""

    def __init__(self, i: int, urls: list[str], n: int, pause: float = 0.005) -> None:
        self.i = i
        self.urls = urls
        self.n = n
        self.pause = pause
        self.acked: dict[str, int] = {}
        self.reconnects = 0
        self.resent = 0

    async def _connect(self, k: int) -> tuple[ClientConnection, int]:
        for j in range(len(self.urls) * 20):
            url = self.urls[(k + j) % len(self.urls)]
            try:
                ws, _ = await connect(url, device_headers(self.i))
                return ws, (k + j) % len(self.urls)
            except (OSError, websockets.WebSocketException, TimeoutError):
                await asyncio.sleep(0.1)
        raise RuntimeError("no server to publish to")

    async def run(self) -> None:
        k = self.i % len(self.urls)
        ws, k = await self._connect(k)
        seq = 0
        while seq < self.n:
            pid = f"p{self.i}-{seq}"
            try:
                await ws.send(json.dumps({"type": "publish", "id": pid, "data": {"seq": seq}}))
                while True:
                    m = await recv_json(ws, 10)
                    if m["type"] == "published" and m["id"] == pid:
                        self.acked[pid] = m["position"]
                        seq += 1
                        break
                    if m["type"] == "error" and m.get("id") == pid:
                        await asyncio.sleep(0.1)  # unavailable: re-send the same id
                        self.resent += 1
                        break
            except (websockets.ConnectionClosed, OSError, TimeoutError):
                self.reconnects += 1
                self.resent += 1
                ws, k = await self._connect(k + 1)
                continue
            await asyncio.sleep(self.pause)
        await ws.close()
