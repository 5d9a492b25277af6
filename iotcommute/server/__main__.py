"""`python -m iotcommute.server [options]`: the same as `iotcommute serve [options]`.

A thin entry kept for scripts that used it; the command line itself lives in iotcommute.cli
(imported only when run as a program, so the server package never depends on the CLI).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from iotcommute.cli import main as cli_main

    return cli_main(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
