"""Start, stop and concurrency against the fake engine: a real server in a real process group."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.conftest import MakeSettings, live_engines_of, running_app
from tests.lifecycle.helpers import group_alive, wait_state, wait_status


def spec(model_id: str = "tiny", *fake_flags: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": model_id, "model": "/models/tiny", "gpu_memory_util": 0.3}
    if fake_flags:
        body["env"] = {"FAKE_ENGINE_ARGS": " ".join(fake_flags)}
    body.update(fields)
    return body


async def test_lifecycle_start_becomes_running_and_stop_leaves_no_process(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    async with running_app(make_settings()) as (_app, client):
        await client.post("/models", json=spec("tiny", "--ready-delay-s", "0.3", "--fork-child"))
        started = await client.post("/models/tiny/start")
        assert started.status_code == 202, started.text
        assert started.json()["state"] == "starting"
        status = await wait_state(client, "tiny", "running")
        pid = status["pid"]
        assert status["launcher"] == "subprocess" and status["gpu_ids"] == [0]
        models = httpx.get(f"{status['base_url']}/v1/models", timeout=5).json()
        assert [item["id"] for item in models["data"]] == ["tiny"]
        assert len(group_alive(pid)) == 2  # the engine and its forked child
        assert live_engines_of(tmp_path) == [pid]
        again = await client.post("/models/tiny/start")
        assert again.status_code == 200 and again.json()["pid"] == pid
        stopped = await client.post("/models/tiny/stop?wait=true")
        assert stopped.status_code == 202
        assert stopped.json()["state"] == "stopped" and stopped.json()["pid"] is None
        assert group_alive(pid) == []
        events = (await client.get("/models/tiny/events")).json()
        transitions = [
            (e["from_state"], e["to_state"]) for e in events if e["kind"] == "transition"
        ]
        assert transitions == [
            ("stopped", "starting"),
            ("starting", "running"),
            ("running", "stopping"),
            ("stopping", "stopped"),
        ]


async def test_lifecycle_concurrent_starts_spawn_one_engine(make_settings: MakeSettings) -> None:
    async with running_app(make_settings()) as (_app, client):
        await client.post("/models", json=spec("tiny", "--ready-delay-s", "0.2"))
        responses = await asyncio.gather(*(client.post("/models/tiny/start") for _ in range(100)))
        codes = sorted(response.status_code for response in responses)
        assert codes.count(202) == 1 and codes.count(200) == 99
        status = await wait_state(client, "tiny", "running")
        launched = [
            e for e in (await client.get("/models/tiny/events")).json() if e["kind"] == "launched"
        ]
        assert len(launched) == 1
        tokens = [
            p.pid
            for p in psutil.process_iter()
            if _env(p).get("GPU_ORCH_LAUNCH_TOKEN") and p.pid == status["pid"]
        ]
        assert tokens == [status["pid"]]
        await client.post("/models/tiny/stop?wait=true")


def _env(process: psutil.Process) -> dict[str, str]:
    try:
        return process.environ()
    except psutil.Error:
        return {}


async def test_lifecycle_engine_ignoring_sigterm_is_killed_after_grace(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings(stop_grace_s=0.5)) as (_app, client):
        await client.post("/models", json=spec("tiny", "--ignore-sigterm", "--fork-child"))
        await client.post("/models/tiny/start")
        pid = (await wait_state(client, "tiny", "running"))["pid"]
        stopped = await client.post("/models/tiny/stop?wait=true")
        assert stopped.json()["state"] == "stopped"
        assert group_alive(pid) == []


async def test_lifecycle_engine_receives_adapters_and_lora_flags(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    adapters = []
    for name, rank in (("synth_v1", 8), ("rerank_v1", 12)):
        directory = tmp_path / "store" / name
        directory.mkdir(parents=True)
        (directory / "adapter_config.json").write_text(json.dumps({"r": rank}))
        adapters.append(str(directory))
    record = tmp_path / "record.json"
    settings = make_settings(model_store_root=tmp_path / "store")
    async with running_app(settings) as (_app, client):
        body = spec(
            "tiny",
            "--record",
            str(record),
            adapter_paths=[adapters[0], "rerank_v1"],
            adapter_names={adapters[0]: "synth"},
        )
        assert (await client.post("/models", json=body)).status_code == 201
        await client.post("/models/tiny/start")
        status = await wait_state(client, "tiny", "running")
        state = json.loads(record.read_text())
        assert state["env"]["VLLM_ADAPTER_PATHS"] == f"{adapters[0]}:{adapters[1]}"
        assert state["env"]["CUDA_VISIBLE_DEVICES"] == "0"
        argv = state["argv"]
        lora = argv[argv.index("--lora-modules") + 1 : argv.index("--lora-modules") + 3]
        assert lora == [f"synth={adapters[0]}", f"rerank_v1={adapters[1]}"]
        # Fitted to the declared adapters (r 8 and 16), with room for more added at runtime.
        assert argv[argv.index("--max-lora-rank") + 1] == "64"
        assert argv[argv.index("--max-loras") + 1] == "4"
        assert state["env"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
        assert "--enable-lora" in argv
        assert argv[argv.index("--port") + 1] == str(status["port"])
        assert argv[argv.index("--served-model-name") + 1] == "tiny"
        models = httpx.get(f"{status['base_url']}/v1/models", timeout=5).json()
        assert {item["id"] for item in models["data"]} == {"tiny", "synth", "rerank_v1"}
        await client.post("/models/tiny/stop?wait=true")


async def test_lifecycle_exit_during_start_fails_with_code_and_log_tail(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings()) as (_app, client):
        body = spec("tiny", "--exit-during-start", "3", restart_policy={"max_restarts": 0})
        await client.post("/models", json=body)
        await client.post("/models/tiny/start")
        status = await wait_state(client, "tiny", "degraded")
        failure = status["last_failure"]
        assert failure["kind"] == "exit"
        assert "code 3" in failure["message"] and "log tail" in failure["message"]
        assert status["pid"] is None


async def test_lifecycle_start_timeout_fails(make_settings: MakeSettings) -> None:
    async with running_app(make_settings()) as (_app, client):
        body = spec(
            "tiny",
            "--ready-delay-s",
            "30",
            start_timeout_s=0.5,
            restart_policy={"max_restarts": 0},
        )
        await client.post("/models", json=body)
        await client.post("/models/tiny/start")
        status = await wait_status(
            client, "tiny", lambda s: s["last_failure"] is not None, what="a failure"
        )
        assert status["last_failure"]["kind"] == "start_timeout"


async def test_lifecycle_delete_running_needs_force(make_settings: MakeSettings) -> None:
    async with running_app(make_settings()) as (_app, client):
        await client.post("/models", json=spec("tiny"))
        await client.post("/models/tiny/start")
        pid = (await wait_state(client, "tiny", "running"))["pid"]
        refused = await client.delete("/models/tiny")
        assert refused.status_code == 409 and refused.json()["detail"]["code"] == "model_running"
        patch = await client.patch("/models/tiny", json={"gpu_memory_util": 0.4})
        assert patch.status_code == 409 and patch.json()["detail"]["code"] == "model_running"
        assert (await client.delete("/models/tiny?force=true")).status_code == 204
        assert group_alive(pid) == []
        assert (await client.get("/models/tiny")).status_code == 404


async def test_lifecycle_refused_start_carries_figures(make_settings: MakeSettings) -> None:
    async with running_app(make_settings(simulated_gpus=[16384])) as (_app, client):
        await client.post("/models", json=spec("big", gpu_memory_util=0.95))
        refused = await client.post("/models/big/start")
        assert refused.status_code == 409
        detail = refused.json()["detail"]
        assert detail["code"] == "insufficient_gpu_memory"
        assert detail["required_mib"] == 15565 + 1024
        assert detail["gpus"][0]["free_mib"] == 16384
        status = (await client.get("/models/big")).json()["status"]
        assert status["state"] == "stopped" and status["desired_state"] == "stopped"


async def test_lifecycle_refused_restart_leaves_model_wanted_stopped(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings(simulated_gpus=[16384])) as (_app, client):
        await client.post("/models", json=spec("big", gpu_memory_util=0.95))
        refused = await client.post("/models/big/restart")
        assert refused.status_code == 409
        status = (await client.get("/models/big")).json()["status"]
        assert (status["state"], status["desired_state"]) == ("stopped", "stopped")
