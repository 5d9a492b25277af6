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
from .log import Block, Log, Record
from .registry import sim_device_id
from .store import StoreError
from .wire import OP_BINARY, OP_TEXT, dumps, encode_frame, frame_header

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
            try:
                for _ in range(due):
                    ts = time.time()
                    for s in sims:
                        log.append(s.id, s.tick(), ts)
            except StoreError:
                pass  # the store is down or behind (the Log logged it): skip these ticks
            done += due
        await asyncio.sleep(min(0.1, max(0.001, start + (done + 1) / rate - loop.time())))


class Firehose:
    """Refills the log whenever a cursor reaches the tail, a whole block per call.

    Telemetry values come from a small pool of pre-generated ticks. A refill appends one
    `FirehoseBlock` (no Python object per record): its JSON frames are built for the whole
    block with one join over cached pieces (only positions and the timestamp differ from
    block to block), its binary batches are patched copies of verified templates, and a
    Record is materialized only for a reader that asks for one. Positions and timestamps
    are real, so resuming from any position works as for any other record.
    """

    def __init__(self, log: Log, device_ids: list[str], block: int = 2048, pool: int = 256) -> None:
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
        self.devices = frozenset(e[0] for e in self._pool)
        self._i = 0
        # JSON pieces and frame offsets by (first pool index, count, digits, len(ts part))
        self._json: dict[tuple[int, int, int, int], tuple[list[bytes], list[int]]] = {}
        # Binary batches: pool data dict -> pool index (the pool keeps the dicts alive, so
        # their ids cannot be reused), and verified batch templates by (first index, length).
        self._index = {id(e[2]): i for i, e in enumerate(self._pool)}
        self._templates: dict[tuple[int, int], _Template | None] = {}
        self._counts: dict[tuple[int, int], dict[str, int]] = {}  # FirehoseBlock.device_counts
        self.binary_ok = True

    def refill(self) -> None:
        log = self.log
        if not log.accepts_blocks:
            # A durable log: ordinary appends, one block's worth once the last is stored.
            if log.pending() or log.failure is not None:
                return
            ts = time.time()
            pool = self._pool
            for _ in range(self.block):
                dev, _, data, _, _ = pool[self._i]
                self._i = (self._i + 1) % len(pool)
                log.append(dev, data, ts)
            return
        a = log.last_position + 1
        n = self.block
        top = 10 ** len(str(a))
        if a + n > top:  # every position of a block has the same number of digits
            n = top - a
        k = self._i
        self._i = (k + n) % len(self._pool)
        self.log.extend_block(FirehoseBlock(self, a, n, k, time.time()))

    def json_blob(self, a: int, n: int, k: int, ts: float) -> tuple[bytes, list[int]]:
        """Frames of n records from pool index k at positions a.., timestamp ts, joined;
        with the n + 1 frame boundaries."""
        digits = len(str(a))
        ts_b = b',"ts":' + dumps(ts)
        key = (k, n, digits, len(ts_b))
        t = self._json.get(key)
        if t is None:
            if len(self._json) > 256:
                self._json.clear()
            pool = self._pool
            npool = len(pool)
            pieces: list[bytes] = []
            offsets = [0]
            for j in range(n):
                _, head, _, tail, _ = pool[(k + j) % npool]
                size = len(head) + digits + len(ts_b) + len(tail)
                pieces += (frame_header(OP_TEXT, size) + head, b"", b"", tail)
                offsets.append(offsets[-1] + len(pieces[-4]) + size - len(head))
            t = self._json[key] = (pieces, offsets)
        pieces, offsets = t
        pieces[1::4] = " ".join(map(str, range(a, a + n))).encode().split()
        pieces[2::4] = [ts_b] * n
        return b"".join(pieces), offsets

    def binary_run(self, k: int, a: int, n: int, ts: float) -> bytes | None:
        """The tick batch of n pool records from index k at positions a.. (timestamp ts)."""
        if not self.binary_ok:
            return None
        key = (k, n)
        t = self._templates.get(key, _MISSING)
        if t is _MISSING:
            if len(self._templates) > 4096:
                self._templates.clear()
            t = self._templates[key] = self._build(k, n)
        if t is None:
            return None
        assert isinstance(t, _Template)
        buf = bytearray(t.blob)
        if t.stride:
            # Rows of one size: patch the position and timestamp columns byte by byte
            # (16 strided copies) instead of two struct calls per tick.
            mv = memoryview(buf)
            stop = t.pos_offsets[-1] + 1
            pos_b = struct.pack(f"<{n}Q", *range(a, a + n))
            for i in range(8):
                mv[t.pos_offsets[0] + i : stop + i : t.stride] = pos_b[i::8]
            stop = t.ts_offsets[-1] + 1
            for i, c in enumerate(_D.pack(ts)):
                mv[t.ts_offsets[0] + i : stop + i : t.stride] = bytes((c,)) * n
        else:
            for j, (po, to) in enumerate(zip(t.pos_offsets, t.ts_offsets)):
                _Q.pack_into(buf, po, a + j)
                _D.pack_into(buf, to, ts)
        return bytes(buf)

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
        ts = recs[0].ts
        if any(r.ts != ts for r in recs):
            return None
        return self.binary_run(k, p0, len(recs), ts)

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


