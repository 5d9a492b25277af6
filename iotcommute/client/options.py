"""Options and callbacks, declared once for WebSocket and AsyncWebSocket (see base.py).

Each callback has a typed Protocol, so a type checker catches a wrong signature; every
callback gets the client last.
"""

from __future__ import annotations

import os
import ssl as ssl_module
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..exceptions import InputError
from .connect import Target, parse_proxy
from .group import GROUP_NAME
from .session import devices_arg

if TYPE_CHECKING:
    from ..payload.columnar import TickBatch

__all__ = [
    "OnAssign",
    "OnBatch",
    "OnClose",
    "OnCommand",
    "OnConnect",
    "OnError",
    "OnGap",
    "OnMessage",
    "OnNoReconnect",
    "OnReconnect",
    "OnRevoke",
    "OnTick",
    "OnTickRows",
    "OnTicks",
    "Options",
    "Owner",
    "resolver",
]


class OnConnect(Protocol):
    def __call__(self, ws: Any, /) -> object: ...


class OnTick(Protocol):
    def __call__(self, tick: dict[str, Any], ws: Any, /) -> object: ...


class OnTicks(Protocol):
    def __call__(self, ticks: list[dict[str, Any]], ws: Any, /) -> object: ...


class OnTickRows(Protocol):
    def __call__(
        self, fields: tuple[str, ...], rows: list[tuple[Any, ...]], ws: Any, /
    ) -> object: ...


class OnBatch(Protocol):
    def __call__(self, batch: TickBatch, ws: Any, /) -> object: ...


class OnMessage(Protocol):
    def __call__(self, message: str | bytes, ws: Any, /) -> object: ...


class OnCommand(Protocol):
    def __call__(self, command: dict[str, Any], ws: Any, /) -> object: ...


class OnClose(Protocol):
    def __call__(self, code: int, reason: str, ws: Any, /) -> object: ...


class OnError(Protocol):
    def __call__(self, error: BaseException, ws: Any, /) -> object: ...


class OnReconnect(Protocol):
    def __call__(self, attempt: int, ws: Any, /) -> object: ...


class OnNoReconnect(Protocol):
    def __call__(self, ws: Any, /) -> object: ...


class OnGap(Protocol):
    def __call__(self, gap: dict[str, Any], ws: Any, /) -> object: ...


class OnAssign(Protocol):
    def __call__(self, partitions: list[int], ws: Any, /) -> object: ...


class OnRevoke(Protocol):
    def __call__(self, partitions: list[int], ws: Any, /) -> object: ...


class Owner:
    """The callback attributes, declared once: ClientBase inherits them (each None until
    the user sets one), and the engine calls back into an Owner."""

    on_connect: OnConnect | None = None
    on_tick: OnTick | None = None
    on_ticks: OnTicks | None = None
    on_tick_rows: OnTickRows | None = None
    on_message: OnMessage | None = None
    on_command: OnCommand | None = None
    on_close: OnClose | None = None
    on_error: OnError | None = None
    on_reconnect: OnReconnect | None = None
    on_noreconnect: OnNoReconnect | None = None
    on_gap: OnGap | None = None
    on_batch: OnBatch | None = None
    on_assign: OnAssign | None = None
    on_revoke: OnRevoke | None = None


def _header_safe(name: str, value: str | None) -> None:
    """A header value must be printable latin-1 without CR/LF: checked before connecting,
    and the value itself is never shown (it may be a key)."""
    if value is None:
        return
    if not isinstance(value, str):
        raise InputError(f"{name} must be a string")
    if any(c in value for c in "\r\n\0") or not value.isprintable():
        raise InputError(f"{name} holds a character that cannot go into an HTTP header")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise InputError(f"{name} holds a character that cannot go into an HTTP header") from None


