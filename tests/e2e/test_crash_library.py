"""The whole chain under SIGKILL (issue 11): the durable server, the client library and the
`listen` CLI, as separate processes on loopback, each killed at random moments.

`iotcommute serve --db FILE --simulate N --port P` (one fixed port, so clients reconnect to
the restarted server) is SIGKILLed 11 times and restarted while
- a library device (`subscribe=None`) publishes `{"n": k}` with `publish(wait=True)` from a
  few threads and writes each ack `k position` to a file as it arrives (not killed: its
  unacknowledged publishes live in its memory);
- a callback consumer (`checkpoint=FILE`) and `iotcommute listen --checkpoint FILE` are
  SIGKILLed and restarted several times each (a new output file per run);
- an exactly-once consumer (the README's recipe: its output file is its checkpoint) is
  SIGKILLed and restarted as often.
Afterwards everything is compared with the SQLite store itself: nothing lost, nothing the
store lacks, no position with two contents, every acked publish stored once at its acked
position; repeats only of positions after the checkpoint read from the file at each kill
(the README's checkpoint window), and none with the exactly-once recipe.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from iotcommute.server.registry import README_DEVICE_ID, README_DEVICE_KEY

pytestmark = pytest.mark.timeout(150)  # a guard only: a run takes 30-50 s on 2 busy cores

ROOT = Path(__file__).resolve().parents[2]
SERVER_KILLS = 10  # and one more at the end: 11
CONSUMER_KILLS = 4
THREADS = 4  # the device's publishing threads (publishes in flight at once)

#: (device, ts, data) of a position
Content = tuple[str, float, Any]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_for(what: str, cond: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Proc:
    """One restartable process: stdout to a file per run, stderr to one log."""

    def __init__(self, name: str, tmp: Path, cmd: Any, env: dict[str, str] | None = None) -> None:
        self.name, self.tmp, self.cmd = name, tmp, cmd
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.kills = 0
        self.errlog = (tmp / f"{name}.stderr").open("ab")

    def out(self, run: int) -> Path:
        return self.tmp / f"{self.name}.{run}.out"

    def start(self) -> None:
        self.runs += 1
        with self.out(self.runs).open("wb") as stdout:
            self.proc = subprocess.Popen(
                self.cmd(self.runs), stdout=stdout, stderr=self.errlog, cwd=ROOT, env=self.env
            )

    def kill(self) -> None:
        assert self.proc is not None
        assert self.proc.poll() is None, f"{self.name} ended by itself: {self.proc.returncode}"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.kills += 1

    def end(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.errlog.close()


class Server(Proc):
    def __init__(self, tmp: Path, port: int) -> None:
        db = tmp / "log.sqlite"
        cmd = [sys.executable, "-m", "iotcommute", "serve", "--db", str(db), "--port", str(port)]
        cmd += ["--simulate", "5", "--rate", "40", "--retain", "10000000"]
        super().__init__("server", tmp, lambda run: cmd)
        self.db = db

    def start(self) -> None:
        super().start()
        out = self.out(self.runs)
        _wait_for("the server", lambda: b"listening on" in out.read_bytes(), 30)

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


def _store(db: Path) -> dict[int, Content]:
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT position, device, ts, data FROM records").fetchall()
    finally:
        con.close()
    return {int(p): (str(d), float(t), json.loads(b)) for p, d, t, b in rows}


def _complete_lines(path: Path) -> list[bytes]:
    """The lines of an output file, without a last line torn by a kill."""
    data = path.read_bytes() if path.exists() else b""
    return data[: data.rfind(b"\n") + 1].splitlines()


def _peer_ticks(path: Path) -> list[tuple[int, Content]]:
    out = []
    for line in _complete_lines(path):
        pos, dev, body = line.decode().split(" ", 2)
        tick = json.loads(body)
        out.append((int(pos), (dev, tick["ts"], tick["data"])))
    return out


def _listen_ticks(path: Path) -> list[tuple[int, Content]]:
    out = []
    for line in _complete_lines(path):
        t = json.loads(line)
        out.append((int(t["position"]), (t["device"], t["ts"], t["data"])))
    return out


@dataclass
class Consumer:
    """A killed-and-restarted consumer: its runs' ticks and the checkpoint at each kill."""

    proc: Proc
    parse: Any
    checkpoint: Path | None
    output: Path | None = None  # one file for all runs (else each run's stdout)
    at_kill: dict[int, int] = field(default_factory=dict)  # run -> checkpoint read after kill
    start: int = 0  # last position output before this run

    def kill_and_restart(self) -> None:
        # a kill must interrupt a stream: wait until this run has written a tick
        _wait_for(f"{self.proc.name} to stream", lambda: self.last() > self.start, 30)
        self.proc.kill()
        if self.checkpoint is not None:
            text = self.checkpoint.read_text() if self.checkpoint.exists() else "0"
            self.at_kill[self.proc.runs] = int(text.split()[0])  # "position log-id"
        self.start = self.last() if self.output is not None else 0
        self.proc.start()

    def runs(self) -> list[list[tuple[int, Content]]]:
        if self.output is not None:
            return [self.parse(self.output)]
        return [self.parse(self.proc.out(r)) for r in range(1, self.proc.runs + 1)]

    def last(self) -> int:
        ticks = self.parse(self.output or self.proc.out(self.proc.runs))
        return int(ticks[-1][0]) if ticks else 0


