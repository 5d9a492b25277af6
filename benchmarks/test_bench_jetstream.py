"""The log on NATS JetStream vs the in-memory log, same run (issue 15).

- appends/s: records appended through the server's `Log` and acknowledged durable (what a
  `published` answer waits for), in publishes of 10 records from 10 devices issued
  without waiting (the group commit batches them):
  ``memory`` (the default `Log`), ``jetstream`` (one server process, the Log picks the
  positions, JetStream checks them), ``jetstream-shared`` (several processes may append:
  JetStream assigns the positions; `SharedLog`);
- ticks/s visible elsewhere: a second `SharedLog` on its own connection (another server
  process in production) follows the stream; the rate at which appended records become
  readable there, from the first append to the last record seen (the in-memory log has no
  "elsewhere": its figure is its own append rate);
- aggregate ticks/s of a consumer group of 1 and 2 member processes (each on its own
  server process) draining a preloaded stream, the members speaking the protocol directly
  (``protocol``: websockets, one commit per 1000 ticks) or made with the library
  (``library``: `WebSocket(group=..., format="binary")`, commits every 100 ticks / 1 s).

Plain `pytest` runs it smoke-sized (a real nats-server is started; skipped with the reason
when the binary cannot run); `pytest --benchmark` at full size.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.jetstream.natsfixture import NatsServer, nats_server

__all__ = ["nats_server"]

FULL = 100_000


async def _append_all(log: Any, n: int, shared: bool) -> float:
    """Append n records as 10-record publishes, all in flight; seconds until all durable."""
    from iotcommute.server.cluster import publish

    left = n // 10
    done = asyncio.get_running_loop().create_future()
    data = {"temperature": 21.5, "humidity": 40.2, "door_open": False}

    def ok(err: BaseException | None, a: int, b: int, dup: bool) -> None:
        nonlocal left
        assert err is None, err
        left -= 1
        if left == 0:
            done.set_result(None)

    t0 = time.perf_counter()
    now = time.time()
    for k in range(n // 10):
        items = [(now, data, None)] * 10
        publish(log, f"dev-{k % 10}", items, f"p-{k}", ok)
        if k % 100 == 99:
            await asyncio.sleep(0)  # let acks and the writer run, as a server would
    await asyncio.wait_for(done, 120)
    return time.perf_counter() - t0


@pytest.mark.parametrize("kind", ["memory", "jetstream", "jetstream-shared"])
def test_append_rate(
    kind: str, nats_server: NatsServer, bench_scale: Any, benchmark: Any, bench_record: Any
) -> None:
    from iotcommute.server.cluster import SharedLog
    from iotcommute.server.log import Log
    from iotcommute.server.store.jetstream import JetStreamStore

    n = bench_scale.n(FULL, minimum=200) // 10 * 10
    rounds: list[float] = []
    round_no = 0

    def one() -> None:
        nonlocal round_no
        round_no += 1

        async def main() -> float:
            name = f"b{round_no}-{kind.replace('-', '')}"
            log: Any
            if kind == "memory":
                log = Log(retain=n + 10)
            elif kind == "jetstream":
                log = Log(retain=n + 10, store=JetStreamStore(nats_server.url, name=name))
            else:
                log = SharedLog(JetStreamStore(nats_server.url, name=name), n + 10)
            await log.open()
            secs = await _append_all(log, n, kind == "jetstream-shared")
            await log.close()
            return secs

        rounds.append(asyncio.run(main()))

    benchmark.pedantic(one, rounds=bench_scale.rounds, iterations=1)
    best = min(rounds)
    benchmark.extra_info["appends_per_s"] = n / best
    bench_record({"section": "jetstream", "subject": kind, "case": "appends/s", "value": n / best})


def test_visible_elsewhere_rate(
    nats_server: NatsServer, bench_scale: Any, benchmark: Any, bench_record: Any
) -> None:
    from iotcommute.server.cluster import SharedLog
    from iotcommute.server.store.jetstream import JetStreamStore

    n = bench_scale.n(FULL, minimum=200) // 10 * 10
    rounds: list[float] = []
    round_no = 0

    def one() -> None:
        nonlocal round_no
        round_no += 1

        async def main() -> float:
            name = f"v{round_no}"
            writer = SharedLog(JetStreamStore(nats_server.url, name=name), n + 10)
            reader = SharedLog(JetStreamStore(nats_server.url, name=name), n + 10)
            await writer.open()
            await reader.open()
            t0 = time.perf_counter()
            await _append_all(writer, n, True)
            await asyncio.wait_for(reader.wait(n - 1), 120)
            secs = time.perf_counter() - t0
            assert len(reader.read(0, None, n + 10)) == n
            await writer.close()
            await reader.close()
            return secs

        rounds.append(asyncio.run(main()))

    benchmark.pedantic(one, rounds=bench_scale.rounds, iterations=1)
    best = min(rounds)
    benchmark.extra_info["ticks_per_s"] = n / best
    bench_record(
        {
            "section": "jetstream",
            "subject": "jetstream-shared",
            "case": "ticks/s visible on another process",
            "value": n / best,
        }
    )


@pytest.mark.parametrize("member", ["protocol", "library"])
@pytest.mark.parametrize("members", [1, 2])
def test_group_rate(
    members: int,
    member: str,
    nats_server: NatsServer,
    bench_scale: Any,
    benchmark: Any,
    bench_record: Any,
) -> None:
    """Aggregate ticks/s of a consumer group of 1 or 2 member processes, each on its own
    server process (so 2 members = 2 server + 2 client processes), draining a stream of
    records from 16 devices preloaded into the log (4 partitions)."""
    import subprocess
    import sys
    from pathlib import Path

    from iotcommute.server.cluster import SharedLog
    from iotcommute.server.registry import sim_device_id
    from iotcommute.server.store.jetstream import JetStreamStore
    from tests.jetstream.jsprocs import ServerProc

    n = bench_scale.n(FULL, minimum=400) // 16 * 16
    here = Path(__file__).parent
    script = "group_member.py" if member == "protocol" else "group_member_lib.py"
    rates: list[float] = []
    round_no = 0

    def one() -> None:
        nonlocal round_no
        round_no += 1
        name = f"g{members}{member[0]}r{round_no}"
        url = f"{nats_server.url}/{name}"

        async def preload() -> None:
            log = SharedLog(JetStreamStore(nats_server.url, name=name), n + 10)
            await log.open()
            from iotcommute.server.cluster import publish

            left = n // 16
            done = asyncio.get_running_loop().create_future()

            def ok(err: BaseException | None, a: int, b: int, dup: bool) -> None:
                nonlocal left
                assert err is None
                left -= 1
                if left == 0:
                    done.set_result(None)

            for k in range(n // 16):
                items = [(1.0, {"k": k, "v": 1.5}, None)] * 16
                publish(log, sim_device_id(k % 16 + 1), items, None, ok)
                if k % 50 == 49:
                    await asyncio.sleep(0)
            await asyncio.wait_for(done, 300)
            await log.close()

        asyncio.run(preload())
        servers = [ServerProc(url, "--partitions", "4").start() for _ in range(members)]
        procs = []
        try:
            for s in servers:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, str(here / script), s.ws_url, "bench", "40"],
                        stdout=subprocess.PIPE,
                        text=True,
                        cwd=here.parent,
                    )
                )
                assert procs[-1].stdout is not None
                assert procs[-1].stdout.readline().strip() == "joined"
            outs = [p.communicate(timeout=300)[0].split() for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            for s in servers:
                s.stop()
        total = sum(int(o[0]) for o in outs)
        assert total >= n  # duplicates only around rebalances (members join one by one)
        t0 = min(float(o[1]) for o in outs if int(o[0]))
        t1 = max(float(o[2]) for o in outs if int(o[0]))
        rates.append(total / max(t1 - t0, 1e-6))

    benchmark.pedantic(one, rounds=bench_scale.rounds, iterations=1)
    best = max(rates)
    benchmark.extra_info["ticks_per_s"] = best
    bench_record(
        {
            "section": "jetstream",
            "subject": f"group of {members} ({member} members)",
            "case": "aggregate ticks/s",
            "value": best,
        }
    )
