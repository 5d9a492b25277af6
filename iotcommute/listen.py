"""`iotcommute listen`: connect and print ticks as JSON lines on stdout.

Credentials come from the options or the environment (IOTCOMMUTE_URL, IOTCOMMUTE_KEY,
IOTCOMMUTE_DEVICE, IOTCOMMUTE_ROLE) -- prefer the environment: command lines are visible
to other users of the machine. Logs go to stderr, so stdout stays pure JSON lines.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from typing import Any

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--url",
        default=env("IOTCOMMUTE_URL"),
        help="ws:// or wss:// server URL (env IOTCOMMUTE_URL)",
    )
    parser.add_argument(
        "--key", default=env("IOTCOMMUTE_KEY"), help="device key (env IOTCOMMUTE_KEY)"
    )
    parser.add_argument(
        "--device", default=env("IOTCOMMUTE_DEVICE"), help="device id (env IOTCOMMUTE_DEVICE)"
    )
    parser.add_argument(
        "--role",
        default=env("IOTCOMMUTE_ROLE", "client"),
        choices=("device", "client"),
        help="device|client (client)",
    )
    parser.add_argument(
        "--devices", default="*", help="comma-separated device ids to follow, or * (default)"
    )
    parser.add_argument(
        "--from",
        dest="from_position",
        type=int,
        default=None,
        help="replay everything after this log position",
    )
    parser.add_argument("--format", choices=("json", "binary"), default="binary")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="file keeping the last position, to resume after a restart",
    )
    parser.add_argument("--count", type=int, default=0, help="exit after N ticks (0: never)")


def run(args: argparse.Namespace) -> int:
    from . import payload
    from .client import WebSocket
    from .exceptions import IotCommuteError

    if not args.key or not args.device:
        print(
            "listen: give --key and --device (or IOTCOMMUTE_KEY / IOTCOMMUTE_DEVICE)",
            file=sys.stderr,
        )
        return 2
    devices: str | list[str] = (
        "*" if args.devices.strip() == "*" else [d for d in args.devices.split(",") if d]
    )
    ws = WebSocket(
        args.key,
        args.device,
        args.role,
        url=args.url,
        format=args.format,
        subscribe=None if args.from_position is not None else devices,
        checkpoint=args.checkpoint,
    )
    out = sys.stdout.buffer
    dumps = payload.dumps
    limit = int(args.count)
    seen = [0]
    broken = threading.Event()

    def on_ticks(ticks: list[dict[str, Any]], w: WebSocket) -> None:
        if limit:
            ticks = ticks[: limit - seen[0]]
        try:
            out.write(b"".join([dumps(t) + b"\n" for t in ticks]))
            out.flush()
        except BrokenPipeError:  # `| head`: stop quietly
            broken.set()
            w.stop()
            return
        seen[0] += len(ticks)
        if limit and seen[0] >= limit:
            w.stop()

    def on_connect(w: WebSocket) -> None:
        if args.from_position is not None and w.position == 0:
            w.subscribe(devices, from_position=args.from_position)

    def on_error(exc: BaseException, w: WebSocket) -> None:
        print(f"listen: {type(exc).__name__}: {exc}", file=sys.stderr)

    ws.on_ticks = on_ticks
    ws.on_connect = on_connect
    ws.on_error = on_error
    try:
        ws.connect()
    except IotCommuteError:
        return 1  # already reported by on_error
    if broken.is_set():
        try:  # keep Python from complaining about the closed pipe at exit
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
    return 0
