"""Commute: the blocking REST client (httpx.Client); everything but the waiting is in base.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

from .base import ClientBase, T, _Call, _next_cursor, _ticks

__all__ = ["Commute"]


class Commute(ClientBase):
    """Blocking REST client; reusable, closable, and safe to share between threads.

    Options: see `ClientBase` (root, access_token, timeout, verify / ssl_context / ca_certs,
    proxy, pool_size, retries, on_session_expired). Every failure is an
    `iotcommute.exceptions` error.
    """

    _http: httpx.Client | None = None
    _lock = threading.Lock()  # per class: creating the pool is rare and quick

    def _client(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                self._http = httpx.Client(**self._http_options)
            return self._http

    def close(self) -> None:
        """Close pooled connections (the client may still be used; it reconnects)."""
        with self._lock:
            http, self._http = self._http, None
        if http is not None:
            http.close()

    def __enter__(self) -> Commute:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ API

    def generate_session(self, request_token: str, api_secret: str) -> dict[str, Any]:
        """Exchange a request token for an access token (stored on the client and returned).

        Only sha256(api_key + request_token + api_secret) is sent, never the secret.
        """
        return self._send(self._generate_session_call(request_token, api_secret))

    def invalidate_session(self) -> bool:
        """Log the session out on the server and forget the token.

        A session the server no longer knows (expired, logged out) counts as done.
        """
        call = self._logout_call()
        return True if call is None else self._send(call)

    def devices(self) -> list[dict[str, Any]]:
        """The user's devices: id, name, owner, online (keys are never returned)."""
        return self._send(self._devices_call())

    def device(self, device_id: str) -> dict[str, Any]:
        """One device (NotFoundError, PermissionDenied for another user's)."""
        return self._send(self._device_call(device_id))

    def history(
        self, device_id: str, since: int | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Ticks with position > since (oldest first), at most `limit` of them."""
        return _ticks(self.history_page(device_id, since, limit))

    def history_page(
        self, device_id: str, since: int | None = None, limit: int = 100
    ) -> dict[str, Any]:
        """One raw page: {"data": [ticks], "next": position | None, "gap"?: {...}}.

        "gap" is present when records after `since` were already trimmed from the server's
        capped log (same fields as the WebSocket gap message).
        """
        return self._send(self._history_call(device_id, since, limit))

    def iter_history(
        self, device_id: str, since: int | None = None, page_size: int = 500
    ) -> Iterator[dict[str, Any]]:
        """Every retained tick of the device after `since`, fetched page by page."""
        cursor = since
        while True:
            page = self.history_page(device_id, cursor, page_size)
            yield from _ticks(page)
            cursor = _next_cursor(device_id, page, cursor)
            if cursor is None:
                return

    def send_command(self, device_id: str, data: Any, timeout: float = 10.0) -> dict[str, Any]:
        """Send a command through the server and wait for the device's ack dict.

        The ack is returned as the device sent it (`ok` may be False: the device refused).
        An offline device or no ack in time raises CommandError; data that JSON cannot
        carry raises InputError before anything is sent.
        """
        return self._send(self._command_call(device_id, data, timeout))

    # ------------------------------------------------------------------ HTTP

    def _send(self, call: _Call[T]) -> T:
        attempts = self._attempts(call)
        while True:
            try:
                response = self._client().send(self._request(call), stream=True)
                try:
                    body = b"".join([attempts.take(c) for c in response.iter_bytes()])
                finally:
                    response.close()
            except httpx.HTTPError as exc:
                time.sleep(attempts.failed(exc))
                continue
            wait = attempts.answered(response)
            if wait is None:
                return self._answer(call, response, body)
            time.sleep(wait)
