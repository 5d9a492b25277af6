"""The durable server under SIGKILL (issue 11): nothing acknowledged or delivered is lost,
nothing is stored or delivered twice, no position ever has two contents.

`python -m iotcommute.server --db FILE --simulate 5` runs in a subprocess and is SIGKILLed
at random moments 10 times (restarted each time) while
- a raw-socket device publishes with ids, keeps every publish until its `published`
  arrives and re-sends the unacknowledged ones, in order, after each reconnect;
- a raw-socket consumer subscribed to the whole fleet resumes from its last position.
Afterwards everything is checked against the SQLite store itself. Raw sockets (not the
client library) so that this tests the server's guarantees alone.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from iotcommute.server.registry import README_DEVICE_ID, README_DEVICE_KEY

KILLS = 10
DEVICE = f"X-Device-Id: {README_DEVICE_ID}\r\nX-Device-Key: {README_DEVICE_KEY}\r\n"


class Peer:
    """A tiny blocking WebSocket peer: zero mask key, text frames, nothing else."""

    def __init__(self, port: int, headers: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=2.0)
        self.buf = b""
        self.sock.sendall(
            (
                "GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                f"Sec-WebSocket-Version: 13\r\n{headers}\r\n"
            ).encode()
        )
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(head[:40].decode())

    def _more(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise EOFError
        self.buf += chunk

    def send(self, obj: Any) -> None:
        p = json.dumps(obj).encode()
        n = len(p)
        head = struct.pack("!BB", 0x81, 0x80 | n) if n < 126 else struct.pack("!BBH", 0x81, 254, n)
        self.sock.sendall(head + b"\0\0\0\0" + p)

    def recv(self, timeout: float) -> dict[str, Any] | None:
        """The next text message, or None after `timeout` without one."""
        self.sock.settimeout(timeout)
        while True:
            buf = self.buf
            if len(buf) >= 2:
                n = buf[1] & 0x7F
                at = 2
                if n == 126:
                    at = 4
                    n = struct.unpack("!H", buf[2:4])[0] if len(buf) >= 4 else 1 << 30
                elif n == 127:
                    at = 10
                    n = struct.unpack("!Q", buf[2:10])[0] if len(buf) >= 10 else 1 << 30
                if len(buf) >= at + n:
                    op, payload, self.buf = buf[0] & 0x0F, buf[at : at + n], buf[at + n :]
                    if op == 8:
                        raise EOFError
                    if op == 9:
                        self.sock.sendall(b"\x8a\x80\0\0\0\0")  # pong (empty)
                    if op == 1:
                        out: dict[str, Any] = json.loads(payload)
                        return out
                    continue
            try:
                self._more()
            except TimeoutError:
                return None

    def close(self) -> None:
        self.sock.close()


class Server:
    def __init__(self, db: Path, log: Path) -> None:
        self.db = db
        self.errlog = log.open("ab")
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.kills = 0

    def start(self) -> None:
        cmd = [sys.executable, "-m", "iotcommute.server", "--port", "0", "--db", str(self.db)]
        cmd += ["--simulate", "5", "--rate", "40", "--retain", "10000000"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.errlog)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        assert "listening on" in line, line
        self.port = int(line.rsplit(":", 1)[1].split("/")[0])

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.kills += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.errlog.close()


class Device(threading.Thread):
    """Publishes {"n": k} with id "p-k", up to 20 in flight; re-sends unacked ones in order."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.publishing = True
        self.unacked: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.acked: dict[str, int] = {}
        self.duplicates = 0
        self.problems: list[str] = []
        self.next = 1
        self.done = threading.Event()
        self.reconnects = 0

    def run(self) -> None:
        while self.publishing or self.unacked:
            try:
                peer = Peer(self.server.port, DEVICE + "X-Role: device\r\n")
            except (OSError, EOFError, ConnectionError):
                time.sleep(0.02)
                continue
            self.reconnects += 1
            try:
                self._session(peer)
            except (OSError, EOFError):
                pass
            finally:
                peer.close()
        self.done.set()

    def _session(self, peer: Peer) -> None:
        assert peer.recv(2.0) is not None  # welcome
        for pid, data in list(self.unacked.items()):
            peer.send({"type": "publish", "id": pid, "data": data})
        while self.publishing or self.unacked:
            if self.publishing and len(self.unacked) < 20:
                pid = f"p-{self.next}"
                data = {"n": self.next}
                self.next += 1
                self.unacked[pid] = data
                peer.send({"type": "publish", "id": pid, "data": data})
            msg = peer.recv(0.004)
            if msg is None or msg["type"] != "published":
                if msg is not None and msg["type"] == "error":
                    self.problems.append(f"error {msg}")
                continue
            pid, pos = msg["id"], msg["position"]
            if msg.get("duplicate"):
                self.duplicates += 1
            if pid in self.acked and self.acked[pid] != pos:
                self.problems.append(f"{pid} acked at {self.acked[pid]} and {pos}")
            self.acked[pid] = pos
            self.unacked.pop(pid, None)


