"""Autobahn-style conformance of the sans-IO client core, over real loopback sockets.

Each case (tests/autobahn_cases.py) starts tests/rawserver.py on 127.0.0.1:0, which plays
exact bytes built by its own encoder and parses the client's answers with its own parser;
tests/coredriver.py drives ``ClientProtocol`` (echoing messages like the Autobahn client).
The checks are made on both sides: what the server saw on the wire, and the events the
core produced.  Runs the same with IOTCOMMUTE_NO_EXTENSIONS=1 (pure-Python reader).
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from iotcommute.exceptions import InvalidHandshake, IotCommuteError, ProtocolError
from iotcommute.protocol import ClientProtocol
from iotcommute.protocol.events import EOF, CloseReceived, Event, Failed, Ping, State
from tests.protocol.autobahn_cases import CASES, Case
from tests.protocol.coredriver import Outcome, run_client
from tests.rawserver import RawServer, Result

#: Known core bugs: case id -> reason. Marked xfail(strict=True) so they must keep failing.
# Cases the core is known to fail (xfail strict, so a fix turns them red until removed).
KNOWN_BUGS: dict[str, str] = {}


def _params() -> list[Any]:
    out = []
    for c in CASES:
        marks: list[Any] = []
        if c.id in KNOWN_BUGS:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[c.id]))
        if c.slow:
            marks.append(pytest.mark.slow)
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


async def _play(case: Case) -> tuple[Result, Outcome]:
    """Run one case: raw server plays the script, the driver echoes like Autobahn's client."""
    received = 0
    closed = False

    def maybe_close(proto: ClientProtocol) -> None:
        # Client-initiated close cases: close once every expected message has arrived.
        nonlocal closed
        if case.client_close is not None and not closed and received >= len(case.echo):
            closed = True
            proto.close(*case.client_close)

    def on_event(proto: ClientProtocol, ev: Event) -> None:
        nonlocal received
        if not isinstance(ev, (str, bytes)):
            return
        received += 1
        if proto.state is State.OPEN:
            if isinstance(ev, str):
                proto.send_text(ev)
            else:
                proto.send_binary(ev)
            maybe_close(proto)

    async with RawServer(case.script, case.handshake, len(case.echo)) as srv:
        outcome = await run_client(
            srv.port, on_event=on_event, on_open=maybe_close, timeout=20.0, **case.client_kwargs
        )
        result = await srv.wait_done(10.0)
    return result, outcome


def _describe(result: Result, outcome: Outcome) -> str:
    evs = [repr(e)[:80] for e in outcome.events]
    return (
        f"client close={result.close_code} reason={result.close_reason[:40]!r} "
        f"msgs={len(result.messages)} pongs={result.pongs[:5]} violations={result.violations} "
        f"fail_fast={result.fail_fast} events={evs[:12]}"
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", _params())
def test_case(case: Case) -> None:
    result, outcome = asyncio.run(_play(case))
    info = _describe(result, outcome)

    # The request itself (every case): RFC 6455 4.1.
    assert result.request_line.startswith("GET / HTTP/1.1"), result.request_line
    assert (result.header("Upgrade") or "").lower() == "websocket"
    assert "upgrade" in (result.header("Connection") or "").lower()
    assert result.header("Sec-WebSocket-Version") == "13"
    assert len(base64.b64decode(result.header("Sec-WebSocket-Key") or "")) == 16
    assert result.header("Host") == f"127.0.0.1:{result.port}"

    assert not outcome.timed_out, f"client hung; {info}"
    assert result.violations == [], info
    assert result.frames_after_close == [], f"client sent frames after its close; {info}"
    # RFC 6455 5.3: a fresh, unpredictable masking key per frame.
    keys = [f.key for f in result.frames]
    if len(keys) >= 3:
        assert len(set(keys)) > len(keys) // 2, f"masking keys repeat: {keys[:8]}"

    error = case.error
    close_ok = case.close
    if case.needs_offer and case.needs_offer not in result.extension_offer:
        # We answered with a parameter the client did not offer: RFC 7692 7.1 says the
        # client must fail the connection.
        error, close_ok = InvalidHandshake, frozenset({None})

    failed = outcome.of(Failed)
    if error is not None:
        assert len(failed) == 1, f"expected Failed({error.__name__}); {info}"
        exc = failed[0].exc
        assert isinstance(exc, error), f"got {exc!r}; {info}"
        assert isinstance(exc, IotCommuteError)
        if isinstance(exc, ProtocolError) and result.close_code is not None:
            assert exc.close_code == result.close_code, info
        if case.status is not None:
            assert exc.status == case.status
        assert outcome.state is State.CLOSED
    elif not case.may_fail:
        assert failed == [], info

    assert result.close_code in close_ok, f"expected close {set(close_ok)}; {info}"

    # Messages: delivered as events, in order, and echoed intact.
    if error is None or case.echo:
        assert outcome.messages == list(case.echo), info
        assert result.messages == list(case.echo), info

    # Pings: answered (auto-pong) with the same payload; not after a close or failure.
    if case.pongs is not None:
        assert result.pongs == list(case.pongs), info
        if error is None:
            assert [p.payload for p in outcome.of(Ping)] == list(case.pongs), info
    if case.last_pong is not None:
        assert case.last_pong in result.pongs, info

    if case.fail_fast:
        assert result.fail_fast and all(result.fail_fast), (
            f"client did not fail before the rest of the message arrived; {info}"
        )

    closes = outcome.of(CloseReceived)
    if error is None and case.close_received is not None:
        assert closes and closes[0].code == case.close_received, info
        if case.close_reason is not None:
            assert closes[0].reason == case.close_reason, info
    assert len(closes) <= 1, info

    if error is None:
        # The server always ends the case by closing TCP.
        assert isinstance(outcome.events[-1], EOF), info
        assert outcome.state is State.CLOSED

    if result.deflate is not None and error is None:
        acc = outcome.accepted
        assert acc is not None and any(e.startswith("permessage-deflate") for e in acc.extensions)
        # compression=True is meant to compress what it sends, at least the big messages.
        if any(len(m) >= 1024 for m in case.echo):
            assert any(f.rsv & 4 for f in result.frames), "client never compressed"


def test_case_table_covers_every_section() -> None:
    sections = {c.id.split(".")[0] for c in CASES}
    assert {"1", "2", "3", "4", "5", "6", "7", "9", "10", "12", "13"} <= sections
    assert len(CASES) >= 300


def test_failed_handshake_does_not_leak_secrets() -> None:
    """A rejected upgrade carries status and redacted headers, never the key we sent."""
    from tests.rawserver import Handshake

    secret = "k3y-s3cr3t-value"

    async def go() -> Outcome:
        hs = Handshake(status=401, extra_headers=(("Set-Cookie", f"session={secret}"),))
        async with RawServer((), hs) as srv:
            out = await run_client(srv.port, extra_headers=[("X-Device-Key", secret)], timeout=10.0)
            res = await srv.wait_done(10.0)
            assert res.header("X-Device-Key") == secret  # it was sent...
        return out

    out = asyncio.run(go())
    exc = out.failed
    assert exc is not None and exc.status == 401  # type: ignore[attr-defined]
    assert secret not in repr(exc) and secret not in str(exc)
    assert secret not in repr(out.events)
    assert all(secret not in v for v in exc.headers.values())  # type: ignore[attr-defined]
