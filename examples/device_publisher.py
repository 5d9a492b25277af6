"""Device role: publish readings and wait until the server has stored each one.

Run `iotcommute serve` first (IOTCOMMUTE_URL defaults to ws://127.0.0.1:8765). The device
is the README's demo device; its credentials are printed in the server's startup banner.
Exits after 5 readings are acknowledged (each `published` answer carries the log position).
"""

import threading

from iotcommute import WebSocket

READINGS = 5
# subscribe=None: a device that only publishes does not need the fleet's telemetry
ws = WebSocket("L1SEIUDU1MC996W48L8Q", "FY6ODPIVU522SY1", "device", subscribe=None)
stored = threading.Event()
acked: dict[int, int] = {}


def on_connect(ws: WebSocket) -> None:
    for i in range(READINGS):
        ws.publish({"temperature": 20.0 + i, "battery": 3.7}, id=i)  # id: ask for an answer


def on_message(raw: str | bytes, ws: WebSocket) -> None:
    import json

    msg = json.loads(raw)
    if msg.get("type") == "published":
        acked[msg["id"]] = msg["position"]
        print(f"reading {msg['id']} stored at log position {msg['position']}")
        if len(acked) == READINGS:
            stored.set()


ws.on_connect = on_connect
ws.on_message = on_message
ws.connect(threaded=True)
ok = stored.wait(15)
ws.stop()
ws.join(5)
if not ok:
    raise SystemExit(f"only {len(acked)} of {READINGS} readings were acknowledged")
