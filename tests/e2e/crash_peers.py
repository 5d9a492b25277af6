"""The library processes of the crash test (tests/e2e/test_crash_library.py), run as
``python -m tests.e2e.crash_peers ROLE URL ...`` from the repository root.

Each writes with one ``os.write`` per line and no buffering of its own: a SIGKILL loses
only what the kernel had not been handed, at most the line being written (a torn last
line, which readers drop). Roles:

- ``device OUT STOP THREADS``: the README device (``subscribe=None``) publishes ``{"n": k}``
  with ``publish(wait=True)`` from THREADS threads (so several publishes are in flight) and
  appends ``k position`` to OUT as each ack arrives; it finishes once STOP exists.
- ``callback CHECKPOINT``: a callback consumer of the fleet with ``checkpoint=``,
  writing ``position device json`` lines to stdout from ``on_tick``.
- ``exactly OUT``: the exactly-once recipe of the README: the output file is the
  checkpoint. At start its torn last line (if any) is cut off, and the stream is asked
  from the position of the last complete line with ``subscribe("*", from_position=...)``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from iotcommute import WebSocket
from iotcommute.server.registry import README_DEVICE_ID, README_DEVICE_KEY

# Reconnect quickly: the server is down for a moment only, many times.
FAST: dict[str, Any] = {
    "max_reconnect_delay": 0.25,
    "first_connect_retries": None,
    "open_timeout": 5.0,
}


def tick_line(tick: dict[str, Any]) -> bytes:
    """``position device json`` (json: ts and data, as the store holds them)."""
    body = json.dumps({"ts": tick["ts"], "data": tick["data"]}, sort_keys=True)
    return f"{tick['position']} {tick['device']} {body}\n".encode()


def last_complete_position(path: Path) -> int:
    """Cut a torn last line off `path`; the position of its last complete line (0: none)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
        with path.open("r+b") as f:
            f.truncate(keep)
    if keep == 0:
        return 0
    start = data.rfind(b"\n", 0, keep - 1) + 1
    return int(data[start:keep].split(b" ", 1)[0])


def _append(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def device(url: str, out: Path, stop: Path, threads: int) -> None:
    ws = WebSocket(README_DEVICE_KEY, README_DEVICE_ID, "device", url=url, subscribe=None, **FAST)
    ws.connect(threaded=True)
    fd = _append(out)
    failures: list[BaseException] = []

    def publisher(first: int) -> None:
        n = first
        while not stop.exists():
            try:
                position = ws.publish({"n": n}, wait=True, timeout=60.0)
            except Exception as exc:  # any failure ends the run: the test reports it
                failures.append(exc)
                return
            os.write(fd, f"{n} {position}\n".encode())
            n += threads
            time.sleep(0.005)

    workers = [threading.Thread(target=publisher, args=(i + 1,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    ws.stop()
    ws.join(10)
    if failures:
        sys.exit(f"publish failed: {failures[0]!r}")


def _consumer(url: str, fd: int, **kw: Any) -> WebSocket:
    ws = WebSocket(README_DEVICE_KEY, README_DEVICE_ID, "client", url=url, **FAST, **kw)
    ws.on_tick = lambda tick, ws: os.write(fd, tick_line(tick))
    return ws


def callback(url: str, checkpoint: Path) -> None:
    _consumer(url, sys.stdout.fileno(), checkpoint=checkpoint).connect()


def exactly(url: str, out: Path) -> None:
    start = last_complete_position(out)
    ws = _consumer(url, _append(out), subscribe=None)
    ws.subscribe("*", from_position=start)
    ws.connect()


def main(argv: list[str]) -> None:
    role, url, *rest = argv
    if role == "device":
        device(url, Path(rest[0]), Path(rest[1]), int(rest[2]))
    elif role == "callback":
        callback(url, Path(rest[0]))
    elif role == "exactly":
        exactly(url, Path(rest[0]))
    else:
        raise SystemExit(f"unknown role {role}")


if __name__ == "__main__":
    main(sys.argv[1:])
