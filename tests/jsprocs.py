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
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from iotcommute.server.registry import sim_device_id, sim_device_key

ROOT = Path(__file__).resolve().parent.parent


class ServerProc:
    """`python -m tests.jsserver NATS_URL ...` as a child process."""

    def __init__(self, nats_url: str, *args: str) -> None:
        self.args = [sys.executable, "-m", "tests.jsserver", nats_url, *args]
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
        # The first stdout line is the address (logs go to stderr); bounded by the deadline
        # through a reader thread would be nicer, but the child prints or dies quickly.
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("listening on "):
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
