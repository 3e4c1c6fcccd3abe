"""`python -m bench --quick` as CI runs it: every section present in the JSON, none failed, no
engine left behind. Figures are checked for shape, never for speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SECTIONS = {
    "readiness",
    "real_engine",
    "detection",
    "api_cost",
    "scale",
    "gateway",
    "adapters",
    "swap",
    "cluster",  # its figures are checked in test_bench_cluster_quick.py
}
QUICK_TIMEOUT_S = 600  # a bound on a hung run, not a speed check: the quick mode takes ~2 min


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, dict[str, Any]]:
    out_dir = tmp_path_factory.mktemp("bench-results")
    # The quick mode must not need the vLLM engine: run it without the engine's settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_ORCH_")}
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out-dir", str(out_dir)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=QUICK_TIMEOUT_S,
    )
    files = sorted(out_dir.glob("*.json"))
    assert len(files) == 1, f"expected one results file, got {files}:\n{completed.stderr[-3000:]}"
    return completed.returncode, completed.stdout, json.loads(files[0].read_text())


def test_bench_quick_writes_every_section(quick_results: tuple[int, str, dict[str, Any]]) -> None:
    returncode, stdout, document = quick_results
    sections = document["sections"]
    assert set(sections) == SECTIONS
    failed = {name: s["reason"] for name, s in sections.items() if s["status"] == "failed"}
    assert not failed
    assert returncode == 0
    assert document["mode"] == "quick"
    assert document["leaked_engine_pids"] == []
    assert document["machine"]["nproc"] >= 1
    for name in SECTIONS:
        assert f"[{name}]" in stdout


def test_bench_quick_skips_the_real_engine_with_a_reason(
    quick_results: tuple[int, str, dict[str, Any]],
) -> None:
    real_engine = quick_results[2]["sections"]["real_engine"]
    assert real_engine["status"] == "skipped"
    assert "--quick" in real_engine["reason"]
    assert real_engine["goal_met"] is None


def test_bench_quick_measures_each_figure_beside_its_baseline(
    quick_results: tuple[int, str, dict[str, Any]],
) -> None:
    sections = quick_results[2]["sections"]
    readiness = sections["readiness"]["figures"]
    assert readiness["starts"] == 10
    assert readiness["orchestrator_from_listening"]["n"] == 10
    assert readiness["baseline_1s_poll_from_listening"]["n"] == 10
    detection = sections["detection"]["figures"]
    assert detection["orchestrator"]["n"] == 10
    assert detection["baseline_5s_poll_analytic"]["median_ms"] == 2500.0
    api = sections["api_cost"]["figures"]
    for endpoint in ("GET /models/{id}", "GET /models (100)"):
        assert api[endpoint]["orchestrator"]["requests"] > 0
        assert api[endpoint]["bare"]["requests"] > 0
        assert api[endpoint]["ratio"] > 0
    scale = sections["scale"]["figures"]
    assert (scale["specs"], scale["running_engines"]) == (100, 10)
    assert scale["rss_mib"] > 0
    assert scale["idle_cpu_s"] >= 0
    adapters = sections["adapters"]
    assert adapters["status"] == "skipped" and "--quick" in adapters["reason"]  # real engine
    for name in SECTIONS - {"real_engine", "adapters"}:
        section = sections[name]
        assert section["status"] == "ok"
        assert isinstance(section["goal_met"], bool)
        assert section["rows"]


GATEWAY_WORKLOADS = ("latency_c1", "ttfc_c1", "rps_c32", "stream_c64")
GATEWAY_COMPARISONS = ("added_latency_ms", "added_ttfc_ms", "rps_ratio", "stream_ratio")


def test_bench_quick_measures_the_gateway_beside_direct(
    quick_results: tuple[int, str, dict[str, Any]],
) -> None:
    gateway = quick_results[2]["sections"]["gateway"]
    assert gateway["status"] == "ok"
    figures = gateway["figures"]
    for workload in GATEWAY_WORKLOADS:
        for side in ("direct", "ours"):
            assert figures["workloads"][workload][side]["requests"] > 0, (workload, side)
    for comparison in GATEWAY_COMPARISONS:
        assert isinstance(figures["compared"][comparison]["ours"], float), comparison
    cold = figures["cold_start"]
    assert cold["gateway"]["total"]["n"] == cold["engine"]["total"]["n"] == cold["trials"] >= 1
    assert cold["added_median_ms"] == cold["added_median_ms"]  # a number, not NaN
    metrics = [row["metric"] for row in gateway["rows"]]
    assert "cold start through the gateway, added (ms)" in metrics


@pytest.mark.parametrize("proxy", ["litellm", "vllm-router"])
def test_bench_quick_measures_a_built_proxy_beside_the_gateway(
    quick_results: tuple[int, str, dict[str, Any]], proxy: str
) -> None:
    """The quick mode never builds a proxy's venv (minutes): without one the side is skipped."""
    figures = quick_results[2]["sections"]["gateway"]["figures"]
    reason = figures["unavailable"].get(proxy)
    if reason is not None:
        pytest.skip(f"{proxy} not measured: {reason}")
    for workload in GATEWAY_WORKLOADS:
        found = figures["workloads"][workload][proxy]
        # A third-party proxy that fails under load is reported, not a failure of this suite.
        assert "error" in found or found["requests"] > 0, (workload, found)
