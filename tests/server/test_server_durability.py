"""Issue 11 on the server, over real sockets: a failing store stops acknowledging loudly,
re-sent publishes are stored once across a restart, a poison record does not take other
streams down, logout and expiry end token streams, and no peer behaviour grows a
server-side buffer without bound."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from iotcommute.server import ServerThread
from iotcommute.server.registry import DEMO_API_KEY, DEMO_USER, README_DEVICE_ID, README_DEVICE_KEY
from iotcommute.server.store import Entry, SqliteStore, StoreError
from tests.server.test_server_robust import RawWS

DEVICE = f"X-Device-Id: {README_DEVICE_ID}\r\nX-Device-Key: {README_DEVICE_KEY}\r\n"


class FlakyStore(SqliteStore):
    """SQLite whose appends fail while `broken` is set (a full disk, a dead volume)."""

    broken = False

    async def append(self, partition: int, entries: Sequence[Entry]) -> None:
        if self.broken:
            raise StoreError("disk full (simulated)")
        await super().append(partition, entries)


def _recv_type(ws: RawWS, kind: str) -> dict[str, Any]:
    while True:
        m = ws.recv_json()
        if m["type"] == kind:
            return m


def _publish(ws: RawWS, pid: str, n: int) -> None:
    ws.send_json({"type": "publish", "id": pid, "data": {"n": n}})


def test_failed_store_write_refuses_loudly_and_never_leaves_a_hole(
    ref_server_factory: Callable[..., ServerThread],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from iotcommute.server.log import Log

    store = FlakyStore(tmp_path / "log.sqlite")
    srv = ref_server_factory()
    log = Log(retain=1000, store=store)
    srv.run(log.open())
    srv.hub.log = log  # the server's connections read the hub's log
    dev = RawWS(srv.port, DEVICE + "X-Role: device\r\n")
    cli = RawWS(srv.port, DEVICE + "X-Role: client\r\n")
    dev.recv_json()
    cli.recv_json()
    cli.send_json({"type": "subscribe", "id": 1, "devices": "*", "from": 0})
    _recv_type(cli, "subscribed")
    _publish(dev, "a", 1)
    assert _recv_type(dev, "published")["position"] == 1
    assert _recv_type(cli, "tick")["position"] == 1
    store.broken = True
    with caplog.at_level(logging.ERROR, logger="iotcommute.server.log"):
        _publish(dev, "b", 2)
        err = _recv_type(dev, "error")
        assert (err["code"], err["id"]) == ("unavailable", "b")
        assert any("failed" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    _publish(dev, "c", 3)  # refused at once while the store is down
    assert _recv_type(dev, "error")["code"] == "unavailable"
    store.broken = False
    deadline = time.monotonic() + 10
    while srv.call(lambda: log.failure is not None) and time.monotonic() < deadline:
        time.sleep(0.05)
    _publish(dev, "b", 2)  # the device re-sends what was not acknowledged
    assert _recv_type(dev, "published") == {"type": "published", "id": "b", "position": 2}
    tick = _recv_type(cli, "tick")
    assert (tick["position"], tick["data"]) == (2, {"n": 2})  # nothing was ever seen at 2 before
    dev.close()
    cli.close()


def test_resent_publish_is_stored_once_across_a_restart(ref_server_db: ServerThread) -> None:
    srv = ref_server_db
    dev = RawWS(srv.port, DEVICE + "X-Role: device\r\n")
    dev.recv_json()
    dev.send_json({"type": "publish", "id": "b-1", "batch": [{"data": {"n": 1}}, {"data": {}}]})
    assert _recv_type(dev, "published") == {
        "type": "published",
        "id": "b-1",
        "position": 2,
        "first": 1,
    }
    dev.close()
    srv.restart()
    dev = RawWS(srv.port, DEVICE + "X-Role: device\r\n")
    assert dev.recv_json()["log"] == srv.hub.log.log_id
    dev.send_json({"type": "publish", "id": "b-1", "batch": [{"data": {"n": 1}}, {"data": {}}]})
    assert _recv_type(dev, "published") == {
        "type": "published",
        "id": "b-1",
        "position": 2,
        "first": 1,
        "duplicate": True,
    }
    assert srv.hub.log.last_position == 2
    dev.close()


def test_a_poison_record_is_skipped_not_fatal_to_other_streams(
    ref_server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    """A record the encoder cannot write (appended in-process, bypassing validation) is
    skipped with an ERROR; fleet streams stay open and get the next record."""
    srv = ref_server
    cli = RawWS(srv.port, DEVICE + "X-Role: client\r\n")
    cli.recv_json()
    cli.send_json({"type": "subscribe", "id": 1, "devices": "*", "from": 0})
    _recv_type(cli, "subscribed")
    with caplog.at_level(logging.ERROR, logger="iotcommute.server"):
        srv.call(srv.hub.log.append, "sim-0001", {"bad": {1, 2}}, 1.0)  # a set: not JSON
        srv.call(srv.hub.log.append, "sim-0001", {"n": 2}, 2.0)
        tick = _recv_type(cli, "tick")
    assert (tick["position"], tick["data"]) == (2, {"n": 2})
    assert any("cannot be encoded" in r.getMessage() for r in caplog.records)
    cli.close()
    token = _token(srv)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(
            (
                "GET /devices/sim-0001/history?since=0 HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: token {DEMO_API_KEY}:{token}\r\nConnection: close\r\n\r\n"
            ).encode()
        )
        resp = b""
        while chunk := s.recv(65536):
            resp += chunk
    assert resp.startswith(b"HTTP/1.1 200") and b'"position":2' in resp


def _token(srv: ServerThread) -> str:
    s = srv.call(srv.hub.registry.sessions.create, DEMO_USER, DEMO_API_KEY, 60.0)
    return str(s.access_token)


def test_logout_closes_the_streams_of_that_token(ref_server: ServerThread) -> None:
    srv = ref_server
    token, other = _token(srv), _token(srv)
    ws = RawWS(srv.port, f"Authorization: token {DEMO_API_KEY}:{token}\r\n")
    keep = RawWS(srv.port, f"Authorization: token {DEMO_API_KEY}:{other}\r\n")
    ws.recv_json()
    keep.recv_json()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(
            (
                "DELETE /session/token HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                f"Authorization: token {DEMO_API_KEY}:{token}\r\n\r\n"
            ).encode()
        )
        assert s.recv(100).startswith(b"HTTP/1.1 200")
    assert ws.recv_close() == 1008
    keep.send_json({"type": "subscribe", "id": 1, "devices": ["sim-0001"]})
    assert _recv_type(keep, "subscribed")["id"] == 1  # another session's stream goes on
    ws.close()
    keep.close()


def test_session_expiry_closes_the_stream(ref_server: ServerThread) -> None:
    srv = ref_server
    s = srv.call(srv.hub.registry.sessions.create, DEMO_USER, DEMO_API_KEY, 0.5)
    ws = RawWS(srv.port, f"Authorization: token {DEMO_API_KEY}:{s.access_token}\r\n")
    ws.recv_json()
    assert ws.recv_close() == 1008
    ws.close()


# -- bounded memory ------------------------------------------------------------------------


def _conns(srv: ServerThread) -> list[Any]:
    return srv.call(lambda: [c for c in srv.hub.connections if c.ws is not None])


def _max_buffer(srv: ServerThread, seconds: float, sample: Callable[[], int]) -> int:
    top = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        top = max(top, srv.call(sample))
        time.sleep(0.02)
    return top


@pytest.mark.parametrize(
    "frame",
    [
        struct.pack("!BB", 0x89, 0x80 | 125) + b"\0\0\0\0" + b"p" * 125,  # pings
        struct.pack("!BB", 0x81, 0x80 | 3) + b"\0\0\0\0" + b"x!x",  # invalid messages
    ],
    ids=["pings", "invalid-messages"],
)
def test_a_peer_that_never_reads_cannot_grow_the_write_buffer(
    ref_server_factory: Callable[..., ServerThread], frame: bytes
) -> None:
    high = 64 * 1024
    srv = ref_server_factory(write_high=high, write_low=16 * 1024, stuck_timeout=1.5, max_rate=0)
    ws = RawWS(srv.port, DEVICE + "X-Role: client\r\n", rcvbuf=4096)
    ws.recv_json()
    ws.sock.setblocking(False)
    burst = frame * 2000
    sent = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # until the kernel buffers are full both ways
        try:
            sent += ws.sock.send(burst)
        except BlockingIOError:
            time.sleep(0.01)
        except OSError:
            break
    conns = _conns(srv)
    assert len(conns) <= 1

    def buffered() -> int:
        return max((c.transport.get_write_buffer_size() for c in conns), default=0)

    # Each frame asks for an answer (pong / error) of ~140 bytes: far more was sent than
    # the bound allows, yet the server stopped reading and its buffer stayed bounded.
    assert sent // len(frame) * 130 > 8 * high
    assert _max_buffer(srv, 0.3, buffered) <= high + 64 * 1024
    deadline = time.monotonic() + 10
    while _conns(srv) and time.monotonic() < deadline:  # dropped after the stuck timeout
        time.sleep(0.1)
    assert not _conns(srv)
    ws.close()


def test_pipelined_requests_behind_a_pending_command_stay_in_the_kernel(
    ref_server: ServerThread,
) -> None:
    srv = ref_server
    # the command stays pending for the whole test (10 s), however slow this machine is
    dev = RawWS(srv.port, DEVICE + "X-Role: device\r\n")  # connected, never acknowledges
    dev.recv_json()
    token = _token(srv)
    body = b'{"data":{"led":"on"},"timeout":10}'
    req = (
        f"POST /devices/{README_DEVICE_ID}/commands HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: token {DEMO_API_KEY}:{token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    s.sendall(req)
    time.sleep(0.2)
    s.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        try:
            sent += s.send(req * 200)
        except BlockingIOError:
            time.sleep(0.01)

    def held() -> int:
        cs = [c for c in srv.hub.connections if c.ws is None]
        return max((len(c._cycle) + len(c._body) for c in cs), default=0)

    assert sent > 1_000_000 or held() < 64 * 1024
    assert _max_buffer(srv, 0.3, held) < 64 * 1024
    s.close()
    dev.close()


def test_endless_empty_continuation_frames_are_cut_off(ref_server: ServerThread) -> None:
    ws = RawWS(ref_server.port, DEVICE + "X-Role: client\r\n")
    ws.recv_json()
    ws.send_frame(1, b'{"type":', fin=False)
    empty = struct.pack("!BB", 0x00, 0x80) + b"\0\0\0\0"
    try:
        for _ in range(20):
            ws.sock.sendall(empty * 1000)
    except OSError:
        pass
    assert ws.recv_close() == 1009
    ws.close()


def test_fragments_are_joined_in_one_buffer(ref_server: ServerThread) -> None:
    ws = RawWS(ref_server.port, DEVICE + "X-Role: client\r\n")
    ws.recv_json()
    msg = b'{"type":"subscribe","id":"' + b"x" * 3000 + b'","devices":["sim-0001"]}'
    ws.send_frame(1, msg[:1], fin=False)
    for i in range(1, len(msg) - 1):
        ws.send_frame(0, msg[i : i + 1], fin=False)
    ws.send_frame(0, msg[-1:], fin=True)
    assert _recv_type(ws, "subscribed")["id"] == "x" * 3000
    ws.close()


def test_published_waits_for_the_commit(tmp_path: Path) -> None:
    """The ack and the tick come after the SQLite commit: a store that holds its commit
    holds both."""
    from iotcommute.server.log import Log

    gate = asyncio.Event()

    class Slow(SqliteStore):
        async def append(self, partition: int, entries: Sequence[Entry]) -> None:
            await gate.wait()
            await super().append(partition, entries)

    async def main() -> None:
        log = Log(store=Slow(tmp_path / "s.db"))
        await log.open()
        seen: list[object] = []
        log.when_durable(log.append("d", {}, 1.0), seen.append)
        await asyncio.sleep(0.05)
        assert (seen, log.last_position, log.read(0)) == ([], 0, [])
        gate.set()
        await log.wait(0)
        assert seen == [None] and log.last_position == 1
        await log.close()

    asyncio.run(main())


def test_a_non_durable_restart_is_a_new_log(ref_server: ServerThread) -> None:
    """welcome.log changes when an in-memory server restarts; a `from` beyond the new
    log's tail starts at its tail and `subscribed.position` < `from` says so."""
    srv = ref_server
    for i in range(5):
        srv.call(srv.hub.log.append, "sim-0001", {"n": i}, 1.0)
    cli = RawWS(srv.port, DEVICE + "X-Role: client\r\n")
    old = cli.recv_json()["log"]
    cli.close()
    srv.restart()
    srv.call(srv.hub.log.append, "sim-0001", {"n": 0}, 1.0)
    cli = RawWS(srv.port, DEVICE + "X-Role: client\r\n")
    w = cli.recv_json()
    assert w["log"] != old and (w["position"], w["first"]) == (1, 1)
    cli.send_json({"type": "subscribe", "id": 1, "devices": "*", "from": 5})
    assert _recv_type(cli, "subscribed")["position"] == 1
    srv.call(srv.hub.log.append, "sim-0001", {"n": 1}, 1.0)
    assert _recv_type(cli, "tick")["position"] == 2
    cli.close()


