"""Consumer groups on a shared JetStream log: membership, partition leases, commits.

A group's members share the log's partitions (`iotcommute.partition`): each partition is
owned by one member at a time, which is streamed that partition's records after the
group's committed position and advances it with `commit`. All group state lives in the
engine, in the JetStream key-value bucket ``<log>-groups``, so a group works through any
server process and survives any of them:

- ``m.<group>.<member>`` = {"expires": t}: a member's heartbeat, rewritten by the server
  process that holds its connection every `session_timeout / 4`; a member is alive while
  `expires` (wall-clock seconds) is in the future;
- ``p.<group>.<partition>`` = {"owner": member or null, "expires": t, "position": c,
  "generation": g}: the partition's lease and the group's committed position. Every
  write is a compare-and-set on the key's revision, so of two processes that both think
  they may take or commit a partition, exactly one succeeds.

Assignment is computed by every process alike from the live members (sorted ids; partition
p goes to member p mod n), and each process only acts for its own members: it takes a
partition meant for one of them once the lease is free or expired, renews the leases its
members hold, and releases (revokes) a partition meant for another member. A member whose
process died loses its partitions when its lease expires (`session_timeout`); one that
disconnects releases them at once. A commit is accepted only from the lease holder (CAS
on the revision the holder last wrote), so every commit of a partition comes from the one
member that owns it; what a member processed after its last commit is delivered again to
the next owner (at-least-once, duplicates only within the commit window).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import re
import secrets
import time
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from ..partition import partition as partition_of
from .frames import binary_frames, json_frames
from .wire import dumps, loads

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

    from .connection import ServerConnection
    from .log import Log
    from .store.jetstream import JetStreamStore

logger = logging.getLogger("iotcommute.server.groups")

GROUP_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Member:
    """One connection in a group: the partitions it owns and its own cursor over them.

    `owned[p]` is the last position of partition p sent to it (initially the committed
    position), so a partition assigned later is replayed from its committed position
    while the others go on: records of p at or below `owned[p]` are skipped.
    """

    def __init__(self, coord: GroupCoordinator, conn: ServerConnection, group: str) -> None:
        self.coord = coord
        self.conn = conn
        self.group = group
        self.id = f"{coord.nonce}-{next(coord.counter)}"
        self.owned: dict[int, int] = {}
        #: revoked partitions awaiting the member's releasing commit: p -> (deadline, the
        #: last position sent); the lease stays the member's until then
        self.releasing: dict[int, tuple[float, int]] = {}
        self.cursor = 0
        self.binary = False
        parts = coord.partitions
        self.part_of = {d: partition_of(d, parts) for d in conn.fleet}
        self._kick: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.closed = False
        self.sent = 0

    # -- ownership (called by the coordinator) --------------------------------------------
    def assign(self, parts: dict[int, int]) -> None:
        for p, c in parts.items():
            self.owned[p] = c
            self.cursor = min(self.cursor, c)
        self.conn.send_json(
            {
                "type": "assign",
                "group": self.group,
                "of": self.coord.partitions,
                "partitions": [{"partition": p, "position": c} for p, c in sorted(parts.items())],
            }
        )
        self.kick()

    def revoke(self, parts: Collection[int], release_by: float | None = None) -> None:
        """Stop streaming these partitions and say so. With `release_by` (a rebalance, the
        member alive) the lease is kept until the member's releasing commit or that time."""
        gone = sorted(p for p in parts if p in self.owned)
        if not gone:
            return
        for p in gone:
            sent = self.owned.pop(p)
            if release_by is not None:
                self.releasing[p] = (release_by, sent)
        self.conn.send_json({"type": "revoke", "group": self.group, "partitions": gone})

    def kick(self) -> None:
        k = self._kick
        if k is not None and not k.done():
            k.set_result(None)

    # -- streaming -------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            await self._pump()
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("group member %s: cursor failed", self.id)
            self.conn.close(1011, "internal error")

    async def _pump(self) -> None:
        conn = self.conn
        log: Log = conn.hub.log
        cfg = conn.cfg
        payload: Any = None
        while not self.closed and not conn.closed:
            if conn.paused:
                try:
                    await asyncio.wait_for(conn._resumed.wait(), cfg.stuck_timeout)
                except TimeoutError:
                    conn.abort()
                    return
                continue
            owned = self.owned
            if not owned:
                await self._wait(None)
                continue
            devices = {d for d, p in self.part_of.items() if p in owned}
            first = log.first_position
            if self.cursor < first - 1:
                gap = log.gap(self.cursor, devices)
                if gap is not None:
                    conn.send_json({"type": "gap", "from": gap[0], "to": gap[1], "missed": gap[2]})
                self.cursor = first - 1
            recs, last = log.scan(self.cursor, devices, cfg.write_batch)
            if not recs:
                if last != self.cursor:
                    self.cursor = last
                    continue
                await self._wait(log)
                continue
            out = []
            part_of = self.part_of
            for r in recs:
                p = part_of[r.device]
                floor = owned.get(p)
                if floor is not None and r.position > floor:
                    owned[p] = r.position
                    out.append(r)
            self.cursor = last
            if out:
                frames: list[bytes] = []
                if self.binary:
                    if payload is None:
                        payload = importlib.import_module("iotcommute.payload")
                    for i in range(0, len(out), 100):
                        frames += binary_frames(payload, out[i : i + 100])
                else:
                    frames = json_frames(out)  # a record that cannot be encoded is skipped
                transport = conn.transport
                if transport is None or transport.is_closing():
                    return
                transport.writelines(frames)
                self.sent += len(out)
            await asyncio.sleep(0)

    async def _wait(self, log: Log | None) -> None:
        k = self._kick = asyncio.get_running_loop().create_future()
        if log is None:
            await k
            return
        tail = log.tail_future()
        await asyncio.wait((k, tail), return_when=asyncio.FIRST_COMPLETED)
        if not k.done():
            k.cancel()

    def close(self) -> None:
        self.closed = True
        if self._task is not None:
            self._task.cancel()


class GroupCoordinator:
    """The group state of one server process, kept in the engine's key-value store."""

    def __init__(
        self,
        store: JetStreamStore,
        partitions: int,
        *,
        session_timeout: float = 10.0,
    ) -> None:
        self.store = store
        self.partitions = partitions
        self.session_timeout = session_timeout
        self.interval = session_timeout / 4
        #: how long a rebalance waits for a revoked member's releasing commit
        self.release_timeout = min(2.0, session_timeout / 4)
        self.bucket = f"{store.name}-groups"
        self.nonce = secrets.token_hex(4)
        self.counter = iter(range(1, 1 << 62))
        self.members: dict[str, Member] = {}
        #: key -> (value, revision): the bucket as this process last saw it
        self.cache: dict[str, tuple[dict[str, Any], int]] = {}
        self.kv: KeyValue | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._watcher: Any = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        js = await self.store.connect()
        import nats.js.errors
        from nats.js.api import KeyValueConfig, StorageType

        try:
            self.kv = await js.key_value(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            cfg = KeyValueConfig(
                bucket=self.bucket,
                history=1,
                storage=StorageType.FILE,
                replicas=self.store.replicas,
            )
            self.kv = await js.create_key_value(cfg)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._watch_loop()))
        self._tasks.append(loop.create_task(self._balance_loop()))

    # -- the bucket as seen here -----------------------------------------------------------
    def _see(self, key: str, value: dict[str, Any] | None, rev: int) -> None:
        cur = self.cache.get(key)
        if cur is not None and cur[1] >= rev:
            return
        if value is None:
            self.cache.pop(key, None)
        else:
            self.cache[key] = (value, rev)

    async def _watch_loop(self) -> None:
        """Follow every change of the bucket; the watch is started again after a failure
        or a reconnect (the engine may have lost its consumer), re-reading every key."""
        import nats.errors

        while True:
            w = None
            try:
                assert self.kv is not None
                seen = self.store.reconnects
                w = self._watcher = await self.kv.watchall()
                while self.store.reconnects == seen:
                    try:
                        e = await w.updates(timeout=1.0)  # type: ignore[no-untyped-call]
                    except nats.errors.TimeoutError:
                        continue
                    if e is None:
                        continue  # end of the initial values
                    if not hasattr(e, "key"):
                        break  # the watcher was stopped
                    self._entry(e)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.info("group watch restarting: %s", type(exc).__name__)
                await asyncio.sleep(0.5)
            finally:
                if w is not None:
                    try:
                        await w.stop()  # type: ignore[no-untyped-call]
                    except Exception:
                        pass

    def _entry(self, e: Any) -> None:
        rev = int(e.revision or 0)
        if e.operation in ("DEL", "PURGE") or not e.value:
            cur = self.cache.get(e.key)
            if cur is None or cur[1] < rev:
                self.cache.pop(e.key, None)
            return
        try:
            val = loads(e.value)
        except ValueError:
            return
        if isinstance(val, dict):
            self._see(e.key, val, rev)

    async def _cas(self, key: str, value: dict[str, Any], rev: int) -> int | None:
        """Write `value` if the key is still at `rev` (0: absent); the new revision or None."""
        import nats.js.errors

        kv = self.kv
        assert kv is not None
        data = dumps(value)
        try:
            new = await (kv.create(key, data) if rev == 0 else kv.update(key, data, last=rev))
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
            try:
                e = await kv.get(key)
                if e.value:
                    self._see(key, loads(e.value), int(e.revision or 0))
            except Exception:
                pass
            return None
        self._see(key, value, int(new))
        return int(new)

    # -- membership --------------------------------------------------------------------------
    def join(self, conn: ServerConnection, group: str, binary: bool) -> Member:
        m = Member(self, conn, group)
        m.binary = binary
        m.cursor = conn.hub.log.last_position
        self.members[m.id] = m
        m.start()
        asyncio.get_running_loop().create_task(self._heartbeat(m))
        asyncio.get_running_loop().create_task(self.rebalance())
        logger.info("%s joined group %s as %s", conn.peer, group, m.id)
        return m

    async def _heartbeat(self, m: Member) -> None:
        kv = self.kv
        assert kv is not None
        try:
            await kv.put(
                f"m.{m.group}.{m.id}", dumps({"expires": time.time() + self.session_timeout})
            )
        except Exception as exc:
            logger.info("group heartbeat failed: %s", type(exc).__name__)

    def leave(self, m: Member) -> None:
        """The member's connection is gone: release its partitions now (no timeout)."""
        m.close()
        if self.members.pop(m.id, None) is None:
            return
        asyncio.get_running_loop().create_task(self._release_all(m))

    async def _release_all(self, m: Member) -> None:
        kv = self.kv
        assert kv is not None
        try:
            await kv.delete(f"m.{m.group}.{m.id}")
        except Exception:
            pass
        try:
            async with self._lock:  # the process's one writer (rebalance, commits) waits
                for p in range(self.partitions):
                    key = f"p.{m.group}.{p}"
                    cur = self.cache.get(key)
                    if cur is not None and cur[0].get("owner") == m.id:
                        await self._cas(key, {**cur[0], "owner": None, "expires": 0}, cur[1])
            await self.rebalance()
        except Exception as exc:  # the engine is away: the leases expire after the timeout
            logger.info("releasing %s's partitions failed: %s", m.id, type(exc).__name__)

    # -- assignment --------------------------------------------------------------------------
    async def _balance_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                for m in list(self.members.values()):
                    await self._heartbeat(m)
                await self.rebalance()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.info("group rebalance failed (retrying): %s", exc)

    async def rebalance(self) -> None:
        if self.kv is None or not self.store.connected():
            return
        async with self._lock:
            groups = {m.group for m in self.members.values()}
            for g in groups:
                await self._rebalance(g)

    async def _rebalance(self, g: str) -> None:
        now = time.time()
        local = {mid: m for mid, m in self.members.items() if m.group == g}
        prefix = f"m.{g}."
        live = {
            k[len(prefix) :]
            for k, (v, _) in self.cache.items()
            if k.startswith(prefix) and float(v.get("expires", 0)) > now
        }
        live |= set(local)
        order = sorted(live)
        for p in range(self.partitions):
            want = order[p % len(order)]
            key = f"p.{g}.{p}"
            cur = self.cache.get(key)
            val, rev = cur if cur is not None else ({}, 0)
            owner = val.get("owner")
            alive = owner is not None and float(val.get("expires", 0)) > now
            # a local member that lost the lease (expired and taken): stop streaming it
            for m in local.values():
                if p in m.owned and owner != m.id:
                    m.revoke([p])
                if owner != m.id:
                    m.releasing.pop(p, None)
            if owner in local:
                m = local[owner]
                if p in m.releasing:
                    # revoked, waiting for the member's releasing commit (or the time)
                    if m.releasing[p][0] <= now:
                        del m.releasing[p]
                        await self._cas(key, {**val, "owner": None, "expires": 0}, rev)
                elif want != owner:
                    m.revoke([p], release_by=now + self.release_timeout)
                elif float(val.get("expires", 0)) - now < self.session_timeout / 2:
                    new = {**val, "expires": now + self.session_timeout}
                    if await self._cas(key, new, rev) is None:
                        fresh = self.cache.get(key)
                        if fresh is None or fresh[0].get("owner") != m.id:
                            m.revoke([p])  # taken over meanwhile; else retry next round
                elif p not in m.owned:  # ours in the engine, not yet streamed (restart)
                    m.assign({p: int(val.get("position", 0))})
            elif want in local and not alive:
                gen = int(val.get("generation", 0)) + 1
                pos = int(val.get("position", 0))
                new = {
                    "owner": want,
                    "expires": now + self.session_timeout,
                    "position": pos,
                    "generation": gen,
                }
                if await self._cas(key, new, rev) is not None:
                    local[want].assign({p: pos})

    # -- commits -----------------------------------------------------------------------------
    async def commit(
        self, m: Member, parts: list[tuple[int, int]], release: bool = False
    ) -> tuple[list[tuple[int, int]], list[int]]:
        """Advance the group's positions for partitions `m` owns (or was revoked and has
        not released yet); with `release`, hand the revoked ones back in the same write.
        Returns (accepted, refused)."""
        async with self._lock:  # one writer per process: no CAS races with renewals
            out = await self._commit(m, parts, release)
        if release:
            await self.rebalance()  # their next owner starts now
        return out

    async def _commit(
        self, m: Member, parts: list[tuple[int, int]], release: bool
    ) -> tuple[list[tuple[int, int]], list[int]]:
        accepted: list[tuple[int, int]] = []
        refused: list[int] = []
        for p, pos in parts:
            if p in m.owned:
                sent, freeing = m.owned[p], False
            elif p in m.releasing:
                sent, freeing = m.releasing[p][1], release
            else:
                refused.append(p)
                continue
            pos = min(pos, max(m.cursor, sent))  # never beyond what it was sent
            key = f"p.{m.group}.{p}"
            ok = False
            for _ in range(2):
                cur = self.cache.get(key)
                if cur is None or cur[0].get("owner") != m.id:
                    break
                val, rev = cur
                new = {**val, "position": max(int(val.get("position", 0)), pos)}
                if freeing:
                    new.update(owner=None, expires=0)
                if await self._cas(key, new, rev) is not None:
                    ok = True
                    accepted.append((p, int(new["position"])))
                    if freeing:
                        m.releasing.pop(p, None)
                    break
            if not ok:
                refused.append(p)
                m.releasing.pop(p, None)
                m.revoke([p])
        return accepted, refused

    async def close(self) -> None:
        for m in list(self.members.values()):
            self.leave(m)
        for t in self._tasks:
            t.cancel()
        if self._watcher is not None:
            try:
                await self._watcher.stop()
            except Exception:
                pass


