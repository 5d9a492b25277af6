"""The IOT commute application protocol as a sans-IO state machine (no sockets, clocks, threads).

`Session` is what turns the messages of one WebSocket stream into deliveries, and the user's
requests into messages, across any number of connections. The engine (client/engine.py)
feeds it and writes what it asks for; the tests drive it directly, the way h11 tests its
connection.

Inputs (events):   ``opened()`` once the upgrade succeeded; ``receive(events)`` with the
                   core's event list (``str`` text, ``bytes`` binary, other core events are
                   passed on to ``on_event``); ``closed(exc)`` when the connection ended;
                   the user's requests: ``subscribe``, ``unsubscribe``, ``encode_publish`` +
                   ``track_publish``, ``encode_command`` + ``start_command``, ``commit``;
                   a group member (``group=``, client/group.py): ``flush_commits()`` from
                   the engine's clock, ``group_took`` from an iterator, ``group_done``
                   from a user that commits by hand (its sink committed).
Outputs (actions): frames to write, taken with ``frames_to_send()`` as ``(opcode, payload)``;
                   calls of the owner's callbacks (on_tick, on_ticks, on_tick_rows,
                   on_message, on_command, on_gap, on_error) and of the resolvers given with
                   a publish or command; the position to checkpoint (``committed``).

Delivery, in one definition: a record is delivered when its position is past the stream's
cursor mirror (``position``) and it is not a repeat of a record already passed for a device
that was subscribed at the time (a ``subscribe`` with ``from`` re-positions the server's
cursor: records of the devices added by it are new, others are repeats). The cursor mirror
moves with every tick, ``gap`` (to ``gap.to``) and ``progress`` message, and every
reconnect resubscribes from it, so each record arrives once, in order, or is covered by
exactly one gap. Control messages are recognised by their first bytes (``{"type":"<name>"``):
a raw consumer's data is never parsed, an application's JSON never taken for control.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from .. import payload
from ..exceptions import (
    ERROR_CODES,
    CommandError,
    ConnectionClosedError,
    DataError,
    DecodeError,
    InputError,
    IotCommuteError,
    NotConnectedError,
    OperationTimeout,
    ServerError,
)
from .group import GroupState

#: orjson.loads's results and errors (json.loads's without orjson); callers catch Exception
_fast_loads: Callable[[Any], Any] = payload.loads_json

__all__ = [
    "JSON_TICKS_CHUNK",
    "OP_BINARY",
    "OP_TEXT",
    "Frame",
    "Resolver",
    "Session",
    "Subscription",
    "batch_layout",
    "batch_span",
    "devices_arg",
    "error_for",
]

log = logging.getLogger("iotcommute.client")

OP_TEXT = 1
OP_BINARY = 2
#: an outgoing message: (opcode, payload); text payloads are UTF-8 bytes
Frame = tuple[int, bytes]
#: called once with (result, None) or (None, error)
Resolver = Callable[[Any, BaseException | None], None]

#: JSON ticks reach on_ticks in lists of at most this many (a list of every tick of a big
#: read keeps ~1000 fresh dicts alive; 32 stays in cache and still amortises the call)
JSON_TICKS_CHUNK = 32

#: 1 a tick, 2 a control message, 0 other text: by the envelope prefix (compiled when built)
text_kind = payload.text_kind
#: the raw consumer's hot loop (payload.deliver_data: compiled when built)
deliver_data = payload.deliver_data
_BATCH_MAGIC = b"\xc1TKB"
_FIELD_SIZES = {1: 8, 2: 8, 3: 4, 4: 1, 5: 4}


def error_for(msg: dict[str, Any]) -> IotCommuteError:
    """The typed exception for a stream ``error`` message (docs/protocol.md, section 4)."""
    code = str(msg.get("code"))
    cls = ERROR_CODES.get(code, ServerError)
    return cls(str(msg.get("message") or "server error"), code=code)


class Owner(Protocol):
    """Where deliveries go: the WebSocket/AsyncWebSocket (callback attributes, may be None)."""

    on_tick: Callable[..., Any] | None
    on_ticks: Callable[..., Any] | None
    on_tick_rows: Callable[..., Any] | None
    on_message: Callable[..., Any] | None
    on_command: Callable[..., Any] | None
    on_gap: Callable[..., Any] | None
    on_error: Callable[..., Any] | None
    # on_batch (optional): read with getattr, so an owner without it still works


class Subscription:
    """A device set: every device of the fleet except ``devices`` (``all``), or ``devices``.

    Immutable; ``apply`` returns the set after a subscribe/unsubscribe request.
    """

    __slots__ = ("all", "devices")

    def __init__(self, all: bool = False, devices: Iterable[str] = ()) -> None:
        self.all = all
        self.devices = frozenset(devices)

    def __contains__(self, device: object) -> bool:
        return (device not in self.devices) if self.all else (device in self.devices)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Subscription):
            return NotImplemented
        return self.all == other.all and self.devices == other.devices

    def __hash__(self) -> int:
        return hash((self.all, self.devices))

    def __bool__(self) -> bool:
        return self.all or bool(self.devices)

    def __repr__(self) -> str:
        if self.all:
            return f"Subscription('*' minus {sorted(self.devices)})"
        return f"Subscription({sorted(self.devices)})"

    def apply(self, kind: str, devices: str | frozenset[str]) -> Subscription:
        if kind == "subscribe":
            if isinstance(devices, str):
                return Subscription(True)
            if self.all:
                return Subscription(True, self.devices - devices)
            return Subscription(False, self.devices | devices)
        if isinstance(devices, str):
            return Subscription()
        if self.all:
            return Subscription(True, self.devices | devices)
        return Subscription(False, self.devices - devices)

    def as_requests(self) -> list[tuple[str, str | frozenset[str]]]:
        """Requests that rebuild this set on a fresh connection."""
        if self.all:
            out: list[tuple[str, str | frozenset[str]]] = [("subscribe", "*")]
            if self.devices:
                out.append(("unsubscribe", self.devices))
            return out
        return [("subscribe", self.devices)] if self.devices else []

    def public(self) -> str | list[str] | None:
        """What the user API shows: "*", a sorted list, or None (nothing)."""
        if self.all:
            return "*"
        return sorted(self.devices) if self.devices else None


def devices_arg(devices: Any) -> str | frozenset[str]:
    """Validate a user's devices argument: "*", a device id, or an iterable of ids."""
    if devices == "*":
        return "*"
    if isinstance(devices, str):
        if not devices:
            raise InputError("a device id must not be empty")
        return frozenset((devices,))
    if isinstance(devices, (list, tuple, set, frozenset)):
        if not devices:
            raise InputError('devices must be "*", a device id or a non-empty list of ids')
        if not all(isinstance(d, str) and d for d in devices):
            raise InputError("device ids must be non-empty strings")
        return frozenset(devices)
    raise InputError(
        f'devices must be "*", a device id or a list of ids, not {type(devices).__name__}'
    )


