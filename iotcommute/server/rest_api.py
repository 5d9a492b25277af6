"""HTTP endpoints of the reference server (the REST-like API and the login flow).

The server awaits `handle(hub, method, target, headers, body)` for every request that is
not a WebSocket upgrade and writes back the `(status, headers, body)` it returns. Everything
here talks to the server only through the Hub interface of docs/design.md, so it can be read
(and tested) apart from the socket code. docs/rest.md documents the endpoints.

State that only the REST side needs (request tokens, the record of issued sessions used to
tell "expired" from "never existed", rate-limit buckets, TTLs) lives in a per-hub `RestState`
that `configure()` adjusts.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import inspect
import json
import logging
import re
import secrets
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

__all__ = ["RestState", "checksum", "configure", "handle", "state_of"]

log = logging.getLogger("iotcommute.server.rest")

Headers = list[tuple[str, str]]
Response = tuple[int, Headers, bytes]

DEFAULT_SESSION_TTL = 24 * 3600.0
DEFAULT_REQUEST_TOKEN_TTL = 120.0
MAX_BODY = 64 * 1024
MAX_HISTORY_LIMIT = 1000
MAX_COMMAND_TIMEOUT = 60.0
DEFAULT_COMMAND_TIMEOUT = 10.0
# Issued-session records kept to answer "SessionExpired" rather than a bare "invalid token".
MAX_SESSION_RECORDS = 100_000
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_DEVICE_ID_RE = re.compile(r"[^\x00-\x20/]{1,128}")

try:  # orjson through the payload module when it is there; stdlib otherwise
    from iotcommute.payload import dumps as _dumps
    from iotcommute.payload import loads as _loads
except ImportError:  # pragma: no cover - only before/without the payload module

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    def _loads(buf: bytes | bytearray | memoryview | str) -> Any:
        if isinstance(buf, memoryview):
            buf = bytes(buf)
        return json.loads(buf)


def checksum(api_key: str, request_token: str, api_secret: str) -> str:
    """sha256(api_key + request_token + api_secret) as hex: proves the secret without sending it."""
    return hashlib.sha256((api_key + request_token + api_secret).encode()).hexdigest()


def _token_id(token: str) -> str:
    # Records are keyed by a hash so a dump of the state never shows usable tokens.
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class _RequestToken:
    api_key: str
    user_id: str
    expires: float  # time.monotonic()


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class RestState:
    """REST-only state of one hub; change it with `configure()`."""

    session_ttl: float = DEFAULT_SESSION_TTL
    request_token_ttl: float = DEFAULT_REQUEST_TOKEN_TTL
    #: (requests per second, burst) per api_key, or None for no limit.
    rate_limit: tuple[float, float] | None = None
    clock: Callable[[], float] = time.monotonic
    request_tokens: dict[str, _RequestToken] = field(default_factory=dict)
    #: token id -> monotonic expiry of every session issued here (bounded, oldest dropped).
    issued: OrderedDict[str, float] = field(default_factory=OrderedDict)
    revoked: set[str] = field(default_factory=set)
    buckets: dict[str, _Bucket] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def new_request_token(self, api_key: str, user_id: str) -> str:
        token = secrets.token_urlsafe(24)
        now = self.clock()
        with self.lock:
            for k in [k for k, v in self.request_tokens.items() if v.expires <= now]:
                del self.request_tokens[k]
            self.request_tokens[token] = _RequestToken(
                api_key, user_id, now + self.request_token_ttl
            )
        return token

    def take_request_token(self, token: str) -> _RequestToken | None:
        """Single use: the token is gone after the first attempt, right or wrong."""
        with self.lock:
            rt = self.request_tokens.pop(token, None)
        if rt is None or rt.expires <= self.clock():
            return None
        return rt

    def record_session(self, token: str, ttl: float) -> None:
        with self.lock:
            self.issued[_token_id(token)] = self.clock() + ttl
            while len(self.issued) > MAX_SESSION_RECORDS:
                self.issued.popitem(last=False)

    def was_issued(self, token: str) -> float | None:
        """Monotonic expiry of a session this server issued, None if unknown."""
        with self.lock:
            return self.issued.get(_token_id(token))

    def revoke(self, token: str) -> None:
        tid = _token_id(token)
        with self.lock:
            self.issued.pop(tid, None)
            self.revoked.add(tid)
            if len(self.revoked) > MAX_SESSION_RECORDS:
                self.revoked.pop()

    def is_revoked(self, token: str) -> bool:
        with self.lock:
            return _token_id(token) in self.revoked

    def allow(self, key: str) -> float | None:
        """Token bucket: None when allowed, else seconds to wait."""
        if self.rate_limit is None:
            return None
        rate, burst = self.rate_limit
        now = self.clock()
        with self.lock:
            b = self.buckets.get(key)
            if b is None:
                b = self.buckets[key] = _Bucket(burst, now)
            b.tokens = min(burst, b.tokens + (now - b.stamp) * rate)
            b.stamp = now
            if b.tokens >= 1.0:
                b.tokens -= 1.0
                return None
            return (1.0 - b.tokens) / rate if rate > 0 else 60.0


_states: weakref.WeakKeyDictionary[Any, RestState] = weakref.WeakKeyDictionary()
_states_lock = threading.Lock()


def state_of(hub: Any) -> RestState:
    """The RestState of `hub` (created on first use, from hub.session_ttl if it has one)."""
    with _states_lock:
        st = _states.get(hub)
        if st is None:
            st = RestState()
            ttl = getattr(hub, "session_ttl", None)
            if isinstance(ttl, int | float) and ttl > 0:
                st.session_ttl = float(ttl)
            _states[hub] = st
        return st


def configure(
    hub: Any,
    *,
    session_ttl: float | None = None,
    request_token_ttl: float | None = None,
    rate_limit: tuple[float, float] | bool | None = False,
) -> RestState:
    """Set REST options for `hub`. rate_limit=(per_second, burst) or None to turn it off."""
    st = state_of(hub)
    if session_ttl is not None:
        st.session_ttl = float(session_ttl)
    if request_token_ttl is not None:
        st.request_token_ttl = float(request_token_ttl)
    if rate_limit is not False:
        st.rate_limit = rate_limit if isinstance(rate_limit, tuple) else None
        st.buckets.clear()
    return st


# --------------------------------------------------------------------------- helpers


class _HTTPError(Exception):
    """Internal: turned into a JSON error response by `handle`."""

    def __init__(
        self, status: int, error_type: str, message: str, headers: Headers | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.headers = headers or []


async def _maybe_await(value: Any) -> Any:
    # The Hub contract names plain methods; awaiting when a store is async costs nothing.
    if inspect.isawaitable(value):
        return await value
    return value


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _header_dict(headers: Mapping[Any, Any] | Iterable[tuple[Any, Any]]) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {_text(k).lower(): _text(v) for k, v in items}


def _json_response(status: int, obj: Any, extra: Headers | None = None) -> Response:
    headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
    if extra:
        headers.extend(extra)
    return status, headers, _dumps(obj)


def _ok(data: Any, **more: Any) -> Response:
    return _json_response(200, {"status": "success", "data": data, **more})


def _error(err: _HTTPError) -> Response:
    body = {"status": "error", "error_type": err.error_type, "message": err.message}
    return _json_response(err.status, body, err.headers)


def _parse_body(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """A JSON object or a urlencoded form, by Content-Type (JSON when it looks like JSON)."""
    if len(body) > MAX_BODY:
        raise _HTTPError(413, "InputError", "request body too large")
    ctype = headers.get("content-type", "").split(";")[0].strip().lower()
    if not body.strip():
        return {}
    if ctype == "application/x-www-form-urlencoded":
        try:
            return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            raise _HTTPError(400, "InputError", "form body is not UTF-8") from None
    try:
        obj = _loads(body)
    except Exception:
        raise _HTTPError(400, "InputError", "body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise _HTTPError(400, "InputError", "body must be a JSON object")
    return obj


def _str_field(form: Mapping[str, Any], name: str) -> str:
    value = form.get(name)
    if not isinstance(value, str) or not value:
        raise _HTTPError(400, "InputError", f"missing or invalid field: {name}")
    return value


def _int_param(
    query: Mapping[str, str], name: str, default: int | None, lo: int, hi: int
) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _HTTPError(400, "InputError", f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise _HTTPError(400, "InputError", f"{name} must be between {lo} and {hi}")
    return value


@dataclass
class _Auth:
    api_key: str
    user_id: str
    token: str


async def _authenticate(hub: Any, st: RestState, headers: dict[str, str]) -> _Auth:
    """`Authorization: token <api_key>:<access_token>` -> the session, or 401."""
    raw = headers.get("authorization")
    if not raw:
        raise _HTTPError(401, "TokenError", "credentials missing")
    scheme, _, cred = raw.strip().partition(" ")
    api_key, sep, token = cred.strip().partition(":")
    if scheme.lower() != "token" or not sep or not api_key or not token:
        raise _HTTPError(401, "TokenError", "credentials malformed")
    if st.is_revoked(token):
        raise _HTTPError(401, "TokenError", "the session was logged out")
    session = await _maybe_await(hub.registry.sessions.get(token))
    expired = False
    if session is not None:
        exp = getattr(session, "expires_at", None)
        # The store should already hide expired sessions; check anyway (same clock as it uses).
        if isinstance(exp, int | float) and exp <= time.time():
            session = None
            expired = True
    if session is None:
        issued_until = st.was_issued(token)
        if expired or (issued_until is not None and issued_until <= st.clock()):
            raise _HTTPError(401, "SessionExpired", "the session has expired; log in again")
        raise _HTTPError(401, "TokenError", "invalid access token")
    if not hmac.compare_digest(str(session.api_key).encode(), api_key.encode()):
        raise _HTTPError(401, "TokenError", "the session belongs to another app")
    return _Auth(api_key=api_key, user_id=str(session.user_id), token=token)


def _device_json(hub: Any, dev: Any) -> dict[str, Any]:
    # Never the device key.
    return {
        "id": dev.id,
        "name": getattr(dev, "name", None),
        "owner": dev.owner,
        "online": bool(hub.online(dev.id)),
    }


async def _owned_device(hub: Any, auth: _Auth, device_id: str) -> Any:
    if not _DEVICE_ID_RE.fullmatch(device_id):
        raise _HTTPError(404, "NotFound", "no such device")
    dev = await _maybe_await(hub.registry.device(device_id))
    if dev is None:
        raise _HTTPError(404, "NotFound", "no such device")
    if str(dev.owner) != auth.user_id:
        raise _HTTPError(403, "PermissionDenied", "this device belongs to another user")
    return dev


# --------------------------------------------------------------------------- HTML login pages

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:26em;margin:3em auto}}
label{{display:block;margin:.6em 0}}input{{width:100%}}.err{{color:#b00}}</style></head>
<body><h1>{title}</h1>{body}</body></html>
"""


