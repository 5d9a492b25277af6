"""Several server processes on one JetStream log (issue 15): `SharedLog` and `CommandRouter`.

Stateless server processes: every process appends to the same stream and every process
follows it, so a device may publish to any process and a client may (re)connect to any
process and resume from its position (positions are stream sequences, the same
everywhere). What a process keeps is only a cache (the retained window).

- `SharedLog` is the server's `Log` whose positions come from the engine: an append is
  published without an expected sequence (other processes append too), JetStream assigns
  the sequence, and the record reaches this process's window through its follower like
  everyone else's records. The publisher's `published` answer is sent once the PubAck is
  in (durable); local subscribers see the record once the follower delivered it (durable
  too). A publish with an id carries ``Nats-Msg-Id`` derived from (device, id, index), so
  a publish re-sent to *another* process within the stream's duplicate window is stored
  once and answered with the original positions; beyond that window the retained window's
  id index answers (as in the single-process log).
- `CommandRouter` carries commands to devices connected to other processes over NATS
  request/reply: the process where a device is connected subscribes to
  ``<log>.cmd.<hex(device id)>``; a process that has no connection for the device sends
  the command there and relays the ack (no responder = "device offline").
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .log import Log
from .store.base import Entry, StoreError
from .wire import dumps, loads

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from .app import ReferenceServer
    from .connection import ServerConnection
    from .hub import AckCallback, Hub
    from .store.jetstream import Follower, JetStreamStore

logger = logging.getLogger("iotcommute.server.cluster")

#: done(error, first, last, duplicate): a publish is durable (error None) or was not stored
Published = Callable[[BaseException | None, int, int, bool], None]


class _Append:
    __slots__ = ("device", "done", "items", "pid")

    def __init__(
        self,
        device: str,
        items: Sequence[tuple[float, dict[str, Any], bytes | None]],
        pid: str | None,
        done: Published | None,
    ) -> None:
        self.device = device
        self.items = items
        self.pid = pid
        self.done = done


class SharedLog(Log):
    """A `Log` over a JetStream stream shared by several server processes.

    Use `publish()` (positions arrive with the PubAck); `append()`/`append_many()` enqueue
    without telling the positions (they return (0, 0)): for producers that need no answer
    (binary tick batches, the simulator).
    """

    shared = True

    def __init__(
        self, store: JetStreamStore, retain: int = 100_000, *, max_pending: int = 100_000
    ) -> None:
        super().__init__(retain, store=store, max_pending=max_pending)
        self.js_store = store
        self._queue: list[_Append] = []
        self._queued = 0  # records in _queue and in the batch being written
        self._sender: asyncio.Task[None] | None = None
        self._follower: Follower | None = None
        self._nonce = secrets.token_hex(6)
        self._n = 0

    async def open(self) -> None:
        if self.opened:
            return
        await super().open()
        for r in self.read(0, None, len(self)):
            if r.pid is not None:
                self._note_pid(r.device, r.pid, r.position)
        self._follower = await self.js_store.follow(self.partition, self._last, self._follow)

    def _follow(self, entries: list[Entry]) -> None:
        """Stored records, in sequence order, from every server process."""
        for e in entries:
            if e.pid is not None:
                self._note_pid(e.device, e.pid, e.offset)
        self._add_entries(entries)

    def _note_pid(self, device: str, pid: str, position: int) -> None:
        got = self._ids.get((device, pid))
        if got is None:
            self._remember(device, pid, position, position)
        else:
            self._ids[(device, pid)] = (min(got[0], position), max(got[1], position))

    # -- writing -----------------------------------------------------------------------
    def pending(self) -> int:
        return self._queued

    def append_many(
        self,
        device: str,
        items: Sequence[tuple[float, dict[str, Any], bytes | None]],
        pid: str | None = None,
    ) -> tuple[int, int]:
        self._enqueue(_Append(device, items, pid, None))
        return 0, 0

    def publish(
        self,
        device: str,
        items: Sequence[tuple[float, dict[str, Any], bytes | None]],
        pid: str | None,
        done: Published,
    ) -> None:
        """Append atomically as seen by the publisher: `done` is called once, with the
        positions the engine gave (the original ones for a duplicate) or the error."""
        if pid is not None:
            found = self.find_publish(device, pid)
            if found is not None:
                done(None, found[0], found[1], True)
                return
        self._enqueue(_Append(device, items, pid, done))

    def _enqueue(self, a: _Append) -> None:
        if not a.items:
            raise ValueError("nothing to append")
        if not self.js_store.connected():
            raise StoreError("the log store is unavailable")
        if self._queued + len(a.items) > self.max_pending:
            raise StoreError("the log store is too far behind")
        self._queue.append(a)
        self._queued += len(a.items)
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_loop())

    def _msg_id(self, a: _Append, i: int) -> str:
        if a.pid is not None:
            key = hashlib.sha256(f"{a.device}\0{a.pid}".encode()).hexdigest()[:24]
            return f"{key}.{i}"
        self._n += 1
        return f"{self._nonce}.{self._n}"

    async def _send_loop(self) -> None:
        """Group commit: everything queued meanwhile goes out in one batch of publishes."""
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                entries: list[tuple[Entry, str]] = []
                for a in batch:
                    for i, (ts, data, dj) in enumerate(a.items):
                        djson = dj if dj is not None else dumps(data)
                        entries.append((Entry(0, a.device, ts, djson, a.pid), self._msg_id(a, i)))
                try:
                    acks = await self.js_store.append_assigned(self.partition, entries)
                except Exception as exc:
                    logger.error("log store refused %d records: %s", len(entries), exc)
                    err = exc if isinstance(exc, StoreError) else StoreError(str(exc))
                    for a in batch:
                        self._queued -= len(a.items)
                        if a.done is not None:
                            self._call_done(a.done, err, 0, 0, False)
                    continue
                k = 0
                for a in batch:
                    n = len(a.items)
                    part = acks[k : k + n]
                    k += n
                    self._queued -= n
                    seqs = [s for s, _ in part]
                    dup = all(d for _, d in part)
                    if a.pid is not None:
                        for s in seqs:
                            self._note_pid(a.device, a.pid, s)
                    if a.done is not None:
                        self._call_done(a.done, None, min(seqs), max(seqs), dup)
        finally:
            self._sender = None

    @staticmethod
    def _call_done(done: Published, err: BaseException | None, a: int, b: int, dup: bool) -> None:
        try:
            done(err, a, b, dup)
        except Exception:
            logger.exception("publish callback failed")

    async def drain(self) -> None:
        while self._sender is not None:
            await asyncio.shield(self._sender)

    async def close(self) -> None:
        await self.drain()
        if self._follower is not None:
            await self._follower.stop()
            self._follower = None
        await super().close()


def publish(
    log: Log,
    device: str,
    items: Sequence[tuple[float, dict[str, Any], bytes | None]],
    pid: str | None,
    done: Published,
) -> None:
    """Append a publish to any Log and call `done(error, first, last, duplicate)` once it is
    durable: one entry point for the connection's publish handler, whichever log it has.

    Raises StoreError at once when the log refuses appends (the store is away)."""
    if isinstance(log, SharedLog):
        log.publish(device, items, pid, done)
        return
    if pid is not None:
        found = log.find_publish(device, pid)
        if found is not None:
            first0, last0 = found
            log.when_durable(last0, lambda err: done(err, first0, last0, True))
            return
    first, last = log.append_many(device, items, pid)
    log.when_durable(last, lambda err: done(err, first, last, False))


def publish_shared(
    conn: ServerConnection,
    device: str,
    items: Sequence[tuple[float, dict[str, Any], bytes | None]],
    pid: str | None,
    msg_id: Any,
    batch: bool,
) -> None:
    """A device's validated JSON publish on a shared log: `published` (with `first` for a
    batch, `duplicate` for a re-sent id) once the engine stored it, `error` `unavailable`
    when it could not (nothing stored: re-send it)."""

    def done(err: BaseException | None, first: int, last: int, dup: bool) -> None:
        if conn.closed:
            return
        if err is not None:
            conn.send_error("unavailable", "the log store is unavailable; retry later", msg_id)
        elif msg_id is not None:
            ans: dict[str, Any] = {"type": "published", "id": msg_id, "position": last}
            if batch:
                ans["first"] = first
            if dup:
                ans["duplicate"] = True
            conn.send_json(ans)

    try:
        publish(conn.hub.log, device, items, pid, done)
    except StoreError:
        conn.send_error("unavailable", "the log store is unavailable; retry later", msg_id)


# -- commands across processes -------------------------------------------------------------
def _token(device_id: str) -> str:
    return device_id.encode().hex()


class CommandRouter:
    """Commands for devices connected to another server process, over NATS request/reply."""

    def __init__(self, hub: Hub, store: JetStreamStore) -> None:
        self.hub = hub
        self.store = store
        self.prefix = f"{store.name}.cmd."
        self._subs: dict[str, Subscription] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # serving side: devices connected here
    def device_online(self, device_id: str) -> None:
        if device_id not in self._subs:
            self._subs[device_id] = None  # type: ignore[assignment]  # being subscribed
            self._spawn(self._subscribe(device_id))

    def device_offline(self, device_id: str) -> None:
        sub = self._subs.pop(device_id, None)
        if sub is not None:
            self._spawn(sub.unsubscribe())

    async def _subscribe(self, device_id: str) -> None:
        try:
            await self.store.connect()
            nc = self.store.nc
            assert nc is not None
            sub = await nc.subscribe(
                self.prefix + _token(device_id), queue="iotc", cb=self._on_request
            )
        except Exception as exc:
            logger.warning("cannot take commands for %s from other processes: %s", device_id, exc)
            self._subs.pop(device_id, None)
            return
        if device_id in self._subs:
            self._subs[device_id] = sub
        else:  # went offline meanwhile
            await sub.unsubscribe()

    async def _on_request(self, msg: Msg) -> None:
        try:
            req = loads(msg.data)
            device = bytes.fromhex(msg.subject[len(self.prefix) :]).decode()
        except ValueError:
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()

        def answered(ack: dict[str, Any]) -> None:
            if not fut.done():
                fut.set_result(ack)

        try:
            self.hub.route_command(
                device,
                req["id"],
                req.get("data", {}),
                str(req.get("from", "")),
                answered,
                timeout=float(req.get("timeout", self.hub.command_timeout)),
                local_only=True,
            )
        except LookupError:
            answered({"type": "ack", "id": req["id"], "ok": False, "error": "device offline"})
        except KeyError:
            answered({"type": "ack", "id": req["id"], "ok": False, "error": "duplicate command id"})
        ack = await fut
        try:
            await msg.respond(dumps(ack))
        except Exception as exc:
            logger.info("could not relay an ack: %s", exc)

    # sending side: the device is not connected here
    def forward(
        self,
        device_id: str,
        cmd_id: str | int,
        data: Any,
        sender: str,
        callback: AckCallback,
        timeout: float,
    ) -> bool:
        """Send the command to the process that has the device; False when NATS is away
        (the caller then answers "device offline")."""
        if not self.store.connected():
            return False
        self._spawn(self._forward(device_id, cmd_id, data, sender, callback, timeout))
        return True

    async def _forward(
        self,
        device_id: str,
        cmd_id: str | int,
        data: Any,
        sender: str,
        callback: AckCallback,
        timeout: float,
    ) -> None:
        import nats.errors

        nc = self.store.nc
        req = {"id": cmd_id, "from": sender, "data": data, "timeout": timeout}
        t0 = time.monotonic()
        try:
            assert nc is not None
            msg = await nc.request(
                self.prefix + _token(device_id), dumps(req), timeout=timeout + 0.5
            )
            ack = loads(msg.data)
            if not isinstance(ack, dict):
                raise ValueError("bad ack")
        except nats.errors.NoRespondersError:
            ack = {"type": "ack", "id": cmd_id, "ok": False, "error": "device offline"}
        except (TimeoutError, nats.errors.TimeoutError):
            ack = {"type": "ack", "id": cmd_id, "ok": False, "error": "timeout"}
        except Exception as exc:
            logger.info("command to %s via NATS failed: %s", device_id, type(exc).__name__)
            ack = {"type": "ack", "id": cmd_id, "ok": False, "error": "device offline"}
        ack["id"] = cmd_id
        ack.setdefault("type", "ack")
        logger.debug("command to %s relayed in %.3f s", device_id, time.monotonic() - t0)
        try:
            callback(ack)
        except Exception:
            logger.exception("ack callback failed")

    async def close(self) -> None:
        for sub in list(self._subs.values()):
            if sub is not None:
                try:
                    await sub.unsubscribe()
                except Exception:
                    pass
        self._subs.clear()
        for t in list(self._tasks):
            t.cancel()


def shared_log(url: str, retain: int, **store_kwargs: Any) -> SharedLog:
    """The server's log for `--log nats://...` (the store connects when the log opens)."""
    from .store.jetstream import store_from_url

    return SharedLog(store_from_url(url, **store_kwargs), retain)


async def start_cluster(server: ReferenceServer) -> None:
    """Wire a server whose log is shared: commands across processes, consumer groups."""
    from .groups import GroupCoordinator

    log = server.hub.log
    assert isinstance(log, SharedLog)
    server.hub.cluster = CommandRouter(server.hub, log.js_store)
    groups = GroupCoordinator(
        log.js_store, server.partitions, session_timeout=server.group_session_timeout
    )
    await groups.start()
    server.hub.groups = groups
    logger.info("log shared through %r", log.js_store)
