"""What Commute and AsyncCommute share: options, the calls, answers and errors, retries.

A call is built once as a `_Call` (method, path, headers, body, how to check the result), the
client carries it over HTTP with httpx, and the answer is turned into a result or an
`iotcommute.exceptions` error here. The retry decisions of one call live in `_Attempts`, which
draws its delays from `retry_policy()`, the package's one backoff policy. The two clients only
send, read and sleep.

Keys, secrets and tokens never appear in messages, reprs or logs: messages name a call by its
method and path (never its query or headers), credentials in the root URL are dropped, the
proxy URL is never shown, and the login secret only ever leaves as a checksum.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import certifi
import httpx

from .. import __version__
from ..backoff import Backoff
from ..exceptions import (
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
    UnavailableError,
)
from ..payload import loads

log = logging.getLogger("iotcommute.rest")

T = TypeVar("T")

API_VERSION = "1"
USER_AGENT = f"iotcommute-python/{__version__}"
#: A server must not stall a caller for minutes with Retry-After.
MAX_RETRY_AFTER = 10.0
#: Largest response body accepted (a full history page is well under 1 MiB).
MAX_RESPONSE = 16 * 2**20
_IDEMPOTENT = frozenset({"GET", "HEAD"})
# Headroom over a command's own timeout so the server's 504 arrives before our read timeout.
_COMMAND_MARGIN = 5.0
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
# What a key or token may hold to travel in a header (no spaces, controls or non-ASCII).
_HEADER_TOKEN = re.compile(r"[\x21-\x7e]+")


def checksum(api_key: str, request_token: str, api_secret: str) -> str:
    """sha256(api_key + request_token + api_secret), hex: what POST /session/token expects."""
    return hashlib.sha256((api_key + request_token + api_secret).encode()).hexdigest()


def retry_policy(retries: int) -> Backoff:
    """The delays between the attempts of one request: the package's backoff policy
    (exponential, full jitter) from 0.2 s doubling up to 5 s, for at most `retries` retries."""
    return Backoff(initial=0.2, max_delay=5.0, max_retries=max(0, retries))


def _default_root() -> str:
    """IOTCOMMUTE_API_URL, else the http(s) twin of IOTCOMMUTE_URL (ws->http, wss->https)."""
    root = os.environ.get("IOTCOMMUTE_API_URL")
    if root:
        return root
    from .._env import DEFAULT_URL

    ws = os.environ.get("IOTCOMMUTE_URL") or DEFAULT_URL
    parts = urlsplit(ws)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme or "http")
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def _clean_root(url: str) -> str:
    """The API base URL without credentials, query or trailing slash.

    The API authenticates with the access token; a user:password in the URL would only be
    shown (repr, login_url) or sent as Basic auth in place of the token, so it is dropped.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError("root must be an http:// or https:// URL")
    netloc = parts.netloc
    if "@" in netloc:
        log.warning("the credentials in the root URL are ignored (the API takes a token)")
        netloc = netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _check_proxy(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError("proxy must be an http:// or https:// URL")  # the URL may hold a password
    return url


def _header_token(what: str, value: str) -> str:
    """A key or token checked before it goes into a header (InputError, value not shown)."""
    if not isinstance(value, str) or not _HEADER_TOKEN.fullmatch(value):
        raise InputError(f"{what} must be printable ASCII without spaces")
    return value


def _tls_context(verify: bool, ssl_context: ssl.SSLContext | None, ca_certs: str | None) -> Any:
    """What httpx's `verify` gets: certifi's CAs unless told otherwise, never silently off."""
    if ssl_context is not None:
        return ssl_context
    if not verify:
        log.warning("TLS certificate verification is OFF for the REST client")
        return False
    return ssl.create_default_context(cafile=ca_certs or certifi.where())


def _seg(value: str) -> str:
    """One URL path segment (device ids are opaque strings)."""
    return quote(str(value), safe="")


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Retry-After in seconds (a number or an HTTP date), capped at MAX_RETRY_AFTER."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        wait = float(value)
    except ValueError:
        try:
            wait = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(wait, MAX_RETRY_AFTER))


