"""What the `iotcommute ingest` process tests share."""

from __future__ import annotations

import signal
import subprocess


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM (a graceful stop: the buffered rows into a last file) and the exit code; a
    process that does not end in `timeout` seconds is killed and the test fails."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise
