"""Client role: follow the telemetry of a whole fleet and print a few ticks.

Run `iotcommute serve --simulate 5 --rate 10` first. A client reads every device of its
owner's fleet; here it connects with the README device's key in the client role (an
access token from `iotcommute login` works too: WebSocket(api_key=..., access_token=...)).
Exits after 10 ticks.
"""

import os

from iotcommute import WebSocket

if os.environ.get("IOTCOMMUTE_TOKEN"):  # API_KEY:ACCESS_TOKEN, e.g. from `iotcommute login`
    api_key, _, token = os.environ["IOTCOMMUTE_TOKEN"].partition(":")
    ws = WebSocket(api_key=api_key, access_token=token)
else:
    ws = WebSocket("L1SEIUDU1MC996W48L8Q", "FY6ODPIVU522SY1", "client")
seen = 0


def on_tick(tick: dict, ws: WebSocket) -> None:
    global seen
    seen += 1
    data = tick["data"]
    print(f"{tick['position']:>8} {tick['device']} {data.get('temperature')} C")
    if seen == 10:
        ws.stop()  # connect() returns


ws.on_tick = on_tick
ws.connect()