@dataclass
class Options:
    """Every connection option, validated once (see ClientBase for their meaning)."""

    device_key: str | None = field(default=None, repr=False)
    device_id: str | None = None
    role: str | None = None
    url: str = ""
    access_token: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    ssl: ssl_module.SSLContext | None = None
    headers: dict[str, str] | None = field(default=None, repr=False)
    proxy: str | None = field(default=None, repr=False)
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    idle_timeout: float | None = None
    open_timeout: float = 10.0
    close_timeout: float = 5.0
    reconnect: bool = True
    max_reconnect_delay: float = 30.0
    max_retries: int | None = None
    first_connect_retries: int | None = 3
    max_size: int = 4 * 2**20
    compression: bool = True
    format: str = "json"
    subscribe: Any = "*"
    checkpoint: str | os.PathLike[str] | None = None
    offline_queue: int = 10000
    group: str | None = None
    group_commit: str = "auto"

    def __post_init__(self) -> None:
        if not self.url:
            self.url = os.environ.get("IOTCOMMUTE_URL") or "ws://127.0.0.1:8765"
        if self.proxy is not None:
            parse_proxy(self.proxy)  # fail early on a bad proxy URL
        if self.role is None:
            self.role = "client" if self.access_token is not None else "device"
        if self.role not in ("device", "client"):
            raise ValueError("role must be 'device' or 'client'")
        if self.format not in ("json", "binary"):
            raise ValueError("format must be 'json' or 'binary'")
        has_token = self.access_token is not None or self.api_key is not None
        if has_token and (self.access_token is None or self.api_key is None):
            raise ValueError("access_token and api_key go together")
        if not has_token and (self.device_key is None or self.device_id is None):
            raise ValueError("give device_key and device_id, or api_key and access_token")
        if self.offline_queue < 0:
            raise ValueError("offline_queue must be >= 0")
        for name in ("device_key", "device_id", "access_token", "api_key"):
            _header_safe(name, getattr(self, name))
        for k, v in (self.headers or {}).items():
            _header_safe("header name", k)
            _header_safe(f"header {k}", v)
        if self.subscribe is not None and self.subscribe != []:
            devices_arg(self.subscribe)
        Target(self.url)  # fail early on a bad URL
        if self.group_commit not in ("auto", "manual"):
            raise ValueError("group_commit must be 'auto' or 'manual'")
        if self.group is not None:
            self._check_group()
        elif self.group_commit != "auto":
            raise ValueError("group_commit is for a consumer-group member (group=...)")

    def _check_group(self) -> None:
        if not isinstance(self.group, str) or not GROUP_NAME.match(self.group):
            raise ValueError("group must be 1-64 characters of A-Z a-z 0-9 _ -")
        if self.role != "client":
            raise ValueError("a consumer-group member connects with role 'client'")
        if self.subscribe != "*":
            raise ValueError("a group member gets its partitions' devices: leave subscribe as '*'")
        if self.checkpoint is not None:
            raise ValueError("a group keeps its positions on the server: no checkpoint file")

    def handshake_headers(self) -> list[tuple[str, str]]:
        hdrs: list[tuple[str, str]] = []
        if self.access_token is not None:
            hdrs.append(("Authorization", f"token {self.api_key}:{self.access_token}"))
            if self.device_id is not None:
                hdrs.append(("X-Device-Id", self.device_id))
        else:
            assert self.device_key is not None and self.device_id is not None
            hdrs.append(("X-Device-Key", self.device_key))
            hdrs.append(("X-Device-Id", self.device_id))
        hdrs.append(("X-Role", self.role or "device"))
        hdrs.append(("X-Protocol-Version", "1"))
        extra = self.headers or {}
        if extra:  # a user header replaces a default of the same name
            names = {k.lower() for k in extra}
            hdrs = [(k, v) for k, v in hdrs if k.lower() not in names]
            hdrs.extend(extra.items())
        return hdrs


class _Future(Protocol):
    def done(self) -> bool: ...
    def set_result(self, result: Any, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


def resolver(fut: _Future) -> Callable[[Any, BaseException | None], None]:
    """The Session's resolve(value, error) for a concurrent or asyncio Future."""

    def resolve(value: Any, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)

    return resolve