# -- the connection's side (hooks in connection.py) -------------------------------------------
def partition_devices(conn: ServerConnection, parts: Any, n: int) -> list[str] | None:
    """The fleet devices of the named partitions (a static `partitions` subscription)."""
    if (
        not isinstance(parts, list)
        or not parts
        or not all(type(p) is int and 0 <= p < n for p in parts)
    ):
        return None
    want = set(parts)
    return sorted(d for d in conn.fleet if partition_of(d, n) in want)


def handle_subscribe(conn: ServerConnection, msg: dict[str, Any]) -> None:
    """`subscribe` with `group`: join the consumer group (positions come from the group)."""
    msg_id = msg.get("id")
    group = msg.get("group")
    coord: GroupCoordinator | None = getattr(conn.hub, "groups", None)
    if coord is None:
        conn.send_error("input", "consumer groups need a shared log (--log nats://...)", msg_id)
        return
    if not isinstance(group, str) or not GROUP_NAME.match(group):
        conn.send_error("input", '"group" must be 1-64 characters of A-Z a-z 0-9 _ -', msg_id)
        return
    if msg.get("from") is not None or msg.get("devices", "*") != "*":
        conn.send_error("input", 'a group member takes "devices": "*" and no "from"', msg_id)
        return
    fmt = msg.get("format", "json")
    if fmt not in ("json", "binary"):
        conn.send_error("input", '"format" must be "json" or "binary"', msg_id)
        return
    if conn.role != "client":
        conn.send_error("permission", "only the client role may join a consumer group", msg_id)
        return
    if getattr(conn, "group_member", None) is not None or conn.devices:
        conn.send_error("input", "this connection already subscribed", msg_id)
        return
    member = coord.join(conn, group, fmt == "binary")
    conn.group_member = member
    conn.send_json(
        {
            "type": "subscribed",
            "id": msg_id,
            "devices": "*",
            "position": conn.hub.log.last_position,
            "format": fmt,
            "group": group,
            "member": member.id,
        }
    )


