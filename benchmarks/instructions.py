"""CPU instructions per message, counted by valgrind's callgrind: repeatable on a loaded
machine where wall-clock rates are not.

    python -m benchmarks.instructions bin64k iotcommute-core picows
    python -m benchmarks.instructions text256 iotcommute-aio iotcommute-sync iotcommute-core

Each subject (a name from benchmarks/peers.py, or ``reader`` / ``reader-fallback``: the
frame reader alone, fed the case's wire bytes from memory in 256 000-byte reads as uvloop
delivers them) receives the case's stream in a child process under callgrind, for two
stream lengths; the difference divided by the extra messages is the cost per message, free
of start-up and connection set-up. The client process alone is counted (the firehose is a
separate process that valgrind does not follow).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

from benchmarks import firehose

READ = 256_000  # uvloop's read size

SIZES = {
    "bin32": (20_000, 120_000),
    "text256": (5_000, 30_000),
    "json256": (2_000, 12_000),
    "bin4k": (1_000, 6_000),
    "bin64k": (100, 600),
    "text16k": (100, 600),
    "batch100": (50, 300),
    "batch100x5": (50, 300),
}


def _reader(case: firehose.Case, n: int, pure: bool) -> None:
    if pure:
        os.environ["IOTCOMMUTE_NO_EXTENSIONS"] = "1"
    from iotcommute.protocol.frames import FrameReader

    # 100 messages cut into reads once (a fixed set-up cost), fed n / 100 times.
    stream = b"".join(firehose.encode_message(case, p) for p in firehose.case_messages(case, 100))
    reads = [stream[i : i + READ] for i in range(0, len(stream), READ)]
    reader = FrameReader(max_size=2**26)
    got = 0
    for _ in range(n // 100):
        for chunk in reads:
            reader.feed_data(chunk)
            got += len(reader.events)
            reader.events = []
    assert got == n // 100 * 100, (got, n)


def child(subject: str, case_name: str, n: int) -> None:
    case = firehose.CASES[case_name]
    if subject.startswith("reader"):
        _reader(case, n, subject == "reader-fallback")
        return
    from benchmarks import peers

    srv = firehose.FirehoseProcess()
    try:
        srv.prepare(case_name, n)
        s = peers.SUBJECTS[subject]
        counter = peers.Counter(case, n, s.decoders[0])
        s.recv(srv.url(f"/recv/{case_name}/{n}"), counter, case.compressed)
        assert counter.count == counter.expected, (counter.count, counter.expected)
    finally:
        peers.close_workers()
        srv.close()


def count(subject: str, case: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        res = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "benchmarks.instructions",
                "--child",
                subject,
                case,
                str(n),
            ],
            env=firehose.subprocess_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        m = re.search(r"Collected : (\d+)", res.stderr)
        if res.returncode != 0 or m is None:
            raise RuntimeError(res.stderr[-3000:])
        return int(m.group(1))


def per_message(subject: str, case: str, sizes: tuple[int, int] | None = None) -> float:
    small, big = sizes or SIZES[case]
    return (count(subject, case, big) - count(subject, case, small)) / (big - small)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", nargs=3, metavar=("SUBJECT", "CASE", "N"))
    ap.add_argument("case", nargs="?")
    ap.add_argument("subjects", nargs="*")
    ap.add_argument("--sizes", help="the two stream lengths, e.g. 2000,12000 (slow subjects)")
    args = ap.parse_args(argv)
    if args.child:
        subject, case, n = args.child
        child(subject, case, int(n))
        return 0
    if args.case not in SIZES or not args.subjects:
        ap.error(f"give a case ({', '.join(SIZES)}) and subjects")
    sizes = None
    if args.sizes:
        small, big = (int(x) for x in args.sizes.split(","))
        sizes = (small, big)
    for subject in args.subjects:
        print(
            f"{args.case:10} {subject:28} {per_message(subject, args.case, sizes):12,.0f} "
            "instructions/message",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
