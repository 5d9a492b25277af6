"""Log in with a user id and password and print an access token,
API_KEY:ACCESS_TOKEN.

For development: this runs the REST login flow (docs/rest.md) without a
browser -- the login form, then the token exchange with the app's secret (only
a checksum travels) -- and prints the token in the form `iotcommute listen
--token` and the WebSocket's api_key/access_token take:

  export IOTCOMMUTE_TOKEN="$(iotcommute login --demo)"   # the demo user
  iotcommute listen --count 5

Missing values come from the environment (IOTCOMMUTE_API_KEY,
IOTCOMMUTE_API_SECRET, IOTCOMMUTE_USER, IOTCOMMUTE_PASSWORD) or are asked for
on the terminal (the password and secret without echo). --save FILE writes the
token to a file only you can read instead of printing it (then: listen --token
@FILE)."""

from __future__ import annotations

import argparse
import getpass
import html
import http.client
import os
import re
import sys
from typing import Any
from urllib.parse import urlencode, urlsplit

from ._util import EXIT_OK, UsageError, describe, exit_code, positive_float, quiet_library, say

__all__ = ["add_arguments", "form_login", "login", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        help="server URL, http(s):// or ws(s):// (env IOTCOMMUTE_API_URL or IOTCOMMUTE_URL; "
        "else http://127.0.0.1:8765)",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="use the reference server's demo app and user (demo-app, demo-user)",
    )
    parser.add_argument("--api-key", help="the app's api_key (env IOTCOMMUTE_API_KEY)")
    parser.add_argument("--user", help="user id (env IOTCOMMUTE_USER)")
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin (else env IOTCOMMUTE_PASSWORD, "
        "else a prompt); the app secret comes from env IOTCOMMUTE_API_SECRET or a prompt",
    )
    parser.add_argument(
        "--save",
        metavar="FILE",
        help="write API_KEY:ACCESS_TOKEN to FILE (mode 600) instead of printing it",
    )
    parser.add_argument(
        "--timeout", type=positive_float, default=10.0, help="seconds per HTTP request"
    )


def _http_root(url: str | None) -> str:
    env = os.environ.get
    root = url or env("IOTCOMMUTE_API_URL") or env("IOTCOMMUTE_URL") or "http://127.0.0.1:8765"
    scheme, sep, rest = root.partition("://")
    scheme = {"ws": "http", "wss": "https"}.get(scheme.lower(), scheme.lower())
    if not sep or scheme not in ("http", "https") or not rest:
        raise UsageError("the URL must start with http://, https://, ws:// or wss://")
    rest = rest.split("/", 1)[0]  # the server's root, whatever path was given (/v1/stream)
    return f"{scheme}://{rest}"


def _ask(value: str | None, env_name: str, prompt: str, secret: bool) -> str:
    value = value or os.environ.get(env_name)
    if value:
        return value
    if not sys.stdin.isatty():
        raise UsageError(f"no {prompt.lower()} given and no terminal to ask ({env_name})")
    try:
        answer = getpass.getpass(f"{prompt}: ") if secret else input(f"{prompt}: ")
    except EOFError:
        answer = ""
    if not answer:
        raise UsageError(f"no {prompt.lower()} given")
    return answer


_PRE = re.compile(r"<pre>([^<]+)</pre>")


def form_login(root: str, api_key: str, user_id: str, password: str, timeout: float = 10.0) -> str:
    """Development helper: post the login page's form as a browser would; the request token.

    `root` is the server's http(s) URL (Commute.root). The next step is the app's own:
    Commute.generate_session(request_token, api_secret=...). Raises TokenError for a wrong
    user id or password, NetworkError when the server cannot be reached.
    """
    from ..exceptions import NetworkError, TokenError

    root = _http_root(root)
    user = user_id
    parts = urlsplit(root)
    conn_cls = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    conn = conn_cls(parts.netloc, timeout=timeout)
    body = urlencode({"api_key": api_key, "user_id": user, "password": password})
    try:
        conn.request(
            "POST",
            "/connect/login",
            body=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        resp = conn.getresponse()
        page = resp.read(65536).decode("utf-8", "replace")
    except OSError as exc:
        raise NetworkError(f"cannot reach {root}: {describe(exc)}") from None
    except http.client.HTTPException as exc:
        raise NetworkError(f"{root} did not answer HTTP: {describe(exc)}") from None
    finally:
        conn.close()
    if resp.status == 401:
        raise TokenError("wrong user id or password", status=401)
    if resp.status == 400:
        raise UsageError(f"the server refused the login: {describe(ValueError(page))}")
    match = _PRE.search(page) if resp.status == 200 else None
    if match is None:
        raise NetworkError(
            f"unexpected answer from {root}/connect/login (HTTP {resp.status} {resp.reason}); "
            "is it an IOT commute server?"
        )
    return html.unescape(match.group(1)).strip()


def login(
    root: str, api_key: str, api_secret: str, user: str, password: str, timeout: float
) -> str:
    """The whole flow; returns the access token (raises iotcommute errors)."""
    from ..rest import Commute

    request_token = form_login(root, api_key, user, password, timeout)
    with Commute(api_key, root=root, timeout=timeout, retries=0) as api:
        session: dict[str, Any] = api.generate_session(request_token, api_secret=api_secret)
    return str(session["access_token"])


def run(args: argparse.Namespace) -> int:
    from ..server.registry import DEMO_API_KEY, DEMO_API_SECRET, DEMO_PASSWORD, DEMO_USER

    quiet_library(args)
    root = _http_root(args.url)
    api_key = args.api_key or os.environ.get("IOTCOMMUTE_API_KEY")
    user = args.user or os.environ.get("IOTCOMMUTE_USER")
    secret = os.environ.get("IOTCOMMUTE_API_SECRET")
    password = None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    if args.demo:
        api_key = api_key or DEMO_API_KEY
        user = user or DEMO_USER
        if api_key == DEMO_API_KEY:
            secret = secret or DEMO_API_SECRET
        if user == DEMO_USER:
            password = password or DEMO_PASSWORD
    api_key = _ask(api_key, "IOTCOMMUTE_API_KEY", "API key", secret=False)
    user = _ask(user, "IOTCOMMUTE_USER", "User ID", secret=False)
    password = _ask(password, "IOTCOMMUTE_PASSWORD", "Password", secret=True)
    secret = _ask(secret, "IOTCOMMUTE_API_SECRET", "API secret", secret=True)
    try:
        token = login(root, api_key, secret, user, password, args.timeout)
    except (UsageError, ValueError):
        raise
    except Exception as exc:
        say("login", describe(exc))
        return exit_code(exc)
    line = f"{api_key}:{token}"
    if args.save:
        try:
            fd = os.open(args.save, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError as exc:
            say("login", f"cannot write {args.save}: {exc.strerror}")
            return exit_code(exc)
        say("login", f"token saved to {args.save} (use: iotcommute listen --token @{args.save})")
    else:
        print(line, flush=True)
    return EXIT_OK