def _html(status: int, title: str, body: str) -> Response:
    page = _PAGE.format(title=html.escape(title), body=body).encode()
    headers = [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Cache-Control", "no-store"),
        ("X-Frame-Options", "DENY"),
        ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
        ("Referrer-Policy", "no-referrer"),
    ]
    return status, headers, page


def _login_form(api_key: str, redirect: str, app_name: str, error: str = "") -> str:
    e = html.escape
    err = f'<p class="err">{e(error)}</p>' if error else ""
    return (
        f"<p>Log in to authorise <b>{e(app_name)}</b>.</p>{err}"
        '<form method="post" action="/connect/login">'
        f'<input type="hidden" name="api_key" value="{e(api_key)}">'
        f'<input type="hidden" name="redirect" value="{e(redirect)}">'
        '<label>User ID <input name="user_id" autocomplete="username" required></label>'
        '<label>Password <input name="password" type="password" '
        'autocomplete="current-password" required></label>'
        '<button type="submit">Log in</button></form>'
    )


def _check_redirect(app: Any, redirect: str) -> str:
    """Absolute http(s) URLs only; an app that registered a redirect_url is held to it."""
    if not redirect:
        return ""
    parts = urlsplit(redirect)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _HTTPError(400, "InputError", "redirect must be an absolute http(s) URL")
    registered = getattr(app, "redirect_url", None)
    if registered and not redirect.startswith(str(registered)):
        raise _HTTPError(400, "InputError", "redirect does not match the app's redirect_url")
    return redirect


