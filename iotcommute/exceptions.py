"""One exception hierarchy for the whole package (REST and WebSocket alike).

    IotCommuteError                      .code .message .status .request_id .headers
    ├── TokenError                       bad key / token / checksum (HTTP 401); fatal
    │   └── SessionExpiredError          the access token's session ended
    ├── PermissionDenied                 authenticated but not allowed (HTTP 403); fatal
    ├── InputError                       the request was malformed (HTTP 400/422)
    │   └── RateLimitError               too many requests (HTTP 429)
    ├── NotFoundError                    no such device / route (HTTP 404)
    ├── DataError                        the server returned data we cannot use
    ├── ServerError                      the server failed (HTTP 5xx)
    │   └── UnavailableError             the log store is down; retry later (HTTP 503); retryable
    ├── NetworkError                     connect/read failures, DNS, TLS, proxy
    │   └── OperationTimeout             an operation took longer than allowed
    ├── HandshakeError                   the WebSocket upgrade failed
    │   ├── InvalidStatus                non-101 response (carries status, headers)
    │   │   └── RedirectError            3xx response (carries .location)
    │   ├── InvalidHandshake             malformed 101 (Accept, Upgrade, extensions)
    │   └── VersionError                 protocol version refused by the server; fatal
    ├── ProtocolError                    RFC 6455 violation by the peer (.close_code 1002)
    │   ├── InvalidUTF8Error             text not valid UTF-8 (1007)
    │   ├── MessageTooBigError           message over max_size or max_fragments (1009)
    │   └── PolicyError                  policy violation (1008)
    ├── ConnectionClosed                 the connection is closed (.close_code, .reason)
    │   ├── ConnectionClosedOK           ... cleanly (1000/1001)
    │   └── ConnectionClosedError        ... with an error or abnormally
    ├── DecodeError                      a payload could not be decoded (.position)
    ├── CommandError                     a command was refused or timed out by the device
    └── NotConnectedError                an operation needs a connection (publish policy)

Every error has `.code` (a short string: "token", "input", "timeout", ...; the stream's and the
REST API's error codes), `.message`, `.status` (HTTP status, when there was one), `.request_id`
and `.headers` (sensitive values replaced). `.fatal` errors are not retried by the reconnecting
client; `.retryable` ones say "the same request may work later" (UnavailableError, and
RateLimitError after `.retry_after`). ProtocolError and ConnectionClosed carry `.close_code`
(the WebSocket close code), which is not `.code`.

`ERROR_CODES` maps the `code` of a stream `error` message (and a REST `error_type`'s code) to
its class: one table for the WebSocket client and the REST client.

Messages never contain keys, secrets or tokens: the constructors take only what is
safe to show, and `redact()` scrubs anything passed through from the outside.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ERROR_CODES",
    "CommandError",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "DataError",
    "DecodeError",
    "HandshakeError",
    "InputError",
    "InvalidHandshake",
    "InvalidStatus",
    "InvalidUTF8Error",
    "IotCommuteError",
    "MessageTooBigError",
    "NetworkError",
    "NotConnectedError",
    "NotFoundError",
    "OperationTimeout",
    "PermissionDenied",
    "PolicyError",
    "ProtocolError",
    "RateLimitError",
    "RedirectError",
    "ServerError",
    "SessionExpiredError",
    "TokenError",
    "UnavailableError",
    "VersionError",
    "redact",
]

# Header names whose values must never be shown.
SENSITIVE_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-device-key",
        "x-api-key",
        "x-api-secret",
    }
)

# `name=value` / `name: value` pairs whose value is secret; an auth scheme word is kept.
_SECRET_PAIR = re.compile(
    r"(?i)(?<![/.\w-])((?:access_|request_|api_|device_)?(?:token|key|secret|password|checksum)"
    r"|authorization|x-device-key)([\"']?\s*[=:]\s*[\"']?)"
    r"((?:token|bearer|basic)\s+)?([^\s&\"',;]+)"
)


def redact(text: str) -> str:
    """Scrub `name=value` style secrets from a string coming from outside.

    Only pairs are touched, so ordinary words ("checksum mismatch") read as written.
    """
    return _SECRET_PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3) or ''}***", text)


def safe_headers(headers: Mapping[str, str] | list[tuple[str, str]] | None) -> dict[str, str]:
    """A copy of headers with sensitive values replaced."""
    if headers is None:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, str] = {}
    for k, v in items:
        if isinstance(k, bytes):
            k = k.decode("latin-1")
        if isinstance(v, bytes):
            v = v.decode("latin-1")
        out[k.lower()] = "***" if k.lower() in SENSITIVE_HEADERS else v
    return out


class IotCommuteError(Exception):
    """Base class of every error raised by iotcommute."""

    #: Fatal errors are not retried by the reconnecting client.
    fatal: bool = False
    #: The same request may succeed later (the server said so, e.g. UnavailableError).
    retryable: bool = False
    default_code: str = "error"

    def __init__(
        self,
        message: str = "",
        *,
        code: str | int | None = None,
        status: int | None = None,
        request_id: str | None = None,
        headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
    ) -> None:
        self.message = redact(message)
        self.code: str | int = code if code is not None else self.default_code
        self.status = status
        self.request_id = request_id
        self.headers = safe_headers(headers)
        super().__init__(self.message)

    def __str__(self) -> str:
        parts = [self.message or type(self).__name__]
        if self.status is not None:
            parts.append(f"(HTTP {self.status})")
        if self.request_id:
            parts.append(f"[request {self.request_id}]")
        return " ".join(parts)

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}({self.message!r}, code={self.code!r}, status={self.status!r})"


class TokenError(IotCommuteError):
    fatal = True
    default_code = "token"


class SessionExpiredError(TokenError):
    default_code = "session_expired"


class PermissionDenied(IotCommuteError):
    """Authenticated, but not allowed (another user's device, a role that may not do this)."""

    fatal = True
    default_code = "permission"


class InputError(IotCommuteError):
    default_code = "input"


class NotFoundError(IotCommuteError):
    default_code = "not_found"


class DataError(IotCommuteError):
    default_code = "data"


class RateLimitError(InputError):
    """Too many requests; retry after `.retry_after` seconds when the server said."""

    retryable = True
    default_code = "rate"

    def __init__(self, message: str = "", *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ServerError(IotCommuteError):
    default_code = "server"


class UnavailableError(ServerError):
    """The server cannot serve now (its log store is down); the same request may work later,
    after `.retry_after` seconds when the server said (REST `Retry-After`)."""

    retryable = True
    default_code = "unavailable"

    def __init__(self, message: str = "", *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class NetworkError(IotCommuteError):
    default_code = "network"


class OperationTimeout(NetworkError):
    """An operation took longer than allowed (connect, read, a command's ack, a keep-alive)."""

    default_code = "timeout"


class HandshakeError(IotCommuteError):
    default_code = "handshake"


class InvalidStatus(HandshakeError):
    """The server answered the upgrade with something other than 101."""


class RedirectError(InvalidStatus):
    """The server redirected the upgrade; `.location` says where."""

    def __init__(self, message: str = "", *, location: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.location = location


class InvalidHandshake(HandshakeError):
    """The 101 response was malformed (Accept, Upgrade, extensions, subprotocol)."""


class VersionError(HandshakeError):
    fatal = True
    default_code = "version"


class ProtocolError(IotCommuteError):
    """The peer broke RFC 6455; the connection was failed with `.close_code`."""

    default_code = "protocol"
    default_close_code: int = 1002

    def __init__(self, message: str = "", *, close_code: int | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.close_code = close_code if close_code is not None else self.default_close_code


class InvalidUTF8Error(ProtocolError):
    default_code = "invalid_utf8"
    default_close_code = 1007


class MessageTooBigError(ProtocolError):
    default_code = "message_too_big"
    default_close_code = 1009


class PolicyError(ProtocolError):
    default_code = "policy"
    default_close_code = 1008


class ConnectionClosed(IotCommuteError):
    """The connection is closed; `.close_code` and `.reason` come from the close frame (1006:
    none was received). `.code` is the error code "closed", as for every IotCommuteError."""

    default_code = "closed"

    def __init__(self, code: int = 1006, reason: str = "", message: str = "", **kw: Any) -> None:
        super().__init__(message or f"connection closed: {code} {reason}".rstrip(), **kw)
        self.close_code = code
        self.reason = reason


class ConnectionClosedOK(ConnectionClosed):
    pass


class ConnectionClosedError(ConnectionClosed):
    pass


class DecodeError(IotCommuteError):
    """A payload could not be decoded; `.position` is the log position when known."""

    default_code = "decode"

    def __init__(self, message: str = "", *, position: int | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.position = position


class CommandError(IotCommuteError):
    default_code = "command"


class NotConnectedError(IotCommuteError):
    default_code = "not_connected"


#: The `code` of a stream `error` message -> the class raised for it (docs/protocol.md).
ERROR_CODES: Mapping[str, type[IotCommuteError]] = {
    "input": InputError,
    "permission": PermissionDenied,
    "not_found": NotFoundError,
    "rate": RateLimitError,
    "server": ServerError,
    "unavailable": UnavailableError,
}
