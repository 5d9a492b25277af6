"""Server state shared by the WebSocket side and the REST handlers (the `Hub` of design.md)."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .log import Log
from .registry import Registry

if TYPE_CHECKING:
    from .cluster import CommandRouter
    from .connection import ServerConnection
    from .groups import GroupCoordinator

logger = logging.getLogger("iotcommute.server")

AckCallback = Callable[[dict[str, Any]], None]
#: A device served in-process (the simulator): command data -> ack dict.
VirtualDevice = Callable[[dict[str, Any]], dict[str, Any]]


class _Pending:
    __slots__ = ("callback", "cmd_id", "origin", "origin_key", "target", "timer")

    def __init__(
        self,
        callback: AckCallback,
        timer: asyncio.TimerHandle | None,
        cmd_id: str | int,
        origin: object | None,
        origin_key: tuple[int, str] | None,
        target: object | None,
    ) -> None:
        self.callback = callback
        self.timer = timer
        self.cmd_id = cmd_id  # the sender's id, echoed in its ack
        self.origin = origin  # the sending connection (None: REST)
        self.origin_key = origin_key
        self.target = target  # the device connection the command went to


def _id_key(cmd_id: Any) -> str:
    """Ids compare by JSON value and type: 17 and "17" are different ids."""
    return json.dumps(cmd_id)


class Hub:
    """Registry + log + who is online + commands waiting for their ack."""

    def __init__(
        self,
        registry: Registry,
        log: Log,
        *,
        command_timeout: float = 10.0,
        session_ttl: float = 8 * 3600.0,
    ) -> None:
        self.registry = registry
        self.log = log
        self.command_timeout = command_timeout
        self.session_ttl = session_ttl
        self.connections: set[ServerConnection] = set()
        # device id -> its live device-role connections, newest last (commands go to the newest)
        self._device_conns: dict[str, list[ServerConnection]] = {}
        self.virtual: dict[str, VirtualDevice] = {}
        # (device id, id the device was given) -> pending command
        self._pending: dict[tuple[str, str], _Pending] = {}
        # (id(sending connection), sender's id key): ids are scoped to their connection
        self._by_origin: set[tuple[int, str]] = set()
        self._ids = itertools.count(1)
        # access token -> the streams opened with it (closed at logout / expiry)
        self._streams: dict[str, set[ServerConnection]] = {}
        #: set by the firehose producer: called by a cursor that reached the tail
        self.refill: Callable[[], None] | None = None
        #: set by the firehose: a pre-encoded tick batch for its records, or None
        self.binary_batch: Callable[[list[Any]], bytes | None] | None = None
        #: [jetstream hook, issue 15] commands to devices on other server processes
        self.cluster: CommandRouter | None = None
        #: [jetstream hook] consumer groups (a shared log only)
        self.groups: GroupCoordinator | None = None

    # -- presence ----------------------------------------------------------
    def online(self, device_id: str) -> bool:
        return bool(self._device_conns.get(device_id)) or device_id in self.virtual

    def device_connected(self, device_id: str, conn: ServerConnection) -> None:
        self._device_conns.setdefault(device_id, []).append(conn)
        if self.cluster is not None:  # [jetstream hook]
            self.cluster.device_online(device_id)

    def device_disconnected(self, device_id: str, conn: ServerConnection) -> None:
        conns = self._device_conns.get(device_id)
        if conns and conn in conns:
            conns.remove(conn)
        if not conns:
            self._device_conns.pop(device_id, None)
            if self.cluster is not None:  # [jetstream hook]
                self.cluster.device_offline(device_id)
        # Commands sent to this connection cannot be answered by it any more: tell their
        # senders now instead of at timeout (another connection of the device may still
        # acknowledge them until then, but it never received them).
        for key in [k for k, p in self._pending.items() if k[0] == device_id and p.target is conn]:
            self._resolve(key, {"ok": False, "error": "device disconnected"})

    # -- sessions ----------------------------------------------------------
    def stream_opened(self, token: str, conn: ServerConnection) -> None:
        self._streams.setdefault(token, set()).add(conn)

    def stream_closed(self, token: str, conn: ServerConnection) -> None:
        conns = self._streams.get(token)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._streams[token]

    def end_session(self, token: str, reason: str = "session ended") -> int:
        """Logout: close every stream opened with this access token (1008). Returns how many."""
        conns = self._streams.pop(token, set())
        for c in conns:
            c.close(1008, reason, wait=True)
        return len(conns)

    # -- commands ----------------------------------------------------------
    def route_command(
        self,
        device_id: str,
        cmd_id: str | int,
        data: Any,
        sender: str,
        callback: AckCallback,
        timeout: float | None = None,
        *,
        origin: object | None = None,
        local_only: bool = False,
    ) -> None:
        """Forward a command; `callback(ack)` is called exactly once (ack, refusal or timeout).

        Ids are scoped to the sending connection `origin`: two connections may use the
        same id. The device is given the sender's id unless another pending command for
        it already has that id; then a server-made string id, which its ack must echo.
        Raises LookupError when the device is offline and KeyError for an id that is
        already pending on the same connection.
        """
        okey = (id(origin), _id_key(cmd_id)) if origin is not None else None
        vdev = self.virtual.get(device_id)
        conns = self._device_conns.get(device_id)
        if vdev is None and not conns:
            # [jetstream hook] the device may be connected to another server process
            t = self.command_timeout if timeout is None else timeout
            cl = self.cluster
            if cl is not None and not local_only:
                if cl.forward(device_id, cmd_id, data, sender, callback, t):
                    return
            raise LookupError("device offline")
        if okey is not None and okey in self._by_origin:
            raise KeyError("a command with this id is already pending on this connection")
        if vdev is not None and not conns:
            try:
                ack = vdev(data if isinstance(data, dict) else {"value": data})
            except Exception as exc:  # a bug in a simulated device must not kill the server
                logger.exception("simulated device %s failed a command", device_id)
                ack = {"ok": False, "error": f"device error: {type(exc).__name__}"}
            callback({"type": "ack", "id": cmd_id, **ack})
            return
        assert conns is not None
        dev_id: str | int = cmd_id
        key = (device_id, _id_key(cmd_id))
        while key in self._pending:
            dev_id = f"{cmd_id}#{next(self._ids)}"
            key = (device_id, _id_key(dev_id))
        loop = asyncio.get_running_loop()
        t = self.command_timeout if timeout is None else timeout
        timer = loop.call_later(t, self._resolve, key, {"ok": False, "error": "timeout"})
        target = conns[-1]
        self._pending[key] = _Pending(callback, timer, cmd_id, origin, okey, target)
        if okey is not None:
            self._by_origin.add(okey)
        target.send_json({"type": "command", "id": dev_id, "from": sender, "data": data})

    def deliver_ack(self, device_id: str, ack: dict[str, Any]) -> bool:
        """A device answered; False when nobody waits for this id (late or unknown)."""
        key = (device_id, _id_key(ack.get("id")))
        if key not in self._pending:
            return False
        out: dict[str, Any] = {"ok": bool(ack.get("ok", True))}
        if "data" in ack:
            out["data"] = ack["data"]
        if "error" in ack and ack["error"] is not None:
            out["error"] = str(ack["error"])
        elif not out["ok"]:
            out["error"] = "unspecified"  # ok:false always comes with a reason
        self._resolve(key, out)
        return True

    def _resolve(self, key: tuple[str, str], fields: dict[str, Any]) -> None:
        p = self._pending.pop(key, None)
        if p is None:
            return
        if p.timer is not None:
            p.timer.cancel()
        if p.origin_key is not None:
            self._by_origin.discard(p.origin_key)
        try:
            p.callback({"type": "ack", "id": p.cmd_id, **fields})
        except Exception:
            logger.exception("ack callback failed")

    async def send_command(
        self, device_id: str, data: Any, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Send a command from the REST side and wait for its ack dict.

        Raises LookupError if the device is offline, TimeoutError if no ack in time.
        """
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def done(ack: dict[str, Any]) -> None:
            if not fut.done():
                fut.set_result(ack)

        cmd_id = f"rest-{next(self._ids)}"
        # The hub-level timer is a backstop; wait_for gives the caller its own deadline.
        self.route_command(device_id, cmd_id, data, "rest", done, timeout=timeout + 1.0)
        try:
            ack = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self._resolve((device_id, cmd_id), {"ok": False, "error": "timeout"})
            raise TimeoutError("the device did not acknowledge in time") from None
        if ack.get("error") == "timeout":
            raise TimeoutError("the device did not acknowledge in time")
        return ack

    def pending_commands(self) -> int:
        return len(self._pending)

    def __repr__(self) -> str:
        return (
            f"Hub({self.registry!r}, log_last={self.log.last_position}, "
            f"connections={len(self.connections)})"
        )