def _with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query = [(k, v) for k, v in query if k not in params] + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


async def _get_login(hub: Any, query: dict[str, str]) -> Response:
    api_key = query.get("api_key", "")
    version = query.get("v", "1")
    app = await _maybe_await(hub.registry.app(api_key)) if api_key else None
    if app is None:
        return _html(400, "Unknown app", "<p>The api_key is missing or unknown.</p>")
    if version != "1":
        return _html(400, "Unsupported version", "<p>Only v=1 is supported.</p>")
    try:
        redirect = _check_redirect(app, query.get("redirect", ""))
    except _HTTPError as exc:
        return _html(400, "Bad redirect", f"<p>{html.escape(exc.message)}</p>")
    name = str(getattr(app, "name", None) or "this app")
    return _html(200, "IOT commute login", _login_form(api_key, redirect, name))


async def _post_login(hub: Any, st: RestState, headers: dict[str, str], body: bytes) -> Response:
    try:
        form = _parse_body(headers, body)
    except _HTTPError as exc:
        return _html(exc.status, "Bad request", f"<p>{html.escape(exc.message)}</p>")
    api_key = str(form.get("api_key") or "")
    app = await _maybe_await(hub.registry.app(api_key)) if api_key else None
    if app is None:
        return _html(400, "Unknown app", "<p>The api_key is missing or unknown.</p>")
    try:
        redirect = _check_redirect(app, str(form.get("redirect") or ""))
    except _HTTPError as exc:
        return _html(400, "Bad redirect", f"<p>{html.escape(exc.message)}</p>")
    user_id = str(form.get("user_id") or "")
    password = str(form.get("password") or "")
    user = await _maybe_await(hub.registry.user(user_id)) if user_id else None
    # Compare even for unknown users so timing does not reveal which user ids exist.
    expected = str(user.password) if user is not None else secrets.token_hex(16)
    good = hmac.compare_digest(expected.encode(), password.encode())
    if user is None or not good:
        log.info("login failed for an app (bad user id or password)")
        name = str(getattr(app, "name", None) or "this app")
        form_html = _login_form(api_key, redirect, name, "Wrong user ID or password.")
        return _html(401, "IOT commute login", form_html)
    token = await _new_request_token(hub, st, api_key, str(user.user_id))
    log.info("login ok for user %s", user.user_id)
    if not redirect:
        # No app redirect (CLI flows): show the token to copy.
        return _html(
            200,
            "Logged in",
            "<p>Your request token (single use, valid for "
            f"{int(st.request_token_ttl)} s):</p><pre>{html.escape(token)}</pre>",
        )
    location = _with_query(redirect, {"request_token": token, "status": "success"})
    status, hdrs, page = _html(302, "Redirecting", "<p>Redirecting back to the app.</p>")
    hdrs.append(("Location", location))
    return status, hdrs, page