def test_a_device_connected_twice(ref_server: ServerThread) -> None:
    """Commands go to the newest connection; when it closes, its pending command is
    answered `device disconnected` although the older connection is still there."""
    srv = ref_server
    old = RawWS(srv.port, DEVICE + "X-Role: device\r\n")
    new = RawWS(srv.port, DEVICE + "X-Role: device\r\n")
    old.recv_json()
    new.recv_json()
    cli = RawWS(srv.port, f"Authorization: token {DEMO_API_KEY}:{_token(srv)}\r\n")
    cli.recv_json()
    cli.send_json({"type": "command", "id": "c-1", "device": README_DEVICE_ID, "data": {}})
    assert _recv_type(new, "command")["id"] == "c-1"
    new.close()
    assert _recv_type(cli, "ack") == {
        "type": "ack",
        "id": "c-1",
        "ok": False,
        "error": "device disconnected",
    }
    cli.send_json({"type": "command", "id": "c-2", "device": README_DEVICE_ID, "data": 5})
    assert _recv_type(old, "command") == {
        "type": "command",
        "id": "c-2",
        "from": DEMO_USER,
        "data": 5,
    }
    old.send_json({"type": "ack", "id": "c-2", "ok": True})
    assert _recv_type(cli, "ack") == {"type": "ack", "id": "c-2", "ok": True}
    old.close()
    cli.close()


