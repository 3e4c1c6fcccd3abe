"""What the GPU layer knows about the node's GPUs, and the contract every probe backend keeps.

A probe answers one question: how much memory each GPU has and has free right now. Two backends
implement it: NVML (real GPUs) and a simulated one (machines without a GPU). Neither raises from
`snapshot`: a probe that cannot read the GPUs says so in the snapshot, so callers refuse a start
with the probe's error instead of mistaking "unknown" for "0 MiB free" or "all free".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

MIB_BYTES = 1024 * 1024


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as sampled. Memory is in MiB, rounded down (free memory is never overstated)."""

    index: int
    name: str
    uuid: str
    total_mib: int
    free_mib: int
    used_mib: int
    utilization_pct: int | None


@dataclass(frozen=True)
class GpuSnapshot:
    """One reading of every GPU on the node.

    `available` is False when the readings cannot be trusted as a whole (library missing, driver
    not loaded, a GPU lost); `error` then says why, and `gpus` holds only the GPUs that were read.
    """

    backend: str
    available: bool
    error: str | None
    gpus: tuple[GpuInfo, ...]

    def gpu(self, index: int) -> GpuInfo | None:
        """The GPU with this index, or None when it was not read."""
        for info in self.gpus:
            if info.index == index:
                return info
        return None


class GpuProbe(Protocol):
    """Reads GPU memory. Implementations: NvmlProbe, SimulatedGpuProbe."""

    backend: str

    def snapshot(self) -> GpuSnapshot:
        """Read every GPU now. Never raises: a failure is a snapshot with available=False."""
        ...

    def engine_placed(self, model_id: str, gpu_ids: Sequence[int], held_mib: int) -> None:
        """An engine now holds `held_mib` on each of `gpu_ids`.

        The simulated backend lowers its free memory; NVML ignores it, since the engine's real
        allocation shows in the next reading by itself.
        """
        ...

    def engine_removed(self, model_id: str) -> None:
        """The engine of `model_id` is gone; whatever it held is free again."""
        ...


def bytes_to_mib(value_bytes: int) -> int:
    """Whole MiB, rounded down."""
    return value_bytes // MIB_BYTES
