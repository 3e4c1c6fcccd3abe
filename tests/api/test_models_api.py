"""/models CRUD through the app, on a real SQLite file migrated by Alembic."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.conftest import MakeSettings, running_app

SPEC: dict[str, Any] = {"id": "tiny", "model": "/models/tiny", "gpu_memory_util": 0.5}


async def test_models_create_then_get_shows_spec_and_status(client: httpx.AsyncClient) -> None:
    created = await client.post("/models", json=SPEC)
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/models/tiny"
    body = (await client.get("/models/tiny")).json()
    assert body["id"] == "tiny" and body["gpu_memory_util"] == 0.5
    assert body["status"]["state"] == "stopped"
    assert body["status"]["desired_state"] == "stopped"
    assert body["status"]["restarts_total"] == 0 and body["status"]["last_failure"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["status"]["since"])
    listed = (await client.get("/models")).json()
    assert [item["id"] for item in listed] == ["tiny"]


async def test_models_create_twice_is_409_already_exists(client: httpx.AsyncClient) -> None:
    assert (await client.post("/models", json=SPEC)).status_code == 201
    again = await client.post("/models", json={**SPEC, "gpu_memory_util": 0.9})
    assert again.status_code == 409
    assert again.json()["detail"]["code"] == "already_exists"
    assert (await client.get("/models/tiny")).json()["gpu_memory_util"] == 0.5


async def test_models_unknown_is_404_not_found(client: httpx.AsyncClient) -> None:
    response = await client.get("/models/nope")
    assert response.status_code == 404
    assert response.json()["detail"]["code"] == "not_found"


async def test_models_put_and_patch_change_the_spec(client: httpx.AsyncClient) -> None:
    await client.post("/models", json=SPEC)
    put = await client.put("/models/tiny", json={"model": "/models/other", "dtype": "float16"})
    assert put.status_code == 200, put.text
    assert put.json()["model"] == "/models/other" and put.json()["gpu_memory_util"] == 0.9
    patch = await client.patch("/models/tiny", json={"max_model_len": 2048})
    assert patch.status_code == 200
    body = (await client.get("/models/tiny")).json()
    assert body["max_model_len"] == 2048 and body["dtype"] == "float16"


async def test_models_patch_invalid_value_names_field_and_keeps_spec(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/models", json=SPEC)
    response = await client.patch("/models/tiny", json={"memory_max": "lots"})
    assert response.status_code == 422
    assert "memory_max" in response.text
    assert (await client.get("/models/tiny")).json()["memory_max"] is None


async def test_models_delete_removes_it(client: httpx.AsyncClient) -> None:
    await client.post("/models", json=SPEC)
    assert (await client.delete("/models/tiny")).status_code == 204
    assert (await client.get("/models/tiny")).status_code == 404
    assert (await client.post("/models", json=SPEC)).status_code == 201


async def test_models_survive_an_app_restart(make_settings: MakeSettings) -> None:
    settings = make_settings()
    async with running_app(settings) as (_app, client):
        assert (await client.post("/models", json=SPEC)).status_code == 201
    async with running_app(settings) as (_app, client):
        body = (await client.get("/models/tiny")).json()
        assert body["model"] == "/models/tiny" and body["status"]["state"] == "stopped"


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", "../etc"),
        ("id", "a/b"),
        ("id", "a;b"),
        ("id", "a\nb"),
        ("id", "\uff21bc"),
        ("id", "UPPER"),
        ("gpu_memory_util", 0),
        ("gpu_memory_util", 1.5),
        ("gpu_memory_util", "NaN"),
        ("gpu_memory_util", -0.5),
        ("dtype", "int4"),
        ("memory_max", "48 GB"),
        ("cpu_quota", "lots"),
        ("adapter_paths", ["../outside"]),
        ("adapter_paths", ["a/../../b"]),
        ("extra_args", ["--port", "9"]),
        ("extra_args", ["--host=0.0.0.0"]),
        ("extra_args", ["--served-model-name", "x"]),
        ("extra_args", ["--gpu-memory-utilization", "1"]),
        ("extra_args", ["--lora-modules", "a=b"]),
        ("env", {"LD_PRELOAD": "/x.so"}),
        ("env", {"LD_LIBRARY_PATH": "/x"}),
        ("env", {"PYTHONPATH": "/x"}),
        ("env", {"PYTHONSTARTUP": "/x"}),
        ("env", {"VLLM_ADAPTER_PATHS": "/x"}),
        ("env", {"CUDA_VISIBLE_DEVICES": "0"}),
        ("port", 80),
        ("port", 70000),
        ("tensor_parallel_size", 0),
        ("restart_policy", {"max_restarts": -1}),
        ("restart_policy", {"backoff_initial_s": "Infinity"}),
        ("model", 12),
    ],
)
async def test_models_bad_input_is_422_naming_the_field_and_stores_nothing(
    client: httpx.AsyncClient, field: str, value: Any
) -> None:
    body = {**SPEC, field: value}
    if field == "id":
        body["id"] = value
    response = await client.post("/models", json=body)
    assert response.status_code == 422, response.text
    locations = [item["loc"] for item in response.json()["detail"]]
    assert any(field in loc for loc in locations), locations
    assert (await client.get("/models")).json() == []
