"""`iotcommute ingest --group` as a consumer group into one directory of Parquet files.

A server process on a JetStream log simulates devices; another serves the group. Two
ingest members share the directory (prefixes g.0, g.1). One is SIGKILLed after it wrote a
few files, at a random moment; a new member joins (it takes the free prefix g.0, and its
arrival moves partitions away from the survivor, whose buffered rows of them must go to
their new owner, not into its files). Once the simulation stopped and the members drained
the log, they stop gracefully. The files together hold every record of the log exactly once:
rebalances repeat nothing, and the rows the killed member had filed but not yet committed
are skipped by their next owner (it reads how far the directory's files go).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from iotcommute.server.registry import sim_device_id, sim_device_key
from tests.cli.ingestkit import stop
from tests.jetstream.jsprocs import ROOT, ServerProc
from tests.jetstream.natsfixture import NatsServer, nats_server

pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed (iotcommute[arrow])")

__all__ = ["nats_server"]


def member(url: str, d: Path, errlog: Path) -> subprocess.Popen[bytes]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("IOTCOMMUTE_") or k == "IOTCOMMUTE_NO_EXTENSIONS"
    }
    env.update(IOTCOMMUTE_KEY=sim_device_key(30), IOTCOMMUTE_DEVICE=sim_device_id(30))
    cmd = [sys.executable, "-m", "iotcommute", "ingest", "--dir", str(d), "--url", url]
    cmd += ["--group", "g", "--roll-bytes", "4000", "--roll-seconds", "0.3", "--wait"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=errlog.open("ab"))  # fmt: skip


def files(d: Path, prefix: str = "g.") -> list[Path]:
    return sorted(p for p in d.iterdir() if p.name.startswith(prefix) and p.suffix == ".parquet")


def positions(paths: list[Path]) -> list[int]:
    out: list[int] = []
    for f in paths:
        t = pq.read_table(f)  # every final file reads back whole
        pos = t.column("position").to_pylist()
        meta = t.schema.metadata
        assert int(meta[b"iotcommute.first_position"]) == min(pos)
        assert int(meta[b"iotcommute.last_position"]) == max(pos)
        out += pos
    return out


async def log_positions(nats_url: str) -> list[int]:
    from iotcommute.server.store.jetstream import JetStreamStore

    store = JetStreamStore(nats_url)
    await store.open()
    log = await store.read(0, 0, 1_000_000)
    await store.close()
    return [e.offset for e in log]


def wait_for(pred: Callable[[], object]) -> None:
    """Until pred() holds; the test's pytest timeout bounds the wait (no timed assertion:
    on a timeout the test prints the members' stderr)."""
    while not pred():
        time.sleep(0.05)


@pytest.mark.timeout(120)
def test_ingest_group_sigkilled_member_loses_nothing(nats_server: NatsServer,
                                                     tmp_path: Path) -> None:  # fmt: skip
    out, errlog = tmp_path / "out", tmp_path / "stderr.log"
    out.mkdir()
    rng = random.Random()
    sim = ServerProc(nats_server.url, "--partitions", "4", "--simulate", "6", "--rate", "200")
    srv = ServerProc(nats_server.url, "--partitions", "4")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sim.start()
        srv.start()
        a = member(srv.ws_url, out, errlog)
        procs.append(a)  # killed in `finally` whatever fails below
        wait_for(lambda: files(out, "g.0-"))  # the first member wrote a file
        b = member(srv.ws_url, out, errlog)
        procs.append(b)
        wait_for(lambda: files(out, "g.1-"))  # the second one too
        n = len(files(out, "g.0-")) + rng.randint(1, 3)
        wait_for(lambda: len(files(out, "g.0-")) >= n)
        time.sleep(rng.uniform(0, 0.3))
        assert a.poll() is None, errlog.read_text()
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        c = member(srv.ws_url, out, errlog)  # takes g.0 again, the lowest free prefix
        procs.append(c)
        time.sleep(rng.uniform(1.0, 2.0))
        sim.stop()  # no new records from here on
        log = asyncio.run(log_positions(nats_server.url))
        assert len(log) > 1000
        wait_for(lambda: set(positions(files(out))) >= set(log))  # the members drained it
        assert stop(b, 15) == 0, errlog.read_text()
        assert stop(c, 15) == 0, errlog.read_text()
    except BaseException:
        print("members' stderr:\n" + errlog.read_text()[-3000:])
        raise
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        srv.stop()
        sim.stop()
    got = positions(files(out))
    assert not [f for f in out.iterdir() if f.name.endswith(".tmp")]  # c cleaned a's leftovers
    assert set(got) == set(log)  # 0 lost, nothing the log does not hold
    twice = {p for p, k in Counter(got).items() if k > 1}
    # Exactly once: a rebalance hands a partition back with a releasing commit of what is in
    # files, and a member taking over a dead member's partition skips the rows the shared
    # directory's files already hold (their metadata says how far each partition is filed).
    assert not twice, sorted(twice)[:10]
    stderr = errlog.read_text()
    revoked = re.findall(r"group g: revoked partitions ([0-9, ]+)", stderr)
    assert revoked  # the survivor lost partitions to the new member
