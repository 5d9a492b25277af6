"""Consumer-group members made with the library, as one OS process (for the failover test).

python -m tests.jetstream.lib_member OUT_DIR GROUP NAME=WS_URL [NAME=WS_URL ...]

Runs one `WebSocket(group=GROUP)` per NAME (each on its own thread, as the library does with
connect(threaded=True)) and appends, per member, lines to OUT_DIR/NAME.log, each written with
one os.write before the callback returns (so a SIGKILL loses nothing it processed):

    T <monotonic> <partition> <position>     a tick processed (on_ticks)
    A <monotonic> <partition> ...            on_assign
    R <monotonic> <partition> ...            on_revoke (a rebalance or the connection lost)
    C <monotonic> <partition> <position>     a commit the server accepted

Prints "ready" once every member has joined, and stops them gracefully (last commit, close)
on SIGTERM. The accepted commits are read from the session's answer handling: the library
has no callback for them (and needs none).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

from iotcommute import WebSocket
from iotcommute.partition import partition
from iotcommute.server.registry import sim_device_id, sim_device_key


class Member:
    def __init__(self, out_dir: str, group: str, name: str, url: str) -> None:
        self.name = name
        self.fd = os.open(
            os.path.join(out_dir, f"{name}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND
        )
        self.joined = threading.Event()
        self.ws = WebSocket(
            sim_device_key(30), sim_device_id(30), "client", url=url, group=group,
            ping_interval=2.0, ping_timeout=2.0, max_reconnect_delay=1.0,
        )  # fmt: skip
        self.ws.on_ticks = self.on_ticks
        self.ws.on_assign = self.on_assign
        self.ws.on_revoke = self.on_revoke
        g = self.ws._session.group
        assert g is not None
        self.group = g
        answer = g.committed

        def committed(msg: dict[str, Any]) -> list[int]:
            mine = g.inflight is not None and msg.get("id") == g.inflight[0]
            refused = answer(msg)
            if mine:
                now = time.monotonic()
                self.write(
                    "".join(
                        f"C {now} {c['partition']} {c['position']}\n" for c in msg["partitions"]
                    )
                )
            return refused

        g.committed = committed  # type: ignore[method-assign]

    def write(self, text: str) -> None:
        if text:
            os.write(self.fd, text.encode())

    def on_ticks(self, ticks: list[dict[str, Any]], ws: Any) -> None:
        now = time.monotonic()
        of = self.group.of
        self.write(
            "".join(f"T {now} {partition(t['device'], of)} {t['position']}\n" for t in ticks)
        )

    def on_assign(self, parts: list[int], ws: Any) -> None:
        self.write(f"A {time.monotonic()} {' '.join(map(str, parts))}\n")
        self.joined.set()

    def on_revoke(self, parts: list[int], ws: Any) -> None:
        self.write(f"R {time.monotonic()} {' '.join(map(str, parts))}\n")


def main(argv: list[str]) -> int:
    out_dir, group, *specs = argv
    members = [Member(out_dir, group, *spec.split("=", 1)) for spec in specs]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    for m in members:
        m.ws.connect(threaded=True)
    for m in members:
        # a member may own no partition yet (more members than partitions): joined is enough
        deadline = time.monotonic() + 15
        while not m.joined.is_set() and time.monotonic() < deadline:
            if m.group.member is not None:
                break
            time.sleep(0.02)
    print("ready", flush=True)
    stop.wait()
    for m in members:
        m.ws.stop()
    for m in members:
        m.ws.join(10)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
