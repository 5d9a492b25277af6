"""The REST client: the login flow, devices, history and commands, blocking or asyncio.

    from iotcommute import Commute
    api = Commute("demo-app")
    print(api.login_url())                     # the user logs in there, you get a request_token
    api.generate_session(request_token, api_secret="...")   # the secret never leaves this process
    for dev in api.devices():
        print(dev["id"], api.history(dev["id"], limit=5))

`AsyncCommute` is the asyncio twin: the same calls, awaitable, the same errors.

Where things are: `base.py` holds everything the two clients share (options, building each
call, reading answers, mapping errors, the retry decisions, the login flow); `sync.py`
(`Commute`) and `aio.py` (`AsyncCommute`) only carry a call over HTTP and wait.

Why httpx: one well-kept library that has a blocking and an asyncio client with the same
request, response, timeout and exception types, so everything but the waiting is written once.
Both clients pool keep-alive connections (bounded, with separate connect and read timeouts),
speak through HTTP and HTTPS proxies (credentials in the proxy URL become Proxy-Authorization;
https:// targets are tunnelled with CONNECT), and verify certificates by default. It is pure
Python on top of h11, which the package already uses, and follows no redirect unless asked.
urllib3 has no asyncio client (the asyncio twin used to speak HTTP/1.1 itself, with its own
pool and retry loop, and no proxy); aiohttp has no blocking client. Retries are not httpx's: a
call is retried by the package's one backoff policy (`iotcommute.backoff`), see `base.py`.
"""

from __future__ import annotations

from .aio import AsyncCommute
from .base import MAX_RESPONSE, MAX_RETRY_AFTER, checksum
from .sync import Commute

__all__ = ["MAX_RESPONSE", "MAX_RETRY_AFTER", "AsyncCommute", "Commute", "checksum"]
