"""Benchmark peer server: a firehose of pre-encoded frames, a sink and an echo.

Runs as its own process (``python -m benchmarks.firehose``) so the server never shares
the GIL with the client under test; it prints ``PORT <n>`` on stdout once listening on
127.0.0.1:0. Every connection gets a thread; benchmark rounds are sequential, so there is
only ever one busy connection and the server's own cost stays a cheap ``sendall`` loop.

Paths (any client, any headers, no auth: this is not the reference server):

* ``GET /recv/<case>/<n>``  -> 101, then ``n`` messages of ``case`` (see ``CASES``)
  written from a pre-built buffer, then a close frame.
* ``GET /sink/<n>/<size>``  -> 101, then reads exactly the wire bytes of ``n`` masked
  frames of ``size`` payload bytes, answers one text frame ``{"type":"done"}``, then closes.
* ``GET /echo``             -> 101, echoes every data frame unmasked (latency cases).

The handshake and framing are our own minimal code on purpose: the peer must not favour
any client library.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Build each case as K distinct messages repeated; cap the chunk near 1 MiB so the
# pre-built buffer stays small whatever n is.
CHUNK_BYTES = 1 << 20
MAX_DISTINCT = 1000

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


# --------------------------------------------------------------------------- payloads
def make_tick(i: int) -> dict[str, Any]:
    """A tick dict in the shape of docs/design.md, about 256 bytes as compact JSON."""
    return {
        "type": "tick",
        "device": f"dev-{i % 500:04d}",
        "position": 1_000_000 + i,
        "ts": 1764128635.123456 + i * 0.001,
        "data": {
            "temperature": 21.5 + (i % 7) * 0.25,
            "humidity": 40.25 + (i % 11) * 0.5,
            "pressure": 1013.25 - (i % 5) * 0.75,
            "battery": 3.71,
            "rssi": -67 - (i % 9),
            "speed": 12.5 + (i % 13),
            "heading": float(i % 360),
            "lat": 52.520008,
            "lon": 13.404954,
            "moving": i % 2 == 0,
            "door": i % 3 == 0,
        },
    }


SMALL_FIELDS = ("temperature", "humidity", "battery", "rssi", "moving")


def make_small_tick(i: int) -> dict[str, Any]:
    """A compact telemetry tick: make_tick's device, position and ts, 5 of its readings."""
    tick = make_tick(i)
    tick["data"] = {k: tick["data"][k] for k in SMALL_FIELDS}
    return tick


def tick_json(i: int) -> bytes:
    return json.dumps(make_tick(i), separators=(",", ":")).encode()


def batch_codec_available() -> bool:
    try:
        from iotcommute import payload
    except ImportError:
        return False
    return hasattr(payload, "encode_batch") and hasattr(payload, "decode_batch")


@dataclass(frozen=True)
class BenchScale:
    """How big this run is. ``full`` is ``--benchmark``; ``factor`` scales every size.

    A timed round repeats one stream (a fresh connection each time) until it lasts about
    ``round_s`` seconds: the repeat count is calibrated once per benchmark from a warm-up
    stream, so slow and fast subjects get rounds of the same duration and the whole run's
    length is known in advance (about benchmarks x rounds x round_s). ``rounds`` rounds give
    a median and a spread. Both are configurable: IOTCOMMUTE_BENCH_ROUNDS (default 5) and
    IOTCOMMUTE_BENCH_ROUND_S (default 0.8 s x the scale factor). The smoke run (plain
    ``pytest``) is one stream, one round, no calibration.
    """

    full: bool
    factor: float

    @property
    def rounds(self) -> int:
        if not self.full:
            return 1
        return max(1, int(os.environ.get("IOTCOMMUTE_BENCH_ROUNDS", "5")))

    @property
    def round_s(self) -> float:
        if not self.full:
            return 0.0
        env = os.environ.get("IOTCOMMUTE_BENCH_ROUND_S")
        return float(env) if env else 0.8 * self.factor

    def n(self, full_size: int, minimum: int = 2) -> int:
        """The count to use for something that is ``full_size`` at scale 1."""
        return max(minimum, round(full_size * self.factor))


