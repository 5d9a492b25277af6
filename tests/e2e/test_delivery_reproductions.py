"""Issue 17's reproductions, each a regression test against the reference server.

Every test runs the public client (`WebSocket`, once `AsyncWebSocket`) against the reference
server on loopback, and drops connections for real: the server aborts its side of every
stream (`abort_streams`), or restarts. Records are appended on the server's loop, so "while
the client was away" is exact: the abort and the appends run in one call there, before the
client can reconnect. Nothing waits on time: every wait is a condition with a deadline,
and the last record of each test is a sentinel, so "nothing more arrived" is checked by
comparing the complete list once the sentinel is in.

Already covered elsewhere against real sockets (not repeated here):
- keep-alive, a peer that streams but never answers pings is alive:
  tests/client/test_api.py::test_keepalive_any_frame_proves_life (a misbehaving peer, which
  the reference server cannot be);
- JSON fallback ticks and the lean rows of ordinary ticks:
  tests/client/test_client.py::test_on_tick_rows_against_the_reference_server (numbers only);
- a gap on the first connect: tests/client/test_reconnect.py::
  test_gap_reported_when_resume_point_was_trimmed (once, without a reconnect);
- a smaller restarted in-memory log: tests/client/test_reconnect.py::
  test_server_that_lost_its_log_is_followed_not_ignored.
The socket-free twins of these tests are in tests/client/test_session.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from iotcommute import AsyncWebSocket, WebSocket, payload
from iotcommute.exceptions import DataError, InputError, NotFoundError, RateLimitError
from iotcommute.server import ServerThread
from iotcommute.server.registry import (
    DEMO_API_KEY,
    DEMO_USER,
    README_DEVICE_ID,
    README_DEVICE_KEY,
    Device,
    demo_registry,
    sim_device_id,
)
from tests.client.test_client_support import wait_for

pytestmark = pytest.mark.timeout(60)

KEY, DEV = README_DEVICE_KEY, README_DEVICE_ID
SIM1, SIM2 = sim_device_id(1), sim_device_id(2)

Stream = tuple[int, str, frozenset[str]]  # (connection id, peer, subscribed devices)


# ------------------------------------------------------------------------------ helpers


def append(srv: ServerThread, device: str, *data: dict[str, Any]) -> list[int]:
    """Append records of one device on the server's loop; their positions."""
    return srv.call(lambda: [srv.hub.log.append(device, d) for d in data])


def numbered(device: str, n: int) -> Callable[[ServerThread], list[int]]:
    """A deferred append of n numeric records (run inside another server call)."""
    return lambda srv: [srv.hub.log.append(device, {"i": i, "t": 20.5 + i}) for i in range(n)]


def streams(srv: ServerThread) -> list[Stream]:
    """The server's WebSocket connections that have a cursor, with their device sets."""

    def go() -> list[Stream]:
        return [
            (id(c), c.peer, frozenset(c.devices))
            for c in srv.hub.connections
            if c.cursor is not None and not c.closed
        ]

    return srv.call(go)


def wait_stream(
    srv: ServerThread,
    devices: Callable[[frozenset[str]], bool] = bool,
    old: Sequence[Stream] = (),
) -> list[Stream]:
    """Wait until a stream other than `old` ones is subscribed to `devices` (server side:
    records appended afterwards reach it); returns the streams then."""
    gone = {(k, p) for k, p, _ in old}
    found: list[list[Stream]] = []

    def ready() -> bool:
        now = streams(srv)
        if any((k, p) not in gone and devices(d) for k, p, d in now):
            found.append(now)
            return True
        return False

    wait_for(ready, what="a subscribed stream")
    return found[-1]


def abort_streams(srv: ServerThread, then: Callable[[ServerThread], object] | None = None) -> None:
    """Drop every WebSocket connection (TCP abort, no close frame), then run `then` on the
    server's loop before any client can come back."""

    def go() -> None:
        for c in list(srv.hub.connections):
            if c.ws is not None:
                c.abort()
        if then is not None:
            then(srv)

    srv.call(go)


def client(srv: ServerThread, **kw: Any) -> WebSocket:
    kw.setdefault("max_reconnect_delay", 0.1)
    return WebSocket(KEY, DEV, "device", url=srv.url, **kw)


