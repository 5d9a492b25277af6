"""AsyncCommute: the asyncio REST client (httpx.AsyncClient); the rest is in base.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx

from .base import ClientBase, T, _Call, _next_cursor, _ticks

__all__ = ["AsyncCommute"]


class AsyncCommute(ClientBase):
    """asyncio twin of Commute: the same options and calls, awaitable, the same errors.

    Real non-blocking I/O on the running loop (not the blocking client in a thread). Its
    keep-alive connections belong to the loop that opened them: used from another loop (a
    second asyncio.run), the client opens new ones. Use it from one loop at a time.
    """

    _http: httpx.AsyncClient | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._http is None or self._loop is not loop:
            # A pool of another (finished) loop cannot be closed from here; it is dropped.
            self._http, self._loop = httpx.AsyncClient(**self._http_options), loop
        return self._http

    async def aclose(self) -> None:
        """Close pooled connections (the client may still be used; it reconnects)."""
        http, self._http = self._http, None
        if http is not None and self._loop is asyncio.get_running_loop():
            await http.aclose()

    async def __aenter__(self) -> AsyncCommute:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ API

    async def generate_session(self, request_token: str, api_secret: str) -> dict[str, Any]:
        """Awaitable `Commute.generate_session`: stores and returns the access token."""
        return await self._send(self._generate_session_call(request_token, api_secret))

    async def invalidate_session(self) -> bool:
        """Awaitable `Commute.invalidate_session`: logs out and forgets the token."""
        call = self._logout_call()
        return True if call is None else await self._send(call)

    async def devices(self) -> list[dict[str, Any]]:
        """Awaitable `Commute.devices`."""
        return await self._send(self._devices_call())

    async def device(self, device_id: str) -> dict[str, Any]:
        """Awaitable `Commute.device`."""
        return await self._send(self._device_call(device_id))

    async def history(
        self, device_id: str, since: int | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Awaitable `Commute.history`."""
        return _ticks(await self.history_page(device_id, since, limit))

    async def history_page(
        self, device_id: str, since: int | None = None, limit: int = 100
    ) -> dict[str, Any]:
        """Awaitable `Commute.history_page`."""
        return await self._send(self._history_call(device_id, since, limit))

    async def iter_history(
        self, device_id: str, since: int | None = None, page_size: int = 500
    ) -> AsyncIterator[dict[str, Any]]:
        """`Commute.iter_history` as an async iterator."""
        cursor = since
        while True:
            page = await self.history_page(device_id, cursor, page_size)
            for tick in _ticks(page):
                yield tick
            cursor = _next_cursor(device_id, page, cursor)
            if cursor is None:
                return

    async def send_command(
        self, device_id: str, data: Any, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Awaitable `Commute.send_command`."""
        return await self._send(self._command_call(device_id, data, timeout))

    # ------------------------------------------------------------------ HTTP

    async def _send(self, call: _Call[T]) -> T:
        attempts = self._attempts(call)
        while True:
            try:
                response = await self._client().send(self._request(call), stream=True)
                try:
                    body = b"".join(
                        [attempts.take(chunk) async for chunk in response.aiter_bytes()]
                    )
                finally:
                    await response.aclose()
            except httpx.HTTPError as exc:
                await asyncio.sleep(attempts.failed(exc))
                continue
            wait = attempts.answered(response)
            if wait is None:
                return self._answer(call, response, body)
            await asyncio.sleep(wait)
