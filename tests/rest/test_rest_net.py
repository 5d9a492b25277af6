"""Commute's transport failures against tiny local servers the reference server cannot play:
TLS trust, sockets that never answer, refused ports, odd bodies, redirects. (Proxies, and the
same failures for both clients: test_rest_parity.py.)"""

from __future__ import annotations

import logging
import socket
import ssl

import pytest
import trustme

from iotcommute.exceptions import DataError, NetworkError, OperationTimeout, ServerError
from iotcommute.rest import Commute
from tests.rest.servers import Blackhole, Canned, serve

pytestmark = pytest.mark.timeout(60)


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
    for s in serve(srv):
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
