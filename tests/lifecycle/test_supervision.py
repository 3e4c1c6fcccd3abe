"""Failures, bounded restarts with backoff, degraded, and counters, with the fake engine
printing real vLLM/PyTorch failure output."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import MakeSettings, running_app
from tests.lifecycle.helpers import wait_state, wait_status
from tests.lifecycle.test_engine_lifecycle import spec

FAST_POLICY = {
    "max_restarts": 2,
    "backoff_initial_s": 0.1,
    "backoff_factor": 2.0,
    "backoff_max_s": 1.0,
    "stable_after_s": 600,
}


async def _events(client: httpx.AsyncClient, model_id: str, kind: str) -> list[dict[str, Any]]:
    events = (await client.get(f"/models/{model_id}/events", params={"limit": 1000})).json()
    return [event for event in events if event["kind"] == kind]


def _metric(text: str, name: str, model: str) -> float:
    for line in text.splitlines():
        if line.startswith(f'{name}{{model="{model}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} for {model} not in metrics")


async def test_supervision_gpu_oom_restarts_with_growing_delays_then_degrades(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings()) as (_app, client):
        body = spec("tiny", "--oom-kind", "gpu_oom", restart_policy=FAST_POLICY)
        await client.post("/models", json=body)
        await client.post("/models/tiny/start")
        status = await wait_state(client, "tiny", "degraded")
        assert status["restarts_total"] == 2
        assert status["ooms_total"] == 3  # three runs, one OOM each, however many lines matched
        assert status["last_failure"]["kind"] == "gpu_oom"
        assert (
            "restart budget of 2 spent"
            in (await _events(client, "tiny", "transition"))[-1]["reason"]
        )
        delays = [e["data"]["delay_s"] for e in await _events(client, "tiny", "restart_scheduled")]
        assert delays == [0.1, 0.2]
        assert len(await _events(client, "tiny", "restart")) == 2
        metrics = (await client.get("/metrics")).text
        assert _metric(metrics, "gpu_orchestrator_vllm_restarts_total", "tiny") == 2
        assert _metric(metrics, "gpu_orchestrator_vllm_ooms_total", "tiny") == 3
        assert _metric(metrics, "gpu_orchestrator_vllm_status", "tiny") == 3


async def test_supervision_kv_cache_failure_degrades_without_restart(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings()) as (_app, client):
        body = spec(
            "tiny",
            "--oom-kind",
            "kv_cache_insufficient",
            "--oom-during-start",
            restart_policy=FAST_POLICY,
        )
        await client.post("/models", json=body)
        await client.post("/models/tiny/start")
        status = await wait_state(client, "tiny", "degraded")
        assert status["restarts_total"] == 0 and status["ooms_total"] == 1
        assert status["last_failure"]["kind"] == "kv_cache_insufficient"
        assert "max_model_len" in status["last_failure"]["message"]
        assert await _events(client, "tiny", "restart_scheduled") == []


async def test_supervision_crash_loop_without_oom_degrades_with_zero_ooms(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings()) as (_app, client):
        body = spec("tiny", "--exit-after-s", "0", restart_policy=FAST_POLICY)
        await client.post("/models", json=body)
        await client.post("/models/tiny/start")
        status = await wait_state(client, "tiny", "degraded")
        assert status["restarts_total"] == 2 and status["ooms_total"] == 0
        assert status["last_failure"]["kind"] == "exit"


async def test_supervision_host_oom_is_classified(make_settings: MakeSettings) -> None:
    async with running_app(make_settings()) as (_app, client):
        policy = {**FAST_POLICY, "max_restarts": 0}
        await client.post(
            "/models", json=spec("tiny", "--oom-kind", "host_oom", restart_policy=policy)
        )
        await client.post("/models/tiny/start")
        status = await wait_state(client, "tiny", "degraded")
        assert status["last_failure"]["kind"] == "host_oom" and status["ooms_total"] == 1


async def test_supervision_unhealthy_engine_fails_and_is_restarted(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(health_interval_s=0.05, health_failures=2)
    async with running_app(settings) as (_app, client):
        body = spec("tiny", "--health-fail-after-s", "0.5", restart_policy=FAST_POLICY)
        await client.post("/models", json=body)
        await client.post("/models/tiny/start")
        status = await wait_state(client, "tiny", "degraded")
        assert status["last_failure"]["kind"] == "unhealthy"
        assert status["restarts_total"] == 2


async def test_supervision_counters_survive_restart_and_start_clears_degraded(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings()
    async with running_app(settings) as (_app, client):
        body = spec("tiny", "--oom-kind", "gpu_oom", restart_policy=FAST_POLICY)
        await client.post("/models", json=body)
        await client.post("/models/tiny/start")
        await wait_state(client, "tiny", "degraded")
    async with running_app(settings) as (_app, client):
        status = (await client.get("/models/tiny")).json()["status"]
        assert status["state"] == "degraded"
        assert (status["restarts_total"], status["ooms_total"]) == (2, 3)
        metrics = (await client.get("/metrics")).text
        assert _metric(metrics, "gpu_orchestrator_vllm_restarts_total", "tiny") == 2
        assert _metric(metrics, "gpu_orchestrator_vllm_ooms_total", "tiny") == 3
        # The operator fixes the spec and starts: degraded and the budget are cleared.
        await client.patch("/models/tiny", json={"env": {}})
        started = await client.post("/models/tiny/start")
        assert started.status_code == 202
        status = await wait_state(client, "tiny", "running")
        assert status["consecutive_failures"] == 0 and status["restarts_total"] == 2
        await client.post("/models/tiny/stop?wait=true")


async def test_supervision_stop_during_backoff_cancels_the_restart(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings()) as (_app, client):
        policy = {**FAST_POLICY, "backoff_initial_s": 30.0, "backoff_max_s": 60.0}
        await client.post(
            "/models", json=spec("tiny", "--oom-kind", "gpu_oom", restart_policy=policy)
        )
        await client.post("/models/tiny/start")
        status = await wait_status(
            client, "tiny", lambda s: s["next_attempt_at"] is not None, what="restart scheduled"
        )
        assert status["state"] == "failed"
        stopped = await client.post("/models/tiny/stop?wait=true")
        assert stopped.json()["state"] == "stopped"
        assert stopped.json()["next_attempt_at"] is None
