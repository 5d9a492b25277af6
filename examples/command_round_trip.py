"""A command round trip in one script: a device answers, a client asks.

Run `iotcommute serve` first. The device (README demo device, device role) acknowledges
each command it receives; the client (simulated device sim-0001's key in the client role,
same owner) sends one with send_command(), which blocks until the device's ack arrives.
"""

import threading

from iotcommute import WebSocket

DEVICE_ID = "FY6ODPIVU522SY1"

device = WebSocket("L1SEIUDU1MC996W48L8Q", DEVICE_ID, "device", subscribe=None)
device_ready = threading.Event()


def on_command(command: dict, ws: WebSocket) -> None:
    print("device got command", command["data"])
    ws.ack(command["id"], ok=True, data={"led": command["data"].get("led"), "done": True})


device.on_command = on_command
device.on_connect = lambda ws: device_ready.set()

client = WebSocket("SIMKEY00000000000001", "sim-0001", "client", subscribe=None)
client_ready = threading.Event()
client.on_connect = lambda ws: client_ready.set()

device.connect(threaded=True)
client.connect(threaded=True)
try:
    if not (device_ready.wait(10) and client_ready.wait(10)):
        raise SystemExit("could not connect; is `iotcommute serve` running?")
    ack = client.send_command(DEVICE_ID, {"led": "on"}, timeout=5)
    print("client got ack", ack["ok"], ack["data"])
finally:
    client.stop()
    device.stop()
    client.join(5)
    device.join(5)