# --------------------------------------------------------------------------- JSON endpoints


async def _new_request_token(hub: Any, st: RestState, api_key: str, user_id: str) -> str:
    """The session store keeps request tokens when it can (design.md); else RestState does."""
    create = getattr(hub.registry.sessions, "create_request_token", None)
    if create is None:
        return st.new_request_token(api_key, user_id)
    rt = await _maybe_await(create(user_id, api_key, st.request_token_ttl))
    return str(rt.request_token)


async def _take_request_token(hub: Any, st: RestState, token: str) -> Any:
    """Single use, whatever the outcome; None when unknown or expired."""
    redeem = getattr(hub.registry.sessions, "redeem_request_token", None)
    if redeem is None:
        return st.take_request_token(token)
    return await _maybe_await(redeem(token))


async def _create_session(
    hub: Any, st: RestState, headers: dict[str, str], body: bytes
) -> Response:
    form = _parse_body(headers, body)
    api_key = _str_field(form, "api_key")
    request_token = _str_field(form, "request_token")
    given = _str_field(form, "checksum").lower()
    rt = await _take_request_token(hub, st, request_token)
    if rt is None or not hmac.compare_digest(str(rt.api_key).encode(), api_key.encode()):
        raise _HTTPError(401, "TokenError", "invalid or expired request token")
    app = await _maybe_await(hub.registry.app(api_key))
    if app is None:
        raise _HTTPError(401, "TokenError", "unknown api_key")
    want = checksum(api_key, request_token, str(app.api_secret))
    if not hmac.compare_digest(want.encode(), given.encode()):
        raise _HTTPError(401, "TokenError", "wrong checksum")
    ttl = st.session_ttl
    user_id = str(rt.user_id)
    session = await _maybe_await(hub.registry.sessions.create(user_id, api_key, ttl))
    st.record_session(session.access_token, ttl)
    user = await _maybe_await(hub.registry.user(user_id))
    log.info("session created for user %s", user_id)
    return _ok(
        {
            "user_id": user_id,
            "user_name": getattr(user, "name", None),
            "api_key": api_key,
            "access_token": session.access_token,
            "login_time": time.time(),
            "expires_at": getattr(session, "expires_at", None),
        }
    )


