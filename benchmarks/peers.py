"""The benchmark subjects: iotcommute and the peer libraries, each used as its docs advise.

Every subject implements three operations against the firehose process (firehose.py):

* ``recv(url, counter, compressed)``  receive until ``counter`` has seen every item;
  each message goes to ``counter.feed`` or, for the callback subjects, to the same work as
  one callback (``counter.callback``; ticks are decoded to dicts);
* ``send(url, n, text, batched)``     publish ``n`` masked text frames into the sink and
  wait for its ``done``: one socket write per frame, or (``batched``) the frames of a
  burst gathered into ~64 KiB writes, for the subjects that can (``send_modes``);
* ``latency(url, m, rate, payload)``  ``m`` round trips of a small JSON text against
  the echo at ``rate``/s.

Subjects run in this process on one persistent uvloop loop (where the library is
asyncio based), except the iotcommute *fallback*, which runs in a worker subprocess started
with ``IOTCOMMUTE_NO_EXTENSIONS=1`` (``python -m benchmarks.peers --worker``). A subprocess
is the only honest way: the selector modules pick compiled or pure code at import time,
and re-importing half the package in-process would measure a configuration nobody runs.
The parent still times the call (a pipe round trip, ~0.1 ms, is noise next to a round).

Peers are optional: ``Subject.skip_reason()`` says why one cannot run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, cast

from benchmarks import firehose

T = TypeVar("T")
OnMessage = Callable[[Any], None]
TIMEOUT = float(os.environ.get("IOTCOMMUTE_BENCH_TIMEOUT", "120"))


# --------------------------------------------------------------------------- decoding
def _loader(decoder: str) -> Callable[[Any], Any]:
    if decoder == "orjson":
        import orjson

        return orjson.loads
    if decoder == "json":
        return json.loads
    if decoder == "iotcommute":
        from iotcommute import payload

        return payload.loads
    raise ValueError(decoder)


class Counter:
    """The counting callback every subject delivers to; ticks are decoded to dicts."""

    def __init__(self, case: firehose.Case, n_messages: int, decoder: str = "orjson") -> None:
        self.case = case
        self.n_messages = n_messages
        self.decoder = decoder
        self.expected = case.expected(n_messages)
        self.count = 0
        self.last: Any = None
        if case.kind == "ticks-json":
            loads = _loader(decoder)

            def feed(msg: Any) -> bool:
                self.last = loads(msg)
                self.count += 1
                return self.count >= self.expected

        elif case.kind == "ticks-batch":
            from iotcommute import payload

            decode = payload.decode_batch

            def feed(msg: Any) -> bool:
                ticks = decode(msg)
                self.last = ticks[-1]
                self.count += len(ticks)
                return self.count >= self.expected

        else:

            def feed(msg: Any) -> bool:
                self.last = msg
                self.count += 1
                return self.count >= self.expected

        self.feed: Callable[[Any], bool] = feed

    def callback(self, finish: Callable[[], None]) -> Callable[[Any], None]:
        """``feed`` as a one-argument callback that calls ``finish()`` once the count is
        reached: the consumer of the callback subjects (picows, wsproto, the core). Its body
        is the one the public APIs' ``on_message`` runs (``_recv_callback``): one Python call
        a message for every subject, whatever its API shape."""
        expected = self.expected
        if self.case.kind == "ticks-json":
            loads = _loader(self.decoder)

            def on_json(msg: Any) -> None:
                self.last = loads(msg)
                self.count += 1
                if self.count >= expected:
                    finish()

            return on_json
        if self.case.kind == "ticks-batch":
            from iotcommute import payload

            decode = payload.decode_batch

            def on_batch(msg: Any) -> None:
                ticks = decode(msg)
                self.last = ticks[-1]
                self.count += len(ticks)
                if self.count >= expected:
                    finish()

            return on_batch

        def on_message(msg: Any) -> None:
            self.last = msg
            self.count += 1
            if self.count >= expected:
                finish()

        return on_message

    @property
    def done(self) -> bool:
        return self.count >= self.expected


# --------------------------------------------------------------------------- loop
_runner: asyncio.Runner | None = None


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run on one persistent uvloop loop (plain asyncio when uvloop is missing)."""
    global _runner
    if _runner is None:
        try:
            import uvloop

            _runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        except ImportError:  # pragma: no cover - uvloop is a dependency on CPython
            _runner = asyncio.Runner()
    return _runner.run(asyncio.wait_for(coro, TIMEOUT))


def _host_path(url: str) -> tuple[str, str]:
    rest = url.split("://", 1)[1]
    host, _, path = rest.partition("/")
    return host, "/" + path


