"""Server state shared by the WebSocket side and the REST handlers (the `Hub` of design.md)."""

from __future__ import annotations

import asyncio
import itertools
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
    __slots__ = ("callback", "cmd_id", "timer")

    def __init__(
        self, callback: AckCallback, timer: asyncio.TimerHandle | None, cmd_id: str | int
    ) -> None:
        self.callback = callback
        self.timer = timer
        self.cmd_id = cmd_id


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
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._ids = itertools.count(1)
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
            # Nobody can answer these any more: tell the requesters now instead of at timeout.
            for key in [k for k in self._pending if k[0] == device_id]:
                self._resolve(key, {"ok": False, "error": "device disconnected"})

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
        local_only: bool = False,
    ) -> None:
        """Forward a command; `callback(ack)` is called exactly once (ack, refusal or timeout).

        Raises LookupError when the device is offline and KeyError for a duplicate id.
        """
        key = (device_id, str(cmd_id))
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
        if key in self._pending:
            raise KeyError("a command with this id is already pending for this device")
        if vdev is not None and not conns:
            try:
                ack = vdev(data if isinstance(data, dict) else {"value": data})
            except Exception as exc:  # a bug in a simulated device must not kill the server
                logger.exception("simulated device %s failed a command", device_id)
                ack = {"ok": False, "error": f"device error: {type(exc).__name__}"}
            callback({"type": "ack", "id": cmd_id, **ack})
            return
        assert conns is not None
        loop = asyncio.get_running_loop()
        t = self.command_timeout if timeout is None else timeout
        timer = loop.call_later(t, self._resolve, key, {"ok": False, "error": "timeout"})
        self._pending[key] = _Pending(callback, timer, cmd_id)
        conns[-1].send_json({"type": "command", "id": cmd_id, "from": sender, "data": data})

    def deliver_ack(self, device_id: str, ack: dict[str, Any]) -> bool:
        """A device answered; False when nobody waits for this id (late or unknown)."""
        key = (device_id, str(ack.get("id")))
        if key not in self._pending:
            return False
        out: dict[str, Any] = {"ok": bool(ack.get("ok", True))}
        if "data" in ack:
            out["data"] = ack["data"]
        if "error" in ack:
            out["error"] = str(ack["error"])
        self._resolve(key, out)
        return True

    def _resolve(self, key: tuple[str, str], fields: dict[str, Any]) -> None:
        p = self._pending.pop(key, None)
        if p is None:
            return
        if p.timer is not None:
            p.timer.cancel()
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