def _json_body(value: Any) -> bytes:
    """JSON for a request body; what JSON cannot carry is an InputError before any request."""
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise InputError(f"command data is not JSON-encodable ({type(exc).__name__})") from None


# ---------------------------------------------------------------------------- calls


def _need(kind: type[T], what: str) -> Callable[[Any], T]:
    def check(value: Any) -> T:
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


def _ticks(page: dict[str, Any]) -> list[dict[str, Any]]:
    ticks: list[dict[str, Any]] = page["data"]
    return ticks


def _next_cursor(device_id: str, page: dict[str, Any], cursor: int | None) -> int | None:
    """Where the next history page starts (None: done); warns about trimmed records."""
    gap = page.get("gap")
    if gap:
        log.warning("history of %s: %s records were trimmed", device_id, gap.get("missed"))
    nxt: int | None = page["next"]
    if nxt is not None and cursor is not None and nxt <= cursor:
        raise DataError("history paging did not advance")
    return nxt


def _done(data: Any) -> bool:
    return True


def _logged_out(err: IotCommuteError) -> bool:
    """Logging out of a session the server no longer knows (expired, logged out) is done."""
    if isinstance(err, TokenError):
        return True
    raise err


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One API call, independent of the client that carries it; `check` makes its result."""

    method: str
    path: str
    headers: Mapping[str, str] = field(repr=False)
    check: Callable[[Any], T]
    query: Mapping[str, Any] | None = None
    body: bytes | None = field(default=None, repr=False)
    envelope: bool = False  # the result is the whole success document, not just "data"
    read_timeout: float | None = None
    hook: bool = True  # call on_session_expired on SessionExpired
    # an error answer that still gives a result (or re-raises)
    otherwise: Callable[[IotCommuteError], T] | None = None

    @property
    def where(self) -> str:
        """How messages name the call: method and path, never the query or a header."""
        return f"({self.method} {self.path})"


# ---------------------------------------------------------------------------- errors

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
    503: UnavailableError,
}
# error_type from the server body -> (class, code)
_TYPE_CLASSES: dict[str, tuple[type[IotCommuteError], str]] = {
    "SessionExpired": (SessionExpiredError, "session_expired"),
    "DeviceOffline": (CommandError, "device_offline"),
    "CommandTimeout": (CommandError, "command_timeout"),
    "RateLimited": (RateLimitError, "rate"),
    "Unavailable": (UnavailableError, "unavailable"),
}


def _ssl_reason(exc: BaseException) -> str | None:
    """The innermost ssl error's reason (e.g. CERTIFICATE_VERIFY_FAILED), None when the
    failure was not TLS. The text is the library's, never data from the request."""
    inner: BaseException | None = exc
    for _ in range(8):
        if inner is None:
            return None
        if isinstance(inner, ssl.SSLError):
            return str(getattr(inner, "reason", None) or type(inner).__name__)
        inner = inner.__cause__ or inner.__context__
    return None


# How far a failed request got: "unsent" never reached the server (safe to retry for any
# method), "sent" may have (only idempotent calls are retried), "final" is never retried.
def _transport_error(exc: httpx.HTTPError, where: str) -> tuple[IotCommuteError, str]:
    """httpx failure -> (the package's error, how far the request got)."""
    reason = _ssl_reason(exc)
    if reason is not None:  # a certificate does not fix itself
        return NetworkError(f"TLS failure, {reason} {where}", code="tls"), "final"
    if isinstance(exc, httpx.ProxyError):
        return NetworkError(f"proxy failure {where}", code="proxy"), "final"
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return OperationTimeout(f"timed out {where}", code="timeout"), "unsent"
    if isinstance(exc, httpx.TimeoutException):
        return OperationTimeout(f"timed out {where}", code="timeout"), "sent"
    if isinstance(exc, httpx.ConnectError):
        return NetworkError(f"cannot connect {where}", code="connect"), "unsent"
    if isinstance(exc, httpx.DecodingError):
        return DataError(f"undecodable response body {where}"), "final"
    if isinstance(exc, httpx.LocalProtocolError | httpx.UnsupportedProtocol):
        return InputError(f"cannot send this request {where}"), "final"
    return NetworkError(f"connection broken {where}", code="network"), "sent"


