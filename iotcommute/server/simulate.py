"""Simulated devices and the firehose producer.

Simulated devices live in-process: their ticks are appended straight to the log, and they
answer commands at once (registered as virtual devices on the hub), so a demo or a REST test
has something to command without running a device client.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from typing import Any

from .hub import Hub
from .log import Log, Record
from .registry import sim_device_id
from .wire import OP_TEXT, dumps, frame_header

logger = logging.getLogger("iotcommute.server.simulate")


class SimDevice:
    """Plausible telemetry for one device: slow random walks plus a few flags (~256-byte tick)."""

    __slots__ = ("battery", "co2", "humidity", "id", "rng", "seq", "started", "temperature")

    def __init__(self, device_id: str, seed: int) -> None:
        self.id = device_id
        self.rng = random.Random(seed)
        self.temperature = 18.0 + self.rng.random() * 8
        self.humidity = 35.0 + self.rng.random() * 25
        self.battery = 80.0 + self.rng.random() * 20
        self.co2 = 450.0 + self.rng.random() * 300
        self.seq = 0
        self.started = time.monotonic()

    def tick(self) -> dict[str, Any]:
        r = self.rng
        self.seq += 1
        self.temperature += r.uniform(-0.05, 0.05)
        self.humidity = min(100.0, max(0.0, self.humidity + r.uniform(-0.1, 0.1)))
        self.battery = max(0.0, self.battery - 0.0005)
        self.co2 = max(350.0, self.co2 + r.uniform(-2, 2))
        return {
            "temperature": round(self.temperature, 2),
            "humidity": round(self.humidity, 1),
            "pressure": round(1013.0 + r.uniform(-1.5, 1.5), 1),
            "battery": round(self.battery, 2),
            "rssi": r.randint(-90, -40),
            "snr": round(r.uniform(2, 12), 1),
            "voltage": round(3.3 + self.battery / 250, 3),
            "current_ma": round(r.uniform(8, 20), 2),
            "co2_ppm": int(self.co2),
            "lux": round(r.uniform(100, 800), 1),
            "uptime_s": int(time.monotonic() - self.started),
            "seq": self.seq,
            "status": 0 if self.battery > 15 else 1,
            "door_open": r.random() < 0.05,
            "motion": r.random() < 0.2,
        }

    def command(self, data: dict[str, Any]) -> dict[str, Any]:
        """Simulated devices accept every command and echo it back."""
        return {"ok": True, "data": {"device": self.id, "echo": data}}


def register_virtual(hub: Hub, n: int) -> list[SimDevice]:
    sims = [SimDevice(sim_device_id(i), seed=i) for i in range(1, n + 1)]
    for s in sims:
        hub.virtual[s.id] = s.command
    return sims


async def run_simulator(hub: Hub, sims: list[SimDevice], rate: float) -> None:
    """Append `rate` ticks per second per device, on a steady schedule, until cancelled."""
    if not sims or rate <= 0:
        return
    loop = asyncio.get_running_loop()
    log = hub.log
    start = loop.time()
    done = 0
    while True:
        now = loop.time()
        due = int((now - start) * rate) - done
        if due > 0:
            if due > rate:  # we fell behind (busy machine): skip ahead instead of bursting
                done += due - max(1, int(rate))
                due = max(1, int(rate))
            for _ in range(due):
                ts = time.time()
                for s in sims:
                    log.append(s.id, s.tick(), ts)
            done += due
        await asyncio.sleep(min(0.1, max(0.001, start + (done + 1) / rate - loop.time())))


class Firehose:
    """Refills the log whenever a cursor reaches the tail, with frames encoded once.

    Telemetry values come from a small pool of pre-generated ticks, so the cost per record
    is an append plus one bytes concatenation; positions and timestamps are real.
    """

    def __init__(self, log: Log, device_ids: list[str], block: int = 2000, pool: int = 256) -> None:
        self.log = log
        self.block = block
        ids = device_ids or ["sim-0001"]
        sims = [SimDevice(d, seed=i) for i, d in enumerate(ids)]
        self._pool: list[tuple[str, bytes, dict[str, Any], bytes, tuple[Any, ...]]] = []
        shapes: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        for i in range(pool):
            s = sims[i % len(sims)]
            data = s.tick()
            head = b'{"type":"tick","device":' + dumps(s.id) + b',"position":'
            shape = (tuple(data), tuple(map(type, data.values())))
            shape = shapes.setdefault(shape, shape)  # one object per shape: `is` compares fast
            self._pool.append((s.id, head, data, b',"data":' + dumps(data) + b"}", shape))
        self._i = 0
        self._headers: dict[int, bytes] = {}
        # Binary batches: pool data dict -> pool index (the pool keeps the dicts alive, so
        # their ids cannot be reused), and verified batch templates by (first index, length).
        self._index = {id(e[2]): i for i, e in enumerate(self._pool)}
        self._templates: dict[tuple[int, int], _Template | None] = {}
        self.binary_ok = True

    def refill(self) -> None:
        pool = self._pool
        n = len(pool)
        i = self._i
        pos = self.log.last_position
        ts = time.time()
        ts_b = b',"ts":' + dumps(ts)
        headers = self._headers
        out: list[tuple[str, dict[str, Any], float, bytes, tuple[Any, ...]]] = []
        for _ in range(self.block):
            dev, head, data, tail, shape = pool[i]
            i = (i + 1) % n
            pos += 1
            payload = head + str(pos).encode() + ts_b + tail
            size = len(payload)
            h = headers.get(size)
            if h is None:
                h = headers[size] = frame_header(OP_TEXT, size)
            out.append((dev, data, ts, h + payload, shape))
        self._i = i
        self.log.extend_frames(out)

    # -- binary batches ------------------------------------------------------------
    def binary_batch(self, recs: list[Record]) -> bytes | None:
        """The tick batch for consecutive firehose records, or None (then the caller encodes).

        A batch of pool entries k..k+n-1 differs from another batch of the same entries
        only in positions and timestamps, so it is encoded once as a template and then
        patched in place. Each template is verified at build time by decoding a patched
        copy, so a change of the batch format disables this path instead of corrupting it.
        """
        if not self.binary_ok or not recs:
            return None
        index = self._index
        k = index.get(id(recs[0].data))
        if k is None:
            return None
        npool = len(self._pool)
        p0 = recs[0].position
        i = k
        for j, r in enumerate(recs):
            if r.position != p0 + j or index.get(id(r.data)) != i:
                return None
            i = i + 1 if i + 1 < npool else 0
        key = (k, len(recs))
        t = self._templates.get(key, _MISSING)
        if t is _MISSING:
            if len(self._templates) > 4096:
                self._templates.clear()
            t = self._templates[key] = self._build(k, len(recs))
        if t is None:
            return None
        assert isinstance(t, _Template)
        buf = bytearray(t.blob)
        for r, po, to in zip(recs, t.pos_offsets, t.ts_offsets):
            _Q.pack_into(buf, po, r.position)
            _D.pack_into(buf, to, r.ts)
        return bytes(buf)

    def _build(self, k: int, n: int) -> _Template | None:
        try:
            from iotcommute import payload
        except ImportError:
            self.binary_ok = False
            return None
        pool = self._pool
        npool = len(pool)

        def ticks(base_pos: int, base_ts: float) -> list[dict[str, Any]]:
            out = []
            for j in range(n):
                dev, _, data, _, _ = pool[(k + j) % npool]
                pos = base_pos + j
                ts = base_ts + j * 0.25
                out.append({"type": "tick", "device": dev, "position": pos, "ts": ts, "data": data})
            return out

        try:
            marks = ticks(0x0123456789A00000, 1234567890.0625)
            blob = payload.encode_batch(marks)
            pos_offsets = [_find_once(blob, _Q.pack(t["position"])) for t in marks]
            ts_offsets = [_find_once(blob, _D.pack(t["ts"])) for t in marks]
            # Verify: patch in other values and compare with a straight decode.
            want = ticks(77, 1700000000.5)
            buf = bytearray(blob)
            for t, po, to in zip(want, pos_offsets, ts_offsets):
                _Q.pack_into(buf, po, t["position"])
                _D.pack_into(buf, to, t["ts"])
            got = payload.decode_batch(bytes(buf))
            ok = got == want and all(
                type(a) is type(b)
                for g, w in zip(got, want)
                for a, b in zip(g["data"].values(), w["data"].values())
            )
        except Exception:
            ok = False
        if not ok:
            logger.warning("binary firehose templates unavailable; encoding every batch")
            self.binary_ok = False
            return None
        return _Template(blob, pos_offsets, ts_offsets)


class _Template:
    __slots__ = ("blob", "pos_offsets", "ts_offsets")

    def __init__(self, blob: bytes, pos_offsets: list[int], ts_offsets: list[int]) -> None:
        self.blob = blob
        self.pos_offsets = pos_offsets
        self.ts_offsets = ts_offsets


_MISSING: Any = object()
_Q = struct.Struct("<Q")
_D = struct.Struct("<d")


def _find_once(blob: bytes, needle: bytes) -> int:
    at = blob.find(needle)
    if at < 0 or blob.find(needle, at + 1) >= 0:
        raise ValueError("marker not found exactly once")
    return at
