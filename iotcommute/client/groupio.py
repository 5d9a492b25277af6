"""Commits of a consumer-group member on the engine's clock (the session has none).

The session (client/group.py state) decides what may be committed; this part says when:
after a read that brought enough processed ticks, at least once a second, and once more
before a graceful close, which then waits (at most close_timeout) for the server's answer
so the partition's next owner starts after it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..protocol.events import State

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["GroupCommits"]


class GroupCommits:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        #: a graceful close waiting for the last commit's answer: (code, reason)
        self.close_after: tuple[int, str] | None = None

    def after_read(self) -> None:
        """After a read (or an iterator step): commit when enough was processed; a close
        waiting for the last commit's answer goes on once it came."""
        session = self.engine.session
        g = session.group
        assert g is not None
        if self.close_after is not None:
            if g.inflight is None and not session.flush_commits():
                self.wait_over()
        elif g.due:
            session.flush_commits()

    def last_commit(self, code: int, reason: str) -> bool:
        """Before a graceful close: commit what was processed and close once the server
        answered (bounded by close_timeout). True when the close waits."""
        eng = self.engine
        if self.close_after is not None:
            return True
        eng.session.closing = True  # no more ticks for the user: they would not be committed
        eng.resume_reading()  # a full iterator queue must not hold back the commit's answer
        if eng.in_read:
            # stop() from a callback: its tick is processed once it returns; the read's
            # end (after_read) commits it
            self.close_after = (code, reason)
        else:
            if not eng.session.flush_commits():
                return False
            self.close_after = (code, reason)
            eng.write_session()
        if eng.loop is not None:
            eng.loop.call_later(eng.opts.close_timeout, self.wait_over)
        return True

    def wait_over(self) -> None:
        """The last commit was answered (or close_timeout passed): close now."""
        after, self.close_after = self.close_after, None
        eng = self.engine
        ws, t = eng.ws, eng.transport
        if after is not None and ws is not None and t is not None and ws.state is State.OPEN:
            eng.close_now(ws, t, *after)

    async def run(self) -> None:
        """At least one commit a second while connected."""
        eng = self.engine
        while True:
            await asyncio.sleep(1.0)
            if self.close_after is None and eng.session.flush_commits():
                eng.write_session()