class _Attempts:
    """The attempts of one call: which failures are retried, and the wait before each retry.

    GETs are retried on connect and read failures and on 429/502/503/504 (Retry-After
    honoured up to MAX_RETRY_AFTER); any call is retried when it never reached the server
    (connection refused, connect timeout); nothing is retried after a TLS or proxy failure.
    """

    def __init__(self, call: _Call[Any], retries: int) -> None:
        self.call = call
        self._idempotent = call.method in _IDEMPOTENT
        self._backoff = retry_policy(retries)
        self._size = 0

    def take(self, chunk: bytes) -> bytes:
        """A chunk of the response body, refused past MAX_RESPONSE."""
        self._size += len(chunk)
        if self._size > MAX_RESPONSE:
            raise DataError(f"response body too large {self.call.where}")
        return chunk

    def failed(self, exc: httpx.HTTPError) -> float:
        """Seconds to wait before trying again, or raises the package's error."""
        err, got = _transport_error(exc, self.call.where)
        delay = None
        if got == "unsent" or (got == "sent" and self._idempotent):
            delay = self._backoff.next_delay()
        if delay is None:
            raise err from None
        log.debug("retrying %s after %s", self.call.where, err.code)
        self._size = 0
        return delay

    def answered(self, response: httpx.Response) -> float | None:
        """Seconds to wait before asking again, or None: this answer is the one."""
        if not self._idempotent or response.status_code not in _RETRY_STATUSES:
            return None
        delay = self._backoff.next_delay()
        if delay is None:
            return None
        wait = _retry_after(response.headers)
        log.debug("retrying %s after HTTP %d", self.call.where, response.status_code)
        self._size = 0
        return delay if wait is None else wait


# ---------------------------------------------------------------------------- the client