class _Request:
    __slots__ = ("devices", "frm", "kind")

    def __init__(self, kind: str, devices: str | frozenset[str], frm: int | None) -> None:
        self.kind = kind
        self.devices = devices
        self.frm = frm


def batch_layout(buf: bytes) -> tuple[int, int] | None:
    """(offset of the first row, row size) of a binary tick batch, or None if it is not a
    well-formed one; docs/protocol-binary.md gives the layout."""
    if buf[:4] != _BATCH_MAGIC or len(buf) < 14:
        return None
    n_dev = int.from_bytes(buf[6:8], "little")
    n_fields = int.from_bytes(buf[8:10], "little")
    n_ticks = int.from_bytes(buf[10:14], "little")
    if not n_ticks:
        return None
    off = 14
    sizes = _FIELD_SIZES
    try:
        for _ in range(n_dev):
            off += buf[off] + 1
        row = 18
        for _ in range(n_fields):
            row += sizes[buf[off]]
            off += buf[off + 1] + 2
    except (IndexError, KeyError):
        return None
    if off + n_ticks * row != len(buf):
        return None
    return off, row


def batch_span(buf: bytes) -> tuple[int, int] | None:
    """(first, last) position of a binary tick batch, read without decoding it."""
    layout = batch_layout(buf)
    if layout is None:
        return None
    off, row = layout
    last_at = len(buf) - row + 2
    first = int.from_bytes(buf[off + 2 : off + 10], "little")
    return first, int.from_bytes(buf[last_at : last_at + 8], "little")


def _tick_position(text: str) -> int | None:
    """The position of a JSON tick, found by bytes (a raw consumer's tick is not parsed)."""
    i = text.find('"position":', 14)
    if i < 0:
        return None
    i += 11
    j = i
    n = len(text)
    while j < n and text[j].isdigit():
        j += 1
    return int(text[i:j]) if j > i else None


def _tick_device(text: str) -> Any:
    """The device of a JSON tick, found by bytes when the server wrote it second."""
    if text.startswith('{"type":"tick","device":"'):
        end = text.find('"', 25)
        if end > 0 and "\\" not in text[25:end]:
            return text[25:end]
    try:
        return _fast_loads(text).get("device")
    except Exception:
        return None


def _text_error(text: str) -> DecodeError:
    """The error for a text message that is not a protocol message (never echoes it)."""
    try:
        msg = payload.loads(text)
    except DecodeError as exc:
        return DecodeError(f"undecodable text message: {exc}")
    if not isinstance(msg, dict):
        return DecodeError(f"text message is a JSON {type(msg).__name__}, not an object")
    return DecodeError("text message without a type")


_columnar_module: Any = None


def _columnar() -> Any:
    """payload.columnar, imported on first use: it needs numpy, which a client that never
    asks for batches should not pay for at import. Kept once imported: a ``from`` import
    in a function goes through importlib's fromlist handling on every call (once per read
    on the batch path)."""
    global _columnar_module
    mod = _columnar_module
    if mod is None:
        from ..payload import columnar as mod

        _columnar_module = mod
    return mod


def _shape(tick: dict[str, Any]) -> Any:
    """A JSON tick's data shape (field names and value types): one TickBatch holds one."""
    data = tick.get("data")
    if not isinstance(data, dict):
        return None
    return tuple((k, type(v)) for k, v in data.items())


def _ignore(*args: Any) -> None:
    """Stand-in for a missing callback (keeps the raw loop free of None checks)."""


