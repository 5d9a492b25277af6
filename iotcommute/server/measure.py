"""`python -m iotcommute.server.measure`: how many ticks/s the server sends one fast reader.

Starts `iotcommute.server --firehose` in a subprocess (so the reader does not share a GIL
with it), subscribes from a raw socket that only parses frame headers, and reports ticks/s
for JSON and binary subscriptions. The reader counts JSON ticks one per text frame and
binary ticks from the batch's tick count, for the first ~2 MB only; from there it counts
by bytes at the measured ticks-per-byte ratio, so it stays far faster than the server
(a parse of every JSON frame in Python capped the reader near 2 M ticks/s).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import struct
import subprocess
import sys
import time


def _handshake(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "X-Device-Id: FY6ODPIVU522SY1\r\nX-Device-Key: L1SEIUDU1MC996W48L8Q\r\n"
            "X-Role: client\r\n\r\n"
        ).encode()
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    assert buf.startswith(b"HTTP/1.1 101"), buf[:100]
    return s


def _send_json(s: socket.socket, obj: object) -> None:
    payload = json.dumps(obj).encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    s.sendall(struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked)


def measure(port: int, fmt: str, seconds: float) -> tuple[float, float]:
    """(ticks/s, MB/s) received by one raw-socket reader."""
    s = _handshake(port)
    _send_json(s, {"type": "subscribe", "id": 1, "devices": "*", "from": None, "format": fmt})
    buf = bytearray(8 * 1024 * 1024)
    view = memoryview(buf)
    pending = b""
    frames = ticks = 0
    nbytes = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    decode = None
    if fmt == "binary":
        from iotcommute import payload

        decode = payload.decode_batch
    sampled_bytes = sampled_ticks = 0
    while time.perf_counter() < end:
        n = s.recv_into(buf)
        if not n:
            break
        nbytes += n
        if sampled_bytes > 2_000_000:
            continue  # ratio known: count by bytes from here on
        data = pending + bytes(view[:n])
        i = 0
        ln = len(data)
        while i + 2 <= ln:
            b1 = data[i + 1] & 0x7F
            h = 2
            if b1 == 126:
                if i + 4 > ln:
                    break
                b1 = (data[i + 2] << 8) | data[i + 3]
                h = 4
            elif b1 == 127:
                if i + 10 > ln:
                    break
                b1 = int.from_bytes(data[i + 2 : i + 10], "big")
                h = 10
            if i + h + b1 > ln:
                break
            op = data[i] & 0x0F
            if op == 1:
                frames += 1
                ticks += 1
                sampled_bytes += h + b1
                sampled_ticks = ticks
            elif op == 2 and decode is not None:
                ticks += len(decode(data[i + h : i + h + b1]))
                sampled_bytes += h + b1
                sampled_ticks = ticks
            i += h + b1
        pending = data[i:]
    elapsed = time.perf_counter() - t0
    s.close()
    if sampled_bytes:
        ticks = int(nbytes * sampled_ticks / sampled_bytes)
    return ticks / elapsed, nbytes / elapsed / 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--formats", default="json,binary")
    ap.add_argument("--write-batch", default="100", help="passed to the server")
    args = ap.parse_args(argv)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "iotcommute.server",
            "--port",
            "0",
            "--firehose",
            "--simulate",
            "10",
            "--write-batch",
            args.write_batch,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        for fmt in args.formats.split(","):
            rate, mbs = measure(port, fmt, args.seconds)
            print(f"firehose {fmt:6s}: {rate:12,.0f} ticks/s  {mbs:8.1f} MB/s")
    finally:
        proc.terminate()
        proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
