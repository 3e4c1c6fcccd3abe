"""Per-agent LoRA adapters added and removed on a running engine (the fake engine, which takes
vLLM's runtime LoRA routes), through the API and the gateway."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx

from tests.conftest import MakeSettings, running_app
from tests.fakes import wait_until, wait_until_async
from tests.gateway.conftest import make_adapter, spec
from tests.lifecycle.helpers import wait_state, wait_status
from tests.lifecycle.orchestrator_process import orchestrator_process


def _served(base_url: str) -> set[str]:
    cards = httpx.get(f"{base_url}/v1/models", timeout=5).json()["data"]
    return {card["id"] for card in cards}


async def _complete(client: httpx.AsyncClient, model: str) -> httpx.Response:
    return await client.post(
        "/v1/completions", json={"model": model, "prompt": "x", "max_tokens": 1}
    )


async def test_adapters_added_and_removed_live_on_the_same_engine(
    make_settings: MakeSettings, adapters_root: Path
) -> None:
    first = make_adapter(adapters_root, "synth_agent")
    second = make_adapter(adapters_root, "critic_agent", rank=16)
    async with running_app(make_settings()) as (_app, client):
        await client.post("/models", json=spec("tiny", adapter_paths=[first]))
        await client.post("/models/tiny/start")
        status = await wait_state(client, "tiny", "running")
        pid, base_url = status["pid"], status["base_url"]
        added = await client.post(
            "/models/tiny/adapters", json={"name": "critic_agent", "path": second}
        )
        assert added.status_code == 201, added.text
        assert {(a["name"], a["loaded"]) for a in added.json()} == {
            ("synth_agent", True),
            ("critic_agent", True),
        }
        assert _served(base_url) == {"tiny", "synth_agent", "critic_agent"}
        assert (await client.get("/models/tiny")).json()["status"]["pid"] == pid
        assert (await _complete(client, "critic_agent")).json()["model"] == "critic_agent"
        again = await client.post(
            "/models/tiny/adapters", json={"name": "critic_agent", "path": second}
        )
        assert again.status_code == 200
        removed = await client.delete("/models/tiny/adapters/critic_agent")
        assert removed.status_code == 204
        assert _served(base_url) == {"tiny", "synth_agent"}
        assert (await _complete(client, "critic_agent")).status_code == 404
        assert (await _complete(client, "synth_agent")).status_code == 200
        model = (await client.get("/models/tiny")).json()
        assert model["adapter_paths"] == [first] and model["status"]["pid"] == pid
        metrics = (await client.get("/metrics")).text
        assert 'gpu_orchestrator_adapter_loads_total{model="tiny",result="ok"} 1.0' in metrics
        assert 'gpu_orchestrator_adapters_loaded{model="tiny"} 1.0' in metrics
        await client.post("/models/tiny/stop?wait=true")


async def test_adapters_of_a_stopped_model_change_the_spec_then_launch_with_it(
    make_settings: MakeSettings, adapters_root: Path
) -> None:
    path = make_adapter(adapters_root, "scout_agent")
    async with running_app(make_settings()) as (_app, client):
        await client.post("/models", json=spec("tiny"))
        added = await client.post(
            "/models/tiny/adapters", json={"name": "scout_agent", "path": path}
        )
        assert added.status_code == 201
        assert added.json() == [
            {"name": "scout_agent", "path": path, "rank": 8, "loaded": False, "since": None}
        ]
        # The gateway starts the base with the adapter the spec now holds.
        assert (await _complete(client, "scout_agent")).json()["model"] == "scout_agent"
        await client.post("/models/tiny/stop?wait=true")


async def test_adapters_refusals_say_why_and_change_nothing(
    make_settings: MakeSettings, adapters_root: Path, tmp_path: Path
) -> None:
    wide = make_adapter(adapters_root, "wide_agent", rank=128)
    mine = make_adapter(adapters_root / "x", "mine_agent")
    theirs = make_adapter(adapters_root / "y", "mine_agent")
    not_lora = tmp_path / "not-an-adapter"
    not_lora.mkdir()
    async with running_app(make_settings()) as (_app, client):
        await client.post("/models", json=spec("tiny", adapter_paths=[mine]))
        await client.post("/models", json=spec("other"))
        await client.post("/models/tiny/start")
        await wait_state(client, "tiny", "running")
        invalid = await client.post(
            "/models/tiny/adapters", json={"name": "broken", "path": str(not_lora)}
        )
        assert invalid.status_code == 422
        assert invalid.json()["detail"]["code"] == "adapter_invalid"
        too_wide = await client.post(
            "/models/tiny/adapters", json={"name": "wide_agent", "path": wide}
        )
        assert too_wide.status_code == 409
        detail = too_wide.json()["detail"]
        assert detail["code"] == "restart_needed"
        assert (detail["rank"], detail["max_lora_rank"]) == (128, 64)
        clash = await client.post(
            "/models/other/adapters", json={"name": "mine_agent", "path": theirs}
        )
        assert clash.status_code == 409
        assert clash.json()["detail"]["code"] == "adapter_name_conflict"
        missing = await client.delete("/models/tiny/adapters/nobody")
        assert missing.status_code == 404
        assert missing.json()["detail"]["code"] == "adapter_not_found"
        assert (await client.get("/models/tiny")).json()["adapter_paths"] == [mine]
        assert (await client.get("/models/other")).json()["adapter_paths"] == []
        await client.post("/models/tiny/stop?wait=true")


async def test_adapters_a_request_for_one_being_loaded_waits_for_it(
    make_settings: MakeSettings, adapters_root: Path
) -> None:
    path = make_adapter(adapters_root, "late_agent")
    async with running_app(make_settings()) as (app, client):
        body = spec("tiny", "--lora-load-delay-s", "0.5", max_loras=2)
        await client.post("/models", json=body)
        await client.post("/models/tiny/start")
        await wait_state(client, "tiny", "running")
        orchestrator = app.state.services.orchestrator
        adding = asyncio.create_task(
            client.post("/models/tiny/adapters", json={"name": "late_agent", "path": path})
        )
        await wait_until_async(lambda: "late_agent" in orchestrator.loading_adapters, 5)
        answer = await _complete(client, "late_agent")  # sent while the engine loads it
        assert answer.status_code == 200 and answer.json()["model"] == "late_agent"
        assert (await adding).status_code == 201
        await client.post("/models/tiny/stop?wait=true")


async def test_adapters_added_live_come_back_after_the_engine_is_killed(
    make_settings: MakeSettings, adapters_root: Path
) -> None:
    first = make_adapter(adapters_root, "synth_agent")
    second = make_adapter(adapters_root, "critic_agent")
    policy = {"backoff_initial_s": 0.1, "max_restarts": 3}
    async with running_app(make_settings()) as (_app, client):
        await client.post(
            "/models", json=spec("tiny", adapter_paths=[first], restart_policy=policy)
        )
        await client.post("/models/tiny/start")
        old = await wait_state(client, "tiny", "running")
        await client.post("/models/tiny/adapters", json={"name": "critic_agent", "path": second})
        os.killpg(old["pid"], signal.SIGKILL)
        new = await wait_status(
            client,
            "tiny",
            lambda status: status["state"] == "running" and status["pid"] != old["pid"],
            what="restarted",
        )
        assert _served(new["base_url"]) == {"tiny", "synth_agent", "critic_agent"}
        await client.post("/models/tiny/stop?wait=true")


def test_adapters_adoption_reconciles_what_the_engine_serves(tmp_path: Path) -> None:
    """Orchestrator SIGKILLed; meanwhile the engine lost an adapter and gained one the spec does
    not have: the next orchestrator makes it serve exactly the spec's."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    kept = make_adapter(tmp_path / "adapters", "kept_agent")
    stray = make_adapter(tmp_path / "adapters", "stray_agent")
    with orchestrator_process(state_dir) as first:
        first.client.post("/models", json=spec("tiny", adapter_paths=[kept]))
        first.client.post("/models/tiny/start")
        running = first.wait_state("tiny", "running")
        first.kill()
    base_url = running["base_url"]
    httpx.post(f"{base_url}/v1/unload_lora_adapter", json={"lora_name": "kept_agent"}, timeout=5)
    httpx.post(
        f"{base_url}/v1/load_lora_adapter",
        json={"lora_name": "stray_agent", "lora_path": stray},
        timeout=5,
    )
    assert _served(base_url) == {"tiny", "stray_agent"}
    with orchestrator_process(state_dir) as second:
        wait_until(lambda: _served(base_url) == {"tiny", "kept_agent"}, 10)
        assert second.status("tiny")["pid"] == running["pid"]  # adopted, not restarted
        second.client.post("/models/tiny/stop?wait=true")
