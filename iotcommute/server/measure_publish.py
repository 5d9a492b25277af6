"""`python -m iotcommute.server.measure_publish`: publishes acknowledged per second.

Starts `python -m iotcommute.server --db FILE` in a subprocess, connects `--devices`
simulated devices from raw sockets (masked frames with a zero key, answers counted by
their bytes, so the measuring side stays far faster than the server), and keeps
`--window` publishes with ids in flight per device for `--seconds`, counting `published`
answers. This is the durable store's append rate with acks, the figure issue 11 asks for
before and after "durable before visible". `--in-process N` measures the Log and its
SQLite store alone (N appends in flight, each counted when durable).
"""

from __future__ import annotations

import argparse
import base64
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _connect(port: int, n: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"X-Device-Id: sim-{n:04d}\r\nX-Device-Key: SIMKEY{n:014d}\r\n"
            "X-Role: device\r\n\r\n"
        ).encode()
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    assert buf.startswith(b"HTTP/1.1 101"), buf[:100]
    s.setblocking(False)
    return s


def _frame(payload: bytes) -> bytes:
    n = len(payload)
    head = bytes((0x81, 0x80 | n)) if n < 126 else struct.pack("!BBH", 0x81, 0xFE, n)
    return head + b"\0\0\0\0" + payload  # a zero mask key leaves the payload as it is


class _Dev:
    def __init__(self, port: int, n: int) -> None:
        self.n = n
        self.sock = _connect(port, n)
        self.sent = 0
        self.acked = 0
        self.tail = b""

    def send(self, k: int) -> None:
        out = []
        for _ in range(k):
            self.sent += 1
            body = b'{"type":"publish","id":"%d-%d","data":{"i":%d,"t":21.5}}' % (
                self.n,
                self.sent,
                self.sent,
            )
            out.append(_frame(body))
        self.sock.setblocking(True)
        self.sock.sendall(b"".join(out))
        self.sock.setblocking(False)

    def receive(self) -> int:
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return 0
        if not data:
            raise ConnectionError("server closed the connection")
        buf = self.tail + data
        got = buf.count(b'{"type":"published"')
        if b'{"type":"error"' in buf:
            raise RuntimeError(buf[buf.index(b'{"type":"error"') :][:200].decode())
        self.tail = buf[-20:]
        got -= self.tail.count(b'{"type":"published"')
        self.acked += got
        return got


def measure(port: int, devices: int, window: int, seconds: float) -> tuple[int, float]:
    devs = [_Dev(port, i) for i in range(1, devices + 1)]
    for d in devs:
        d.send(window)
    start = time.monotonic()
    until = start + seconds
    total = 0
    while (left := until - time.monotonic()) > 0:
        ready, _, _ = select.select([d.sock for d in devs], [], [], left)
        for d in devs:
            if d.sock in ready:
                got = d.receive()
                total += got
                if got:
                    d.send(got)
    elapsed = time.monotonic() - start
    for d in devs:
        d.sock.close()
    return total, elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--devices", type=int, default=4)
    ap.add_argument("--window", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--db", default="", help="SQLite file (default: a temporary one)")
    ap.add_argument("--memory", action="store_true", help="no --db: the in-memory log")
    ap.add_argument(
        "--in-process",
        type=int,
        default=0,
        metavar="IN_FLIGHT",
        help="measure Log + SQLite store in this process instead (no network, no server)",
    )
    args = ap.parse_args(argv)
    if args.in_process:
        with tempfile.TemporaryDirectory() as d:
            rate = measure_log(str(Path(d) / "log.sqlite"), in_flight=args.in_process)
        print(f"in process: {rate:,.0f} records/s appended, each acked once durable")
        return 0
    tmp = tempfile.TemporaryDirectory()
    db = args.db or str(Path(tmp.name) / "log.sqlite")
    cmd = [sys.executable, "-m", "iotcommute.server", "--port", "0", "--retain", "1000000"]
    if not args.memory:
        cmd += ["--db", db]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        total, elapsed = measure(port, args.devices, args.window, args.seconds)
        print(
            f"{'memory' if args.memory else 'sqlite'}: {total} publishes acknowledged in "
            f"{elapsed:.1f} s: {total / elapsed:,.0f} acks/s "
            f"({args.devices} devices x {args.window} in flight)"
        )
    finally:
        proc.terminate()
        proc.wait(10)
        tmp.cleanup()
    return 0


def measure_log(path: str, n: int = 200_000, in_flight: int = 2_000) -> float:
    """Records/s through Log.append + when_durable on a SQLite store, in process (no
    network): `in_flight` appends outstanding at any time, each counted when durable."""
    import asyncio

    from .log import Log

    async def run() -> float:
        log = Log(retain=n, db=path)
        await log.open()
        done = 0
        room = asyncio.Event()

        def acked(err: BaseException | None) -> None:
            nonlocal done
            done += 1
            room.set()

        start = time.perf_counter()
        sent = 0
        data = {"temperature": 21.5, "humidity": 40.2, "door_open": False}
        while done < n:
            while sent < n and sent - done < in_flight:
                sent += 1
                log.when_durable(log.append("sim-0001", data, 1.0), acked)
            room.clear()
            await room.wait()
        elapsed = time.perf_counter() - start
        await log.close()
        return n / elapsed

    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