@dataclass(frozen=True)
class Case:
    """One receive case: how each message looks on the wire and what it delivers."""

    name: str
    kind: str  # "binary" | "text" | "ticks-json" | "ticks-batch"
    description: str
    base_n: int  # messages at full scale (IOTCOMMUTE_BENCH_SCALE=1)
    ticks_per_message: int = 1
    fragments: int = 1
    compressed: bool = False

    def expected(self, n: int) -> int:
        """Items the counting callback must see for n messages (ticks for tick cases)."""
        return n * self.ticks_per_message


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("bin32", "binary", "32-byte binary frames", 300_000),
        Case("text256", "text", "256-byte JSON ticks consumed raw (str)", 100_000),
        Case("json256", "ticks-json", "256-byte JSON ticks -> dicts", 100_000),
        Case("batch100", "ticks-batch", "binary tick batches of 100 -> dicts", 2_000, 100),
        Case(
            "batch100x5",
            "ticks-batch",
            "binary tick batches of 100 five-reading ticks -> dicts",
            2_000,
            100,
        ),
        Case("bin4k", "binary", "4 KiB binary frames", 30_000),
        Case("bin64k", "binary", "64 KiB binary frames", 2_000),
        Case("text16k", "text", "16 KiB text in 16 fragments", 5_000, 1, 16),
        Case(
            "deflate",
            "ticks-json",
            "compressed JSON ticks (permessage-deflate)",
            50_000,
            compressed=True,
        ),
    )
}