def token_client(srv: ServerThread, **kw: Any) -> WebSocket:
    session = srv.call(srv.hub.registry.sessions.create, DEMO_USER, DEMO_API_KEY, 600.0)
    kw.setdefault("max_reconnect_delay", 0.1)
    return WebSocket(api_key=DEMO_API_KEY, access_token=session.access_token, url=srv.url, **kw)


@contextlib.contextmanager
def running(*clients: WebSocket) -> Iterator[None]:
    for ws in clients:
        ws.connect(threaded=True)
    try:
        wait_for(lambda: all(ws.is_connected() for ws in clients), what="connected clients")
        yield
    finally:
        for ws in clients:
            ws.stop()
        for ws in clients:
            assert ws.join(10), "connect() did not return after stop()"


def positions_of_raw(messages: list[str | bytes]) -> list[int]:
    """Tick positions in raw messages: binary batches and JSON tick texts, in order."""
    out: list[int] = []
    for m in list(messages):
        if isinstance(m, bytes):
            out += [t["position"] for t in payload.decode_batch(m)]
        elif m.startswith('{"type":"tick"'):
            out.append(json.loads(m)["position"])
    return out


# ------------------------------------------------------------------- the reproductions


def test_empty_log_then_a_drop_loses_nothing(ref_server: ServerThread) -> None:
    """Connected on an empty log, dropped before the first tick, records 1-5 appended
    meanwhile: position 0 is a resume point, so 1-5 arrive after the reconnect."""
    srv = ref_server
    got: list[int] = []
    ws = client(srv)
    ws.on_tick = lambda t, w: got.append(t["position"])
    with running(ws):
        old = wait_stream(srv)
        assert srv.call(lambda: srv.hub.log.last_position) == 0
        abort_streams(srv, then=numbered(SIM1, 5))
        wait_stream(srv, old=old)
        wait_for(lambda: len(got) >= 5, what="records 1-5 appended while away")
        append(srv, SIM1, {"sentinel": 1})
        wait_for(lambda: len(got) >= 6, what="the sentinel")
        assert got == [1, 2, 3, 4, 5, 6]
        assert ws.stats()["reconnects"] >= 1


def test_empty_log_then_a_drop_loses_nothing_async(ref_server: ServerThread) -> None:
    """The same with AsyncWebSocket's iterator."""
    srv = ref_server

    async def main() -> list[int]:
        got: list[int] = []
        ws = AsyncWebSocket(KEY, DEV, "device", url=srv.url, max_reconnect_delay=0.1)
        async with ws:
            old = await asyncio.to_thread(wait_stream, srv)
            await asyncio.to_thread(abort_streams, srv, numbered(SIM1, 5))
            await asyncio.to_thread(wait_stream, srv, bool, old)
            await asyncio.to_thread(append, srv, SIM1, {"sentinel": 1})
            async for tick in ws:
                got.append(tick["position"])
                if tick["data"] == {"sentinel": 1}:
                    break
        return got

    assert asyncio.run(asyncio.wait_for(main(), 30)) == [1, 2, 3, 4, 5, 6]


def test_a_replay_with_from_position_delivers_the_added_devices_history(
    ref_server: ServerThread,
) -> None:
    """Streaming sim-0001 (6-8), then subscribe(["sim-0002"], from_position=0): the
    server replays from 0; sim-0002's history arrives, sim-0001's repeats do not, also
    across a drop right after the replay."""
    srv = ref_server
    for dev in (SIM2, SIM1, SIM2, SIM2, SIM1):  # positions 1-5: sim-0002 at 1, 3, 4
        append(srv, dev, {"n": 1})
    got: list[tuple[int, str]] = []
    ws = client(srv, subscribe=[SIM1])
    ws.on_tick = lambda t, w: got.append((t["position"], t["device"]))
    with running(ws):
        old = wait_stream(srv, lambda d: d == {SIM1})
        append(srv, SIM1, {"n": 6}, {"n": 7}, {"n": 8})
        wait_for(lambda: len(got) >= 3, what="sim-0001's 6-8")
        ws.subscribe([SIM2], from_position=0)
        wait_for(lambda: len(got) >= 6, what="sim-0002's history")
        assert ws.subscription == [SIM1, SIM2]
        abort_streams(
            srv, then=lambda s: (s.hub.log.append(SIM2, {"n": 9}), s.hub.log.append(SIM1, {}))
        )
        wait_stream(srv, lambda d: d == {SIM1, SIM2}, old)
        append(srv, SIM2, {"sentinel": 1})
        wait_for(lambda: len(got) >= 9, what="the sentinel")
    streamed = [(6, SIM1), (7, SIM1), (8, SIM1)]
    replayed = [(1, SIM2), (3, SIM2), (4, SIM2)]
    assert got == [*streamed, *replayed, (9, SIM2), (10, SIM1), (11, SIM2)]
    assert ws.stats()["duplicates_dropped"] >= 5  # sim-0001's 2, 5, 6, 7, 8 replayed


