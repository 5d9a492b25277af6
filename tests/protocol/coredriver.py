"""A minimal asyncio driver of the sans-IO ``ClientProtocol`` over a real socket (tests only).

The loop is the one every transport runs: connect -> ``send_request()`` -> write
``data_to_send()`` -> read -> ``receive_data()`` -> ``events_received()`` -> act -> write,
until EOF.  By default it echoes text and binary messages back, like the Autobahn
testsuite's client does, so a raw server can check what the core made of its bytes.

Kept deliberately dumb (no buffering tricks, no flow control) so that a failing test
points at the core, not at the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from iotcommute.protocol import ClientProtocol
from iotcommute.protocol.events import Accepted, Event, Failed, State

log = logging.getLogger("iotcommute.tests.coredriver")

#: Called with (protocol, event) for every event; may call proto.send_*/close().
OnEvent = Callable[[ClientProtocol, Event], None]
#: Called once with the protocol when the handshake succeeds.
OnOpen = Callable[[ClientProtocol], None]


@dataclass
class Outcome:
    events: list[Event] = field(default_factory=list)
    state: State = State.CONNECTING
    timed_out: bool = False

    @property
    def accepted(self) -> Accepted | None:
        for ev in self.events:
            if isinstance(ev, Accepted):
                return ev
        return None

    @property
    def failed(self) -> BaseException | None:
        for ev in self.events:
            if isinstance(ev, Failed):
                exc: BaseException = ev.exc
                return exc
        return None

    @property
    def messages(self) -> list[str | bytes]:
        return [ev for ev in self.events if isinstance(ev, (str, bytes))]

    def of(self, kind: type[Any]) -> list[Any]:
        return [ev for ev in self.events if isinstance(ev, kind)]


def echo(proto: ClientProtocol, ev: Event) -> None:
    """Send text/binary messages back while the connection is open."""
    if proto.state is not State.OPEN:
        return
    if isinstance(ev, str):
        proto.send_text(ev)
    elif isinstance(ev, bytes):
        proto.send_binary(ev)


async def run_client(
    port: int,
    *,
    path: str = "/",
    on_event: OnEvent | None = echo,
    on_open: OnOpen | None = None,
    timeout: float = 10.0,
    linger: float = 2.0,
    read_size: int = 65536,
    **proto_kwargs: Any,
) -> Outcome:
    """Connect to 127.0.0.1:port and drive a ClientProtocol until EOF (or ``timeout``).

    After the protocol reaches CLOSED we wait ``linger`` seconds for the server to close
    TCP first (RFC 6455 7.1.1), then close it ourselves.
    """
    out = Outcome()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    proto = ClientProtocol(host=f"127.0.0.1:{port}", path=path, **proto_kwargs)
    try:
        proto.send_request()
        writer.write(proto.data_to_send())
        opened = False
        eof_fed = False
        while True:
            left = deadline - loop.time()
            if proto.state is State.CLOSED:
                left = min(left, linger)
            if left <= 0:
                out.timed_out = proto.state is not State.CLOSED
                break
            try:
                data = await asyncio.wait_for(reader.read(read_size), left)
            except TimeoutError:
                out.timed_out = proto.state is not State.CLOSED
                break
            except (ConnectionError, OSError):
                data = b""
            eof_fed = not data
            proto.receive_data(data)
            for ev in cast("list[Event]", proto.events_received()):
                out.events.append(ev)
                if isinstance(ev, Accepted) and not opened:
                    opened = True
                    if on_open is not None:
                        on_open(proto)
                elif on_event is not None:
                    on_event(proto, ev)
            pending = proto.data_to_send()
            if pending and not writer.is_closing():
                writer.write(pending)
                with contextlib.suppress(ConnectionError, OSError):
                    await asyncio.wait_for(writer.drain(), max(0.1, deadline - loop.time()))
            if not data:
                break
            if not opened and proto.state is State.CLOSED:
                # The handshake failed: there is no closing handshake to wait for.
                break
        if not eof_fed:
            # Collect what the core says about the end of the stream too.
            with contextlib.suppress(Exception):
                proto.receive_data(b"")
                out.events.extend(cast("list[Event]", proto.events_received()))
    finally:
        out.state = proto.state
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1.0)
    return out
