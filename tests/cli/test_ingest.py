"""`iotcommute ingest` SIGKILLed at random moments during a simulated stream: the Parquet
files together hold every position of the server's log exactly once (issue 14)."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iotcommute.server.registry import README_DEVICE_ID, README_DEVICE_KEY
from tests.cli.ingestkit import stop

pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed (iotcommute[arrow])")

pytestmark = pytest.mark.timeout(60)

CLI = [sys.executable, "-c", "import sys; from iotcommute.cli import main; sys.exit(main())"]


def serve(db: Path, simulate: bool, errlog: Path) -> tuple[subprocess.Popen[bytes], int]:
    cmd = [sys.executable, "-m", "iotcommute.server", "--port", "0", "--db", str(db)]
    cmd += ["--retain", "10000000"]
    if simulate:
        cmd += ["--simulate", "5", "--rate", "300"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errlog.open("ab"))
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert "listening on" in line, line
    return proc, int(line.rsplit(":", 1)[1].split("/")[0])


def ingest(port: int, d: Path, errlog: Path) -> subprocess.Popen[bytes]:
    cmd = [*CLI, "ingest", "--dir", str(d), "--url", f"ws://127.0.0.1:{port}"]
    cmd += ["--key", README_DEVICE_KEY, "--device", README_DEVICE_ID, "--role", "device"]
    cmd += ["--roll-bytes", "6000", "--roll-seconds", "0.3"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errlog.open("ab"))


def files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.name.endswith(".parquet") and p.name[0] != ".")


def positions(d: Path) -> list[int]:
    """Every final file reads back whole; all their positions in file order."""
    out: list[int] = []
    for f in files(d):
        t = pq.read_table(f)
        pos = t.column("position").to_pylist()
        meta = t.schema.metadata
        assert int(meta[b"iotcommute.first_position"]) == pos[0]
        assert int(meta[b"iotcommute.last_position"]) == pos[-1]
        out += pos
    return out


def test_ingest_sigkilled_writes_every_position_exactly_once(tmp_path: Path) -> None:
    db, out, log = tmp_path / "log.sqlite", tmp_path / "out", tmp_path / "stderr.log"
    out.mkdir()
    rng = random.Random()
    server, port = serve(db, True, log)
    try:
        for _ in range(3):
            before = len(files(out))
            proc = ingest(port, out, log)
            deadline = time.monotonic() + 10
            while len(files(out)) < before + rng.randint(1, 3) and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.3))
            assert proc.poll() is None, log.read_text()
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            positions(out)  # no partial file under a final name
        assert stop(server) == 0
        server, port = serve(db, False, log)  # the same log, no new records
        con = sqlite3.connect(db)
        expected = [p for (p,) in con.execute("SELECT position FROM records ORDER BY position")]
        con.close()
        assert len(expected) > 1000
        proc = ingest(port, out, log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            fs = files(out)
            if fs and fs[-1].name.endswith(f"-{expected[-1]:020d}.parquet"):
                break
            time.sleep(0.05)
        assert stop(proc) == 0, log.read_text()
        got = positions(out)
        assert got == expected  # every position once, in order, across the kills
    finally:
        if server.poll() is None:
            stop(server)


def test_ingest_errors_are_one_line_with_exit_codes(tmp_path: Path) -> None:
    r = subprocess.run([*CLI, "ingest"], capture_output=True, timeout=20)
    assert r.returncode == 2
    r = subprocess.run(
        [*CLI, "ingest", "--dir", str(tmp_path), "--url", "http://x"],
        capture_output=True,
        timeout=20,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 2
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("iotcommute ingest: "), lines