# Records a binary batch cannot carry (docs/protocol.md, section 8): the server sends each
# as a JSON tick in its place.
LONG_ID = "long-" + "x" * 251  # a device id of 256 UTF-8 bytes
UNBATCHABLE: list[tuple[str, dict[str, Any]]] = [
    (SIM1, {"t": 3.5, "note": "text"}),  # a string
    (SIM1, {"t": 4.5, "n": None}),  # null
    (SIM1, {"nested": {"a": [1, 2]}}),  # an object (and a list) inside
    (SIM1, {"": 1}),  # an empty field name
    (SIM1, {"x" * 256: 1}),  # a field name over 255 UTF-8 bytes
    (SIM1, {f"f{i}": i for i in range(256)}),  # more than 255 fields
    (LONG_ID, {"t": 9.5, "n": 9}),  # a device id over 255 UTF-8 bytes
]


def test_on_tick_rows_alone_gets_the_json_fallback_ticks(
    ref_server_factory: Callable[..., ServerThread],
) -> None:
    """A binary subscriber with only on_tick_rows gets every record, the ones the server
    must send as JSON ticks included (as rows of their own fields), in order."""
    registry = demo_registry()
    registry.add_device(Device(LONG_ID, "LONGKEY0000000000001", DEMO_USER))
    srv = ref_server_factory(registry=registry)
    rows: list[tuple[int, str, dict[str, Any]]] = []
    raw: list[str | bytes] = []
    lean = client(srv, format="binary")
    lean.on_tick_rows = lambda fields, rs, w: rows.extend(
        (r[1], r[0], dict(zip(fields, r[3:]))) for r in rs
    )
    peek = client(srv, format="binary")  # a raw consumer: which frames were JSON?
    peek.on_message = lambda m, w: raw.append(m)
    records = [(SIM1, {"t": 1.5, "n": 1}), (SIM1, {"t": 2.5, "n": 2}), *UNBATCHABLE]
    records += [(SIM2, {"t": 10.5, "n": 10}), (SIM2, {"sentinel": 1})]
    with running(lean, peek):
        wait_for(lambda: len(streams(srv)) == 2, what="two subscriptions")
        for device, data in records:
            append(srv, device, data)
        wait_for(lambda: len(rows) >= len(records), what="every record as a row")
        wait_for(lambda: len(positions_of_raw(raw)) >= len(records), what="raw frames")
    assert rows == [(p, dev, data) for p, (dev, data) in enumerate(records, 1)]
    assert lean.position == len(records)
    json_ticks = [json.loads(m)["position"] for m in raw if isinstance(m, str) and '"tick"' in m]
    assert json_ticks == list(range(3, 3 + len(UNBATCHABLE)))
    assert positions_of_raw(raw) == list(range(1, len(records) + 1))


def test_on_message_alone_with_binary_does_not_repeat_after_a_drop(
    ref_server: ServerThread,
) -> None:
    """Only on_message, format binary: the raw batches (and a JSON fallback tick) still
    move the resume point, so nothing is passed on twice after a drop."""
    srv = ref_server
    raw: list[str | bytes] = []
    ws = client(srv, format="binary")
    ws.on_message = lambda m, w: raw.append(m)
    with running(ws):
        old = wait_stream(srv)
        append(srv, SIM1, *[{"i": i} for i in range(4)], {"s": "json"}, *[{"i": 0}] * 5)
        wait_for(lambda: positions_of_raw(raw)[-1:] == [10], what="positions 1-10")
        abort_streams(srv, then=numbered(SIM1, 10))
        wait_stream(srv, old=old)
        append(srv, SIM1, {"sentinel": 1})
        wait_for(lambda: positions_of_raw(raw)[-1:] == [21], what="the sentinel")
    assert positions_of_raw(raw) == list(range(1, 22))
    assert ws.position == 21


