"""A simulated GPU backend for machines without a GPU (GPU_ORCH_GPU_BACKEND=simulated).

Free memory is the total minus what placed engines hold, so headroom decisions, placement and the
low-memory monitor behave on a laptop or in CI as they would on a GPU node.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from app.orchestrator.gpu.probe import GpuInfo, GpuSnapshot

BACKEND = "simulated"


class SimulatedGpuProbe:
    """GpuProbe over in-memory GPUs of the given sizes (MiB), indexed from 0."""

    backend = BACKEND

    def __init__(self, totals_mib: Sequence[int]) -> None:
        if any(total <= 0 for total in totals_mib):
            raise ValueError(f"simulated GPU sizes must be positive MiB: {list(totals_mib)}")
        self._totals_mib = tuple(totals_mib)
        # model id -> (gpu ids, MiB held on each). Snapshots may be read from a worker thread
        # while the event loop places engines, hence the lock.
        self._engines: dict[str, tuple[tuple[int, ...], int]] = {}
        self._lock = threading.Lock()

    def snapshot(self) -> GpuSnapshot:
        with self._lock:
            held_mib = [0] * len(self._totals_mib)
            for gpu_ids, engine_mib in self._engines.values():
                for gpu in gpu_ids:
                    held_mib[gpu] += engine_mib
        gpus = tuple(
            _gpu_info(index, total_mib, held_mib[index])
            for index, total_mib in enumerate(self._totals_mib)
        )
        return GpuSnapshot(backend=BACKEND, available=True, error=None, gpus=gpus)

    def engine_placed(self, model_id: str, gpu_ids: Sequence[int], held_mib: int) -> None:
        """Record that the engine holds `held_mib` on each GPU; a second call replaces the first."""
        unknown = [gpu for gpu in gpu_ids if not 0 <= gpu < len(self._totals_mib)]
        if unknown:
            raise ValueError(f"no simulated GPU {unknown} (have {len(self._totals_mib)})")
        with self._lock:
            self._engines[model_id] = (tuple(gpu_ids), max(held_mib, 0))

    def engine_removed(self, model_id: str) -> None:
        with self._lock:
            self._engines.pop(model_id, None)


def _gpu_info(index: int, total_mib: int, held_mib: int) -> GpuInfo:
    free_mib = max(total_mib - held_mib, 0)
    return GpuInfo(
        index=index,
        name="Simulated GPU",
        uuid=f"GPU-sim-{index}",
        total_mib=total_mib,
        free_mib=free_mib,
        used_mib=total_mib - free_mib,
        utilization_pct=None,
    )
