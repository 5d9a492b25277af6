"""The library as consumer-group members, failing over on a shared JetStream log (issue 15).

Two server processes on one nats-server (4 partitions); members made with
`WebSocket(group=...)` in two OS processes (m1 and m2 in one, m3 in the other); six devices
publish with ids. Mid-stream the server process of m2 and the member process of m3 are
SIGKILLed, then a third member process (m4) joins. Afterwards, from what the members wrote
(tests/jetstream/lib_member.py) and the log as JetStream holds it:

- 0 lost: per partition, the union of what the members processed is the log;
- duplicates only within the commit window: a record processed twice was first processed
  in a tenure (assign..revoke) whose last accepted commit stayed below it;
- ownership exclusive at every commit: each accepted commit falls in its member's own
  tenure, and the accepted commits of a partition never interleave between tenures.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iotcommute.partition import partition
from tests.jetstream.jsprocs import ROOT, Publisher, ServerProc, until
from tests.jetstream.natsfixture import NatsServer, nats_server

__all__ = ["nats_server"]

PARTITIONS = 4


class MemberProc:
    def __init__(self, out: Path, **members: str) -> None:
        specs = [f"{name}={url}" for name, url in members.items()]
        args = [sys.executable, "-m", "tests.jetstream.lib_member", str(out), "g", *specs]
        self.proc = subprocess.Popen(
            args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "ready" (bounded by the script's own deadline)
        assert line.strip() == "ready", "the member process did not start"
        self.killed_at = math.inf

    def kill(self) -> None:
        self.killed_at = time.monotonic()
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def read_member(path: Path) -> list[tuple[str, float, list[int]]]:
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            kind, at, *rest = line.split()
            out.append((kind, float(at), [int(x) for x in rest]))
    return out


def processed(out: Path) -> dict[str, list[tuple[str, float, list[int]]]]:
    return {p.stem: read_member(p) for p in sorted(out.glob("*.log"))}


@pytest.mark.timeout(120)
def test_library_group_failover(nats_server: NatsServer, tmp_path: Path) -> None:
    servers = [
        ServerProc(nats_server.url, "--partitions", str(PARTITIONS), "--group-session-timeout", "2")
        for _ in range(2)
    ]
    procs: list[MemberProc] = []
    try:
        for s in servers:
            s.start()
        urls = [s.ws_url for s in servers]
        procs.append(MemberProc(tmp_path, m1=urls[0], m2=urls[1]))
        procs.append(MemberProc(tmp_path, m3=urls[0]))
        kill_at = asyncio.run(asyncio.wait_for(stream(servers, procs, urls, tmp_path), 60))
        log = asyncio.run(read_log(nats_server.url))
        by_part: dict[int, set[int]] = {p: set() for p in range(PARTITIONS)}
        for device, pos in log:
            by_part[partition(device, PARTITIONS)].add(pos)
        everything = {(p, pos) for p, ps in by_part.items() for pos in ps}

        def seen() -> set[tuple[int, int]]:
            return {
                (r[0], r[1])
                for lines in processed(tmp_path).values()
                for kind, _, r in lines
                if kind == "T"
            }

        deadline = time.monotonic() + 20
        while not seen() >= everything and time.monotonic() < deadline:
            time.sleep(0.2)
        for p in procs:
            p.stop()  # graceful: last commit, close
    finally:
        for p in procs:
            p.stop()
        for s in servers:
            s.stop()
    check(processed(tmp_path), by_part, kill_at)


async def stream(
    servers: list[ServerProc], procs: list[MemberProc], urls: list[str], out: Path
) -> dict[str, float]:
    def owners() -> int:
        got: dict[str, set[int]] = {}
        for name, lines in processed(out).items():
            own = got.setdefault(name, set())
            for kind, _, r in lines:
                if kind == "A":
                    own.update(r)
                elif kind == "R":
                    own.difference_update(r)
        return sum(len(s) for s in got.values())

    await until(lambda: owners() == PARTITIONS, None)
    pubs = [Publisher(i + 1, urls, 150) for i in range(6)]
    tasks = [asyncio.get_running_loop().create_task(p.run()) for p in pubs]

    def acked() -> int:
        return sum(len(p.acked) for p in pubs)

    await until(lambda: acked() >= 250, None)
    servers[1].kill()  # m2's server process: m2 is cut off, its partitions expire
    procs[1].kill()  # m3's process vanishes (no close, no last commit)
    kill_at = {"m3": procs[1].killed_at}
    await until(lambda: acked() >= 500, None)
    procs.append(await asyncio.to_thread(MemberProc, out, m4=urls[0]))
    await asyncio.gather(*tasks)
    assert any(p.reconnects for p in pubs)  # the kill hit publishers mid-stream
    return kill_at


async def read_log(nats_url: str) -> list[tuple[str, int]]:
    from iotcommute.server.store.jetstream import JetStreamStore

    store = JetStreamStore(nats_url)
    await store.open()
    entries = await store.read(0, 0, 100_000)
    await store.close()
    assert len(entries) == 6 * 150
    assert len({(e.device, e.pid) for e in entries}) == len(entries)  # each publish once
    return [(e.device, e.offset) for e in entries]


def check(
    members: dict[str, list[tuple[str, float, list[int]]]],
    by_part: dict[int, set[int]],
    kill_at: dict[str, float],
) -> None:
    # tenures: (member, partition, k) -> [start, end]; processing and commits tagged with one
    count: dict[tuple[str, int], int] = {}  # tenures so far
    current: dict[tuple[str, int], int] = {}  # the tenure now (0: not owned)
    spans: dict[tuple[str, int, int], list[float]] = {}
    runs: dict[tuple[int, int], list[tuple[float, str, int]]] = {}
    commits: dict[int, list[tuple[float, str, int, int]]] = {}
    last_commit: dict[tuple[str, int, int], int] = {}
    for name, lines in members.items():
        for kind, at, r in lines:
            if kind == "A":
                for p in r:
                    k = count[(name, p)] = count.get((name, p), 0) + 1
                    current[(name, p)] = k
                    spans[(name, p, k)] = [at, kill_at.get(name, math.inf)]
            elif kind == "R":
                for p in r:
                    k = current.get((name, p), 0)
                    assert k, f"{name}: revoke of partition {p} it did not own"
                    spans[(name, p, k)][1] = at
                    current[(name, p)] = 0
            elif kind == "T":
                p, pos = r
                k = current.get((name, p), 0)
                assert k, f"{name} processed {pos} of partition {p} it did not own"
                runs.setdefault((p, pos), []).append((at, name, k))
            elif kind == "C":
                p, pos = r
                k = current.get((name, p), 0)
                assert k, f"{name} had a commit accepted for partition {p} it did not own"
                commits.setdefault(p, []).append((at, name, k, pos))
                last_commit[(name, p, k)] = max(last_commit.get((name, p, k), 0), pos)
    # 0 lost, nothing made up
    for p, positions in by_part.items():
        got = {pos for (q, pos) in runs if q == p}
        assert got == positions, f"partition {p}: lost {sorted(positions - got)[:10]}"
    # duplicates only after the last accepted commit of the tenure that lost the partition
    dups = 0
    for (p, pos), who in runs.items():
        who.sort()
        dups += len(who) - 1
        for _, name, k in who[:-1]:
            assert last_commit.get((name, p, k), 0) < pos, f"{pos} of {p} again after a commit"
    # exclusive ownership at every commit: commits of one partition never interleave
    # between tenures, and each lies within its member's tenure
    for p, cs in commits.items():
        cs.sort()
        order = [(name, k) for _, name, k, _ in cs]
        blocks = [order[0]] + [b for a, b in itertools.pairwise(order) if a != b]
        assert len(blocks) == len(set(blocks)), f"partition {p}: commits interleave {blocks}"
        for at, name, k, _ in cs:
            start, end = spans[(name, p, k)]
            assert start <= at <= end
        accepted = [pos for *_, pos in cs]
        assert accepted == sorted(accepted)  # the group's position only moves forward
    assert any(kind == "T" for kind, _, _ in members.get("m4", [])), "m4 took over nothing"
    print(f"{sum(len(v) for v in by_part.values())} records, {dups} processed twice")
