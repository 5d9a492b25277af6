"""Commute (REST client) against the running reference server: login flow, devices,
history, commands, and every error mapping."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from iotcommute.exceptions import (
    CommandError,
    InputError,
    IotCommuteError,
    NotFoundError,
    PermissionDenied,
    RateLimitError,
    ServerError,
    SessionExpiredError,
    TokenError,
)
from iotcommute.rest import Commute, checksum
from iotcommute.server import rest_api

pytestmark = pytest.mark.timeout(60)

API_KEY = "demo-app"
API_SECRET = "demo-secret"
USER = "demo-user"
PASSWORD = "demo-pass"
DEVICE = "sim-0001"
OTHER_DEVICE = "other-0001"  # owned by other-user


@pytest.fixture
def server(ref_server: Any) -> Iterator[Any]:
    """The reference server, with REST options put back after each test."""
    yield ref_server
    rest_api.configure(
        ref_server.hub,
        session_ttl=rest_api.DEFAULT_SESSION_TTL,
        request_token_ttl=rest_api.DEFAULT_REQUEST_TOKEN_TTL,
        rate_limit=None,
    )
    ref_server.hub.virtual.pop(DEVICE, None)


@contextlib.contextmanager
def quiet_http_logs() -> Iterator[None]:
    """The browser's side of the login shows the request token (in a redirect's Location
    header) to httpx's debug log; that browser is this test module, not the client."""
    loggers = [logging.getLogger(name) for name in ("httpx", "httpcore")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def login(server: Any, user: str = USER, password: str = PASSWORD, api_key: str = API_KEY) -> str:
    """Drive the HTML login form like a browser; returns the request_token of the redirect."""
    with quiet_http_logs():
        return _login(server, user, password, api_key)


def _login(server: Any, user: str, password: str, api_key: str) -> str:
    r = httpx.post(
        server.http_url + "/connect/login",
        data={
            "api_key": api_key,
            "user_id": user,
            "password": password,
            "redirect": "http://app.example/cb?x=1",
        },
        timeout=5.0,
    )
    assert r.status_code == 302, r.content[:200]
    loc = urlsplit(r.headers["Location"])
    assert (loc.scheme, loc.netloc, loc.path) == ("http", "app.example", "/cb")
    q = parse_qs(loc.query)
    assert q["status"] == ["success"] and q["x"] == ["1"]
    return q["request_token"][0]


def client(server: Any, **kw: Any) -> Commute:
    kw.setdefault("timeout", 5.0)
    return Commute(API_KEY, root=server.http_url, **kw)


def session(server: Any, **kw: Any) -> Commute:
    c = client(server, **kw)
    c.generate_session(login(server), API_SECRET)
    return c


def append(server: Any, device: str, n: int) -> list[int]:
    """Append n ticks to the server's log on the server loop (the hub is not thread-safe)."""

    def work() -> list[int]:
        return [server.hub.log.append(device, {"i": i, "t": 20.5}, time.time()) for i in range(n)]

    return list(server.call(work))


# ----------------------------------------------------------------------------- login flow


def test_login_url_has_key_and_version_never_secret(server: Any) -> None:
    c = client(server)
    url = c.login_url("http://app.example/cb")
    q = parse_qs(urlsplit(url).query)
    assert url.startswith(server.http_url + "/connect/login?")
    assert q == {"api_key": [API_KEY], "v": ["1"], "redirect": ["http://app.example/cb"]}
    assert API_SECRET not in url
    # The page it points to is the login form.
    r = httpx.get(url, timeout=5.0)
    assert r.status_code == 200
    assert b'<form method="post" action="/connect/login"' in r.content
    assert r.headers["X-Request-Id"]


def test_generate_session_and_devices(server: Any) -> None:
    c = client(server)
    data = c.generate_session(login(server), API_SECRET)
    assert data["user_id"] == USER and data["api_key"] == API_KEY
    assert c.access_token == data["access_token"]
    assert data["expires_at"] > time.time()
    devices = c.devices()
    ids = {d["id"] for d in devices}
    assert DEVICE in ids and OTHER_DEVICE not in ids
    assert all(d["owner"] == USER and "key" not in d for d in devices)
    dev = c.device(DEVICE)
    assert dev["id"] == DEVICE and dev["online"] is False


def test_set_access_token_reuses_a_session(server: Any) -> None:
    token = session(server).access_token
    c2 = client(server)
    with pytest.raises(TokenError):  # not logged in: refused before any request
        c2.devices()
    c2.set_access_token(token)
    assert c2.devices()


def test_wrong_secret_is_refused_and_request_token_single_use(server: Any) -> None:
    c = client(server)
    rt = login(server)
    with pytest.raises(TokenError) as ei:
        c.generate_session(rt, "not-the-secret")
    assert ei.value.status == 401 and ei.value.request_id
    # The token was consumed by the failed attempt: the right secret no longer helps.
    with pytest.raises(TokenError):
        c.generate_session(rt, API_SECRET)
    assert c.access_token is None


def test_request_token_expires(server: Any) -> None:
    rest_api.configure(server.hub, request_token_ttl=0.05)
    rt = login(server)
    time.sleep(0.2)
    with pytest.raises(TokenError):
        client(server).generate_session(rt, API_SECRET)


def test_request_token_bound_to_its_app(server: Any) -> None:
    rt = login(server, api_key="other-app", user="other-user", password="other-pass")
    with pytest.raises(TokenError):
        client(server).generate_session(rt, API_SECRET)


def test_checksum_is_what_the_server_computes() -> None:
    assert checksum("a", "b", "c") == rest_api.checksum("a", "b", "c")
    assert len(checksum("a", "b", "c")) == 64


def test_invalidate_session(server: Any) -> None:
    c = session(server)
    token = c.access_token
    assert c.invalidate_session() is True
    assert c.access_token is None
    c.set_access_token(token)
    with pytest.raises(TokenError) as ei:
        c.devices()
    assert not isinstance(ei.value, SessionExpiredError)


def test_session_expiry_raises_and_calls_hook(server: Any) -> None:
    rest_api.configure(server.hub, session_ttl=0.2)
    calls: list[int] = []
    c = session(server, on_session_expired=lambda: calls.append(1))
    time.sleep(0.5)
    with pytest.raises(SessionExpiredError) as ei:
        c.devices()
    err = ei.value
    assert err.status == 401 and err.code == "session_expired" and err.request_id
    assert err.message == "the session has expired; log in again"  # unmangled by redact()
    assert calls == [1]
    # Logging out of a session that is already gone succeeds and does not fire the hook.
    assert c.invalidate_session() is True
    assert c.access_token is None and calls == [1]


def test_bad_token_is_token_error_not_expired(server: Any) -> None:
    calls: list[int] = []
    c = client(server, access_token="forged", on_session_expired=lambda: calls.append(1))
    with pytest.raises(TokenError) as ei:
        c.devices()
    assert type(ei.value) is TokenError and ei.value.status == 401
    assert calls == []


# ----------------------------------------------------------------------------- errors


def test_not_found_and_permission(server: Any) -> None:
    c = session(server)
    with pytest.raises(NotFoundError) as ei:
        c.device("no-such-device")
    assert ei.value.status == 404 and ei.value.request_id
    with pytest.raises(PermissionDenied) as ei2:
        c.device(OTHER_DEVICE)
    assert ei2.value.status == 403
    with pytest.raises(PermissionDenied):
        c.history(OTHER_DEVICE)
    with pytest.raises(PermissionDenied):
        c.send_command(OTHER_DEVICE, {"op": "x"})


def test_input_errors(server: Any) -> None:
    c = session(server)
    with pytest.raises(InputError) as ei:
        c.history(DEVICE, limit=0)
    assert ei.value.status == 400 and "limit" in ei.value.message
    with pytest.raises(InputError):
        c.send_command(DEVICE, {"op": "x"}, timeout=-1)


def test_server_error_when_the_hub_fails(
    server: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    c = session(server)

    def boom(user_id: str) -> list[Any]:
        raise RuntimeError("registry on fire")

    monkeypatch.setattr(server.hub.registry, "devices_of", boom)
    with caplog.at_level(logging.ERROR, logger="iotcommute.server.rest"):
        with pytest.raises(ServerError) as ei:
            c.devices()
    assert ei.value.status == 500
    assert "fire" not in ei.value.message  # details stay in the server log
    assert any("REST handler failed" in r.getMessage() for r in caplog.records)


def test_rate_limit_maps_to_rate_limit_error(server: Any) -> None:
    c = session(server, retries=0)
    rest_api.configure(server.hub, rate_limit=(0.01, 2))
    c.devices()
    c.devices()
    with pytest.raises(RateLimitError) as ei:
        c.devices()
    assert isinstance(ei.value, InputError)  # still an input problem for broad handlers
    assert ei.value.status == 429 and ei.value.code == "rate"
    assert ei.value.headers.get("retry-after")
    assert ei.value.retry_after is not None and ei.value.retry_after >= 1


def test_login_posts_are_rate_limited_per_app(server: Any) -> None:
    rest_api.configure(server.hub, rate_limit=(0.01, 2))
    login(server)
    login(server)
    r = httpx.post(
        server.http_url + "/connect/login",
        data={"api_key": API_KEY, "user_id": USER, "password": PASSWORD},
        timeout=5.0,
    )
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    # Another app has its own bucket.
    login(server, api_key="other-app", user="other-user", password="other-pass")


def test_get_is_retried_after_429(server: Any) -> None:
    c = session(server, retries=2)
    rest_api.configure(server.hub, rate_limit=(2.0, 1))
    c.devices()
    # The bucket is empty: the server answers 429 + Retry-After, the client waits and retries.
    assert c.devices()


def test_one_client_shared_by_threads(server: Any) -> None:
    c = session(server, pool_size=2)
    results: list[int] = []

    def work() -> None:
        for _ in range(5):
            results.append(len(c.devices()))

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 30 and len(set(results)) == 1
    c.close()


# ----------------------------------------------------------------------------- history


def test_history_pages_and_iter(server: Any) -> None:
    c = session(server)
    mine = append(server, DEVICE, 25)
    append(server, "sim-0002", 10)
    first = c.history(DEVICE, limit=10)
    assert [t["position"] for t in first] == mine[:10]
    t0 = first[0]
    assert t0["type"] == "tick" and t0["device"] == DEVICE and t0["data"] == {"i": 0, "t": 20.5}
    assert isinstance(t0["ts"], float)
    after = c.history(DEVICE, since=mine[9], limit=100)
    assert [t["position"] for t in after] == mine[10:]
    assert [t["position"] for t in c.iter_history(DEVICE, page_size=7)] == mine
    assert [t["position"] for t in c.iter_history(DEVICE, since=mine[-1])] == []
    assert c.history("sim-0003") == []


# ----------------------------------------------------------------------------- commands


def test_send_command_to_a_virtual_device(server: Any) -> None:
    c = session(server)
    seen: list[Any] = []

    def device(data: dict[str, Any]) -> dict[str, Any]:
        seen.append(data)
        return {"ok": True, "data": {"done": data.get("op")}}

    server.hub.virtual[DEVICE] = device
    ack = c.send_command(DEVICE, {"op": "reboot"}, timeout=3)
    assert ack["ok"] is True and ack["data"] == {"done": "reboot"}
    assert seen == [{"op": "reboot"}]


def test_device_refusal_is_returned_as_ack(server: Any) -> None:
    c = session(server)
    server.hub.virtual[DEVICE] = lambda data: {"ok": False, "error": "busy"}
    ack = c.send_command(DEVICE, {"op": "reboot"})
    assert ack["ok"] is False and ack["error"] == "busy"


def test_command_to_offline_device(server: Any) -> None:
    c = session(server)
    with pytest.raises(CommandError) as ei:
        c.send_command(DEVICE, {"op": "reboot"})
    assert ei.value.status == 409 and ei.value.code == "device_offline"


# ----------------------------------------------------------------------------- secrets


def test_secrets_never_in_errors_reprs_or_logs(
    server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rest_api.configure(server.hub, session_ttl=0.3)
    errors: list[IotCommuteError] = []
    c = client(server)
    rt_bad = login(server)
    try:
        c.generate_session(rt_bad, API_SECRET + "x")
    except IotCommuteError as e:
        errors.append(e)
    rt = login(server)
    c.generate_session(rt, API_SECRET)
    token = c.access_token
    assert token
    c.devices()
    for dev_id in ("nope", OTHER_DEVICE):
        try:
            c.device(dev_id)
        except IotCommuteError as e:
            errors.append(e)
    time.sleep(0.5)
    try:
        c.devices()
    except IotCommuteError as e:
        errors.append(e)
    assert len(errors) == 4
    secrets_ = [API_SECRET, token, rt, rt_bad, PASSWORD, checksum(API_KEY, rt, API_SECRET)]
    shown = [repr(c), *(str(e) for e in errors), *(repr(e) for e in errors)]
    shown += [str(e.headers) for e in errors]
    shown += [r.getMessage() for r in caplog.records]
    for text in shown:
        for s in secrets_:
            assert s not in text
    for r in caplog.records:
        if r.name in ("iotcommute.rest", "iotcommute.server.rest"):
            assert API_KEY not in r.getMessage()


# ----------------------------------------------------------------------------- with real sockets


class WsDevice:
    """sim-0001 connected over a real WebSocket (the `websockets` library, not our client).

    answer=True acks every command with {"echo": data}; False stays silent.
    """

    def __init__(self, server: Any, answer: bool) -> None:
        from websockets.sync.client import connect

        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(
            connect(
                server.ws_url,
                additional_headers={
                    "X-Device-Id": DEVICE,
                    "X-Device-Key": "SIMKEY00000000000001",
                    "X-Role": "device",
                },
                open_timeout=5,
            )
        )
        welcome = json.loads(self.ws.recv(timeout=5))
        assert welcome["type"] == "welcome" and welcome["device"] == DEVICE
        self.answer = answer
        self.commands: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            for raw in self.ws:
                msg = json.loads(raw)
                if msg.get("type") == "command":
                    self.commands.append(msg)
                    if self.answer:
                        ack = {
                            "type": "ack",
                            "id": msg["id"],
                            "ok": True,
                            "data": {"echo": msg["data"]},
                        }
                        self.ws.send(json.dumps(ack))
        except ConnectionClosed:
            pass

    def close(self) -> None:
        self._stack.close()
        self.thread.join(5)


def wait_online(server: Any, device: str) -> None:
    """Until the device is online (the module's pytest timeout bounds the wait)."""
    while not server.call(server.hub.online, device):
        time.sleep(0.01)


def test_command_round_trip_through_a_websocket_device(server: Any) -> None:
    c = session(server)
    dev = WsDevice(server, answer=True)
    try:
        wait_online(server, DEVICE)
        assert c.device(DEVICE)["online"] is True
        ack = c.send_command(DEVICE, {"op": "set", "value": 3}, timeout=5)
        assert ack["ok"] is True and ack["data"] == {"echo": {"op": "set", "value": 3}}
        assert [m["data"] for m in dev.commands] == [{"op": "set", "value": 3}]
    finally:
        dev.close()


def test_command_timeout_when_the_device_stays_silent(server: Any) -> None:
    c = session(server)
    dev = WsDevice(server, answer=False)
    try:
        wait_online(server, DEVICE)
        with pytest.raises(CommandError) as ei:
            c.send_command(DEVICE, {"op": "reboot"}, timeout=0.3)
        assert ei.value.status == 504 and ei.value.code == "command_timeout"
        assert len(dev.commands) == 1
    finally:
        dev.close()


def test_access_token_opens_the_stream_until_logout(server: Any) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    c = session(server)
    headers = {"Authorization": f"token {API_KEY}:{c.access_token}", "X-Role": "client"}
    with connect(server.ws_url, additional_headers=headers, open_timeout=5) as ws:
        welcome = json.loads(ws.recv(timeout=5))
        assert welcome["type"] == "welcome" and welcome["role"] == "client"
    c.invalidate_session()
    with pytest.raises(InvalidStatus) as ei:
        connect(server.ws_url, additional_headers=headers, open_timeout=5)
    assert ei.value.response.status_code == 401


def test_history_pages_past_the_scan_window(server: Any) -> None:
    c = session(server)
    mine = append(server, DEVICE, 3)
    append(server, "sim-0002", 12_000)  # more than one bounded scan of the log
    mine += append(server, DEVICE, 2)
    got = [t["position"] for t in c.iter_history(DEVICE, page_size=100)]
    assert got == mine


def test_history_page_reports_a_gap(
    ref_server_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    srv = ref_server_factory(retain=10)
    with session(srv) as c:
        mine = append(srv, DEVICE, 30)
        page = c.history_page(DEVICE, since=5)
        assert [t["position"] for t in page["data"]] == mine[-10:]
        assert page["next"] is None
        assert page["gap"] == {"from": 5, "to": mine[-11], "missed": mine[-11] - 5}
        with caplog.at_level(logging.WARNING, logger="iotcommute.rest"):
            assert len(list(c.iter_history(DEVICE, since=5))) == 10
        assert any("trimmed" in r.getMessage() for r in caplog.records)
        assert "gap" not in c.history_page(DEVICE)


def test_a_stream_closed_1008_by_logout_ends_without_reconnecting(server: Any) -> None:
    """docs/protocol.md §10: after 1008 the client does not reconnect (its token is dead);
    it stops with SessionExpiredError and never sends another handshake."""
    from iotcommute import WebSocket
    from iotcommute.exceptions import SessionExpiredError

    c = session(server)
    token = c.access_token
    assert token is not None
    ws = WebSocket(api_key=API_KEY, access_token=token, role="client", url=server.url)
    opened: list[int] = []
    errors: list[BaseException] = []
    ws.on_connect = lambda w: opened.append(1)
    ws.on_error = lambda e, w: errors.append(e)
    ws.connect(threaded=True)
    try:
        while not opened:  # the token stream opens (bounded by the module's pytest timeout)
            time.sleep(0.02)
        c.invalidate_session()
        assert ws.join(10), "the client went on after a 1008"
    finally:
        ws.stop()
    assert len(opened) == 1  # no second connection attempt reached the open state
    assert ws.stats()["connections"] == 1 and ws.stats()["reconnects"] == 0
    assert any(isinstance(e, SessionExpiredError) for e in errors), errors
    assert token not in repr(errors) + str(errors)
