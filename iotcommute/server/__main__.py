"""`python -m iotcommute.server [options]`: the same as `iotcommute serve`."""

from __future__ import annotations

import argparse
import logging
import sys

from .cli import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m iotcommute.server", description=__doc__)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    add_arguments(parser)
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