class Session:
    """The client's protocol state across connections; see the module docstring."""

    def __init__(
        self,
        owner: Owner,
        *,
        format: str = "json",
        subscribe: Any = "*",
        position: int | None = None,
        log_id: str | None = None,
        offline_queue: int = 10000,
        id_prefix: str | None = None,
        on_event: Callable[[Any], None] = _ignore,
        group: str | None = None,
        group_manual: bool = False,
    ) -> None:
        self.owner = owner
        #: consumer-group membership (section 14.3): ownership and per-partition positions
        self.group = GroupState(group, manual=group_manual) if group is not None else None
        #: called with partitions just revoked or lost, before on_revoke: ticks of them
        #: still queued for an iterator must not be handed out (AsyncWebSocket's queue)
        self.drop_queued: Callable[[list[int]], None] | None = None
        #: a member waiting for its last commit's answer before it closes: no more ticks
        self.closing = False
        self.format = format
        self.on_event = on_event
        #: extra tick consumer (AsyncWebSocket's queue): called with each list of new ticks
        self.sink: Callable[[list[dict[str, Any]]], None] | None = None
        #: batch consumer besides on_batch (AsyncWebSocket.batches()): called with each
        #: TickBatch of new ticks; either one puts the session in batch mode (_receive_batches)
        self.batch_sink: Callable[[Any], None] | None = None
        #: True while a consumer holds ticks (an iterator's queue): ``commit()`` then says
        #: what is checkpointed; otherwise a position is committed once its callbacks returned
        self.hold_commit = False
        self.offline_limit = offline_queue
        prefix = id_prefix if id_prefix is not None else secrets.token_hex(8)
        self._prefix = prefix
        self._publish_seq = itertools.count(1)
        self._command_seq = itertools.count(1)
        self._request_seq = itertools.count(1)

        #: the stream cursor mirror: every record <= position was passed (delivered or not
        #: ours); `anchored` once it is a resume point (a subscription reply, a checkpoint)
        self.position = 0
        self.anchored = False
        if position is not None and position >= 0:
            self.position = position
            self.anchored = True
        #: highest position whose callbacks returned / that the user took: the checkpoint
        self.committed = self.position
        #: the server log our positions belong to (welcome's `log`; from a checkpoint at first)
        self.log_id: str | None = log_id
        # repeat windows: (until, devices subscribed then): a record <= until of such a
        # device was passed before a `from` re-positioned the server's cursor
        self._windows: list[tuple[int, Subscription]] = []
        # windows, exclusions or a group: the per-record filter (_fresh) is needed
        self._slow = self.group is not None
        self._layout: tuple[bytes, bytes, int, int] | None = None  # of the last raw batch
        #: _check's cell (a list, so the compiled raw loop sees it change between callbacks)
        self._stop: list[bool] = [True]
        self._check = True  # raw consumer: read each message's position (repeats possible)
        self._tracking = self.anchored

        # subscription state: the server-confirmed set and the requests not answered yet;
        # the user's view is the confirmed set with the pending requests applied
        self.confirmed = Subscription()
        self._pending: OrderedDict[int, _Request] = OrderedDict()
        self._queued: list[_Request] = []  # asked while offline, sent on open
        self._open = False
        self._welcomed = False

        self._out: list[Frame] = []
        # publishes kept until `published` (pid -> payload), in order; offline frames
        self.unacked: OrderedDict[str, bytes] = OrderedDict()
        self.offline: deque[tuple[int, bytes, str | None]] = deque()
        self._publish_waiters: dict[str, Resolver] = {}
        self._commands: dict[str, Resolver] = {}

        self.messages_in = 0
        self.duplicates = 0
        self.gaps = 0
        self.connections = 0

        if self.group is None and subscribe is not None and subscribe != [] and subscribe != ():
            self.subscribe(subscribe)

    # ------------------------------------------------------------------ outputs
    def frames_to_send(self) -> list[Frame]:
        """Frames queued since the last call (write them in this order)."""
        out = self._out
        if out:
            self._out = []
        return out

    @property
    def subscription(self) -> Subscription:
        """What the user asked for last (rejected requests excluded)."""
        sub = self.confirmed
        for req in self._pending.values():
            sub = sub.apply(req.kind, req.devices)
        for req in self._queued:
            sub = sub.apply(req.kind, req.devices)
        return sub

    def stats(self) -> dict[str, Any]:
        extra = {"group": self.group.stats()} if self.group is not None else {}
        return {
            **extra,
            "messages_in": self.messages_in,
            "duplicates_dropped": self.duplicates,
            "gaps": self.gaps,
            "position": self.position,
            "committed": self.committed,
            "connections": self.connections,
            "pending_commands": len(self._commands),
            "unacked_publishes": len(self.unacked),
            "offline_queued": len(self.offline),
        }

    @property
    def _check(self) -> bool:
        """Raw consumer: read each message's position (a repeat is possible)."""
        return self._stop[0]

    @_check.setter
    def _check(self, value: bool) -> None:
        self._stop[0] = value

    # ------------------------------------------------------------------ lifecycle events
    def opened(self) -> None:
        """The WebSocket is open; subscriptions go out when the welcome arrives."""
        self._open = True
        self._welcomed = False
        self.closing = False
        self._check = True
        self.connections += 1
        # publishes first: they need no subscription (re-sends keep their ids, so a
        # server that already stored one answers `duplicate` instead of storing it twice)
        offline_pids = {pid for _, _, pid in self.offline if pid is not None}
        for pid, data in self.unacked.items():
            if pid not in offline_pids:
                self._out.append((OP_TEXT, data))
        while self.offline:
            op, data, _ = self.offline.popleft()
            self._out.append((op, data))

    def closed(self, exc: BaseException | None = None) -> None:
        """The connection ended: pending commands fail; requests and publishes wait for the
        next connection (where the requests are re-sent and the unacked publishes too)."""
        self._open = False
        self._welcomed = False
        self._out = []
        # requests sent but unanswered are asked again, after the restored set
        self._queued[:0] = list(self._pending.values())
        self._pending.clear()
        err = exc if exc is not None else ConnectionClosedError(1006, "connection lost")
        commands, self._commands = self._commands, {}
        for resolve in commands.values():
            resolve(None, err)
        if self.group is not None:
            self._group_dropped(self.group.lost(), "lost with the connection")

    def stopped(self) -> None:
        """The user stopped: waiters of unacked publishes learn it (the publishes stay)."""
        waiters, self._publish_waiters = self._publish_waiters, {}
        for resolve in waiters.values():
            resolve(None, NotConnectedError("the client stopped before the publish was acked"))

    def _restore(self) -> None:
        """After the welcome: rebuild the confirmed set from the resume point and ask the
        unanswered/offline requests again. A group member joins its group again instead
        (never with `from`: the server says where each partition resumes)."""
        if self.group is not None:
            self._send_group_subscribe()
            return
        reqs = [_Request(k, d, None) for k, d in self.confirmed.as_requests()]
        self.confirmed = Subscription()
        every, some = False, set[str]()  # what the new connection follows, request by request
        at: int | None = None  # the lowest `from` that placed the cursor while it follows
        for req in (*reqs, *self._queued):
            frm = req.frm
            if req.kind == "subscribe":
                if frm is None and self.anchored:
                    # "from now" for a request made offline means from our position (the
                    # connection would jump to the tail), or from where an earlier request of
                    # this restore placed the cursor when that is before it (a `from` replay).
                    # Said explicitly, because an earlier request may be refused (an unknown
                    # device) and place nothing; never past our position: nothing is lost.
                    frm = self.position if at is None else min(at, self.position)
                if frm is not None:
                    at = frm if at is None else min(at, frm)
                if req.devices == "*":
                    every, some = True, set()
                elif not every:
                    some |= set(req.devices)
            elif req.devices == "*":
                every, some, at = False, set(), None
            elif not every:
                some -= set(req.devices)
                if not some:
                    at = None
            self._send_request(_Request(req.kind, req.devices, frm))
        self._queued = []

    # ------------------------------------------------------------------ user requests
    def subscribe(self, devices: Any, from_position: int | None = None) -> None:
        """Add devices ("*" = all) from the cursor, or re-position it after `from_position`."""
        self.refuse_in_group("subscribe")
        devs = devices_arg(devices)
        if from_position is not None and (
            isinstance(from_position, bool)
            or not isinstance(from_position, int)
            or from_position < 0
        ):
            raise InputError("from_position must be None or an integer >= 0")
        req = _Request("subscribe", devs, from_position)
        if from_position is not None and not self.anchored:
            # an explicit start point before any stream: it is the resume point
            self.position = self.committed = from_position
            self.anchored = True
        self._request(req)

    def unsubscribe(self, devices: Any) -> None:
        self.refuse_in_group("unsubscribe")
        self._request(_Request("unsubscribe", devices_arg(devices), None))

    def refuse_in_group(self, what: str) -> None:
        if self.group is not None:
            raise InputError(
                f"a group member gets the devices of the partitions it is assigned: {what}() "
                "does not apply"
            )

    def _request(self, req: _Request) -> None:
        """Send now, or after the welcome's restore when one is due (keeping the order)."""
        restore_due = bool(self.confirmed) or bool(self._queued)
        if self._open and (self._welcomed or not restore_due):
            self._send_request(req)
        else:
            self._queued.append(req)
        self._update_slow()

    def _send_request(self, req: _Request) -> None:
        rid = next(self._request_seq)
        self._pending[rid] = req
        devs: str | list[str] = req.devices if isinstance(req.devices, str) else sorted(req.devices)
        msg: dict[str, Any] = {"type": req.kind, "id": rid, "devices": devs}
        if req.kind == "subscribe":
            msg["from"] = req.frm
            msg["format"] = self.format
        self._out.append((OP_TEXT, payload.dumps(msg)))

    def encode_publish(
        self, data: Any, ts: float | None = None, id: Any = None
    ) -> tuple[str, bytes]:
        """(publish id, payload) of one publish; pure, so any thread may call it. Raises
        InputError for data that is not a JSON object or cannot be encoded."""
        if not isinstance(data, dict):
            raise InputError(f"publish data must be a dict, not {type(data).__name__}")
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float))):
            raise InputError("ts must be a number (Unix seconds)")
        pid = id if id is not None else f"{self._prefix}-{next(self._publish_seq)}"
        msg: dict[str, Any] = {"type": "publish", "id": pid, "data": data}
        if ts is not None:
            msg["ts"] = ts
        return str(pid), payload.dumps_int64(msg)

    def track_publish(self, pid: str, data: bytes, waiter: Resolver | None = None) -> None:
        """Keep a publish until its `published` (re-sent after a reconnect until then)."""
        self.unacked[pid] = data
        if waiter is not None:
            self._publish_waiters[pid] = waiter
        while len(self.unacked) > max(self.offline_limit, 1024):
            old, _ = self.unacked.popitem(last=False)
            log.warning(
                "more than %d publishes unacknowledged: %s no longer kept", self.offline_limit, old
            )

    def queue_offline(self, op: int, data: bytes, pid: str | None = None) -> None:
        """Keep a frame for the next connection (bounded: NotConnectedError when full)."""
        if len(self.offline) >= self.offline_limit:
            if pid is not None:
                self.unacked.pop(pid, None)
                self._publish_waiters.pop(pid, None)
            raise NotConnectedError(
                "not connected and the offline queue is full"
                if self.offline_limit
                else "not connected"
            )
        self.offline.append((op, data, pid))

    def encode_command(self, device_id: Any, data: Any) -> tuple[str, bytes]:
        """(command id, payload); ids ``c-<random>-<n>`` cannot collide with another client's."""
        if not isinstance(device_id, str) or not device_id:
            raise InputError("device_id must be a non-empty string")
        cid = f"c-{self._prefix}-{next(self._command_seq)}"
        msg = {"type": "command", "id": cid, "device": device_id, "data": data}
        return cid, payload.dumps_int64(msg)

    def start_command(self, cid: str, data: bytes, resolve: Resolver) -> None:
        if not self._open:
            resolve(None, NotConnectedError("not connected: cannot send a command"))
            return
        self._commands[cid] = resolve
        self._out.append((OP_TEXT, data))

    def expire_command(self, cid: str, timeout: float) -> None:
        resolve = self._commands.pop(cid, None)
        if resolve is not None:
            resolve(None, OperationTimeout(f"no ack for command {cid} within {timeout}s"))

    def commit(self, position: int | None = None) -> None:
        """The user has taken everything up to `position` (default: all passed so far)."""
        self.committed = self.position if position is None else position

    def _update_slow(self) -> None:
        sub = self.subscription
        self._slow = (
            self.group is not None or bool(self._windows) or (sub.all and bool(sub.devices))
        )
        self._check = self._check or self._slow
        # a raw consumer that never subscribed gets no ticks: no position to keep
        self._tracking = self._tracking or bool(sub) or self.anchored

    # ------------------------------------------------------------------ receive path
    def receive(self, events: list[Any]) -> None:
        """One network read's events: the hot path (callbacks bound to locals)."""
        g = self.group
        owner = self.owner
        batches = self.batch_sink is not None or getattr(owner, "on_batch", None) is not None
        if g is not None:
            # every tick through _fresh(), i.e. g.accept()
            if batches:
                self._receive_batches(events)
            else:
                self._receive_ticks(events)
            if not self.hold_commit:
                g.all_done()  # what the callbacks returned for may be committed
            return
        if batches:
            self._receive_batches(events)
        elif (
            owner.on_tick is None
            and owner.on_ticks is None
            and owner.on_tick_rows is None
            and self.sink is None
        ):
            if self._tracking:
                self._receive_raw(events, owner.on_message or _ignore)
            else:
                self._receive_untracked(events, owner.on_message or _ignore)
        else:
            self._receive_ticks(events)
        if not self.hold_commit:
            self.committed = self.position

    def _receive_raw(self, events: list[Any], on_message: Callable[..., Any]) -> None:
        """No tick consumer, a subscription to track: data goes to on_message untouched;
        only control messages are parsed. Positions are read by bytes: message by message
        only while a repeat is possible (the first data after a (re)subscription, or a
        replay window), else once per read, from the read's last tick or batch (the stream
        only goes forward)."""
        owner = self.owner
        n = 0
        latest: Any = None  # the last tick/batch passed on whose position is not read yet
        stop = self._stop  # _check's cell: set, the compiled run hands each message back
        failed = self._callback_failed
        i, k = 0, len(events)
        while i < k:
            if not stop[0]:
                # not checking positions: the run of data messages goes by in one call
                j, last = deliver_data(events, i, on_message, owner, failed, stop)
                n += j - i
                if last is not None:
                    latest = last
                if j >= k:
                    break
                i = j  # a control message or event, or data now to be checked one by one
            ev = events[i]
            i += 1
            t = type(ev)
            if t is bytes:
                n += 1
                if ev and ev[0] == 0xC1:  # a tick batch's magic starts with \xc1
                    if not self._check:
                        latest = ev
                    else:
                        ev = self._raw_checked_batch(ev)
                        if ev is None:
                            continue
            elif t is str:
                n += 1
                kind = text_kind(ev)
                if kind == 1:  # a tick
                    if not self._check:
                        latest = ev
                    else:
                        pos = _tick_position(ev)
                        if pos is not None:
                            if not self._fresh(_tick_device(ev), pos):
                                continue
                            self._check = self._slow
                elif kind == 2:  # a control message
                    try:
                        on_message(ev, owner)
                    except Exception as exc:
                        failed("on_message", exc)
                    self._raw_position(latest)
                    latest = None
                    self._control_text(ev)
                    continue
            else:
                self._raw_position(latest)
                latest = None
                self.on_event(ev)
                continue
            try:
                on_message(ev, owner)
            except Exception as exc:
                failed("on_message", exc)
        self._raw_position(latest)
        self.messages_in += n

    def _receive_untracked(self, events: list[Any], on_message: Callable[..., Any]) -> None:
        """Raw consumer with no subscription (the application's own messages): no position
        to keep; only control messages (commands, acks, ...) are looked at."""
        owner = self.owner
        failed = self._callback_failed
        n = 0
        i, k = 0, len(events)
        while i < k:
            j, _ = deliver_data(events, i, on_message, owner, failed, None)
            n += j - i
            if j >= k:
                break
            ev = events[j]
            i = j + 1
            if type(ev) is str:  # a control message (deliver_data passes other text on)
                n += 1
                try:
                    on_message(ev, owner)
                except Exception as exc:
                    failed("on_message", exc)
                self._control_text(ev)
            else:
                self.on_event(ev)
        self.messages_in += n

    def _raw_position(self, latest: Any) -> None:
        """Move the cursor to the position of the last data message passed on raw."""
        if latest is None:
            return
        if type(latest) is str:
            pos = _tick_position(latest)
        else:
            span = self._span(latest)
            pos = span[1] if span is not None else None
        if pos is not None and pos > self.position:
            self.position = pos
            self.anchored = True

    def _raw_checked_batch(self, ev: bytes) -> bytes | None:
        """A raw batch while repeats are possible: passed whole when all new, cut to its new
        ticks (re-encoded) when it overlaps, dropped when all old."""
        span = self._span(ev)
        if span is None:
            return ev  # not a batch after all: application data
        if not self._slow and span[0] > self.position:
            self.position = span[1]
            self.anchored = True
            self._check = False
            return ev
        out = self._raw_batch_slow(ev)
        if out is not None:  # something new: the stream is past the repeats
            self._check = self._slow
        return out

    def _span(self, buf: bytes) -> tuple[int, int] | None:
        """batch_span(), with the tables' layout remembered: a fleet's batches often repeat
        the same device and field tables, then it is two bytes comparisons."""
        cached = self._layout
        if cached is not None and buf.startswith(cached[0]) and buf.startswith(cached[1], 14):
            off, row = cached[2], cached[3]
        else:
            layout = batch_layout(buf)
            if layout is None:
                return None
            off, row = layout
            self._layout = (buf[:10], buf[14:off], off, row)
        end = len(buf)
        if end <= off or (end - off) % row:
            return None
        return (
            int.from_bytes(buf[off + 2 : off + 10], "little"),
            int.from_bytes(buf[end - row + 2 : end - row + 10], "little"),
        )

    def _raw_batch_slow(self, ev: bytes) -> bytes | None:
        """A raw batch that may hold repeats: its new ticks only (re-encoded if needed)."""
        ticks = self._decoded(payload.decode_batch, ev)
        if not ticks:
            return None
        fresh = [t for t in ticks if self._fresh(t["device"], t["position"])]
        if len(fresh) == len(ticks):
            return ev
        return payload.encode_batch(fresh) if fresh else None

    def _receive_ticks(self, events: list[Any]) -> None:
        """Tick consumers present: JSON ticks and binary batches decode to dicts (or rows).

        on_ticks/sink get each binary batch's new ticks as one list and the JSON ticks of one
        read in lists of at most JSON_TICKS_CHUNK, in stream order. With on_tick_rows set,
        binary batches go to it alone; a JSON tick goes to it (as one row) only when no
        dict consumer is set, so a binary subscriber never loses the JSON fallback ticks.

        A group member's read comes here too, always on the slow path: _fresh() asks the
        group whether a tick's partition is owned and the tick new, so ticks reach the
        consumers in stream order with the control messages and none of a partition after
        its ``revoke``. on_message still sees every message as received.
        """
        owner = self.owner
        on_tick = owner.on_tick
        on_ticks = owner.on_ticks
        on_rows = owner.on_tick_rows
        on_message = owner.on_message
        sink = self.sink
        dicts = on_tick is not None or on_ticks is not None or sink is not None
        loads = _fast_loads
        decode_batch = payload.decode_batch
        pending: list[dict[str, Any]] | None = (
            [] if (on_ticks is not None or sink is not None) else None
        )
        n = 0
        last = self.position  # a local on the hot path; self.position around other code
        slow = self._slow
        for ev in events:
            t = type(ev)
            if t is not str and t is not bytes:
                if pending:
                    self._deliver_ticks(pending, sink, on_ticks)
                    pending = []
                self.position = last
                self.on_event(ev)
                last, slow = self.position, self._slow
                continue
            n += 1
            if on_message is not None:
                try:
                    on_message(ev, owner)
                except Exception as exc:
                    self._callback_failed("on_message", exc)
            if t is str:
                if text_kind(ev) == 1:  # a tick
                    try:
                        msg = loads(ev)
                        pos = msg["position"]
                    except Exception:
                        pos = None
                    if type(pos) is not int:
                        self._report(DecodeError("tick without an integer position"))
                        continue
                    if pos > last and not slow:
                        last = pos
                    else:
                        self.position = last
                        fresh = self._fresh(msg.get("device"), pos)
                        last = self.position
                        if not fresh:
                            continue
                    if not dicts:
                        self.position = last
                        self._json_row(msg, on_rows)
                        continue
                    if on_tick is not None:
                        try:
                            on_tick(msg, owner)
                        except Exception as exc:
                            self._callback_failed("on_tick", exc)
                    if pending is not None:
                        pending.append(msg)
                        if len(pending) >= JSON_TICKS_CHUNK:
                            self._deliver_ticks(pending, sink, on_ticks)
                            pending = []
                    continue
                if pending:
                    self._deliver_ticks(pending, sink, on_ticks)
                    pending = []
                self.position = last
                self._control_or_error(ev)
                last, slow = self.position, self._slow
            else:
                if pending:
                    self._deliver_ticks(pending, sink, on_ticks)
                    pending = []
                if on_rows is not None:
                    self.position = last
                    self._deliver_rows(ev, on_rows)
                    last = self.position
                    continue
                ticks = self._decoded(decode_batch, ev)
                if not ticks:
                    continue
                if not slow and ticks[0]["position"] > last:
                    # a batch is a slice of the log: one comparison proves it all new
                    last = ticks[-1]["position"]
                    if on_tick is not None:
                        for tick in ticks:
                            try:
                                on_tick(tick, owner)
                            except Exception as exc:
                                self._callback_failed("on_tick", exc)
                    if pending is not None:
                        self._deliver_ticks(ticks, sink, on_ticks)
                    continue
                self.position = last
                for tick in ticks:
                    if not self._fresh(tick["device"], tick["position"]):
                        continue
                    if on_tick is not None:
                        try:
                            on_tick(tick, owner)
                        except Exception as exc:
                            self._callback_failed("on_tick", exc)
                    if pending is not None:
                        pending.append(tick)
                last = self.position
                if pending:
                    self._deliver_ticks(pending, sink, on_ticks)
                    pending = []
        self.messages_in += n
        if last != self.position or not self.anchored:
            if last:
                self.anchored = True
            self.position = last
        if pending:
            self._deliver_ticks(pending, sink, on_ticks)

    # ------------------------------------------------------------------ batch mode
    def _receive_batches(self, events: list[Any]) -> None:
        """Batch mode (on_batch or a batch_sink set): every new tick reaches them in a
        `TickBatch`, in stream order; dict and row consumers get no ticks here.

        A binary batch is decoded by payload.columnar's selector (compiled when built, the
        pure twin otherwise); rows at or below the cursor are sliced off without a copy
        (`slice_after`); under a replay window or an exclusion the rows are filtered one by
        one and the survivors re-packed (one copy, rare). JSON ticks (the server sends as
        JSON the ticks a batch cannot carry) are gathered per run of one data shape into
        `TickBatch.from_ticks`; a run ends at any other message, so order is kept. A tick
        no batch can hold (a string or nested value) goes to on_ticks / on_tick as a dict
        when one is set, else to on_error as a DataError naming its position: never dropped
        silently. The checkpoint (`committed`) moves after receive() returns, i.e. after
        the callbacks of the read returned (or, with hold_commit, when the user commits).
        """
        decode = _columnar().decode_batch_columns
        on_message = self.owner.on_message
        run: list[dict[str, Any]] = []
        n = 0
        for ev in events:
            t = type(ev)
            if t is str or t is bytes:
                n += 1
                if on_message is not None:
                    self.callback("on_message", on_message, ev)
                if t is str and text_kind(ev) == 1:  # a tick
                    msg = self._json_tick(ev)
                    if msg is not None and self._fresh(msg.get("device"), msg["position"]):
                        run.append(msg)
                    continue
            if run:  # any other message ends the run: order is kept
                self.flush_json_run(run)
                run = []
            if t is bytes:
                self._deliver_batch(ev, decode)
            elif t is str:
                self._control_or_error(ev)
            else:
                self.on_event(ev)
        if run:
            self.flush_json_run(run)
        self.messages_in += n

    def _json_tick(self, ev: str) -> dict[str, Any] | None:
        """A JSON tick message decoded, or None once reported (no integer position).
        _receive_ticks does the same inline: one call less per tick on its hot path."""
        try:
            msg = _fast_loads(ev)
        except Exception:
            msg = None
        if type(msg) is dict and type(msg.get("position")) is int:
            return msg
        self._report(DecodeError("tick without an integer position"))
        return None

    def _control_or_error(self, ev: str) -> None:
        """A text message that is not a tick: a control message, else reported."""
        if text_kind(ev) == 2:
            self._control_text(ev)
        else:
            self._report(_text_error(ev))

    def _deliver_batch(self, ev: bytes, decode: Callable[[bytes], Any]) -> None:
        """One binary batch frame: its new rows, as a TickBatch, to the batch consumers."""
        try:
            batch = decode(ev)
        except DecodeError as exc:
            if exc.position is None:
                span = self._span(ev)
                if span is not None:
                    exc.position = span[0]
            self._report(exc)
            return
        except Exception as exc:
            self._report(DecodeError(f"undecodable tick batch: {exc}"))
            return
        n = len(batch)
        if not n:
            return
        if not self._slow:
            cursor = self.position
            if batch.first_position <= cursor:
                if batch.last_position <= cursor:
                    self.duplicates += n
                    return
                batch = batch.slice_after(cursor)  # a view: no copy
                self.duplicates += n - len(batch)
            self.position = batch.last_position
            self.anchored = True
        else:
            batch = self._filter_batch(batch)
            if batch is None:
                return
        self._hand_batch(batch)

    def _filter_batch(self, batch: Any) -> Any:
        """Slow path: each row through the duplicate filter; a suffix of survivors stays a
        view, any other selection is a copy of the kept rows (`TickBatch.filter`)."""
        devices = batch.devices
        positions = batch.column("position").tolist()
        fresh = self._fresh
        keep = [fresh(devices[c], p) for c, p in zip(batch.codes.tolist(), positions)]
        n, k = len(keep), keep.count(True)
        if not k:
            return None
        if k == n:
            return batch
        if all(keep[n - k :]):
            return batch.slice_after(positions[n - k - 1])
        return batch.filter(keep)

    def flush_json_run(self, run: list[dict[str, Any]]) -> None:
        """Fresh tick dicts, in order, to the batch consumers: runs of one data shape as
        TickBatches (AsyncWebSocket.batches() also hands its queued dicts over here)."""
        from_ticks = _columnar().TickBatch.from_ticks
        group: list[dict[str, Any]] = []
        shape: Any = None
        for tick in [*run, None]:
            sig = _shape(tick) if tick is not None else None
            if group and (tick is None or sig != shape or len(group) >= 4096):
                try:
                    batch = from_ticks(group)
                except (InputError, DecodeError):
                    for one in group:
                        self._unbatchable(one)
                else:
                    self._hand_batch(batch)
                group = []
            if tick is not None:
                shape = sig
                group.append(tick)

    def _unbatchable(self, tick: dict[str, Any]) -> None:
        """A tick no TickBatch can carry: to a dict consumer, else reported (not dropped)."""
        owner = self.owner
        if owner.on_ticks is not None:
            self.callback("on_ticks", owner.on_ticks, [tick])
        elif owner.on_tick is not None:
            self.callback("on_tick", owner.on_tick, tick)
        else:
            self._report(
                DataError(
                    f"tick at position {tick.get('position')} cannot be a TickBatch (its data "
                    "is not only numbers and bools); set on_ticks to receive such ticks"
                )
            )

    def _hand_batch(self, batch: Any) -> None:
        sink = self.batch_sink
        if sink is not None:
            sink(batch)
        on_batch = getattr(self.owner, "on_batch", None)
        if on_batch is not None:
            try:
                on_batch(batch, self.owner)
            except Exception as exc:
                self._callback_failed("on_batch", exc)

    def _fresh(self, device: Any, pos: int) -> bool:
        """Slow path of the duplicate filter; moves the cursor past the record. A group
        member asks its GroupState instead (owned partition, past what this tenure
        delivered), and takes no tick once closing (stop() was called, maybe from a
        callback: the rest of the read is not delivered)."""
        g = self.group
        if g is not None:
            return not self.closing and g.accept(device, pos)
        if pos <= self.position:
            self.duplicates += 1
            return False
        self.position = pos
        self.anchored = True
        if not self._slow:
            return True
        windows = self._windows
        if windows:
            fresh = True
            for until, old in windows:
                if pos <= until and device in old:
                    fresh = False
                    break
            if windows[0][0] <= pos:
                self._windows = [w for w in windows if w[0] > pos]
                self._update_slow()
            if not fresh:
                self.duplicates += 1
                return False
        sub = self.subscription
        return not (sub.all and device in sub.devices)

    def _json_row(self, msg: dict[str, Any], on_rows: Callable[..., Any] | None) -> None:
        """A JSON tick for an on_tick_rows-only consumer: one row of its own shape."""
        if on_rows is None:
            return
        data = msg.get("data")
        if not isinstance(data, dict):
            data = {}
        row = (msg.get("device"), msg["position"], msg.get("ts"), *data.values())
        try:
            on_rows(tuple(data), [row], self.owner)
        except Exception as exc:
            self._callback_failed("on_tick_rows", exc)

    def _decoded(self, decode: Callable[[bytes], Any], ev: bytes) -> Any:
        """decode(ev), or None once the failure is reported (the stream goes on)."""
        try:
            return decode(ev)
        except DecodeError as exc:
            self._report(exc)
        except Exception as exc:
            self._report(DecodeError(f"undecodable tick batch: {exc}"))
        return None

    def _deliver_rows(self, ev: bytes, on_rows: Callable[..., Any]) -> None:
        """One binary batch to on_tick_rows, only its new rows."""
        decoded = self._decoded(payload.decode_batch_rows, ev)
        if decoded is None or not decoded[1]:
            return
        fields, rows = decoded
        if not self._slow and rows[0][1] > self.position:
            self.position = rows[-1][1]
            self.anchored = True
        else:
            fresh = [row for row in rows if self._fresh(row[0], row[1])]
            if not fresh:
                return
            rows = fresh
        try:
            on_rows(fields, rows, self.owner)
        except Exception as exc:
            self._callback_failed("on_tick_rows", exc)

    def _deliver_ticks(
        self,
        ticks: list[dict[str, Any]],
        sink: Callable[[list[dict[str, Any]]], None] | None,
        on_ticks: Callable[..., Any] | None,
    ) -> None:
        if sink is not None:
            sink(ticks)
        if on_ticks is not None:
            try:
                on_ticks(ticks, self.owner)
            except Exception as exc:
                self._callback_failed("on_ticks", exc)

    # ------------------------------------------------------------------ consumer group
    def _send_group_subscribe(self) -> None:
        g = self.group
        assert g is not None
        rid = next(self._request_seq)
        g.sub_id = rid
        msg = {"type": "subscribe", "id": rid, "group": g.name, "format": self.format}
        self._out.append((OP_TEXT, payload.dumps(msg)))

    def flush_commits(self) -> bool:
        """Queue a ``commit`` for the owned partitions whose processed position moved,
        unless one is in flight. The engine calls it when ``group.due`` (every
        COMMIT_EVERY ticks processed), once a second, and before a graceful close (the
        session has no clock). True while a commit is in flight."""
        g = self.group
        if g is None or not self._open:
            return False
        msg = g.commit_message()
        if msg is not None:
            self._out.append((OP_TEXT, payload.dumps(msg)))
        return g.inflight is not None

    def group_done(self, positions: dict[int, int]) -> None:
        """(manual commits) The user stored its partitions' ticks up to these positions:
        commit them now, or after the commit in flight."""
        g = self.group
        if g is not None:
            g.done_upto(positions)
            if g.due:
                self.flush_commits()

    def group_took(self, tick: Any) -> None:
        """The iterator's user finished with `tick` (it asked for the next one)."""
        g = self.group
        if g is not None and type(tick) is dict:
            g.took(tick.get("device"), tick.get("position"))

    def _group_dropped(self, parts: list[int], why: str = "revoked") -> None:
        """Partitions are no longer ours: queued ticks of them go, then on_revoke."""
        if not parts:
            return
        g = self.group
        assert g is not None
        log.info("group %s: partitions %s %s", g.name, parts, why)
        if self.drop_queued is not None:
            self.drop_queued(parts)
        self.callback("on_revoke", getattr(self.owner, "on_revoke", None), parts)

    def _h_assign(self, msg: dict[str, Any]) -> None:
        g = self.group
        if g is None:
            return
        parts = g.assign(msg)
        if parts:
            log.info("group %s: assigned partitions %s of %d", g.name, parts, g.of)
            self.callback("on_assign", getattr(self.owner, "on_assign", None), parts)

    def _h_revoke(self, msg: dict[str, Any]) -> None:
        """Revoked partitions: no more of their ticks; the callbacks of the ticks before
        this message returned, so they count as finished (unless an iterator or the user
        commits); on_revoke may still commit them by hand; then one last commit releases
        them, so their next owner starts right after what this member finished."""
        g = self.group
        if g is None:
            return
        if not self.hold_commit:
            g.all_done()
        self._group_dropped(g.revoke(msg.get("partitions")))
        release = g.release_message()
        if release is not None and self._open:
            self._out.append((OP_TEXT, payload.dumps(release)))

    def _h_committed(self, msg: dict[str, Any]) -> None:
        g = self.group
        if g is None:
            return
        refused = g.committed(msg)
        if refused:
            # the revoke came first; the ticks after our last accepted commit of these
            # partitions go to their next owner (the documented duplicates)
            log.info("group %s: commit refused for partitions %s (not ours any more)", g.name,
                     refused)  # fmt: skip

    # ------------------------------------------------------------------ control messages
    def _control_text(self, text: str) -> None:
        try:
            msg = payload.loads(text)
            kind = msg["type"]
        except Exception:
            self._report(_text_error(text))
            return
        self.control(kind, msg)

    def control(self, kind: str, msg: dict[str, Any]) -> None:
        """Act on one parsed control message (welcome, subscribed, gap, progress, ...)."""
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, msg)
        # unknown types are ignored (docs/protocol.md, section 11)

    def _h_welcome(self, msg: dict[str, Any]) -> None:
        log.debug("welcome: server %s, log position %s", msg.get("server"), msg.get("position"))
        new_log = msg.get("log")
        if isinstance(new_log, str):
            if self.log_id is not None and new_log != self.log_id and self.anchored:
                self._log_reset(new_log)
            self.log_id = new_log
        self._welcomed = True
        self._restore()

    def _log_reset(self, new_log: str) -> None:
        """The server's log is another one than our positions belong to: start it from 0."""
        old = self.position
        self.position = 0
        self.committed = 0
        self._windows = []
        self._update_slow()
        gap = {
            "type": "gap",
            "from": old,
            "to": None,
            "missed": None,
            "reason": "log_reset",
            "log": new_log,
        }
        self.gaps += 1
        log.warning("the server's log was reset (new log %s): reading it from the start", new_log)
        self._report(
            DataError(f"server log reset after position {old}; reading the new log from its start")
        )
        self.callback("on_gap", self.owner.on_gap, gap)

    def _h_subscribed(self, msg: dict[str, Any]) -> None:
        mid = msg.get("id")
        g = self.group
        if g is not None:
            if mid == g.sub_id:
                g.member = msg.get("member")
                log.info("joined group %s as member %s", g.name, g.member)
            return
        req = self._pending.pop(mid, None) if isinstance(mid, int) else None
        pos = msg.get("position")
        before = self.confirmed
        if req is not None:
            self.confirmed = before.apply("subscribe", req.devices)
        if type(pos) is not int:
            return
        frm = req.frm if req is not None else None
        if frm is not None and pos < frm:
            # the log's tail is behind where we asked to start: the server lost its log
            # (no log identity to tell); its cursor restarts at its tail, so follow it
            self._report(
                DataError(
                    f"server log went back from position {frm} to {pos} "
                    "(log lost on the server); continuing from its tail"
                )
            )
            self.position = pos
            self._windows = []
        elif frm is not None:
            if frm > self.position:
                self.position = frm  # the user skipped ahead: so did the server's cursor
            elif frm < self.position:
                # the server's cursor goes back to frm: records up to our position of the
                # devices subscribed before this request are repeats
                self._windows.append((self.position, before))
                self.position = frm
        elif not self.anchored or not before:
            # from now: the server starts at its tail (also after an unsubscribe of all)
            self.position = max(self.position, pos) if self.anchored else pos
        self.anchored = True
        self._check = True  # the stream may restart at `from`: read positions again
        self._update_slow()

    def _h_unsubscribed(self, msg: dict[str, Any]) -> None:
        mid = msg.get("id")
        req = self._pending.pop(mid, None) if isinstance(mid, int) else None
        if req is not None:
            self.confirmed = self.confirmed.apply("unsubscribe", req.devices)
            # a device removed and added again later starts afresh: not a repeat then
            windows = [(u, old.apply("unsubscribe", req.devices)) for u, old in self._windows]
            self._windows = [w for w in windows if w[1]]
            self._update_slow()

    def _h_gap(self, msg: dict[str, Any]) -> None:
        to = msg.get("to")
        if type(to) is not int or to <= self.position:
            return  # already reported (or before our cursor): not a new loss
        self.position = to
        self.anchored = True
        if self._windows:
            self._windows = [w for w in self._windows if w[0] > to]
            self._update_slow()
        if msg.get("missed") == 0:
            return  # nothing of our devices was lost
        self.gaps += 1
        log.warning(
            "gap: %s ticks after position %s were trimmed", msg.get("missed"), msg.get("from")
        )
        self.callback("on_gap", self.owner.on_gap, msg)

    def _h_progress(self, msg: dict[str, Any]) -> None:
        pos = msg.get("position")
        if type(pos) is int and pos > self.position:
            self.position = pos
            self.anchored = True
            if self._windows:
                self._windows = [w for w in self._windows if w[0] > pos]
                self._update_slow()

    def _h_command(self, msg: dict[str, Any]) -> None:
        self.callback("on_command", self.owner.on_command, msg)

    def _h_ack(self, msg: dict[str, Any]) -> None:
        resolve = self._commands.pop(str(msg.get("id")), None)
        if resolve is None:
            return
        if msg.get("ok") is True:
            resolve(msg, None)
        else:
            resolve(None, CommandError(str(msg.get("error") or "command failed")))

    def _h_published(self, msg: dict[str, Any]) -> None:
        pid = str(msg.get("id"))
        self.unacked.pop(pid, None)
        waiter = self._publish_waiters.pop(pid, None)
        if waiter is not None:
            waiter(msg.get("position"), None)

    def _h_error(self, msg: dict[str, Any]) -> None:
        exc = error_for(msg)
        mid = msg.get("id")
        if self.group is not None and self.group.commit_failed(mid):
            self._report(exc)  # sent again by the next flush
            return
        if isinstance(mid, int) and not isinstance(mid, bool):
            req = self._pending.pop(mid, None)
            if req is not None:
                # rejected: nothing changed on the server, so nothing changes here either
                self._update_slow()
                self._report(exc)
                return
        key = str(mid)
        resolve = self._commands.pop(key, None)
        if resolve is not None:
            resolve(None, exc)
            return
        if key in self.unacked:
            # refused (not stored): re-sending cannot help
            del self.unacked[key]
            waiter = self._publish_waiters.pop(key, None)
            if waiter is not None:
                waiter(None, exc)
                return
        self._report(exc)

    # ------------------------------------------------------------------ reporting
    def callback(self, name: str, fn: Callable[..., Any] | None, *args: Any) -> None:
        """Call a user callback; one that raises goes to on_error (the stream goes on)."""
        if fn is None:
            return
        try:
            fn(*args, self.owner)
        except Exception as exc:
            self._callback_failed(name, exc)

    def _callback_failed(self, name: str, exc: Exception) -> None:
        log.error("%s callback raised", name, exc_info=exc)
        self.notify_error(exc)

    def _report(self, exc: BaseException) -> None:
        log.warning("%s: %s", type(exc).__name__, exc)
        self.notify_error(exc)

    def notify_error(self, exc: BaseException) -> None:
        on_error = self.owner.on_error
        if on_error is not None:
            try:
                on_error(exc, self.owner)
            except Exception:
                log.exception("on_error callback raised")


_HANDLERS: dict[str, Callable[[Session, dict[str, Any]], None]] = {
    "welcome": Session._h_welcome,
    "subscribed": Session._h_subscribed,
    "unsubscribed": Session._h_unsubscribed,
    "gap": Session._h_gap,
    "progress": Session._h_progress,
    "command": Session._h_command,
    "ack": Session._h_ack,
    "published": Session._h_published,
    "error": Session._h_error,
    "assign": Session._h_assign,
    "revoke": Session._h_revoke,
    "committed": Session._h_committed,
}