def case_messages(case: Case, k: int) -> list[bytes]:
    """k distinct payloads for a case (binary or UTF-8 text bytes)."""
    if case.name == "bin32":
        return [struct.pack("!Q", i) * 4 for i in range(k)]
    if case.name == "bin4k":
        return [(struct.pack("!Q", i) * 512) for i in range(k)]
    if case.name == "bin64k":
        return [(struct.pack("!Q", i) * 8192) for i in range(k)]
    if case.name == "text16k":
        row = b'{"k":"value","n":12345678,"t":"abcdefghij"}'  # 44 bytes, ASCII
        body = (row * (16384 // len(row) + 1))[:16384]
        return [body for _ in range(k)]
    if case.kind == "ticks-json" or case.name == "text256":
        return [tick_json(i) for i in range(k)]
    if case.kind == "ticks-batch":
        from iotcommute import payload

        make = make_small_tick if case.name == "batch100x5" else make_tick
        return [
            bytes(payload.encode_batch([make(j * 100 + t) for t in range(100)])) for j in range(k)
        ]
    raise KeyError(case.name)


# --------------------------------------------------------------------------- framing
def frame(opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
    """An unmasked (server -> client) frame."""
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", b0, n) + payload
    if n < 65536:
        return struct.pack("!BBH", b0, 126, n) + payload
    return struct.pack("!BBQ", b0, 127, n) + payload


def masked_frame_len(size: int) -> int:
    """Wire length of one masked client frame with a payload of ``size`` bytes."""
    return size + 6 + (0 if size < 126 else 2 if size < 65536 else 8)


def deflate_message(payload: bytes) -> bytes:
    """permessage-deflate with no context takeover: every message compresses alone."""
    comp = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    data = comp.compress(payload) + comp.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


def encode_message(case: Case, payload: bytes) -> bytes:
    if case.compressed:
        return frame(OP_TEXT, deflate_message(payload), rsv1=True)
    opcode = OP_BINARY if case.kind in ("binary", "ticks-batch") else OP_TEXT
    if case.fragments == 1:
        return frame(opcode, payload)
    step = -(-len(payload) // case.fragments)
    parts = [payload[i : i + step] for i in range(0, len(payload), step)]
    out = []
    for idx, part in enumerate(parts):
        out.append(frame(opcode if idx == 0 else OP_CONT, part, fin=idx == len(parts) - 1))
    return b"".join(out)


class Stream:
    """The pre-encoded frames of one case.

    Plain frames: a chunk of K distinct messages repeated (K caps the chunk near 1 MiB).
    Tick cases: all n messages distinct, so positions strictly increase and a client
    that drops duplicate positions (iotcommute's does) still delivers every tick; built
    once per n and cached.
    """

    def __init__(self, case: Case) -> None:
        self.case = case
        one = len(encode_message(case, case_messages(case, 1)[0]))
        k = max(1, min(MAX_DISTINCT, CHUNK_BYTES // one))
        self.frames = [encode_message(case, p) for p in case_messages(case, k)]
        self.chunk = b"".join(self.frames)
        self.distinct: dict[int, list[bytes]] = {}
        self.lock = threading.Lock()

    def chunks(self, n: int) -> list[bytes]:
        """The n messages as ~1 MiB chunks (tick cases only)."""
        with self.lock:
            if n not in self.distinct:
                if len(self.distinct) >= 4:  # keep memory bounded across scales
                    self.distinct.pop(next(iter(self.distinct)))
                frames = [encode_message(self.case, p) for p in case_messages(self.case, n)]
                step = max(1, len(self.frames))
                self.distinct[n] = [
                    b"".join(frames[i : i + step]) for i in range(0, len(frames), step)
                ]
            return self.distinct[n]

    def write(self, sock: socket.socket, n: int) -> None:
        if self.case.kind.startswith("ticks"):
            for chunk in self.chunks(n):
                sock.sendall(chunk)
            return
        reps, rem = divmod(n, len(self.frames))
        for _ in range(reps):
            sock.sendall(self.chunk)
        if rem:
            sock.sendall(b"".join(self.frames[:rem]))


# --------------------------------------------------------------------------- server
class Conn:
    """Buffered reader over one accepted socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def fill(self) -> bool:
        data = self.sock.recv(1 << 18)
        if not data:
            return False
        self.buf += data
        return True

    def read_exact(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            if not self.fill():
                return None
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_frame(self) -> tuple[int, bytes] | None:
        """One client frame (opcode, unmasked payload); fragments are echoed as-is."""
        head = self.read_exact(2)
        if head is None:
            return None
        b0, b1 = head
        n = b1 & 0x7F
        if n == 126:
            ext = self.read_exact(2)
            if ext is None:
                return None
            n = struct.unpack("!H", ext)[0]
        elif n == 127:
            ext = self.read_exact(8)
            if ext is None:
                return None
            n = struct.unpack("!Q", ext)[0]
        mask = self.read_exact(4) if b1 & 0x80 else b""
        payload = self.read_exact(n)
        if payload is None or mask is None:
            return None
        if mask:
            key_bytes = (mask * (n // 4 + 1))[:n]
            key = int.from_bytes(key_bytes, "little")
            payload = (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little")
        return b0, payload

    def discard(self, n: int) -> bool:
        take = min(n, len(self.buf))
        del self.buf[:take]
        n -= take
        view = memoryview(bytearray(1 << 18))
        while n > 0:
            got = self.sock.recv_into(view, min(n, len(view)))
            if not got:
                return False
            n -= got
        return True


def _http_error(status: int, reason: str) -> bytes:
    return f"HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()


def handshake(conn: Conn) -> tuple[str, bool] | None:
    """Read the upgrade request and answer it: 101 for a known path (None otherwise).

    Returns (path, deflate negotiated)."""
    while b"\r\n\r\n" not in conn.buf:
        if not conn.fill() or len(conn.buf) > 65536:
            return None
    end = conn.buf.index(b"\r\n\r\n") + 4
    head = bytes(conn.buf[:end]).decode("latin-1")
    del conn.buf[:end]
    lines = head.split("\r\n")
    path = lines[0].split(" ")[1]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            key_ = name.strip().lower()
            headers[key_] = (headers.get(key_, "") + "," + value.strip()).lstrip(",")
    key = headers.get("sec-websocket-key", "").strip().encode()
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
    offered = "permessage-deflate" in headers.get("sec-websocket-extensions", "")
    parts = path.strip("/").split("/")
    known = (parts[0] == "echo" and len(parts) == 1) or (
        len(parts) == 3
        and parts[2].isdigit()
        and (
            (parts[0] == "sink" and parts[1].isdigit())
            or (parts[0] in ("recv", "prepare") and parts[1] in CASES)
        )
    )
    if not known:
        conn.sock.sendall(_http_error(404, "Not Found"))
        return None
    wants_deflate = parts[0] == "recv" and CASES[parts[1]].compressed
    if wants_deflate and not offered:  # the case would be meaningless without it
        conn.sock.sendall(_http_error(400, "Bad Request"))
        return None
    resp = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n"
    )
    if wants_deflate:
        resp += (
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; "
            "client_no_context_takeover\r\n"
        )
    conn.sock.sendall((resp + "\r\n").encode())
    return path, wants_deflate


# JSON with an unknown "type", so clients that decode every text message accept it.
DONE = b'{"type":"done"}'
CLOSE_1000 = frame(OP_CLOSE, struct.pack("!H", 1000))


def finish(conn: Conn) -> None:
    """Send our close and wait (bounded) for the client's close or EOF, then hang up."""
    try:
        conn.sock.sendall(CLOSE_1000)
        conn.sock.settimeout(5.0)
        while True:
            got = conn.read_frame()
            if got is None or got[0] & 0x0F == OP_CLOSE:
                break
    except OSError:
        pass


class Server:
    def __init__(self) -> None:
        self.streams: dict[str, Stream] = {}
        self.lock = threading.Lock()
        # Pre-build the plain streams before announcing the port so no subject's first
        # round pays for encoding; tick streams depend on n and are built on first use
        # (the harness makes that a warm-up connection).
        for name, case in CASES.items():
            if not case.kind.startswith("ticks"):
                self.streams[name] = Stream(case)

    def stream(self, name: str) -> Stream:
        with self.lock:
            if name not in self.streams:
                self.streams[name] = Stream(CASES[name])
            return self.streams[name]

    def handle(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(120.0)
        conn = Conn(sock)
        try:
            hs = handshake(conn)
            if hs is None:
                return
            path = hs[0].strip("/").split("/")
            if path[0] == "prepare":  # build a tick stream ahead of the timed rounds
                self.stream(path[1]).chunks(int(path[2]))
                finish(conn)
            elif path[0] == "recv":
                self.stream(path[1]).write(sock, int(path[2]))
                finish(conn)
            elif path[0] == "sink":
                n, size = int(path[1]), int(path[2])
                if conn.discard(n * masked_frame_len(size)):
                    sock.sendall(frame(OP_TEXT, DONE))
                    finish(conn)
            elif path[0] == "echo":
                self.echo(conn)
        except OSError:
            pass
        finally:
            sock.close()

    def echo(self, conn: Conn) -> None:
        while True:
            got = conn.read_frame()
            if got is None:
                return
            b0, payload = got
            op = b0 & 0x0F
            if op == OP_CLOSE:
                conn.sock.sendall(frame(OP_CLOSE, payload[:2]))
                return
            if op == OP_PING:
                conn.sock.sendall(frame(OP_PONG, payload))
            elif op != OP_PONG:
                conn.sock.sendall(frame(op, payload, fin=bool(b0 & 0x80)))

    def serve(self, ready: Callable[[int], None]) -> None:
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(64)
        ready(lsock.getsockname()[1])
        while True:
            sock, _ = lsock.accept()
            threading.Thread(target=self.handle, args=(sock,), daemon=True).start()


# --------------------------------------------------------------------------- process
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for ``python -m benchmarks.<module>`` children: the repository root
    first on PYTHONPATH, so the benchmarks package is importable from any working directory."""
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return env


def pin_cpus(server_pid: int) -> None:
    """``IOTCOMMUTE_BENCH_PIN``: where the firehose and this (client) process run.

    ``split`` (the default) puts the server on the first CPU and the client on the last,
    ``same`` both on the last, ``none`` leaves them to the scheduler. Split by default:
    left to the scheduler, the two processes sometimes share a core for a while, and a
    subject measured then loses up to half its rate (picows on bin32: 2.46 M and 1.13 M
    messages/s in two unpinned runs, 3.64 M and 3.48 M in two split ones). On loopback the
    placement also decides what the "raw-bytes ceiling" is: with a core each, the server's
    kernel send runs beside the client, so the ceiling is the client's receive copy alone
    (see docs/columnar.md).
    """
    mode = os.environ.get("IOTCOMMUTE_BENCH_PIN", "split")
    if mode not in ("split", "same", "none"):
        raise ValueError(f"IOTCOMMUTE_BENCH_PIN={mode!r}: use split, same or none")
    if mode == "none" or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if mode == "split" and len(cpus) > 1:
        os.sched_setaffinity(server_pid, {cpus[0]})
        os.sched_setaffinity(0, {cpus[-1]})
    elif mode == "same":
        os.sched_setaffinity(server_pid, {cpus[-1]})
        os.sched_setaffinity(0, {cpus[-1]})


class FirehoseProcess:
    """Starts the server in a child process; ``url(path)`` builds ws:// URLs to it."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.firehose"],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=subprocess_env(),
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "PORT":
            self.close()
            raise RuntimeError(f"firehose did not start: {line!r}")
        self.port = int(line[1])
        pin_cpus(self.proc.pid)

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def prepare(self, case: str, n: int) -> None:
        """Have the server build (and cache) the stream of a tick case before timing it."""
        if not CASES[case].kind.startswith("ticks"):
            return
        key = base64.b64encode(os.urandom(16)).decode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=300) as sock:
            sock.sendall(
                f"GET /prepare/{case}/{n} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            got = b""
            while CLOSE_1000 not in got:
                data = sock.recv(4096)
                if not data:
                    break
                got += data

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def main() -> None:
    def ready(port: int) -> None:
        print(f"PORT {port}", flush=True)

    try:
        Server().serve(ready)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
