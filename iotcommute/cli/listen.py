"""Connect to a server and print ticks as JSON lines on stdout (one tick per
line).

Authenticate with a device key (--key and --device) or an access token
(--token API_KEY:ACCESS_TOKEN, from `iotcommute login`). Prefer the
environment for secrets (IOTCOMMUTE_KEY, IOTCOMMUTE_TOKEN): command lines are
visible to other users of the machine. Secrets are never printed. stdout
carries only ticks; status, retries and errors go to stderr, one line each.

A connection that never succeeded is given up after a few attempts (--wait
keeps trying); once connected, a lost connection is retried (--max-retries
bounds it) and the stream resumes where it stopped."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from ._util import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    UsageError,
    describe,
    exit_code,
    positive_float,
    positive_int,
    quiet_library,
    say,
    verbosity,
)

__all__ = ["FIRST_CONNECT_ATTEMPTS", "add_arguments", "parse_token", "run"]

#: Attempts before a connection that never succeeded is given up (without --wait).
FIRST_CONNECT_ATTEMPTS = 3


def add_connection_arguments(parser: argparse.ArgumentParser) -> Any:
    """The connection options and --devices, shared by `listen` and `ingest`; returns the
    "stream" argument group for the command's own stream options."""
    conn = parser.add_argument_group("connection")
    conn.add_argument(
        "--url",
        help="server URL, ws:// or wss:// (env IOTCOMMUTE_URL; else ws://127.0.0.1:8765)",
    )
    conn.add_argument("--key", help="device key (env IOTCOMMUTE_KEY); needs --device")
    conn.add_argument(
        "--device", "--id", dest="device", help="device id of --key (env IOTCOMMUTE_DEVICE)"
    )
    conn.add_argument(
        "--token",
        metavar="API_KEY:ACCESS_TOKEN",
        help="access token from `iotcommute login` (env IOTCOMMUTE_TOKEN); "
        "'-' reads it from stdin, '@FILE' from a file",
    )
    conn.add_argument(
        "--role",
        choices=("device", "client"),
        help="role to connect as (env IOTCOMMUTE_ROLE; default client; a token is always client)",
    )
    conn.add_argument(
        "--open-timeout",
        type=positive_float,
        default=10.0,
        metavar="SECONDS",
        help="limit for one connection attempt (TCP, TLS and handshake)",
    )
    conn.add_argument(
        "--max-retries",
        type=positive_int,
        metavar="N",
        help="give up after N failed reconnects in a row (default: retry for ever once connected)",
    )
    conn.add_argument(
        "--wait",
        action="store_true",
        help="keep retrying a server that was never reached (default: give up after "
        f"{FIRST_CONNECT_ATTEMPTS} attempts)",
    )
    stream = parser.add_argument_group("stream")
    stream.add_argument(
        "--devices",
        default="*",
        metavar="IDS",
        help="comma-separated device ids to follow, or * for the whole fleet",
    )
    return stream


def add_arguments(parser: argparse.ArgumentParser) -> None:
    stream = add_connection_arguments(parser)
    stream.add_argument(
        "--from",
        dest="from_position",
        type=positive_int,
        metavar="POSITION",
        help="replay everything after this log position (0: all the server retains)",
    )
    stream.add_argument(
        "--format",
        choices=("json", "binary"),
        default="binary",
        help="wire format of ticks (output is JSON lines either way; binary is smaller)",
    )
    stream.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="file keeping the last position, so a restarted listen resumes without loss",
    )
    stream.add_argument(
        "--group",
        metavar="NAME",
        help="join this consumer group: its members share the log's partitions and the "
        "server keeps the group's positions (a server on a shared log: serve --log nats://...)",
    )
    stream.add_argument(
        "--count", type=positive_int, default=0, metavar="N", help="exit after N ticks (0: never)"
    )


def parse_token(value: str) -> tuple[str, str]:
    """'api_key:access_token' -> (api_key, access_token); '-' stdin, '@FILE' a file."""
    if value == "-":
        value = sys.stdin.readline()
    elif value.startswith("@"):
        try:
            with open(value[1:], encoding="utf-8") as f:
                value = f.readline()
        except OSError as exc:
            raise UsageError(f"cannot read the token file {value[1:]}: {exc.strerror}") from None
    api_key, sep, access_token = value.strip().partition(":")
    if not sep or not api_key or not access_token:
        # never echo the value: it may be a real token pasted in the wrong place
        raise UsageError("--token must look like API_KEY:ACCESS_TOKEN (see `iotcommute login`)")
    return api_key, access_token


def _devices(text: str) -> str | list[str]:
    if text.strip() == "*":
        return "*"
    devices = [d.strip() for d in text.split(",") if d.strip()]
    if not devices:
        raise UsageError("--devices needs at least one device id, or *")
    return devices


