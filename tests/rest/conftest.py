"""Fixtures of the REST client's tests: canned servers, plain and TLS (tests/rest/servers.py)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import pytest
import trustme

from tests.rest.servers import Canned, serve


@pytest.fixture
def canned() -> Iterator[Canned]:
    yield from serve(Canned())


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(ca: trustme.CA) -> Iterator[Canned]:
    srv = Canned()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    yield from serve(srv)
