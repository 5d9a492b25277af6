"""`iotcommute listen` and `iotcommute demo` as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from iotcommute.server import ServerThread
from iotcommute.server.registry import README_DEVICE_ID, README_DEVICE_KEY, sim_device_id

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server(ref_server: ServerThread) -> ServerThread:
    return ref_server


def test_listen_prints_json_lines(server: ServerThread) -> None:
    positions = server.call(
        lambda: [server.hub.log.append(sim_device_id(1), {"i": i}) for i in range(20)]
    )
    env = dict(
        os.environ,
        IOTCOMMUTE_URL=server.url,
        IOTCOMMUTE_KEY=README_DEVICE_KEY,
        IOTCOMMUTE_DEVICE=README_DEVICE_ID,
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "iotcommute",
            "listen",
            "--role",
            "device",
            "--from",
            "0",
            "--count",
            "20",
        ],
        env=env,
        capture_output=True,
        timeout=40,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    ticks = [json.loads(x) for x in lines]
    assert [t["position"] for t in ticks] == positions
    assert all(t["type"] == "tick" and t["device"] == sim_device_id(1) for t in ticks)
    assert README_DEVICE_KEY.encode() not in proc.stderr


def test_listen_bad_key_exits_nonzero(server: ServerThread) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "iotcommute",
            "listen",
            "--url",
            server.url,
            "--key",
            "WRONG0000000000000000",
            "--device",
            README_DEVICE_ID,
            "--role",
            "device",
        ],
        capture_output=True,
        timeout=40,
        check=False,
    )
    assert proc.returncode == 1
    assert b"TokenError" in proc.stderr and b"WRONG0000" not in proc.stderr


def test_demo_shows_lossless_resume() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "iotcommute",
            "demo",
            "--seconds",
            "3",
            "--devices",
            "5",
            "--rate",
            "100",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # as a terminal shows them: log lines among status lines
        timeout=50,
        check=False,
    )
    out = proc.stdout.decode()
    assert proc.returncode == 0, out
    assert "connection cut" in out
    assert "lossless resume  yes" in out and "missing 0" in out
    assert "\r" in out  # one updating status line
    # the cut's warning is logged on a line of its own, never glued to the status line
    warnings = [ln for ln in out.replace("\r", "\n").splitlines() if "WARNING" in ln]
    assert warnings and all(ln[:4].isdigit() for ln in warnings), warnings
