"""Start overhead on the real engine: vLLM's CPU build on the tiny local model, started by the
orchestrator versus the same argv started bare.

Orchestrated: from just before POST /models/{id}/start to the transition-to-running event.
Bare: the exact argv and environment the orchestrator gave the engine (read from /proc while it
ran), spawned with subprocess in its own session, from just before the spawn to the first 200
of /health polled every 10 ms. One unmeasured orchestrated start comes first: it captures the
argv and fills vLLM's compile cache, which would otherwise weigh on whichever run came first.
The measured runs alternate which side goes first. Ratio = median orchestrated / median bare.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.harness import (
    LAUNCH_TOKEN_ENV,
    RUN_ID_ENV,
    Orchestrator,
    kill_group,
    orchestrator,
    running_at,
)
from bench.report import Row, SectionResult, median, skipped

NAME = "real_engine"
TITLE = "start overhead on vLLM's CPU build (orchestrated / bare start-to-ready)"
GOAL_RATIO = 1.02
PAIRS = 3
START_TIMEOUT_S = 600.0
STOP_GRACE_S = 20.0
BARE_POLL_S = 0.01
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
MODEL_ID = "tiny"


def _orchestrated_start(orch: Orchestrator) -> tuple[float, list[str], dict[str, str]]:
    """Seconds from POST start to running, and the engine's argv and environment."""
    started_at = time.time()
    orch.request("POST", f"/models/{MODEL_ID}/start")
    status = orch.wait_state(MODEL_ID, "running", timeout_s=START_TIMEOUT_S, interval_s=0.2)
    ready_s = running_at(orch.events(MODEL_ID, limit=5)) - started_at
    engine = psutil.Process(status["pid"])
    argv, env = engine.cmdline(), engine.environ()
    orch.request("POST", f"/models/{MODEL_ID}/stop?wait=true")
    return ready_s, argv, env


def _bare_start(argv: list[str], env: dict[str, str], log_path: Path, base_url: str) -> float:
    """Seconds from spawning `argv` to the first 200 of /health polled every 10 ms."""
    with log_path.open("ab") as log:
        started_at = time.time()
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        with httpx.Client(trust_env=False, timeout=1.0) as client:
            while time.monotonic() < deadline:
                try:
                    if client.get(f"{base_url}/health").status_code == 200:
                        return time.time() - started_at
                except httpx.HTTPError:
                    pass
                if process.poll() is not None:
                    raise RuntimeError(f"bare engine exited {process.returncode}; see {log_path}")
                time.sleep(BARE_POLL_S)
        raise TimeoutError(f"bare engine not ready within {START_TIMEOUT_S:g} s")
    finally:
        kill_group(process, grace_s=STOP_GRACE_S)


def run(*, work_dir: Path, run_id: str, quick: bool, seed: int) -> SectionResult:
    if quick:
        return skipped(NAME, TITLE, "--quick does not start vLLM (each start takes about a minute)")
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
    orchestrated_s: list[float] = []
    bare_s: list[float] = []
    with orchestrator(
        work_dir / "state",
        run_id,
        ENGINE_ENV,
        GPU_ORCH_VLLM_COMMAND=shlex.join(command),
        GPU_ORCH_MODEL_STORE_ROOT=tiny_model,
        GPU_ORCH_START_TIMEOUT_S=str(START_TIMEOUT_S),
        GPU_ORCH_STOP_GRACE_S=str(STOP_GRACE_S),
        GPU_ORCH_PORT_RANGE_START="31500",
        GPU_ORCH_PORT_RANGE_END="31599",
    ) as orch:
        spec = {
            "id": MODEL_ID,
            "model": str(Path(tiny_model) / "model"),
            "dtype": "float32",
            "gpu_memory_util": 0.5,
            "max_model_len": 256,
        }
        orch.create(spec)
        warmup_s, argv, engine_env = _orchestrated_start(orch)
        bare_env = {k: v for k, v in engine_env.items() if k != LAUNCH_TOKEN_ENV}
        bare_env[RUN_ID_ENV] = run_id
        port = argv[argv.index("--port") + 1]
        base_url = f"http://127.0.0.1:{port}"
        log_path = work_dir / "bare-engine.log"
        for pair in range(PAIRS):
            sides = ["orchestrated", "bare"] if pair % 2 == 0 else ["bare", "orchestrated"]
            for side in sides:
                if side == "orchestrated":
                    orchestrated_s.append(_orchestrated_start(orch)[0])
                else:
                    bare_s.append(_bare_start(argv, bare_env, log_path, base_url))
    ratio = median(orchestrated_s) / median(bare_s)
    figures: dict[str, Any] = {
        "pairs": PAIRS,
        "warmup_orchestrated_s": round(warmup_s, 2),
        "orchestrated_s": [round(value, 3) for value in orchestrated_s],
        "bare_s": [round(value, 3) for value in bare_s],
        "ratio": round(ratio, 4),
        "argv": argv,
        "engine_env_added": json.dumps(ENGINE_ENV),
    }
    return SectionResult(
        name=NAME,
        title=TITLE,
        method=(
            f"{PAIRS} alternating pairs after one warm-up; bare: same argv and env, "
            f"/health polled every {BARE_POLL_S * 1000:g} ms"
        ),
        figures=figures,
        rows=[
            Row(
                "median start-to-ready (s)",
                f"{median(orchestrated_s):.2f}",
                f"{median(bare_s):.2f}",
            ),
            Row(
                "ratio orchestrated / bare",
                f"{ratio:.3f}",
                "",
                f"<= {GOAL_RATIO:g}",
                ratio <= GOAL_RATIO,
            ),
        ],
    )
