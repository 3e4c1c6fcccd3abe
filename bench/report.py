"""Results of a benchmark run: statistics, the printed table and the JSON file.

Every section reports its own figures next to the baseline measured in the same run, because
absolute times on small shared machines drift from one run to the next; ratios travel better.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Status = Literal["ok", "skipped", "failed"]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def p99(values: Sequence[float]) -> float:
    """Nearest-rank 99th percentile: with fewer than 100 samples it is the largest one."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return float(ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)])


def summary_ms(values_s: Sequence[float]) -> dict[str, float | int]:
    """n, median, p99, min and max of durations given in seconds, in milliseconds."""
    values_ms = [value * 1000.0 for value in values_s]
    return {
        "n": len(values_ms),
        "median_ms": round(median(values_ms), 2),
        "p99_ms": round(p99(values_ms), 2),
        "min_ms": round(min(values_ms), 2) if values_ms else math.nan,
        "max_ms": round(max(values_ms), 2) if values_ms else math.nan,
    }


@dataclass
class Row:
    """One line of the table: a figure, its baseline, the goal and whether it was met."""

    metric: str
    value: str
    baseline: str = ""
    goal: str = ""
    met: bool | None = None


@dataclass
class SectionResult:
    name: str
    title: str
    status: Status = "ok"
    reason: str = ""
    method: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)

    @property
    def goal_met(self) -> bool | None:
        verdicts = [row.met for row in self.rows if row.met is not None]
        if self.status != "ok" or not verdicts:
            return None
        return all(verdicts)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "goal_met": self.goal_met}


def skipped(name: str, title: str, reason: str) -> SectionResult:
    return SectionResult(name=name, title=title, status="skipped", reason=reason)


def machine_info() -> dict[str, Any]:
    """nproc, CPU model, RAM and the Python that ran the benchmark."""
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_mib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_mib = int(line.split()[1]) // 1024
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model or platform.processor(),
        "ram_mib": ram_mib,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _verdict(met: bool | None) -> str:
    return {True: "yes", False: "MISSED", None: ""}[met]


def render_table(sections: Sequence[SectionResult]) -> str:
    """A plain-text table: one block per section, one line per figure."""
    header = ("metric", "orchestrator", "baseline", "goal", "met")
    lines: list[tuple[str, ...]] = []
    for section in sections:
        label = f"[{section.name}] {section.title}"
        if section.status != "ok":
            lines.append((label, section.status.upper(), section.reason, "", ""))
            continue
        lines.append((label, "", "", "", ""))
        lines += [
            ("  " + row.metric, row.value, row.baseline, row.goal, _verdict(row.met))
            for row in section.rows
        ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    # The last column is short; cap the baseline column so one long reason does not widen all.
    widths[2] = min(widths[2], 60)

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([fmt(header), rule, *(fmt(line).rstrip() for line in lines)])


def render_markdown(sections: Sequence[SectionResult]) -> str:
    """The same table in Markdown, for docs/benchmarks.md."""
    out = [
        "| benchmark | metric | orchestrator | baseline | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    for section in sections:
        if section.status != "ok":
            out.append(f"| {section.name} | {section.status} | {section.reason} | | | |")
            continue
        for row in section.rows:
            cells = (section.name, row.metric, row.value, row.baseline, row.goal, _verdict(row.met))
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_suffix(".json.tmp")
    tmp_path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    tmp_path.replace(path)
