"""Reconnect policy: exponential backoff with full jitter, a cap, optional max tries.

Full jitter (delay = uniform(0, min(cap, base * factor**n))) spreads a fleet of clients
that lost the same server, so a restart does not meet a thundering herd. The attempt
counter resets once a connection has stayed up for `reset_after` seconds, so a flapping
link keeps backing off while a rare drop reconnects fast.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from ..exceptions import IotCommuteError

__all__ = ["Backoff", "is_fatal"]


def is_fatal(exc: BaseException) -> bool:
    """True for errors that retrying cannot fix (bad credentials, forbidden, bad version)."""
    return isinstance(exc, IotCommuteError) and exc.fatal


class Backoff:
    """Stateful delay generator; one instance per reconnecting client."""

    def __init__(
        self,
        *,
        initial: float = 0.25,
        factor: float = 2.0,
        max_delay: float = 30.0,
        max_retries: int | None = None,
        reset_after: float = 10.0,
        jitter: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if initial < 0 or factor < 1 or max_delay < 0:
            raise ValueError("backoff needs initial >= 0, factor >= 1, max_delay >= 0")
        self.initial = initial
        self.factor = factor
        self.max_delay = max_delay
        self.max_retries = max_retries
        self.reset_after = reset_after
        self._jitter = jitter
        self._clock = clock
        self.attempt = 0  # failed attempts since the last stable connection
        self._up_since: float | None = None

    def connected(self) -> None:
        """A connection was established (the handshake succeeded)."""
        self._up_since = self._clock()

    def disconnected(self) -> None:
        """The connection ended; forget past failures if it had been stable."""
        if self._up_since is not None and self._clock() - self._up_since >= self.reset_after:
            self.attempt = 0
        self._up_since = None

    def reset(self) -> None:
        self.attempt = 0
        self._up_since = None

    def next_delay(self) -> float | None:
        """Seconds to wait before the next attempt, or None when retries are exhausted."""
        if self.max_retries is not None and self.attempt >= self.max_retries:
            return None
        ceiling = min(self.max_delay, self.initial * self.factor ** min(self.attempt, 64))
        self.attempt += 1
        return ceiling * self._jitter()