def test_a_sender_leaving_while_its_command_is_pending(ref_server: ServerThread) -> None:
    """The command stays pending for the device, which may still acknowledge it; that ack
    is discarded without an error to the device, and another connection may reuse the id."""
    srv = ref_server
    dev = RawWS(srv.port, DEVICE + "X-Role: device\r\n")
    dev.recv_json()
    cli = RawWS(srv.port, f"Authorization: token {DEMO_API_KEY}:{_token(srv)}\r\n")
    cli.recv_json()
    cli.send_json({"type": "command", "id": "c-1", "device": README_DEVICE_ID, "data": {}})
    assert _recv_type(dev, "command")["id"] == "c-1"
    cli.close()
    deadline = time.monotonic() + 5
    while srv.call(lambda: len(srv.hub.connections)) > 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.call(lambda: len(srv.hub.connections)) == 1  # the sender is gone
    assert srv.call(srv.hub.pending_commands) == 1  # ... its command is not
    dev.send_json({"type": "ack", "id": "c-1", "ok": True})
    dev.send_json({"type": "publish", "id": "p-1", "data": {"n": 1}})
    assert dev.recv_json() == {"type": "published", "id": "p-1", "position": 1}  # no error
    assert srv.call(srv.hub.pending_commands) == 0
    again = RawWS(srv.port, f"Authorization: token {DEMO_API_KEY}:{_token(srv)}\r\n")
    again.recv_json()
    again.send_json({"type": "command", "id": "c-1", "device": README_DEVICE_ID, "data": 2})
    command = _recv_type(dev, "command")
    assert command == {"type": "command", "id": "c-1", "from": DEMO_USER, "data": 2}
    again.close()
    dev.close()


