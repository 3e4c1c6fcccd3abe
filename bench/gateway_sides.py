"""The proxies the gateway benchmark compares against, each started as its own process in front of
the same engines: LiteLLM's proxy and vllm-router, from their bench venvs (scripts/bench-env.sh).

Neither is ever a dependency of the service: each lives in its own venv under
~/.cache/gpu-orchestrator/bench-<tool>-<version>/, built on first use by the full run; the quick
mode only uses a venv that is already complete.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from bench.harness import REPO_ROOT, RUN_ID_ENV, kill_group, wait_for
from tests.fakes import free_port

LITELLM = "litellm"
VLLM_ROUTER = "vllm-router"
BENCH_ENV_SCRIPT = REPO_ROOT / "scripts" / "bench-env.sh"
BUILD_TIMEOUT_S = 1200


@dataclass
class Proxy:
    """A running proxy: its process group and the URL of each engine's completions behind it."""

    name: str
    process: subprocess.Popen[bytes]
    completions_urls: dict[str, str]
    log_path: Path


def bench_env(tool: str, *, build: bool) -> Path:
    """The tool's venv; built when `build` (minutes, once), else RuntimeError when not built yet."""
    argv = ["bash", str(BENCH_ENV_SCRIPT), tool, *([] if build else ["--check"])]
    completed = subprocess.run(
        argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, cwd=REPO_ROOT, check=False
    )
    if completed.returncode != 0:
        lines = [line for line in completed.stderr.splitlines() if "WARNING: Location" not in line]
        raise RuntimeError("; ".join(lines[-3:]) or f"bench-env.sh exited {completed.returncode}")
    return Path(completed.stdout.strip().splitlines()[-1])


def _spawn(
    name: str, argv: list[str], *, work_dir: Path, run_id: str, env: Mapping[str, str]
) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = work_dir / f"{name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Tagged like the engines, so the run's final sweep finds a proxy left behind too.
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), RUN_ID_ENV: run_id, **env},
            start_new_session=True,
            cwd=work_dir,
        )
    return process, log_path


def litellm_config(engines: Mapping[str, str], master_key: str) -> dict[str, object]:
    """LiteLLM's proxy config: each engine as an OpenAI-compatible vLLM backend (hosted_vllm)."""
    model_list = [
        {
            "model_name": name,
            "litellm_params": {
                "model": f"hosted_vllm/{name}",
                "api_base": f"{base_url}/v1",
                "api_key": "none",
            },
        }
        for name, base_url in engines.items()
    ]
    return {"model_list": model_list, "general_settings": {"master_key": master_key}}


def start_litellm(
    env_dir: Path, engines: Mapping[str, str], *, work_dir: Path, run_id: str, master_key: str
) -> Proxy:
    # JSON is YAML: no YAML writer needed.
    config_path = work_dir / "litellm.yaml"
    config_path.write_text(json.dumps(litellm_config(engines, master_key), indent=2))
    port = free_port()
    argv = [str(env_dir / "bin" / "litellm"), "--config", str(config_path)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    env = {
        "HOME": str(work_dir),
        "LITELLM_MASTER_KEY": master_key,
        # The model cost map is fetched from GitHub at start-up unless told to use its copy.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        # Same log level as our service (`--log-level warning`): no access line per request.
        "LITELLM_LOG": "WARNING",
    }
    process, log_path = _spawn(LITELLM, argv, work_dir=work_dir, run_id=run_id, env=env)
    url = f"http://127.0.0.1:{port}"
    return Proxy(LITELLM, process, {name: f"{url}/v1/completions" for name in engines}, log_path)


def start_vllm_router(
    env_dir: Path, engine: str, base_url: str, *, work_dir: Path, run_id: str
) -> Proxy:
    """One router per engine: vllm-router balances over its workers whatever the `model` says."""
    port = free_port()
    argv = [str(env_dir / "bin" / "vllm-router"), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--worker-urls", base_url, "--policy", "round_robin", "--log-level", "warning"]
    # Its Prometheus listener defaults to port 29000: one per router, or the second fails.
    argv += ["--prometheus-port", str(free_port())]
    name = f"{VLLM_ROUTER}-{engine}"
    process, log_path = _spawn(
        name, argv, work_dir=work_dir, run_id=run_id, env={"HOME": str(work_dir)}
    )
    url = f"http://127.0.0.1:{port}/v1/completions"
    return Proxy(VLLM_ROUTER, process, {engine: url}, log_path)


def wait_serving(proxy: Proxy, probe: Callable[[str, str], bool], timeout_s: float) -> float:
    """Wait until `probe(model, url)` is true for every engine behind `proxy`; seconds waited."""
    started = time.monotonic()

    def serving() -> bool:
        if proxy.process.poll() is not None:
            tail = proxy.log_path.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"{proxy.name} exited {proxy.process.returncode}: {tail}")
        return all(probe(model, url) for model, url in proxy.completions_urls.items())

    wait_for(serving, timeout_s, interval_s=0.1, what=f"{proxy.name} serving")
    return time.monotonic() - started


def stop(proxy: Proxy) -> None:
    with suppress(ProcessLookupError, OSError):
        kill_group(proxy.process, grace_s=5)
