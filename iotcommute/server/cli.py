"""`iotcommute serve`: run the reference server until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from .app import ReferenceServer, new_event_loop
from .registry import load_registry

logger = logging.getLogger("iotcommute.server")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, default=8765, help="port (default 8765; 0 = any free port)"
    )
    parser.add_argument(
        "--registry", metavar="FILE", help="JSON registry (default: built-in demo registry)"
    )
    parser.add_argument("--db", metavar="PATH", help="keep the log in SQLite (survives restarts)")
    parser.add_argument(
        "--retain", type=int, default=100_000, help="records kept in the log (default 100000)"
    )
    parser.add_argument(
        "--simulate", type=int, default=0, metavar="N", help="run N simulated devices"
    )
    parser.add_argument(
        "--rate", type=float, default=1.0, metavar="R", help="ticks/s per simulated device"
    )
    parser.add_argument(
        "--firehose", action="store_true", help="stream ticks as fast as sockets take them"
    )
    parser.add_argument(
        "--max-size", type=int, default=2**20, help="inbound message limit in bytes"
    )
    parser.add_argument(
        "--ping-interval", type=float, default=20.0, help="seconds between server pings"
    )
    parser.add_argument(
        "--command-timeout", type=float, default=10.0, help="seconds to wait for an ack"
    )
    parser.add_argument(
        "--write-batch", type=int, default=100, help="records per socket write (default 100)"
    )


def run(args: argparse.Namespace) -> int:
    registry = load_registry(args.registry) if args.registry else None
    server = ReferenceServer(
        args.host,
        args.port,
        registry=registry,
        db=args.db,
        retain=args.retain,
        simulate=args.simulate,
        rate=args.rate,
        firehose=args.firehose,
        command_timeout=args.command_timeout,
        max_size=args.max_size,
        ping_interval=args.ping_interval,
        write_batch=args.write_batch,
    )
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()

    def on_signal(signame: str) -> None:
        logger.warning("%s received, shutting down", signame)
        stop.set()

    async def main() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig.name)
        await server.start()
        # One line on stdout so scripts (and tests) learn the port when --port 0 was used.
        print(f"iotcommute serve: listening on {server.url}/v1/stream", flush=True)
        try:
            await stop.wait()
        finally:
            await server.stop()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return 0
