"""The stop-and-start swap on the real engine: vLLM's CPU build on the tiny local model, two specs
of it that do not fit together on one simulated GPU, asked for in turn through the gateway.

vLLM's CPU build has no sleep mode (`Platform.is_sleep_mode_available` is CUDA/ROCm/XPU only),
so only this side exists on a machine without a GPU; scripts/gpu-sleep-check.sh measures the
sleep-and-wake swap on a GPU node. One unmeasured cold start comes first (it fills vLLM's
compile cache, which would otherwise weigh on the first swap).
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

from bench.harness import orchestrator
from bench.report import median
from bench.swap_sides import gateway_stop_start

SWAPS = 2
START_TIMEOUT_S = 600.0
STOP_GRACE_S = 20.0
GPU_MIB = 81920
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
PAIR = ("tiny-a", "tiny-b")


def _skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason}


def measure_vllm_swaps(
    work_dir: Path,
    run_id: str,
    *,
    quick: bool,
    engine_python: str | None,
    tiny_model: str | None,
) -> dict[str, Any]:
    """Figures of `SWAPS` swaps (seconds), or why they were not measured."""
    if quick:
        return _skipped("--quick does not start vLLM (each swap is a ~20-40 s start)")
    if not engine_python or not tiny_model:
        return _skipped("GPU_ORCH_TEST_ENGINE_PYTHON / GPU_ORCH_TEST_TINY_MODEL unset")
    work_dir.mkdir(parents=True, exist_ok=True)
    command = [engine_python, "-m", "vllm.entrypoints.openai.api_server", "--model"]
    swaps: list[dict[str, float]] = []
    with orchestrator(
        work_dir / "state",
        run_id,
        ENGINE_ENV,
        GPU_ORCH_VLLM_COMMAND=shlex.join(command),
        GPU_ORCH_MODEL_STORE_ROOT=tiny_model,
        GPU_ORCH_SIMULATED_GPUS=str(GPU_MIB),
        GPU_ORCH_START_TIMEOUT_S=str(START_TIMEOUT_S),
        GPU_ORCH_STOP_GRACE_S=str(STOP_GRACE_S),
        GPU_ORCH_PORT_RANGE_START="31800",
        GPU_ORCH_PORT_RANGE_END="31899",
    ) as orch:
        for model_id in PAIR:
            orch.create(
                {
                    "id": model_id,
                    "model": str(Path(tiny_model) / "model"),
                    "dtype": "float32",
                    "gpu_memory_util": 0.6,
                    "max_model_len": 256,
                }
            )
        started = time.monotonic()
        body = {"model": PAIR[0], "prompt": "hello", "max_tokens": 1}
        response = orch.client.post("/v1/completions", json=body, timeout=START_TIMEOUT_S)
        if response.status_code != 200:
            raise RuntimeError(f"vLLM cold start: {response.status_code} {response.text[:300]}")
        warmup_s = time.monotonic() - started
        loaded = PAIR[0]
        for _ in range(SWAPS):
            target = PAIR[1] if loaded == PAIR[0] else PAIR[0]
            swaps.append(gateway_stop_start(orch, target, loaded, None, START_TIMEOUT_S))
            loaded = target
    return {
        "status": "ok",
        "warmup_cold_start_s": round(warmup_s, 2),
        "swaps_s": [{step: round(value, 3) for step, value in s.items()} for s in swaps],
        "median_swap_s": round(median([s["total"] for s in swaps]), 2),
    }
