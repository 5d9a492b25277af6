"""REST: the login flow, then devices, history and a command over HTTP.

Run `iotcommute serve --simulate 5 --rate 10` first (IOTCOMMUTE_URL or IOTCOMMUTE_API_URL
point the client at it; default http://127.0.0.1:8765). In production the user logs in on
the page of api.login_url() in a browser; for development, form_login() posts that form
(the demo user's login is in the server's startup banner). Only a checksum of the app's
secret travels, never the secret.
"""

from iotcommute import Commute
from iotcommute.cli.login import form_login

api = Commute("demo-app")
print("users log in at", api.login_url())
request_token = form_login(api.root, "demo-app", "demo-user", "demo-pass")
session = api.generate_session(request_token, api_secret="demo-secret")
print("logged in as", session["user_id"])
try:
    devices = api.devices()
    print(len(devices), "devices, e.g.", devices[0]["id"])
    for tick in api.history("sim-0001", limit=3):
        print("history", tick["position"], tick["data"]["temperature"])
    ack = api.send_command("sim-0001", {"led": "on"}, timeout=5)
    print("command ack", ack["ok"])
    # the same session opens the stream: WebSocket(api_key="demo-app", access_token=...)
finally:
    api.invalidate_session()
    api.close()
