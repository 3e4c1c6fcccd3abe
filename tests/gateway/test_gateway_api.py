"""The gateway in-process: routing by model or adapter, on-demand starts shared by concurrent
requests, bounded waits, errors in OpenAI's shape, tokens, and names that stay unambiguous."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import MakeSettings, running_app
from tests.gateway.conftest import make_adapter, sdk, spec
from tests.lifecycle.helpers import wait_state


async def test_gateway_cold_start_on_demand_then_adapter_routing(
    make_settings: MakeSettings, adapters_root: Path
) -> None:
    adapter = make_adapter(adapters_root, "sql_agent")
    async with running_app(make_settings()) as (_app, client):
        await client.post("/models", json=spec("tiny", adapter_paths=[adapter]))
        agent = sdk(client)
        chat = await agent.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert chat.model == "tiny" and chat.choices[0].message.content == " ok ok ok"
        text = await agent.completions.create(model="sql_agent", prompt="select", max_tokens=2)
        assert text.model == "sql_agent"  # the body reached the engine unchanged
        embedded = await agent.embeddings.create(model="tiny", input=["a", "bb"])
        assert len(embedded.data) == 2
        status = (await client.get("/models/tiny")).json()["status"]
        assert status["state"] == "running"
        assert status["in_flight"] == 0 and status["last_request_at"] is not None
        events = (await client.get("/models/tiny/events")).json()
        assert [e["kind"] for e in events].count("launched") == 1
        metrics = (await client.get("/metrics")).text
        assert 'gpu_orchestrator_gateway_cold_starts_total{model="tiny"} 1.0' in metrics
        assert 'gpu_orchestrator_gateway_requests_total{code="200",model="tiny"} 3.0' in metrics
        await client.post("/models/tiny/stop?wait=true")


async def test_gateway_concurrent_cold_requests_share_one_start(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings()) as (_app, client):
        await client.post("/models", json=spec("tiny", "--ready-delay-s", "0.5"))
        agent = sdk(client)
        answers = await asyncio.gather(
            *(agent.completions.create(model="tiny", prompt="x", max_tokens=1) for _ in range(20))
        )
        assert {answer.model for answer in answers} == {"tiny"}
        events = (await client.get("/models/tiny/events")).json()
        assert [e["kind"] for e in events].count("launched") == 1
        await client.post("/models/tiny/stop?wait=true")


async def test_gateway_list_models_with_adapters_and_states(
    make_settings: MakeSettings, adapters_root: Path
) -> None:
    adapter = make_adapter(adapters_root, "rerank_agent")
    async with running_app(make_settings()) as (_app, client):
        await client.post("/models", json=spec("tiny", adapter_paths=[adapter]))
        listed = await sdk(client).models.list()
        cards = {card.id: card.model_dump() for card in listed.data}
        assert cards["tiny"]["parent"] is None and cards["tiny"]["state"] == "stopped"
        assert cards["rerank_agent"]["parent"] == "tiny"
        assert cards["rerank_agent"]["object"] == "model"


async def test_gateway_unknown_model_is_the_sdks_not_found(make_settings: MakeSettings) -> None:
    async with running_app(make_settings()) as (_app, client):
        with pytest.raises(openai.NotFoundError) as raised:
            await sdk(client).completions.create(model="nope", prompt="x")
        assert raised.value.code == "model_not_found"
        missing = await client.post("/v1/completions", json={"prompt": "x"})
        assert missing.status_code == 400
        assert missing.json()["error"]["param"] == "model"


async def test_gateway_full_queue_is_503_with_retry_after(make_settings: MakeSettings) -> None:
    async with running_app(make_settings(gateway_max_queue=2)) as (_app, client):
        await client.post("/models", json=spec("tiny", "--ready-delay-s", "1.0"))
        body = {"model": "tiny", "prompt": "x", "max_tokens": 1}
        answers = await asyncio.gather(
            *(client.post("/v1/completions", json=body) for _ in range(6))
        )
        codes = sorted(answer.status_code for answer in answers)
        assert codes == [200, 200, 503, 503, 503, 503]
        refused = next(answer for answer in answers if answer.status_code == 503)
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "queue_full"
        await client.post("/models/tiny/stop?wait=true")


async def test_gateway_refusals_are_503_with_reason_and_figures(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings(simulated_gpus=[8192])) as (_app, client):
        await client.post("/models", json=spec("big", gpu_memory_util=0.95))
        refused = await client.post("/v1/completions", json={"model": "big", "prompt": "x"})
        assert refused.status_code == 503
        error = refused.json()["error"]
        assert error["code"] == "insufficient_gpu_memory" and error["required_mib"] > 8192
        policy = {"max_restarts": 0}
        await client.post(
            "/models", json=spec("crashy", "--exit-during-start", "3", restart_policy=policy)
        )
        failed = await client.post("/v1/completions", json={"model": "crashy", "prompt": "x"})
        assert failed.status_code == 503 and failed.json()["error"]["state"] == "degraded"
        again = await client.post("/v1/completions", json={"model": "crashy", "prompt": "x"})
        assert again.json()["error"]["code"] == "model_degraded"
        await client.post("/models", json=spec("manual", on_demand=False))
        manual = await client.post("/v1/completions", json={"model": "manual", "prompt": "x"})
        assert manual.json()["error"]["code"] == "model_stopped"


async def test_gateway_wait_past_the_start_timeout_is_504(make_settings: MakeSettings) -> None:
    async with running_app(make_settings()) as (_app, client):
        slow = spec("slow", "--ready-delay-s", "30", start_timeout_s=0.5)
        await client.post("/models", json=slow)
        answer = await client.post("/v1/completions", json={"model": "slow", "prompt": "x"})
        assert answer.status_code == 504
        assert answer.json()["error"]["code"] == "start_timeout"
        await client.post("/models/slow/stop?wait=true")


async def test_gateway_tokens_inference_only_on_v1(make_settings: MakeSettings) -> None:
    settings = make_settings(api_token="admin-token", inference_tokens="agent-a,agent-b")
    async with running_app(settings) as (_app, client):
        admin = {"Authorization": "Bearer admin-token"}
        await client.post("/models", json=spec("tiny"), headers=admin)
        with pytest.raises(openai.AuthenticationError):
            await sdk(client, api_key="wrong").models.list()
        listed = await sdk(client, api_key="agent-b").models.list()
        assert [card.id for card in listed.data] == ["tiny"]
        agent = {"Authorization": "Bearer agent-a"}
        assert (await client.post("/models/tiny/start", headers=agent)).status_code == 401
        assert (await client.get("/v1/models", headers=admin)).status_code == 200


async def test_gateway_adapter_names_stay_unambiguous(
    make_settings: MakeSettings, adapters_root: Path
) -> None:
    first = make_adapter(adapters_root / "a", "shared_agent")
    second = make_adapter(adapters_root / "b", "shared_agent")
    async with running_app(make_settings()) as (_app, client):
        assert (
            await client.post("/models", json=spec("one", adapter_paths=[first]))
        ).status_code == 201
        clash = await client.post("/models", json=spec("two", adapter_paths=[second]))
        assert clash.status_code == 409
        assert clash.json()["detail"]["code"] == "adapter_name_conflict"
        assert (await client.get("/models/two")).status_code == 404  # nothing half-stored
        await client.post("/models", json=spec("two"))
        patched = await client.patch("/models/two", json={"adapter_paths": [second]})
        assert patched.status_code == 409
        assert (await client.get("/models/two")).json()["adapter_paths"] == []


async def test_gateway_max_concurrency_queues_the_rest(make_settings: MakeSettings) -> None:
    async with running_app(make_settings()) as (_app, client):
        body = spec("tiny", "--token-interval-s", "0.05", max_concurrency=1)
        await client.post("/models", json=body)
        await client.post("/models/tiny/start")
        status = await wait_state(client, "tiny", "running")
        request = {"model": "tiny", "prompt": "x", "max_tokens": 4, "stream": True}
        answers = await asyncio.gather(
            *(client.post("/v1/completions", json=request) for _ in range(3))
        )
        assert [answer.status_code for answer in answers] == [200, 200, 200]
        engine = httpx.get(f"{status['base_url']}/fake/state", timeout=5).json()
        assert engine["streams_peak"] == 1 and engine["requests"]["/v1/completions"] == 3
        await client.post("/models/tiny/stop?wait=true")
