"""Client role, asyncio: consume ticks with `async for` on your own event loop.

Run `iotcommute serve --simulate 5 --rate 10` first. The queue behind `async for` is
bounded: a slow consumer pauses the socket instead of growing memory. Exits after 10 ticks.
"""

import asyncio

from iotcommute import AsyncWebSocket


async def main() -> None:
    async with AsyncWebSocket("L1SEIUDU1MC996W48L8Q", "FY6ODPIVU522SY1", "client") as ws:
        n = 0
        async for tick in ws:
            print(tick["position"], tick["device"], tick["data"].get("temperature"))
            n += 1
            if n == 10:
                break  # leaving the `async with` closes the connection


asyncio.run(main())
