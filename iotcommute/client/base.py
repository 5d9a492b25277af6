"""ClientBase: what WebSocket (sync.py) and AsyncWebSocket (aio.py) share, written once:
the constructor and its documentation (shown by help()), state, subscriptions, acks and
the encoding of publishes. The callback attributes come from options.Owner.
"""

from __future__ import annotations

import functools
import inspect
import os
import ssl as ssl_module
import time
from collections.abc import Callable
from typing import Any, Concatenate, NamedTuple, ParamSpec, TypeVar

from .. import payload
from ..exceptions import InputError, OperationTimeout
from .checkpoint import Checkpoint
from .engine import Engine
from .options import Options, Owner
from .session import OP_TEXT, Session, devices_arg

__all__ = ["ClientBase", "Publish", "takes"]

P = ParamSpec("P")
A = TypeVar("A")
R = TypeVar("R")


def takes(
    spec: Callable[Concatenate[Any, P], A],
) -> Callable[[Callable[[Any, A], R]], Callable[Concatenate[Any, P], R]]:
    """Decorate a WebSocket/AsyncWebSocket method `impl(self, request)` so it is called as
    `spec(self, ...)` is: one signature and docstring, written once in ClientBase, for the
    sync and the asyncio method (help() and type checkers show spec's). spec checks the
    arguments and makes the request; for an async impl that happens when the call is
    awaited, as in any coroutine."""

    def decorate(impl: Callable[[Any, A], R]) -> Callable[Concatenate[Any, P], R]:
        method: Any
        if inspect.iscoroutinefunction(impl):

            async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
                return await impl(self, spec(self, *args, **kwargs))

        else:

            def method(self: Any, *args: Any, **kwargs: Any) -> Any:
                return impl(self, spec(self, *args, **kwargs))

        functools.update_wrapper(method, spec)  # the docstring, and __wrapped__
        method.__name__, method.__qualname__ = impl.__name__, impl.__qualname__
        method.__module__ = impl.__module__
        returns = inspect.signature(impl).return_annotation
        method.__signature__ = inspect.signature(spec).replace(return_annotation=returns)
        result: Callable[Concatenate[Any, P], R] = method
        return result

    return decorate


class Publish(NamedTuple):
    """A publish() call, checked and encoded once (ClientBase._publish_request)."""

    pid: str
    frame: bytes
    wait: bool
    timeout: float

    def timed_out(self) -> OperationTimeout:
        return OperationTimeout(f"publish {self.pid} not acknowledged within {self.timeout}s")