# --------------------------------------------------------------------------- callback conns
#: batched sends gather frames into writes of about this many bytes (the engine's cork size)
BATCH_BYTES = 65536


class CallbackConn:
    """What the callback-style subjects (core, picows, wsproto) expose to the drivers."""

    closed: asyncio.Future[None]

    def send_text(self, text: str) -> None:
        raise NotImplementedError

    def queue_text(self, text: str) -> None:
        """Frame ``text`` without writing it (batched sends); ``flush`` writes the queue."""
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def send_binary(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


Opener = Callable[[str, OnMessage, bool], Awaitable[CallbackConn]]


async def cb_recv(opener: Opener, url: str, counter: Counter, compressed: bool) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def finish() -> None:
        if not done.done():
            done.set_result(None)

    conn = await opener(url, counter.callback(finish), compressed)
    await asyncio.wait([done, conn.closed], return_when=asyncio.FIRST_COMPLETED)
    conn.close()
    await conn.closed


async def cb_send(opener: Opener, url: str, n: int, text: str, batched: bool) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def on_message(msg: Any) -> None:
        if not done.done():
            done.set_result(None)

    conn = await opener(url, on_message, False)
    if batched:
        queue, flush = conn.queue_text, conn.flush
        per_write = max(1, BATCH_BYTES // max(1, len(text)))
        for i in range(1, n + 1):
            queue(text)
            if i % per_write == 0:
                flush()
        flush()
    else:
        send = conn.send_text
        for _ in range(n):
            send(text)
    await done
    conn.close()
    await conn.closed


async def paced(m: int, rate: float, one: Callable[[], Awaitable[float]]) -> list[float]:
    """m round trips scheduled at absolute slots, so late slots catch up (steady rate)."""
    rtts = []
    interval = 1.0 / rate
    start = time.perf_counter()
    for i in range(m):
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        rtts.append(await one())
    return rtts


async def cb_latency(opener: Opener, url: str, m: int, rate: float, payload: str) -> list[float]:
    loop = asyncio.get_running_loop()
    box: list[asyncio.Future[float]] = []

    def on_message(msg: Any) -> None:
        fut = box[0]
        if not fut.done():
            fut.set_result(time.perf_counter())

    conn = await opener(url, on_message, False)

    async def one() -> float:
        box[:] = [loop.create_future()]
        t0 = time.perf_counter()
        conn.send_text(payload)
        return await box[0] - t0

    rtts = await paced(m, rate, one)
    conn.close()
    await conn.closed
    return rtts


# --------------------------------------------------------------------------- subjects
class Subject:
    """A client under test. ``module`` is imported to decide availability and version."""

    name = ""
    module = ""
    deflate = True  # can receive permessage-deflate
    decoders: tuple[str, ...] = ("orjson",)  # JSON decoder used for tick cases
    #: "per-frame": one socket write per frame; "batched": frames gathered into big writes
    send_modes: tuple[str, ...] = ("per-frame",)
    ticks_only = False  # only the tick cases apply (a client that decodes everything)
    batches_only = False  # only the binary batch cases apply (the lean rows form)

    def skip_reason(self) -> str | None:
        try:
            importlib.import_module(self.module)
        except ImportError as exc:
            return f"{self.module} not installed ({exc})"
        return None

    def version(self) -> str:
        try:
            from importlib.metadata import version

            return version(self.module.split(".")[0].replace("_", "-"))
        except Exception:
            return "?"

    def recv(self, url: str, counter: Counter, compressed: bool) -> None:
        raise NotImplementedError

    def send(self, url: str, n: int, text: str, batched: bool = False) -> None:
        raise NotImplementedError

    def latency(self, url: str, m: int, rate: float, payload: str) -> list[float]:
        raise NotImplementedError


class CallbackSubject(Subject):
    async def open(self, url: str, on_message: OnMessage, compressed: bool) -> CallbackConn:
        raise NotImplementedError

    def recv(self, url: str, counter: Counter, compressed: bool) -> None:
        run(cb_recv(self.open, url, counter, compressed))

    def send(self, url: str, n: int, text: str, batched: bool = False) -> None:
        run(cb_send(self.open, url, n, text, batched))

    def latency(self, url: str, m: int, rate: float, payload: str) -> list[float]:
        return run(cb_latency(self.open, url, m, rate, payload))


# ---- iotcommute core: ClientProtocol driven by a minimal asyncio BufferedProtocol
class _CoreConn(asyncio.BufferedProtocol, CallbackConn):
    """Reads land in the core's own memory (``get_buffer``/``buffer_updated``), as an
    engine should feed it; ``data_received`` is kept for loops that call it."""

    def __init__(self, proto: Any, on_message: OnMessage, loop: asyncio.AbstractEventLoop) -> None:
        from iotcommute.protocol import events

        self.p = proto
        self.on_message = on_message
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._events = events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence the cast.
        self.transport = cast(asyncio.Transport, transport)
        self.p.send_request()
        self.transport.write(self.p.data_to_send())

    def get_buffer(self, sizehint: int) -> memoryview:
        view: memoryview = self.p.get_buffer(sizehint)
        return view

    def buffer_updated(self, nbytes: int) -> None:
        self.p.buffer_updated(nbytes)
        self._after_read()

    def data_received(self, data: bytes) -> None:
        self.p.receive_data(data)
        self._after_read()

    def _after_read(self) -> None:
        p = self.p
        on_message = self.on_message
        for ev in p.events_received():
            tp = type(ev)
            if tp is bytes or tp is str:
                on_message(ev)
            elif tp is self._events.Accepted:
                if not self.opened.done():
                    self.opened.set_result(None)
            elif tp is self._events.Failed:
                if not self.opened.done():
                    self.opened.set_exception(ev.exc)
        out = p.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)
        if p.state == self._events.State.CLOSED and self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool | None:
        self.p.receive_data(b"")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("lost before open"))
        if not self.closed.done():
            self.closed.set_result(None)

    def send_text(self, text: str) -> None:
        self.p.send_text(text)
        assert self.transport is not None
        self.transport.write(self.p.data_to_send())

    def queue_text(self, text: str) -> None:
        self.p.send_text(text)

    def flush(self) -> None:
        assert self.transport is not None
        self.transport.write(self.p.data_to_send())

    def send_binary(self, data: bytes) -> None:
        self.p.send_binary(data)
        assert self.transport is not None
        self.transport.write(self.p.data_to_send())

    def close(self) -> None:
        from iotcommute.protocol.events import State

        if self.p.state == State.OPEN:
            self.p.close(1000)
            assert self.transport is not None
            self.transport.write(self.p.data_to_send())


