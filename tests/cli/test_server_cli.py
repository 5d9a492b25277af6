"""`iotcommute serve` as a process: starts, serves, shuts down cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from iotcommute.server.registry import README_DEVICE_ID, README_DEVICE_KEY

HEADERS = {"X-Device-Id": README_DEVICE_ID, "X-Device-Key": README_DEVICE_KEY, "X-Role": "device"}


def _serve_cmd() -> list[str]:
    """`python -m iotcommute serve` when the top-level CLI imports, else the server's own entry."""
    probe = subprocess.run(
        [sys.executable, "-c", "import iotcommute.cli as c; c.build_parser()"],
        capture_output=True,
        timeout=30,
    )
    if probe.returncode == 0:
        return [sys.executable, "-m", "iotcommute", "serve"]
    return [sys.executable, "-m", "iotcommute.server"]


def _start(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [*_serve_cmd(), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "iotcommute serve: listening on ws://127.0.0.1:PORT/v1/stream"
    if "listening on" not in line:
        proc.kill()
        raise AssertionError(
            f"server did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
        )
    return proc, line.rsplit(" ", 1)[1].strip()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_closes_peers_with_1001_and_flushes(tmp_path: Path, sig: signal.Signals) -> None:
    db = tmp_path / "log.sqlite"
    proc, url = _start(["--db", str(db), "--retain", "1000"])
    try:

        async def main() -> int | None:
            async with websockets.connect(url, additional_headers=HEADERS, open_timeout=10) as ws:
                assert json.loads(await ws.recv())["type"] == "welcome"
                for i in range(5):
                    await ws.send(json.dumps({"type": "publish", "id": i, "data": {"i": i}}))
                    assert json.loads(await ws.recv())["type"] == "published"
                proc.send_signal(sig)
                with pytest.raises(ConnectionClosed) as info:
                    while True:
                        await asyncio.wait_for(ws.recv(), 10)
                return info.value.rcvd.code if info.value.rcvd else None

        assert asyncio.run(main()) == 1001
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT position, device FROM records ORDER BY position").fetchall()
    assert rows == [(i, README_DEVICE_ID) for i in range(1, 6)]


def test_simulated_devices_stream_ticks() -> None:
    proc, url = _start(["--simulate", "3", "--rate", "20"])
    try:

        async def main() -> set[str]:
            hdrs = {**HEADERS, "X-Role": "client"}
            async with websockets.connect(url, additional_headers=hdrs, open_timeout=10) as ws:
                await ws.recv()
                await ws.send(json.dumps({"type": "subscribe", "id": 1, "devices": "*", "from": 0}))
                devices: set[str] = set()
                last = 0
                while len(devices) < 3:
                    m = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    if m["type"] == "tick":
                        assert m["position"] == last + 1
                        last = m["position"]
                        assert {"temperature", "humidity", "battery", "rssi", "status"} <= set(
                            m["data"]
                        )
                        assert 150 <= len(json.dumps(m)) <= 400  # a ~256-byte tick
                        devices.add(m["device"])
                # simulated devices answer commands
                await ws.send(
                    json.dumps(
                        {"type": "command", "id": "c", "device": "sim-0002", "data": {"x": 1}}
                    )
                )
                while True:
                    m = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    if m["type"] == "ack":
                        assert m["ok"] is True and m["data"]["echo"] == {"x": 1}
                        break
                return devices

        assert asyncio.run(main()) == {"sim-0001", "sim-0002", "sim-0003"}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
