"""What every subcommand shares: exit codes, one-line error text, help layout, logging.

A user reads the CLI's messages, not our tracebacks: every failure a user can cause or
meet (a bad option, a refused connection, a rejected key, an unknown device, Ctrl-C) ends
in one line on stderr, `iotcommute <command>: <what happened>`, and a documented exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys

from ..exceptions import (
    InputError,
    IotCommuteError,
    NotFoundError,
    PermissionDenied,
    RateLimitError,
    TokenError,
)

__all__ = [
    "EXIT_AUTH",
    "EXIT_CODES_HELP",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "HelpFormatter",
    "UsageError",
    "describe",
    "exit_code",
    "say",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_NOT_FOUND = 4
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    runtime error: cannot connect, retries used up, server error, port in use
  2    usage error: a bad option or value (argparse errors too)
  3    rejected: bad key, token or password; role or device not allowed
  4    not found: unknown device
  130  interrupted (Ctrl-C; for serve, Ctrl-C is the normal stop: 0)"""


class UsageError(Exception):
    """A mistake on the command line that only the subcommand can see (exit code 2)."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (None, off flags)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default is None or default is False:
            return text
        if default == argparse.SUPPRESS:
            return text
        if not action.option_strings or isinstance(action, argparse._CountAction):
            return text
        return text + " (default: %(default)s)"


_MAX_REASON = 160


_HTML_START = re.compile(r"<\s*[a-zA-Z!/]")


def _short(text: str) -> str:
    """One line of at most _MAX_REASON characters; an HTML body (a web server's 404 page) is
    dropped: the status says it all, the page is noise."""
    start = _HTML_START.search(text)
    if start is not None:
        text = text[: start.start()].rstrip(" :")
    text = " ".join(text.split())
    if len(text) > _MAX_REASON:
        text = text[: _MAX_REASON - 3].rstrip() + "..."
    return text


def _json_reason(text: str) -> str:
    """A JSON error body inside a message is replaced by its "message" field."""
    start = text.find("{")
    if start < 0:
        return text
    try:
        body = json.loads(text[start:])
    except ValueError:
        return text
    if not isinstance(body, dict) or not isinstance(body.get("message"), str):
        return text
    prefix = re.sub(r"[\s:]*\d{3}[\s:]*$", "", text[:start]).rstrip(" :")
    return f"{prefix}: {body['message']}" if prefix else body["message"]


def describe(exc: BaseException) -> str:
    """The one line a user sees for an error: its documented name, status and short reason.

    `TokenError (HTTP 401): server rejected the WebSocket upgrade: invalid access token`
    """
    name = type(exc).__name__
    if isinstance(exc, IotCommuteError):
        if exc.status is not None:
            name = f"{name} (HTTP {exc.status})"
        reason = _short(_json_reason(exc.message or ""))
        if exc.status is not None:  # the status is in the name already
            reason = reason.removesuffix(f": {exc.status}").replace(f": {exc.status}: ", ": ", 1)
        return f"{name}: {reason}" if reason else name
    if isinstance(exc, OSError) and exc.strerror:
        return f"{name}: {_short(exc.strerror)}"
    return f"{name}: {_short(str(exc))}" if str(exc) else name


def exit_code(exc: BaseException) -> int:
    """The documented exit code for an error that ended a command."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, (TokenError, PermissionDenied)):
        return EXIT_AUTH
    status = getattr(exc, "status", None)
    if isinstance(exc, IotCommuteError) and status in (401, 403):
        return EXIT_AUTH
    if isinstance(exc, NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, (UsageError, ValueError)):
        return EXIT_USAGE
    if isinstance(exc, InputError) and not isinstance(exc, RateLimitError):
        return EXIT_USAGE
    return EXIT_ERROR


def say(command: str, message: str) -> None:
    """One line on stderr, prefixed with the command, flushed at once."""
    print(f"iotcommute {command}: {message}", file=sys.stderr, flush=True)


def verbosity(args: argparse.Namespace) -> int:
    """-v/-q given before or after the subcommand, summed (-q counts down)."""
    v: int = 0
    for name in ("verbose", "verbose_sub"):
        v += int(getattr(args, name, 0) or 0)
    for name in ("quiet", "quiet_sub"):
        v -= int(getattr(args, name, 0) or 0)
    return v


def setup_logging(level_offset: int) -> None:
    """Log records on stderr: -q errors only, default warnings, -v info, -vv debug."""
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(
        max(-1, min(level_offset, 2)), logging.DEBUG
    )
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def quiet_library(args: argparse.Namespace) -> None:
    """For commands that report the client's errors themselves: its records only with -v.

    Without this a refused connection would show twice, once as the library's WARNING and
    once as the command's own line.
    """
    if verbosity(args) <= 0:
        logging.getLogger("iotcommute").setLevel(logging.CRITICAL + 1)
        # an in-process reference server (the demo) keeps its records
        logging.getLogger("iotcommute.server").setLevel(logging.getLogger().level)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0: {text}")
    return value
