"""A reference server process on a JetStream log, for the scale-out tests (real processes).

python -m tests.jetstream.jsserver NATS_URL [--partitions N] [--retain N] [--simulate N --rate R]

Prints "listening on ws://HOST:PORT/v1/stream" once serving (port chosen by the OS) and runs
until SIGTERM/SIGINT. (`iotcommute serve --log nats://...` does the same once the CLI is
wired; this keeps the tests independent of the CLI.)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from iotcommute.server.app import ReferenceServer, new_event_loop


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("log_url")
    p.add_argument("--partitions", type=int, default=1)
    p.add_argument("--retain", type=int, default=100_000)
    p.add_argument("--simulate", type=int, default=0)
    p.add_argument("--rate", type=float, default=1.0)
    p.add_argument("--session-timeout", type=float, default=3.0)
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    server = ReferenceServer(
        "127.0.0.1",
        0,
        log_url=args.log_url,
        partitions=args.partitions,
        retain=args.retain,
        simulate=args.simulate,
        rate=args.rate,
        group_session_timeout=args.session_timeout,
    )
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()

    async def run() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await server.start()
        print(f"listening on {server.url}/v1/stream", flush=True)
        try:
            await stop.wait()
        finally:
            await server.stop()

    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
