"""`iotcommute serve` as a process: starts, serves, shuts down cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from iotcommute.server.registry import README_DEVICE_ID, README_DEVICE_KEY

HEADERS = {"X-Device-Id": README_DEVICE_ID, "X-Device-Key": README_DEVICE_KEY, "X-Role": "device"}


def _start(
    args: list[str], entry: tuple[str, ...] = ("iotcommute", "serve")
) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", *entry, "--port", "0", *args],
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


def test_banner_shows_demo_credentials_and_login_page_hint() -> None:
    """A new user finds the demo logins where they look: the banner and the login page."""
    proc, url = _start(["--simulate", "2"], entry=("iotcommute.server",))  # the thin entry
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not lines or "Ctrl-C stops the server." not in lines[-1]:
            lines.append(proc.stdout.readline())
        banner = "".join(lines)
        http_url = url.replace("ws://", "http://").removesuffix("/v1/stream")
        for expected in (
            f"REST API     {http_url}",
            f"login page   {http_url}/connect/login?api_key=demo-app",
            f"device   id {README_DEVICE_ID}  key {README_DEVICE_KEY}",
            "app      api_key demo-app  api_secret demo-secret",
            "user     demo-user  password demo-pass",
            "devices  sim-0001..sim-0100 (2 simulated)",
            'export IOTCOMMUTE_TOKEN="$(iotcommute login --demo)"',
        ):
            assert expected in banner, banner
        assert max(len(line.rstrip("\n")) for line in lines) <= 80, banner
        with urllib.request.urlopen(f"{http_url}/connect/login?api_key=demo-app") as r:
            page = r.read().decode()
        assert "log in as <b>demo-user</b> with password <b>demo-pass</b>" in page
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def test_no_demo_hint_with_an_own_registry(tmp_path: Path) -> None:
    reg = tmp_path / "registry.json"
    reg.write_text(
        json.dumps(
            {
                "users": [{"user_id": "u", "password": "p"}],
                "apps": [{"api_key": "k", "api_secret": "s", "user_id": "u"}],
                "devices": [{"id": "d", "key": "dk", "owner": "u"}],
            }
        )
    )
    proc, url = _start(["--registry", str(reg)])
    try:
        assert proc.stdout is not None
        rest = proc.stdout.readline() + proc.stdout.readline() + proc.stdout.readline()
        assert "demo" not in rest and "password" not in rest
        http_url = url.replace("ws://", "http://").removesuffix("/v1/stream")
        with urllib.request.urlopen(f"{http_url}/connect/login?api_key=k") as r:
            page = r.read().decode()
        assert "Demo server" not in page and "demo-pass" not in page
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def test_bad_registry_file_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "registry.json"
    bad.write_text("{not json")
    for path in (bad, tmp_path / "missing.json"):
        proc = subprocess.run(
            [sys.executable, "-m", "iotcommute", "serve", "--registry", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith("iotcommute serve: ")
