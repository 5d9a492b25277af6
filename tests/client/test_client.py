"""The callback client (iotcommute.WebSocket) against the reference server on loopback."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from iotcommute import (
    CommandError,
    NetworkError,
    NotConnectedError,
    PermissionDenied,
    TokenError,
    WebSocket,
)
from iotcommute.server import ServerThread
from iotcommute.server.registry import (
    README_DEVICE_ID,
    README_DEVICE_KEY,
    sim_device_id,
    sim_device_key,
)
from tests.client.test_client_support import CutProxy, wait_for, watch_subscribed

pytestmark = pytest.mark.timeout(60)

KEY, DEV = README_DEVICE_KEY, README_DEVICE_ID
SIM1, SIM1_KEY = sim_device_id(1), sim_device_key(1)


@pytest.fixture
def server(ref_server_factory: Callable[..., ServerThread]) -> ServerThread:
    return ref_server_factory(retain=500_000)


def append(srv: ServerThread, n: int, device: str = SIM1) -> list[int]:
    """Append n ticks to the server's log (on its loop) and return their positions."""

    def go() -> list[int]:
        log = srv.hub.log
        return [log.append(device, {"i": i, "temperature": 20.0 + i % 7}) for i in range(n)]

    return srv.call(go)


def client(srv: ServerThread | CutProxy | str, **kw: Any) -> WebSocket:
    url = srv if isinstance(srv, str) else srv.url
    kw.setdefault("max_reconnect_delay", 0.2)
    ws = WebSocket(kw.pop("key", KEY), kw.pop("dev", DEV), kw.pop("role", "device"), url=url, **kw)
    return ws


def start(ws: WebSocket) -> WebSocket:
    connected = threading.Event()
    prev = ws.on_connect

    def on_connect(w: WebSocket) -> None:
        connected.set()
        if prev is not None:
            prev(w)

    ws.on_connect = on_connect
    subscribed = watch_subscribed(ws) if ws._opts.subscribe else None
    ws.connect(threaded=True)
    assert connected.wait(10), "client did not connect"
    if subscribed is not None:
        assert subscribed.acquire(timeout=10), "no subscribed reply"
    ws.on_message = None
    return ws


def finish(ws: WebSocket) -> None:
    ws.stop()
    assert ws.join(10), "connect() did not return after stop()"


