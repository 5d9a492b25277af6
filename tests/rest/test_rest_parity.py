"""Commute and AsyncCommute side by side: each test runs against both (the `make` fixture), so
the two clients give the same results and the same errors for the same answers. Real sockets
on loopback: the reference server, tiny canned servers and a real proxy (tests/proxy.py).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import trustme

from iotcommute.exceptions import (
    CommandError,
    DataError,
    InputError,
    IotCommuteError,
    NetworkError,
    NotFoundError,
    PermissionDenied,
    RateLimitError,
    ServerError,
    SessionExpiredError,
    TokenError,
    UnavailableError,
)
from iotcommute.rest import MAX_RETRY_AFTER, AsyncCommute, Commute, checksum
from iotcommute.rest.base import _retry_after
from tests.proxy import Proxy
from tests.rest.servers import ENVELOPE, Canned, serve
from tests.rest.test_rest import API_KEY, API_SECRET, DEVICE, append, login

pytestmark = pytest.mark.timeout(60)


async def _collect(items: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in items]


class Blocking:
    """An AsyncCommute driven from plain test code: each call runs on one private loop."""

    def __init__(self, api: AsyncCommute) -> None:
        self.api = api
        self.runner = asyncio.Runner()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.api, name)
        if inspect.isasyncgenfunction(attr):
            return lambda *a, **kw: self.runner.run(_collect(attr(*a, **kw)))
        if inspect.iscoroutinefunction(attr):
            return lambda *a, **kw: self.runner.run(attr(*a, **kw))
        return attr

    def __repr__(self) -> str:
        return repr(self.api)

    def close(self) -> None:
        self.runner.run(self.api.aclose())
        self.runner.close()


Make = Callable[..., Any]


@pytest.fixture(params=["sync", "async"])
def make(request: pytest.FixtureRequest) -> Iterator[Make]:
    """make(root, **options) -> a Commute, or an AsyncCommute behind `Blocking`."""
    made: list[Any] = []

    def make(root: str, api_key: str = "app", **kw: Any) -> Any:
        kw.setdefault("timeout", 5.0)
        if request.param == "sync":
            api: Any = Commute(api_key, root=root, **kw)
        else:
            api = Blocking(AsyncCommute(api_key, root=root, **kw))
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()


def error_body(error_type: str, message: str = "refused") -> bytes:
    return f'{{"status":"error","error_type":"{error_type}","message":"{message}"}}'.encode()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


# ----------------------------------------------------------------------------- error mapping

J = "application/json"
ANSWERS: list[tuple[int, str, bytes, type[IotCommuteError], str]] = [
    (400, J, error_body("InputError", "limit must be 1..1000"), InputError, "input"),
    (401, J, error_body("TokenError"), TokenError, "token"),
    (401, J, error_body("SessionExpired"), SessionExpiredError, "session_expired"),
    (403, J, error_body("PermissionDenied"), PermissionDenied, "permission"),
    (404, J, error_body("NotFound"), NotFoundError, "not_found"),
    (405, J, error_body("InputError"), InputError, "input"),
    (409, J, error_body("DeviceOffline"), CommandError, "device_offline"),
    (413, J, error_body("InputError"), InputError, "input"),
    (418, J, error_body("Teapot"), InputError, "input"),
    (418, "text/html", b"<h1>teapot</h1>", DataError, "data"),
    (429, J, error_body("RateLimited"), RateLimitError, "rate"),
    (500, J, error_body("ServerError"), ServerError, "server"),
    (502, "text/html", b"<h1>Bad gateway</h1>", ServerError, "server"),
    (503, J, error_body("Unavailable", "the log store is down"), UnavailableError, "unavailable"),
    (503, "text/plain", b"busy", UnavailableError, "unavailable"),
    (504, J, error_body("CommandTimeout"), CommandError, "command_timeout"),
    (407, "text/plain", b"", NetworkError, "proxy"),
    (302, "text/html", b"", DataError, "data"),
    (200, "text/html", b"<html>", DataError, "data"),
    (200, J, b'{"no": "envelope"}', DataError, "data"),
    (200, J, b'{"status":"success","data":{"not":"a list"}}', DataError, "data"),
]


def test_every_answer_maps_to_the_same_error(make: Make, canned: Canned) -> None:
    canned.extra_headers = [("Retry-After", "3")]
    api = make(canned.root, access_token="t", retries=0)
    for status, ctype, body, cls, code in ANSWERS:
        canned.answer = (status, ctype, body)
        with pytest.raises(IotCommuteError) as ei:
            api.devices()
        err = ei.value
        assert (type(err), err.code, err.status) == (cls, code, status), (status, body)
        assert err.request_id == "rid-1"
        if b"refused" in body or b"down" in body:
            assert err.message in ("refused", "the log store is down")
        if isinstance(err, RateLimitError | UnavailableError):
            assert err.retryable and err.retry_after == 3.0
    assert len(canned.seen) == len(ANSWERS)  # retries=0: one request each


def test_unavailable_is_a_retryable_server_error() -> None:
    err = UnavailableError("the log store is down", status=503)
    assert isinstance(err, ServerError) and err.retryable and not err.fatal
    assert not ServerError("x").retryable


def test_retry_after_forms() -> None:
    assert _retry_after({"retry-after": "2"}) == 2.0
    assert _retry_after({"retry-after": "999"}) == MAX_RETRY_AFTER
    assert _retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # past
    assert _retry_after({"retry-after": "soon"}) is None
    assert _retry_after({}) is None


# ----------------------------------------------------------------------------- retries


def test_get_is_retried_until_an_answer_is_usable(make: Make, canned: Canned) -> None:
    busy = (503, J, error_body("Unavailable"))
    canned.script = [busy, (429, J, error_body("RateLimited"))]
    canned.extra_headers = [("Retry-After", "0")]
    api = make(canned.root, access_token="t", retries=2)
    assert api.devices() == [{"id": "d1"}]
    assert len(canned.seen) == 3
    canned.script = [busy, busy, busy]
    with pytest.raises(UnavailableError):
        api.devices()  # 1 + 2 retries, all busy
    assert len(canned.seen) == 6


def test_post_and_delete_are_not_resent_after_an_answer(make: Make, canned: Canned) -> None:
    canned.answer = (503, J, error_body("Unavailable"))
    canned.extra_headers = [("Retry-After", "0")]
    api = make(canned.root, access_token="t", retries=2)
    with pytest.raises(UnavailableError):
        api.send_command(DEVICE, {"op": "x"})
    with pytest.raises(UnavailableError):
        api.invalidate_session()
    assert [line.split()[0] for line, _ in canned.seen] == ["POST", "DELETE"]


def test_a_call_that_never_reached_the_server_is_retried(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    """Connection refused: nothing was sent, so even a POST is tried again (retries=2)."""
    api = make(f"http://127.0.0.1:{closed_port()}", access_token="t", retries=2)
    with caplog.at_level(logging.DEBUG, logger="iotcommute.rest"):
        with pytest.raises(NetworkError) as ei:
            api.send_command(DEVICE, {"op": "x"})
    assert (
        ei.value.code == "connect"
        and str(ei.value) == f"cannot connect (POST /devices/{DEVICE}/commands)"
    )
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 2


def test_keepalive_connections_are_reused(make: Make) -> None:
    for srv in serve(Canned(keepalive=True)):
        api = make(srv.root, access_token="t")
        for _ in range(4):
            assert api.devices() == [{"id": "d1"}]
        assert len(set(srv.ports)) == 1, srv.ports


# ----------------------------------------------------------------------------- input


@pytest.mark.parametrize(
    "data",
    [{"x": math.nan}, {"x": math.inf}, {"x": {1, 2}}, {1j: 1}, object()],
    ids=["nan", "inf", "set", "complex-key", "object"],
)
def test_command_data_json_cannot_encode_is_input_error(
    make: Make, canned: Canned, data: Any
) -> None:
    api = make(canned.root, access_token="t")
    with pytest.raises(InputError) as ei:
        api.send_command(DEVICE, data)
    assert "JSON" in ei.value.message
    assert canned.seen == []  # refused before any request


def test_circular_command_data_is_input_error(make: Make, canned: Canned) -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(InputError):
        make(canned.root, access_token="t").send_command(DEVICE, {"x": loop})
    assert canned.seen == []


def test_illegal_header_characters_are_input_errors(make: Make, canned: Canned) -> None:
    with pytest.raises(InputError) as ei:
        make(canned.root, api_key="app\r\nX-Evil: 1")
    assert "X-Evil" not in str(ei.value)
    api = make(canned.root, access_token="tok\nen-SECRET")
    with pytest.raises(InputError) as ei:
        api.devices()
    assert "SECRET" not in str(ei.value) and "SECRET" not in repr(ei.value)
    assert canned.seen == []


def test_bad_root_and_proxy_urls(make: Make) -> None:
    for root in ("ftp://x.example", "not a url", "http://"):
        with pytest.raises(InputError):
            make(root)
    with pytest.raises(InputError) as ei:
        make("http://127.0.0.1:1", proxy="socks5://u:proxy-pass@127.0.0.1:1080")
    assert "proxy-pass" not in str(ei.value)


# ----------------------------------------------------------------------------- secrets

ROOT_PASS = "root-pass-3b1f"
PROXY_PASS = "proxy-pass-77c2"
TOKEN = "access-token-9d0e"
KEY = "api-key-51aa"
SECRET = "api-secret-e4c8"


def test_repr_and_login_url_never_show_credentials(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        api = make(
            f"http://user:{ROOT_PASS}@127.0.0.1:1/api/",
            api_key=KEY,
            access_token=TOKEN,
            proxy=f"http://puser:{PROXY_PASS}@127.0.0.1:2",
        )
    name = "Commute" if isinstance(api, Commute) else "AsyncCommute"
    assert repr(api) == f"{name}(root='http://127.0.0.1:1/api', session=yes)"
    assert api.root == "http://127.0.0.1:1/api"
    assert api.login_url().startswith("http://127.0.0.1:1/api/connect/login?")
    assert any("credentials in the root URL are ignored" in r.getMessage() for r in caplog.records)
    for text in (repr(api), api.login_url(), *(r.getMessage() for r in caplog.records)):
        assert ROOT_PASS not in text and PROXY_PASS not in text and TOKEN not in text


def test_errors_and_logs_never_show_secrets(
    make: Make, canned: Canned, caplog: pytest.LogCaptureFixture
) -> None:
    """Every way a call can fail, with a password in the root URL and the proxy URL, a token,
    a key and a secret around: no message, repr, header copy or log record shows them."""
    caplog.set_level(logging.DEBUG)  # httpx's and httpcore's records too
    errors: list[IotCommuteError] = []

    def fail(call: Callable[[], Any]) -> None:
        with pytest.raises(IotCommuteError) as ei:
            call()
        errors.append(ei.value)

    # Answers from the server, one echoing a token in its message (redacted on the way in).
    canned.answer = (401, J, error_body("TokenError", f"unknown access_token={TOKEN}"))
    api = make(f"http://u:{ROOT_PASS}@{canned.root[7:]}", api_key=KEY, access_token=TOKEN)
    fail(api.devices)
    fail(lambda: api.generate_session("rt-1", SECRET))
    fail(lambda: api.device("x"))
    # A refused port, directly and through a proxy with credentials.
    dead = f"http://u:{ROOT_PASS}@127.0.0.1:{closed_port()}"
    fail(make(dead, api_key=KEY, access_token=TOKEN, retries=0).devices)
    with Proxy(auth=("puser", "other")) as proxy:
        through = make(
            canned.root, api_key=KEY, access_token=TOKEN, proxy=proxy.url_with("puser", PROXY_PASS)
        )
        fail(through.devices)  # 407: wrong proxy credentials
    assert all(e.message for e in errors) and len(errors) == 5
    shown = [str(e) for e in errors] + [repr(e) for e in errors] + [str(e.headers) for e in errors]
    shown += [r.getMessage() for r in caplog.records]
    for text in shown:
        for s in (ROOT_PASS, PROXY_PASS, TOKEN, KEY, SECRET, checksum(KEY, "rt-1", SECRET)):
            assert s not in text, text


# ----------------------------------------------------------------------------- proxies


def test_http_root_through_a_forwarding_proxy(make: Make, ref_server: Any) -> None:
    """The whole flow against the reference server through a proxy that wants credentials."""
    ref_server.hub.virtual[DEVICE] = lambda data: {"ok": True, "data": {"got": data}}
    mine = append(ref_server, DEVICE, 3)
    try:
        with Proxy(auth=("puser", PROXY_PASS)) as proxy:
            api = make(
                ref_server.http_url, api_key=API_KEY, proxy=proxy.url_with("puser", PROXY_PASS)
            )
            api.generate_session(login(ref_server), API_SECRET)
            assert DEVICE in {d["id"] for d in api.devices()}
            assert [t["position"] for t in api.iter_history(DEVICE, page_size=2)] == mine
            assert api.send_command(DEVICE, {"op": "x"}, timeout=3)["data"] == {"got": {"op": "x"}}
            assert api.invalidate_session() is True
    finally:
        ref_server.hub.virtual.pop(DEVICE, None)
    lines = [line for line, _ in proxy.seen]
    assert f"POST {ref_server.http_url}/session/token HTTP/1.1" in lines
    assert f"GET {ref_server.http_url}/devices HTTP/1.1" in lines
    assert {auth for _, auth in proxy.seen} == {proxy.expected}


def test_https_root_through_a_connect_proxy(make: Make, tls_server: Canned, ca: trustme.CA) -> None:
    port = tls_server.server_address[1]
    with Proxy(auth=("puser", PROXY_PASS)) as proxy, ca.cert_pem.tempfile() as pem:
        api = make(
            tls_server.root,
            access_token="t",
            ca_certs=pem,
            proxy=proxy.url_with("puser", PROXY_PASS),
        )
        assert api.devices() == [{"id": "d1"}]
        wrong = make(tls_server.root, access_token="t", ca_certs=pem, proxy=proxy.url, retries=2)
        with pytest.raises(NetworkError) as ei:
            wrong.devices()  # CONNECT answered 407: not retried
    assert ei.value.code == "proxy"
    assert proxy.seen == [
        (f"CONNECT 127.0.0.1:{port} HTTP/1.1", proxy.expected),
        (f"CONNECT 127.0.0.1:{port} HTTP/1.1", None),
    ]
    # The server saw the request itself, tunnelled, with the token and no proxy header.
    line, headers = tls_server.seen[0]
    assert line == "GET /devices HTTP/1.1" and headers["authorization"] == "token app:t"
    assert "proxy-authorization" not in headers and len(tls_server.seen) == 1


def test_a_proxy_that_is_down_is_a_connect_error(make: Make) -> None:
    api = make(
        "http://127.0.0.1:1", access_token="t", proxy=f"http://127.0.0.1:{closed_port()}", retries=0
    )
    with pytest.raises(NetworkError) as ei:
        api.devices()
    assert ei.value.code == "connect"


# ----------------------------------------------------------------------------- asyncio only


def test_async_client_survives_a_new_event_loop(canned: Canned) -> None:
    """Pooled connections belong to their loop; a second asyncio.run gets fresh ones."""
    api = AsyncCommute("app", root=canned.root, access_token="t")
    assert asyncio.run(api.devices()) == [{"id": "d1"}]
    assert asyncio.run(api.devices()) == [{"id": "d1"}]
    assert canned.answer[2] == ENVELOPE and len(canned.seen) == 2


def test_a_closed_client_reconnects(make: Make, canned: Canned) -> None:
    api = make(canned.root, access_token="t")
    assert api.devices() == [{"id": "d1"}]
    api.close() if isinstance(api, Commute) else api.aclose()
    assert api.devices() == [{"id": "d1"}]
    assert len(canned.seen) == 2
