"""`iotcommute demo` as a user sees it in an 80-column terminal (a real pseudo-terminal)."""

from __future__ import annotations

import os
import re
import select
import struct
import subprocess
import sys
import time

import pytest

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX"),
]

COLUMNS = 80


def _run_in_pty(args: list[str], columns: int, deadline: float) -> tuple[int, str]:
    """Run a command with stdout and stderr on one pty of the given width; all its output."""
    import fcntl
    import pty
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks: list[bytes] = []
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the pty
                break
            if not data:
                break
            chunks.append(data)
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    # the pty turns \n into \r\n; undo that so a bare \r is a status-line rewrite
    return rc, b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")


def test_demo_fits_80_columns_and_keeps_log_lines_off_the_status_line() -> None:
    rc, out = _run_in_pty(
        [
            sys.executable,
            "-m",
            "iotcommute",
            "demo",
            "--seconds",
            "4",
            "--devices",
            "5",
            "--rate",
            "100",
        ],
        COLUMNS,
        time.monotonic() + 45,
    )
    assert rc == 0, out
    assert "lossless resume  yes" in out and "missing 0" in out
    assert "the demo cuts the connection" in out
    assert "cut (expected): " in out  # the cut's log record, routed through the demo
    status = re.compile(r"\d+\.\ds\s+[\d,]+/s\s+[\d,]+ ticks\s+latency")
    log_line = re.compile(r"^  (cut \(expected\)|warning|error|critical): ")
    rows = [_visible(line) for line in out.split("\n")]
    for line in out.split("\n"):
        for segment in line.split("\r"):  # each write between carriage returns
            assert len(segment) <= COLUMNS, repr(segment)
    assert sum(1 for row in rows if status.search(row)) >= 1, out
    logs = [row for row in rows if log_line.match(row)]
    assert any(row.startswith("  cut (expected): ") for row in logs), out
    for row in logs:  # a log record has its row to itself: no status text left beside it
        assert not status.search(row), repr(row)
    assert "Traceback" not in out


def _visible(line: str) -> str:
    """What a terminal row shows after the writes of one line: \r returns to column 0 and
    later characters overwrite earlier ones."""
    row: list[str] = []
    col = 0
    for ch in line:
        if ch == "\r":
            col = 0
            continue
        if col < len(row):
            row[col] = ch
        else:
            row.append(ch)
        col += 1
    return "".join(row).rstrip()