def test_nan_in_a_device_batch_refuses_the_whole_batch(ref_server: ServerThread) -> None:
    payload = pytest.importorskip("iotcommute.payload")
    srv = ref_server
    dev = RawWS(srv.port, DEVICE + "X-Role: device\r\n")
    dev.recv_json()
    ticks = [
        {"type": "tick", "device": README_DEVICE_ID, "position": 0, "ts": 1.0, "data": {"t": v}}
        for v in (1.5, 7.25, 2.5)
    ]
    # Our encoder refuses NaN: patch it in, as another implementation's device might send.
    blob = payload.encode_batch(ticks)
    marker = struct.pack("<d", 7.25)
    assert blob.count(marker) == 1
    dev.send_frame(2, blob.replace(marker, struct.pack("<d", float("nan"))))
    err = _recv_type(dev, "error")
    assert err["code"] == "input" and "finite" in err["message"]
    ticks[1]["data"] = {"t": 2.0}
    dev.send_frame(2, payload.encode_batch(ticks))
    deadline = time.monotonic() + 5
    while srv.call(lambda: srv.hub.log.last_position) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    recs = srv.call(srv.hub.log.read, 0)
    assert [r.data for r in recs] == [{"t": 1.5}, {"t": 2.0}, {"t": 2.5}]  # only the good batch
    dev.close()


def test_firehose_over_a_durable_log(
    ref_server_factory: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """With --db the firehose appends ordinary records (blocks are for the in-memory log)
    and its subscribers get them once durable, in order."""
    srv = ref_server_factory(firehose=True, simulate=3, db=tmp_path / "log.sqlite")
    cli = RawWS(srv.port, DEVICE + "X-Role: client\r\n")
    cli.recv_json()
    cli.send_json({"type": "subscribe", "id": 1, "devices": "*", "from": 0})
    _recv_type(cli, "subscribed")
    got = [_recv_type(cli, "tick")["position"] for _ in range(5000)]
    assert got == list(range(1, 5001))
    cli.close()