def test_a_rejected_subscription_is_not_restored_by_reconnects(ref_server: ServerThread) -> None:
    """subscribe(["sim-00O2"]) (a typo: not_found) changes nothing: the next connections
    subscribe to sim-0001 alone and its ticks keep coming; the error is reported once."""
    srv = ref_server
    got: list[int] = []
    errors: list[BaseException] = []
    ws = client(srv, subscribe=[SIM1])
    ws.on_tick = lambda t, w: got.append(t["position"])
    ws.on_error = lambda e, w: errors.append(e)
    with running(ws):
        old = wait_stream(srv, lambda d: d == {SIM1})
        ws.subscribe(["sim-00O2"])
        wait_for(lambda: any(isinstance(e, NotFoundError) for e in errors), what="not_found")
        assert ws.subscription == [SIM1]
        for _ in range(2):
            abort_streams(srv)
            old = wait_stream(srv, lambda d: d == {SIM1}, old)
        append(srv, SIM1, {"n": 1})
        wait_for(lambda: got == [1], what="sim-0001's tick")
        assert ws.subscription == [SIM1]
    assert sum(isinstance(e, NotFoundError) for e in errors) == 1


def test_unsubscribing_one_device_from_all_survives_reconnects(ref_server: ServerThread) -> None:
    """unsubscribe(["sim-0001"]) from "*": the reconnects keep every other device and not
    sim-0001 (its records are neither sent nor delivered)."""
    srv = ref_server
    got: list[tuple[int, str]] = []
    ws = client(srv)
    ws.on_tick = lambda t, w: got.append((t["position"], t["device"]))
    with running(ws):
        old = wait_stream(srv)
        ws.unsubscribe([SIM1])
        old = wait_stream(srv, lambda d: SIM2 in d and SIM1 not in d)
        append(srv, SIM1, {"n": 1})
        append(srv, SIM2, {"n": 2})
        wait_for(lambda: len(got) >= 1, what="sim-0002's tick")
        for _ in range(2):
            abort_streams(srv)
            old = wait_stream(srv, lambda d: SIM2 in d and SIM1 not in d and DEV in d, old)
        append(srv, SIM1, {"n": 3})
        append(srv, SIM2, {"n": 4})
        wait_for(lambda: len(got) >= 2, what="sim-0002's tick after the reconnects")
    assert got == [(2, SIM2), (4, SIM2)]


def test_a_gap_is_reported_once_across_reconnects(
    ref_server_factory: Callable[..., ServerThread],
) -> None:
    """A gap moves the resume point: with no subscribed tick after it, reconnects do not
    report the same loss again."""
    srv = ref_server_factory(retain=20)
    append(srv, SIM2, *[{"n": i} for i in range(10)])  # 1-10
    srv.call(numbered(SIM1, 100), srv)  # 11-110: only 91-110 retained, all sim-0001's
    gaps: list[dict[str, Any]] = []
    got: list[int] = []
    ws = client(srv, subscribe=None)
    ws.on_gap = lambda g, w: gaps.append(g)
    ws.on_tick = lambda t, w: got.append(t["position"])
    with running(ws):
        ws.subscribe([SIM2], from_position=5)
        wait_for(lambda: len(gaps) == 1, what="the gap")
        old = wait_stream(srv, lambda d: d == {SIM2})
        for _ in range(3):
            abort_streams(srv)
            old = wait_stream(srv, lambda d: d == {SIM2}, old)
        append(srv, SIM2, {"sentinel": 1})
        wait_for(lambda: got == [111], what="the sentinel")
    assert len(gaps) == 1
    assert (gaps[0]["from"], gaps[0]["to"]) == (5, 90) and gaps[0]["missed"] >= 5


