"""Copy the ratio tables of the last `pytest --benchmark` run into README.md.

    pytest --benchmark && python benchmarks/readme_perf.py

The README's performance section is replaced between its markers, so what users read is
always a real run's output (with its date, machine and library versions), never typed in.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = ROOT / "benchmarks" / "results" / "summary.md"
README = ROOT / "README.md"
START, END = "<!-- performance:start -->", "<!-- performance:end -->"
KEEP = ("### Receive", "### Send", "### Round-trip latency", "### Peak RSS")


def extract(summary: str) -> str:
    """The run's header bullets and, per kept section, its heading and first table."""
    lines = summary.splitlines()
    out = [line for line in lines if line.startswith("- ")]
    out.append("")
    i = 0
    while i < len(lines):
        if lines[i].startswith(KEEP):
            out += ["#" + lines[i], ""]  # one level deeper under the README's heading
            i += 1
            while i < len(lines) and not lines[i].startswith("|"):
                i += 1
            while i < len(lines) and lines[i].startswith("|"):
                out.append(lines[i])
                i += 1
            out.append("")
        else:
            i += 1
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    if not SUMMARY.exists():
        print(f"no {SUMMARY.relative_to(ROOT)}: run `pytest --benchmark` first", file=sys.stderr)
        return 1
    section = extract(SUMMARY.read_text())
    text = README.read_text()
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        print("README.md has no performance markers", file=sys.stderr)
        return 1
    README.write_text(pattern.sub(lambda _: f"{START}\n{section}{END}", text))
    print(f"README.md performance section updated from {SUMMARY.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
