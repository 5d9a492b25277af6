"""Markdown summary of a ``pytest --benchmark`` run: messages/s and ratios to the best peer.

Fed by benchmarks/conftest.py with pytest-benchmark's results (``extra_info`` carries
``section``, ``case``, ``subject``, ``decoder`` and ``items``, the count delivered per
round) and with the non-timing records (latency, memory). Rates use the *median* round:
on a shared 2-core machine the median is steadier than the minimum.
Writes results/summary.md and results/summary.json.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from collections import defaultdict
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


def _median(meta: Any) -> float | None:
    stats = getattr(meta, "stats", None)
    med = getattr(stats, "median", None)
    return float(med) if med else None


def _is_ours(subject: str) -> bool:
    return subject.startswith("iotcommute")


def _column(info: dict[str, Any]) -> str:
    return str(info["subject"]) + ("+json.loads" if info.get("decoder") == "json" else "")


def _ratio_table(title: str, rows: dict[str, dict[str, float]], order: list[str]) -> list[str]:
    """rows: row label -> {subject column -> items/s}."""
    ours = [c for c in order if _is_ours(c)]
    out = [
        f"### {title}",
        "",
        "| case | best peer | " + " | ".join(ours) + " |",
        "|---|---|" + "---|" * len(ours),
    ]
    for label, cols in rows.items():
        peers = {k: v for k, v in cols.items() if not _is_ours(k)}
        best = max(peers.items(), key=lambda kv: kv[1]) if peers else None
        cells = []
        for c in ours:
            if c not in cols:
                cells.append("-")
            elif best is None:
                cells.append(f"{rate(cols[c])}/s")
            else:
                cells.append(f"{rate(cols[c])}/s ({cols[c] / best[1]:.2f}x)")
        best_cell = f"{best[0]} {rate(best[1])}/s" if best else "-"
        out.append(f"| {label} | {best_cell} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("| case | " + " | ".join(order) + " |")
    out.append("|---|" + "---|" * len(order))
    for label, cols in rows.items():
        out.append(
            f"| {label} | "
            + " | ".join(f"{rate(cols[c])}" if c in cols else "-" for c in order)
            + " |"
        )
    out.append("")
    return out


def build(metas: list[Any], records: list[dict[str, Any]], scale: float) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# iotcommute benchmark summary",
        "",
        f"- date: {now}; scale: {scale:g} (IOTCOMMUTE_BENCH_SCALE)",
        f"- CPU: {cpu_model()} x {os.cpu_count()} (shared machine: expect noise)",
        f"- Python {platform.python_version()} ({sys.implementation.name}), {platform.system()}",
        "- " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        "",
        "Rates are items delivered per second (ticks for tick cases, else messages), median "
        "round; (Nx) is the ratio to the fastest peer library in the same case (>1 = faster).",
        "",
    ]
    sections: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    order: list[str] = []
    others = []
    for m in metas:
        info = getattr(m, "extra_info", {}) or {}
        med = _median(m)
        if med is None:
            continue
        if "section" not in info or "subject" not in info:
            others.append((m, med, info))
            continue
        col = _column(info)
        label = str(info.get("case", "?"))
        if info.get("decoder") == "json":
            col = str(info["subject"])
            label += " (json.loads)"
        sections[str(info["section"])][label][col] = float(info["items"]) / med
        if col not in order:
            order.append(col)
    if "recv" in sections:
        lines += _ratio_table("Receive", sections["recv"], order)
    if "send" in sections:
        lines += _ratio_table("Send (masked text frames into a sink)", sections["send"], order)

    lat = [r for r in records if r.get("section") == "latency"]
    if lat:
        lines += [
            "### Round-trip latency (echo, steady rate)",
            "",
            "| subject | rate msg/s | messages | p50 µs | p99 µs | max µs |",
            "|---|---|---|---|---|---|",
        ]
        for r in lat:
            lines.append(
                f"| {r['subject']} | {r['rate']:g} | {r['messages']} | "
                f"{r['p50_us']:.0f} | {r['p99_us']:.0f} | {r['max_us']:.0f} |"
            )
        lines.append("")
    mem = [r for r in records if r.get("section") == "memory"]
    if mem:
        lengths = sorted({int(r["messages"]) for r in mem})
        by: dict[str, dict[int, str]] = defaultdict(dict)
        for r in mem:
            by[str(r["subject"])][int(r["messages"])] = (
                f"{r['base_mib'] + r['peak_growth_mib']:.1f} (+{r['peak_growth_mib']:.1f})"
            )
        lines += [
            f"### Peak RSS receiving {mem[0]['case']}: MiB (+ growth over the RSS before the "
            "stream; warm process)",
            "",
            "| subject | " + " | ".join(f"{n} msgs" for n in lengths) + " |",
            "|---|" + "---|" * len(lengths),
        ]
        for subject, vals in by.items():
            lines.append(f"| {subject} | " + " | ".join(vals.get(n, "-") for n in lengths) + " |")
        lines.append("")
    if others:
        lines += ["### Other benchmarks", "", "| benchmark | median s | rates |", "|---|---|---|"]
        for m, med, info in others:
            rates = ", ".join(
                f"{k} {rate(float(v))}"
                for k, v in info.items()
                if k.endswith("_per_s") and isinstance(v, int | float)
            )
            lines.append(f"| {getattr(m, 'name', '?')} | {med:.4f} | {rates or '-'} |")
        lines.append("")
    return "\n".join(lines)


def write(text: str, metas: list[Any], records: list[dict[str, Any]], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "summary.md"
    path.write_text(text + "\n")
    raw = [
        {
            "name": getattr(m, "name", "?"),
            "median_s": _median(m),
            "extra_info": getattr(m, "extra_info", {}),
        }
        for m in metas
    ]
    (folder / "summary.json").write_text(
        json.dumps({"benchmarks": raw, "records": records}, indent=1, default=str) + "\n"
    )
    return path
