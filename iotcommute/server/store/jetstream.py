"""The log in NATS JetStream: one stream per partition, position = stream sequence.

Why JetStream: its stream sequence is a contiguous integer per stream (our position), a
consumer can start at any sequence, trimming by limits shows up as a jump (our `gap`),
messages carry an id for duplicate detection, and streams replicate with RAFT. So the
engine does the hard parts (replication, durability, retention) and this module maps.

Mapping (documented in docs/protocol.md, "Scaling out"):

- partition p of log NAME is the stream ``NAME-p<p>`` bound to the subject ``NAME.log.<p>``;
- a record is one message: payload ``<JSON [device, ts, pid]>\\n<data JSON>`` (no headers
  to parse when reading), published with
  ``Nats-Msg-Id: <partition>:<offset>`` (a retried append of the same offset is stored
  once: JetStream answers with the original sequence and ``duplicate``) and
  ``Nats-Expected-Last-Sequence: <offset - 1>`` (the engine refuses a record whose
  sequence would not be the offset the server's `Log` chose, so position == sequence
  always holds, even if two server processes were wrongly given one partition to write);
- ``append`` publishes a whole batch asynchronously (many in flight) and returns only when
  every PubAck arrived and matched: durable before visible. A PubAck means the stream
  leader stored the record (and, with replicas, a quorum did);
- retention is the stream's own limits (``max_msgs``, ``max_age``; the server's `Log`
  window is only what it keeps in memory), so `trim` is a no-op and a reader that starts
  below the first retained sequence sees a jump, which the `Log` turns into a `gap`.

When the engine is away (connection lost, leader lost, no quorum) `append` raises
StoreError at once or within `append_timeout`, never buffering records without bound; the
nats client reconnects by itself and the `Log` calls `open()` again, which also reloads
any record of the failed batch that did reach the stream.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from ..wire import dumps, loads
from .base import Entry, LogStore, StoreError

logger = logging.getLogger("iotcommute.server.store.jetstream")

_TOKEN_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _check_name(name: str) -> str:
    if not name or not set(name) <= _TOKEN_OK or len(name) > 64:
        raise ValueError("a JetStream log name is 1-64 characters of A-Z a-z 0-9 _ -")
    return name


def encode_entry(e: Entry) -> bytes:
    """The stored message payload of an entry (no headers needed to read it back)."""
    return dumps([e.device, e.ts, e.pid]) + b"\n" + e.data


def decode_entry(offset: int, payload: bytes) -> Entry:
    head, _, data = payload.partition(b"\n")
    device, ts, pid = loads(head)
    return Entry(offset, str(device), float(ts), bytes(data), None if pid is None else str(pid))


def redact_url(url: str) -> str:
    """A NATS URL without user info (never log a token or password)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url.rpartition("@")[2]
    return scheme + "://" + rest.rpartition("@")[2]


def store_from_url(url: str, **kwargs: Any) -> JetStreamStore:
    """`--log nats://host:port[,host2:port2...][/name][?replicas=N]`: a JetStreamStore.

    Several comma-separated hosts are the seeds of one cluster; an optional path names the
    log (the stream prefix, default "iotcommute"); `replicas` is the stream's replication
    factor (default 1; 3 on a 3-node cluster)."""
    scheme, sep, rest = url.partition("://")
    if scheme not in ("nats", "tls") or not sep or not rest:
        raise ValueError("a JetStream log URL looks like nats://host:port[/name][?replicas=N]")
    rest, _, query = rest.partition("?")
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        if key != "replicas" or not value.isdigit() or not 1 <= int(value) <= 5:
            raise ValueError("the only JetStream log URL option is replicas=1..5")
        kwargs.setdefault("replicas", int(value))
    hosts, _, name = rest.partition("/")
    servers = [f"{scheme}://{h}" for h in hosts.split(",") if h]
    if name:
        kwargs.setdefault("name", name)
    return JetStreamStore(servers, **kwargs)


