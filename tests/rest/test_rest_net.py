"""Commute's transport failures against tiny local servers the reference server cannot play:
TLS trust, sockets that never answer, refused ports, odd bodies, redirects. (Proxies, and the
same failures for both clients: test_rest_parity.py.)"""

from __future__ import annotations

import json
import logging
import select
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import trustme

from iotcommute.exceptions import DataError, NetworkError, OperationTimeout, ServerError
from iotcommute.rest import Commute

pytestmark = pytest.mark.timeout(60)

ENVELOPE = json.dumps({"status": "success", "data": [{"id": "d1"}]}).encode()


class Canned(ThreadingHTTPServer):
    """Answers every request with (status, headers, body) and records what it saw.

    `script`: answers given first, one per request, before `answer`. `keepalive`: speak
    HTTP/1.1 and keep connections open (else HTTP/1.0, one request per connection).
    `ports`: the client port of each request (one port = one reused connection).
    """

    daemon_threads = True

    def __init__(
        self,
        status: int = 200,
        ctype: str = "application/json",
        body: bytes = ENVELOPE,
        keepalive: bool = False,
    ):
        self.answer = (status, ctype, body)
        self.script: list[tuple[int, str, bytes]] = []
        self.keepalive = keepalive
        self.extra_headers: list[tuple[str, str]] = []
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.ports: list[int] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def root(self) -> str:
        scheme = "https" if isinstance(self.socket, ssl.SSLSocket) else "http"
        return f"{scheme}://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Canned

    def setup(self) -> None:
        super().setup()
        self.protocol_version = "HTTP/1.1" if self.server.keepalive else "HTTP/1.0"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.server.seen.append((self.requestline, {k.lower(): v for k, v in self.headers.items()}))
        self.server.ports.append(self.client_address[1])
        script = self.server.script
        status, ctype, body = script.pop(0) if script else self.server.answer
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-Id", "rid-1")
        for k, v in self.server.extra_headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


def _serve(srv: Canned) -> Iterator[Canned]:
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


@pytest.fixture
def canned() -> Iterator[Canned]:
    yield from _serve(Canned())


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(ca: trustme.CA) -> Iterator[Canned]:
    srv = Canned()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    yield from _serve(srv)


