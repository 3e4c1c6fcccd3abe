"""GPU numbering: an engine runs on the GPU that the headroom check chose, on a node whose GPUs
CUDA numbers differently from NVML (tests/fixtures/nvml/a10_h100_mixed_2x.json).

Placement speaks NVML indices, which follow the PCI bus. CUDA numbers devices fastest first
unless CUDA_DEVICE_ORDER=PCI_BUS_ID, and CUDA_VISIBLE_DEVICES picks ordinals of CUDA's own
numbering. `cuda_devices` models that runtime rule, so the tests can say which physical GPU an
engine with a given environment would open."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.orchestrator.engine_command import build_engine_command
from app.orchestrator.gpu.headroom import GpuAllocator
from app.orchestrator.gpu.nvml import snapshot_from_nvml
from app.orchestrator.gpu.probe import GpuSnapshot
from app.orchestrator.spec import ModelSpec

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "nvml" / "a10_h100_mixed_2x.json"
RECORDS: list[dict[str, Any]] = json.loads(FIXTURE.read_text())["devices"]
A10_UUID = RECORDS[0]["uuid"]
H100_UUID = RECORDS[1]["uuid"]
# CUDA's FASTEST_FIRST heuristic ranks devices by compute capability and throughput: the H100
# (sm_90, 114 SMs) before the A10 (sm_86, 72 SMs), whatever their bus order.
FASTEST_FIRST = [H100_UUID, A10_UUID]


def cuda_devices(records: Sequence[Mapping[str, Any]], env: Mapping[str, str]) -> list[str]:
    """The UUIDs of the GPUs a CUDA process with `env` sees, as its devices 0, 1, ..."""
    if env.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID":
        order = [str(record["uuid"]) for record in sorted(records, key=lambda r: r["pci_bus_id"])]
    else:  # FASTEST_FIRST, CUDA's default
        order = FASTEST_FIRST
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return order
    return [order[int(entry)] for entry in visible.split(",")]


class ReadingProbe:
    """The NVML probe's parser over the fixture's reading."""

    backend = "nvml"

    def snapshot(self) -> GpuSnapshot:
        return snapshot_from_nvml(RECORDS)

    def engine_placed(self, model_id: str, gpu_ids: Sequence[int], held_mib: int) -> None:
        """NVML sees allocations by itself."""

    def engine_removed(self, model_id: str) -> None:
        """NVML sees allocations by itself."""


def engine_env(spec: ModelSpec, gpu_ids: Sequence[int], operator_env: Mapping[str, str]) -> Any:
    command = build_engine_command(
        spec,
        base_command=["vllm", "serve"],
        model_path="/store/chat",
        host="127.0.0.1",
        port=8100,
        adapters=(),
        parent_env={"PATH": "/usr/bin"},
        engine_env=operator_env,
        gpu_ids=gpu_ids,
        launch_token="tok",
    )
    return command.env


def test_gpu_numbering_fixture_orders_differ() -> None:
    # The premise: NVML (and PCI) order A10, H100; CUDA's default order H100, A10.
    assert [gpu.uuid for gpu in snapshot_from_nvml(RECORDS).gpus] == [A10_UUID, H100_UUID]
    assert cuda_devices(RECORDS, {}) == [H100_UUID, A10_UUID]


async def test_gpu_numbering_engine_opens_the_gpu_placement_chose() -> None:
    allocator = GpuAllocator(ReadingProbe(), margin_mib=1024)
    decision = await allocator.reserve("chat", gpu_memory_util=0.8, tensor_parallel_size=1)
    # Only the A10 has room (the H100 is nearly full): NVML index 0.
    assert decision.ok and decision.gpu_ids == (0,), decision.reason
    spec = ModelSpec(id="chat", model="m", gpu_memory_util=0.8)
    # The operator's ENGINE_ENV asking for CUDA's default order changes nothing.
    env = engine_env(spec, decision.gpu_ids, {"CUDA_DEVICE_ORDER": "FASTEST_FIRST"})
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    assert cuda_devices(RECORDS, env) == [A10_UUID]  # not the full H100


def test_gpu_numbering_survives_a_spec_env_that_never_passed_validation() -> None:
    # model_copy(update=...) skips validation: the last line of defence is the build order.
    spec = ModelSpec(id="chat", model="m").model_copy(
        update={"env": {"CUDA_DEVICE_ORDER": "FASTEST_FIRST", "CUDA_VISIBLE_DEVICES": "0"}}
    )
    env = engine_env(spec, (0,), {})
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" and env["CUDA_VISIBLE_DEVICES"] == "0"
    assert cuda_devices(RECORDS, env) == [A10_UUID]


def test_gpu_numbering_visible_devices_are_integer_indices() -> None:
    # vLLM maps each CUDA_VISIBLE_DEVICES entry back to an NVML device with int(entry): a UUID
    # there would fail its start-up (docs/design.md, "GPU numbering").
    env = engine_env(ModelSpec(id="chat", model="m", tensor_parallel_size=2), (0, 1), {})
    assert [int(entry) for entry in env["CUDA_VISIBLE_DEVICES"].split(",")] == [0, 1]
    assert cuda_devices(RECORDS, env) == [A10_UUID, H100_UUID]


@pytest.mark.parametrize(
    "name",
    ["CUDA_DEVICE_ORDER", "cuda_device_order", "CUDA_VISIBLE_DEVICES", "VLLM_DP_SIZE"],
)
def test_gpu_numbering_spec_env_may_not_choose_gpus(name: str) -> None:
    with pytest.raises(ValidationError) as refused:
        ModelSpec(id="chat", model="m", env={name: "FASTEST_FIRST"})
    [error] = refused.value.errors()
    assert error["loc"] == ("env",)
    assert name in error["msg"] and "tensor_parallel_size" in error["msg"]