class IotcommuteCore(CallbackSubject):
    """iotcommute.protocol.ClientProtocol on a bare asyncio Protocol (the fair "core")."""

    name = "iotcommute-core"
    module = "iotcommute.protocol"
    decoders = ("iotcommute",)
    send_modes = ("per-frame", "batched")

    def version(self) -> str:
        from iotcommute import __version__
        from iotcommute.protocol import frames

        return f"{__version__} ({'compiled' if frames.SPEEDUPS else 'pure'})"

    async def open(self, url: str, on_message: OnMessage, compressed: bool) -> CallbackConn:
        from iotcommute.protocol import ClientProtocol

        loop = asyncio.get_running_loop()
        host, path = _host_path(url)
        hostname, _, port = host.partition(":")
        proto = ClientProtocol(host, path, compression=compressed, max_size=2**26)
        _, conn = await loop.create_connection(
            lambda: _CoreConn(proto, on_message, loop), hostname, int(port)
        )
        await conn.opened
        return conn


# ---- picows: a WSListener subclass (frame level; we assemble fragments ourselves)
class Picows(CallbackSubject):
    name = "picows"
    module = "picows"
    deflate = False  # picows does not implement permessage-deflate

    async def open(self, url: str, on_message: OnMessage, compressed: bool) -> CallbackConn:
        from picows import WSCloseCode, WSListener, WSMsgType, ws_connect

        loop = asyncio.get_running_loop()
        closed: asyncio.Future[None] = loop.create_future()
        TEXT, BINARY, CONT, CLOSE = (
            WSMsgType.TEXT,
            WSMsgType.BINARY,
            WSMsgType.CONTINUATION,
            WSMsgType.CLOSE,
        )

        class Listener(WSListener):
            parts: list[bytes] | None = None
            text = False

            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                mt = frame.msg_type
                if mt is BINARY or mt is TEXT:
                    if frame.fin:
                        on_message(
                            frame.get_payload_as_utf8_text()
                            if mt is TEXT
                            else frame.get_payload_as_bytes()
                        )
                    else:
                        self.parts = [frame.get_payload_as_bytes()]
                        self.text = mt is TEXT
                elif mt is CONT:
                    assert self.parts is not None
                    self.parts.append(frame.get_payload_as_bytes())
                    if frame.fin:
                        data = b"".join(self.parts)
                        self.parts = None
                        on_message(data.decode() if self.text else data)
                elif mt is CLOSE:
                    if not transport.is_close_frame_sent:
                        transport.send_close(frame.get_close_code())
                    transport.disconnect()

            def on_ws_disconnected(self, transport: Any) -> None:
                if not closed.done():
                    closed.set_result(None)

        transport, _ = await ws_connect(Listener, url, max_frame_size=2**26)

        class Conn(CallbackConn):
            def send_text(self, text: str) -> None:
                transport.send(TEXT, text.encode())

            def send_binary(self, data: bytes) -> None:
                transport.send(BINARY, data)

            def close(self) -> None:
                if not transport.is_close_frame_sent and not transport.is_disconnected:
                    transport.send_close(WSCloseCode.OK)

        conn = Conn()
        conn.closed = closed
        return conn