class ClientBase(Owner):
    """Streaming client of the IOT commute service: ticks in, publishes and commands out.

    Callbacks (attributes, None by default; each gets the client LAST; one that raises is
    logged and passed to on_error, the connection lives on):

        on_connect(ws)                  the connection is open (again)
        on_tick(tick, ws)               one tick dict: type, device, position, ts, data
        on_ticks(ticks, ws)             the new ticks of one binary batch, or up to 32 JSON
                                        ticks of one read, after on_tick ran for each
        on_tick_rows(fields, rows, ws)  lean form: data field names and one tuple
                                        (device, position, ts, *values) per new tick
        on_batch(batch, ws)             columnar form (iotcommute.payload.columnar.TickBatch):
                                        the new ticks of one binary batch, or a run of JSON
                                        ticks of one shape; when set, ticks go to it alone
                                        (a tick no batch can hold goes to on_ticks/on_tick
                                        if set, else to on_error); the batch owns its bytes
        on_message(message, ws)         every text (str) / binary (bytes) message as received
        on_command(command, ws)         a command for this device: answer with ws.ack()
        on_close(code, reason, ws)      a connection ended (1006: without a close frame)
        on_error(error, ws)             an error (typed, from iotcommute.exceptions)
        on_reconnect(attempt, ws)       a retry is scheduled (attempt 1, 2, ...)
        on_noreconnect(ws)              the client gave up (fatal error, retries exhausted)
        on_gap(gap, ws)                 records were lost (trimmed): dict with from, to, missed
        on_assign(partitions, ws)       (group) the member now owns these partitions (list of
                                        ints); their ticks follow from the group's position
        on_revoke(partitions, ws)       (group) the member no longer owns these partitions (a
                                        rebalance, or the connection was lost); no tick of
                                        them is delivered after this call

    Delivery: every record of the subscribed devices arrives once and in order across any
    number of reconnects, or is covered by exactly one on_gap.

    Consumer group (group="name", docs/protocol.md section 14.3): the members of a group
    share the log's partitions; each partition is owned by one member at a time. The
    library commits, per partition, what the callbacks returned for (or, with `async for`,
    each tick once the next one is asked for), every 100 ticks or once a second, and
    before a graceful close; a partition revoked by a rebalance is handed back with one last
    commit after on_revoke returns (group_commit="manual": what ws.commit() said, which
    on_revoke may still call). At-least-once: a record is delivered again (to the next
    owner) only if it came after the last commit of a member that died.

    Parameters (all but the first three are keywords):

        device_key, device_id   device credentials (or api_key + access_token)
        role                    "device" or "client"; default: "device" with a device key,
                                "client" with an access token
        url                     ws:// or wss:// URL; default: $IOTCOMMUTE_URL or
                                ws://127.0.0.1:8765 (the stream path /v1/stream is added)
        access_token, api_key   from the REST login flow (client role)
        ssl                     ssl.SSLContext; default: verifying (certifi) for wss://
        headers                 extra handshake headers (dict); default none
        proxy                   "http://[user:pass@]host:port" HTTP CONNECT proxy; default none
        ping_interval           seconds between our pings; default 20.0 (None: no pings)
        ping_timeout            seconds; the connection is dead when no frame of any kind
                                arrived for ping_interval + ping_timeout; default 20.0
        idle_timeout            seconds without any data before reconnecting; default None
        open_timeout            seconds for each connect + handshake attempt; default 10.0
        close_timeout           seconds to wait for the close handshake; default 5.0
        reconnect               reconnect after a drop; default True
        max_reconnect_delay     seconds, cap of the jittered exponential backoff; default 30.0
        max_retries             retries in a row before giving up; default None (forever)
        first_connect_retries   retries before the first successful connection; default 3
                                (a wrong URL fails fast with a typed error); None: wait
                                for the server forever
        max_size                bytes, largest message accepted; default 4194304 (4 MiB)
        compression             offer permessage-deflate; default True
        format                  "json" or "binary" (compact tick batches); default "json"
        subscribe               devices to follow on connect: "*" (the fleet, the default
                                for both roles), a list of ids, or None (no telemetry, e.g.
                                a device that only takes commands)
        checkpoint              file keeping the last position a callback returned for (or
                                the iterator handed out): a restarted process resumes after
                                it; default None
        offline_queue           messages kept while disconnected (and publishes kept until
                                acknowledged); default 10000; 0: raise NotConnectedError
        group                   consumer group to join (1-64 of A-Z a-z 0-9 _ -; role
                                "client"; the server's log must be shared: serve --log
                                nats://...); default None (a plain subscription)
        group_commit            (group) "auto": commit what the callbacks returned for (or
                                the iterator handed out); "manual": only what
                                ws.commit() says was stored (a sink that commits in
                                rolls); default "auto"
        loop_factory            (WebSocket) event loop factory; default uvloop when installed
        max_queue               (AsyncWebSocket) ticks queued for `async for` before the
                                socket is paused; default 10000
        iterate                 (AsyncWebSocket) queue ticks for `async for`; default True
    """

    def __init__(
        self,
        device_key: str | None = None,
        device_id: str | None = None,
        role: str | None = None,
        *,
        url: str | None = None,
        access_token: str | None = None,
        api_key: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        headers: dict[str, str] | None = None,
        proxy: str | None = None,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        idle_timeout: float | None = None,
        open_timeout: float = 10.0,
        close_timeout: float = 5.0,
        reconnect: bool = True,
        max_reconnect_delay: float = 30.0,
        max_retries: int | None = None,
        first_connect_retries: int | None = 3,
        max_size: int = 4 * 2**20,
        compression: bool = True,
        format: str = "json",
        subscribe: str | list[str] | None = "*",
        checkpoint: str | os.PathLike[str] | None = None,
        offline_queue: int = 10000,
        group: str | None = None,
        group_commit: str = "auto",
        loop_factory: Callable[[], Any] | None = None,
        max_queue: int = 10000,
        iterate: bool = True,
    ) -> None:
        self._opts = Options(
            device_key, device_id, role, url or "", access_token, api_key, ssl, headers,
            proxy, ping_interval, ping_timeout, idle_timeout, open_timeout, close_timeout,
            reconnect, max_reconnect_delay, max_retries, first_connect_retries, max_size,
            compression, format, subscribe, checkpoint, offline_queue, group, group_commit,
        )  # fmt: skip
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        self._loop_factory = loop_factory
        self._max_queue, self._iterate = max_queue, iterate
        saved = Checkpoint(checkpoint).load() if checkpoint is not None else None
        self._session = Session(
            self,
            format=format,
            subscribe=subscribe,
            position=saved[0] if saved else None,
            log_id=saved[1] if saved else None,
            offline_queue=offline_queue,
            group=group,
            group_manual=group_commit == "manual",
        )
        self._engine = Engine(self._opts, self, self._session)
        self._post_init()

    def _post_init(self) -> None:
        """Per-API state (WebSocket: thread; AsyncWebSocket: queue)."""

    def __repr__(self) -> str:
        # never the key or token: only where we connect and as whom
        state = "connected" if self._engine.connected else "disconnected"
        o = self._opts
        return (
            f"<{type(self).__name__} url={o.url!r} device={o.device_id!r} role={o.role!r} {state}>"
        )

    @property
    def url(self) -> str:
        return self._opts.url

    @property
    def position(self) -> int:
        """The resume point: every record up to here was passed (0: none yet)."""
        return self._session.position

    @property
    def log_id(self) -> str | None:
        """The identity of the server's log (``welcome.log``), None before the first
        welcome: positions of one log mean nothing in another."""
        return self._session.log_id

    @property
    def subscription(self) -> str | list[str] | None:
        """What the client follows, as last asked ("*", device ids, or None)."""
        return self._session.subscription.public()

    def is_connected(self) -> bool:
        return self._engine.connected

    def stats(self) -> dict[str, Any]:
        """Counters: messages/bytes in/out, reconnects, position, last-message age, rtt..."""
        return self._engine.stats()

    def subscribe(self, devices: str | list[str], from_position: int | None = None) -> None:
        """Follow devices ("*" = the fleet) from the cursor, or re-position it after
        `from_position` (the devices added get their records after it; no repeats)."""
        self._session.refuse_in_group("subscribe")
        devices_arg(devices)
        if from_position is not None and (
            isinstance(from_position, bool) or not isinstance(from_position, int)
        ):
            raise InputError("from_position must be None or an integer >= 0")
        self._engine.call(self._loop_request, "subscribe", devices, from_position)

    def unsubscribe(self, devices: str | list[str]) -> None:
        """Stop following devices ("*" = all); survives reconnects like subscribe."""
        self._session.refuse_in_group("unsubscribe")
        devices_arg(devices)
        self._engine.call(self._loop_request, "unsubscribe", devices, None)

    def commit(self, positions: dict[int, int]) -> None:
        """(group, group_commit="manual") Every tick of each partition up to its position
        ({partition: position}) is stored: the group may resume after it. Positions of
        partitions not owned any more are ignored (their next owner starts after the last
        commit the server accepted). Thread-safe; the commit is sent at once, or after the
        one in flight."""
        g = self._session.group
        if g is None or not g.manual:
            raise InputError('commit() is for a group member made with group_commit="manual"')
        parts = dict(positions)
        for p, pos in parts.items():
            if type(p) is not int or type(pos) is not int or p < 0 or pos < 0:
                raise InputError("commit() takes {partition: position} of integers >= 0")
        self._engine.call(self._loop_commit, parts)

    def partition(self, device: str) -> int:
        """(group) The partition of a device's records; -1 before the first assign."""
        g = self._session.group
        return -1 if g is None else g.partition_of(device)

    def _loop_commit(self, parts: dict[int, int]) -> None:
        self._session.group_done(parts)
        self._engine.write_session()

    def _loop_request(self, kind: str, devices: Any, frm: int | None) -> None:
        if kind == "subscribe":
            self._session.subscribe(devices, frm)
        else:
            self._session.unsubscribe(devices)
        self._engine.write_session()

    def ack(
        self, command_id: str | int, ok: bool = True, data: Any = None, error: str | None = None
    ) -> None:
        """Answer a command received in on_command (device role)."""
        msg: dict[str, Any] = {"type": "ack", "id": command_id, "ok": ok}
        if data is not None:
            msg["data"] = data
        if error is not None:
            msg["error"] = error
        self._engine.send(OP_TEXT, payload.dumps(msg), offline=False)

    def _publish_request(
        self,
        data: dict[str, Any],
        *,
        ts: float | None = None,
        id: str | int | None = None,
        wait: bool = False,
        timeout: float = 10.0,
    ) -> Publish:
        """Publish one reading of this device (device role); kept until the server's
        `published` arrives and re-sent after a reconnect until then.

        wait=True waits for that answer (WebSocket: blocks; AsyncWebSocket: awaits) and
        returns the position the record got; OperationTimeout after `timeout` seconds
        (WebSocket: RuntimeError inside a callback, where it would deadlock). While
        disconnected the publish waits in the offline queue; when that is full
        NotConnectedError is raised. Data that is not a JSON object, or holds integers
        beyond 64 bits, raises InputError. `ts` (seconds) defaults to now; `id` to a fresh
        publish id.
        """
        pid, frame = self._session.encode_publish(data, ts, id)
        return Publish(pid, frame, wait, timeout)

    def _encode_ticks(self, ticks: list[dict[str, Any]]) -> list[bytes]:
        """Binary batch frames for a device's readings (unacknowledged: no ids in batches)."""
        now = time.time()
        dev = self._opts.device_id or ""
        full = []
        for t in ticks:
            if not isinstance(t, dict) or not isinstance(t.get("data"), dict) or not t["data"]:
                raise InputError('each reading needs a non-empty "data" dict')
            ts = t.get("ts") or now
            full.append({"type": "tick", "device": t.get("device") or dev, "position": 0,
                         "ts": ts, "data": t["data"]})  # fmt: skip
        return [bytes(b) for b in payload.encode_batches(full)]

    def _drop_connection(self) -> None:
        """Cut the TCP connection without a close handshake (demo/tests: simulate a cut)."""
        self._engine.call(self._engine.abort)
