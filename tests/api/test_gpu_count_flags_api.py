"""The API refuses specs whose engine would take more GPUs than placement reserves, or choose its
own GPUs: 422 naming the field, with a message that names the field to use instead."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

SPEC: dict[str, Any] = {"id": "big", "model": "/models/big", "gpu_memory_util": 0.5}


def refusal(response: httpx.Response, field: str) -> str:
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", field], error
    message: str = error["msg"]
    return message


@pytest.mark.parametrize(
    "args",
    [
        ["--pipeline-parallel-size", "2"],
        ["-pp=2"],
        ["--data-parallel-size=2"],
        ["-dp", "2"],
        ["--data-parallel-size-local", "2"],
        ["-pcp", "2"],
    ],
)
async def test_gpu_count_flags_in_extra_args_are_422_naming_tensor_parallel_size(
    client: httpx.AsyncClient, args: list[str]
) -> None:
    message = refusal(await client.post("/models", json={**SPEC, "extra_args": args}), "extra_args")
    assert "tensor_parallel_size" in message
    assert (await client.get("/models")).json() == []


async def test_gpu_count_flags_are_refused_by_put_and_patch_too(client: httpx.AsyncClient) -> None:
    assert (await client.post("/models", json=SPEC)).status_code == 201
    put_body = {key: value for key, value in SPEC.items() if key != "id"}
    put = await client.put("/models/big", json={**put_body, "extra_args": ["-pp", "2"]})
    assert "tensor_parallel_size" in refusal(put, "extra_args")
    patch = await client.patch("/models/big", json={"extra_args": ["--data-parallel-size=2"]})
    assert "tensor_parallel_size" in refusal(patch, "extra_args")
    assert (await client.get("/models/big")).json()["extra_args"] == []


@pytest.mark.parametrize("name", ["CUDA_DEVICE_ORDER", "CUDA_VISIBLE_DEVICES", "VLLM_DP_SIZE"])
async def test_gpu_choosing_env_is_422_naming_env(client: httpx.AsyncClient, name: str) -> None:
    response = await client.post("/models", json={**SPEC, "env": {name: "1"}})
    message = refusal(response, "env")
    assert name in message and "tensor_parallel_size" in message


async def test_gpu_count_tensor_parallel_size_is_the_field_that_works(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/models", json={**SPEC, "tensor_parallel_size": 2})
    assert response.status_code == 201, response.text
    can_start = (await client.get("/models/big/can-start")).json()
    assert can_start["ok"] and can_start["gpu_ids"] == [0, 1]