def handle_commit(conn: ServerConnection, msg: dict[str, Any]) -> None:
    msg_id = msg.get("id")
    m: Member | None = getattr(conn, "group_member", None)
    coord: GroupCoordinator | None = getattr(conn.hub, "groups", None)
    if m is None or coord is None:
        conn.send_error("input", "commit needs a group subscription", msg_id)
        return
    parts = msg.get("partitions")
    pairs: list[tuple[int, int]] = []
    if isinstance(parts, list):
        for item in parts:
            if not isinstance(item, dict):
                break
            p, pos = item.get("partition"), item.get("position")
            if type(p) is not int or type(pos) is not int or pos < 0:
                break
            pairs.append((p, pos))
        else:
            parts = None
    if parts is not None or not pairs:
        conn.send_error(
            "input", '"partitions" must be a list of {"partition": p, "position": n}', msg_id
        )
        return

    release = msg.get("release") is True

    async def run() -> None:
        try:
            accepted, refused = await coord.commit(m, pairs, release)
        except Exception as exc:
            logger.info("commit failed: %s", exc)
            conn.send_error("unavailable", "the group store is unavailable; retry later", msg_id)
            return
        if not conn.closed:
            conn.send_json(
                {
                    "type": "committed",
                    "id": msg_id,
                    "partitions": [{"partition": p, "position": c} for p, c in accepted],
                    "refused": refused,
                }
            )

    asyncio.get_running_loop().create_task(run())


def handle_lost(conn: ServerConnection) -> None:
    m: Member | None = getattr(conn, "group_member", None)
    coord: GroupCoordinator | None = getattr(conn.hub, "groups", None)
    if m is not None and coord is not None:
        conn.group_member = None
        coord.leave(m)