def test_other_devices_trimmed_records_raise_no_gap(
    ref_server_factory: Callable[..., ServerThread],
) -> None:
    """A client of sim-0002 alone, while sim-0001's records pass and are trimmed: progress
    moves its resume point, so the reconnect reports no gap (nothing it asked for was lost)."""
    srv = ref_server_factory(retain=20)
    gaps: list[dict[str, Any]] = []
    got: list[int] = []
    ws = client(srv, subscribe=[SIM2])
    ws.on_gap = lambda g, w: gaps.append(g)
    ws.on_tick = lambda t, w: got.append(t["position"])
    with running(ws):
        old = wait_stream(srv, lambda d: d == {SIM2})
        append(srv, SIM2, {"n": 1})
        wait_for(lambda: got == [1], what="sim-0002's first tick")
        srv.call(numbered(SIM1, 200), srv)  # 2-201; all but the newest ~20 trimmed
        wait_for(lambda: ws.position == 201, what="progress to 201")
        abort_streams(srv, then=numbered(SIM1, 5))  # 202-206
        wait_stream(srv, lambda d: d == {SIM2}, old)
        append(srv, SIM2, {"sentinel": 1})
        wait_for(lambda: len(got) >= 2, what="the sentinel")
    assert got == [1, 207]
    assert gaps == []


def test_command_ids_of_two_clients_do_not_collide(ref_server: ServerThread) -> None:
    """Two clients command one device at the same time: each gets its own ack, and the
    ids the clients drew differ (the server did not have to rename one)."""
    srv = ref_server
    commands: list[dict[str, Any]] = []
    dev = client(srv, subscribe=None)
    dev.on_command = lambda c, w: commands.append(c)
    a = token_client(srv, subscribe=None)
    b = token_client(srv, subscribe=None)
    with running(dev, a, b):
        wait_for(lambda: srv.call(srv.hub.online, DEV), what="the device online")
        fa = a.send_command_async(DEV, {"who": "a"}, timeout=10)
        fb = b.send_command_async(DEV, {"who": "b"}, timeout=10)
        wait_for(lambda: len(commands) == 2, what="both commands pending at the device")
        ids = [c["id"] for c in commands]
        assert len(set(ids)) == 2 and not any("#" in str(i) for i in ids), ids
        for c in commands:
            dev.ack(c["id"], True, {"echo": c["data"]["who"]})
        acks = fa.result(10), fb.result(10)
    assert [ack["data"] for ack in acks] == [{"echo": "a"}, {"echo": "b"}]
    assert all(ack["ok"] is True for ack in acks)


def test_integers_keep_their_type_or_are_refused_with_a_typed_error(
    ref_server: ServerThread,
) -> None:
    """2**70 (or any integer outside signed 64 bits) is refused at publish with InputError
    (by the client before sending when its JSON encoder cannot write it, else by the
    server: docs/protocol.md, section 5), and nothing is stored; the signed 64-bit extremes
    come back as the same ints, in JSON and in binary subscriptions."""
    srv = ref_server
    errors: list[BaseException] = []
    dev = client(srv, subscribe=None)
    dev.on_error = lambda e, w: errors.append(e)
    readers = {fmt: client(srv, format=fmt) for fmt in ("json", "binary")}
    ticks: dict[str, list[dict[str, Any]]] = {"json": [], "binary": []}
    for fmt, r in readers.items():
        r.on_tick = lambda t, w, fmt=fmt: ticks[fmt].append(t)
    data = {"max": 2**63 - 1, "min": -(2**63), "i": 3, "f": 1.0}
    with running(dev, *readers.values()):
        wait_for(lambda: len(streams(srv)) == 2, what="two subscriptions")
        for big in (2**70, 2**63, 2**64 - 1, -(2**63) - 1):
            with pytest.raises(InputError):
                dev.publish({"v": big}, wait=True, timeout=10)
        # another implementation's client that sends it anyway: refused by the server
        dev.send('{"type":"publish","id":"raw","data":{"v":1180591620717411303424}}')
        wait_for(lambda: any(isinstance(e, InputError) for e in errors), what="error input")
        assert dev.publish(data, wait=True, timeout=10) == 1  # nothing else was stored
        wait_for(lambda: all(ticks.values()), what="the tick in both formats")
    for fmt, got in ticks.items():
        assert len(got) == 1 and got[0]["data"] == data, fmt
        assert [type(v) for v in got[0]["data"].values()] == [int, int, int, float], fmt