class Consumer(threading.Thread):
    """Subscribes to the whole fleet and resumes from the last position after every drop."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.last = 0
        self.got: dict[int, tuple[str, float, Any]] = {}
        self.problems: list[str] = []
        self.running = True

    def run(self) -> None:
        while self.running:
            try:
                peer = Peer(self.server.port, DEVICE + "X-Role: client\r\n")
            except (OSError, EOFError, ConnectionError):
                time.sleep(0.02)
                continue
            try:
                assert peer.recv(2.0) is not None  # welcome
                peer.send({"type": "subscribe", "id": 1, "devices": "*", "from": self.last})
                while self.running:
                    msg = peer.recv(0.05)
                    if msg is None:
                        continue
                    if msg["type"] == "tick":
                        p = msg["position"]
                        if p <= self.last:
                            self.problems.append(f"position {p} after {self.last}")
                        self.got[p] = (msg["device"], msg["ts"], msg["data"])
                        self.last = p
                    elif msg["type"] == "progress":
                        self.last = max(self.last, msg["position"])
                    elif msg["type"] == "gap":
                        self.problems.append(f"gap {msg}")
            except (OSError, EOFError):
                pass
            finally:
                peer.close()


def _store(db: Path) -> tuple[dict[int, tuple[str, float, Any]], dict[str, list[int]]]:
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT position, device, ts, data, pid FROM records").fetchall()
    finally:
        con.close()
    records = {int(p): (str(d), float(t), json.loads(b)) for p, d, t, b, _ in rows}
    pids: dict[str, list[int]] = {}
    for p, d, _, _, pid in rows:
        if pid is not None and d == README_DEVICE_ID:
            pids.setdefault(json.loads(pid), []).append(int(p))
    return records, pids


def test_sigkill_loses_nothing_acknowledged_or_delivered(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("CRASH_SEED", "0")) or None)
    db = tmp_path / "log.sqlite"
    server = Server(db, tmp_path / "server.log")
    server.start()
    device, consumer = Device(server), Consumer(server)
    try:
        device.start()
        consumer.start()
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.2, 0.9))
            server.kill()
            server.start()
        device.publishing = False
        assert device.done.wait(30), f"{len(device.unacked)} publishes never acknowledged"
        server.kill()  # an eleventh crash, then one more start so the consumer catches up
        records, _ = _store(db)
        target = max(records)
        server.start()
        deadline = time.monotonic() + 30
        while consumer.last < target and time.monotonic() < deadline:
            time.sleep(0.05)
        consumer.running = False
        consumer.join(5)
        server.stop()
    finally:
        device.publishing = False
        consumer.running = False
        server.stop()
    records, pids = _store(db)
    got = consumer.got
    upto = consumer.last
    assert upto >= target
    stored = {p for p in records if p <= upto}
    # 0 records lost: every stored position up to the consumer's resume point was delivered
    assert sorted(stored - set(got)) == []
    # 0 records the store lacks, 0 positions with two contents
    assert sorted(set(got) - stored) == []
    assert [p for p in got if got[p] != records[p]] == []
    # 0 acknowledged publishes lost; each stored once, at the acknowledged position
    assert not device.unacked and len(device.acked) == device.next - 1
    assert [(i, p, pids.get(i)) for i, p in device.acked.items() if pids.get(i) != [p]] == []
    assert sorted(i for i, ps in pids.items() if len(ps) > 1) == []
    assert [records[p][2] for p in device.acked.values()] == [
        {"n": int(i[2:])} for i in device.acked
    ]
    assert device.problems == [] and consumer.problems == []
    assert server.kills == KILLS + 1
    print(
        f"{KILLS + 1} kills: {len(records)} records stored, {len(got)} delivered, "
        f"{len(device.acked)} publishes acked ({device.duplicates} re-sends answered "
        f"duplicate), {device.reconnects} device connections"
    )