def _client_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    env = os.environ.get
    token = args.token if args.token is not None else env("IOTCOMMUTE_TOKEN")
    key = args.key if args.key is not None else env("IOTCOMMUTE_KEY")
    device = args.device if args.device is not None else env("IOTCOMMUTE_DEVICE")
    role = args.role or env("IOTCOMMUTE_ROLE") or "client"
    if role not in ("device", "client"):
        raise UsageError("IOTCOMMUTE_ROLE must be device or client")
    kw: dict[str, Any] = {"url": args.url or env("IOTCOMMUTE_URL") or "ws://127.0.0.1:8765"}
    if token and not (args.key or args.device):
        if args.role == "device":
            raise UsageError("a token connects as a client; use --key/--device for a device")
        kw["api_key"], kw["access_token"] = parse_token(token)
        kw["role"] = "client"
    elif key and device:
        kw.update(device_key=key, device_id=device, role=role)
    elif key or device:
        raise UsageError("--key and --device go together (or IOTCOMMUTE_KEY/IOTCOMMUTE_DEVICE)")
    else:
        raise UsageError(
            "give --token (see `iotcommute login`) or --key and --device "
            "(or IOTCOMMUTE_TOKEN, IOTCOMMUTE_KEY/IOTCOMMUTE_DEVICE)"
        )
    scheme = str(kw["url"]).partition("://")[0].lower()
    if scheme not in ("ws", "wss"):
        hint = ""
        if scheme in ("http", "https"):
            hint = f" (the stream of {kw['url']} is {'ws' if scheme == 'http' else 'wss'}://...)"
        raise UsageError(f"the URL must start with ws:// or wss://{hint}")
    return kw


# Errors the server sends on the stream that mean "this command line cannot work":
# listening on would only sit connected doing nothing, so they end the command.
def _ends_listen(exc: BaseException) -> bool:
    from ..exceptions import InputError, NotFoundError, PermissionDenied, RateLimitError

    if isinstance(exc, RateLimitError):
        return False
    return isinstance(exc, (NotFoundError, InputError, PermissionDenied))


class _Listener:
    """Callbacks of one `listen` run; the main thread only waits and reads the outcome."""

    def __init__(self, args: argparse.Namespace, role: str, devices: str | list[str]) -> None:
        from .. import payload

        self.args = args
        self.role = role
        self.devices = devices
        self.quiet = verbosity(args) < 0
        self.dumps = payload.dumps
        self.out = sys.stdout.buffer
        self.limit = int(args.count)
        self.seen = 0
        self.connected_once = False
        self.last_error: BaseException | None = None  # the failure a retry line reports
        self.final: BaseException | None = None  # what ended the run, reported once
        self.gave_up = ""
        self.broken_pipe = False
        self.done = threading.Event()
        self.cut_at: int | None = None  # --count ended inside a read: last tick printed

    def on_ticks(self, ticks: list[dict[str, Any]], ws: Any) -> None:
        if self.limit:
            if len(ticks) > self.limit - self.seen:
                ticks = ticks[: self.limit - self.seen]
                # the client checkpoints the whole read: run() puts it back to this tick
                self.cut_at = ticks[-1]["position"] if ticks else self.cut_at
        try:
            self.out.write(b"".join([self.dumps(t) + b"\n" for t in ticks]))
            self.out.flush()
        except BrokenPipeError:  # `| head`: stop quietly
            self.broken_pipe = True
            ws.stop()
            return
        self.seen += len(ticks)
        if self.limit and self.seen >= self.limit:
            ws.stop()

    def on_tick(self, tick: dict[str, Any], ws: Any) -> None:
        """A group member with --count: tick by tick, so that what the group commits is
        exactly what was printed (the rest of a read is not delivered after stop())."""
        if self.limit and self.seen >= self.limit:
            return
        self.on_ticks([tick], ws)

    def on_connect(self, ws: Any) -> None:
        first = not self.connected_once
        self.connected_once = True
        self.last_error = None
        if first and self.args.from_position is not None:
            # a saved --checkpoint wins over --from (else a restart would follow nothing)
            start = ws.position or self.args.from_position
            ws.subscribe(self.devices, from_position=start)
        if not self.quiet:
            what = "all devices" if self.devices == "*" else ", ".join(self.devices)
            if self.args.group:
                what = f"group {self.args.group}"
            verb = "connected to" if first else "reconnected to"
            say("listen", f"{verb} {ws.url} as {self.role}; following {what}")

    def on_error(self, exc: BaseException, ws: Any) -> None:
        if getattr(exc, "fatal", False):
            return  # connect() ends with it; reported once, by run()
        if ws.is_connected():
            # an error message on the stream (the connection itself is fine)
            if _ends_listen(exc):
                self.final = exc
                ws.stop()
            elif not self.quiet:
                say("listen", describe(exc))
            return
        self.last_error = exc  # a failed connection: the retry line reports it

    def on_reconnect(self, attempt: int, ws: Any) -> None:
        err = self.last_error
        self.last_error = None
        if not self.connected_once and not self.args.wait and attempt >= FIRST_CONNECT_ATTEMPTS:
            self.final = err
            self.gave_up = (
                f" (gave up after {attempt} attempts, none succeeded; --wait keeps trying)"
            )
            ws.stop()
            return
        if self.quiet:
            return
        limit = self.args.max_retries
        of = f" of {limit}" if limit is not None else ""
        reason = describe(err) if err is not None else "connection lost"
        say("listen", f"{reason}; retrying (attempt {attempt}{of})")

    def on_assign(self, partitions: list[int], ws: Any) -> None:
        if not self.quiet:
            say("listen", f"group {self.args.group}: assigned partitions {_ints(partitions)}")

    def on_revoke(self, partitions: list[int], ws: Any) -> None:
        if not self.quiet:
            say("listen", f"group {self.args.group}: revoked partitions {_ints(partitions)}")

    def on_gap(self, gap: dict[str, Any], ws: Any) -> None:
        if not self.quiet:
            say(
                "listen",
                f"gap: {gap.get('missed')} ticks after position {gap.get('from')} were "
                "trimmed from the server's log before they could be read",
            )


