"""Simulated devices and the firehose producer.

Simulated devices live in-process: their ticks are appended straight to the log, and they
answer commands at once (registered as virtual devices on the hub), so a demo or a REST test
has something to command without running a device client.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

from .hub import Hub
from .log import Log
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