class JetStreamStore(LogStore):
    """A `LogStore` on a NATS JetStream server or cluster.

    `servers` is one ``nats://host:port`` URL or a list (a cluster's seeds). `replicas`
    is the stream's replication factor (1 for a single server, 3 for a 3-node cluster).
    `max_msgs`/`max_age` are the stream's retention limits per partition (None: unlimited
    count / age; the file store holds them). `append_timeout` bounds how long an append
    waits for its PubAcks before it is reported as "not known to be stored".
    """

    durable = True
    immediate = False
    keeps_records = True

    def __init__(
        self,
        servers: str | Sequence[str] = "nats://127.0.0.1:4222",
        *,
        name: str = "iotcommute",
        partitions: int = 1,
        replicas: int = 1,
        max_msgs: int | None = None,
        max_age: float | None = None,
        duplicate_window: float = 120.0,
        append_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        max_in_flight: int = 20_000,
    ) -> None:
        if partitions < 1:
            raise ValueError("partitions must be >= 1")
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        self.name = _check_name(name)
        self.partitions = partitions
        self.replicas = replicas
        self.max_msgs = max_msgs
        self.max_age = max_age
        self.duplicate_window = duplicate_window
        self.append_timeout = append_timeout
        self.connect_timeout = connect_timeout
        self.max_in_flight = max_in_flight
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self._last: dict[int, int] = {}
        self._log_id = ""
        self._closing = False
        self._pub: _Publisher | None = None
        #: (dis)connection events, for tests and the server's status
        self.disconnects = 0
        self.reconnects = 0

    # -- naming -------------------------------------------------------------------------
    def stream(self, partition: int) -> str:
        return f"{self.name}-p{partition}"

    def subject(self, partition: int) -> str:
        return f"{self.name}.log.{partition}"

    def __repr__(self) -> str:
        urls = ",".join(redact_url(u) for u in self.servers)
        return f"JetStreamStore({urls}, {self.name!r}, partitions={self.partitions})"

    # -- connection ---------------------------------------------------------------------
    async def _on_disconnected(self) -> None:
        if not self._closing:
            self.disconnects += 1
            logger.warning("NATS connection lost; appends are refused until it is back")

    async def _on_reconnected(self) -> None:
        self.reconnects += 1
        nc = self.nc
        where = redact_url(str(nc.connected_url.geturl())) if nc and nc.connected_url else "?"
        logger.warning("NATS connection re-established (%s)", where)

    async def _on_error(self, exc: Exception) -> None:
        if not self._closing:
            logger.info("NATS: %s: %s", type(exc).__name__, exc)

    async def connect(self) -> JetStreamContext:
        """The JetStream context, connecting first if needed (StoreError if impossible)."""
        if self.nc is not None and not self.nc.is_closed:
            assert self.js is not None
            return self.js
        try:
            # The first connection has a deadline (a server that cannot reach its log says so
            # and stops); once connected, the client reconnects forever by itself.
            connecting = nats.connect(
                servers=self.servers,
                name="iotcommute-server",
                connect_timeout=max(1, round(self.connect_timeout)),
                allow_reconnect=True,
                max_reconnect_attempts=-1,  # forever: the server must come back by itself
                reconnect_time_wait=0.25,
                ping_interval=5,
                max_outstanding_pings=2,
                pending_size=8 * 1024 * 1024,  # bounded client buffer while reconnecting
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                error_cb=self._on_error,
            )
            nc = await asyncio.wait_for(connecting, 3 * self.connect_timeout + 2)
        except Exception as exc:
            raise StoreError(f"cannot reach NATS: {type(exc).__name__}") from None
        self._closing = False
        self.nc = nc
        self.js = nc.jetstream(timeout=self.append_timeout)
        return self.js

    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def _ensure_stream(self, js: JetStreamContext, partition: int) -> api.StreamInfo:
        name = self.stream(partition)
        cfg = api.StreamConfig(
            name=name,
            subjects=[self.subject(partition)],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.OLD,
            num_replicas=self.replicas,
            max_msgs=self.max_msgs if self.max_msgs is not None else -1,
            max_age=self.max_age or 0,
            duplicate_window=self.duplicate_window,
        )
        try:
            return await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            pass
        try:
            return await js.add_stream(cfg)
        except nats.js.errors.BadRequestError:
            # created meanwhile by another server process: use it as it is
            return await js.stream_info(name)

    # -- LogStore -----------------------------------------------------------------------
    async def open(self) -> str:
        js = await self.connect()
        try:
            infos = [await self._ensure_stream(js, p) for p in range(self.partitions)]
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise StoreError(f"JetStream unavailable: {type(exc).__name__}") from None
        for p, info in enumerate(infos):
            self._last[p] = max(self._last.get(p, 0), int(info.state.last_seq))
        created = infos[0].created
        stamp = created.isoformat() if created is not None else "?"
        # The stream's creation time names this log: a deleted and re-created stream is a
        # new log (positions start again), which clients learn from welcome.log.
        self._log_id = hashlib.sha256(f"{self.name}@{stamp}".encode()).hexdigest()[:16]
        return self._log_id

    def last_offset(self, partition: int = 0) -> int:
        return self._last.get(partition, 0)

    async def first_offset(self, partition: int = 0) -> int:
        """The first retained sequence (last + 1 when empty), asked of the engine."""
        js = await self.connect()
        info = await js.stream_info(self.stream(partition))
        return int(info.state.first_seq) if info.state.messages else int(info.state.last_seq) + 1

    async def read(self, partition: int, after: int, limit: int) -> list[Entry]:
        js = await self.connect()
        try:
            info = await js.stream_info(self.stream(partition))
            last = int(info.state.last_seq)
            self._last[partition] = max(self._last.get(partition, 0), last)
            if after >= last or not info.state.messages:
                return []
            psub = await js.pull_subscribe(
                self.subject(partition),
                stream=self.stream(partition),
                config=api.ConsumerConfig(
                    deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=after + 1,
                    ack_policy=api.AckPolicy.NONE,
                    inactive_threshold=10.0,
                    mem_storage=True,
                    num_replicas=1,
                ),
            )
            try:
                want = min(limit, last - after)
                out: list[Entry] = []
                while len(out) < want:
                    msgs = await psub.fetch(min(want - len(out), 1000), timeout=5.0)
                    for m in msgs:
                        seq = m.metadata.sequence.stream
                        out.append(decode_entry(seq, m.data))
                        if seq >= last:
                            return out
                return out
            finally:
                await psub.unsubscribe()
        except StoreError:
            raise
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise StoreError(f"JetStream read failed: {type(exc).__name__}") from None

    async def append(self, partition: int, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        await self.connect()
        if not self.connected():
            # Never hand records to a client buffer that flushes who knows when.
            raise StoreError("NATS is not connected")
        pub = await self._publisher()
        subject = self.subject(partition)
        prefix = f"{partition}:"
        prev = entries[0].offset - 1
        futs: list[asyncio.Future[dict[str, Any]]] = []
        try:
            for e in entries:
                hdr = {"Nats-Msg-Id": prefix + str(e.offset), _EXPECTED_LAST: str(prev)}
                futs.append(await pub.publish(subject, encode_entry(e), hdr))
                prev = e.offset
            acks = await self._acks(futs)
        except asyncio.CancelledError:
            pub.cancel(futs)
            raise
        except StoreError:
            pub.cancel(futs)
            raise
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            pub.cancel(futs)
            raise StoreError(f"JetStream append failed: {type(exc).__name__}") from None
        for e, ack in zip(entries, acks):
            if ack.get("seq") != e.offset:
                raise StoreError(f"JetStream stored offset {e.offset} as {ack.get('seq')}")
        self._last[partition] = max(self._last.get(partition, 0), entries[-1].offset)

    async def append_assigned(
        self, partition: int, entries: Sequence[tuple[Entry, str]]
    ) -> list[tuple[int, bool]]:
        """Store entries at sequences the engine chooses (several writers): each entry with
        its `Nats-Msg-Id`. Returns (sequence, duplicate) per entry, once every PubAck is in;
        a duplicate's sequence is the one first stored under that id. StoreError otherwise.
        """
        if not entries:
            return []
        await self.connect()
        if not self.connected():
            raise StoreError("NATS is not connected")
        pub = await self._publisher()
        subject = self.subject(partition)
        futs: list[asyncio.Future[dict[str, Any]]] = []
        try:
            for e, msg_id in entries:
                futs.append(await pub.publish(subject, encode_entry(e), {"Nats-Msg-Id": msg_id}))
            acks = await self._acks(futs)
        except asyncio.CancelledError:
            pub.cancel(futs)
            raise
        except StoreError:
            pub.cancel(futs)
            raise
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            pub.cancel(futs)
            raise StoreError(f"JetStream append failed: {type(exc).__name__}") from None
        out = [(int(a["seq"]), bool(a.get("duplicate", False))) for a in acks]
        top = max(s for s, _ in out)
        if top > self._last.get(partition, 0):
            self._last[partition] = top
        return out

    async def _acks(self, futs: list[asyncio.Future[dict[str, Any]]]) -> list[dict[str, Any]]:
        """Every PubAck, or TimeoutError when none arrived for `append_timeout` (a big
        batch may take longer in total; a stalled engine may not stall us for longer)."""
        loop = asyncio.get_running_loop()
        last = [loop.time()]

        def progress(_: object) -> None:
            last[0] = loop.time()

        for f in futs:
            f.add_done_callback(progress)
        together = asyncio.gather(*futs)
        while True:
            try:
                return list(await asyncio.wait_for(asyncio.shield(together), self.append_timeout))
            except TimeoutError:
                if loop.time() - last[0] >= self.append_timeout:
                    together.cancel()
                    raise

    async def _publisher(self) -> _Publisher:
        nc = self.nc
        assert nc is not None
        pub = self._pub
        if pub is None or pub.nc is not nc:
            pub = self._pub = _Publisher(nc, self.max_in_flight)
            await pub.start()
        return pub

    async def trim(self, partition: int, before: int) -> None:
        """No-op: the stream's limits decide retention (see the module docstring)."""

    async def close(self) -> None:
        self._closing = True
        nc, self.nc, self.js = self.nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                await asyncio.wait_for(nc.drain(), 5.0)
            except Exception:
                await nc.close()

    # -- reading the tail (other server processes) ----------------------------------------
    async def follow(
        self,
        partition: int,
        after: int,
        on_entries: Callable[[list[Entry]], Awaitable[None] | None],
    ) -> Follower:
        """Tail the stream from `after`: `on_entries` gets the stored entries in order, in
        batches (a gap in the sequences is a trim). Returns the running Follower."""
        f = Follower(self, partition, after, on_entries)
        await f.start()
        return f


_EXPECTED_LAST = "Nats-Expected-Last-Sequence"


class _Publisher:
    """Asynchronous JetStream publishes with their PubAcks as futures.

    One wildcard reply subscription; each publish gets a reply subject with its own token.
    (Written here rather than using nats-py's publish_async so that an error answer, e.g.
    a wrong expected sequence, fails its future at once, and so that the number of
    publishes in flight is bounded by a semaphore we own.)
    """

    def __init__(self, nc: NATS, max_in_flight: int) -> None:
        self.nc = nc
        self.prefix = nc.new_inbox() + "."
        self._futs: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._n = 0
        self._slots = asyncio.Semaphore(max_in_flight)

    async def start(self) -> None:
        await self.nc.subscribe(self.prefix + "*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        fut = self._futs.pop(msg.subject[len(self.prefix) :], None)
        if fut is None or fut.done():
            return
        if not msg.data:  # a status message: 503 no responders (no stream, no quorum)
            status = msg.headers.get("Status", "?") if msg.headers else "?"
            fut.set_exception(StoreError(f"JetStream did not store the record (status {status})"))
            return
        try:
            resp = loads(msg.data)
        except ValueError:
            fut.set_exception(StoreError("JetStream answered an append with garbage"))
            return
        err = resp.get("error")
        if err is not None:
            code = err.get("err_code") if isinstance(err, dict) else None
            if code == 10071:
                why = "the stream's last sequence is not the expected one (another writer?)"
            else:
                why = f"JetStream refused the record (error {code})"
            fut.set_exception(StoreError(why))
        else:
            fut.set_result(resp)

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str]
    ) -> asyncio.Future[dict[str, Any]]:
        await self._slots.acquire()
        self._n += 1
        token = str(self._n)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda _: self._slots.release())
        self._futs[token] = fut
        try:
            await self.nc.publish(subject, payload, reply=self.prefix + token, headers=headers)
        except BaseException:
            self._futs.pop(token, None)
            fut.cancel()
            raise
        return fut

    def cancel(self, futs: list[asyncio.Future[dict[str, Any]]]) -> None:
        for f in futs:
            if not f.done():
                f.cancel()
        # forget the tokens of cancelled publishes (a late PubAck is then ignored)
        self._futs = {t: f for t, f in self._futs.items() if not f.done()}


