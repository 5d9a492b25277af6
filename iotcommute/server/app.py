"""`ReferenceServer` (asyncio) and `ServerThread` (the same server on its own loop, sync use)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .connection import ServerConnection
from .hub import Hub
from .log import Log
from .registry import Registry, demo_registry, ensure_sim_devices, sim_device_id
from .simulate import Firehose, register_virtual, run_simulator
from .store import LogStore

logger = logging.getLogger("iotcommute.server")
T = TypeVar("T")


@dataclass
class ServerConfig:
    """Limits and timers; every one is a constructor keyword of ReferenceServer."""

    max_size: int = 2**20  # inbound message limit (close 1009 above it)
    max_head: int = 16 * 1024  # HTTP request head limit (431 above it)
    max_body: int = 2**20  # REST request body limit (413 above it)
    handshake_timeout: float = 10.0
    close_timeout: float = 2.0  # wait this long for the peer's close frame after ours
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    write_high: int = 1024 * 1024  # pause a cursor above this many buffered bytes
    write_low: int = 256 * 1024  # ... and resume below this
    write_batch: int = 100  # records per write (the buffer can exceed write_high by one write)
    stuck_timeout: float = 60.0  # drop a peer whose buffer stays above write_high this long
    max_rate: float = 10_000.0  # inbound messages per second per connection (0 = unlimited)
    max_burst: int = 20_000
    track_buffer: bool = False  # record the largest write buffer seen (tests)


class ReferenceServer:
    """The reference IOT commute server: HTTP + WebSocket on one port.

    The log is in memory unless `db` (a SQLite file: `SqliteStore`) or `store` (any
    `iotcommute.server.store.LogStore`, e.g. a JetStream one) makes it durable.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8765,
        *,
        registry: Registry | None = None,
        db: str | Path | None = None,
        store: LogStore | None = None,
        retain: int = 100_000,
        simulate: int = 0,
        rate: float = 1.0,
        firehose: bool = False,
        command_timeout: float = 10.0,
        log_url: str | None = None,
        partitions: int = 1,
        group_session_timeout: float = 10.0,
        **limits: Any,
    ) -> None:
        self.host = host
        self._port = port
        self.config = ServerConfig(**limits)
        if registry is None:
            registry = demo_registry(max(100, simulate))
        elif simulate or firehose:
            ensure_sim_devices(registry, max(simulate, 1))
        self.registry = registry
        self.db = db
        self.retain = retain
        self.simulate = simulate
        self.sim_rate = rate
        self.firehose = firehose
        self.command_timeout = command_timeout
        # [jetstream hook, issue 15] `--log nats://...`: a log shared by server processes
        self.log_url = log_url
        if partitions < 1:
            raise ValueError("partitions must be >= 1")
        self.partitions = partitions
        self.group_session_timeout = group_session_timeout
        if sum(x is not None for x in (store, db, log_url)) > 1:
            raise ValueError("give one of db (SQLite), store or log_url")
        log: Log
        if log_url is not None:
            from .cluster import shared_log

            log = shared_log(log_url, retain)
        else:
            log = Log(retain, db, store=store)
        self.hub: Hub = Hub(registry, log, command_timeout=command_timeout)
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def port(self) -> int:
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._port

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        hub = self.hub
        await hub.log.open()
        if self.log_url is not None:  # [jetstream hook]
            from .cluster import start_cluster

            await start_cluster(self)
        if self.simulate:
            sims = register_virtual(hub, self.simulate)
            if not self.firehose:
                self._tasks.append(loop.create_task(run_simulator(hub, sims, self.sim_rate)))
        if self.firehose:
            n = max(self.simulate, 1)
            fh = Firehose(hub.log, [sim_device_id(i) for i in range(1, n + 1)])
            hub.refill = fh.refill
            hub.binary_batch = fh.binary_batch
        self._server = await loop.create_server(
            lambda: ServerConnection(self), self.host, self._port, reuse_address=True, backlog=512
        )
        self._port = self.port
        logger.info("serving on %s (log retains %d records)", self.url, self.retain)

    async def stop(self, close_timeout: float = 2.0) -> None:
        """Close 1001 to every peer, wait a little for them to go, flush and close the store."""
        if self._server is not None:
            self._server.close()
        for t in self._tasks:
            t.cancel()
        self._tasks.clear()
        conns = list(self.hub.connections)
        for c in conns:
            if c.ws is not None:
                c.close(1001, "server shutting down", wait=True)
            else:
                c.abort()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + close_timeout
        while self.hub.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for c in list(self.hub.connections):
            c.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
        if self.hub.groups is not None:  # [jetstream hook]
            await self.hub.groups.close()
        if self.hub.cluster is not None:
            await self.hub.cluster.close()
        await self.hub.log.close()
        logger.info("server stopped")

    async def serve_forever(self) -> None:
        await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    def __repr__(self) -> str:
        return f"ReferenceServer({self.url}, {self.hub!r})"


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when available (it is a dependency on CPython/Unix), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class ServerThread:
    """A ReferenceServer on its own event loop in a daemon thread (for sync tests and demos).

    `restart()` brings up a fresh server on the same port (and the same SQLite file, if any),
    which is how tests check resume across a server restart.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> None:
        self.host = host
        self._port = port
        self.kwargs = kwargs
        self.server: ReferenceServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> ServerThread:
        started = threading.Event()
        error: list[BaseException] = []

        def main() -> None:
            loop = self.loop = new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                self.server = ReferenceServer(self.host, self._port, **self.kwargs)
                loop.run_until_complete(self.server.start())
                self._port = self.server.port
            except BaseException as exc:
                error.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=main, name="iotcommute-ref-server", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise RuntimeError("the reference server did not start in time")
        if error:
            raise error[0]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.loop is None or self._thread is None or self.server is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop)
        try:
            fut.result(timeout)
        finally:
            loop = self.loop
            loop.call_soon_threadsafe(self._cancel_all_and_stop, loop)
            self._thread.join(timeout)
            self._thread = None
            self.loop = None

    @staticmethod
    def _cancel_all_and_stop(loop: asyncio.AbstractEventLoop) -> None:
        for t in asyncio.all_tasks(loop):
            t.cancel()
        loop.call_soon(loop.stop)

    def restart(self, **overrides: Any) -> ServerThread:
        """Stop, then start a new server on the same port; overrides change constructor args."""
        self.stop()
        self.kwargs.update(overrides)
        return self.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run a coroutine on the server's loop and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 10.0) -> T:
        """Call a plain function on the server's loop (the hub is not thread-safe)."""

        async def wrapper() -> T:
            return fn(*args)

        return self.run(wrapper(), timeout)

    @property
    def hub(self) -> Hub:
        assert self.server is not None
        return self.server.hub

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"{self.url}/v1/stream"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