async def _delete_session(hub: Any, st: RestState, headers: dict[str, str]) -> Response:
    auth = await _authenticate(hub, st, headers)
    sessions = hub.registry.sessions
    # The Hub contract has no "delete"; use whichever the store offers, and remember the
    # revocation here so the REST side refuses the token whatever the store does.
    for name in ("delete", "invalidate", "revoke", "remove", "discard", "pop"):
        fn = getattr(sessions, name, None)
        if callable(fn):
            await _maybe_await(fn(auth.token))
            break
    st.revoke(auth.token)
    end = getattr(hub, "end_session", None)
    if end is not None:
        end(auth.token)  # the WebSocket streams opened with this token end too (1008)
    log.info("session invalidated for user %s", auth.user_id)
    return _ok(True)


async def _list_devices(hub: Any, auth: _Auth) -> Response:
    devices = await _maybe_await(hub.registry.devices_of(auth.user_id))
    return _ok([_device_json(hub, d) for d in devices])


async def _get_device(hub: Any, auth: _Auth, device_id: str) -> Response:
    dev = await _owned_device(hub, auth, device_id)
    return _ok(_device_json(hub, dev))


async def _history(hub: Any, auth: _Auth, device_id: str, query: dict[str, str]) -> Response:
    dev = await _owned_device(hub, auth, device_id)
    since_given = _int_param(query, "since", None, 0, 2**62)
    since = since_given or 0
    limit = _int_param(query, "limit", 100, 1, MAX_HISTORY_LIMIT) or 100
    log_ = hub.log
    # One record more than asked says exactly whether there is a next page.
    scan = getattr(log_, "scan", None)
    if scan is not None:
        # scan() stops after a bounded number of records when filtering; `examined` tells
        # where it stopped, so a page may be short (even empty) and still have a next.
        records, examined = await _maybe_await(scan(since, {dev.id}, limit + 1))
    else:
        records = await _maybe_await(log_.read(since, {dev.id}, limit + 1))
        examined = None
    ticks = [
        {"type": "tick", "device": r.device, "position": r.position, "ts": r.ts, "data": r.data}
        for r in records[:limit]
        if _servable(r)
    ]
    nxt: int | None = None
    if len(records) > limit:
        nxt = ticks[-1]["position"]
    elif examined is not None and examined < log_.last_position:
        nxt = examined
    more: dict[str, Any] = {"next": nxt}
    gap = getattr(log_, "gap", None)
    lost = gap(since, {dev.id}) if gap is not None and since_given is not None else None
    if lost:
        # Records after `since` were trimmed from the capped log (counts all devices).
        more["gap"] = {"from": lost[0], "to": lost[1], "missed": lost[2]}
    return _ok(ticks, **more)


def _servable(r: Any) -> bool:
    """False for a record whose data cannot be encoded (skipped, logged), so one bad
    record never turns a history page into a 500."""
    encode = getattr(r, "data_json", None)
    if encode is None:
        return True
    try:
        encode()
    except (TypeError, ValueError):
        log.error("record %s cannot be encoded; left out of the history", r.position)
        return False
    return True


async def _command(
    hub: Any, auth: _Auth, device_id: str, headers: dict[str, str], body: bytes
) -> Response:
    dev = await _owned_device(hub, auth, device_id)
    req = _parse_body(headers, body)
    if "data" not in req:
        raise _HTTPError(400, "InputError", "missing field: data")
    timeout = req.get("timeout", DEFAULT_COMMAND_TIMEOUT)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_COMMAND_TIMEOUT
    ):
        raise _HTTPError(400, "InputError", f"timeout must be in (0, {MAX_COMMAND_TIMEOUT:g}] s")
    try:
        ack = await hub.send_command(dev.id, req["data"], timeout=float(timeout))
    except LookupError:
        raise _HTTPError(409, "DeviceOffline", "the device is not connected") from None
    except TimeoutError:
        raise _HTTPError(504, "CommandTimeout", "the device did not acknowledge in time") from None
    return _ok(ack)