def test_readme_example_verbatim(server: ServerThread) -> None:
    code = (
        "from iotcommute import WebSocket\n"
        'iws = WebSocket("L1SEIUDU1MC996W48L8Q", "FY6ODPIVU522SY1", "device")\n'
        "def on_tick(tick, ws): print(tick)\n"
        'def on_connect(ws): print("connection is established")\n'
        "iws.on_tick = on_tick\n"
        "iws.on_connect = on_connect\n"
        "iws.connect()          # blocks; connect(threaded=True) runs it in the background\n"
    )
    env = dict(os.environ, IOTCOMMUTE_URL=server.url, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    lines: list[str] = []

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        wait_for(lambda: any("connection is established" in x for x in lines), 20, "on_connect")
        deadline = time.monotonic() + 20
        while not any("'type': 'tick'" in x for x in lines):
            assert time.monotonic() < deadline, f"no tick printed: {lines}"
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            append(server, 1)
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait(10)
    tick_line = next(x for x in lines if "'type': 'tick'" in x)
    assert "'position':" in tick_line and "'device':" in tick_line


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_ticks_in_order_stats_and_repr(server: ServerThread, loop: str) -> None:
    import asyncio

    got: list[int] = []
    factory = asyncio.new_event_loop if loop == "asyncio" else None  # None: uvloop default
    ws = client(server, loop_factory=factory)
    ws.on_tick = lambda tick, w: got.append(tick["position"])
    start(ws)
    try:
        expected = append(server, 2000)
        wait_for(lambda: len(got) >= 2000, what="2000 ticks")
        assert got == expected
        st = ws.stats()
        assert st["position"] == expected[-1] == ws.position
        assert st["messages_in"] >= 2000 and st["bytes_in"] > 0
        assert st["connected"] is True and st["reconnects"] == 0
        assert st["last_message_age"] is not None
        assert KEY not in repr(ws) and KEY not in str(st)
    finally:
        finish(ws)
    assert not ws.is_connected()


def test_binary_format_same_ticks(server: ServerThread) -> None:
    json_ticks: list[dict[str, Any]] = []
    bin_ticks: list[dict[str, Any]] = []
    batches: list[int] = []
    a = client(server)
    a.on_tick = lambda t, w: json_ticks.append(t)
    b = client(server, format="binary")
    b.on_tick = lambda t, w: bin_ticks.append(t)
    b.on_ticks = lambda ts, w: batches.append(len(ts))
    start(a)
    start(b)
    try:
        append(server, 500)
        wait_for(lambda: len(json_ticks) >= 500 and len(bin_ticks) >= 500, what="ticks")
        assert [t["position"] for t in bin_ticks] == [t["position"] for t in json_ticks]
        assert [t["data"] for t in bin_ticks] == [t["data"] for t in json_ticks]
        assert sum(batches) == 500
    finally:
        finish(a)
        finish(b)


def test_raising_callback_goes_to_on_error_and_stream_continues(server: ServerThread) -> None:
    got: list[int] = []
    errors: list[BaseException] = []

    def on_tick(tick: dict[str, Any], ws: WebSocket) -> None:
        got.append(tick["position"])
        if len(got) % 10 == 1:
            raise ValueError("user bug")

    ws = client(server)
    ws.on_tick = on_tick
    ws.on_error = lambda e, w: errors.append(e)
    start(ws)
    try:
        expected = append(server, 100)
        wait_for(lambda: len(got) >= 100, what="ticks")
        assert got == expected
        assert len(errors) == 10 and all(isinstance(e, ValueError) for e in errors)
        assert ws.is_connected() and ws.stats()["reconnects"] == 0
    finally:
        finish(ws)


def test_publish_reaches_subscribers_and_offline_queue(server: ServerThread) -> None:
    seen: list[dict[str, Any]] = []
    watcher = client(server, key=SIM1_KEY, dev=SIM1)
    watcher.on_tick = lambda t, w: seen.append(t)
    start(watcher)
    dev = client(server)
    dev.publish({"temperature": 1.5})  # before connect: queued offline, replayed on connect
    start(dev)
    try:
        dev.publish({"temperature": 2.5}, id=7)
        dev.publish_batch([{"data": {"temperature": 3.5}}, {"data": {"temperature": 4.5}}])
        wait_for(lambda: len(seen) >= 4, what="published ticks")
        assert [t["data"]["temperature"] for t in seen] == [1.5, 2.5, 3.5, 4.5]
        assert all(t["device"] == DEV for t in seen)
    finally:
        finish(dev)
        finish(watcher)


def test_offline_queue_bounds() -> None:
    ws = WebSocket(KEY, DEV, "device", url="ws://127.0.0.1:9", offline_queue=2)
    ws.publish({"a": 1})
    ws.publish({"a": 2})
    with pytest.raises(NotConnectedError):
        ws.publish({"a": 3})
    assert ws.stats()["offline_queued"] == 2
    zero = WebSocket(KEY, DEV, "device", url="ws://127.0.0.1:9", offline_queue=0)
    with pytest.raises(NotConnectedError):
        zero.publish({"a": 1})


def test_commands_roundtrip_and_from_callbacks(server: ServerThread) -> None:
    device = client(server, subscribe=None)

    def on_command(cmd: dict[str, Any], ws: WebSocket) -> None:
        if cmd["data"].get("fail"):
            ws.ack(cmd["id"], ok=False, error="cannot do that")
        else:
            ws.ack(cmd["id"], ok=True, data={"echo": cmd["data"]})

    device.on_command = on_command
    start(device)
    app = client(server, key=SIM1_KEY, dev=SIM1, role="client", subscribe=None)
    start(app)
    try:
        ack = app.send_command(DEV, {"led": "on"}, timeout=5)
        assert ack["ok"] is True and ack["data"] == {"echo": {"led": "on"}}
        with pytest.raises(CommandError):
            app.send_command(DEV, {"fail": True}, timeout=5)

        # from inside a callback: the blocking form refuses, the Future form works
        results: list[Any] = []
        done = threading.Event()

        def on_tick(tick: dict[str, Any], ws: WebSocket) -> None:
            if done.is_set() or results:
                return
            try:
                ws.send_command(DEV, {"x": 1})
            except RuntimeError as exc:
                results.append(exc)
            fut = ws.send_command_async(DEV, {"x": 2}, timeout=5)

            def finished(f: concurrent.futures.Future[dict[str, Any]]) -> None:
                results.append(f.result())
                done.set()

            fut.add_done_callback(finished)

        subscribed = watch_subscribed(app)
        app.on_tick = on_tick
        app.subscribe("*")
        assert subscribed.acquire(timeout=10)
        append(server, 1)
        assert done.wait(10)
        assert isinstance(results[0], RuntimeError)
        assert results[1]["data"] == {"echo": {"x": 2}}
    finally:
        finish(app)
        finish(device)
    with pytest.raises(NotConnectedError):
        app.send_command(DEV, {"late": True}, timeout=1)


def test_concurrent_senders_from_many_threads(server: ServerThread) -> None:
    dev = client(server, subscribe=None)
    start(dev)
    threads, per = 8, 300
    errors: list[BaseException] = []

    def producer(k: int) -> None:
        try:
            for i in range(per):
                dev.publish({"thread": k, "i": i})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    before = server.hub.log.last_position
    ts = [threading.Thread(target=producer, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    try:
        assert not errors
        wait_for(lambda: server.hub.log.last_position - before >= threads * per, 20, "publishes")
        records = server.call(lambda: server.hub.log.read(before, None, 10 * threads * per))
        mine = [r.data for r in records if r.device == DEV]
        assert len(mine) == threads * per
        for k in range(threads):  # each thread's messages arrive complete and in its order
            assert [d["i"] for d in mine if d["thread"] == k] == list(range(per))
    finally:
        finish(dev)


def test_bad_credentials_one_typed_error_no_retry_storm(server: ServerThread) -> None:
    proxy = CutProxy(server.port)
    errors: list[BaseException] = []
    gave_up: list[bool] = []
    try:
        ws = client(proxy, key="WRONGKEY000000000000", max_reconnect_delay=0.01)
        ws.on_error = lambda e, w: errors.append(e)
        ws.on_noreconnect = lambda w: gave_up.append(True)
        with pytest.raises(TokenError) as info:
            ws.connect()
        assert info.value.status == 401
        assert "WRONGKEY" not in str(info.value) and "WRONGKEY" not in repr(info.value)
        assert len(errors) == 1 and errors[0] is info.value
        assert gave_up == [True]
        assert proxy.connections == 1  # exactly one handshake: no retry storm
    finally:
        proxy.close()


def test_forbidden_role_is_fatal(server: ServerThread) -> None:
    ws = client(server, key="SENSORONLY0000000001", dev="sensor-only-1", role="client")
    with pytest.raises(PermissionDenied):
        ws.connect()


def test_secrets_never_logged(server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="iotcommute")
    ws = client(server, key="BADSECRETKEY00000001")
    with pytest.raises(TokenError):
        ws.connect()
    good = client(server)
    start(good)
    finish(good)
    assert caplog.records  # something was logged, so the check below means something
    assert "BADSECRETKEY" not in caplog.text and KEY not in caplog.text


def test_options_validation() -> None:
    with pytest.raises(ValueError):
        WebSocket(KEY, DEV, "device", proxy="socks5://proxy:1080")
    with pytest.raises(ValueError):
        WebSocket(KEY, DEV, "device", url="http://example.com")
    with pytest.raises(ValueError):
        WebSocket(KEY, DEV, "admin")
    with pytest.raises(ValueError):
        WebSocket(KEY, DEV, "device", url="ws://user:pw@example.com")


def test_env_url_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOTCOMMUTE_URL", "ws://10.1.2.3:9999")
    assert WebSocket(KEY, DEV, "device").url == "ws://10.1.2.3:9999"


def test_stop_from_callback_then_connect_again(server: ServerThread) -> None:
    got: list[int] = []

    def on_tick(tick: dict[str, Any], ws: WebSocket) -> None:
        got.append(tick["position"])
        if len(got) == 5:
            ws.stop()

    closes: list[int] = []
    ws = client(server)
    ws.on_tick = on_tick
    ws.on_close = lambda code, reason, w: closes.append(code)
    start(ws)
    first = append(server, 50)
    assert ws.join(10)
    assert got[:5] == first[:5] and closes
    # a stopped client connects again (new private loop) and resumes after what it saw
    seen = len(got)
    start(ws)
    try:
        wait_for(lambda: len(got) >= 50, what="resumed ticks")
        assert got == first, f"not a clean resume after {seen} ticks"
    finally:
        finish(ws)


def test_checkpoint_resumes_a_new_process(server: ServerThread, tmp_path: Path) -> None:
    cp = tmp_path / "pos"
    got: list[int] = []
    ws = client(server, checkpoint=cp)
    ws.on_tick = lambda t, w: got.append(t["position"])
    start(ws)
    first = append(server, 100)
    wait_for(lambda: len(got) >= 100, what="first ticks")
    finish(ws)
    assert int(cp.read_text().split()[0]) == first[-1]  # "position log-id"
    more = append(server, 100)  # while no client runs
    got2: list[int] = []
    ws2 = client(server, checkpoint=cp)
    ws2.on_tick = lambda t, w: got2.append(t["position"])
    start(ws2)
    try:
        wait_for(lambda: len(got2) >= 100, what="resumed ticks")
        assert got2 == more
    finally:
        finish(ws2)


def test_retries_exhausted_raise_network_error() -> None:
    from tests.client.test_client_support import free_port

    attempts: list[int] = []
    gave_up: list[bool] = []
    ws = WebSocket(
        KEY,
        DEV,
        "device",
        url=f"ws://127.0.0.1:{free_port()}",
        max_retries=3,
        max_reconnect_delay=0.02,
    )
    ws.on_reconnect = lambda n, w: attempts.append(n)
    ws.on_noreconnect = lambda w: gave_up.append(True)
    with pytest.raises(NetworkError):
        ws.connect()
    assert attempts == [1, 2, 3] and gave_up == [True]
    assert ws.stats()["reconnects"] == 3


def test_access_token_session_auth(server: ServerThread) -> None:
    from iotcommute.server.registry import DEMO_API_KEY, DEMO_USER

    session = server.call(lambda: server.hub.registry.sessions.create(DEMO_USER, DEMO_API_KEY))
    got: list[int] = []
    ws = WebSocket(api_key=DEMO_API_KEY, access_token=session.access_token, url=server.url)
    assert session.access_token not in repr(ws)
    ws.on_tick = lambda t, w: got.append(t["position"])
    start(ws)
    try:
        expected = append(server, 10)
        wait_for(lambda: len(got) >= 10, what="ticks with token auth")
        assert got == expected
    finally:
        finish(ws)
    bad = WebSocket(api_key=DEMO_API_KEY, access_token="expired-token", url=server.url)
    with pytest.raises(TokenError):
        bad.connect()


def test_stop_right_after_threaded_connect_is_not_lost(server: ServerThread) -> None:
    for _ in range(5):
        ws = client(server)
        ws.connect(threaded=True)
        ws.stop()
        assert ws.join(10), "stop() issued right after connect() was lost"
        assert ws.error is None


def test_undecodable_messages_reported_and_stream_continues() -> None:
    from iotcommute import DecodeError
    from tests.client.test_client_support import DEVICE as MINI_DEV
    from tests.client.test_client_support import KEY as MINI_KEY
    from tests.client.test_client_support import MiniServer

    srv = MiniServer()
    got: list[int] = []
    errors: list[BaseException] = []
    ws = WebSocket(MINI_KEY, MINI_DEV, "device", url=srv.url)
    ws.on_tick = lambda t, w: got.append(t["position"])
    ws.on_error = lambda e, w: errors.append(e)
    try:
        start(ws)
        srv.produce(3)
        wait_for(lambda: len(got) == 3, what="first ticks")
        srv.broadcast("{not json")
        srv.broadcast(b"\x00\x01garbage-batch")
        srv.produce(3)
        wait_for(lambda: len(got) == 6, what="ticks after the corrupt messages")
        assert got == [1, 2, 3, 4, 5, 6]
        decode_errors = [e for e in errors if isinstance(e, DecodeError)]
        assert len(decode_errors) == 2
        assert ws.stats()["connections"] == 1  # the connection survived
    finally:
        finish(ws)
        srv.close()


def test_unsupported_protocol_version_is_fatal(server: ServerThread) -> None:
    from iotcommute import VersionError
    from tests.client.test_client_support import CutProxy as Counter

    counter = Counter(server.port)
    try:
        ws = client(counter, headers={"X-Protocol-Version": "99"}, max_reconnect_delay=0.01)
        with pytest.raises(VersionError) as info:
            ws.connect()
        assert info.value.status == 426
        assert counter.connections == 1
    finally:
        counter.close()


def test_blocking_connect_refuses_inside_a_running_loop(server: ServerThread) -> None:
    import asyncio

    async def main() -> None:
        with pytest.raises(RuntimeError, match="threaded=True"):
            client(server).connect()

    asyncio.run(main())


def test_http_connect_proxy(server: ServerThread) -> None:
    from tests.proxy import Proxy

    proxy = Proxy(auth=("alice", "s3cret"))
    try:
        got: list[int] = []
        ws = client(server, proxy=f"http://alice:s3cret@127.0.0.1:{proxy.port}")
        assert "s3cret" not in repr(ws)
        ws.on_tick = lambda t, w: got.append(t["position"])
        start(ws)
        try:
            expected = append(server, 20)
            wait_for(lambda: len(got) == 20, what="ticks through the proxy")
            assert got == expected
        finally:
            finish(ws)
        assert proxy.seen[0][0].startswith(f"CONNECT 127.0.0.1:{server.port} HTTP/1.1")
        # wrong proxy credentials: one typed error, no retry storm
        bad = client(server, proxy=f"http://alice:wrong@127.0.0.1:{proxy.port}")
        with pytest.raises(NetworkError) as info:
            bad.connect()
        assert info.value.status == 407 and "wrong" not in str(info.value)
        assert len(proxy.seen) == 2
    finally:
        proxy.close()


def test_raw_on_message_consumer_gets_binary_frames_untouched() -> None:
    """Without tick consumers, binary frames are application data: no decode, no DecodeError."""
    from tests.client.test_client_support import DEVICE as MINI_DEV
    from tests.client.test_client_support import KEY as MINI_KEY
    from tests.client.test_client_support import MiniServer

    srv = MiniServer()
    raw: list[Any] = []
    errors: list[BaseException] = []
    ws = WebSocket(MINI_KEY, MINI_DEV, "device", url=srv.url)
    ws.on_error = lambda e, w: errors.append(e)
    frames = [bytes([i]) * 32 for i in range(5)]
    try:
        start(ws)  # start() owns on_message while it waits for the subscription
        ws.on_message = lambda m, w: raw.append(m)
        for f in frames:
            srv.broadcast(f)
        wait_for(lambda: len(raw) >= 5, what="raw binary frames")
        assert raw == frames
        assert errors == []
    finally:
        finish(ws)
        srv.close()


def test_raw_consumer_gets_any_text_and_control_messages_still_work() -> None:
    """Only on_message set: text that is not protocol JSON is the application's data (no
    DecodeError), while control messages (a command here) still reach their callbacks."""
    from tests.client.test_client_support import DEVICE as MINI_DEV
    from tests.client.test_client_support import KEY as MINI_KEY
    from tests.client.test_client_support import MiniServer

    srv = MiniServer()
    raw: list[Any] = []
    commands: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    ws = WebSocket(MINI_KEY, MINI_DEV, "device", url=srv.url)
    ws.on_error = lambda e, w: errors.append(e)
    ws.on_command = lambda c, w: commands.append(c)
    texts = ["plain words", '{"k":1}{"k":2}', "[1, 2]", '{"no_type": true}']
    command = '{"type":"command","id":"c-7","from":"dev-2","data":{"fan":1}}'
    try:
        start(ws)
        ws.on_message = lambda m, w: raw.append(m)
        before = ws.stats()["messages_in"]
        for t in texts:
            srv.broadcast(t)
        srv.broadcast(b"\x00binary")
        srv.broadcast(command)
        wait_for(lambda: len(raw) >= 6 and len(commands) == 1, what="raw text and command")
        assert raw == [*texts, b"\x00binary", command]
        assert commands[0]["id"] == "c-7" and commands[0]["data"] == {"fan": 1}
        assert errors == []
        assert ws.stats()["messages_in"] - before == 6
    finally:
        finish(ws)
        srv.close()


def test_on_ticks_gets_binary_batches_in_order_without_duplicates() -> None:
    """A new binary batch is delivered as one list (fast path); an overlapping batch goes
    through the per-tick duplicate filter; on_tick and on_ticks see the same ticks in order."""
    from iotcommute import payload
    from tests.client.test_client_support import DEVICE as MINI_DEV
    from tests.client.test_client_support import KEY as MINI_KEY
    from tests.client.test_client_support import MiniServer

    def batch(lo: int, hi: int) -> bytes:
        return bytes(
            payload.encode_batch(
                [
                    {"type": "tick", "device": "dev-2", "position": p, "ts": 1.5, "data": {"v": p}}
                    for p in range(lo, hi)
                ]
            )
        )

    srv = MiniServer()
    calls: list[list[int]] = []
    raw: list[Any] = []
    ws = WebSocket(MINI_KEY, MINI_DEV, "device", url=srv.url, subscribe=None)
    ws.on_ticks = lambda ts, w: calls.append([t["position"] for t in ts])
    singles: list[int] = []
    ws.on_tick = lambda t, w: singles.append(t["position"])
    try:
        start(ws)  # start() owns on_message while it connects
        ws.on_message = lambda m, w: raw.append(m)
        srv.broadcast(batch(1, 101))
        srv.broadcast(batch(101, 201))
        srv.broadcast(batch(150, 251))  # overlaps: 150..200 are duplicates
        srv.broadcast(batch(10, 20))  # entirely old
        srv.broadcast(batch(251, 261))
        wait_for(lambda: sum(map(len, calls)) >= 260, what="ticks")
        # on_message sees the batches too (and maybe the welcome text, which races start())
        wait_for(lambda: sum(isinstance(m, bytes) for m in raw) == 5, what="raw frames")
        flat = [p for c in calls for p in c]
        assert flat == list(range(1, 261))
        assert singles == flat  # on_tick saw the same ticks, each once
        assert all(c == list(range(c[0], c[-1] + 1)) for c in calls)
        assert ws.position == 260
        assert ws.stats()["duplicates_dropped"] == 51 + 10
    finally:
        finish(ws)
        srv.close()


def test_on_ticks_json_lists_are_bounded_and_in_order(server: ServerThread) -> None:
    """JSON ticks reach on_ticks in stream order, in lists of at most JSON_TICKS_CHUNK."""
    from iotcommute.client.session import JSON_TICKS_CHUNK

    calls: list[list[int]] = []
    ws = client(server)
    ws.on_ticks = lambda ts, w: calls.append([t["position"] for t in ts])
    start(ws)
    try:
        expected = append(server, 1000)
        wait_for(lambda: sum(map(len, calls)) >= 1000, what="ticks")
        assert [p for c in calls for p in c] == expected
        assert max(map(len, calls)) <= JSON_TICKS_CHUNK
    finally:
        finish(ws)


def test_on_tick_rows_gets_the_lean_form_of_binary_batches() -> None:
    """on_tick_rows: one call per binary batch with the field names and one tuple per new
    tick; overlapping and old batches are filtered by position like dicts; on_tick/on_ticks
    see no binary batch; a raising on_tick_rows goes to on_error and the stream goes on."""
    from iotcommute import DecodeError, payload
    from tests.client.test_client_support import DEVICE as MINI_DEV
    from tests.client.test_client_support import KEY as MINI_KEY
    from tests.client.test_client_support import MiniServer

    def batch(lo: int, hi: int) -> bytes:
        return bytes(
            payload.encode_batch(
                [
                    {
                        "type": "tick",
                        "device": f"dev-{p % 3}",
                        "position": p,
                        "ts": 1.5 + p,
                        "data": {"v": p, "on": p % 2 == 0},
                    }
                    for p in range(lo, hi)
                ]
            )
        )

    srv = MiniServer()
    calls: list[tuple[tuple[str, ...], list[tuple[Any, ...]]]] = []
    dicts: list[Any] = []
    errors: list[BaseException] = []
    ws = WebSocket(MINI_KEY, MINI_DEV, "device", url=srv.url, subscribe=None)

    def on_rows(fields: tuple[str, ...], rows: list[tuple[Any, ...]], w: WebSocket) -> None:
        calls.append((fields, rows))
        if rows[0][1] == 101:
            raise ValueError("user bug")

    ws.on_tick_rows = on_rows
    ws.on_tick = lambda t, w: dicts.append(t)
    ws.on_ticks = lambda ts, w: dicts.append(ts)
    ws.on_error = lambda e, w: errors.append(e)
    try:
        start(ws)
        srv.broadcast(batch(1, 101))
        srv.broadcast(batch(101, 201))
        srv.broadcast(batch(150, 251))  # overlaps: 150..200 are duplicates
        srv.broadcast(batch(10, 20))  # entirely old: no call
        srv.broadcast(batch(251, 261)[:-3])  # truncated: a DecodeError, the stream goes on
        srv.broadcast(batch(251, 261))
        wait_for(lambda: sum(len(r) for _, r in calls) >= 260, what="rows")
        assert all(fields == ("v", "on") for fields, _ in calls)
        flat = [row for _, rows in calls for row in rows]
        assert flat == [(f"dev-{p % 3}", p, 1.5 + p, p, p % 2 == 0) for p in range(1, 261)]
        assert [len(r) for _, r in calls] == [100, 100, 50, 10]
        assert dicts == []
        assert [type(e) for e in errors] == [ValueError, DecodeError]
        assert "rows need" in str(errors[1])
        assert ws.position == 260 and ws.stats()["duplicates_dropped"] == 51 + 10
    finally:
        finish(ws)
        srv.close()


def test_on_tick_rows_against_the_reference_server(server: ServerThread) -> None:
    """The rows of a binary subscription carry exactly the ticks a JSON subscriber sees."""
    json_ticks: list[dict[str, Any]] = []
    rows: list[tuple[Any, ...]] = []
    a = client(server)
    a.on_tick = lambda t, w: json_ticks.append(t)
    b = client(server, format="binary")
    b.on_tick_rows = lambda fields, rs, w: rows.extend(
        (r[0], r[1], r[2], dict(zip(fields, r[3:]))) for r in rs
    )
    start(a)
    start(b)
    try:
        append(server, 500)
        wait_for(lambda: len(json_ticks) >= 500 and len(rows) >= 500, what="ticks")
        assert rows == [(t["device"], t["position"], t["ts"], t["data"]) for t in json_ticks]
    finally:
        finish(a)
        finish(b)
