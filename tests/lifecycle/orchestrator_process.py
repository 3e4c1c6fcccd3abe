"""The orchestrator as a real process (uvicorn), so a test can SIGKILL it and start it again."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.fakes import fake_engine_command, free_port, wait_until
from tests.pg_server import database_url_for

SERVE = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1"]


def orchestrator_env(state_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a `serve` on `state_dir`: its database is the SQLite file there, or,
    on a --database=postgresql run, the PostgreSQL database the run gave that directory (the
    same for every `serve` on it, as the file would be)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GPU_ORCH_")}
    env.update(
        GPU_ORCH_STATE_DIR=str(state_dir),
        GPU_ORCH_CONFIG_DIR=str(state_dir / "config"),
        GPU_ORCH_GPU_BACKEND="simulated",
        GPU_ORCH_SIMULATED_GPUS="81920,81920",
        GPU_ORCH_LAUNCHER="subprocess",
        GPU_ORCH_VLLM_COMMAND=shlex.join(fake_engine_command()),
        GPU_ORCH_STOP_GRACE_S="5",
        GPU_ORCH_MONITOR_INTERVAL_S="3600",
        GPU_ORCH_PORT_RANGE_START="28100",
        GPU_ORCH_PORT_RANGE_END="28199",
        GPU_ORCH_ENGINE_ENV=json.dumps({"GPU_ORCH_TEST_RUN": str(state_dir)}),
    )
    database_url = database_url_for(state_dir)
    if database_url is not None:
        env["GPU_ORCH_DATABASE_URL"] = database_url
    env.update(extra)
    return env


class OrchestratorProcess:
    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown code runs."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def status(self, model_id: str) -> dict[str, Any]:
        response = self.client.get(f"/models/{model_id}")
        response.raise_for_status()
        status: dict[str, Any] = response.json()["status"]
        return status

    def wait_state(self, model_id: str, state: str, timeout_s: float = 20.0) -> dict[str, Any]:
        try:
            wait_until(lambda: self.status(model_id)["state"] == state, timeout_s)
        except TimeoutError:
            events = self.client.get(f"/models/{model_id}/events").json()
            trail = [(e["kind"], e.get("to_state"), e["reason"][:160]) for e in events]
            raise TimeoutError(
                f"{model_id} not {state} within {timeout_s} s: {self.status(model_id)}; {trail}"
            ) from None
        return self.status(model_id)


@contextmanager
def orchestrator_process(state_dir: Path, **extra_env: str) -> Iterator[OrchestratorProcess]:
    port = free_port()
    log = (state_dir / f"orchestrator-{port}.log").open("ab")
    state_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [*SERVE, "--port", str(port), "--log-level", "warning"],
        env=orchestrator_env(state_dir, **extra_env),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    running = OrchestratorProcess(process, port)

    def answers() -> bool:
        try:
            return running.client.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(answers, 30, what="orchestrator ready")
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        running.client.close()
        log.close()