# --------------------------------------------------------------------------- routing


def _not_allowed(allowed: str) -> _HTTPError:
    return _HTTPError(405, "InputError", "method not allowed", [("Allow", allowed)])


async def _route(
    hub: Any,
    st: RestState,
    method: str,
    path: str,
    query: dict[str, str],
    headers: dict[str, str],
    body: bytes,
) -> Response:
    if path == "/connect/login":
        if method in ("GET", "HEAD"):
            return await _get_login(hub, query)
        if method == "POST":
            return await _post_login(hub, st, headers, body)
        raise _not_allowed("GET, POST")
    if path == "/session/token":
        if method == "POST":
            return await _create_session(hub, st, headers, body)
        if method == "DELETE":
            return await _delete_session(hub, st, headers)
        raise _not_allowed("POST, DELETE")
    if path == "/devices" or path.startswith("/devices/"):
        parts = path.split("/")[2:]  # after "", "devices"
        if len(parts) > 2 or (len(parts) == 2 and parts[1] not in ("history", "commands")):
            raise _HTTPError(404, "NotFound", "no such endpoint")
        want = "POST" if len(parts) == 2 and parts[1] == "commands" else "GET"
        if method != want and not (want == "GET" and method == "HEAD"):
            raise _not_allowed(want)
        auth = await _authenticate(hub, st, headers)
        if not parts:
            return await _list_devices(hub, auth)
        device_id = unquote(parts[0])
        if len(parts) == 1:
            return await _get_device(hub, auth, device_id)
        if parts[1] == "history":
            return await _history(hub, auth, device_id, query)
        return await _command(hub, auth, device_id, headers, body)
    raise _HTTPError(404, "NotFound", "no such endpoint")


def _request_id(headers: dict[str, str]) -> str:
    given = headers.get("x-request-id", "")
    # A caller's id is echoed only when it is short and plain, so logs cannot be forged.
    return given if _REQUEST_ID_RE.fullmatch(given) else secrets.token_hex(8)


def _rate_key(headers: dict[str, str], query: dict[str, str], body: bytes) -> str:
    """The api_key a request is counted against (Authorization, query, or the posted form)."""
    auth = headers.get("authorization", "")
    if ":" in auth:
        return auth.partition(" ")[2].partition(":")[0]
    key = query.get("api_key", "")
    if not key and body:
        try:
            key = str(_parse_body(headers, body).get("api_key") or "")
        except _HTTPError:
            key = ""
    return key or "-"


async def handle(
    hub: Any,
    method: str | bytes,
    target: str | bytes,
    headers: Mapping[Any, Any] | Iterable[tuple[Any, Any]],
    body: bytes,
) -> Response:
    """Answer one HTTP request: returns (status, [(name, value), ...], body bytes).

    Never raises: hub failures become 500 with a generic message (details go to the log).
    Every response carries X-Request-Id.
    """
    try:
        method = _text(method).upper()
        target = _text(target)
        hdrs = _header_dict(headers)
    except (TypeError, ValueError, AttributeError):  # not what an HTTP parser hands over
        method, target, hdrs = "?", "/", {}
    rid = _request_id(hdrs)
    path, _, qs = target.partition("?")
    if len(path) > 1:
        path = path.rstrip("/")
    st = state_of(hub)
    body = bytes(body or b"")
    try:
        query = dict(parse_qsl(qs, keep_blank_values=True))
        wait = None if st.rate_limit is None else st.allow(_rate_key(hdrs, query, body))
        if wait is not None:
            raise _HTTPError(
                429, "RateLimited", "too many requests", [("Retry-After", str(max(1, round(wait))))]
            )
        resp = await _route(hub, st, method, path, query, hdrs, body)
    except _HTTPError as exc:
        resp = _error(exc)
    except Exception:
        log.exception("REST handler failed: %s %s [%s]", method, path, rid)
        resp = _error(_HTTPError(500, "ServerError", "internal server error"))
    status, out_headers, out_body = resp
    out_headers.append(("X-Request-Id", rid))
    if method == "HEAD":
        out_body = b""
    log.debug("%s %s -> %d [%s]", method, path, status, rid)  # path only: queries hold keys
    return status, out_headers, out_body
