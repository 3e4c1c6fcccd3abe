"""The orchestrator as a real process for the benchmarks, and the clean-up of what it started.

Each run tags every engine it starts with `BENCH_RUN_ID` (through the orchestrator's engine env),
so that after the models are stopped a sweep can prove that no engine of this run is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.fakes import free_port
from tests.lifecycle.orchestrator_process import orchestrator_env as test_orchestrator_env

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_ID_ENV = "BENCH_RUN_ID"
LAUNCH_TOKEN_ENV = "GPU_ORCH_LAUNCH_TOKEN"  # noqa: S105 (a variable name, not a secret)
FAKE_MODEL = "facebook/opt-125m"
SERVE = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1"]


def epoch_s(iso: str) -> float:
    """Seconds since the epoch of an API timestamp (ISO-8601 UTC, milliseconds, `Z`)."""
    return datetime.fromisoformat(iso).timestamp()


def wait_for(
    predicate: Callable[[], object], timeout_s: float, *, interval_s: float = 0.02, what: str = ""
) -> None:
    """Poll `predicate` until truthy; TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"not reached within {timeout_s:g} s: {what}")
        time.sleep(interval_s)


@dataclass
class Orchestrator:
    """A running `gpu-orchestrator serve` and an HTTP client on it."""

    process: subprocess.Popen[bytes]
    url: str
    state_dir: Path
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=60, trust_env=False)

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    def ps(self) -> psutil.Process:
        return psutil.Process(self.process.pid)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json() if response.content else None

    def create(self, spec: Mapping[str, Any]) -> None:
        self.request("POST", "/models", json=dict(spec))

    def status(self, model_id: str) -> dict[str, Any]:
        status: dict[str, Any] = self.request("GET", f"/models/{model_id}")["status"]
        return status

    def events(self, model_id: str, limit: int = 20) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.request(
            "GET", f"/models/{model_id}/events", params={"limit": limit}
        )
        return events

    def last_event_id(self, model_id: str) -> int:
        events = self.events(model_id, limit=1)
        return int(events[-1]["id"]) if events else 0

    def wait_state(
        self, model_id: str, state: str, *, timeout_s: float = 30.0, interval_s: float = 0.05
    ) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def reached() -> bool:
            found.update(self.status(model_id))
            return bool(found["state"] == state)

        wait_for(reached, timeout_s, interval_s=interval_s, what=f"{model_id} {state}")
        return found

    def wait_event(
        self,
        model_id: str,
        match: Callable[[dict[str, Any]], bool],
        *,
        after_id: int,
        timeout_s: float = 30.0,
        interval_s: float = 0.02,
    ) -> dict[str, Any]:
        """The first event newer than `after_id` that `match` accepts."""
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [e for e in self.events(model_id) if e["id"] > after_id and match(e)]
            return bool(found)

        wait_for(seen, timeout_s, interval_s=interval_s, what=f"{model_id} event")
        return found[0]

    def stop_all(self) -> None:
        """Stop every model that is not stopped (the call returns once its engine is gone)."""
        for model in self.request("GET", "/models"):
            if model["status"]["state"] != "stopped" or model["status"]["pid"] is not None:
                self.request("POST", f"/models/{model['id']}/stop?wait=true")


def running_at(events: list[dict[str, Any]]) -> float:
    """When the newest transition to running was recorded (epoch seconds)."""
    transitions = [e for e in events if e["kind"] == "transition" and e["to_state"] == "running"]
    if not transitions:
        raise LookupError("no transition to running among the events read")
    return epoch_s(transitions[-1]["at"])


def fake_spec(model_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": model_id, "model": FAKE_MODEL, "gpu_memory_util": 0.01, **fields}


def orchestrator_env(
    state_dir: Path, run_id: str, engine_env: Mapping[str, str] | None = None, **extra: str
) -> dict[str, str]:
    """The tests' orchestrator environment, with this run's id on every engine it starts."""
    overrides = {
        "GPU_ORCH_STOP_GRACE_S": "10",
        **extra,
        "GPU_ORCH_ENGINE_ENV": json.dumps({**(engine_env or {}), RUN_ID_ENV: run_id}),
    }
    return test_orchestrator_env(state_dir, **overrides)


@contextmanager
def orchestrator(
    state_dir: Path, run_id: str, engine_env: Mapping[str, str] | None = None, **extra_env: str
) -> Iterator[Orchestrator]:
    """`gpu-orchestrator serve` on a free port; on exit every model is stopped first, then the
    orchestrator gets SIGTERM, then any engine of this run still alive is killed."""
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "config").mkdir(exist_ok=True)
    port = free_port()
    with (state_dir / "orchestrator.log").open("ab") as log:
        process = subprocess.Popen(
            [*SERVE, "--port", str(port), "--log-level", "warning"],
            env=orchestrator_env(state_dir, run_id, engine_env, **extra_env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=REPO_ROOT,
        )
    running = Orchestrator(process, f"http://127.0.0.1:{port}", state_dir)

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"orchestrator exited {process.returncode}; see {log.name}")
        with suppress(httpx.HTTPError):
            return running.client.get("/readyz").status_code == 200
        return False

    try:
        wait_for(answers, 60, interval_s=0.05, what="orchestrator /readyz")
        yield running
        running.stop_all()
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        running.client.close()
        sweep_engines(run_id)


def engines_of_run(run_id: str) -> list[psutil.Process]:
    """Processes that an orchestrator (or a bare baseline) of this run started and that live."""
    found = []
    for process in psutil.process_iter(["pid"]):
        with suppress(psutil.Error):
            env = process.environ()
            if env.get(RUN_ID_ENV) == run_id and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def sweep_engines(run_id: str) -> list[int]:
    """SIGKILL the process group of every engine of this run still alive; their pids."""
    leaked = engines_of_run(run_id)
    for process in leaked:
        with suppress(ProcessLookupError, psutil.Error):
            os.killpg(os.getpgid(process.pid), signal.SIGKILL)
    return [process.pid for process in leaked]


def kill_group(process: subprocess.Popen[bytes], *, grace_s: float) -> None:
    """SIGTERM a process group that `process` leads, SIGKILL it after `grace_s`."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
