"""`make demo`: the whole service on a machine without a GPU.

Simulated GPUs, vLLM's CPU build on a tiny locally built Llama with two LoRA adapters: register
the model, start it, watch it go starting -> running, ask a completion through an adapter, stop.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def main() -> int:
    engine_python = sys.argv[1]
    assets = Path(sys.argv[2])
    state = ROOT / "var" / "demo"
    (state / "config").mkdir(parents=True, exist_ok=True)
    port = free_port()
    engine = [engine_python, "-m", "vllm.entrypoints.openai.api_server", "--model"]
    env = {
        **os.environ,
        "GPU_ORCH_STATE_DIR": str(state),
        "GPU_ORCH_CONFIG_DIR": str(state / "config"),
        "GPU_ORCH_GPU_BACKEND": "simulated",
        "GPU_ORCH_SIMULATED_GPUS": "81920",
        "GPU_ORCH_LAUNCHER": "subprocess",
        "GPU_ORCH_VLLM_COMMAND": shlex.join(engine),
        "GPU_ORCH_ENGINE_ENV": json.dumps({"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}),
        "MODEL_STORE_ROOT": str(assets),
    }
    env.pop("GPU_ORCH_API_TOKEN", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        cwd=ROOT,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        print(f"gpu-orchestrator on http://127.0.0.1:{port} (Swagger UI at /docs)")
        spec = {
            "id": "tiny-demo",
            "model": str(assets / "model"),
            "dtype": "float32",
            "gpu_memory_util": 0.5,
            "max_model_len": 256,
            "adapter_paths": ["adapters/tiny_synth_v1", "adapters/tiny_rerank_v1"],
        }
        client.delete("/models/tiny-demo", params={"force": "true"})
        client.post("/models", json=spec).raise_for_status()
        print("POST /models/tiny-demo/start ->", client.post("/models/tiny-demo/start").status_code)
        seen = ""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            status = client.get("/models/tiny-demo").json()["status"]
            if status["state"] != seen:
                seen = status["state"]
                print(f"  {status['since']}  {seen}")
            if seen in ("running", "failed", "degraded"):
                break
            time.sleep(0.5)
        if seen != "running":
            print("the engine did not come up:", status["last_failure"])
            print(client.get("/models/tiny-demo/logs", params={"tail": 30}).text)
            return 1
        base_url = status["base_url"]
        models = httpx.get(f"{base_url}/v1/models", timeout=10).json()
        print("served models:", [item["id"] for item in models["data"]])
        body = {"model": "tiny_synth_v1", "prompt": "the orchestrator", "max_tokens": 12}
        answer = httpx.post(f"{base_url}/v1/completions", json=body, timeout=60).json()
        print("completion through adapter tiny_synth_v1:", repr(answer["choices"][0]["text"]))
        stopped = client.post("/models/tiny-demo/stop?wait=true").json()
        print("stopped:", stopped["state"])
        return 0
    finally:
        client.close()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
