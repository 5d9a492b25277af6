"""Markdown summary of a ``pytest --benchmark`` run: rates with their spread, ratios to the
best peer.

Fed by benchmarks/conftest.py with pytest-benchmark's results (``extra_info`` carries
``section``, ``case``, ``subject`` and ``items``, the count delivered per round; see
benchmarks/rounds.py) and with the non-timing records (latency, memory). Every round's time
becomes a rate: a cell shows the median round and the spread (min-max over the rounds). The
best peer of a case is the peer library with the highest median rate in that case; a ratio's
spread is the conservative one (our slowest round over the peer's fastest, and back).
Writes results/summary.md and results/summary.json (the rounds themselves, which
``readme_perf.py --check`` compares).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

LIBS = [
    "iotcommute",
    "picows",
    "aiohttp",
    "websockets",
    "wsproto",
    "websocket-client",
    "uvloop",
    "orjson",
    "Cython",
    "pytest-benchmark",
]
TITLES = {
    "recv": "Receive",
    "send": "Send (masked 256-byte text frames into a sink)",
    "core": "Sans-IO frame reader from memory",
    "payload": "Payload codecs in process",
    "columnar-e2e": "Columnar end to end (ticks/s through WebSocket; the ratio is to the "
    "raw-bytes ceiling: the same stream received by on_message, nothing decoded)",
    "columnar": "Columnar in process (ticks/s on one core, frames in memory)",
}
#: the reference column of a section when it is not the best peer library
REFERENCE = {"columnar-e2e": "ceiling"}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    out = {}
    for lib in LIBS:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = "not installed"
    try:
        from iotcommute.protocol import frames

        out["iotcommute"] += " (compiled speedups)" if frames.SPEEDUPS else " (pure Python)"
    except ImportError:
        pass
    return out


def rate(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}k"
    return f"{n:.0f}"


def is_ours(subject: str) -> bool:
    return subject.startswith("iotcommute")


@dataclass(frozen=True)
class Cell:
    """One benchmark: its rounds' times and the items each round delivered."""

    section: str
    case: str
    subject: str
    items: float
    times: tuple[float, ...]
    cpu: tuple[float, ...] = ()  # CPU seconds of each round, for subjects in this process

    @property
    def rates(self) -> list[float]:
        return sorted(self.items / t for t in self.times if t > 0)

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    @property
    def lo(self) -> float:
        return self.rates[0]

    @property
    def hi(self) -> float:
        return self.rates[-1]

    @property
    def cpu_us(self) -> list[float]:
        """CPU microseconds per item of each round, sorted (empty: not measured)."""
        return sorted(1e6 * c / self.items for c in self.cpu)

    def as_json(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "case": self.case,
            "subject": self.subject,
            "items": self.items,
            "times": list(self.times),
            "cpu": list(self.cpu),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Cell:
        return cls(
            d["section"], d["case"], d["subject"], d["items"], tuple(d["times"]),
            tuple(d.get("cpu", ())),
        )  # fmt: skip


def cells_from_metas(metas: list[Any]) -> list[Cell]:
    out = []
    for m in metas:
        info = getattr(m, "extra_info", {}) or {}
        stats = getattr(getattr(m, "stats", None), "data", None)
        if not stats or not {"section", "case", "subject", "items"} <= info.keys():
            continue
        out.append(
            Cell(
                str(info["section"]),
                str(info["case"]),
                str(info["subject"]),
                float(info["items"]),
                tuple(float(t) for t in stats),
                tuple(float(c) for c in info.get("cpu_s", ())),
            )
        )
    return out


@dataclass(frozen=True)
class Figure:
    """A figure the README states: a median and the spread it claims."""

    key: str
    median: float
    lo: float
    hi: float


def best_peer(cols: dict[str, Cell]) -> Cell | None:
    peers = [c for s, c in cols.items() if not is_ours(s)]
    return max(peers, key=lambda c: c.median) if peers else None


def leanest_peer(cols: dict[str, Cell]) -> Cell | None:
    """The peer library with the least CPU per item (median), among those measured."""
    peers = [c for s, c in cols.items() if not is_ours(s) and c.cpu]
    return min(peers, key=lambda c: statistics.median(c.cpu_us)) if peers else None


def _cpu_ratio(c: Cell, peer: Cell) -> tuple[float, float, float]:
    """Our CPU per item over the peer's: median, and the conservative spread."""
    ours, theirs = c.cpu_us, peer.cpu_us
    return (
        statistics.median(ours) / statistics.median(theirs),
        ours[0] / theirs[-1],
        ours[-1] / theirs[0],
    )


def figures(cells: list[Cell]) -> list[Figure]:
    """Every rate and ratio the tables state, keyed for comparison between runs."""
    out = []
    for section, cases in grouped(cells).items():
        for case, cols in cases.items():
            best = best_peer(cols)
            for subject, c in cols.items():
                out.append(Figure(f"{section}|{case}|{subject}|rate", c.median, c.lo, c.hi))
                if best is not None and is_ours(subject):
                    out.append(
                        Figure(
                            f"{section}|{case}|{subject}|ratio to best peer",
                            c.median / best.median,
                            c.lo / best.hi,
                            c.hi / best.lo,
                        )
                    )
                if c.cpu:
                    us = c.cpu_us
                    out.append(Figure(f"{section}|{case}|{subject}|cpu", statistics.median(us),
                                      us[0], us[-1]))  # fmt: skip
            lean = leanest_peer(cols)
            for subject, c in cols.items():
                if lean is not None and is_ours(subject) and c.cpu:
                    key = f"{section}|{case}|{subject}|cpu ratio"
                    out.append(Figure(key, *_cpu_ratio(c, lean)))
    return out


def grouped(cells: list[Cell]) -> dict[str, dict[str, dict[str, Cell]]]:
    sections: dict[str, dict[str, dict[str, Cell]]] = defaultdict(lambda: defaultdict(dict))
    for c in cells:
        sections[c.section][c.case][c.subject] = c
    return sections


def _spread(c: Cell) -> str:
    return f"{rate(c.median)}/s [{rate(c.lo)}\u2013{rate(c.hi)}]"


#: the mark of a figure that a second run did not reproduce (readme_perf --reproduced)
NOT_REPRODUCED = "n.r."


def _shown(keep: set[str] | None, *keys: str) -> bool:
    return keep is None or all(k in keep for k in keys)


def ratio_table(
    title: str, cases: dict[str, dict[str, Cell]], keep: set[str] | None = None
) -> list[str]:
    order: list[str] = []
    for cols in cases.values():
        order += [s for s in cols if s not in order]
    ours = [s for s in order if is_ours(s)]
    section = next((c.section for cols in cases.values() for c in cols.values()), "")
    referenced = any(not is_ours(s) for s in order)  # else: rates only, no reference column
    ref = f" {REFERENCE.get(section, 'best peer')} |" if referenced else ""
    out = [
        f"### {title}",
        "",
        f"| case |{ref} " + " | ".join(ours) + " |",
        "|---|" + "---|" * (len(ours) + referenced),
    ]
    for case, cols in cases.items():
        best = best_peer(cols)
        cells = []
        for s in ours:
            c = cols.get(s)
            key = f"{c.section}|{case}|{s}|" if c is not None else ""
            if c is None:
                cells.append("-")
            elif not _shown(keep, key + "rate"):
                cells.append(NOT_REPRODUCED)
            elif best is None:
                cells.append(_spread(c))
            elif not _shown(keep, key + "ratio to best peer"):
                cells.append(f"{_spread(c)} ratio {NOT_REPRODUCED}")
            else:
                cells.append(
                    f"{_spread(c)} **{c.median / best.median:.2f}x** "
                    f"[{c.lo / best.hi:.2f}\u2013{c.hi / best.lo:.2f}]"
                )
        best_cell = "-"
        if best is not None:
            shown = _shown(keep, f"{best.section}|{case}|{best.subject}|rate")
            best_cell = f"{best.subject} {_spread(best) if shown else NOT_REPRODUCED}"
        best_col = f" {best_cell} |" if referenced else ""
        out.append(f"| {case} |{best_col} " + " | ".join(cells) + " |")
    out.append("")
    peers = [s for s in order if not is_ours(s)]
    if peers:
        out += ["| case | " + " | ".join(peers) + " |", "|---|" + "---|" * len(peers)]
        for case, cols in cases.items():
            row = []
            for s in peers:
                c = cols.get(s)
                if c is None:
                    row.append("-")
                elif _shown(keep, f"{c.section}|{case}|{s}|rate"):
                    row.append(_spread(c))
                else:
                    row.append(NOT_REPRODUCED)
            out.append(f"| {case} | " + " | ".join(row) + " |")
        out.append("")
    return out


def cpu_table(cases: dict[str, dict[str, Cell]], keep: set[str] | None = None) -> list[str]:
    """CPU per message of the client process, where it was measured (subjects that run in
    the benchmark's process), with our ratio to the peer that used the least."""
    measured = {case: {s: c for s, c in cols.items() if c.cpu} for case, cols in cases.items()}
    measured = {case: cols for case, cols in measured.items() if cols}
    if not measured:
        return []
    order: list[str] = []
    for cols in measured.values():
        order += [s for s in cols if s not in order and is_ours(s)]
    out = [
        "### Client CPU per message (receive; user + system time of the client's process, "
        "the firehose's not included)",
        "",
        "| case | leanest peer | " + " | ".join(order) + " |",
        "|---|---|" + "---|" * len(order),
    ]

    def us(c: Cell) -> str:
        v = c.cpu_us
        return f"{statistics.median(v):.2f} µs [{v[0]:.2f}\u2013{v[-1]:.2f}]"

    for case, cols in measured.items():
        lean = leanest_peer(cols)
        lean_cell = "-"
        if lean is not None:
            shown = _shown(keep, f"{lean.section}|{case}|{lean.subject}|cpu")
            lean_cell = f"{lean.subject} {us(lean) if shown else NOT_REPRODUCED}"
        row = []
        for s in order:
            c = cols.get(s)
            if c is None:
                row.append("-")
                continue
            key = f"{c.section}|{case}|{s}|"
            cell = us(c) if _shown(keep, key + "cpu") else NOT_REPRODUCED
            if lean is not None:
                if _shown(keep, key + "cpu ratio"):
                    m, lo, hi = _cpu_ratio(c, lean)
                    cell += f" **{m:.2f}x** [{lo:.2f}\u2013{hi:.2f}]"
                else:
                    cell += f" ratio {NOT_REPRODUCED}"
            row.append(cell)
        out.append(f"| {case} | {lean_cell} | " + " | ".join(row) + " |")
    out += [
        "",
        "**Nx** here is our CPU per message over the leanest peer's (below 1: less CPU).",
        "",
    ]
    return out


def fallback_table(
    sections: dict[str, dict[str, dict[str, Cell]]], keep: set[str] | None = None
) -> list[str]:
    """The pure-Python fallback against wsproto (the pure-Python peer), where both ran."""
    rows = []
    for section in ("core", "recv"):
        for case, cols in sections.get(section, {}).items():
            ws = cols.get("wsproto")
            if ws is None:
                continue
            for s, c in cols.items():
                if "fallback" in s and not _shown(
                    keep, f"{section}|{case}|{s}|rate", f"{section}|{case}|wsproto|rate"
                ):
                    rows.append(f"| {section}: {case} | {s} | {NOT_REPRODUCED} |")
                elif "fallback" in s:
                    rows.append(
                        f"| {section}: {case} | {s} | {c.median / ws.median:.1f}x "
                        f"[{c.lo / ws.hi:.1f}\u2013{c.hi / ws.lo:.1f}] |"
                    )
    if not rows:
        return []
    return [
        "### Pure-Python fallback vs wsproto",
        "",
        "| case | subject | ratio to wsproto |",
        "|---|---|---|",
        *rows,
        "",
    ]


def build(
    cells: list[Cell],
    records: list[dict[str, Any]],
    scale: float,
    keep: set[str] | None = None,
) -> str:
    """The summary's markdown; with `keep` (figure keys, see `figures`), every other figure
    is printed as NOT_REPRODUCED."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rounds = max((len(c.times) for c in cells), default=0)
    lines = [
        "# iotcommute benchmark summary",
        "",
        f"- date: {now}; scale: {scale:g} (IOTCOMMUTE_BENCH_SCALE); {rounds} rounds per "
        f"benchmark, about {float(os.environ.get('IOTCOMMUTE_BENCH_ROUND_S') or 0.8 * scale):g} s "
        "each "
        "end to end (a quarter of that in process)",
        f"- CPU: {cpu_model()} x {os.cpu_count()} (shared machine: expect noise)",
        f"- Python {platform.python_version()} ({sys.implementation.name}), {platform.system()}",
        "- " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        "",
        "Rates are items delivered per second (ticks for tick cases, else messages): median "
        "round [slowest\u2013fastest round]. **Nx** is the median's ratio to the best peer library "
        "of the case (the peer with the highest median), [range] our slowest round over its "
        "fastest to our fastest over its slowest.",
        "",
    ]
    sections = grouped(cells)
    for section, title in TITLES.items():
        if section in sections:
            lines += ratio_table(title, sections[section], keep)
    for section in sections:
        if section not in TITLES:
            lines += ratio_table(section, sections[section], keep)
    if "recv" in sections:
        lines += cpu_table(sections["recv"], keep)
    lines += fallback_table(sections, keep)

    lat = [r for r in records if r.get("section") == "latency"]
    if lat:
        lines += [
            "### Round-trip latency (echo, steady rate)",
            "",
            "| subject | rate msg/s | messages | p50 µs [slices] | p99 µs [slices] | max µs |",
            "|---|---|---|---|---|---|",
        ]
        for r in lat:
            p50r, p99r = r.get("p50_range", [0, 0]), r.get("p99_range", [0, 0])
            if not _shown(keep, f"latency|{r['subject']}|p50 µs", f"latency|{r['subject']}|p99 µs"):
                lines.append(f"| {r['subject']} | {r['rate']:g} | {r['messages']} | "
                             f"{NOT_REPRODUCED} | {NOT_REPRODUCED} | - |")  # fmt: skip
                continue
            lines.append(
                f"| {r['subject']} | {r['rate']:g} | {r['messages']} | "
                f"{r['p50_us']:.0f} [{p50r[0]:.0f}\u2013{p50r[1]:.0f}] | "
                f"{r['p99_us']:.0f} [{p99r[0]:.0f}\u2013{p99r[1]:.0f}] | {r['max_us']:.0f} |"
            )
        lines.append("")
    mem = [r for r in records if r.get("section") == "memory"]
    if mem:
        lengths = sorted({int(r["messages"]) for r in mem})
        by: dict[str, dict[int, str]] = defaultdict(dict)
        for r in mem:
            if not _shown(keep, f"memory|{r['subject']}|{r['messages']} msgs|peak MiB"):
                by[str(r["subject"])][int(r["messages"])] = NOT_REPRODUCED
                continue
            by[str(r["subject"])][int(r["messages"])] = (
                f"{r['base_mib'] + r['peak_growth_mib']:.1f} (+{r['peak_growth_mib']:.1f})"
            )
        lines += [
            f"### Peak RSS receiving {mem[0]['case']}: MiB (+ growth over the RSS before the "
            "stream; warm process; one run each, stated to ±1 MiB)",
            "",
            "| subject | " + " | ".join(f"{n} msgs" for n in lengths) + " |",
            "|---|" + "---|" * len(lengths),
        ]
        for subject, vals in by.items():
            lines.append(f"| {subject} | " + " | ".join(vals.get(n, "-") for n in lengths) + " |")
        lines.append("")
    return "\n".join(lines)


def write(text: str, cells: list[Cell], records: list[dict[str, Any]], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "summary.md"
    path.write_text(text + "\n")
    (folder / "summary.json").write_text(
        json.dumps(
            {"cells": [c.as_json() for c in cells], "records": records}, indent=1, default=str
        )
        + "\n"
    )
    return path


def load(path: Path) -> tuple[list[Cell], list[dict[str, Any]]]:
    data = json.loads(path.read_text())
    return [Cell.from_json(d) for d in data.get("cells", [])], list(data.get("records", []))