class Follower:
    """Feeds the stored entries of one partition, from a sequence on, to a callback.

    A loop over an ephemeral pull consumer (no acks, starting at the next sequence wanted):
    a backlog comes in batches of up to 1000, the tail within about `poll` seconds. Any
    failure (connection lost, consumer lost with its node, leader changed) recreates the
    consumer from the last sequence delivered, so the callback sees every retained record
    once, in order; a trimmed range shows as a jump in the sequences.
    """

    def __init__(
        self,
        store: JetStreamStore,
        partition: int,
        after: int,
        on_entries: Callable[[list[Entry]], Awaitable[None] | None],
        poll: float = 0.25,
    ) -> None:
        self.store = store
        self.partition = partition
        self.last = after
        self.on_entries = on_entries
        self.poll = poll
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self.restarts = 0

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _consumer(self) -> Any:
        js = await self.store.connect()
        return await js.pull_subscribe(
            self.store.subject(self.partition),
            stream=self.store.stream(self.partition),
            config=api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self.last + 1,
                ack_policy=api.AckPolicy.NONE,
                inactive_threshold=30.0,
                mem_storage=True,
                num_replicas=1,
            ),
        )

    async def _run(self) -> None:
        store = self.store
        psub: Any = None
        seen = store.reconnects
        idle_since = time.monotonic()
        failing = False
        while not self._stopped:
            try:
                if store.reconnects != seen:  # the consumer may have gone with a node
                    seen = store.reconnects
                    await self._drop(psub)
                    psub = None
                if psub is None:
                    if not store.connected():
                        await asyncio.sleep(self.poll)
                        continue
                    psub = await self._consumer()
                    idle_since = time.monotonic()
                    if failing:
                        logger.info("log follower resumed after sequence %d", self.last)
                        failing = False
                try:
                    msgs = await psub.fetch(1000, timeout=self.poll)
                except (TimeoutError, nats.errors.TimeoutError):
                    if time.monotonic() - idle_since > 5.0:
                        # quiet for a while: make sure the consumer still exists
                        await psub.consumer_info()
                        idle_since = time.monotonic()
                    continue
                idle_since = time.monotonic()
                batch = []
                for m in msgs:
                    seq = m.metadata.sequence.stream
                    if seq > self.last:
                        self.last = seq
                        batch.append(decode_entry(seq, m.data))
                if batch:
                    self._deliver(batch)
            except asyncio.CancelledError:
                await self._drop(psub)
                raise
            except Exception as exc:
                if not failing:
                    logger.warning("log follower interrupted (%s); resuming", type(exc).__name__)
                failing = True
                self.restarts += 1
                await self._drop(psub)
                psub = None
                await asyncio.sleep(self.poll)

    @staticmethod
    async def _drop(psub: Any) -> None:
        if psub is not None:
            try:
                await asyncio.wait_for(psub.unsubscribe(), 1.0)
            except Exception:
                pass

    def _deliver(self, batch: list[Entry]) -> None:
        try:
            res = self.on_entries(batch)
            if asyncio.iscoroutine(res):
                asyncio.get_running_loop().create_task(res)
        except Exception:
            logger.exception("log follower callback failed")

    async def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
