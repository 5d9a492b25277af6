"""The private dict layout decision (issue 13), measured: the compiled tick decoder with and
without direct value stores, device interning on in both, in one run.

    python -m benchmarks.direct_stores              # callgrind instructions per tick
    python -m benchmarks.direct_stores --wall 5     # + interleaved wall-clock rounds

Two paths, each with the stores on and off (``_ticks._use_direct_stores``):

* decode only: ``payload.decode_batch`` over the receive benchmark's batches (100 ticks from
  100 devices; 11 and 5 readings);
* end to end on the dict path: the batch100 / batch100x5 streams from the firehose over a
  socket, through the core on uvloop with each frame decoded to dicts by the consumer, or
  (IOTCOMMUTE_DS_SUBJECT=iotcommute-aio) through AsyncWebSocket with ``on_tick``, which adds
  the engine's per-tick cost (dispatch, duplicate check, callback) that the switch does not
  touch.

Instructions are counted by valgrind's callgrind in a child process for two stream lengths;
the difference divided by the extra ticks is the cost per tick, free of start-up. Callgrind
counts are repeatable on a loaded machine, wall-clock rounds are not (they are printed as a
cross-check, interleaved on/off).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks import firehose

SHAPES = {"batch100": "11 readings", "batch100x5": "5 readings"}


def _batches(case: str) -> list[bytes]:
    return firehose.case_messages(firehose.CASES[case], 10)


def _switch(on: bool) -> None:
    from iotcommute import payload

    mod = payload.ticks_impl
    if not payload.SPEEDUPS or not hasattr(mod, "_use_direct_stores"):
        raise SystemExit("the compiled tick codec is not in use")
    mod._use_direct_stores(on)
    if on and not mod.DIRECT_STORES:
        raise SystemExit("direct stores do not work on this interpreter")


def decode_only(case: str, batches_n: int) -> int:
    """Decode ``batches_n`` batches; returns ticks decoded."""
    from iotcommute import payload

    batches = _batches(case)
    decode = payload.decode_batch
    n = 0
    for i in range(batches_n):
        n += len(decode(batches[i % len(batches)]))
    return n


SUBJECT = os.environ.get("IOTCOMMUTE_DS_SUBJECT", "iotcommute-core")


def end_to_end(case: str, batches_n: int, server: firehose.FirehoseProcess | None = None) -> int:
    """Receive ``batches_n`` batches through the core (decoded to dicts by the consumer) or,
    with IOTCOMMUTE_DS_SUBJECT=iotcommute-aio, AsyncWebSocket.on_tick; returns ticks."""
    from benchmarks import peers

    own = server is None
    srv = server or firehose.FirehoseProcess()
    try:
        srv.prepare(case, batches_n)
        counter = peers.Counter(firehose.CASES[case], batches_n, "iotcommute")
        peers.SUBJECTS[SUBJECT].recv(srv.url(f"/recv/{case}/{batches_n}"), counter, False)
        assert counter.count == counter.expected, (counter.count, counter.expected)
        return counter.count
    finally:
        if own:
            peers.close_workers()
            srv.close()


PATHS: dict[str, Callable[[str, int], int]] = {"decode": decode_only, "e2e": end_to_end}


def _child(path: str, case: str, on: bool, batches_n: int) -> None:
    _switch(on)
    PATHS[path](case, batches_n)


def callgrind(path: str, case: str, on: bool, batches_n: int) -> int:
    """Instructions of a child process doing ``batches_n`` batches (whole process)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "benchmarks.direct_stores",
            "--child",
            path,
            case,
            "1" if on else "0",
            str(batches_n),
        ]
        res = subprocess.run(
            cmd, env=firehose.subprocess_env(), capture_output=True, text=True, check=False
        )
        if res.returncode != 0:
            raise RuntimeError(res.stderr[-2000:])
        m = re.search(r"Collected : (\d+)", res.stderr)
        if m is None:
            raise RuntimeError(res.stderr[-2000:])
        return int(m.group(1))


def per_tick(path: str, case: str, on: bool, small: int, big: int) -> float:
    a = callgrind(path, case, on, small)
    b = callgrind(path, case, on, big)
    return (b - a) / ((big - small) * 100)


def wall(path: str, case: str, rounds: int, batches_n: int) -> dict[bool, list[float]]:
    """Interleaved on/off rounds in this process: seconds per tick."""
    out: dict[bool, list[float]] = {True: [], False: []}
    server = firehose.FirehoseProcess() if path == "e2e" else None
    try:
        for _ in range(rounds):
            for on in (True, False):
                _switch(on)
                t0 = time.perf_counter()
                if server is not None:
                    n = end_to_end(case, batches_n, server)
                else:
                    n = decode_only(case, batches_n)
                out[on].append((time.perf_counter() - t0) / n)
    finally:
        if server is not None:
            from benchmarks import peers

            peers.close_workers()
            server.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", nargs=4, metavar=("PATH", "CASE", "ON", "BATCHES"))
    ap.add_argument("--wall", type=int, default=0, help="interleaved wall-clock rounds")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--paths", default="decode,e2e", help="decode and/or e2e")
    ap.add_argument("--cases", default=",".join(SHAPES), help="batch100 and/or batch100x5")
    args = ap.parse_args(argv)
    if args.child:
        path, case, on, n = args.child
        _child(path, case, on == "1", int(n))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind not found", file=sys.stderr)
        return 1
    results: dict[str, Any] = {}
    sizes = {"decode": (200, 1200), "e2e": (200, 1200)}
    for path in args.paths.split(","):
        for case in args.cases.split(","):
            shape = SHAPES[case]
            on = per_tick(path, case, True, *sizes[path])
            off = per_tick(path, case, False, *sizes[path])
            results[f"{path} {case}"] = {"on": on, "off": off}
            print(
                f"{path:6} {case:10} ({shape}): instructions/tick direct on {on:7.0f}, "
                f"off {off:7.0f}: on saves {100 * (off - on) / off:5.1f}%",
                flush=True,
            )
            if args.wall:
                w = wall(path, case, args.wall, 2000 if path == "decode" else 1000)
                mon, moff = statistics.median(w[True]), statistics.median(w[False])
                results[f"{path} {case}"]["wall_ns"] = {"on": mon * 1e9, "off": moff * 1e9}
                print(
                    f"{'':6} {'':10} wall ns/tick (median of {args.wall}): on {mon * 1e9:6.1f}, "
                    f"off {moff * 1e9:6.1f}: on saves {100 * (moff - mon) / moff:5.1f}%",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
