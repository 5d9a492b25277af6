"""Commute: the REST client (login flow, devices, history, commands).

    from iotcommute import Commute
    api = Commute("demo-app")
    print(api.login_url())                     # the user logs in there, you get a request_token
    api.generate_session(request_token, api_secret="...")   # the secret never leaves this process
    for dev in api.devices():
        print(dev["id"], api.history(dev["id"], limit=5))

HTTP goes through urllib3: connection pooling, separate connect/read timeouts, certificate
verification (certifi or system CAs), proxies and a Retry policy that we restrict to idempotent
GETs. Every failure is raised as an `iotcommute.exceptions` class; keys, secrets and tokens never
appear in messages, reprs or logs.

`AsyncCommute` is the asyncio twin: the same calls (awaitable), over asyncio streams with h11
(already a dependency) instead of urllib3. Both clients build each call as a `_Call` and decode
the answer with the same code; only the transport differs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import h11
import urllib3
from urllib3.exceptions import (
    HTTPError as _U3HTTPError,
)
from urllib3.exceptions import (
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    SSLError,
)
from urllib3.exceptions import (
    TimeoutError as _U3Timeout,
)
from urllib3.util import Retry, Timeout, make_headers

from . import __version__
from .exceptions import (
    CommandError,
    DataError,
    InputError,
    IotCommuteError,
    NetworkError,
    NotFoundError,
    OperationTimeout,
    PermissionDenied,
    RateLimitError,
    ServerError,
    SessionExpiredError,
    TokenError,
)

__all__ = ["AsyncCommute", "Commute", "checksum"]

log = logging.getLogger("iotcommute.rest")

try:
    from .payload import loads as _loads
except ImportError:  # pragma: no cover - only before/without the payload module

    def _loads(buf: bytes | bytearray | memoryview | str) -> Any:
        return json.loads(bytes(buf) if isinstance(buf, memoryview) else buf)


API_VERSION = "1"
USER_AGENT = f"iotcommute-python/{__version__}"
_IDEMPOTENT = frozenset({"GET", "HEAD"})
# Headroom over a command's own timeout so the server's 504 arrives before our read timeout.
_COMMAND_MARGIN = 5.0
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: A server must not stall a caller for minutes with Retry-After.
MAX_RETRY_AFTER = 10.0
_BACKOFF = 0.2
_BACKOFF_MAX = 5.0
#: Largest response body AsyncCommute accepts (a full history page is well under 1 MiB).
MAX_RESPONSE = 16 * 2**20


def _retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Retry-After in seconds when it is a number (the only form our server sends)."""
    for name, value in headers.items():
        if name.lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None


def checksum(api_key: str, request_token: str, api_secret: str) -> str:
    """sha256(api_key + request_token + api_secret), hex: what POST /session/token expects."""
    return hashlib.sha256((api_key + request_token + api_secret).encode()).hexdigest()


def _default_root() -> str:
    """IOTCOMMUTE_API_URL, else the http(s) twin of IOTCOMMUTE_URL (ws->http, wss->https)."""
    root = os.environ.get("IOTCOMMUTE_API_URL")
    if root:
        return root
    from ._env import DEFAULT_URL

    ws = os.environ.get("IOTCOMMUTE_URL") or DEFAULT_URL
    parts = urlsplit(ws)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme or "http")
    return urlunsplit((scheme, parts.netloc, "", "", ""))


# Status -> class when the body says nothing more specific.
_STATUS_CLASSES: dict[int, type[IotCommuteError]] = {
    400: InputError,
    401: TokenError,
    403: PermissionDenied,
    404: NotFoundError,
    405: InputError,
    409: CommandError,
    413: InputError,
    422: InputError,
    429: RateLimitError,
}
# error_type from the server body -> (class, code)
_TYPE_CLASSES: dict[str, tuple[type[IotCommuteError], str]] = {
    "SessionExpired": (SessionExpiredError, "session_expired"),
    "DeviceOffline": (CommandError, "device_offline"),
    "CommandTimeout": (CommandError, "command_timeout"),
    "RateLimited": (RateLimitError, "rate"),
}


