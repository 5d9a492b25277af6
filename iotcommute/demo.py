"""`iotcommute demo`: embedded reference server + simulated devices + a live client.

One status line (plain \\r, no extra dependencies) shows ticks/s, latency and reconnects;
half-way through the connection is cut to show that the resume is lossless (every log
position arrives exactly once, in order); a short summary follows.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from typing import Any

__all__ = ["add_arguments", "run"]


class _FreshLine(logging.Filter):
    """Ends the status line before a log record is written, so the two never share a line."""

    def __init__(self, out: Any) -> None:
        super().__init__()
        self.out = out

    def filter(self, record: logging.LogRecord) -> bool:
        self.out.write("\n")
        self.out.flush()
        return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to run (10)")
    parser.add_argument("--devices", type=int, default=50, help="simulated devices (50)")
    parser.add_argument(
        "--rate", type=float, default=200.0, help="ticks per second per device (200)"
    )
    parser.add_argument(
        "--format",
        choices=("json", "binary"),
        default="binary",
        help="tick encoding on the wire (binary)",
    )
    parser.add_argument(
        "--firehose",
        action="store_true",
        help="serve ticks as fast as the client reads (throughput demo)",
    )
    parser.add_argument("--no-cut", action="store_true", help="do not cut the connection")


class _Meter:
    """Counts ticks on the client thread; the main thread only reads."""

    def __init__(self) -> None:
        self.count = 0
        self.first: int | None = None
        self.last = 0
        self.out_of_order = 0
        self.latency = 0.0
        self.lat_sum = 0.0
        self.lat_n = 0

    def on_ticks(self, ticks: list[dict[str, Any]], ws: Any) -> None:
        last = self.last
        bad = 0
        for t in ticks:
            pos = t["position"]
            if last and pos != last + 1:
                bad += 1
            last = pos
        if self.first is None:
            self.first = ticks[0]["position"]
        self.last = last
        self.out_of_order += bad
        self.count += len(ticks)
        lat = time.time() - ticks[-1]["ts"]
        self.latency = lat
        self.lat_sum += lat
        self.lat_n += 1


def run(args: argparse.Namespace) -> int:
    from .client import WebSocket
    from .server import ServerThread
    from .server.registry import README_DEVICE_ID, README_DEVICE_KEY

    out = sys.stdout
    seconds = max(1.0, float(args.seconds))
    print(
        f"starting the reference server with {args.devices} simulated devices"
        f"{' (firehose)' if args.firehose else f' at {args.rate:g} ticks/s each'} ...",
        file=out,
    )
    srv = ServerThread(
        port=0, simulate=args.devices, rate=args.rate, firehose=args.firehose, retain=2_000_000
    )
    srv.start()
    meter = _Meter()
    ws = WebSocket(
        README_DEVICE_KEY,
        README_DEVICE_ID,
        "device",
        url=srv.url,
        format=args.format,
        max_reconnect_delay=0.5,
    )
    ws.on_ticks = meter.on_ticks
    errors: list[str] = []
    ws.on_error = lambda e, w: errors.append(f"{type(e).__name__}: {e}")
    connected = threading.Event()
    ws.on_connect = lambda w: connected.set()
    # A log line (the cut's warning) starts on a line of its own, not after the status line.
    fresh_line = _FreshLine(out)
    handlers = logging.getLogger().handlers
    for h in handlers:
        h.addFilter(fresh_line)
    try:
        ws.connect(threaded=True)
        if not connected.wait(10):
            print("could not connect to the embedded server", file=sys.stderr)
            return 1
        print(f"connected to {srv.url} as {README_DEVICE_ID} ({args.format} ticks)", file=out)
        start = time.monotonic()
        cut_at = None if args.no_cut else start + seconds / 2
        prev_count, prev_t = 0, start
        rate = 0.0
        while True:
            time.sleep(0.25)
            now = time.monotonic()
            if cut_at is not None and now >= cut_at:
                cut_at = None
                ws._drop_connection()
                out.write("\n*** connection cut: the client reconnects and resumes ***\n")
            count = meter.count
            inst = (count - prev_count) / max(now - prev_t, 1e-6)
            rate = inst if rate == 0 else 0.6 * rate + 0.4 * inst
            prev_count, prev_t = count, now
            st = ws.stats()
            out.write(
                f"\r{now - start:5.1f}s  {rate:>10,.0f} ticks/s  total {count:>10,}  "
                f"latency {meter.latency * 1000:6.1f} ms  reconnects {st['reconnects']}  "
                f"position {st['position']:,}   "
            )
            out.flush()
            if now - start >= seconds:
                break
        elapsed = time.monotonic() - start
    finally:
        ws.stop()
        ws.join(10)
        srv.stop()
        for h in handlers:
            h.removeFilter(fresh_line)
    st = ws.stats()
    expected = (meter.last - meter.first + 1) if meter.first is not None else 0
    missing = expected - meter.count
    print("\n\nsummary", file=out)
    print(
        f"  ticks received   {meter.count:,} in {elapsed:.1f}s "
        f"({meter.count / max(elapsed, 1e-6):,.0f}/s)",
        file=out,
    )
    if meter.lat_n:
        print(
            f"  mean latency     {meter.lat_sum / meter.lat_n * 1000:.1f} ms "
            "(server timestamp to callback)",
            file=out,
        )
    print(f"  reconnects       {st['reconnects']}", file=out)
    print(
        f"  positions        {meter.first}..{meter.last}: missing {missing}, "
        f"out of order {meter.out_of_order}, duplicates dropped {st['duplicates_dropped']}",
        file=out,
    )
    lossless = missing == 0 and meter.out_of_order == 0
    print(f"  lossless resume  {'yes' if lossless else 'NO'}", file=out)
    for e in errors[:3]:
        print(f"  on_error         {e}", file=out)
    if errors and not args.no_cut:
        print("                   (a 1006 'aborted' close is the demo's own cut)", file=out)
    return 0 if lossless else 1