def _check(name: str, c: Consumer, records: dict[int, Content], since: int) -> dict[str, int]:
    """Lost / foreign / two-content / repeats of one consumer against the store."""
    runs = c.runs()
    seen: dict[int, Content] = {}
    repeats = 0
    window_violations: list[str] = []
    ahead: list[str] = []
    for i, ticks in enumerate(runs, start=1):
        prev = sorted({p for p in seen})
        ckpt = c.at_kill.get(i - 1) if c.checkpoint is not None else None
        if ckpt is not None and prev and ckpt > prev[-1]:
            ahead.append(f"checkpoint {ckpt} after run {i - 1} beyond its output {prev[-1]}")
        for pos, content in ticks:
            if pos in seen:
                repeats += 1
                if seen[pos] != content:
                    window_violations.append(f"{pos} with two contents")
                # a repeat is allowed only right after a kill, of a position after the
                # checkpoint the killed run left (the README's checkpoint window)
                if ckpt is None or pos <= ckpt:
                    window_violations.append(f"run {i}: {pos} again (checkpoint {ckpt})")
            seen[pos] = content
    upto = max(seen)
    stored = {p for p in records if since <= p <= upto}
    lost = sorted(stored - set(seen))
    foreign = sorted(p for p in seen if p not in records)
    differ = sorted(p for p in seen if p in records and seen[p] != records[p])
    assert lost == [], f"{name}: {len(lost)} records lost, first {lost[:5]}"
    assert foreign == [], f"{name}: {len(foreign)} records the store lacks: {foreign[:5]}"
    assert differ == [], f"{name}: positions with other contents than stored: {differ[:5]}"
    assert window_violations == [], f"{name}: {window_violations[:5]}"
    assert ahead == [], f"{name}: {ahead[:5]}"
    return {"ticks": len(seen), "repeats": repeats, "kills": c.proc.kills}


