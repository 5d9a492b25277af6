"""The `iotcommute` command line: serve, listen, login, demo.

Each subcommand is a module of this package with `add_arguments(parser)` and
`run(args) -> int`; main() turns every error a user can meet into one line on stderr and
a documented exit code (see EXIT_CODES_HELP), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from ._util import (
    EXIT_CODES_HELP,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    HelpFormatter,
    UsageError,
    say,
    setup_logging,
    verbosity,
)

__all__ = ["build_parser", "main"]

# subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "serve": ("iotcommute.cli.serve", "run the reference IOT commute server"),
    "listen": ("iotcommute.cli.listen", "connect to a server and print ticks as JSON lines"),
    "login": ("iotcommute.cli.login", "get an access token with a user id and password"),
    "ingest": ("iotcommute.cli.ingest", "stream tick batches into Parquet files, exactly once"),
    "demo": ("iotcommute.cli.demo", "live demo: embedded server, simulated devices, a client"),
}

DESCRIPTION = """\
The IOT commute client and reference server.

  iotcommute serve --simulate 5 --rate 10   # a server with 5 simulated devices
  export IOTCOMMUTE_TOKEN="$(iotcommute login --demo)"
  iotcommute listen --count 10              # 10 ticks as JSON lines
  iotcommute demo                           # all of it in one process

Run `iotcommute COMMAND --help` for a command's options."""


def _version() -> str:
    import platform

    import iotcommute

    impl = "compiled speedups" if iotcommute.SPEEDUPS else "pure Python"
    return (
        f"iotcommute {iotcommute.__version__} ({impl}), "
        f"{platform.python_implementation()} {platform.python_version()}"
    )


class _VersionAction(argparse.Action):
    """--version, computed only when asked (it imports the codecs)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(
            option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="show the version"
        )

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        print(_version())
        parser.exit()


def _verbosity_options(parser: argparse.ArgumentParser, suffix: str) -> None:
    """-v/-q on the main parser and on each subcommand, so they work before or after it."""
    parser.add_argument(
        "-v",
        "--verbose",
        dest="verbose" + suffix,
        action="count",
        default=0,
        help="more log output (-vv: debug); the client library's records show from -v",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        dest="quiet" + suffix,
        action="count",
        default=0,
        help="errors only",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iotcommute",
        description=DESCRIPTION,
        epilog=EXIT_CODES_HELP,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction)
    _verbosity_options(parser, "")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (mod_name, help_text) in SUBCOMMANDS.items():
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as exc:
            # One broken subcommand (say, a missing optional dependency) must not take the
            # others down; it reports itself when used.
            p = sub.add_parser(name, help=help_text, description=help_text)
            p.set_defaults(_run=_unavailable(name, exc))
            continue
        p = sub.add_parser(
            name,
            help=help_text,
            description=(mod.__doc__ or help_text).strip(),
            epilog=EXIT_CODES_HELP,
            formatter_class=HelpFormatter,
        )
        _verbosity_options(p, "_sub")
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _unavailable(name: str, exc: ImportError) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        say(name, f"unavailable ({exc})")
        return EXIT_USAGE

    return run


def main(argv: list[str] | None = None) -> int:
    """Parse, run one subcommand, return its exit code (see EXIT_CODES_HELP)."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        setup_logging(verbosity(args))
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(file=sys.stderr)  # end the line the ^C was echoed on
        return EXIT_INTERRUPTED
    except UsageError as exc:
        say(getattr(args, "command", None) or "", str(exc))
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
