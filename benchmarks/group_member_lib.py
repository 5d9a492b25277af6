"""A consumer-group member made with the library, as its own process (for
benchmarks/test_bench_jetstream.py).

python benchmarks/group_member_lib.py WS_URL GROUP DEVICE_INDEX

`WebSocket(group=GROUP, format="binary")` counting its ticks in on_ticks (the library commits
every 100 ticks or once a second); prints "joined" once the server took it in, and once it
has been idle for 1.5 s after its first tick (or got none in 5 s) prints "COUNT FIRST LAST"
(the count and the wall-clock times of its first and last tick) and stops (with its last
commit).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from iotcommute import WebSocket
from iotcommute.server.registry import sim_device_id, sim_device_key


def main(url: str, group: str, dev: int) -> None:
    ws = WebSocket(
        sim_device_key(dev), sim_device_id(dev), "client", url=url, group=group, format="binary"
    )
    count = 0
    first = last = 0.0

    def on_ticks(ticks: list[dict[str, Any]], ws: Any) -> None:
        nonlocal count, first, last
        last = time.time()
        if not count:
            first = last
        count += len(ticks)

    ws.on_ticks = on_ticks
    ws.connect(threaded=True)
    g = ws._session.group
    deadline = time.monotonic() + 30
    while g is not None and g.member is None and time.monotonic() < deadline:
        time.sleep(0.01)
    print("joined", flush=True)
    joined = time.time()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if count and time.time() - last > 1.5:
            break
        # the log is preloaded: a member given partitions gets ticks at once, so one that
        # got none for 5 s came after the others had drained it (it counts 0)
        if not count and time.time() - joined > 5:
            break
    ws.stop()
    ws.join(10)
    print(f"{count} {first} {last}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
