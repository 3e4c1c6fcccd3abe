"""A LoRA adapter added at runtime against a full restart with the new adapter list, on the real
engine: vLLM's CPU build on the tiny local model, through the orchestrator's gateway.

Both sides start from the same state (the engine running with the first adapter) and end when
the second adapter first answers a completion through the gateway (`POST /v1/completions` on
the orchestrator's port, `model` = the adapter's name, temperature 0, 8 tokens).
Runtime: from just before `POST /models/tiny/adapters` to that answer.
Restart: from just before `POST /models/tiny/stop?wait=true`, then `PATCH /models/tiny` with the
new `adapter_paths`, `POST /models/tiny/start`, the transition to running (status polled every
50 ms), to that answer. After each trial the second adapter is removed live (not timed), which
brings both sides back to the starting state without another start. The trials alternate which
side goes first. Ratio = median restart / median runtime.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import Any

from bench.harness import Orchestrator, orchestrator, running_at
from bench.report import Row, SectionResult, median, skipped

NAME = "adapters"
TITLE = "live LoRA add vs full restart on vLLM's CPU build, until the adapter answers"
GOAL_RATIO = 10.0
PAIRS = 3
START_TIMEOUT_S = 600.0
STOP_GRACE_S = 20.0
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
MODEL_ID = "tiny"
FIRST, SECOND = "tiny_synth_v1", "tiny_rerank_v1"  # r=8 and r=16 (scripts/tiny-model.sh)
FIRST_PATH, SECOND_PATH = f"adapters/{FIRST}", f"adapters/{SECOND}"  # in MODEL_STORE_ROOT
COMPLETION = {"prompt": "the orchestrator keeps", "max_tokens": 8, "temperature": 0}


def _first_answer(orch: Orchestrator, model: str) -> float:
    """Seconds one completion through the gateway took; it must answer 200 with text, from
    `model` (the adapter itself, not the base)."""
    started = time.monotonic()
    response = orch.client.post(
        "/v1/completions", json={"model": model, **COMPLETION}, timeout=START_TIMEOUT_S
    )
    elapsed_s = time.monotonic() - started
    answered = response.json() if response.status_code == 200 else {}
    if answered.get("model") != model or not answered["choices"][0]["text"]:
        raise RuntimeError(f"{model}: {response.status_code} {response.text[:500]}")
    return elapsed_s


def _runtime_add(orch: Orchestrator) -> dict[str, float]:
    started = time.monotonic()
    orch.request("POST", f"/models/{MODEL_ID}/adapters", json={"name": SECOND, "path": SECOND_PATH})
    added_s = time.monotonic() - started
    answer_s = _first_answer(orch, SECOND)
    return {"total_s": time.monotonic() - started, "add_s": added_s, "answer_s": answer_s}


def _restart_with(orch: Orchestrator, adapter_paths: list[str]) -> dict[str, float]:
    started = time.monotonic()
    started_wall = time.time()
    orch.request("POST", f"/models/{MODEL_ID}/stop?wait=true")
    stopped_s = time.monotonic() - started
    orch.request("PATCH", f"/models/{MODEL_ID}", json={"adapter_paths": adapter_paths})
    orch.request("POST", f"/models/{MODEL_ID}/start")
    orch.wait_state(MODEL_ID, "running", timeout_s=START_TIMEOUT_S, interval_s=0.05)
    running_s = running_at(orch.events(MODEL_ID, limit=5)) - started_wall
    answer_s = _first_answer(orch, SECOND)
    return {
        "total_s": time.monotonic() - started,
        "stop_s": stopped_s,
        "to_running_s": running_s,
        "answer_s": answer_s,
    }


def _remove_live(orch: Orchestrator) -> None:
    pid = orch.status(MODEL_ID)["pid"]
    orch.request("DELETE", f"/models/{MODEL_ID}/adapters/{SECOND}")
    if orch.status(MODEL_ID)["pid"] != pid:
        raise RuntimeError("removing an adapter restarted the engine")


def _rounded(trials: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{key: round(value, 3) for key, value in trial.items()} for trial in trials]


def run(*, work_dir: Path, run_id: str, quick: bool, seed: int) -> SectionResult:
    if quick:
        return skipped(
            NAME, TITLE, "--quick does not start vLLM (each restart trial takes ~20-40 s)"
        )
    engine_python = os.environ.get("GPU_ORCH_TEST_ENGINE_PYTHON")
    tiny_model = os.environ.get("GPU_ORCH_TEST_TINY_MODEL")
    if not engine_python or not tiny_model:
        return skipped(
            NAME,
            TITLE,
            "GPU_ORCH_TEST_ENGINE_PYTHON / GPU_ORCH_TEST_TINY_MODEL unset (`make bench` sets them)",
        )
    work_dir.mkdir(parents=True, exist_ok=True)
    command = [engine_python, "-m", "vllm.entrypoints.openai.api_server", "--model"]
    runtime: list[dict[str, float]] = []
    restart: list[dict[str, float]] = []
    with orchestrator(
        work_dir / "state",
        run_id,
        ENGINE_ENV,
        GPU_ORCH_VLLM_COMMAND=shlex.join(command),
        GPU_ORCH_MODEL_STORE_ROOT=tiny_model,
        GPU_ORCH_START_TIMEOUT_S=str(START_TIMEOUT_S),
        GPU_ORCH_STOP_GRACE_S=str(STOP_GRACE_S),
        GPU_ORCH_PORT_RANGE_START="31600",
        GPU_ORCH_PORT_RANGE_END="31699",
    ) as orch:
        orch.create(
            {
                "id": MODEL_ID,
                "model": str(Path(tiny_model) / "model"),
                "dtype": "float32",
                "gpu_memory_util": 0.5,
                "max_model_len": 256,
                "adapter_paths": [FIRST_PATH],
            }
        )
        orch.request("POST", f"/models/{MODEL_ID}/start")
        orch.wait_state(MODEL_ID, "running", timeout_s=START_TIMEOUT_S, interval_s=0.2)
        # Unmeasured: the first completions on a new engine (the base's and an adapter's) pay
        # one-time costs that would otherwise fall on whichever side came first.
        _first_answer(orch, MODEL_ID)
        _first_answer(orch, FIRST)
        for pair in range(PAIRS):
            sides = ["runtime", "restart"] if pair % 2 == 0 else ["restart", "runtime"]
            for side in sides:
                if side == "runtime":
                    runtime.append(_runtime_add(orch))
                else:
                    restart.append(_restart_with(orch, [FIRST_PATH, SECOND_PATH]))
                _remove_live(orch)
    runtime_s = median([trial["total_s"] for trial in runtime])
    restart_s = median([trial["total_s"] for trial in restart])
    ratio = restart_s / runtime_s
    figures: dict[str, Any] = {
        "pairs": PAIRS,
        "runtime": _rounded(runtime),
        "restart": _rounded(restart),
        "median_runtime_s": round(runtime_s, 3),
        "median_restart_s": round(restart_s, 3),
        "ratio": round(ratio, 1),
        "engine_env_added": json.dumps(ENGINE_ENV),
    }
    return SectionResult(
        name=NAME,
        title=TITLE,
        method=(
            f"{PAIRS} alternating pairs after one start; each ends at the new adapter's first "
            "200 through the gateway"
        ),
        figures=figures,
        rows=[
            Row(
                "median until the new adapter answers (ms)",
                f"{runtime_s * 1000:.1f}",
                f"{restart_s * 1000:.1f}",
            ),
            Row(
                "full restart / live add",
                f"{ratio:.1f}x",
                "",
                f">= {GOAL_RATIO:g}x",
                ratio >= GOAL_RATIO,
            ),
        ],
    )
