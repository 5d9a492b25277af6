"""TLS (wss://) with trustme certificates: verification is on by default and strict."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import trustme

from iotcommute import NetworkError, WebSocket
from iotcommute.server import ServerThread
from iotcommute.server.registry import README_DEVICE_ID, README_DEVICE_KEY, sim_device_id
from tests.client.test_client_support import CutProxy, wait_for, watch_subscribed

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_front(ca: trustme.CA) -> Iterator[CutProxy]:
    """The reference server behind a TLS-terminating proxy whose cert names only localhost."""
    srv = ServerThread(port=0).start()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    proxy = CutProxy(srv.port, ssl=server_ctx)
    proxy.srv = srv  # type: ignore[attr-defined]
    try:
        yield proxy
    finally:
        proxy.close()
        srv.stop()


def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def test_trusted_certificate_streams(tls_front: CutProxy, ca: trustme.CA) -> None:
    got: list[dict[str, Any]] = []
    opened = threading.Event()
    ws = WebSocket(
        README_DEVICE_KEY,
        README_DEVICE_ID,
        "device",
        url=f"wss://localhost:{tls_front.port}",
        ssl=client_ctx(ca),
    )
    ws.on_tick = lambda t, w: got.append(t)
    ws.on_connect = lambda w: opened.set()
    subscribed = watch_subscribed(ws)
    ws.connect(threaded=True)
    try:
        assert opened.wait(10) and subscribed.acquire(timeout=10)
        srv: ServerThread = tls_front.srv  # type: ignore[attr-defined]
        srv.call(lambda: srv.hub.log.append(sim_device_id(1), {"t": 1.0}))
        wait_for(lambda: len(got) == 1, what="a tick over TLS")
        assert got[0]["data"] == {"t": 1.0}
    finally:
        ws.stop()
        ws.join(10)


def _refused(url: str, ctx: ssl.SSLContext | None) -> NetworkError:
    reconnects: list[int] = []
    gave_up: list[bool] = []
    ws = WebSocket(
        README_DEVICE_KEY, README_DEVICE_ID, "device", url=url, ssl=ctx, max_reconnect_delay=0.01
    )
    ws.on_reconnect = lambda n, w: reconnects.append(n)
    ws.on_noreconnect = lambda w: gave_up.append(True)
    with pytest.raises(NetworkError) as info:
        ws.connect()
    # a certificate problem does not fix itself: one attempt, no retry storm
    assert reconnects == [] and gave_up == [True]
    assert "certificate" in str(info.value)
    return info.value


def test_untrusted_ca_refused_by_default(tls_front: CutProxy) -> None:
    _refused(f"wss://localhost:{tls_front.port}", None)  # ssl=None: default verifying context


def test_wrong_host_name_refused(tls_front: CutProxy, ca: trustme.CA) -> None:
    # the CA is trusted, but the certificate names "localhost", not 127.0.0.1
    _refused(f"wss://127.0.0.1:{tls_front.port}", client_ctx(ca))


def test_wss_through_http_connect_proxy(tls_front: CutProxy, ca: trustme.CA) -> None:
    from tests.proxy import Proxy

    proxy = Proxy()
    opened = threading.Event()
    ws = WebSocket(
        README_DEVICE_KEY,
        README_DEVICE_ID,
        "device",
        url=f"wss://localhost:{tls_front.port}",
        ssl=client_ctx(ca),
        proxy=f"http://127.0.0.1:{proxy.port}",
    )
    ws.on_connect = lambda w: opened.set()
    ws.connect(threaded=True)
    try:
        assert opened.wait(10), "no TLS connection through the proxy"
        assert proxy.seen[0][0].startswith(f"CONNECT localhost:{tls_front.port} ")
    finally:
        ws.stop()
        ws.join(10)
        proxy.close()
