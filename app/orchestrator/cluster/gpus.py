"""A node's GPUs as it publishes them with its heartbeat, for other nodes to place starts by."""

from __future__ import annotations

from typing import Any

from app.orchestrator.gpu.headroom import GpuAllocator
from app.orchestrator.gpu.probe import GpuProbe


def published_gpus(probe: GpuProbe, allocator: GpuAllocator) -> list[dict[str, Any]]:
    """Each GPU's total and free memory, what starting engines have reserved on it, and its
    low-memory alert. Blocking (the probe may call NVML): run it off the loop."""
    snapshot = probe.snapshot()
    reserved = allocator.reservations_mib()
    low = allocator.low_memory_gpus()
    return [
        {
            "index": gpu.index,
            "name": gpu.name,
            "uuid": gpu.uuid,
            "total_mib": gpu.total_mib,
            "free_mib": gpu.free_mib,
            "reserved_mib": reserved.get(gpu.index, 0),
            "low_memory": gpu.index in low,
        }
        for gpu in snapshot.gpus
    ]
