"""GPU probes: NVML parsing of captured readings, NVML failures via a fake library, simulated."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from app.orchestrator.gpu.headroom import decide
from app.orchestrator.gpu.nvml import NvmlProbe, snapshot_from_nvml
from app.orchestrator.gpu.simulated import SimulatedGpuProbe

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "nvml"
MIB = 1024 * 1024


def load_records(name: str) -> list[dict[str, Any]]:
    data = json.loads((FIXTURES / name).read_text())
    records: list[dict[str, Any]] = data["devices"]
    return records


class FakeNvml:
    """Stands in for the pynvml module: serves fixture records, raises real NVMLError classes."""

    NVMLError = pynvml.NVMLError

    def __init__(
        self,
        records: list[dict[str, Any]],
        *,
        init_errors: list[Exception] | None = None,
        memory_errors: dict[int, Exception] | None = None,
        utilization_error: Exception | None = None,
    ) -> None:
        self.records = records
        self.init_errors = list(init_errors or [])
        self.memory_errors = memory_errors or {}
        self.utilization_error = utilization_error
        self.init_calls = 0

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_errors:
            raise self.init_errors.pop(0)

    def nvmlDeviceGetCount(self) -> int:
        return len(self.records)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        return index

    def nvmlDeviceGetName(self, handle: Any) -> bytes:
        # Older nvidia-ml-py releases return bytes here.
        return str(self.records[handle]["name"]).encode()

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        return str(self.records[handle]["uuid"])

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        if handle in self.memory_errors:
            raise self.memory_errors[handle]
        return SimpleNamespace(**self.records[handle]["memory"])

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        if self.utilization_error is not None:
            raise self.utilization_error
        return SimpleNamespace(**self.records[handle]["utilization"])


def test_snapshot_from_nvml_parses_idle_h100_node() -> None:
    snapshot = snapshot_from_nvml(load_records("h100_sxm_80gb_8x_idle.json"))

    assert snapshot.backend == "nvml"
    assert snapshot.available and snapshot.error is None
    assert [gpu.index for gpu in snapshot.gpus] == list(range(8))
    assert {gpu.total_mib for gpu in snapshot.gpus} == {81559}
    assert snapshot.gpus[0].name == "NVIDIA H100 80GB HBM3"
    assert snapshot.gpus[0].free_mib == 81559 - 556
    assert snapshot.gpus[4].used_mib == 557
    assert snapshot.gpus[0].utilization_pct == 0


def test_snapshot_from_nvml_rounds_free_memory_down() -> None:
    snapshot = snapshot_from_nvml(load_records("a100_sxm4_40gb_2x_one_busy.json"))

    busy = snapshot.gpus[1]
    assert busy.total_mib == 40960
    assert busy.free_mib == 2423  # 2423.75 MiB free: never reported as 2424
    assert busy.utilization_pct == 87
    assert snapshot.gpus[0].free_mib == 40960 - 911


@pytest.mark.parametrize(
    ("fixture", "name", "total_mib", "gpu_count"),
    [
        ("h100_sxm_80gb_8x_idle.json", "NVIDIA H100 80GB HBM3", 81559, 8),
        ("a100_sxm4_40gb_2x_one_busy.json", "NVIDIA A100-SXM4-40GB", 40960, 2),
        ("l4_4x_one_serving.json", "NVIDIA L4", 23034, 4),
        ("h200_1x_vllm_loaded.json", "NVIDIA H200", 143771, 1),
    ],
)
def test_snapshot_from_nvml_reads_every_fixture(
    fixture: str, name: str, total_mib: int, gpu_count: int
) -> None:
    records = load_records(fixture)
    snapshot = snapshot_from_nvml(records)

    assert snapshot.available
    assert len(snapshot.gpus) == gpu_count
    for gpu, record in zip(snapshot.gpus, records, strict=True):
        assert gpu.name == name
        assert gpu.uuid == record["uuid"] and gpu.uuid.startswith("GPU-")
        assert gpu.total_mib == total_mib
        assert gpu.free_mib == record["memory"]["free"] // MIB
        assert gpu.free_mib + gpu.used_mib <= gpu.total_mib


def test_snapshot_from_nvml_device_error_makes_snapshot_unavailable() -> None:
    records = load_records("l4_4x_one_serving.json")
    records[2] = {"index": 2, "error": "GPU is lost"}

    snapshot = snapshot_from_nvml(records)

    assert not snapshot.available
    assert snapshot.error == "NVML: GPU 2: GPU is lost"
    assert [gpu.index for gpu in snapshot.gpus] == [0, 1, 3]


def test_snapshot_from_nvml_rejects_a_record_without_memory() -> None:
    with pytest.raises(ValueError, match="no memory reading"):
        snapshot_from_nvml([{"index": 0, "name": "NVIDIA L4", "uuid": "GPU-x"}])


def test_nvml_probe_reads_devices_through_the_library() -> None:
    records = load_records("a100_sxm4_40gb_2x_one_busy.json")
    library = FakeNvml(records)
    probe = NvmlProbe(library)

    first = probe.snapshot()
    second = probe.snapshot()

    assert first == snapshot_from_nvml(records)  # bytes names decoded like str ones
    assert second == first
    assert library.init_calls == 1  # initialised once, lazily


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (pynvml.NVMLError_LibraryNotFound(), "NVML Shared Library Not Found"),
        (pynvml.NVMLError_DriverNotLoaded(), "Driver Not Loaded"),
    ],
)
def test_nvml_probe_init_failure_is_an_unavailable_snapshot(error: Exception, text: str) -> None:
    probe = NvmlProbe(FakeNvml(load_records("h100_sxm_80gb_8x_idle.json"), init_errors=[error]))

    snapshot = probe.snapshot()

    assert not snapshot.available
    assert snapshot.error == f"NVML: {text}"
    assert snapshot.gpus == ()
    decision = decide(
        snapshot,
        gpu_memory_util=0.9,
        tensor_parallel_size=1,
        margin_mib=1024,
        reserved_mib_by_gpu={},
        low_memory_gpus=frozenset(),
        force=False,
    )
    assert decision.code == "gpu_unavailable"
    assert not decision.ok and decision.gpus == () and decision.required_mib is None
    assert text in decision.reason


def test_nvml_probe_retries_init_after_the_driver_loads() -> None:
    library = FakeNvml(
        load_records("h200_1x_vllm_loaded.json"), init_errors=[pynvml.NVMLError_DriverNotLoaded()]
    )
    probe = NvmlProbe(library)

    assert not probe.snapshot().available
    recovered = probe.snapshot()

    assert recovered.available
    assert recovered.gpus[0].free_mib == 129239
    assert library.init_calls == 2


def test_nvml_probe_lost_gpu_keeps_other_readings_but_is_unavailable() -> None:
    library = FakeNvml(
        load_records("h100_sxm_80gb_8x_idle.json"),
        memory_errors={5: pynvml.NVMLError_GpuIsLost()},
    )

    snapshot = NvmlProbe(library).snapshot()

    assert not snapshot.available
    assert snapshot.error == "NVML: GPU 5: GPU is lost"
    assert [gpu.index for gpu in snapshot.gpus] == [0, 1, 2, 3, 4, 6, 7]


def test_nvml_probe_unsupported_utilization_is_none_not_a_failure() -> None:
    library = FakeNvml(
        load_records("l4_4x_one_serving.json"), utilization_error=pynvml.NVMLError_NotSupported()
    )

    snapshot = NvmlProbe(library).snapshot()

    assert snapshot.available
    assert [gpu.utilization_pct for gpu in snapshot.gpus] == [None] * 4
    assert snapshot.gpus[0].free_mib == 6635


def test_nvml_probe_ignores_engine_placement() -> None:
    records = load_records("h200_1x_vllm_loaded.json")
    probe = NvmlProbe(FakeNvml(records))
    before = probe.snapshot()

    probe.engine_placed("mistral", [0], 100_000)

    assert probe.snapshot() == before


def test_simulated_probe_names_and_sizes() -> None:
    snapshot = SimulatedGpuProbe([81920, 24576]).snapshot()

    assert snapshot.backend == "simulated" and snapshot.available and snapshot.error is None
    assert [(g.index, g.name, g.uuid) for g in snapshot.gpus] == [
        (0, "Simulated GPU", "GPU-sim-0"),
        (1, "Simulated GPU", "GPU-sim-1"),
    ]
    assert [(g.total_mib, g.free_mib, g.used_mib) for g in snapshot.gpus] == [
        (81920, 81920, 0),
        (24576, 24576, 0),
    ]


def test_simulated_probe_free_memory_follows_placed_engines() -> None:
    probe = SimulatedGpuProbe([81920, 81920])

    probe.engine_placed("a", [0, 1], 30000)
    probe.engine_placed("b", [1], 40000)
    assert [g.free_mib for g in probe.snapshot().gpus] == [51920, 11920]

    probe.engine_placed("c", [1], 50000)  # over-commit: free stops at 0
    assert probe.snapshot().gpus[1].free_mib == 0
    assert probe.snapshot().gpus[1].used_mib == 81920

    probe.engine_removed("c")
    probe.engine_removed("a")
    assert [g.free_mib for g in probe.snapshot().gpus] == [81920, 41920]


def test_simulated_probe_rejects_unknown_gpu() -> None:
    with pytest.raises(ValueError, match="no simulated GPU"):
        SimulatedGpuProbe([81920]).engine_placed("a", [1], 1000)
