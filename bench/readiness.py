"""Readiness lag: from the moment an engine's /health could first answer 200 to the moment the
orchestrator records the model as running.

The fake engine (`--record FILE`) writes `listening_at` (time.time() once its socket is bound
and listening, i.e. the first moment a /health probe would be answered 200) and `ready_at` (when
/health first did answer 200). The orchestrator's transition-to-running event carries `at`.
The headline lag is `at - listening_at`: it includes the time until the next probe, which is what
a poll interval costs. `at - ready_at` (the work after the first 200) is reported beside it.

Baseline: a plain loop polling /health once a second from spawn (llama-swap's behaviour), on
the same fake engine with the same load delays, measured the same way (`seen - listening_at`).
Load delays are drawn uniformly from 0.5-1.5 s: past the probe interval's ramp-up, as with any
real vLLM load (tens of seconds), so the lag reflects the steady-state interval.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.harness import RUN_ID_ENV, fake_spec, kill_group, orchestrator, running_at, wait_for
from bench.report import Row, SectionResult, summary_ms
from tests.fakes import fake_engine_command, free_port, http_status, vllm_args

NAME = "readiness"
TITLE = "readiness lag (engine /health able to answer 200 -> marked running)"
GOAL_MEDIAN_MS = 50.0
BASELINE_INTERVAL_S = 1.0
DELAY_RANGE_S = (0.5, 1.5)
MODEL_ID = "ready"


def _read_record(path: Path, timeout_s: float = 10.0) -> dict[str, Any]:
    """The fake engine's record once it holds ready_at (written atomically, tmp + rename)."""
    found: dict[str, Any] = {}

    def complete() -> bool:
        if not path.exists():
            return False
        found.update(json.loads(path.read_text()))
        return found.get("ready_at") is not None

    wait_for(complete, timeout_s, interval_s=0.01, what=f"ready_at in {path}")
    return found


def _orchestrated(work_dir: Path, run_id: str, delays_s: list[float]) -> dict[str, list[float]]:
    record = work_dir / "orchestrated-record.json"
    lags: dict[str, list[float]] = {"from_listening": [], "from_first_200": []}
    with orchestrator(
        work_dir / "state",
        run_id,
        GPU_ORCH_PORT_RANGE_START="31000",
        GPU_ORCH_PORT_RANGE_END="31099",
    ) as orch:
        orch.create(fake_spec(MODEL_ID))
        for delay_s in delays_s:
            record.unlink(missing_ok=True)
            fake_args = f"--record {record} --ready-delay-s {delay_s:.3f}"
            orch.request(
                "PATCH", f"/models/{MODEL_ID}", json={"env": {"FAKE_ENGINE_ARGS": fake_args}}
            )
            orch.request("POST", f"/models/{MODEL_ID}/start")
            orch.wait_state(MODEL_ID, "running", timeout_s=30)
            marked_at = running_at(orch.events(MODEL_ID, limit=5))
            state = _read_record(record)
            lags["from_listening"].append(marked_at - state["listening_at"])
            lags["from_first_200"].append(marked_at - state["ready_at"])
            orch.request("POST", f"/models/{MODEL_ID}/stop?wait=true")
    return lags


def _one_second_poller(work_dir: Path, run_id: str, delay_s: float) -> float:
    """Spawn the fake engine bare and poll /health once a second from spawn; the lag."""
    record = work_dir / "baseline-record.json"
    record.unlink(missing_ok=True)
    port = free_port()
    argv = fake_engine_command("--record", str(record), "--ready-delay-s", f"{delay_s:.3f}")
    argv += vllm_args(port=port)
    with (work_dir / "baseline-engine.log").open("ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={RUN_ID_ENV: run_id, "PATH": "/usr/bin:/bin"},
            start_new_session=True,
        )
    try:
        spawned = time.monotonic()
        polls = 0
        while True:
            if http_status(f"http://127.0.0.1:{port}/health", timeout_s=BASELINE_INTERVAL_S) == 200:
                seen_at = time.time()
                break
            if process.poll() is not None or polls > 60:
                raise RuntimeError(f"baseline engine never answered (exit {process.returncode})")
            polls += 1
            # A fixed schedule from spawn, as a ticker does: not drifted by each probe's duration.
            time.sleep(max(0.0, spawned + polls * BASELINE_INTERVAL_S - time.monotonic()))
        return seen_at - float(_read_record(record)["listening_at"])
    finally:
        kill_group(process, grace_s=5)


def _ms(values_s: list[float]) -> list[float]:
    return [round(value * 1000.0, 2) for value in values_s]


def run(*, work_dir: Path, run_id: str, quick: bool, seed: int) -> SectionResult:
    starts = 10 if quick else 50
    rng = random.Random(seed)
    delays_s = [round(rng.uniform(*DELAY_RANGE_S), 3) for _ in range(starts)]
    work_dir.mkdir(parents=True, exist_ok=True)
    lags = _orchestrated(work_dir, run_id, delays_s)
    baseline = [_one_second_poller(work_dir, run_id, delay_s) for delay_s in delays_s]
    ours, first_200, theirs = (
        summary_ms(lags["from_listening"]),
        summary_ms(lags["from_first_200"]),
        summary_ms(baseline),
    )
    return SectionResult(
        name=NAME,
        title=TITLE,
        method=(
            f"{starts} starts of the fake engine (load delay uniform {DELAY_RANGE_S[0]}-"
            f"{DELAY_RANGE_S[1]} s); baseline: bare engine polled every {BASELINE_INTERVAL_S:g} s"
        ),
        figures={
            "starts": starts,
            "load_delays_s": delays_s,
            "orchestrator_from_listening": ours,
            "orchestrator_from_first_200": first_200,
            "baseline_1s_poll_from_listening": theirs,
            "raw_ms": {
                "orchestrator_from_listening": _ms(lags["from_listening"]),
                "orchestrator_from_first_200": _ms(lags["from_first_200"]),
                "baseline_1s_poll_from_listening": _ms(baseline),
            },
        },
        rows=[
            Row(
                "median lag (ms)",
                f"{ours['median_ms']:.1f}",
                f"{theirs['median_ms']:.1f}",
                f"<= {GOAL_MEDIAN_MS:g}",
                ours["median_ms"] <= GOAL_MEDIAN_MS,
            ),
            Row("p99 lag (ms)", f"{ours['p99_ms']:.1f}", f"{theirs['p99_ms']:.1f}"),
            Row("median first 200 -> running (ms)", f"{first_200['median_ms']:.1f}"),
            Row(
                "median lag, baseline / orchestrator",
                f"{theirs['median_ms'] / max(ours['median_ms'], 0.001):.1f}x",
            ),
        ],
    )
