"""Model-based test of the Session (issue 17): hypothesis drives it against a small server
that follows docs/protocol.md's cursor semantics (one cursor per connection, `from`, device
filter, gaps under a filter, `progress`), through random appends, trims, subscribes with and
without `from`, unsubscribes, rejected requests, drops and reconnects, JSON and binary
frames, for every combination of consumers. It asserts: every record of a subscribed device
is delivered once and in order or covered by a reported gap, nothing else is delivered, and
the subscription is what the user asked for last."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from iotcommute import payload
from iotcommute.client.session import OP_TEXT, Session, Subscription

FLEET = ("a", "b", "c")
BAD = "zz"
CONSUMERS = ("on_tick", "on_ticks", "on_tick_rows", "on_message", "sink")
COMBOS = [c for n in range(1, len(CONSUMERS) + 1) for c in itertools.combinations(CONSUMERS, n)]
#: batch mode (issue 14): on_batch with any of the others (they then get only the ticks no
#: TickBatch can hold, which the Owner below routes to on_ticks)
BATCH_COMBOS = [("on_batch", *c) for c in [(), *COMBOS]]


def dumps(obj: dict[str, Any]) -> str:
    return orjson.dumps(obj).decode()


class ModelServer:
    """The document's server for one client: a log, and the connection's cursor and set."""

    def __init__(self) -> None:
        self.log: list[tuple[int, str, bool]] = []  # (position, device, json_only)
        self.first = 1
        self.open = False
        self.cursor: int | None = None
        self.devices: set[str] = set()
        self.binary = False
        self.skipped = False

    @property
    def last(self) -> int:
        return self.log[-1][0] if self.log else 0

    def records(self) -> list[tuple[int, str, bool]]:
        return [r for r in self.log if r[0] >= self.first]

    def connect(self) -> list[str]:
        self.open, self.cursor, self.devices, self.skipped = True, None, set(), False
        return [
            dumps(
                {
                    "type": "welcome",
                    "version": 1,
                    "role": "client",
                    "device": None,
                    "user": "u",
                    "position": self.last,
                    "log": "L",
                    "first": self.first,
                    "server": "model",
                }
            )
        ]

    def handle(self, msg: dict[str, Any], on_add: Any, on_remove: Any) -> list[str]:
        kind, mid = msg["type"], msg.get("id")
        devs = msg["devices"]
        wanted = set(FLEET) if devs == "*" else set(devs)
        if wanted - set(FLEET):
            return [dumps({"type": "error", "code": "not_found", "message": "unknown", "id": mid})]
        if kind == "unsubscribe":
            self.devices -= wanted
            on_remove(wanted)
            return [dumps({"type": "unsubscribed", "id": mid, "devices": devs})]
        frm = msg["from"]
        had = bool(self.devices)
        if frm is not None:
            self.cursor = min(frm, self.last)
        elif self.cursor is None or not had:
            self.cursor = self.last
        self.devices |= wanted
        self.binary = msg["format"] == "binary"
        on_add(wanted, self.cursor)
        return [
            dumps(
                {
                    "type": "subscribed",
                    "id": mid,
                    "devices": devs,
                    "position": self.last,
                    "format": msg["format"],
                }
            )
        ]

    def pump(self, limit: int, group: int) -> list[str | bytes]:
        """Up to `limit` records from the cursor (a gap first if they were trimmed)."""
        out: list[str | bytes] = []
        if self.cursor is None or not self.devices:
            return out
        if self.cursor < self.first - 1:
            lost = [p for p, d, _ in self.log if self.cursor < p < self.first and d in self.devices]
            if lost:
                out.append(
                    dumps(
                        {
                            "type": "gap",
                            "from": self.cursor,
                            "to": self.first - 1,
                            "missed": len(lost),
                        }
                    )
                )
            else:
                self.skipped = True
            self.cursor = self.first - 1
        run: list[dict[str, Any]] = []
        sent = 0
        for pos, dev, json_only in self.records():
            if pos <= self.cursor:
                continue
            if sent >= limit:
                break
            self.cursor = pos
            if dev not in self.devices:
                self.skipped = True
                continue
            sent += 1
            self.skipped = False
            tick = {
                "type": "tick",
                "device": dev,
                "position": pos,
                "ts": 1.0,
                "data": {"v": pos} if not json_only else {"s": "text"},
            }
            if self.binary and not json_only:
                run.append(tick)
                if len(run) >= group:
                    out.append(bytes(payload.encode_batch(run)))
                    run = []
                continue
            if run:
                out.append(bytes(payload.encode_batch(run)))
                run = []
            out.append(dumps(tick))
        if run:
            out.append(bytes(payload.encode_batch(run)))
        if self.skipped and self.cursor == self.last:
            out.append(dumps({"type": "progress", "position": self.cursor}))
            self.skipped = False
        return out


class Owner:
    def __init__(self, machine: SessionMachine, consumers: tuple[str, ...]) -> None:
        self.m = machine
        dicts = [c for c in consumers if c in ("on_tick", "on_ticks", "sink")]
        self.channels = dicts or (["on_tick_rows"] if "on_tick_rows" in consumers else ["raw"])
        self.on_tick: Any = None
        self.on_ticks: Any = None
        self.on_tick_rows: Any = None
        self.on_message: Any = None
        self.on_command: Any = None
        self.on_gap: Any = lambda g, w: machine.gaps.append(g)
        self.on_error: Any = lambda e, w: machine.errors.append(e)
        if "on_tick" in consumers:
            self.on_tick = lambda t, w: machine.delivered("on_tick", t["device"], t["position"])
        self.dicts = dicts
        if "on_ticks" in consumers:
            self.on_ticks = self._ticks
        if "on_tick_rows" in consumers:
            self.on_tick_rows = self._rows
        if "on_message" in consumers:
            self.on_message = self._raw if self.channels == ["raw"] else lambda m, w: None
        if "on_batch" in consumers:
            # batch mode: TickBatches, and the ticks no batch can hold as dicts to on_ticks
            # (set here whatever the combination: the documented way to lose nothing)
            self.channels = ["batch"]
            self.on_batch = self._batch
            if self.on_message is not None:
                self.on_message = lambda m, w: None
            self.on_tick = None
            self.on_ticks = self._batch_ticks

    def _batch_ticks(self, ticks: list[dict[str, Any]], w: Any) -> None:
        for t in ticks:
            self.m.delivered("batch", t["device"], t["position"])

    def _batch(self, batch: Any, w: Any) -> None:
        for d, p in zip(batch.column("device").tolist(), batch.column("position").tolist()):
            self.m.delivered("batch", d, p)

    def _ticks(self, ticks: list[dict[str, Any]], w: Any) -> None:
        for t in ticks:
            self.m.delivered("on_ticks", t["device"], t["position"])

    def _rows(self, fields: tuple[str, ...], rows: list[tuple[Any, ...]], w: Any) -> None:
        for r in rows:
            for channel in self.dicts or ["on_tick_rows"]:
                self.m.delivered(channel, r[0], r[1])

    def sink(self, ticks: list[dict[str, Any]]) -> None:
        for t in ticks:
            self.m.delivered("sink", t["device"], t["position"])

    def _raw(self, message: str | bytes, w: Any) -> None:
        if isinstance(message, bytes):
            for t in payload.decode_batch(message):
                self.m.delivered("raw", t["device"], t["position"])
        elif message.startswith('{"type":"tick"'):
            t = orjson.loads(message)
            self.m.delivered("raw", t["device"], t["position"])


class SessionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.server = ModelServer()
        self.gaps: list[dict[str, Any]] = []
        self.errors: list[BaseException] = []
        self.connected = False

    @initialize(
        combo=st.sampled_from(COMBOS),
        fmt=st.sampled_from(["json", "binary"]),
        initial=st.sampled_from(["*", ["a"], ["a", "b"], None]),
    )
    def setup(self, combo: tuple[str, ...], fmt: str, initial: Any) -> None:
        self.owner = Owner(self, combo)
        self.session = Session(self.owner, format=fmt, subscribe=initial)
        if "sink" in combo:
            self.session.sink = self.owner.sink
        # the oracle: the user's set; per device the epoch start and the last delivery
        self.wanted = Subscription()
        self.start: dict[str, int | None] = {}
        self.floor: dict[str, int | None] = {}
        self.seen: dict[str, dict[str, int]] = {c: {} for c in self.owner.channels}
        # per device: the user's unsubscribes the server has not processed yet (requests
        # made offline wait for the next connection); a subscribe answered before them
        # belongs to the old epoch and does not start the new one
        self.unsub_pending: dict[str, int] = dict.fromkeys(FLEET, 0)
        if initial is not None:
            self._user("subscribe", initial, None)

    # ---------------------------------------------------------------- oracle
    def _user(self, kind: str, devices: Any, frm: int | None) -> None:
        devs = frozenset(FLEET) if devices == "*" else frozenset(devices)
        if devs - set(FLEET):
            return  # the server rejects the whole request: nothing changes
        if kind == "subscribe" and frm is not None:
            # the one cursor moves for every device: skipped ahead, or back (repeats dropped)
            for d in FLEET:
                if d in self.wanted:
                    self.floor[d] = max(self.floor.get(d) or 0, frm)
        if kind == "unsubscribe":
            for d in devs:
                self.unsub_pending[d] += 1
        if kind == "subscribe":
            for d in devs:
                if d not in self.wanted:
                    self.start[d] = self.floor[d] = frm
                    for seen in self.seen.values():
                        seen.pop(d, None)
        self.wanted = self.wanted.apply(kind, "*" if devices == "*" else devs)

    def _removed(self, devices: set[str]) -> None:
        for d in devices:  # (a restore also unsubscribes, e.g. "*" minus one device)
            self.unsub_pending[d] = max(0, self.unsub_pending[d] - 1)

    def _added(self, devices: set[str], cursor: int) -> None:
        for d in devices:
            if self.unsub_pending[d]:
                continue  # an answer of the epoch the user's unsubscribe ended
            if d in self.wanted and self.start.get(d) is None:
                self.start[d] = cursor
                self.floor[d] = max(self.floor.get(d) or 0, cursor)

    def delivered(self, channel: str, device: str, pos: int) -> None:
        assert device in self.wanted, (channel, device, pos, self.wanted)
        start = self.start.get(device)
        assert start is not None and pos > start, (device, pos, start)
        last = self.seen[channel].get(device, -1)
        assert pos > last, f"{channel}: {device}@{pos} after {last} (repeat or out of order)"
        self.seen[channel][device] = pos

    # ---------------------------------------------------------------- plumbing
    def flush(self) -> None:
        """Let the server take every frame the session queued, and answer them."""
        while True:
            frames = self.session.frames_to_send()
            if not frames or not self.connected:
                return
            replies: list[str | bytes] = []
            for op, data in frames:
                assert op == OP_TEXT
                replies += self.server.handle(orjson.loads(data), self._added, self._removed)
            self.session.receive(replies)

    # ---------------------------------------------------------------- rules
    @rule(device=st.sampled_from(FLEET), n=st.integers(1, 6), json_only=st.booleans())
    def append(self, device: str, n: int, json_only: bool) -> None:
        for _ in range(n):
            self.server.log.append((self.server.last + 1, device, json_only))

    @rule(n=st.integers(1, 8))
    def trim(self, n: int) -> None:
        self.server.first = min(self.server.first + n, self.server.last + 1)

    @precondition(lambda self: self.connected)
    @rule(limit=st.integers(1, 20), group=st.integers(1, 5))
    def pump(self, limit: int, group: int) -> None:
        self.session.receive(self.server.pump(limit, group))
        self.flush()

    @rule(
        devices=st.sampled_from(["*", ["a"], ["b"], ["c"], ["a", "c"], ["b", BAD]]),
        frm=st.one_of(st.none(), st.integers(0, 40)),
    )
    def subscribe(self, devices: Any, frm: int | None) -> None:
        if frm is not None:
            frm = min(frm, self.server.last)  # `from` beyond the tail is the log-loss case
        self._user("subscribe", devices, frm)
        self.session.subscribe(devices, from_position=frm)
        self.flush()

    @rule(devices=st.sampled_from(["*", ["a"], ["b"], ["a", "b"]]))
    def unsubscribe(self, devices: Any) -> None:
        self._user("unsubscribe", devices, None)
        self.session.unsubscribe(devices)
        self.flush()

    @precondition(lambda self: self.connected)
    @rule()
    def drop(self) -> None:
        self.connected = False
        self.server.open = False
        self.session.closed()

    @precondition(lambda self: not self.connected)
    @rule()
    def reconnect(self) -> None:
        self.connected = True
        self.session.opened()
        self.session.receive(self.server.connect())
        self.flush()

    @invariant()
    def subscription_is_the_users(self) -> None:
        if self.connected and hasattr(self, "session"):
            assert self.session.subscription == self.wanted

    def teardown(self) -> None:
        if not hasattr(self, "session"):
            return
        if not self.connected:
            self.reconnect()
        for _ in range(50):
            self.pump(1000, 3)
        assert self.session.subscription == self.wanted
        # nothing owed is missing: delivered, or trimmed and covered by a reported gap
        for channel, seen_by in self.seen.items():
            for d in FLEET:
                if d not in self.wanted or self.start.get(d) is None:
                    continue
                start = self.start[d]
                assert start is not None
                last = max(seen_by.get(d, start), self.floor.get(d) or 0)
                for pos, dev, _ in self.server.log:
                    if dev != d or pos <= last:
                        continue
                    assert pos < self.server.first and any(
                        g["from"] < pos <= g["to"] for g in self.gaps
                    ), f"{channel}: {d}@{pos} never delivered (start {start}, last {last})"
        for g in self.gaps:  # every gap names a real loss of a device the user wanted
            assert g["missed"] > 0


SessionMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSessionModel = SessionMachine.TestCase


class BatchSessionMachine(SessionMachine):
    """The same model with an on_batch consumer: TickBatches (sliced, filtered or gathered
    from JSON ticks) must give the same delivery guarantee as dicts."""

    @initialize(
        combo=st.sampled_from(BATCH_COMBOS),
        fmt=st.sampled_from(["json", "binary"]),
        initial=st.sampled_from(["*", ["a"], ["a", "b"], None]),
    )
    def setup(self, combo: tuple[str, ...], fmt: str, initial: Any) -> None:
        SessionMachine.setup(self, combo, fmt, initial)


BatchSessionMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBatchSessionModel = BatchSessionMachine.TestCase


def test_offline_requests_keep_an_earlier_replay() -> None:
    """Found by the model: unsubscribe("*"), subscribe("*", from 0), subscribe("*") made
    while offline; the last "from now" must not move the cursor past the replay."""
    s = SessionMachine()
    s.setup(combo=("on_tick",), fmt="json", initial="*")
    s.reconnect()
    s.drop()
    s.append(device="a", json_only=False, n=1)
    s.reconnect()
    s.drop()
    s.reconnect()
    s.drop()
    s.reconnect()
    s.pump(group=1, limit=1)
    s.drop()
    s.unsubscribe(devices="*")
    s.subscribe(devices="*", frm=0)
    s.subscribe(devices="*", frm=None)
    s.teardown()