class ClientBase:
    """Options, the login flow, building calls and reading answers: all but the I/O.

    root: API base URL; default IOTCOMMUTE_API_URL, else derived from IOTCOMMUTE_URL.
    timeout: seconds for connect and for each socket read; a float or (connect, read).
    verify / ssl_context / ca_certs: certificate checks are on by default (certifi's CAs);
        pass ca_certs (a PEM path) or a ready ssl_context for private CAs. verify=False is
        possible but logged as a warning.
    proxy: "http://[user:pass@]host:port" (or https://); credentials become a
        Proxy-Authorization header; https:// roots are tunnelled with CONNECT. Proxy
        environment variables are not read: a proxy is used only when given here.
    pool_size: keep-alive connections kept open for reuse.
    retries: retries of GETs on connect errors, read errors and 429/502/503/504 (Retry-After
        honoured up to MAX_RETRY_AFTER); POST and DELETE are re-sent only when they never
        reached the server (the connection could not be made).
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
        if not api_key:
            raise InputError("missing required argument: api_key")
        self.api_key = _header_token("api_key", api_key)
        self.access_token = access_token
        self.root = _clean_root(root or _default_root())
        connect_t, read_t = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        self.connect_timeout = float(connect_t)
        self.read_timeout = float(read_t)
        self.retries = retries
        self.on_session_expired = on_session_expired
        # Keyword arguments of httpx.Client / httpx.AsyncClient (the same for both).
        self._http_options: dict[str, Any] = {
            "verify": _tls_context(verify, ssl_context, ca_certs),
            "proxy": _check_proxy(proxy) if proxy else None,
            "limits": httpx.Limits(max_connections=None, max_keepalive_connections=pool_size),
            "timeout": httpx.Timeout(self.read_timeout, connect=self.connect_timeout),
            "follow_redirects": False,  # the Authorization header must not go to another host
            "trust_env": False,  # no proxy or .netrc credentials from the environment
        }

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

    def _call(
        self,
        method: str,
        path: str,
        check: Callable[[Any], T],
        *,
        auth: bool = True,
        content_type: str | None = None,
        **kw: Any,
    ) -> _Call[T]:
        headers = {
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
            "X-Iotcommute-Version": API_VERSION,
        }
        if content_type:
            headers["Content-Type"] = content_type
        if auth:
            if not self.access_token:
                raise TokenError("not logged in; call generate_session() or set_access_token()")
            token = _header_token("access_token", self.access_token)
            headers["Authorization"] = f"token {self.api_key}:{token}"
        return _Call(method, path, headers, check, **kw)

    def _generate_session_call(self, request_token: str, api_secret: str) -> _Call[dict[str, Any]]:
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

        form = "application/x-www-form-urlencoded"
        return self._call("POST", "/session/token", check, auth=False, content_type=form, body=body)

    def _logout_call(self) -> _Call[bool] | None:
        """DELETE /session/token; the token is forgotten now, whatever the answer."""
        if not self.access_token:
            return None
        call = self._call("DELETE", "/session/token", _done, hook=False, otherwise=_logged_out)
        self.access_token = None
        return call

    def _devices_call(self) -> _Call[list[Any]]:
        return self._call("GET", "/devices", _need(list, "device list"))

    def _device_call(self, device_id: str) -> _Call[dict[str, Any]]:
        return self._call("GET", f"/devices/{_seg(device_id)}", _need(dict, "device"))

    def _history_call(self, device_id: str, since: int | None, limit: int) -> _Call[dict[str, Any]]:
        query: dict[str, Any] = {"limit": limit}
        if since is not None:
            query["since"] = since
        path = f"/devices/{_seg(device_id)}/history"
        return self._call("GET", path, _check_history, query=query, envelope=True)

    def _command_call(self, device_id: str, data: Any, timeout: float) -> _Call[dict[str, Any]]:
        body = _json_body({"data": data, "timeout": timeout})
        return self._call(
            "POST",
            f"/devices/{_seg(device_id)}/commands",
            _need(dict, "command ack"),
            content_type="application/json",
            body=body,
            read_timeout=max(self.read_timeout, timeout + _COMMAND_MARGIN),
        )

    # ------------------------------------------------------------------ carrying a call

    def _attempts(self, call: _Call[Any]) -> _Attempts:
        return _Attempts(call, self.retries)

    def _request(self, call: _Call[Any]) -> httpx.Request:
        timeout = httpx.Timeout(
            call.read_timeout or self.read_timeout, connect=self.connect_timeout
        )
        return httpx.Request(
            call.method,
            self.root + call.path,
            params=call.query,
            headers=call.headers,
            content=call.body,
            extensions={"timeout": timeout.as_dict()},
        )

    def _answer(self, call: _Call[T], response: httpx.Response, body: bytes) -> T:
        """The call's result from a whole answer, or its error raised."""
        status, headers = response.status_code, response.headers
        rid = headers.get("x-request-id")
        log.debug("%s -> %d [%s]", call.where, status, rid)
        payload: Any = None
        if "json" in headers.get("content-type", ""):
            try:
                payload = loads(body)
            except Exception:
                payload = None
        if 200 <= status < 300:
            if not isinstance(payload, dict) or payload.get("status") != "success":
                raise DataError(
                    "unexpected response body (not a JSON success envelope)",
                    status=status,
                    request_id=rid,
                )
            try:
                return call.check(payload if call.envelope else payload.get("data"))
            except DataError as exc:  # the shape was wrong: say which answer it was
                exc.status, exc.request_id = status, rid
                raise
        err = self._error(status, payload, rid, headers, call.hook)
        if call.otherwise is None:
            raise err
        return call.otherwise(err)

    def _error(
        self, status: int, payload: Any, rid: str | None, headers: httpx.Headers, hook: bool
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
        elif status == 407:
            cls, code, message = NetworkError, "proxy", "the proxy refused the credentials"
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
        if isinstance(err, RateLimitError | UnavailableError):
            err.retry_after = _retry_after(headers)
        if hook and isinstance(err, SessionExpiredError) and self.on_session_expired is not None:
            try:
                self.on_session_expired()
            except Exception:
                log.exception("on_session_expired hook failed")
        return err
