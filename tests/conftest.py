"""Shared fixtures: the reference server in a background thread.

def test_x(ref_server):              # demo registry, in-memory log, 127.0.0.1:<free port>
    ref_server.url                   # ws://127.0.0.1:PORT  (the stream is at /v1/stream)
    ref_server.ws_url                # ws://127.0.0.1:PORT/v1/stream
    ref_server.http_url              # http://127.0.0.1:PORT
    ref_server.hub                   # Hub: registry, log, online(), send_command()
    ref_server.call(fn, *args)       # run fn on the server loop (the hub is not thread-safe)
    ref_server.restart(**overrides)  # same port; same SQLite file if one was given
    ref_server.stop()

def test_y(ref_server_factory, tmp_path):
    srv = ref_server_factory(db=tmp_path / "log.sqlite", retain=1000, simulate=5, rate=20)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from iotcommute.server import ServerThread


@pytest.fixture
def ref_server_factory() -> Iterator[Callable[..., ServerThread]]:
    """Start reference servers with any ReferenceServer keyword; all are stopped afterwards."""
    servers: list[ServerThread] = []

    def make(**kwargs: Any) -> ServerThread:
        srv = ServerThread("127.0.0.1", 0, **kwargs).start()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.stop()


@pytest.fixture
def ref_server(ref_server_factory: Callable[..., ServerThread]) -> ServerThread:
    """A fresh reference server: demo registry (README device, demo app/user, sim-0001..0100)."""
    return ref_server_factory()


@pytest.fixture
def ref_server_db(ref_server_factory: Callable[..., ServerThread], tmp_path: Path) -> ServerThread:
    """A reference server with its log in SQLite (tmp_path / "log.sqlite"); survives restart()."""
    return ref_server_factory(db=tmp_path / "log.sqlite")
