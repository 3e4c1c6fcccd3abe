"""The NVML probe: real GPU readings through nvidia-ml-py (`import pynvml`).

The NVML *calls* (`NvmlProbe._read_records`) are kept apart from the *parsing*
(`snapshot_from_nvml`), a pure function over plain dicts, so the parsing is tested on readings of
real nodes captured as JSON under tests/fixtures/nvml/.

A record is what the NVML calls return for one device, as plain data:
    {"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-...",
     "memory": {"total": <bytes>, "free": <bytes>, "used": <bytes>},  # ...GetMemoryInfo
     "utilization": {"gpu": <pct>, "memory": <pct>} | null}           # ...GetUtilizationRates
or, for a device that could not be read, {"index": 3, "error": "GPU is lost"}.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import pynvml

from app.orchestrator.gpu.probe import GpuInfo, GpuSnapshot, bytes_to_mib

BACKEND = "nvml"


class NvmlLibrary(Protocol):
    """The part of pynvml the probe calls; tests hand in a fake that raises NVMLError."""

    NVMLError: type[Exception]

    def nvmlInit(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetName(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetUUID(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any: ...


def snapshot_from_nvml(records: Sequence[Mapping[str, Any]]) -> GpuSnapshot:
    """Turn per-device NVML records into a snapshot. Pure; raises ValueError on a malformed record.

    A device record carrying an "error" makes the whole snapshot unavailable (the GPU set the
    operator expects is not what NVML can read), while the readable GPUs are still reported.
    """
    gpus: list[GpuInfo] = []
    errors: list[str] = []
    for record in records:
        index = _int_field(record, "index")
        if "error" in record:
            errors.append(f"GPU {index}: {record['error']}")
            continue
        gpus.append(_gpu_from_record(index, record))
    gpus.sort(key=lambda info: info.index)
    error = "NVML: " + "; ".join(errors) if errors else None
    return GpuSnapshot(backend=BACKEND, available=not errors, error=error, gpus=tuple(gpus))


def _gpu_from_record(index: int, record: Mapping[str, Any]) -> GpuInfo:
    memory = record.get("memory")
    if not isinstance(memory, Mapping):
        raise ValueError(f"NVML record for GPU {index} has no memory reading")
    utilization = record.get("utilization")
    utilization_pct = _int_field(utilization, "gpu") if isinstance(utilization, Mapping) else None
    return GpuInfo(
        index=index,
        name=str(record.get("name", "")),
        uuid=str(record.get("uuid", "")),
        total_mib=bytes_to_mib(_int_field(memory, "total")),
        free_mib=bytes_to_mib(_int_field(memory, "free")),
        used_mib=bytes_to_mib(_int_field(memory, "used")),
        utilization_pct=utilization_pct,
    )


def _int_field(record: Mapping[str, Any], key: str) -> int:
    value = record.get(key)
    # bool is an int subclass; a true/false here would be a capture bug, not a reading.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"NVML record field {key!r} is not a non-negative integer: {value!r}")
    return value


def _text(value: str | bytes) -> str:
    # Older nvidia-ml-py releases return bytes for names and UUIDs, newer ones str.
    return value.decode() if isinstance(value, bytes) else value


class NvmlProbe:
    """GpuProbe over NVML. NVML is initialised lazily, once, on the first snapshot that needs it."""

    backend = BACKEND

    def __init__(self, library: NvmlLibrary = pynvml) -> None:
        self._nvml = library
        self._init_lock = threading.Lock()
        self._initialised = False

    def snapshot(self) -> GpuSnapshot:
        try:
            self._ensure_initialised()
            records = self._read_records()
            return snapshot_from_nvml(records)
        except (self._nvml.NVMLError, ValueError) as exc:
            error = f"NVML: {_error_text(exc)}"
            return GpuSnapshot(backend=BACKEND, available=False, error=error, gpus=())

    def engine_placed(self, model_id: str, gpu_ids: Sequence[int], held_mib: int) -> None:
        """Nothing to do: the engine's memory shows in NVML's next reading."""

    def engine_removed(self, model_id: str) -> None:
        """Nothing to do: freed memory shows in NVML's next reading."""

    def _ensure_initialised(self) -> None:
        # A failed nvmlInit leaves the flag unset, so a driver loaded later is picked up.
        with self._init_lock:
            if not self._initialised:
                self._nvml.nvmlInit()
                self._initialised = True

    def _read_records(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for index in range(self._nvml.nvmlDeviceGetCount()):
            try:
                records.append(self._read_device(index))
            except self._nvml.NVMLError as exc:
                # One lost GPU must not hide the others' readings: record it and go on.
                records.append({"index": index, "error": _error_text(exc)})
        return records

    def _read_device(self, index: int) -> dict[str, Any]:
        handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
        memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
        return {
            "index": index,
            "name": _text(self._nvml.nvmlDeviceGetName(handle)),
            "uuid": _text(self._nvml.nvmlDeviceGetUUID(handle)),
            "memory": {"total": memory.total, "free": memory.free, "used": memory.used},
            "utilization": self._read_utilization(handle),
        }

    def _read_utilization(self, handle: Any) -> dict[str, int] | None:
        try:
            rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
        except self._nvml.NVMLError:
            # Informational only, and unsupported on some devices (MIG, some vGPU profiles):
            # memory, which decisions rest on, was read above and its errors do count.
            return None
        return {"gpu": int(rates.gpu), "memory": int(rates.memory)}


def _error_text(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
