"""The gateway benchmark's figures: runs pooled per side, each side against direct, the goals.

Latencies are pooled over the rounds before the median is taken; throughputs are totals over
the rounds. Every comparison is against `direct` (the client straight to the engine) measured in
the same rounds.
"""

from __future__ import annotations

import math
from typing import Any

from bench.report import Row, median, summary_ms

SIDE_LABELS = {
    "direct": "direct",
    "ours": "gpu-orchestrator",
    "litellm": "LiteLLM",
    "vllm-router": "vllm-router",
}
PROXIES = ("ours", "litellm", "vllm-router")
GOAL_ADDED_MS = 1.0
GOAL_STREAM_RATIO = 0.97
GOAL_COLD_ADDED_MS = 50.0

Runs = list[dict[str, Any]] | str


def _pool(runs: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [value for run in runs for value in run["latencies_s"]]
    ttfc = [value for run in runs for value in run["ttfc_s"]]
    duration_s = sum(run["duration_s"] for run in runs)
    requests = sum(run["requests"] for run in runs)
    return {
        "runs": len(runs),
        "requests": requests,
        "rps": round(requests / duration_s, 1) if duration_s else 0.0,
        "latency_ms": summary_ms(latencies),
        "ttfc_ms": summary_ms(ttfc) if ttfc else None,
        "tokens_per_s": round(sum(run["tokens_per_s"] for run in runs) / len(runs), 1),
        "per_run": [
            {
                "rps": run["rps"],
                "median_ms": run["latency_ms"]["median_ms"],
                "ttfc_median_ms": (run["ttfc_ms"] or {}).get("median_ms"),
                "tokens_per_s": run["tokens_per_s"],
            }
            for run in runs
        ],
        "_latencies_s": latencies,
        "_ttfc_s": ttfc,
    }


def aggregate(results: dict[str, dict[str, Runs]]) -> dict[str, Any]:
    """`workloads` (per workload and side: pooled figures or the error) and `compared`."""
    pooled: dict[str, dict[str, dict[str, Any]]] = {}
    for workload, per_side in results.items():
        pooled[workload] = {
            side: ({"error": runs} if isinstance(runs, str) else _pool(runs))
            for side, runs in per_side.items()
            if isinstance(runs, str) or runs
        }
    compared: dict[str, dict[str, float]] = {
        "added_latency_ms": _added(pooled.get("latency_c1", {}), "_latencies_s"),
        "added_ttfc_ms": _added(pooled.get("ttfc_c1", {}), "_ttfc_s"),
        "rps_ratio": _ratio(pooled.get("rps_c32", {}), "rps"),
        "stream_ratio": _ratio(pooled.get("stream_c64", {}), "tokens_per_s"),
    }
    for sides in pooled.values():
        for figures in sides.values():
            figures.pop("_latencies_s", None)
            figures.pop("_ttfc_s", None)
    return {"workloads": pooled, "compared": compared}


def _added(sides: dict[str, dict[str, Any]], key: str) -> dict[str, float]:
    direct = sides.get("direct", {})
    if key not in direct:
        return {}
    baseline = median(direct[key])
    return {
        side: round((median(figures[key]) - baseline) * 1000, 3)
        for side, figures in sides.items()
        if side != "direct" and key in figures
    }


def _ratio(sides: dict[str, dict[str, Any]], key: str) -> dict[str, float]:
    baseline = sides.get("direct", {}).get(key)
    if not baseline:
        return {}
    return {
        side: round(figures[key] / baseline, 3)
        for side, figures in sides.items()
        if side != "direct" and key in figures
    }


def _absolute(figures: dict[str, Any], workload: str, side: str) -> str:
    found = figures["workloads"].get(workload, {}).get(side)
    if found is None:
        return str(figures.get("unavailable", {}).get(side, "not measured"))
    if "error" in found:
        return f"error: {found['error']}"
    if workload == "latency_c1":
        return f"median {found['latency_ms']['median_ms']:.2f} ms"
    if workload == "ttfc_c1":
        return f"first chunk {found['ttfc_ms']['median_ms']:.2f} ms"
    if workload == "rps_c32":
        return f"{found['rps']:.0f} req/s"
    return f"{found['tokens_per_s']:.0f} tokens/s"


def rows(figures: dict[str, Any]) -> list[Row]:
    compared = figures["compared"]
    out: list[Row] = []
    specs = (
        ("latency_c1", "added_latency_ms", "added median latency, 1 client (ms)", "<= 1"),
        ("ttfc_c1", "added_ttfc_ms", "added time to first chunk, 1 stream (ms)", "<= 1"),
        ("stream_c64", "stream_ratio", "tokens/s at 64 streams / direct", ">= 0.97"),
        ("rps_c32", "rps_ratio", "proxy-bound req/s at 32 clients / direct", ""),
    )
    for workload, key, metric, goal in specs:
        out.append(Row(f"{metric}: direct", _absolute(figures, workload, "direct")))
        for side in PROXIES:
            value = compared[key].get(side)
            met = _met(key, value) if side == "ours" else None
            shown = "-" if value is None else f"{value:.2f}"
            baseline = _absolute(figures, workload, side)
            out.append(
                Row(f"  {SIDE_LABELS[side]}", shown, baseline, goal if side == "ours" else "", met)
            )
    rps = compared["rps_ratio"]
    if "ours" in rps and "litellm" in rps:
        ahead = rps["ours"] / rps["litellm"]
        out.append(Row("proxy-bound req/s, ours / LiteLLM", f"{ahead:.2f}", "", "> 1", ahead > 1))
    else:
        out.append(Row("proxy-bound req/s, ours / LiteLLM", "-", "LiteLLM not measured"))
    cold = figures["cold_start"]
    engine_ms = cold["engine"]["total"]["median_ms"]
    out.append(Row("cold start, engine's own (ms)", f"{engine_ms:.1f}"))
    out.append(
        Row(
            "cold start through the gateway, added (ms)",
            f"{cold['added_median_ms']:.1f}",
            f"gateway {cold['gateway']['total']['median_ms']:.1f} ms",
            "<= 50",
            cold["added_median_ms"] <= GOAL_COLD_ADDED_MS,
        )
    )
    return out


def _met(key: str, value: float | None) -> bool | None:
    if value is None or math.isnan(value):
        return None
    if key in ("added_latency_ms", "added_ttfc_ms"):
        return value <= GOAL_ADDED_MS
    if key == "stream_ratio":
        return value >= GOAL_STREAM_RATIO
    return None


def side_by_side_markdown(figures: dict[str, Any]) -> str:
    """One line per figure, one column per side: the table docs/benchmarks.md shows."""
    sides = ["direct", *PROXIES]
    header = "| figure | " + " | ".join(SIDE_LABELS[s] for s in sides) + " |"
    lines = [header, "|---" * (len(sides) + 1) + "|"]
    compared = figures["compared"]
    specs = (
        ("latency_c1", "added_latency_ms", "median latency, 1 client (ms); added", "ms"),
        ("ttfc_c1", "added_ttfc_ms", "time to first chunk, 1 stream (ms); added", "ms"),
        ("rps_c32", "rps_ratio", "proxy-bound req/s, 32 clients; / direct", "x"),
        ("stream_c64", "stream_ratio", "tokens/s, 64 streams; / direct", "x"),
    )
    for workload, key, label, unit in specs:
        cells = []
        for side in sides:
            found = figures["workloads"].get(workload, {}).get(side)
            if found is None or "error" in found:
                cells.append("n/a")
                continue
            absolute = _headline(workload, found)
            versus = compared[key].get(side)
            if versus is None:
                cells.append(absolute)
            else:
                sign = "+" if unit == "ms" and versus >= 0 else ""
                cells.append(f"{absolute} ({sign}{versus:.2f}{'' if unit == 'ms' else 'x'})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _headline(workload: str, found: dict[str, Any]) -> str:
    if workload == "latency_c1":
        return f"{found['latency_ms']['median_ms']:.2f}"
    if workload == "ttfc_c1":
        return f"{found['ttfc_ms']['median_ms']:.2f}"
    if workload == "rps_c32":
        return f"{found['rps']:.0f}"
    return f"{found['tokens_per_s']:.0f}"


def method(*, rounds: int, quick: bool) -> str:
    duration = "0.5 s" if quick else "3-5 s"
    return (
        f"{rounds} round(s) of {duration} per workload and side, order rotated each round; "
        "load client bench/http_load.py (uvloop + httptools, own process, keep-alive); "
        "added = side median - direct median; ratios = side / direct"
    )