class FirehoseBlock(Block):
    """`n` firehose records from pool index `k` at positions start.., one timestamp."""

    __slots__ = ("_json", "_offsets", "_recs", "fh", "k", "ts")

    def __init__(self, fh: Firehose, start: int, n: int, k: int, ts: float) -> None:
        super().__init__(start, n, fh.devices)
        self.fh = fh
        self.k = k
        self.ts = ts
        self._json: bytes | None = None
        self._offsets: list[int] = []
        self._recs: list[Record | None] | None = None

    def _blob(self) -> tuple[bytes, list[int]]:
        if self._json is None:
            self._json, self._offsets = self.fh.json_blob(self.start, self.n, self.k, self.ts)
        return self._json, self._offsets

    def json_frames(self, a: int, b: int) -> memoryview:
        blob, off = self._blob()
        return memoryview(blob)[off[a - self.start] : off[b - self.start]]

    def binary_frames(self, a: int, b: int) -> list[bytes] | None:
        fh = self.fh
        npool = len(fh._pool)
        out = []
        while a < b:
            n = min(100, b - a)
            batch = fh.binary_run((self.k + a - self.start) % npool, a, n, self.ts)
            if batch is None:
                return None
            out.append(encode_frame(OP_BINARY, batch))
            a += n
        return out

    def device_counts(self, a: int, b: int) -> dict[str, int]:
        """Per-device record counts of positions a..b-1 from the pool's cycle (no Records;
        cached by pool offset and length, so the caller must not change the dict)."""
        fh = self.fh
        npool = len(fh._pool)
        k = (self.k + a - self.start) % npool
        key = (k, b - a)
        got = fh._counts.get(key)
        if got is not None:
            return got
        full, rest = divmod(b - a, npool)
        out: dict[str, int] = {}
        if full:
            for dev, *_ in fh._pool:
                out[dev] = out.get(dev, 0) + full
        for j in range(rest):
            dev = fh._pool[(k + j) % npool][0]
            out[dev] = out.get(dev, 0) + 1
        if len(fh._counts) > 4096:
            fh._counts.clear()
        fh._counts[key] = out
        return out

    def record(self, position: int) -> Record:
        recs = self._recs
        if recs is None:
            recs = self._recs = [None] * self.n
        j = position - self.start
        r = recs[j]
        if r is None:
            blob, off = self._blob()
            dev, _, data, _, shape = self.fh._pool[(self.k + j) % len(self.fh._pool)]
            r = recs[j] = Record(position, dev, self.ts, data)
            r._frame = blob[off[j] : off[j + 1]]
            r._shape = shape
        return r


class _Template:
    __slots__ = ("blob", "pos_offsets", "stride", "ts_offsets")

    def __init__(self, blob: bytes, pos_offsets: list[int], ts_offsets: list[int]) -> None:
        self.blob = blob
        self.pos_offsets = pos_offsets
        self.ts_offsets = ts_offsets
        # One row size for every tick (the usual case): columns can be patched in one go.
        stride = pos_offsets[1] - pos_offsets[0] if len(pos_offsets) > 1 else 0
        uniform = stride > 8 and all(
            pos_offsets[j] - pos_offsets[j - 1] == stride
            and ts_offsets[j] - ts_offsets[j - 1] == stride
            for j in range(1, len(pos_offsets))
        )
        self.stride = stride if uniform else 0


_MISSING: Any = object()
_Q = struct.Struct("<Q")
_D = struct.Struct("<d")


def _find_once(blob: bytes, needle: bytes) -> int:
    at = blob.find(needle)
    if at < 0 or blob.find(needle, at + 1) >= 0:
        raise ValueError("marker not found exactly once")
    return at