class Blackhole:
    """Accepts connections and never answers; counts them exactly once stopped."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            select.select([self.sock], [], [], 0.05)
            while True:
                try:
                    conn, _ = self.sock.accept()
                except BlockingIOError:
                    break
                self.conns.append(conn)
            if stopping:
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        for c in self.conns:
            c.close()
        self.sock.close()
        return len(self.conns)


def test_untrusted_certificate_is_network_error(tls_server: Canned) -> None:
    c = Commute("app", root=tls_server.root, access_token="tok", timeout=5.0)
    with pytest.raises(NetworkError) as ei:
        c.devices()
    assert not isinstance(ei.value, OperationTimeout)
    assert ei.value.code == "tls"
    assert "CERTIFICATE_VERIFY_FAILED" in str(ei.value)
    assert tls_server.seen == []  # nothing was sent over the untrusted connection


def test_trusted_ca_file_and_context_work(tls_server: Canned, ca: trustme.CA) -> None:
    with ca.cert_pem.tempfile() as path:
        c = Commute("app", root=tls_server.root, access_token="tok", ca_certs=path)
        assert c.devices() == [{"id": "d1"}]
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    c2 = Commute("app", root=tls_server.root, access_token="tok", ssl_context=ctx)
    assert c2.devices() == [{"id": "d1"}]


def test_hostname_is_checked(ca: trustme.CA) -> None:
    srv = Canned()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("api.example").configure_cert(ctx)  # not 127.0.0.1
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    for s in _serve(srv):
        with ca.cert_pem.tempfile() as path:
            c = Commute("app", root=s.root, access_token="tok", ca_certs=path)
            with pytest.raises(NetworkError) as ei:
                c.devices()
        assert ei.value.code == "tls"


def test_verify_false_works_and_warns(tls_server: Canned, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="iotcommute.rest"):
        c = Commute("app", root=tls_server.root, access_token="tok", verify=False)
    assert any("verification is OFF" in r.getMessage() for r in caplog.records)
    assert c.devices() == [{"id": "d1"}]


def test_read_timeout_get_retried_post_not() -> None:
    hole = Blackhole()
    try:
        c = Commute(
            "app", root=f"http://127.0.0.1:{hole.port}", access_token="t", timeout=0.3, retries=2
        )
        with pytest.raises(OperationTimeout) as ei:
            c.devices()
        assert ei.value.code == "timeout" and isinstance(ei.value, NetworkError)
    finally:
        gets = hole.stop()
    assert gets == 3  # first try + 2 retries (GET is idempotent)

    hole = Blackhole()
    try:
        c = Commute(
            "app", root=f"http://127.0.0.1:{hole.port}", access_token="t", timeout=0.3, retries=2
        )
        with pytest.raises(OperationTimeout) as ei2:
            c.generate_session("rt", "secret")
        assert str(ei2.value) == "timed out (POST /session/token)"
        with pytest.raises(OperationTimeout):
            c.invalidate_session()
    finally:
        posts = hole.stop()
    assert posts == 2  # one each: POST and DELETE are never re-sent


def test_connection_refused_is_network_error() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    c = Commute("app", root=f"http://127.0.0.1:{port}", access_token="t", retries=1)
    with pytest.raises(NetworkError) as ei:
        c.devices()
    assert type(ei.value) is NetworkError and ei.value.code == "connect"


def test_non_json_success_is_data_error(canned: Canned) -> None:
    canned.answer = (200, "text/html", b"<html>hello</html>")
    c = Commute("app", root=canned.root, access_token="t")
    with pytest.raises(DataError) as ei:
        c.devices()
    assert ei.value.status == 200 and ei.value.request_id == "rid-1"
    canned.answer = (200, "application/json", b'{"no": "envelope"}')
    with pytest.raises(DataError):
        c.devices()
    canned.answer = (200, "application/json", b'{"status": "success", "data": {"x": 1}}')
    with pytest.raises(DataError):
        c.devices()  # a device list must be a list


def test_5xx_without_json_is_server_error(canned: Canned) -> None:
    canned.answer = (502, "text/html", b"<h1>Bad gateway</h1>")
    c = Commute("app", root=canned.root, access_token="t", retries=0)
    with pytest.raises(ServerError) as ei:
        c.devices()
    assert ei.value.status == 502 and ei.value.request_id == "rid-1"
    assert len(canned.seen) == 1


def test_503_get_is_retried(canned: Canned) -> None:
    canned.answer = (
        503,
        "application/json",
        b'{"status":"error","error_type":"ServerError","message":"busy"}',
    )
    c = Commute("app", root=canned.root, access_token="t", retries=2)
    with pytest.raises(ServerError) as ei:
        c.devices()
    assert ei.value.message == "busy" and ei.value.status == 503
    assert len(canned.seen) == 3


def test_redirect_is_not_followed(canned: Canned) -> None:
    canned.answer = (302, "text/html", b"")
    canned.extra_headers = [("Location", "http://127.0.0.1:9/steal")]
    c = Commute("app", root=canned.root, access_token="t")
    with pytest.raises(DataError) as ei:
        c.devices()
    assert ei.value.status == 302
    assert len(canned.seen) == 1


def test_root_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IOTCOMMUTE_API_URL", raising=False)
    monkeypatch.setenv("IOTCOMMUTE_URL", "wss://iot.example:9443/v1/stream")
    assert Commute("app").root == "https://iot.example:9443"
    monkeypatch.setenv("IOTCOMMUTE_URL", "ws://127.0.0.1:8765")
    assert Commute("app").root == "http://127.0.0.1:8765"
    monkeypatch.setenv("IOTCOMMUTE_API_URL", "http://api.example:1/")
    assert Commute("app").root == "http://api.example:1"
    assert Commute("app", root="https://x.example").root == "https://x.example"
