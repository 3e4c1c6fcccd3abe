"""`python -m bench --quick --only swap`: the swap section runs on the fake engine and reports
every figure (both swap kinds through the gateway and bare, their steps, the orchestrator's
share), and the vLLM side is skipped with its reason. Nothing about speed is asserted."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120  # a bound on a hung run: the section takes ~10 s
STEPS = {
    "stop_start": {
        "gateway": {
            "total",
            "to_victim_stopped",
            "stopped_to_starting",
            "starting_to_listening",
            "listening_to_running",
            "running_to_answer",
        },
        "bare": {"total", "stop", "spawn_to_listening", "listening_to_answer"},
    },
    "sleep_wake": {
        "gateway": {"total", "to_victim_sleeping", "sleeping_to_running", "running_to_answer"},
        "bare": {"total", "sleep_call", "wake_call", "answer"},
    },
}


def _run_swap_quick(out_dir: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_ORCH_")}
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "swap", "--out-dir", str(out_dir)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    files = sorted(out_dir.glob("*.json"))
    assert len(files) == 1, f"expected one results file, got {files}:\n{completed.stderr[-3000:]}"
    return completed, json.loads(files[0].read_text())


def test_bench_swap_quick_reports_every_figure(tmp_path: Path) -> None:
    completed, document = _run_swap_quick(tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert document["leaked_engine_pids"] == []
    section = document["sections"]["swap"]
    assert section["status"] == "ok", section["reason"]
    assert isinstance(section["goal_met"], bool)
    figures = section["figures"]
    for kind, sides in STEPS.items():
        for side, steps in sides.items():
            assert set(figures[kind][side]) == steps, (kind, side)
            for step in steps:
                summary = figures[kind][side][step]
                assert summary["n"] == figures["rounds"], (kind, side, step)
                assert not math.isnan(summary["median_ms"]), (kind, side, step)
        assert isinstance(figures[kind]["added_median_ms"], float), kind
    assert isinstance(figures["stop_start"]["steps_outside_start_ms"], float)
    assert figures["stop_start_over_sleep_wake"] > 0
    vllm = figures["vllm_cpu"]
    assert vllm["status"] == "skipped" and "--quick" in vllm["reason"]
    metrics = [row["metric"] for row in section["rows"]]
    assert "stop-and-start: the orchestrator's share (ms)" in metrics
    assert "sleep-and-wake: the orchestrator's share (ms)" in metrics
    assert "[swap]" in completed.stdout
