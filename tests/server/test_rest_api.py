"""The reference server's HTTP endpoints seen from the wire (raw httpx, not Commute):
login pages, request ids, envelopes, methods, body formats, paging fields."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotcommute.exceptions import redact
from iotcommute.server import rest_api
from iotcommute.server.hub import Hub
from iotcommute.server.log import Log
from iotcommute.server.registry import demo_registry

pytestmark = pytest.mark.timeout(60)


def req(server: Any, method: str, path: str, **kw: Any) -> httpx.Response:
    """One request as given, on its own connection (redirects are not followed); `data` is a
    form, `content` bytes."""
    return httpx.request(method, server.http_url + path, timeout=5.0, trust_env=False, **kw)


def form_login(server: Any, **fields: str) -> httpx.Response:
    base = {"api_key": "demo-app", "user_id": "demo-user", "password": "demo-pass"}
    return req(server, "POST", "/connect/login", data={**base, **fields})


def err(r: httpx.Response) -> dict[str, Any]:
    assert r.headers["Content-Type"] == "application/json"
    body = json.loads(r.content)
    assert body["status"] == "error" and set(body) == {"status", "error_type", "message"}
    return body  # type: ignore[no-any-return]


def token_for(server: Any) -> str:
    r = form_login(server, redirect="http://127.0.0.1:1/cb")
    rt = parse_qs(urlsplit(r.headers["Location"]).query)["request_token"][0]
    r = req(
        server,
        "POST",
        "/session/token",
        content=json.dumps(
            {
                "api_key": "demo-app",
                "request_token": rt,
                "checksum": rest_api.checksum("demo-app", rt, "demo-secret"),
            }
        ),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 200
    return str(json.loads(r.content)["data"]["access_token"])


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"token demo-app:{token}"}


def test_every_response_has_a_request_id(ref_server: Any) -> None:
    seen = set()
    for method, path in [
        ("GET", "/nope"),
        ("GET", "/devices"),
        ("PUT", "/devices"),
        ("GET", "/connect/login?api_key=demo-app&v=1"),
        ("GET", "/connect/login"),
    ]:
        r = req(ref_server, method, path)
        rid = r.headers.get("X-Request-Id")
        assert rid and rid not in seen
        seen.add(rid)
    # A plain caller-supplied id is echoed for correlation; anything else is replaced.
    r = req(ref_server, "GET", "/devices", headers={"X-Request-Id": "abc-123"})
    assert r.headers["X-Request-Id"] == "abc-123"
    r = req(ref_server, "GET", "/devices", headers={"X-Request-Id": "bad id\twith spaces"})
    assert r.headers["X-Request-Id"] != "bad id\twith spaces"


def test_unknown_path_and_method(ref_server: Any) -> None:
    r = req(ref_server, "GET", "/nope")
    assert r.status_code == 404 and err(r)["error_type"] == "NotFound"
    r = req(ref_server, "GET", "/devices/x/y")
    assert r.status_code == 404
    r = req(ref_server, "PUT", "/devices")
    assert r.status_code == 405 and r.headers["Allow"] == "GET"
    r = req(ref_server, "GET", "/devices/sim-0001/commands")
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
    r = req(ref_server, "PATCH", "/session/token")
    assert r.status_code == 405 and r.headers["Allow"] == "POST, DELETE"


def test_login_page_and_its_errors(ref_server: Any) -> None:
    r = req(ref_server, "GET", "/connect/login?api_key=demo-app&v=1&redirect=http://a.example/cb")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    page = r.content.decode()
    assert 'name="password"' in page and 'value="http://a.example/cb"' in page
    assert "demo-secret" not in page
    assert r.headers["X-Frame-Options"] == "DENY"
    assert req(ref_server, "GET", "/connect/login?api_key=nope&v=1").status_code == 400
    assert req(ref_server, "GET", "/connect/login?api_key=demo-app&v=2").status_code == 400
    bad = req(ref_server, "GET", "/connect/login?api_key=demo-app&redirect=javascript:alert(1)")
    assert bad.status_code == 400


def test_login_page_escapes_what_it_echoes(ref_server: Any) -> None:
    r = req(
        ref_server, "GET", '/connect/login?api_key=demo-app&redirect=http://a.example/"><script>'
    )
    assert r.status_code == 200
    assert b"<script>" not in r.content and b"&quot;&gt;&lt;script&gt;" in r.content


def test_wrong_password_is_401_page_without_token(ref_server: Any) -> None:
    r = form_login(ref_server, password="wrong", redirect="http://a.example/cb")
    assert r.status_code == 401 and "Location" not in r.headers
    assert b"Wrong user ID or password" in r.content and b'name="password"' in r.content
    r = form_login(ref_server, user_id="nobody", redirect="http://a.example/cb")
    assert r.status_code == 401
    assert form_login(ref_server, api_key="nope").status_code == 400


def test_login_without_redirect_shows_the_token(ref_server: Any) -> None:
    r = form_login(ref_server)
    assert r.status_code == 200
    page = r.content.decode()
    rt = page.split("<pre>")[1].split("</pre>")[0]
    body = {
        "api_key": "demo-app",
        "request_token": rt,
        "checksum": rest_api.checksum("demo-app", rt, "demo-secret"),
    }
    # POST /session/token takes a urlencoded form as well as JSON.
    r = req(ref_server, "POST", "/session/token", data=body)
    assert r.status_code == 200 and json.loads(r.content)["data"]["user_id"] == "demo-user"


def test_session_token_input_errors(ref_server: Any) -> None:
    r = req(
        ref_server,
        "POST",
        "/session/token",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400 and err(r)["error_type"] == "InputError"
    r = req(
        ref_server,
        "POST",
        "/session/token",
        content=b"[1]",
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400
    r = req(
        ref_server,
        "POST",
        "/session/token",
        content=json.dumps({"api_key": "demo-app"}),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400 and "request_token" in err(r)["message"]
    r = req(
        ref_server,
        "POST",
        "/session/token",
        content=b"x" * (rest_api.MAX_BODY + 1),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code in (400, 413)


def test_authorization_header_forms(ref_server: Any) -> None:
    token = token_for(ref_server)
    assert req(ref_server, "GET", "/devices", headers=auth(token)).status_code == 200
    for value in [
        "",
        "token",
        f"Bearer demo-app:{token}",
        f"token demo-app{token}",
        "token demo-app:forged",
        f"token other-app:{token}",
    ]:
        r = req(ref_server, "GET", "/devices", headers={"Authorization": value} if value else {})
        assert r.status_code == 401 and err(r)["error_type"] == "TokenError", value


def test_expired_session_error_type(ref_server: Any) -> None:
    rest_api.configure(ref_server.hub, session_ttl=0.1)
    token = token_for(ref_server)
    time.sleep(0.3)
    r = req(ref_server, "GET", "/devices", headers=auth(token))
    assert r.status_code == 401 and err(r)["error_type"] == "SessionExpired"


def test_history_query_validation_and_envelope(ref_server: Any) -> None:
    token = token_for(ref_server)
    h = auth(token)
    for q in ["limit=0", "limit=1001", "limit=x", "since=-1", "since=1.5"]:
        r = req(ref_server, "GET", f"/devices/sim-0001/history?{q}", headers=h)
        assert r.status_code == 400, q
    r = req(ref_server, "GET", "/devices/sim-0001/history", headers=h)
    assert json.loads(r.content) == {"status": "success", "data": [], "next": None}


def test_history_reports_trimmed_positions(ref_server_factory: Callable[..., Any]) -> None:
    srv = ref_server_factory(retain=10)
    token = token_for(srv)

    def fill() -> None:
        for i in range(30):
            srv.hub.log.append("sim-0001", {"i": i}, None)

    srv.call(fill)
    r = req(srv, "GET", "/devices/sim-0001/history?since=5&limit=100", headers=auth(token))
    body = json.loads(r.content)
    assert [t["position"] for t in body["data"]] == list(range(21, 31))
    assert body["gap"] == {"from": 5, "to": 20, "missed": 15}
    r = req(srv, "GET", "/devices/sim-0001/history?since=25", headers=auth(token))
    assert "gap" not in json.loads(r.content)


def test_command_body_validation(ref_server: Any) -> None:
    h = {**auth(token_for(ref_server)), "Content-Type": "application/json"}
    path = "/devices/sim-0001/commands"
    for body in [
        b"{}",
        b'{"data": 1, "timeout": 0}',
        b'{"data": 1, "timeout": 61}',
        b'{"data": 1, "timeout": true}',
        b'{"data": 1, "timeout": "5"}',
    ]:
        r = req(ref_server, "POST", path, content=body, headers=h)
        assert r.status_code == 400, body
    r = req(ref_server, "POST", path, content=b'{"data": {"op": "x"}}', headers=h)
    assert r.status_code == 409 and err(r)["error_type"] == "DeviceOffline"


_METHODS = st.sampled_from(["GET", "POST", "DELETE", "PUT", "HEAD", "OPTIONS", "get", "X"])
_PATHS = st.one_of(
    st.sampled_from(
        [
            "/devices",
            "/devices/sim-0001",
            "/devices/sim-0001/history",
            "/devices/sim-0001/commands",
            "/devices/other-0001",
            "/session/token",
            "/connect/login",
            "/",
        ]
    ),
    st.text(max_size=40).map(lambda t: "/" + t),
)
_QUERIES = st.one_of(
    st.just(""),
    st.sampled_from(["?since=1&limit=5", "?limit=-1", "?api_key=demo-app&v=1", "?since=%ff"]),
    st.text(max_size=30).map(lambda t: "?" + t),
)
_HEADERS = st.lists(
    st.tuples(
        st.sampled_from(["authorization", "content-type", "x-request-id", "x-other"]),
        st.one_of(
            st.sampled_from(
                [
                    "token demo-app:x",
                    "token :",
                    "application/json",
                    "application/x-www-form-urlencoded",
                ]
            ),
            st.text(max_size=30),
        ),
    ),
    max_size=4,
)
_BODIES = st.one_of(
    st.just(b""),
    st.sampled_from([b"{}", b'{"data": 1}', b"[]", b"null", b"api_key=demo-app&user_id=x"]),
    st.binary(max_size=64),
)


@pytest.fixture(scope="module")
def direct() -> Iterator[tuple[asyncio.AbstractEventLoop, Hub]]:
    """A real Hub without sockets, and a loop to await handle() on."""
    loop = asyncio.new_event_loop()
    yield loop, Hub(demo_registry(3), Log())
    loop.close()


@settings(max_examples=300, deadline=None)
@given(method=_METHODS, path=_PATHS, query=_QUERIES, headers=_HEADERS, body=_BODIES)
def test_handle_never_raises_and_always_answers_cleanly(
    direct: tuple[asyncio.AbstractEventLoop, Hub],
    method: str,
    path: str,
    query: str,
    headers: list[tuple[str, str]],
    body: bytes,
) -> None:
    """Arbitrary requests straight into handle(): a proper status, a request id, and a JSON
    error envelope for every JSON error (never a 500 for bad input)."""
    loop, hub = direct
    status, out_headers, out_body = loop.run_until_complete(
        rest_api.handle(hub, method, path + query, headers, body)
    )
    names = {k.lower(): v for k, v in out_headers}
    assert names["x-request-id"]
    assert status in {200, 302, 400, 401, 403, 404, 405, 409, 413, 429}
    if names.get("content-type") == "application/json" and method.upper() != "HEAD":
        doc = json.loads(out_body)
        assert doc["status"] == ("success" if status == 200 else "error")
        if status != 200:
            # Client errors run messages through redact(); ours must come out unchanged.
            assert redact(doc["message"]) == doc["message"]
