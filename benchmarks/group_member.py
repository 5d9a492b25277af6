"""A consumer-group member as its own process (for benchmarks/test_bench_jetstream.py).

python benchmarks/group_member.py WS_URL GROUP DEVICE_INDEX

Joins GROUP (JSON format), counts the ticks of its partitions, commits every 1000 ticks, and
once it has been idle for 1.5 s after its first tick (or 5 s without one) prints
"COUNT FIRST LAST" (the count and the wall-clock times of its first and last tick) and exits.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import websockets

from iotcommute.server.registry import sim_device_id, sim_device_key


async def main(url: str, group: str, dev: int) -> None:
    headers = {"X-Device-Id": sim_device_id(dev), "X-Device-Key": sim_device_key(dev)}
    headers["X-Role"] = "client"
    async with websockets.connect(url, additional_headers=headers, max_queue=None) as ws:
        await ws.recv()  # welcome
        await ws.send(json.dumps({"type": "subscribe", "id": 1, "group": group}))
        print("joined", flush=True)
        count = 0
        first = last = 0.0
        done: dict[str, int] = {}
        of = 1
        since = 0
        while True:
            try:
                raw = await asyncio.wait_for(ws.recv(), 1.5 if count else 5)
            except TimeoutError:
                break
            if isinstance(raw, bytes):
                continue
            if raw.startswith('{"type":"tick"'):
                m = json.loads(raw)
                count += 1
                last = time.time()
                if count == 1:
                    first = last
                done[m["device"]] = m["position"]
                since += 1
                if since >= 1000:
                    since = 0
                    await commit(ws, done, of)
            elif raw.startswith('{"type":"assign"'):
                of = json.loads(raw)["of"]
        print(f"{count} {first} {last}", flush=True)


async def commit(ws: websockets.ClientConnection, done: dict[str, int], of: int) -> None:
    from iotcommute.partition import partition

    best: dict[int, int] = {}
    for d, pos in done.items():
        p = partition(d, of)
        best[p] = max(best.get(p, 0), pos)
    parts = [{"partition": p, "position": pos} for p, pos in best.items()]
    await ws.send(json.dumps({"type": "commit", "id": 0, "partitions": parts}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