# ---- wsproto: the sans-IO peer driven over a raw asyncio Protocol
class Wsproto(CallbackSubject):
    name = "wsproto"
    module = "wsproto"
    send_modes = ("per-frame", "batched")

    async def open(self, url: str, on_message: OnMessage, compressed: bool) -> CallbackConn:
        from wsproto import ConnectionType, WSConnection
        from wsproto.connection import ConnectionState
        from wsproto.events import (
            AcceptConnection,
            BytesMessage,
            CloseConnection,
            Message,
            Ping,
            RejectConnection,
            Request,
            TextMessage,
        )
        from wsproto.extensions import PerMessageDeflate

        loop = asyncio.get_running_loop()
        host, path = _host_path(url)
        hostname, _, port = host.partition(":")

        class Conn(asyncio.Protocol, CallbackConn):
            def __init__(self) -> None:
                self.ws = WSConnection(ConnectionType.CLIENT)
                self.opened: asyncio.Future[None] = loop.create_future()
                self.closed = loop.create_future()
                self.parts: list[Any] = []
                self.out: list[bytes] = []
                self.t: asyncio.Transport | None = None

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.t = cast(asyncio.Transport, transport)
                ext = [PerMessageDeflate()] if compressed else []
                self.t.write(self.ws.send(Request(host=host, target=path, extensions=ext)))

            def data_received(self, data: bytes) -> None:
                ws = self.ws
                t = self.t
                assert t is not None
                ws.receive_data(data)
                for ev in ws.events():
                    if isinstance(ev, BytesMessage | TextMessage):
                        if ev.message_finished and not self.parts:
                            on_message(ev.data)
                        else:
                            self.parts.append(ev.data)
                            if ev.message_finished:
                                empty = "" if isinstance(ev, TextMessage) else b""
                                on_message(empty.join(self.parts))
                                self.parts = []
                    elif isinstance(ev, AcceptConnection):
                        self.opened.set_result(None)
                    elif isinstance(ev, Ping):
                        t.write(ws.send(ev.response()))
                    elif isinstance(ev, CloseConnection):
                        if ws.state == ConnectionState.REMOTE_CLOSING:
                            t.write(ws.send(ev.response()))
                        t.close()
                    elif isinstance(ev, RejectConnection):
                        self.opened.set_exception(ConnectionError("rejected"))

            def connection_lost(self, exc: Exception | None) -> None:
                if not self.opened.done():
                    self.opened.set_exception(ConnectionError("lost before open"))
                if not self.closed.done():
                    self.closed.set_result(None)

            def send_text(self, text: str) -> None:
                assert self.t is not None
                self.t.write(self.ws.send(Message(data=text)))

            def queue_text(self, text: str) -> None:
                self.out.append(self.ws.send(Message(data=text)))

            def flush(self) -> None:
                assert self.t is not None
                self.t.write(b"".join(self.out))
                self.out.clear()

            def send_binary(self, data: bytes) -> None:
                assert self.t is not None
                self.t.write(self.ws.send(Message(data=data)))

            def close(self) -> None:
                if self.ws.state == ConnectionState.OPEN and self.t is not None:
                    self.t.write(self.ws.send(CloseConnection(code=1000)))

        _, conn = await loop.create_connection(Conn, hostname, int(port))
        await conn.opened
        return conn


# ---- websockets: the asyncio client, `async for` over messages
class Websockets(Subject):
    name = "websockets"
    module = "websockets"

    def _connect(self, url: str, compressed: bool) -> Any:
        from websockets.asyncio.client import connect

        return connect(
            url, compression="deflate" if compressed else None, max_size=None, ping_interval=None
        )

    def recv(self, url: str, counter: Counter, compressed: bool) -> None:
        async def go() -> None:
            feed = counter.feed
            async with self._connect(url, compressed) as ws:
                async for msg in ws:
                    if feed(msg):
                        break

        run(go())

    def send(self, url: str, n: int, text: str, batched: bool = False) -> None:
        async def go() -> None:
            async with self._connect(url, False) as ws:
                for _ in range(n):
                    await ws.send(text)
                await ws.recv()

        run(go())

    def latency(self, url: str, m: int, rate: float, payload: str) -> list[float]:
        async def go() -> list[float]:
            async with self._connect(url, False) as ws:

                async def one() -> float:
                    t0 = time.perf_counter()
                    await ws.send(payload)
                    await ws.recv()
                    return time.perf_counter() - t0

                return await paced(m, rate, one)

        return run(go())


