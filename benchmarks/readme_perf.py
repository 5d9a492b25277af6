"""Copy the tables of the last `pytest --benchmark` run into README.md, or check a second
run against them.

    pytest --benchmark && python -m benchmarks.readme_perf          # write the README tables
    pytest --benchmark && python -m benchmarks.readme_perf --check  # does run 2 reproduce them?
    python -m benchmarks.readme_perf --reproduced benchmarks/results/summary.json  # keep those

Writing replaces the README's performance section between its markers with the run's tables
(median and spread of every figure, with its date, machine and library versions) and keeps
that run's rounds in benchmarks/readme_run.json. ``--check`` compares a later run
(results/summary.json, or the file given) with it: a figure reproduces when the later run's
median lies within the spread the README states (the first run's slowest to fastest round;
for a ratio, our slowest round over the peer's fastest to our fastest over its slowest;
latency percentiles within their slices' range; peak memory within ±1 MiB). It prints every
figure that does not, the count that do, and exits 1 if any does not.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from benchmarks import summary

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SUMMARY = RESULTS / "summary.md"
README = ROOT / "README.md"
BASELINE = ROOT / "benchmarks" / "readme_run.json"  # committed with the README it wrote
START, END = "<!-- performance:start -->", "<!-- performance:end -->"
KEEP = ("### ",)
MEMORY_TOLERANCE_MIB = 1.0


def extract(text: str) -> str:
    """The run's header bullets and note, then each section's heading and tables."""
    lines = text.splitlines()
    out = [line for line in lines if line.startswith("- ")]
    out.append("")
    out += [line for line in lines if line.startswith("Rates are")]
    out.append("")
    i = 0
    while i < len(lines):
        if lines[i].startswith(KEEP):
            out += ["#" + lines[i], ""]  # one level deeper under the README's heading
            i += 1
            while i < len(lines) and not lines[i].startswith("#"):
                if lines[i].startswith("|") or (out[-1].startswith("|") and not lines[i]):
                    out.append(lines[i])
                i += 1
            if out[-1]:
                out.append("")
        else:
            i += 1
    return "\n".join(out).rstrip() + "\n"


def write_readme() -> int:
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
    shutil.copyfile(RESULTS / "summary.json", BASELINE)
    print(
        f"README.md performance section updated from {SUMMARY.relative_to(ROOT)}; "
        f"its rounds kept in {BASELINE.relative_to(ROOT)} for --check"
    )
    return 0


def _record_figures(records: list[dict[str, Any]]) -> dict[str, summary.Figure]:
    out = {}
    for r in records:
        if r.get("section") == "latency":
            for q in ("p50", "p99"):
                lo, hi = r.get(f"{q}_range", [r[f"{q}_us"], r[f"{q}_us"]])
                key = f"latency|{r['subject']}|{q} µs"
                out[key] = summary.Figure(key, float(r[f"{q}_us"]), float(lo), float(hi))
        elif r.get("section") == "memory":
            key = f"memory|{r['subject']}|{r['messages']} msgs|peak MiB"
            peak = float(r["base_mib"]) + float(r["peak_growth_mib"])
            out[key] = summary.Figure(
                key, peak, peak - MEMORY_TOLERANCE_MIB, peak + MEMORY_TOLERANCE_MIB
            )
    return out


def all_figures(path: Path) -> dict[str, summary.Figure]:
    cells, records = summary.load(path)
    out = {f.key: f for f in summary.figures(cells)}
    out.update(_record_figures(records))
    return out


def compare(later: Path, baseline: Path = BASELINE) -> tuple[set[str], list[str], int]:
    """(keys reproduced, lines about those that were not, number of figures)."""
    first, second = all_figures(baseline), all_figures(later)
    ok: set[str] = set()
    bad = []
    for key, f in first.items():
        g = second.get(key)
        if g is None:
            bad.append(f"{key}: missing from the second run")
        elif f.lo <= g.median <= f.hi:
            ok.add(key)
        else:
            bad.append(
                f"{key}: {g.median:.4g} outside the stated {f.median:.4g} "
                f"[{f.lo:.4g}\u2013{f.hi:.4g}]"
            )
    return ok, bad, len(first)


def check(later: Path, baseline: Path = BASELINE) -> int:
    if not baseline.exists():
        print(f"no {baseline}: write the README from a run first", file=sys.stderr)
        return 1
    ok, bad, total = compare(later, baseline)
    for line in bad:
        print("NOT REPRODUCED", line)
    print(f"{len(ok)} of {total} README figures reproduced by {later.name} within their spread")
    return 1 if bad else 0


def keep_reproduced(later: Path, baseline: Path = BASELINE) -> int:
    """Rewrite the README's tables (from the baseline run) printing only the figures that
    `later` reproduced; the others read NOT_REPRODUCED. The header keeps the baseline's
    date and machine."""
    if not baseline.exists():
        print(f"no {baseline}: write the README from a run first", file=sys.stderr)
        return 1
    ok, bad, total = compare(later, baseline)
    cells, records = summary.load(baseline)
    section = extract(summary.build(cells, records, 1.0, keep=ok))
    text = README.read_text()
    pattern = re.compile(re.escape(START) + r"(.*?)" + re.escape(END), re.S)
    m = pattern.search(text)
    if m is None:
        print("README.md has no performance markers", file=sys.stderr)
        return 1
    header = [line for line in m.group(1).splitlines() if line.startswith("- ")]
    body = [line for line in section.splitlines() if not line.startswith("- ")]
    note = (
        f"- reproduced: a second run of the same benchmarks on the same machine reproduced "
        f"{len(ok)} of these "
        f"{total} figures within the spread stated here (`python -m benchmarks.readme_perf "
        f"--check`); each of the other {total - len(ok)} is printed as "
        f"{summary.NOT_REPRODUCED} (not reproduced)"
    )
    new = "\n".join([*[h for h in header if not h.startswith("- reproduced:")], note, *body])
    README.write_text(pattern.sub(lambda _: f"{START}\n{new.rstrip()}\n{END}", text))
    print(f"README.md: {len(ok)} of {total} figures kept, {len(bad)} marked not reproduced")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--check",
        nargs="?",
        const=RESULTS / "summary.json",
        type=Path,
        help="compare this run's summary.json (default: the last run) with the README's run",
    )
    ap.add_argument(
        "--reproduced",
        type=Path,
        metavar="SUMMARY_JSON",
        help="rewrite the README's tables keeping only the figures this later run reproduced",
    )
    args = ap.parse_args(argv)
    if args.reproduced is not None:
        return keep_reproduced(args.reproduced)
    if args.check is not None:
        return check(args.check)
    return write_readme()


if __name__ == "__main__":
    sys.exit(main())
