"""Scale: the orchestrator's idle CPU and memory with many specs and many running engines, and
the time of GET /models over all of them.

1,000 specs of which 100 run fake engines (quick: 100 and 10), with the health check at its
default interval (10 s) and the GPU monitor at its default (5 s). Once every engine is running,
the orchestrator process's CPU time (user + system, children excluded: the engines are not its
cost) is read before and after an idle window of 60 s (quick: 5 s); RSS is read at its end.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.harness import fake_spec, orchestrator, wait_for
from bench.report import Row, SectionResult, summary_ms

NAME = "scale"
TITLE = "scale (idle CPU and RSS with many specs and running engines; GET /models time)"
GOAL_CPU_PCT = 2.0
GOAL_RSS_MIB = 250.0
SIMULATED_GPUS = ",".join(["81920"] * 8)


def _all_running(orch: Any, ids: set[str]) -> bool:
    states = {m["id"]: m["status"]["state"] for m in orch.request("GET", "/models")}
    failed = [model_id for model_id in ids if states[model_id] in ("failed", "degraded")]
    if failed:
        raise RuntimeError(f"engines failed to start: {failed[:5]}")
    return all(states[model_id] == "running" for model_id in ids)


def _timed_gets(orch: Any, path: str, count: int) -> list[float]:
    durations_s = []
    for _ in range(count):
        started = time.perf_counter()
        orch.request("GET", path)
        durations_s.append(time.perf_counter() - started)
    return durations_s


def run(*, work_dir: Path, run_id: str, quick: bool, seed: int) -> SectionResult:
    specs, engines, idle_s = (100, 10, 5.0) if quick else (1000, 100, 60.0)
    with orchestrator(
        work_dir / "state",
        run_id,
        GPU_ORCH_SIMULATED_GPUS=SIMULATED_GPUS,
        GPU_ORCH_HEALTH_INTERVAL_S="10",
        GPU_ORCH_MONITOR_INTERVAL_S="5",
        GPU_ORCH_PORT_RANGE_START="31200",
        GPU_ORCH_PORT_RANGE_END="31499",
    ) as orch:
        ids = [f"s{index:04d}" for index in range(specs)]
        for model_id in ids:
            orch.create(fake_spec(model_id))
        running_ids = set(ids[:engines])
        started = time.monotonic()
        for model_id in sorted(running_ids):
            orch.request("POST", f"/models/{model_id}/start")
        wait_for(lambda: _all_running(orch, running_ids), 300, interval_s=1.0, what="all running")
        start_all_s = time.monotonic() - started
        process = orch.ps()
        before, window_started = process.cpu_times(), time.monotonic()
        time.sleep(idle_s)  # the measurement window itself: nothing else is waited on here
        after, window_s = process.cpu_times(), time.monotonic() - window_started
        cpu_s = (after.user - before.user) + (after.system - before.system)
        cpu_pct = 100.0 * cpu_s / window_s
        rss_mib = process.memory_info().rss / 2**20
        list_ms = summary_ms(_timed_gets(orch, "/models", 5 if quick else 10))
        one_ms = summary_ms(_timed_gets(orch, f"/models/{ids[0]}", 20))
        list_bytes = len(orch.client.get("/models").content)
    figures: dict[str, Any] = {
        "specs": specs,
        "running_engines": engines,
        "idle_window_s": round(window_s, 2),
        "idle_cpu_s": round(cpu_s, 3),
        "idle_cpu_pct_of_core": round(cpu_pct, 2),
        "rss_mib": round(rss_mib, 1),
        "start_all_engines_s": round(start_all_s, 1),
        "get_models": {**list_ms, "bytes": list_bytes},
        "get_model": one_ms,
    }
    return SectionResult(
        name=NAME,
        title=TITLE,
        method=(
            f"{specs} specs, {engines} fake engines running, health every 10 s; CPU over "
            f"{idle_s:g} s idle (psutil cpu_times delta), RSS at its end"
        ),
        figures=figures,
        rows=[
            Row(
                f"idle CPU, % of a core ({specs} specs, {engines} engines)",
                f"{cpu_pct:.2f}",
                goal=f"< {GOAL_CPU_PCT:g}",
                met=cpu_pct < GOAL_CPU_PCT,
            ),
            Row(
                "RSS (MiB)",
                f"{rss_mib:.0f}",
                goal=f"< {GOAL_RSS_MIB:g}",
                met=rss_mib < GOAL_RSS_MIB,
            ),
            Row(f"GET /models ({specs} specs) median (ms)", f"{list_ms['median_ms']:.1f}"),
            Row("GET /models/{id} median (ms)", f"{one_ms['median_ms']:.1f}"),
            Row(f"start {engines} engines, all running (s)", f"{start_all_s:.1f}"),
        ],
    )