class _Retry(Retry):
    """Retry whose Retry-After wait is capped (MAX_RETRY_AFTER)."""

    def get_retry_after(self, response: urllib3.BaseHTTPResponse) -> float | None:
        wait = super().get_retry_after(response)
        return None if wait is None else min(wait, MAX_RETRY_AFTER)


def _identity(value: Any) -> Any:
    return value


@dataclass
class _Call:
    """One API call, independent of the transport that carries it."""

    method: str
    path: str
    query: Mapping[str, Any] | None = None
    body: bytes | None = None
    content_type: str | None = None
    auth: bool = True
    envelope: bool = False  # return the whole success document, not just "data"
    read_timeout: float | None = None
    hook: bool = True  # call on_session_expired on SessionExpired
    check: Callable[[Any], Any] = _identity  # validates/converts the decoded result

    @property
    def target(self) -> str:
        return self.path + (f"?{urlencode(self.query)}" if self.query else "")


def _need(kind: type, what: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not isinstance(value, kind):
            raise DataError(f"{what} is not a JSON {kind.__name__}")
        return value

    return check


def _check_history(env: Any) -> dict[str, Any]:
    ticks, nxt = env.get("data"), env.get("next", False)
    if not isinstance(ticks, list) or not (nxt is None or isinstance(nxt, int)):
        raise DataError("history response has no data list / next position")
    page = dict(env)
    page.pop("status", None)
    return page


def _next_cursor(device_id: str, page: dict[str, Any], cursor: int | None) -> int | None:
    """Where the next history page starts (None: done); warns about trimmed records."""
    gap = page.get("gap")
    if gap:
        log.warning("history of %s: %s records were trimmed", device_id, gap.get("missed"))
    nxt: int | None = page["next"]
    if nxt is not None and cursor is not None and nxt <= cursor:
        raise DataError("history paging did not advance")
    return nxt


class _ClientBase:
    """What both clients share: options, login URL, building calls, decoding answers."""

    def __init__(
        self,
        api_key: str,
        *,
        root: str | None,
        access_token: str | None,
        timeout: float | tuple[float, float],
        retries: int,
        on_session_expired: Callable[[], Any] | None,
    ) -> None:
        if not api_key:
            raise InputError("missing required argument: api_key")
        self.api_key = api_key
        self.access_token = access_token
        self.root = (root or _default_root()).rstrip("/")
        if urlsplit(self.root).scheme not in ("http", "https"):
            raise InputError("root must be an http:// or https:// URL")
        connect_t, read_t = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        self.connect_timeout = float(connect_t)
        self.read_timeout = float(read_t)
        self.retries = retries
        self.on_session_expired = on_session_expired

    def __repr__(self) -> str:
        logged_in = "yes" if self.access_token else "no"
        return f"{type(self).__name__}(root={self.root!r}, session={logged_in})"

    def login_url(self, redirect_url: str | None = None) -> str:
        """The login page; it redirects back with ?request_token=...&status=success."""
        params = {"api_key": self.api_key, "v": API_VERSION}
        if redirect_url:
            params["redirect"] = redirect_url
        return f"{self.root}/connect/login?{urlencode(params)}"

    def set_access_token(self, access_token: str | None) -> None:
        self.access_token = access_token

    # ------------------------------------------------------------------ calls

    def _c_generate_session(self, request_token: str, api_secret: str) -> _Call:
        body = urlencode(
            {
                "api_key": self.api_key,
                "request_token": request_token,
                "checksum": checksum(self.api_key, request_token, api_secret),
            }
        ).encode()

        def check(data: Any) -> dict[str, Any]:
            if not isinstance(data, dict) or not isinstance(data.get("access_token"), str):
                raise DataError("session response has no access_token")
            self.set_access_token(data["access_token"])
            return data

        return _Call(
            "POST",
            "/session/token",
            body=body,
            content_type="application/x-www-form-urlencoded",
            auth=False,
            check=check,
        )

    def _c_history(self, device_id: str, since: int | None, limit: int) -> _Call:
        query: dict[str, Any] = {"limit": limit}
        if since is not None:
            query["since"] = since
        path = f"/devices/{_seg(device_id)}/history"
        return _Call("GET", path, query=query, envelope=True, check=_check_history)

    def _c_command(self, device_id: str, data: Any, timeout: float) -> _Call:
        return _Call(
            "POST",
            f"/devices/{_seg(device_id)}/commands",
            body=json.dumps({"data": data, "timeout": timeout}).encode(),
            content_type="application/json",
            read_timeout=max(self.read_timeout, timeout + _COMMAND_MARGIN),
            check=_need(dict, "command ack"),
        )

    def _headers(self, call: _Call) -> dict[str, str]:
        headers = {
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
            "X-Iotcommute-Version": API_VERSION,
        }
        if call.content_type:
            headers["Content-Type"] = call.content_type
        if call.auth:
            if not self.access_token:
                raise TokenError("not logged in; call generate_session() or set_access_token()")
            headers["Authorization"] = f"token {self.api_key}:{self.access_token}"
        return headers

    # ------------------------------------------------------------------ answers

    def _finish(self, call: _Call, status: int, headers: Mapping[str, str], data: bytes) -> Any:
        rid = headers.get("X-Request-Id") or headers.get("x-request-id")
        log.debug("%s %s -> %d [%s]", call.method, call.path, status, rid)  # no query
        ctype = headers.get("Content-Type") or headers.get("content-type") or ""
        payload: Any = None
        if "json" in ctype:
            try:
                payload = _loads(data)
            except Exception:
                payload = None
        if 200 <= status < 300:
            if not isinstance(payload, dict) or payload.get("status") != "success":
                raise DataError(
                    "unexpected response body (not a JSON success envelope)",
                    status=status,
                    request_id=rid,
                )
            return call.check(payload if call.envelope else payload.get("data"))
        raise self._error(status, payload, rid, headers, call.hook)

    def _error(
        self, status: int, payload: Any, rid: str | None, headers: Mapping[str, str], hook: bool
    ) -> IotCommuteError:
        etype = message = None
        if isinstance(payload, dict) and payload.get("status") == "error":
            etype = payload.get("error_type")
            message = payload.get("message")
        if not isinstance(message, str):
            message = f"HTTP {status} without an error body"
        cls: type[IotCommuteError]
        code: str | None = None
        if isinstance(etype, str) and etype in _TYPE_CLASSES:
            cls, code = _TYPE_CLASSES[etype]
        elif status in _STATUS_CLASSES:
            cls = _STATUS_CLASSES[status]
            code = "rate" if status == 429 else None
        elif status >= 500:
            cls = ServerError
        elif 300 <= status < 400:
            cls, message = DataError, f"unexpected redirect (HTTP {status})"
        elif payload is None:
            cls = DataError
        else:
            cls = InputError
        hdrs = dict(headers.items())
        err = cls(message, code=code, status=status, request_id=rid, headers=hdrs)
        if isinstance(err, RateLimitError):
            err.retry_after = _retry_after_seconds(hdrs)
        if hook and isinstance(err, SessionExpiredError) and self.on_session_expired is not None:
            try:
                self.on_session_expired()
            except Exception:
                log.exception("on_session_expired hook failed")
        return err


class Commute(_ClientBase):
    """Blocking REST client; thread-safe (urllib3's pool is), reusable, closable.

    root: API base URL; default IOTCOMMUTE_API_URL, else derived from IOTCOMMUTE_URL.
    timeout: seconds for connect and for each socket read; a float or (connect, read).
    verify / ssl_context / ca_certs: certificate checks are on by default (certifi's CAs);
        pass ca_certs (a PEM path) or a ready ssl_context for private CAs. verify=False is
        possible but logged as a warning.
    proxy: "http://[user:pass@]host:port"; credentials become a Proxy-Authorization header.
    retries: attempts for idempotent GETs on connect errors, read errors and 429/502/503/504
        (Retry-After honoured up to MAX_RETRY_AFTER). POST and DELETE are never re-sent.
    on_session_expired: called (no arguments) when the server says the session expired,
        before SessionExpiredError is raised.
    """

    def __init__(
        self,
        api_key: str,
        *,
        root: str | None = None,
        access_token: str | None = None,
        timeout: float | tuple[float, float] = 7.0,
        verify: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        ca_certs: str | None = None,
        proxy: str | None = None,
        pool_size: int = 4,
        retries: int = 2,
        on_session_expired: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__(
            api_key,
            root=root,
            access_token=access_token,
            timeout=timeout,
            retries=retries,
            on_session_expired=on_session_expired,
        )
        self._retry_get = _Retry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            other=0,  # TLS/certificate failures do not heal by retrying
            redirect=0,
            allowed_methods=_IDEMPOTENT,
            status_forcelist=_RETRY_STATUSES,
            backoff_factor=_BACKOFF,
            backoff_max=_BACKOFF_MAX,
            raise_on_status=False,
            raise_on_redirect=False,
            respect_retry_after_header=True,
        )
        self._retry_none = Retry(
            total=0, redirect=0, raise_on_status=False, raise_on_redirect=False
        )
        pool_kw: dict[str, Any] = {"maxsize": pool_size, "block": False}
        if urlsplit(self.root).scheme == "https":
            if ssl_context is not None:
                pool_kw["ssl_context"] = ssl_context
            elif not verify:
                log.warning("TLS certificate verification is OFF for %s", self.root)
                pool_kw["cert_reqs"] = "CERT_NONE"
            else:
                pool_kw["cert_reqs"] = "CERT_REQUIRED"
                pool_kw["ca_certs"] = ca_certs or _certifi_where()
        self._http: urllib3.PoolManager
        if proxy:
            pparts = urlsplit(proxy)
            proxy_headers: dict[str, str] = {}
            if pparts.username is not None:
                auth = f"{pparts.username}:{pparts.password or ''}"
                proxy_headers = make_headers(proxy_basic_auth=auth)
                netloc = pparts.hostname or ""
                if pparts.port:
                    netloc += f":{pparts.port}"
                proxy = urlunsplit(pparts._replace(netloc=netloc))
            self._http = urllib3.ProxyManager(proxy, proxy_headers=proxy_headers, **pool_kw)
        else:
            self._http = urllib3.PoolManager(**pool_kw)

    def close(self) -> None:
        """Close pooled connections (the client may still be used; it reconnects)."""
        self._http.clear()

    def __enter__(self) -> Commute:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ API

    def generate_session(self, request_token: str, api_secret: str) -> dict[str, Any]:
        """Exchange a request token for an access token (stored on the client and returned)."""
        result: dict[str, Any] = self._send(self._c_generate_session(request_token, api_secret))
        return result

    def invalidate_session(self) -> bool:
        """Log the session out on the server and forget the token.

        A session the server no longer knows (expired, logged out) counts as done.
        """
        if not self.access_token:
            return True
        try:
            self._send(_Call("DELETE", "/session/token", hook=False))
        except TokenError:
            pass  # expired or already logged out: the goal is reached
        finally:
            self.access_token = None
        return True

    def devices(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._send(
            _Call("GET", "/devices", check=_need(list, "device list"))
        )
        return result

    def device(self, device_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._send(
            _Call("GET", f"/devices/{_seg(device_id)}", check=_need(dict, "device"))
        )
        return result

    def history(
        self, device_id: str, since: int | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Ticks with position > since (oldest first), at most `limit` of them."""
        ticks: list[dict[str, Any]] = self.history_page(device_id, since, limit)["data"]
        return ticks

    def history_page(
        self, device_id: str, since: int | None = None, limit: int = 100
    ) -> dict[str, Any]:
        """One raw page: {"data": [ticks], "next": position | None, "gap"?: {...}}.

        "gap" is present when records after `since` were already trimmed from the server's
        capped log (same fields as the WebSocket gap message).
        """
        page: dict[str, Any] = self._send(self._c_history(device_id, since, limit))
        return page

    def iter_history(
        self, device_id: str, since: int | None = None, page_size: int = 500
    ) -> Iterator[dict[str, Any]]:
        """Every retained tick of the device after `since`, fetched page by page."""
        cursor = since
        while True:
            page = self.history_page(device_id, cursor, page_size)
            yield from page["data"]
            cursor = _next_cursor(device_id, page, cursor)
            if cursor is None:
                return

    def send_command(self, device_id: str, data: Any, timeout: float = 10.0) -> dict[str, Any]:
        """Send a command through the server and wait for the device's ack dict.

        The ack is returned as the device sent it (`ok` may be False: the device refused).
        An offline device or no ack in time raises CommandError.
        """
        ack: dict[str, Any] = self._send(self._c_command(device_id, data, timeout))
        return ack

    # ------------------------------------------------------------------ transport

    def _send(self, call: _Call) -> Any:
        headers = self._headers(call)
        retries = self._retry_get if call.method in _IDEMPOTENT else self._retry_none
        timeout = Timeout(connect=self.connect_timeout, read=call.read_timeout or self.read_timeout)
        try:
            resp = self._http.request(
                call.method,
                self.root + call.target,
                body=call.body,
                headers=headers,
                timeout=timeout,
                retries=retries,
                redirect=False,
            )
        except MaxRetryError as exc:
            raise _network_error(exc.reason or exc, call.method, call.path) from None
        except _U3HTTPError as exc:
            raise _network_error(exc, call.method, call.path) from None
        return self._finish(call, resp.status, resp.headers, resp.data)


class _Conn:
    """One keep-alive HTTP/1.1 connection: h11 state over asyncio streams."""

    __slots__ = ("h11", "loop", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.h11 = h11.Connection(h11.CLIENT)
        self.reader = reader
        self.writer = writer
        self.loop = asyncio.get_running_loop()

    def close(self) -> None:
        self.writer.close()


class _Stale(Exception):
    """A reused keep-alive connection was closed by the server before it answered."""


class AsyncCommute(_ClientBase):
    """asyncio twin of Commute: the same calls, awaitable, the same errors.

    HTTP/1.1 over asyncio streams with h11: keep-alive connections (up to pool_size idle),
    connect and per-read timeouts, certificate verification (certifi's CAs by default,
    ca_certs / ssl_context / verify=False as in Commute), retries for GETs only (connect and
    read failures, 429/502/503/504 with Retry-After up to MAX_RETRY_AFTER). No proxy support:
    use Commute behind a proxy. Use it from one event loop at a time.
    """

    def __init__(
        self,
        api_key: str,
        *,
        root: str | None = None,
        access_token: str | None = None,
        timeout: float | tuple[float, float] = 7.0,
        verify: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        ca_certs: str | None = None,
        pool_size: int = 4,
        retries: int = 2,
        on_session_expired: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__(
            api_key,
            root=root,
            access_token=access_token,
            timeout=timeout,
            retries=retries,
            on_session_expired=on_session_expired,
        )
        parts = urlsplit(self.root)
        https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if https else 80)
        self._host_header = self._host if parts.port is None else f"{self._host}:{parts.port}"
        if ":" in self._host:  # IPv6 literal
            self._host_header = f"[{self._host}]" + (f":{parts.port}" if parts.port else "")
        self._ssl: ssl.SSLContext | None = None
        if https:
            if ssl_context is not None:
                self._ssl = ssl_context
            elif not verify:
                log.warning("TLS certificate verification is OFF for %s", self.root)
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                self._ssl = ctx
            else:
                self._ssl = ssl.create_default_context(cafile=ca_certs or _certifi_where())
        self._pool_size = pool_size
        self._idle: list[_Conn] = []

    async def aclose(self) -> None:
        """Close idle connections (the client may still be used; it reconnects)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    async def __aenter__(self) -> AsyncCommute:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ API

    async def generate_session(self, request_token: str, api_secret: str) -> dict[str, Any]:
        """Exchange a request token for an access token (stored on the client and returned)."""
        result: dict[str, Any] = await self._send(
            self._c_generate_session(request_token, api_secret)
        )
        return result

    async def invalidate_session(self) -> bool:
        """Log the session out; a session the server no longer knows counts as done."""
        if not self.access_token:
            return True
        try:
            await self._send(_Call("DELETE", "/session/token", hook=False))
        except TokenError:
            pass
        finally:
            self.access_token = None
        return True

    async def devices(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._send(
            _Call("GET", "/devices", check=_need(list, "device list"))
        )
        return result

    async def device(self, device_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._send(
            _Call("GET", f"/devices/{_seg(device_id)}", check=_need(dict, "device"))
        )
        return result

    async def history(
        self, device_id: str, since: int | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Ticks with position > since (oldest first), at most `limit` of them."""
        page = await self.history_page(device_id, since, limit)
        ticks: list[dict[str, Any]] = page["data"]
        return ticks

    async def history_page(
        self, device_id: str, since: int | None = None, limit: int = 100
    ) -> dict[str, Any]:
        """One raw page: {"data": [ticks], "next": position | None, "gap"?: {...}}."""
        page: dict[str, Any] = await self._send(self._c_history(device_id, since, limit))
        return page

    async def iter_history(
        self, device_id: str, since: int | None = None, page_size: int = 500
    ) -> AsyncIterator[dict[str, Any]]:
        """Every retained tick of the device after `since`, fetched page by page."""
        cursor = since
        while True:
            page = await self.history_page(device_id, cursor, page_size)
            for tick in page["data"]:
                yield tick
            cursor = _next_cursor(device_id, page, cursor)
            if cursor is None:
                return

    async def send_command(
        self, device_id: str, data: Any, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Send a command and wait for the device's ack dict (see Commute.send_command)."""
        ack: dict[str, Any] = await self._send(self._c_command(device_id, data, timeout))
        return ack

    # ------------------------------------------------------------------ transport

    async def _send(self, call: _Call) -> Any:
        headers = self._headers(call)
        idempotent = call.method in _IDEMPOTENT
        attempts = 1 + (max(0, self.retries) if idempotent else 0)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                status, hdrs, data = await self._roundtrip(call, headers, idempotent)
            except NetworkError as exc:
                if last or exc.code == "tls":
                    raise
                log.debug("retrying %s %s after %s", call.method, call.path, exc.code)
                await asyncio.sleep(_backoff(attempt, None))
                continue
            if status in _RETRY_STATUSES and not last:
                await asyncio.sleep(_backoff(attempt, hdrs.get("retry-after")))
                continue
            return self._finish(call, status, hdrs, data)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _roundtrip(
        self, call: _Call, headers: dict[str, str], idempotent: bool
    ) -> tuple[int, dict[str, str], bytes]:
        # Only idempotent calls ride a reused connection: if the server had closed it, they
        # can be re-sent on a fresh one without doubt about what the server did.
        loop = asyncio.get_running_loop()
        while idempotent and self._idle:
            conn = self._idle.pop()
            if conn.loop is not loop or conn.h11.our_state is not h11.IDLE:
                conn.close()
                continue
            try:
                return await self._exchange(conn, call, headers, reused=True)
            except _Stale:
                break
        conn = await self._connect(call)
        try:
            return await self._exchange(conn, call, headers, reused=False)
        except _Stale:  # pragma: no cover - _exchange raises _Stale only when reused
            raise NetworkError(f"connection broken ({call.method} {call.path})") from None

    async def _connect(self, call: _Call) -> _Conn:
        where = f"({call.method} {call.path})"
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
        except ssl.SSLError as exc:
            raise NetworkError(f"TLS failure, {_reason(exc)} {where}", code="tls") from None
        except ssl.CertificateError:  # pragma: no cover - SSLCertVerificationError is an SSLError
            raise NetworkError(f"TLS failure {where}", code="tls") from None
        except TimeoutError:
            raise OperationTimeout(f"timed out {where}", code="timeout") from None
        except OSError:
            raise NetworkError(f"cannot connect {where}", code="connect") from None
        return _Conn(reader, writer)

    async def _exchange(
        self, conn: _Conn, call: _Call, headers: dict[str, str], reused: bool
    ) -> tuple[int, dict[str, str], bytes]:
        where = f"({call.method} {call.path})"
        h = conn.h11
        body = call.body or b""
        req_headers = [("Host", self._host_header), *headers.items()]
        if call.body is not None or call.method not in _IDEMPOTENT:
            req_headers.append(("Content-Length", str(len(body))))
        read_timeout = call.read_timeout or self.read_timeout
        got_any = False
        try:
            out = h.send(h11.Request(method=call.method, target=call.target, headers=req_headers))
            if body:
                out = (out or b"") + (h.send(h11.Data(data=body)) or b"")
            out = (out or b"") + (h.send(h11.EndOfMessage()) or b"")
            conn.writer.write(out)
            async with asyncio.timeout(read_timeout):
                await conn.writer.drain()
            status = 0
            hdrs: dict[str, str] = {}
            chunks: list[bytes] = []
            size = 0
            while True:
                ev = h.next_event()
                if ev is h11.NEED_DATA:
                    async with asyncio.timeout(read_timeout):
                        chunk = await conn.reader.read(65536)
                    if not chunk and not got_any and reused:
                        raise _Stale
                    got_any = got_any or bool(chunk)
                    h.receive_data(chunk)
                elif isinstance(ev, h11.Response):
                    status = ev.status_code
                    hdrs = {k.decode("latin-1"): v.decode("latin-1") for k, v in ev.headers}
                elif isinstance(ev, h11.Data):
                    size += len(ev.data)
                    if size > MAX_RESPONSE:
                        raise DataError(f"response body too large {where}", status=status)
                    chunks.append(bytes(ev.data))
                elif isinstance(ev, h11.EndOfMessage):
                    break
                elif isinstance(ev, h11.ConnectionClosed):
                    raise NetworkError(f"connection broken {where}", code="network")
                # InformationalResponse (1xx): keep reading
        except _Stale:
            conn.close()
            raise
        except TimeoutError:
            conn.close()
            raise OperationTimeout(f"timed out {where}", code="timeout") from None
        except (ConnectionError, h11.ProtocolError, OSError):
            conn.close()
            if reused and not got_any:
                raise _Stale from None
            raise NetworkError(f"connection broken {where}", code="network") from None
        except BaseException:
            conn.close()
            raise
        if h.our_state is h11.DONE and h.their_state is h11.DONE:
            h.start_next_cycle()
            if len(self._idle) < self._pool_size:
                self._idle.append(conn)
            else:
                conn.close()
        else:
            conn.close()
        return status, hdrs, b"".join(chunks)


def _backoff(attempt: int, retry_after: str | None) -> float:
    """Seconds before retry number attempt+1: Retry-After (capped) or exponential + jitter."""
    if retry_after:
        try:
            wait = float(retry_after)
        except ValueError:
            try:
                wait = parsedate_to_datetime(retry_after).timestamp() - time.time()
            except (TypeError, ValueError):
                wait = 0.0
        return max(0.0, min(wait, MAX_RETRY_AFTER))
    base = min(_BACKOFF_MAX, _BACKOFF * 2.0**attempt)
    return base / 2 + random.uniform(0, base / 2)


def _seg(value: str) -> str:
    """One URL path segment (device ids are opaque strings)."""
    return quote(str(value), safe="")


def _certifi_where() -> str | None:
    try:
        import certifi
    except ImportError:  # pragma: no cover - certifi is a dependency; system CAs otherwise
        return None
    return str(certifi.where())


def _network_error(exc: BaseException, method: str, path: str) -> NetworkError:
    """urllib3 failures -> NetworkError / OperationTimeout; the message names the request
    (path only, no query) last, in parentheses, so redact() leaves it readable."""
    where = f"({method} {path})"
    if isinstance(exc, NewConnectionError):  # before timeouts: it subclasses ConnectTimeoutError
        return NetworkError(f"cannot connect {where}", code="connect")
    if isinstance(exc, _U3Timeout):
        return OperationTimeout(f"timed out {where}", code="timeout")
    if isinstance(exc, SSLError):
        return NetworkError(f"TLS failure, {_reason(exc)} {where}", code="tls")
    if isinstance(exc, ProxyError):
        return NetworkError(f"proxy failure {where}", code="proxy")
    if isinstance(exc, ProtocolError):
        return NetworkError(f"connection broken {where}", code="network")
    return NetworkError(f"{type(exc).__name__} {where}", code="network")


def _reason(exc: BaseException) -> str:
    # The innermost ssl error text (e.g. CERTIFICATE_VERIFY_FAILED) is useful and secret-free.
    inner: BaseException | None = exc
    for _ in range(8):
        if inner is None:
            break
        if isinstance(inner, ssl.SSLError):
            return str(getattr(inner, "reason", None) or type(inner).__name__)
        arg0 = inner.args[0] if inner.args else None
        inner = (
            inner.__cause__
            or inner.__context__
            or (arg0 if isinstance(arg0, BaseException) else None)
        )
    return "handshake failed"
