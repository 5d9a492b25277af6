"""`iotcommute listen --group` as a subprocess against a server process on a JetStream log.

Two runs of one group, one after the other, on a preloaded log: the first prints 15 ticks
and stops (its last commit goes out before the close), the second prints the rest. What
they printed is the log, once: the group's position moved exactly to what was printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from iotcommute.server.registry import sim_device_id, sim_device_key
from tests.jetstream.jsprocs import ROOT, ServerProc, connect, device_headers, publish_all
from tests.jetstream.natsfixture import NatsServer, nats_server

__all__ = ["nats_server"]


def listen(url: str, count: int) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("IOTCOMMUTE_") or k == "IOTCOMMUTE_NO_EXTENSIONS"
    }
    env.update(IOTCOMMUTE_KEY=sim_device_key(30), IOTCOMMUTE_DEVICE=sim_device_id(30))
    args = ["listen", "--url", url, "--group", "ingest", "--format", "json", "--count", str(count)]
    return subprocess.run(
        [sys.executable, "-m", "iotcommute", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=40,
        check=False,
    )


async def preload(url: str) -> list[int]:
    positions: list[int] = []
    for i in (1, 2, 3):
        ws, _ = await connect(url, device_headers(i))
        positions += (await publish_all(ws, f"d{i}", 10)).values()
        await ws.close()
    return sorted(positions)


@pytest.mark.timeout(90)
def test_listen_group_prints_each_record_once_across_runs(nats_server: NatsServer) -> None:
    server = ServerProc(nats_server.url, "--partitions", "2").start()
    try:
        log = asyncio.run(preload(server.ws_url))
        first = listen(server.ws_url, 15)
        second = listen(server.ws_url, 15)
    finally:
        server.stop()
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    printed = [json.loads(line)["position"] for line in (first.stdout + second.stdout).split()]
    assert sorted(printed) == log  # every record once: the first run committed what it printed
    lines = first.stderr.splitlines()
    assert lines[0] == (
        f"iotcommute listen: connected to {server.ws_url} as client; following group ingest"
    )
    prefix = "iotcommute listen: group ingest: assigned partitions "
    assigned = [int(p) for x in lines if x.startswith(prefix) for p in x[len(prefix) :].split(",")]
    assert sorted(assigned) == [0, 1]  # one line per assign (here one per partition)
    assert lines[-1] == "iotcommute listen: group ingest: revoked partitions 0, 1"  # the close
    assert "Traceback" not in first.stderr + second.stderr
    assert sim_device_key(30) not in first.stderr


@pytest.mark.timeout(90)
def test_async_member_commits_what_the_loop_finished(nats_server: NatsServer) -> None:
    """AsyncWebSocket(group=...): a loop that takes 10 ticks and leaves `async with` has
    those 10 committed (the last one at the close); the next member gets the rest, once.
    The first member lets the whole log arrive before its loop starts: ticks queued before
    `async for` are not finished work and must not be committed."""
    from iotcommute import AsyncWebSocket

    server = ServerProc(nats_server.url, "--partitions", "2").start()

    async def take(n: int, queued_first: int = 0) -> list[int]:
        got: list[int] = []
        events: list[tuple[str, list[int]]] = []
        ws = AsyncWebSocket(
            sim_device_key(30), sim_device_id(30), "client", url=server.ws_url, group="a"
        )
        ws.on_assign = lambda ps, w: events.append(("assign", ps))
        ws.on_revoke = lambda ps, w: events.append(("revoke", ps))
        async with ws:
            deadline = asyncio.get_running_loop().time() + 20
            while ws.stats()["queued_ticks"] < queued_first:
                assert asyncio.get_running_loop().time() < deadline, ws.stats()
                await asyncio.sleep(0.02)
            try:
                async with asyncio.timeout(30):  # a lost tick fails here, not as a hang
                    async for tick in ws:
                        got.append(tick["position"])
                        if len(got) == n:
                            break
            except TimeoutError:
                pytest.fail(f"waited for {n} ticks, got {got}")
        assert sorted(p for kind, ps in events if kind == "assign" for p in ps) == [0, 1]
        return got

    try:
        log = asyncio.run(preload(server.ws_url))
        first = asyncio.run(take(10, queued_first=len(log)))
        second = asyncio.run(take(20))
    finally:
        server.stop()
    assert sorted(first + second) == log