def _ints(values: list[int]) -> str:
    return ", ".join(str(v) for v in values)


def _check_group(args: argparse.Namespace) -> None:
    """A group member's devices and positions come from the group."""
    for given, option in (
        (args.devices.strip() != "*", "--devices"),
        (args.from_position is not None, "--from"),
        (args.checkpoint is not None, "--checkpoint"),
    ):
        if given:
            raise UsageError(
                f"--group and {option} do not go together: the group's server keeps its "
                "members' devices and positions"
            )


@contextlib.contextmanager
def _stop_on_sigterm(ws: Any) -> Iterator[None]:
    """SIGTERM (a service manager, `kill`) stops as cleanly as Ctrl-C: checkpoint saved, exit 0."""
    try:
        old = signal.signal(signal.SIGTERM, lambda signum, frame: ws.stop())
    except ValueError:  # not the main thread (main() called from a thread): leave it
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run(args: argparse.Namespace) -> int:
    from ..client import WebSocket
    from ..exceptions import NetworkError

    quiet_library(args)
    kw = _client_kwargs(args)
    devices = _devices(args.devices)
    if args.group is not None:
        _check_group(args)
    listener = _Listener(args, str(kw["role"]), devices)
    try:
        ws = WebSocket(
            **kw,
            format=args.format,
            subscribe=None if args.from_position is not None else devices,
            checkpoint=args.checkpoint,
            open_timeout=args.open_timeout,
            max_retries=args.max_retries,
            group=args.group,
            first_connect_retries=None,  # the listener's own policy (--wait) decides
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.group is not None and listener.limit:
        ws.on_tick = listener.on_tick
    else:
        ws.on_ticks = listener.on_ticks
    ws.on_connect = listener.on_connect
    ws.on_error = listener.on_error
    ws.on_reconnect = listener.on_reconnect
    ws.on_gap = listener.on_gap
    ws.on_assign = listener.on_assign
    ws.on_revoke = listener.on_revoke
    # The client runs on its own thread; this one only waits, so Ctrl-C lands here and
    # becomes a clean stop (the checkpoint is saved) instead of a cancelled event loop.
    ws.connect(threaded=True)
    interrupted = False
    with _stop_on_sigterm(ws):
        try:
            while not ws.join(0.2):
                pass
        except KeyboardInterrupt:
            interrupted = True
            ws.stop()
            ws.join(10)
    if listener.cut_at is not None and args.checkpoint is not None:
        from ..client.checkpoint import Checkpoint

        Checkpoint(args.checkpoint).save(listener.cut_at, force=True)
    if listener.broken_pipe:
        try:  # keep Python from complaining about the closed pipe at exit
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
    if interrupted:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    err = listener.final or ws.error
    if err is None and listener.gave_up:
        err = NetworkError("could not connect")
    if err is None:
        return EXIT_OK
    retries = ""
    if listener.final is None and args.max_retries is not None and not getattr(err, "fatal", 0):
        retries = f" (gave up after {args.max_retries} retries)"
    say("listen", describe(err) + (listener.gave_up or retries))
    return exit_code(err)
