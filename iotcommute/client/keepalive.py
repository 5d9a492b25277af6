"""Keep-alive for one connection: any frame proves life (docs/protocol.md, section 9).

We ping every `ping_interval`; the connection is dead when no frame of any kind (pong, tick,
server ping) arrived for ping_interval + ping_timeout, or nothing for `idle_timeout`. A
reader that we paused ourselves (backpressure from a slow consumer) is never silence; a
server that stops reading our frames for twice that long is dead too.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

from ..protocol.events import State

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["KeepAlive"]


class KeepAlive:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ping: bytes | None = None
        self.ping_sent = 0.0
        #: seconds from our last answered ping to its pong
        self.rtt: float | None = None

    def pong(self, payload: bytes) -> None:
        if self.ping is not None and payload == self.ping:
            self.rtt = time.monotonic() - self.ping_sent
            self.ping = None

    async def run(self, transport: asyncio.Transport) -> None:
        eng = self.engine
        opts = eng.opts
        periods = [x for x in (opts.ping_interval, opts.ping_timeout, opts.idle_timeout) if x]
        if not periods:
            return
        limit = (opts.ping_interval or 0) + (opts.ping_timeout or 0)
        while not transport.is_closing():
            await asyncio.sleep(max(0.05, min(periods) / 4))
            now = time.monotonic()
            silent = 0.0 if eng.reading_paused else now - eng.last_rx
            if opts.idle_timeout and silent > opts.idle_timeout:
                return eng.dead(transport, f"no data for {opts.idle_timeout}s")
            if opts.ping_interval and opts.ping_timeout and silent > limit:
                return eng.dead(transport, f"no pong or other frame for {limit:g}s")
            if eng.write_paused and now - eng.last_rx > max(limit, 1.0) * 2:
                return eng.dead(transport, "the server stopped reading")
            if not opts.ping_interval or now - self.ping_sent < opts.ping_interval:
                continue
            ws = eng.ws
            if ws is not None and ws.state is State.OPEN:
                # a ping unanswered for a whole interval is replaced: other frames may
                # have proved life meanwhile, and the rtt then comes from the next one
                self.ping, self.ping_sent = os.urandom(4), now
                ws.send_ping(self.ping)
                eng.write(ws.data_to_send())
