"""Run the reference IOT commute server until Ctrl-C or SIGTERM (both stop it
cleanly, exit 0).

WebSocket stream, REST API and login pages share one port. Without --registry
the built-in demo registry is used and the startup banner prints its
credentials (development only). The first line on stdout is always `iotcommute
serve: listening on ws://HOST:PORT/v1/stream`, so scripts can learn the port
of `--port 0`."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import signal
from typing import Any

from ..exceptions import IotCommuteError
from ._util import EXIT_ERROR, EXIT_OK, UsageError, describe, positive_float, positive_int, say

__all__ = ["add_arguments", "banner", "run"]

logger = logging.getLogger("iotcommute.server")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=positive_int, default=8765, help="TCP port; 0 picks a free one"
    )
    parser.add_argument(
        "--registry",
        metavar="FILE",
        help="JSON registry of users, apps and devices (default: the built-in demo registry)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--db", metavar="PATH", help="keep the log in this SQLite file (survives restarts)"
    )
    where.add_argument(
        "--log",
        metavar="URL",
        help="keep the log in NATS JetStream, shared by every server started with the same URL: "
        "nats://HOST:PORT[,HOST:PORT...][/NAME][?replicas=3] (docs/scaling.md)",
    )
    parser.add_argument(
        "--partitions",
        type=positive_int,
        default=1,
        metavar="N",
        help="device partitions (consumer groups share them; docs/protocol.md section 14)",
    )
    parser.add_argument(
        "--group-session-timeout",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="seconds before a silent group member loses its partitions",
    )
    parser.add_argument("--retain", type=positive_int, default=100_000, help="records kept")
    parser.add_argument(
        "--simulate", type=positive_int, default=0, metavar="N", help="run N simulated devices"
    )
    parser.add_argument(
        "--rate",
        type=positive_float,
        default=1.0,
        metavar="R",
        help="ticks per second per simulated device",
    )
    parser.add_argument(
        "--firehose", action="store_true", help="stream ticks as fast as sockets take them"
    )
    parser.add_argument(
        "--max-size", type=positive_int, default=2**20, help="inbound message limit, bytes"
    )
    parser.add_argument(
        "--ping-interval", type=positive_float, default=20.0, help="seconds between pings"
    )
    parser.add_argument(
        "--command-timeout",
        type=positive_float,
        default=10.0,
        help="seconds to wait for a device's ack",
    )
    parser.add_argument(
        "--write-batch", type=positive_int, default=100, help="records per socket write"
    )


def banner(http_url: str, demo: bool, simulate: int) -> str:
    """What a new user needs after `listening on`: URLs and, for the demo registry, logins."""
    from ..server.registry import (
        DEMO_API_KEY,
        DEMO_API_SECRET,
        DEMO_PASSWORD,
        DEMO_USER,
        README_DEVICE_ID,
        README_DEVICE_KEY,
    )

    ws_url = http_url.replace("http://", "ws://", 1)
    lines = [
        f"  REST API     {http_url}   (docs/rest.md)",
        f"  login page   {http_url}/connect/login?api_key={DEMO_API_KEY if demo else 'API_KEY'}",
    ]
    if demo:
        last = max(simulate, 100)
        lines += [
            "  demo registry (development only; --registry FILE for your own):",
            f"    device   id {README_DEVICE_ID}  key {README_DEVICE_KEY}  (README example)",
            f"    app      api_key {DEMO_API_KEY}  api_secret {DEMO_API_SECRET}",
            f"    user     {DEMO_USER}  password {DEMO_PASSWORD}",
            f"    devices  sim-0001..sim-{last:04d}"
            + (f" ({simulate} simulated)" if simulate else " (offline until --simulate N)"),
            "  try:",
            f"    export IOTCOMMUTE_URL={ws_url}",
            '    export IOTCOMMUTE_TOKEN="$(iotcommute login --demo)"',
            "    iotcommute listen --count 5",
        ]
    lines.append("  Ctrl-C stops the server.")
    return "\n".join(lines)


def _load_registry(path: str) -> Any:
    from ..server.registry import load_registry

    try:
        return load_registry(path)
    except OSError as exc:
        raise UsageError(f"cannot read the registry {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        # json.JSONDecodeError is a ValueError; a missing field is a KeyError
        kind = "not valid JSON" if isinstance(exc, json.JSONDecodeError) else "malformed"
        raise UsageError(f"registry {path} is {kind}: {describe(exc)}") from None


def _listen_error(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {host}:{port}: the port is in use "
            "(another server running? --port 0 picks a free port)"
        )
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EACCES):
        return f"cannot listen on {host}:{port}: {exc.strerror}"
    return f"cannot listen on {host}:{port}: {describe(exc)}"


def run(args: argparse.Namespace) -> int:
    from ..server.app import ReferenceServer, new_event_loop

    registry = _load_registry(args.registry) if args.registry else None
    try:
        server = ReferenceServer(
            args.host,
            args.port,
            registry=registry,
            db=args.db,
            log_url=args.log,
            partitions=args.partitions,
            group_session_timeout=args.group_session_timeout,
            retain=args.retain,
            simulate=args.simulate,
            rate=args.rate,
            firehose=args.firehose,
            command_timeout=args.command_timeout,
            max_size=args.max_size,
            ping_interval=args.ping_interval,
            write_batch=args.write_batch,
        )
    except Exception as exc:  # a bad --db path, an unreadable file: one line, not a trace
        say("serve", f"cannot start: {describe(exc)}")
        return EXIT_ERROR
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()
    failed: list[str] = []

    def on_signal(signame: str) -> None:
        logger.warning("%s received, shutting down", signame)
        stop.set()

    async def main() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig.name)
        try:
            await server.start()
        except OSError as exc:
            failed.append(_listen_error(args.host, args.port, exc))
            await server.stop()
            return
        except IotCommuteError as exc:  # the log store cannot be opened (NATS away, ...)
            failed.append(f"cannot open the log: {describe(exc)}")
            await server.stop()
            return
        # Line 1 on stdout, so scripts (and tests) learn the port when --port 0 was used.
        print(f"iotcommute serve: listening on {server.url}/v1/stream", flush=True)
        print(banner(server.http_url, registry is None, args.simulate), flush=True)
        try:
            await stop.wait()
        finally:
            await server.stop()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    if failed:
        say("serve", failed[0])
        return EXIT_ERROR
    return EXIT_OK
