"""Regressions found by driving the real service with the fake engine and killing things at bad
moments: each test reproduces one defect of the lifecycle as it was."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from app.orchestrator.launchers.process import group_members
from tests.conftest import MakeSettings, running_app
from tests.fakes import wait_until
from tests.lifecycle.helpers import wait_state
from tests.lifecycle.orchestrator_process import orchestrator_process


def spec(model_id: str = "tiny", *fake_flags: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": model_id, "model": "/models/tiny", "gpu_memory_util": 0.3}
    if fake_flags:
        body["env"] = {"FAKE_ENGINE_ARGS": " ".join(fake_flags)}
    body.update(fields)
    return body


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_lifecycle_leftovers_of_a_dead_engine_are_terminated_before_a_new_launch(
    state_dir: Path,
) -> None:
    """Orchestrator SIGKILLed, then the engine's main pid killed by hand while its child (vLLM's
    EngineCore) lives on: the next orchestrator terminates the child before it launches anew."""
    with orchestrator_process(state_dir) as first:
        first.client.post("/models", json=spec("tiny", "--fork-child"))
        first.client.post("/models/tiny/start")
        old_pid = first.wait_state("tiny", "running")["pid"]
        first.kill()
    children = [pid for pid in group_members(old_pid) if pid != old_pid]
    assert len(children) == 1
    os.kill(old_pid, signal.SIGKILL)
    wait_until(lambda: not _alive(old_pid), 10, what="main pid gone")
    assert _alive(children[0]), "the child outlives its main process"
    with orchestrator_process(state_dir) as second:
        # Until adoption has run, the status is the one recorded (running, the old pid).
        wait_until(lambda: second.status("tiny")["pid"] not in (None, old_pid), 20)
        second.wait_state("tiny", "running")
        assert not _alive(children[0])
        events = second.client.get("/models/tiny/events", params={"limit": 1000}).json()
        kinds = [event["kind"] for event in events]
        cleared = kinds.index("leftovers_cleared")
        assert str(children[0]) in events[cleared]["reason"]
        assert cleared < len(kinds) - 1 - kinds[::-1].index("launched")
        second.client.post("/models/tiny/stop?wait=true")


def test_lifecycle_launch_refused_during_adoption_is_a_failure_with_backoff(
    state_dir: Path,
) -> None:
    """Desired running, no headroom when the orchestrator comes back: recorded and retried."""
    policy = {"max_restarts": 2, "backoff_initial_s": 0.2, "backoff_max_s": 0.2}
    with orchestrator_process(state_dir) as first:
        first.client.post("/models", json=spec("tiny", restart_policy=policy))
        first.client.post("/models/tiny/start")
        pid = first.wait_state("tiny", "running")["pid"]
        first.kill()
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: not group_members(pid), 10, what="engine gone")
    # The node now has a GPU too small for the model.
    with orchestrator_process(state_dir, GPU_ORCH_SIMULATED_GPUS="1024") as second:
        status = second.wait_state("tiny", "degraded")
        assert status["last_failure"]["kind"] == "insufficient_gpu_memory"
        assert status["restarts_total"] == 0  # no refused attempt counts as a restart
        events = second.client.get("/models/tiny/events", params={"limit": 1000}).json()
        kinds = [event["kind"] for event in events]
        assert kinds.count("restart_scheduled") == 2
        assert kinds.count("failure") >= 2  # the refused restarts, each recorded


async def test_lifecycle_adapter_vllm_cannot_take_is_422_and_reserves_nothing(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    adapter = tmp_path / "wide"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 1024}))
    async with running_app(make_settings(simulated_gpus=[81920])) as (_app, client):
        body = spec("tiny", gpu_memory_util=0.9, adapter_paths=[str(adapter)])
        assert (await client.post("/models", json=body)).status_code == 201
        refused = await client.post("/models/tiny/start")
        assert refused.status_code == 422, refused.text
        detail = refused.json()["detail"]
        assert detail["code"] == "adapter_invalid"
        assert detail["adapter"] == "wide" and detail["rank"] == 1024
        gpus = (await client.get("/gpus")).json()["gpus"]
        assert gpus[0]["reserved_mib"] == 0 and gpus[0]["models"] == []
        # The memory nobody uses is there for the next model.
        await client.post("/models", json=spec("next", gpu_memory_util=0.9))
        assert (await client.post("/models/next/start")).status_code == 202
        await wait_state(client, "next", "running")
        await client.post("/models/next/stop?wait=true")


async def test_lifecycle_stop_answers_at_once_and_wait_answers_stopped(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings(stop_grace_s=2.0)) as (_app, client):
        await client.post("/models", json=spec("tiny", "--ignore-sigterm"))
        await client.post("/models/tiny/start")
        await wait_state(client, "tiny", "running")
        stopping = await client.post("/models/tiny/stop")
        assert stopping.status_code == 202
        assert stopping.json()["state"] == "stopping"  # answered before the grace ran out
        waited = await client.post("/models/tiny/stop?wait=true")
        assert waited.json()["state"] == "stopped" and waited.json()["pid"] is None
        await client.post("/models/tiny/start")
        await wait_state(client, "tiny", "running")
        restarting = await client.post("/models/tiny/restart")
        assert restarting.status_code == 202 and restarting.json()["state"] == "stopping"
        restarted = await wait_state(client, "tiny", "running")
        assert restarted["restarts_total"] == 0  # an operator restart is not a failure's
        await client.post("/models/tiny/stop?wait=true")


async def test_lifecycle_patch_racing_a_start_is_applied_or_refused_never_lost(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings()) as (_app, client):
        for order in ("patch-first", "start-first"):
            model_id = f"race-{order}"
            await client.post("/models", json=spec(model_id, "--ready-delay-s", "0.2"))
            start = client.post(f"/models/{model_id}/start")
            patch = client.patch(f"/models/{model_id}", json={"max_model_len": 1234})
            if order == "patch-first":
                patched, started = await asyncio.gather(patch, start)
            else:
                started, patched = await asyncio.gather(start, patch)
            assert started.status_code == 202
            await wait_state(client, model_id, "running")
            model = (await client.get(f"/models/{model_id}")).json()
            events = (await client.get(f"/models/{model_id}/events")).json()
            argv = next(e["data"]["argv"] for e in events if e.get("to_state") == "starting")
            flag = "--max-model-len"
            launched_len = int(argv[argv.index(flag) + 1]) if flag in argv else None
            if patched.status_code == 200:
                assert model["max_model_len"] == 1234
                assert launched_len == 1234 or model["status"]["restart_needed"]
            else:
                assert patched.status_code == 409
                assert patched.json()["detail"]["code"] == "model_running"
                assert model["max_model_len"] == launched_len != 1234
            await client.post(f"/models/{model_id}/stop?wait=true")


@pytest.mark.sqlite_only(reason="holds the SQLite file's write lock with sqlite3")
def test_lifecycle_a_locked_database_never_stalls_the_service(state_dir: Path) -> None:
    """Store writes wait on their own thread: with the database locked for a second while a
    model starts, /healthz keeps answering within 100 ms."""
    with orchestrator_process(state_dir) as service:
        service.client.post("/models", json=spec("tiny", "--ready-delay-s", "0.1"))
        database = sqlite3.connect(state_dir / "gpu-orchestrator.db", timeout=10)
        database.execute("BEGIN EXCLUSIVE")
        locked_at = time.monotonic()
        started = threading.Thread(
            target=lambda: service.client.post("/models/tiny/start", timeout=30)
        )
        started.start()
        latencies = []
        try:
            while time.monotonic() - locked_at < 1.0:
                before = time.monotonic()
                assert service.client.get("/healthz").status_code == 200
                latencies.append(time.monotonic() - before)
        finally:
            database.rollback()
            database.close()
            started.join()
        assert len(latencies) > 10
        slowest = max(latencies)
        assert slowest < 0.1, (slowest, latencies.index(slowest), len(latencies))
        status = service.wait_state("tiny", "running")
        assert status["desired_state"] == "running"
        service.client.post("/models/tiny/stop?wait=true")