# ---- aiohttp: ClientSession.ws_connect
class Aiohttp(Subject):
    name = "aiohttp"
    module = "aiohttp"

    def recv(self, url: str, counter: Counter, compressed: bool) -> None:
        import aiohttp

        TEXT, BINARY = aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY

        async def go() -> None:
            feed = counter.feed
            async with (
                aiohttp.ClientSession() as session,
                session.ws_connect(url, compress=15 if compressed else 0, max_msg_size=0) as ws,
            ):
                async for msg in ws:
                    if (msg.type is TEXT or msg.type is BINARY) and feed(msg.data):
                        break

        run(go())

    def send(self, url: str, n: int, text: str, batched: bool = False) -> None:
        import aiohttp

        async def go() -> None:
            async with (
                aiohttp.ClientSession() as session,
                session.ws_connect(url, compress=0) as ws,
            ):
                for _ in range(n):
                    await ws.send_str(text)
                await ws.receive()

        run(go())

    def latency(self, url: str, m: int, rate: float, payload: str) -> list[float]:
        import aiohttp

        async def go() -> list[float]:
            async with (
                aiohttp.ClientSession() as session,
                session.ws_connect(url, compress=0) as ws,
            ):

                async def one() -> float:
                    t0 = time.perf_counter()
                    await ws.send_str(payload)
                    await ws.receive()
                    return time.perf_counter() - t0

                return await paced(m, rate, one)

        return run(go())


