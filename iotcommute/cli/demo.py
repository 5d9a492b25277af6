"""Live demo: the reference server in-process, simulated devices and a client,
for a look.

One status line (plain \\r, no extra dependencies, at most 79 columns) shows
elapsed time, ticks/s, total, latency and reconnects. Half-way through, the
demo cuts the client's connection to show that the resume is lossless (every
log position arrives exactly once, in order); a short summary follows. Log
records never land on the status line: they are printed on a line of their
own, the demo's own cut labelled as expected."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import threading
import time
from typing import Any, TextIO

from ._util import EXIT_ERROR, EXIT_OK, positive_float, positive_int

__all__ = ["Screen", "add_arguments", "run"]

#: The widest line the demo writes when the terminal is at least this wide.
MAX_WIDTH = 80


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=positive_float, default=10.0, help="how long to run")
    parser.add_argument(
        "--devices", type=positive_int, default=50, help="number of simulated devices"
    )
    parser.add_argument(
        "--rate", type=positive_float, default=200.0, help="ticks per second per device"
    )
    parser.add_argument(
        "--format", choices=("json", "binary"), default="binary", help="tick encoding on the wire"
    )
    parser.add_argument(
        "--firehose",
        action="store_true",
        help="serve ticks as fast as the client reads (throughput demo)",
    )
    parser.add_argument("--no-cut", action="store_true", help="do not cut the connection")


class Screen:
    """The demo's terminal: whole lines above one live status line, behind one lock.

    Every writer (the main thread's status updates, log records from the client's and the
    server's threads) goes through here, so a record can never be glued to the status line:
    the status line is erased, the record written on its own line, the status redrawn.
    """

    def __init__(self, out: TextIO, width: int) -> None:
        self.out = out
        self.width = max(20, min(width, MAX_WIDTH)) - 1  # never touch the last column
        self._lock = threading.Lock()
        self._status = ""

    def _erase(self) -> None:
        if self._status:
            self.out.write("\r" + " " * len(self._status) + "\r")

    def status(self, text: str) -> None:
        text = text[: self.width]
        with self._lock:
            pad = " " * max(0, len(self._status) - len(text))
            self.out.write("\r" + text + pad)
            self._status = text
            self.out.flush()

    def line(self, text: str = "") -> None:
        with self._lock:
            self._erase()
            for part in text.splitlines() or [""]:
                self.out.write(part[: self.width] + "\n")
            if self._status:
                self.out.write(self._status)
            self.out.flush()

    def end_status(self) -> None:
        """The status line stays as it is and becomes an ordinary line."""
        with self._lock:
            if self._status:
                self.out.write("\n")
                self._status = ""
            self.out.flush()


class _ScreenHandler(logging.Handler):
    """Routes log records through the Screen; the client's records about the demo's own cut
    are shown as the expected event they are."""

    def __init__(self, screen: Screen, cutting: threading.Event) -> None:
        super().__init__()
        self.screen = screen
        self.cutting = cutting

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage().splitlines()[0] if record.getMessage() else ""
            client = record.name.startswith("iotcommute") and not record.name.startswith(
                "iotcommute.server"
            )
            if client and self.cutting.is_set():
                self.screen.line(f"  cut (expected): {msg}")
            else:
                self.screen.line(f"  {record.levelname.lower()}: {record.name}: {msg}")
        except Exception:  # a log record must never break the demo
            self.handleError(record)


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


def _status_text(elapsed: float, rate: float, count: int, latency: float, reconnects: int) -> str:
    # 72 columns for any realistic value (a billion ticks, 10 M ticks/s)
    return (
        f"{elapsed:5.1f}s {rate:>10,.0f}/s {count:>13,} ticks  "
        f"latency {latency * 1000:6.1f} ms  reconnects {reconnects}"
    )


def run(args: argparse.Namespace) -> int:
    from ..client import WebSocket
    from ..server import ServerThread
    from ..server.registry import README_DEVICE_ID, README_DEVICE_KEY

    screen = Screen(sys.stdout, shutil.get_terminal_size((MAX_WIDTH, 24)).columns)
    seconds = float(args.seconds)
    what = " (firehose)" if args.firehose else f", {args.rate:g} ticks/s each"
    screen.line(f"starting the reference server: {args.devices} simulated devices{what}")
    # Records of both threads go through the screen while it has a status line.
    cutting = threading.Event()
    handler = _ScreenHandler(screen, cutting)
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = [handler]
    srv = ServerThread(
        port=0, simulate=args.devices, rate=args.rate, firehose=args.firehose, retain=2_000_000
    )
    meter = _Meter()
    errors: list[str] = []
    connected = threading.Event()
    elapsed = 0.0
    try:
        srv.start()
        ws = WebSocket(
            README_DEVICE_KEY,
            README_DEVICE_ID,
            "device",
            url=srv.url,
            format=args.format,
            max_reconnect_delay=0.5,
        )
        ws.on_ticks = meter.on_ticks
        ws.on_error = lambda e, w: errors.append(f"{type(e).__name__}: {e}")

        def on_connect(w: Any) -> None:
            if cutting.is_set():
                cutting.clear()
                screen.line(f"  reconnected: resuming after position {w.position:,}")
            connected.set()

        ws.on_connect = on_connect
        try:
            ws.connect(threaded=True)
            if not connected.wait(10):
                screen.line("could not connect to the embedded server")
                return EXIT_ERROR
            screen.line(f"connected to {srv.url} as {README_DEVICE_ID} ({args.format} ticks)")
            start = time.monotonic()
            cut_at = None if args.no_cut else start + seconds / 2
            prev_count, prev_t = 0, start
            rate = 0.0
            while True:
                time.sleep(0.25)
                now = time.monotonic()
                if cut_at is not None and now >= cut_at:
                    cut_at = None
                    cutting.set()
                    screen.line("*** the demo cuts the connection: the client resumes ***")
                    ws._drop_connection()
                count = meter.count
                inst = (count - prev_count) / max(now - prev_t, 1e-6)
                rate = inst if rate == 0 else 0.6 * rate + 0.4 * inst
                prev_count, prev_t = count, now
                reconnects = int(ws.stats()["reconnects"])
                screen.status(_status_text(now - start, rate, count, meter.latency, reconnects))
                if now - start >= seconds:
                    break
            elapsed = time.monotonic() - start
        finally:
            ws.stop()
            ws.join(10)
    finally:
        srv.stop()
        screen.end_status()
        root.handlers[:] = saved
    st = ws.stats()
    return _summary(screen, meter, st, elapsed, errors, cut=not args.no_cut)


def _summary(
    screen: Screen, meter: _Meter, st: dict[str, Any], elapsed: float, errors: list[str], cut: bool
) -> int:
    expected = (meter.last - meter.first + 1) if meter.first is not None else 0
    missing = expected - meter.count
    screen.line()
    screen.line("summary")
    screen.line(
        f"  ticks received   {meter.count:,} in {elapsed:.1f}s "
        f"({meter.count / max(elapsed, 1e-6):,.0f}/s)"
    )
    if meter.lat_n:
        screen.line(
            f"  mean latency     {meter.lat_sum / meter.lat_n * 1000:.1f} ms "
            "(server timestamp to callback)"
        )
    screen.line(f"  reconnects       {st['reconnects']}")
    screen.line(f"  positions        {meter.first}..{meter.last}")
    screen.line(
        f"                   missing {missing}, out of order {meter.out_of_order}, "
        f"duplicates dropped {st['duplicates_dropped']}"
    )
    lossless = missing == 0 and meter.out_of_order == 0
    screen.line(f"  lossless resume  {'yes' if lossless else 'NO'}")
    for e in errors[:3]:
        screen.line(f"  on_error         {e}")
    if errors and cut:
        screen.line("                   (an abnormal 1006 close is the demo's own cut)")
    return EXIT_OK if lossless else EXIT_ERROR