def test_a_stream_rate_error_is_a_rate_limit_error(
    ref_server_factory: Callable[..., ServerThread],
) -> None:
    """The stream's error code `rate` raises RateLimitError (docs/protocol.md, section 4)."""
    srv = ref_server_factory(max_rate=0.5, max_burst=2)
    ws = client(srv, subscribe=None)
    with running(ws):
        with pytest.raises(RateLimitError) as info:
            for i in range(5):
                ws.publish({"n": i}, wait=True, timeout=10)
    assert info.value.code == "rate"


# -------------------------------------------- questions the document now answers (issue 17)


def test_a_new_log_past_the_clients_position_is_read_from_its_start(
    ref_server: ServerThread, ref_server_factory: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """The server restarts with another log (its `welcome.log` differs) that already holds
    records 1-5, beyond the client's position 3: the client reads the new log from 0 and
    reports the reset as one gap, instead of resuming after 3."""
    other = ref_server_factory(db=tmp_path / "other.sqlite")
    append(other, SIM1, *[{"new": i} for i in range(1, 6)])
    other.stop()
    srv = ref_server
    got: list[tuple[int, dict[str, Any]]] = []
    gaps: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    ws = client(srv)
    ws.on_tick = lambda t, w: got.append((t["position"], t["data"]))
    ws.on_gap = lambda g, w: gaps.append(g)
    ws.on_error = lambda e, w: errors.append(e)
    with running(ws):
        wait_stream(srv)
        append(srv, SIM1, *[{"old": i} for i in range(1, 4)])
        wait_for(lambda: len(got) >= 3, what="the old log's records")
        srv.restart(db=tmp_path / "other.sqlite")
        wait_stream(srv)
        wait_for(lambda: len(got) >= 8, what="the new log from its start")
        append(srv, SIM1, {"sentinel": 1})
        wait_for(lambda: len(got) >= 9, what="the sentinel")
    old = [(p, {"old": p}) for p in (1, 2, 3)]
    new = [(p, {"new": p}) for p in range(1, 6)]
    assert got == [*old, *new, (6, {"sentinel": 1})]
    assert [g.get("reason") for g in gaps] == ["log_reset"]
    assert any(isinstance(e, DataError) for e in errors)


def test_a_close_1000_from_the_server_is_followed_by_a_reconnect(ref_server: ServerThread) -> None:
    """A 1000 the client did not ask for is treated like 1001: reconnect and resume."""
    srv = ref_server
    got: list[int] = []
    closes: list[int] = []
    ws = client(srv)
    ws.on_tick = lambda t, w: got.append(t["position"])
    ws.on_close = lambda code, reason, w: closes.append(code)
    with running(ws):
        old = wait_stream(srv)
        append(srv, SIM1, {"n": 1})
        wait_for(lambda: got == [1], what="the first tick")

        def close_1000(s: ServerThread) -> None:
            for c in list(s.hub.connections):
                if c.ws is not None:
                    c.close(1000, "bye")
            numbered(SIM1, 3)(s)

        srv.call(close_1000, srv)
        wait_stream(srv, old=old)
        append(srv, SIM1, {"sentinel": 1})
        wait_for(lambda: len(got) >= 5, what="the records after the close, and the sentinel")
    assert got == [1, 2, 3, 4, 5]
    assert closes[0] == 1000


def test_the_documents_keepalive_numbers_are_the_defaults() -> None:
    """docs/protocol.md, section 9, states the reference numbers: the client pings every
    20 s and gives up after ~2 intervals of silence; the server pings every 20 s and closes
    after 40 s. (That any frame proves life: tests/client/test_api.py::
    test_keepalive_any_frame_proves_life.)"""
    from dataclasses import fields

    from iotcommute.client.options import Options
    from iotcommute.server import ServerConfig

    doc = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text("utf-8")
    section = doc[doc.index("## 9. Keep-alive") : doc.index("## 10. Closing")]
    client_defaults = {f.name: f.default for f in fields(Options)}
    assert "reference client: every 20 s" in section
    assert client_defaults["ping_interval"] == 20.0
    assert "~2 ping intervals" in section
    assert client_defaults["ping_timeout"] == client_defaults["ping_interval"]
    assert "ping every 20 s" in section and "for more than 40 s" in section
    server = ServerConfig()
    assert (server.ping_interval, server.ping_interval + server.ping_timeout) == (20.0, 40.0)
