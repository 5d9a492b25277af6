"""Where and how to open the byte stream: URL, HTTP CONNECT proxy (the one proxy
implementation of the client), TLS, and the typed errors of a failed attempt.

`open_stream()` returns an asyncio transport already attached to the caller's protocol; the
engine then speaks WebSocket over it. Nothing here knows about WebSocket or IOT commute.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl as ssl_module
from base64 import b64encode
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

from ..exceptions import NetworkError, OperationTimeout

__all__ = ["DEFAULT_PATH", "Target", "default_ssl_context", "open_stream", "parse_proxy"]

DEFAULT_PATH = "/v1/stream"


class Target:
    """A parsed ws:// or wss:// URL (ValueError for anything else; never credentials)."""

    __slots__ = ("host", "host_header", "path", "port", "secure")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError("url must start with ws:// or wss://")
        if parts.username or parts.password:
            raise ValueError("credentials do not belong in the url; use the key arguments")
        self.secure = parts.scheme == "wss"
        host = parts.hostname
        if not host:
            raise ValueError("url has no host")
        self.host = host
        self.port = parts.port or (443 if self.secure else 80)
        path = parts.path if parts.path not in ("", "/") else DEFAULT_PATH
        self.path = f"{path}?{parts.query}" if parts.query else path
        netloc = f"[{host}]" if ":" in host else host
        default = self.port == (443 if self.secure else 80)
        self.host_header = netloc if default else f"{netloc}:{self.port}"

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_proxy(url: str) -> tuple[str, int, str | None]:
    """(host, port, Proxy-Authorization value or None) of an http:// CONNECT proxy URL."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError("proxy must be an http://host:port URL (HTTP CONNECT)")
    auth = None
    if parts.username is not None:
        cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + b64encode(cred.encode()).decode("ascii")
    return parts.hostname, parts.port or 8080, auth


def default_ssl_context() -> ssl_module.SSLContext:
    """Verifying context (certifi's CA bundle when installed, else the system store)."""
    try:
        import certifi

        return ssl_module.create_default_context(cafile=certifi.where())
    except ImportError:  # pragma: no cover - certifi is a dependency
        return ssl_module.create_default_context()


class _ConnectReply(asyncio.Protocol):
    """Collects the proxy's answer to CONNECT (the head only; nothing follows it)."""

    def __init__(self, done: asyncio.Future[bytes]) -> None:
        self._buf = bytearray()
        self._done = done

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if b"\r\n\r\n" in self._buf and not self._done.done():
            self._done.set_result(bytes(self._buf))
        elif len(self._buf) > 16384 and not self._done.done():
            self._done.set_exception(NetworkError("proxy answer too long"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_exception(NetworkError("proxy closed the connection"))


async def open_stream(
    factory: Callable[[], asyncio.BaseProtocol],
    target: Target,
    ssl: ssl_module.SSLContext | None,
    proxy: str | None,
    timeout: float,
) -> asyncio.Transport:
    """A connected transport (through the proxy, TLS end to end with the server).

    Raises NetworkError (DNS, refused, TLS; certificate errors are fatal: a wrong
    certificate does not fix itself) or OperationTimeout after `timeout` seconds.
    """
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            if proxy is None:
                transport, _ = await loop.create_connection(
                    factory,
                    target.host,
                    target.port,
                    ssl=ssl,
                    server_hostname=target.host if ssl is not None else None,
                )
                return transport
            return await _via_proxy(loop, factory, target, ssl, proxy)
    except ssl_module.SSLCertVerificationError as exc:
        err = NetworkError(f"TLS certificate verification failed: {exc.verify_message}")
        err.fatal = True
        raise err from None
    except ssl_module.SSLError as exc:
        raise NetworkError(f"TLS handshake with {target} failed: {exc.reason}") from None
    except TimeoutError:
        raise OperationTimeout(f"connect to {target} timed out after {timeout}s") from None
    except socket.gaierror as exc:
        raise NetworkError(f"cannot resolve {target.host}: {exc.strerror}") from None
    except OSError as exc:
        # asyncio words a refused connect "Connect call failed (...)": the errno's own
        # text reads the same on every loop ("Connection refused")
        why = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
        raise NetworkError(f"cannot connect to {target}: {why}") from None


async def _via_proxy(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], asyncio.BaseProtocol],
    target: Target,
    ssl: ssl_module.SSLContext | None,
    proxy: str,
) -> asyncio.Transport:
    phost, pport, auth = parse_proxy(proxy)
    reply: asyncio.Future[bytes] = loop.create_future()
    try:
        raw, _ = await loop.create_connection(lambda: _ConnectReply(reply), phost, pport)
    except OSError as exc:
        raise NetworkError(f"cannot connect to the proxy {phost}:{pport}: {exc}") from None
    host = f"[{target.host}]" if ":" in target.host else target.host
    head = f"CONNECT {host}:{target.port} HTTP/1.1\r\nHost: {host}:{target.port}\r\n"
    if auth is not None:
        head += f"Proxy-Authorization: {auth}\r\n"
    raw.write((head + "\r\n").encode("latin-1"))
    try:
        answer = await reply
    except BaseException:
        raw.abort()
        raise
    status_line = answer.split(b"\r\n", 1)[0].decode("latin-1", "replace")
    parts = status_line.split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    if status != 200 or answer.index(b"\r\n\r\n") + 4 != len(answer):
        raw.abort()
        err = NetworkError(f"proxy refused the tunnel: {status_line[:100]}", status=status)
        err.fatal = status == 407  # wrong proxy credentials: retrying cannot help
        raise err
    stream = factory()
    if ssl is not None:
        tls = await loop.start_tls(raw, stream, ssl, server_hostname=target.host)
        if tls is None:  # pragma: no cover - only when the transport closed meanwhile
            raise NetworkError("proxy tunnel closed during the TLS handshake")
        stream.connection_made(tls)
        return tls
    raw.set_protocol(stream)
    stream.connection_made(raw)
    return raw