def test_sigkill_server_library_and_listen(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("CRASH_SEED", "0")) or None)
    port = _free_port()
    url = f"ws://127.0.0.1:{port}"
    server = Server(tmp_path, port)
    peers = [sys.executable, "-m", "tests.e2e.crash_peers"]
    acks, stop = tmp_path / "acks.txt", tmp_path / "stop"
    device = Proc("device", tmp_path, lambda run: [*peers, "device", url, acks, stop, str(THREADS)])
    cb_ckpt, ls_ckpt = tmp_path / "callback.ckpt", tmp_path / "listen.ckpt"
    callback = Consumer(
        Proc("callback", tmp_path, lambda run: [*peers, "callback", url, cb_ckpt]),
        _peer_ticks,
        cb_ckpt,
    )
    listen_cmd = [sys.executable, "-m", "iotcommute", "-q", "listen", "--url", url]
    listen_cmd += ["--checkpoint", str(ls_ckpt), "--from", "0", "--wait"]
    listen = Consumer(
        Proc(
            "listen",
            tmp_path,
            lambda run: listen_cmd,
            env={"IOTCOMMUTE_KEY": README_DEVICE_KEY, "IOTCOMMUTE_DEVICE": README_DEVICE_ID},
        ),
        _listen_ticks,
        ls_ckpt,
    )
    exact_out = tmp_path / "exactly.txt"
    exactly = Consumer(
        Proc("exactly", tmp_path, lambda run: [*peers, "exactly", url, exact_out]),
        _peer_ticks,
        None,
        exact_out,
    )
    consumers = {"callback": callback, "listen": listen, "exactly": exactly}
    procs = [server, device, *(c.proc for c in consumers.values())]
    try:
        server.start()
        for p in procs[1:]:
            p.start()
        _wait_for("the first acks", lambda: acks.exists() and acks.stat().st_size > 0, 30)
        # the kill schedule, drawn as it goes (a slow restart must not bunch the kills
        # up): the server 0.3-1.2 s after it is up again; each consumer 0.05-2.5 s after
        # its run wrote its first tick (so some runs outlive a checkpoint write, some not)
        now = time.monotonic
        next_server = now() + rng.uniform(0.3, 1.2)
        due: dict[str, float | None] = dict.fromkeys(consumers)
        while server.kills < SERVER_KILLS or any(
            c.proc.kills < CONSUMER_KILLS for c in consumers.values()
        ):
            if server.kills < SERVER_KILLS and now() >= next_server:
                server.kill()
                server.start()
                next_server = now() + rng.uniform(0.3, 1.2)
            for name, c in consumers.items():
                if c.proc.kills >= CONSUMER_KILLS:
                    continue
                when = due[name]
                if when is None:
                    if c.last() > c.start:  # streaming: draw its kill
                        due[name] = now() + rng.uniform(0.05, 2.5)
                elif now() >= when:
                    c.kill_and_restart()
                    due[name] = None
            time.sleep(0.02)
        # the device finishes its publishes in flight, then a last crash and restart; the
        # consumers read on until they hold everything stored before that crash
        stop.touch()
        assert device.proc is not None
        assert device.proc.wait(60) == 0, (tmp_path / "device.stderr").read_text()[-2000:]
        server.kill()
        target = max(_store(server.db))
        server.start()
        for name, c in consumers.items():
            _wait_for(f"{name} to catch up to {target}", lambda c=c: c.last() >= target, 40)
        server.terminate()
    finally:
        for p in procs:
            p.end()

    records = _store(server.db)
    # the device: every publish acked, stored once, at its acked position, with its data
    ack_lines = [line.split() for line in _complete_lines(acks)]
    acked = {int(n): int(pos) for n, pos in ack_lines}
    assert len(acked) == len(ack_lines), "a publish acked twice"
    for first in range(1, THREADS + 1):  # each publishing thread: k, k+T, k+2T, ... all acked
        mine = sorted(n for n in acked if n % THREADS == first % THREADS)
        assert mine == list(range(first, first + THREADS * len(mine), THREADS)), "never acked"
    stored_n: dict[int, list[int]] = {}
    for pos, (dev, _, data) in records.items():
        if dev == README_DEVICE_ID:
            stored_n.setdefault(data["n"], []).append(pos)
    assert {n: ps for n, ps in stored_n.items() if len(ps) > 1} == {}, "a publish stored twice"
    assert sorted(stored_n) == sorted(acked), "stored publishes and acks differ"
    assert [n for n, pos in acked.items() if stored_n[n] != [pos]] == [], "acked elsewhere"

    first_callback = min(p for run in callback.runs() for p, _ in run)
    figures = {
        "callback": _check("callback", callback, records, first_callback),
        "listen": _check("listen", listen, records, 1),
        "exactly": _check("exactly", exactly, records, 1),
    }
    assert figures["exactly"]["repeats"] == 0
    assert server.kills == SERVER_KILLS + 1
    assert all(c.proc.kills == CONSUMER_KILLS for c in consumers.values())
    print(
        f"\n{server.kills} server kills; {len(records)} records stored; {len(acked)} publishes "
        f"acked; "
        + "; ".join(
            f"{n}: {f['kills']} kills, {f['ticks']} ticks, {f['repeats']} repeats"
            for n, f in figures.items()
        )
        + f"; checkpoints at the kills: callback {callback.at_kill}, listen {listen.at_kill}"
    )