# ---- websocket-client: blocking recv loop in a thread
class WebsocketClient(Subject):
    name = "websocket-client"
    module = "websocket"
    deflate = False  # no permessage-deflate support

    def version(self) -> str:
        from importlib.metadata import version

        return version("websocket-client")

    def _in_thread(self, fn: Callable[[], T]) -> T:
        box: list[Any] = []

        def target() -> None:
            try:
                box.append((True, fn()))
            except BaseException as exc:  # re-raised in the caller
                box.append((False, exc))

        th = threading.Thread(target=target, daemon=True)
        th.start()
        th.join(TIMEOUT)
        if not box:
            raise TimeoutError("websocket-client round did not finish")
        ok, value = box[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def _connect(self, url: str) -> Any:
        import websocket

        # skip_utf8_validation: the documented speed switch; str decoding still validates.
        return websocket.create_connection(url, skip_utf8_validation=True, timeout=TIMEOUT)

    def recv(self, url: str, counter: Counter, compressed: bool) -> None:
        def go() -> None:
            ws = self._connect(url)
            feed = counter.feed
            recv = ws.recv
            try:
                while not feed(recv()):
                    pass
            finally:
                ws.close()

        self._in_thread(go)

    def send(self, url: str, n: int, text: str, batched: bool = False) -> None:
        def go() -> None:
            ws = self._connect(url)
            try:
                for _ in range(n):
                    ws.send(text)
                ws.recv()
            finally:
                ws.close()

        self._in_thread(go)

    def latency(self, url: str, m: int, rate: float, payload: str) -> list[float]:
        def go() -> list[float]:
            ws = self._connect(url)
            rtts = []
            interval = 1.0 / rate
            try:
                start = time.perf_counter()
                for i in range(m):
                    delay = start + i * interval - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    t0 = time.perf_counter()
                    ws.send(payload)
                    ws.recv()
                    rtts.append(time.perf_counter() - t0)
            finally:
                ws.close()
            return rtts

        return self._in_thread(go)


# ---- iotcommute's public asyncio client: AsyncWebSocket with callbacks
def _recv_callback(
    counter: Counter, kind: str, per_batch: bool, finish: Callable[[], None], rows: bool = False
) -> tuple[str, Callable[..., None]]:
    """(attribute, callback) of the client API for one receive case.

    Raw cases use ``on_message`` (bytes/str untouched); tick cases let the library decode,
    either one ``on_tick`` call per tick or (``per_batch``) one ``on_ticks`` call per
    network read with the list of new ticks, or (``rows``) one ``on_tick_rows`` call per
    binary batch with the lean row tuples instead of dicts.
    """
    expected = counter.expected
    if rows:

        def on_tick_rows(fields: tuple[str, ...], rows: list[tuple[Any, ...]], ws: Any) -> None:
            counter.last = rows[-1]
            counter.count += len(rows)
            if counter.count >= expected:
                finish()

        return "on_tick_rows", on_tick_rows
    if not kind.startswith("ticks"):

        def on_message(msg: Any, ws: Any) -> None:
            counter.last = msg
            counter.count += 1
            if counter.count >= expected:
                finish()

        return "on_message", on_message
    if per_batch:

        def on_ticks(ticks: list[dict[str, Any]], ws: Any) -> None:
            counter.last = ticks[-1]
            counter.count += len(ticks)
            if counter.count >= expected:
                finish()

        return "on_ticks", on_ticks

    def on_tick(tick: dict[str, Any], ws: Any) -> None:
        counter.last = tick
        counter.count += 1
        if counter.count >= expected:
            finish()

    return "on_tick", on_tick


class IotcommuteAio(Subject):
    """``iotcommute.AsyncWebSocket`` as the README shows it: ``on_message`` (raw) for the
    raw binary/text cases, the echo and the sink; ``on_tick`` for the tick cases (the
    library decodes JSON and batches). The ``-ticks`` variant (``per_batch``) takes the
    tick cases with ``on_ticks`` (one call per network read with a list of ticks); the
    ``-rows`` variant takes the binary batch cases with ``on_tick_rows`` (the lean form).
    """

    name = "iotcommute-aio"
    module = "iotcommute"
    api = "AsyncWebSocket"
    decoders = ("iotcommute",)
    # The public APIs cork: a burst of sends goes out in ~64 KiB writes (see aio.py).
    send_modes = ("batched",)
    per_batch = False
    rows = False

    def skip_reason(self) -> str | None:
        try:
            mod = importlib.import_module(self.module)
        except ImportError as exc:
            return f"{self.module} not installed ({exc})"
        return None if hasattr(mod, self.api) else f"iotcommute has no {self.api}"

    def __init__(self, per_batch: bool = False, rows: bool = False) -> None:
        self.per_batch = per_batch
        self.rows = rows
        if per_batch:
            self.name += "-ticks"
            self.ticks_only = True
        if rows:
            self.name += "-rows"
            self.ticks_only = self.batches_only = True

    def version(self) -> str:
        from iotcommute import __version__
        from iotcommute.protocol import frames

        return f"{__version__} ({'compiled' if frames.SPEEDUPS else 'pure'})"

    def _client(self, url: str, compressed: bool) -> Any:
        from iotcommute import AsyncWebSocket

        return AsyncWebSocket(
            "bench-key",
            "bench-device",
            "client",
            url=url,
            ping_interval=None,
            reconnect=False,
            compression=compressed,
            max_size=2**26,
            subscribe=None,
            iterate=False,
        )

    def recv(self, url: str, counter: Counter, compressed: bool) -> None:
        async def go() -> None:
            loop = asyncio.get_running_loop()
            done: asyncio.Future[None] = loop.create_future()

            def finish() -> None:
                if not done.done():
                    done.set_result(None)

            ws = self._client(url, compressed)
            attr, callback = _recv_callback(
                counter, counter.case.kind, self.per_batch, finish, self.rows
            )
            setattr(ws, attr, callback)
            await ws.connect()
            ended = asyncio.ensure_future(ws.wait_closed())
            await asyncio.wait([done, ended], return_when=asyncio.FIRST_COMPLETED)
            from iotcommute.exceptions import ConnectionClosedOK

            # The server's close may have arrived in the read that completed the count.
            with contextlib.suppress(ConnectionClosedOK):
                await ws.close()
            if not ended.done():
                ended.cancel()
            with contextlib.suppress(BaseException):
                await ended

        run(go())

    def _raw(
        self, url: str, body: Callable[[Any, Callable[[], Awaitable[float]]], Awaitable[T]]
    ) -> T:
        async def go() -> T:
            loop = asyncio.get_running_loop()
            box: list[asyncio.Future[float]] = [loop.create_future()]

            def on_message(msg: Any, ws: Any) -> None:
                if not box[0].done():
                    box[0].set_result(time.perf_counter())

            async def next_message() -> float:
                t = await box[0]
                box[0] = loop.create_future()
                return t

            ws = self._client(url, False)
            ws.on_message = on_message
            await ws.connect()
            try:
                return await body(ws, next_message)
            finally:
                await ws.close()

        return run(go())

    def send(self, url: str, n: int, text: str, batched: bool = True) -> None:
        async def body(ws: Any, next_message: Callable[[], Awaitable[float]]) -> None:
            for _ in range(n):
                await ws.send(text)
            await next_message()

        self._raw(url, body)

    def latency(self, url: str, m: int, rate: float, payload: str) -> list[float]:
        async def body(ws: Any, next_message: Callable[[], Awaitable[float]]) -> list[float]:
            async def one() -> float:
                t0 = time.perf_counter()
                await ws.send(payload)
                return await next_message() - t0

            return await paced(m, rate, one)

        return self._raw(url, body)


# ---- iotcommute's public threaded client: WebSocket(...).connect(threaded=True)
class IotcommuteSync(IotcommuteAio):
    """``iotcommute.WebSocket`` as the README shows it: callbacks run on the client's own
    loop thread; the benchmark thread only waits (recv) or calls ``send`` (send, latency).
    """

    name = "iotcommute-sync"
    module = "iotcommute"
    api = "WebSocket"

    def _sync_client(self, url: str, compressed: bool) -> Any:
        from iotcommute import WebSocket

        return WebSocket(
            "bench-key",
            "bench-device",
            "client",
            url=url,
            ping_interval=None,
            reconnect=False,
            compression=compressed,
            max_size=2**26,
            subscribe=None,
        )

    def _session(self, ws: Any, body: Callable[[], T]) -> T:
        opened = threading.Event()
        ws.on_connect = lambda *args: opened.set()
        ws.connect(threaded=True)
        try:
            if not opened.wait(TIMEOUT):
                raise TimeoutError(f"iotcommute-sync did not connect: {ws.error!r}")
            return body()
        finally:
            ws.close()
            if not ws.join(TIMEOUT):
                raise TimeoutError("iotcommute-sync thread did not end")

    def recv(self, url: str, counter: Counter, compressed: bool) -> None:
        done = threading.Event()
        ws = self._sync_client(url, compressed)
        attr, callback = _recv_callback(
            counter, counter.case.kind, self.per_batch, done.set, self.rows
        )
        setattr(ws, attr, callback)
        ws.on_close = lambda *args: done.set()
        self._session(ws, lambda: done.wait(TIMEOUT))

    def send(self, url: str, n: int, text: str, batched: bool = True) -> None:
        got = threading.Event()
        ws = self._sync_client(url, False)
        ws.on_message = lambda msg, ws: got.set()

        def body() -> None:
            send = ws.send
            for _ in range(n):
                send(text)
            if not got.wait(TIMEOUT):
                raise TimeoutError("sink did not answer")

        self._session(ws, body)

    def latency(self, url: str, m: int, rate: float, payload: str) -> list[float]:
        got = threading.Event()
        stamp = [0.0]

        def on_message(msg: Any, ws: Any) -> None:
            stamp[0] = time.perf_counter()
            got.set()

        ws = self._sync_client(url, False)
        ws.on_message = on_message

        def body() -> list[float]:
            rtts = []
            interval = 1.0 / rate
            start = time.perf_counter()
            for i in range(m):
                delay = start + i * interval - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                got.clear()
                t0 = time.perf_counter()
                ws.send(payload)
                if not got.wait(TIMEOUT):
                    raise TimeoutError("echo did not answer")
                rtts.append(stamp[0] - t0)
            return rtts

        return self._session(ws, body)


# ---- the iotcommute fallback: the same subject in a NO_EXTENSIONS worker process
class Worker:
    """A long-lived subprocess running subjects; JSON lines over stdin/stdout."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.peers", "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=firehose.subprocess_env(env),
            text=True,
        )
        self.lock = threading.Lock()

    def call(self, **req: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self.lock:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker died (rc={self.proc.poll()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"worker: {reply['error']}")
        return reply["result"]

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


_workers: dict[str, Worker] = {}


def worker(kind: str) -> Worker:
    if kind not in _workers:
        env = {"IOTCOMMUTE_NO_EXTENSIONS": "1"} if kind == "fallback" else {}
        _workers[kind] = Worker(env)
    return _workers[kind]


def close_workers() -> None:
    """End the worker processes and this process's benchmark loop (session teardown)."""
    global _runner
    for w in _workers.values():
        w.close()
    _workers.clear()
    if _runner is not None:
        _runner.close()
        _runner = None


class InWorker(Subject):
    """Runs ``inner`` in the NO_EXTENSIONS worker; the parent's clock times the call."""

    def __init__(self, inner: Subject) -> None:
        self.inner = inner
        self.name = inner.name.replace("iotcommute", "iotcommute-fallback", 1)
        self.module = inner.module
        self.deflate = inner.deflate
        self.decoders = inner.decoders
        self.send_modes = inner.send_modes
        self.ticks_only = inner.ticks_only
        self.batches_only = inner.batches_only
        self.per_batch = getattr(inner, "per_batch", False)

    def version(self) -> str:
        return str(worker("fallback").call(op="version", subject=self.inner.name))

    def recv(self, url: str, counter: Counter, compressed: bool) -> None:
        # The worker builds its own Counter from the case and reports the count back.
        counter.count = int(
            worker("fallback").call(
                op="recv",
                subject=self.inner.name,
                url=url,
                case=counter.case.name,
                n=counter.n_messages,
                decoder=counter.decoder,
                compressed=compressed,
            )
        )

    def send(self, url: str, n: int, text: str, batched: bool = False) -> None:
        worker("fallback").call(
            op="send", subject=self.inner.name, url=url, n=n, text=text, batched=batched
        )

    def latency(self, url: str, m: int, rate: float, payload: str) -> list[float]:
        return list(
            worker("fallback").call(
                op="latency",
                subject=self.inner.name,
                url=url,
                m=m,
                rate=rate,
                payload=payload,
            )
        )


LOCAL: list[Subject] = [
    IotcommuteAio(),
    IotcommuteAio(per_batch=True),
    IotcommuteSync(),
    IotcommuteSync(per_batch=True),
    IotcommuteAio(rows=True),
    IotcommuteSync(rows=True),
    IotcommuteCore(),
    Picows(),
    Aiohttp(),
    Websockets(),
    Wsproto(),
    WebsocketClient(),
]
SUBJECTS: dict[str, Subject] = {s.name: s for s in LOCAL}
# The fallback's per-batch (on_ticks) variants are left out to keep the full run short: they
# differ from on_tick by one Python call per tick, which the compiled rows already show.
for _name in ("aio", "aio-rows", "sync", "core"):
    _fallback = InWorker(SUBJECTS[f"iotcommute-{_name}"])
    SUBJECTS[_fallback.name] = _fallback
#: send / latency / memory subjects (the "-ticks" variants differ only in receiving ticks)
ORDER = [
    "iotcommute-aio",
    "iotcommute-sync",
    "iotcommute-core",
    "iotcommute-fallback-aio",
    "iotcommute-fallback-sync",
    "iotcommute-fallback-core",
    "picows",
    "aiohttp",
    "websockets",
    "wsproto",
    "websocket-client",
]
#: receive subjects: ORDER plus the per-batch (on_ticks) and lean (on_tick_rows) variants
#: next to their base
RECV_ORDER = [
    "iotcommute-aio",
    "iotcommute-aio-ticks",
    "iotcommute-aio-rows",
    "iotcommute-sync",
    "iotcommute-sync-ticks",
    "iotcommute-sync-rows",
    "iotcommute-core",
    "iotcommute-fallback-aio",
    "iotcommute-fallback-aio-rows",
    "iotcommute-fallback-sync",
    "iotcommute-fallback-core",
    "picows",
    "aiohttp",
    "websockets",
    "wsproto",
    "websocket-client",
]


def is_iotcommute(name: str) -> bool:
    return name.startswith("iotcommute")


# --------------------------------------------------------------------------- worker side
def _serve_worker() -> None:
    # Replies own the real stdout; anything a library prints goes to stderr instead.
    out = sys.stdout
    sys.stdout = sys.stderr
    for line in sys.stdin:
        req = json.loads(line)
        try:
            result = _handle(req)
            reply: dict[str, Any] = {"result": result}
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


def _proc_status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status (Linux), in KiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _handle(req: dict[str, Any]) -> Any:
    op = req["op"]
    subject = SUBJECTS[req["subject"]]
    if op == "version":
        return subject.version()
    if op == "recv":
        counter = Counter(firehose.CASES[req["case"]], req["n"], req["decoder"])
        subject.recv(req["url"], counter, req["compressed"])
        return counter.count
    if op == "send":
        subject.send(req["url"], req["n"], req["text"], req["batched"])
        return None
    if op == "latency":
        return subject.latency(req["url"], req["m"], req["rate"], req["payload"])
    if op == "mem":
        # Warm up (imports, loop, first connection), reset the peak-RSS mark, then measure
        # the peak RSS of one stream of n messages against the RSS before it. VmHWM, not
        # ru_maxrss: Linux carries ru_maxrss over fork+exec, so a worker forked from a big
        # pytest process would report the parent's size.
        case = firehose.CASES[req["case"]]
        warm = Counter(case, 10, req["decoder"])
        subject.recv(req["url_warm"], warm, case.compressed)
        gc.collect()
        reset = _reset_peak_rss()
        base = _proc_status_kib("VmRSS")
        counter = Counter(case, req["n"], req["decoder"])
        subject.recv(req["url"], counter, case.compressed)
        peak = _proc_status_kib("VmHWM")
        return {"count": counter.count, "base_kib": base, "peak_kib": peak, "reset": reset}
    raise ValueError(op)


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        _serve_worker()
