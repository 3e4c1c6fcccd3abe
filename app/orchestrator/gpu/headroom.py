"""Headroom: may an engine start, and on which GPUs. The rule, and the allocator that applies it.

vLLM refuses to start when a GPU's free memory is below gpu_memory_util x its total, so each GPU
must have that much free plus a safety margin (GPUStack keeps 1 GiB back for the same reason):

    required_mib = ceil(gpu_memory_util x total_mib) + margin_mib          (per GPU: sizes differ)
    a GPU qualifies when free_mib - reserved_mib >= required_mib and no low-memory alert is raised
    placement = the tensor_parallel_size qualifying GPUs with most free memory, ties by index

Engines still starting have not allocated yet, so NVML cannot see them: the allocator holds a
reservation of ceil(util x total) on each chosen GPU until the engine runs (then the memory is
real and shows in the probe) or fails.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from typing import Literal

from app.orchestrator.gpu.probe import GpuProbe, GpuSnapshot

logger = logging.getLogger(__name__)

DEFAULT_MARGIN_MIB = 1024
CODE_INSUFFICIENT = "insufficient_gpu_memory"
CODE_UNAVAILABLE = "gpu_unavailable"
CODE_LOW = "gpu_memory_low"


@dataclass(frozen=True)
class GpuFigures:
    """The numbers one decision rested on, for one GPU (MiB)."""

    index: int
    total_mib: int
    free_mib: int
    reserved_mib: int

    def to_dict(self) -> dict[str, object]:
        return {
            "index": self.index,
            "total_mib": self.total_mib,
            "free_mib": self.free_mib,
            "reserved_mib": self.reserved_mib,
        }


@dataclass(frozen=True)
class HeadroomDecision:
    """The answer to "may this engine start", with the figures that justify it.

    `code` is None when ok; else insufficient_gpu_memory, gpu_unavailable (the probe could not
    read the GPUs) or gpu_memory_low (memory would fit, but the low-memory alert gates the GPUs).
    """

    ok: bool
    reason: str
    code: str | None
    required_mib: int | None
    gpu_ids: tuple[int, ...]
    gpus: tuple[GpuFigures, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "reason": self.reason,
            "code": self.code,
            "required_mib": self.required_mib,
            "gpu_ids": list(self.gpu_ids),
            "gpus": [figures.to_dict() for figures in self.gpus],
        }


def held_mib(gpu_memory_util: float, total_mib: int) -> int:
    """What a running engine takes on a GPU: ceil(util x total)."""
    # Rounding first keeps float noise (0.3 x 81920 = 24575.999...) from moving ceil by 1 MiB.
    return math.ceil(round(gpu_memory_util * total_mib, 6))


def required_mib(gpu_memory_util: float, total_mib: int, margin_mib: int) -> int:
    """Free MiB a GPU needs before an engine may start on it: ceil(util x total) + margin."""
    return held_mib(gpu_memory_util, total_mib) + margin_mib


def decide(
    snapshot: GpuSnapshot,
    *,
    gpu_memory_util: float,
    tensor_parallel_size: int,
    margin_mib: int,
    reserved_mib_by_gpu: Mapping[int, int],
    low_memory_gpus: AbstractSet[int],
    force: bool,
) -> HeadroomDecision:
    """Decide whether an engine fits and where. Pure: reads only its arguments."""
    _validate(gpu_memory_util, tensor_parallel_size, margin_mib)
    if not snapshot.available:
        reason = f"GPU probe ({snapshot.backend}) unavailable: {snapshot.error}"
        return HeadroomDecision(False, reason, CODE_UNAVAILABLE, None, (), ())
    if not snapshot.gpus:
        reason = f"GPU probe ({snapshot.backend}) found no GPU"
        return HeadroomDecision(False, reason, CODE_UNAVAILABLE, None, (), ())

    figures = tuple(
        GpuFigures(gpu.index, gpu.total_mib, gpu.free_mib, reserved_mib_by_gpu.get(gpu.index, 0))
        for gpu in snapshot.gpus
    )
    needs_mib = {f.index: required_mib(gpu_memory_util, f.total_mib, margin_mib) for f in figures}
    fitting = [f for f in figures if _headroom_mib(f) >= needs_mib[f.index]]
    gated = frozenset() if force else frozenset(low_memory_gpus)
    eligible = sorted(
        (f for f in fitting if f.index not in gated),
        key=lambda f: (-_headroom_mib(f), f.index),
    )
    if len(eligible) >= tensor_parallel_size:
        gpu_ids = tuple(sorted(f.index for f in eligible[:tensor_parallel_size]))
        needed = max(needs_mib[gpu] for gpu in gpu_ids)
        reason = f"{_needs_text(needs_mib, tensor_parallel_size, figures)}; placed on " + ", ".join(
            _gpu_text(f, None, low=False) for f in figures if f.index in gpu_ids
        )
        return HeadroomDecision(True, reason, None, needed, gpu_ids, figures)

    # Refused. When memory alone would have allowed it, the alert is the reason: say so.
    code = CODE_LOW if len(fitting) >= tensor_parallel_size else CODE_INSUFFICIENT
    uniform = len(set(needs_mib.values())) == 1
    parts = [_needs_text(needs_mib, tensor_parallel_size, figures)]
    parts += [
        _gpu_text(f, None if uniform else needs_mib[f.index], low=f.index in gated) for f in figures
    ]
    reason = "; ".join(parts)
    if code == CODE_LOW:
        reason += " (low-memory alert raised; force overrides it)"
    return HeadroomDecision(False, reason, code, max(needs_mib.values()), (), figures)


def _validate(gpu_memory_util: float, tensor_parallel_size: int, margin_mib: int) -> None:
    if not 0 < gpu_memory_util <= 1:
        raise ValueError(f"gpu_memory_util must be in (0, 1]: {gpu_memory_util}")
    if tensor_parallel_size < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1: {tensor_parallel_size}")
    if margin_mib < 0:
        raise ValueError(f"margin_mib must be >= 0: {margin_mib}")


def _headroom_mib(figures: GpuFigures) -> int:
    return figures.free_mib - figures.reserved_mib


def _needs_text(
    needs_mib: Mapping[int, int], gpu_count: int, figures: tuple[GpuFigures, ...]
) -> str:
    amounts = sorted(set(needs_mib.values()))
    amount = f"{amounts[0]} MiB" if len(amounts) == 1 else "util x total + margin MiB"
    where = "1 GPU" if gpu_count == 1 else f"each of {gpu_count} GPUs"
    text = f"needs {amount} on {where}"
    if gpu_count > len(figures):
        text += f", the node has {len(figures)}"
    return text


def _gpu_text(figures: GpuFigures, needs_mib: int | None, *, low: bool) -> str:
    text = f"GPU {figures.index}: {figures.free_mib} MiB free, {figures.reserved_mib} MiB reserved"
    if needs_mib is not None:
        text += f", needs {needs_mib} MiB"
    if low:
        text += ", low-memory alert"
    return text


@dataclass(frozen=True)
class GpuHold:
    """Memory an engine holds: `reserved` while it starts, `running` once it serves."""

    model_id: str
    state: Literal["reserved", "running"]
    gpu_ids: tuple[int, ...]
    held_mib_by_gpu: Mapping[int, int] = field(default_factory=dict)


class GpuAllocator:
    """Applies `decide` against live readings and keeps the reservations of starting engines.

    Every `reserve` runs under one asyncio.Lock, so two starts can never both count the same
    free memory. Only the event loop's thread may call its methods.
    """

    def __init__(
        self,
        probe: GpuProbe,
        *,
        margin_mib: int,
        low_memory: Callable[[], AbstractSet[int]] = lambda: frozenset(),
    ) -> None:
        self._probe = probe
        self._margin_mib = margin_mib
        self._low_memory = low_memory
        self._lock = asyncio.Lock()
        self._reserved: dict[str, GpuHold] = {}
        self._running: dict[str, GpuHold] = {}
        self._last_snapshot: GpuSnapshot | None = None
        # Called after every change of what is reserved or placed (a node publishes it then).
        self.on_change: Callable[[], None] = lambda: None

    async def reserve(
        self,
        model_id: str,
        *,
        gpu_memory_util: float,
        tensor_parallel_size: int,
        force: bool = False,
        only_gpus: tuple[int, ...] | None = None,
    ) -> HeadroomDecision:
        """Decide and, if ok, reserve ceil(util x total) on each chosen GPU for `model_id`
        (among `only_gpus` when given: a sleeping engine wakes on the GPUs it holds).

        A reservation already held by `model_id` is replaced (it belonged to an earlier attempt).
        """
        async with self._lock:
            self._reserved.pop(model_id, None)
            # Reservations are read before the probe: an engine marked running meanwhile is then
            # counted twice (safe) rather than not at all (an over-commit).
            reserved_mib_by_gpu = self.reservations_mib()
            # Off the loop: NVML calls block, and nvmlInit can take seconds.
            snapshot = await asyncio.to_thread(self._probe.snapshot)
            self._last_snapshot = snapshot
            if only_gpus is not None:
                kept = tuple(gpu for gpu in snapshot.gpus if gpu.index in only_gpus)
                snapshot = replace(snapshot, gpus=kept)
            decision = self._decide(
                snapshot, reserved_mib_by_gpu, gpu_memory_util, tensor_parallel_size, force
            )
            if decision.ok:
                self.on_change()
                totals_mib = {f.index: f.total_mib for f in decision.gpus}
                self._reserved[model_id] = GpuHold(
                    model_id,
                    "reserved",
                    decision.gpu_ids,
                    {gpu: held_mib(gpu_memory_util, totals_mib[gpu]) for gpu in decision.gpu_ids},
                )
            return decision

    async def check(
        self, *, gpu_memory_util: float, tensor_parallel_size: int, force: bool = False
    ) -> HeadroomDecision:
        """A dry run of `reserve`: counts current reservations, reserves nothing."""
        reserved_mib_by_gpu = self.reservations_mib()
        snapshot = await asyncio.to_thread(self._probe.snapshot)
        return self._decide(
            snapshot, reserved_mib_by_gpu, gpu_memory_util, tensor_parallel_size, force
        )

    def release(self, model_id: str) -> None:
        """Drop the reservation: the engine failed or was stopped before it ran."""
        self._reserved.pop(model_id, None)
        self.on_change()

    def mark_running(self, model_id: str) -> None:
        """The engine serves: its memory is now real, so the reservation becomes a placement."""
        hold = self._reserved.pop(model_id, None)
        if hold is None:
            logger.warning("mark_running(%s) without a reservation; nothing placed", model_id)
            return
        self._place(GpuHold(model_id, "running", hold.gpu_ids, hold.held_mib_by_gpu))
        self.on_change()

    def adopt(self, model_id: str, gpu_ids: tuple[int, ...], *, held_mib: int) -> None:
        """Record an engine found running (e.g. re-adopted after an orchestrator restart)."""
        self._reserved.pop(model_id, None)
        self._place(GpuHold(model_id, "running", gpu_ids, dict.fromkeys(gpu_ids, held_mib)))
        self.on_change()

    def adopt_gpus(
        self, model_id: str, gpu_ids: tuple[int, ...], *, gpu_memory_util: float
    ) -> None:
        """Record an engine found running on `gpu_ids`, holding util x total on each (the
        totals come from the last reading the allocator was given or the probe's)."""
        if not gpu_ids:
            return
        snapshot = self._last_snapshot or self._probe.snapshot()
        totals = {gpu.index: gpu.total_mib for gpu in snapshot.gpus}
        if not all(gpu in totals for gpu in gpu_ids):
            logger.warning("adopted %s on GPUs %s the probe does not show", model_id, gpu_ids)
            return
        held = max(held_mib(gpu_memory_util, totals[gpu]) for gpu in gpu_ids)
        self.adopt(model_id, gpu_ids, held_mib=held)

    async def refresh(self) -> None:
        """Read the GPUs off the event loop and keep the reading for `adopt_gpus`."""
        self._last_snapshot = await asyncio.to_thread(self._probe.snapshot)

    def mark_sleeping(self, model_id: str) -> None:
        """The engine sleeps: its process lives, its GPU memory is released (counted as none;
        waking it reserves again, like a start)."""
        self._reserved.pop(model_id, None)
        if self._running.pop(model_id, None) is not None:
            self._probe.engine_removed(model_id)
        self.on_change()

    def low_memory_gpus(self) -> frozenset[int]:
        """The GPUs whose low-memory alert is raised (starts there need force)."""
        return frozenset(self._low_memory())

    @property
    def margin_mib(self) -> int:
        return self._margin_mib

    def held_by(self, model_id: str) -> GpuHold | None:
        """What a running engine holds, or None."""
        return self._running.get(model_id)

    def mark_stopped(self, model_id: str) -> None:
        """The engine is gone: drop its reservation and placement."""
        self._reserved.pop(model_id, None)
        self._running.pop(model_id, None)
        self._probe.engine_removed(model_id)
        self.on_change()

    def placements(self) -> dict[str, tuple[int, ...]]:
        """Model -> GPU ids, for engines running and reserved alike (`holds` says which)."""
        return {hold.model_id: hold.gpu_ids for hold in self.holds()}

    def holds(self) -> list[GpuHold]:
        """Every reservation and placement, with its state, ordered by model id."""
        holds = [*self._reserved.values(), *self._running.values()]
        return sorted(holds, key=lambda hold: (hold.model_id, hold.state))

    def reservations_mib(self) -> dict[int, int]:
        """GPU index -> MiB reserved by engines still starting (running engines not included)."""
        totals: dict[int, int] = {}
        for hold in self._reserved.values():
            for gpu, mib in hold.held_mib_by_gpu.items():
                totals[gpu] = totals.get(gpu, 0) + mib
        return totals

    def _place(self, hold: GpuHold) -> None:
        self._running[hold.model_id] = hold
        # The probe takes one figure per engine; tensor-parallel GPUs are normally the same
        # size, and the largest share is the safe one when they are not.
        share_mib = max(hold.held_mib_by_gpu.values(), default=0)
        self._probe.engine_placed(hold.model_id, hold.gpu_ids, share_mib)

    def _decide(
        self,
        snapshot: GpuSnapshot,
        reserved_mib_by_gpu: Mapping[int, int],
        gpu_memory_util: float,
        tensor_parallel_size: int,
        force: bool,
    ) -> HeadroomDecision:
        return decide(
            snapshot,
            gpu_memory_util=gpu_memory_util,
            tensor_parallel_size=tensor_parallel_size,
            margin_mib=self._margin_mib,
            reserved_mib_by_gpu=reserved_mib_by_gpu,
            low_memory_gpus=self._low_memory(),
            force=force,
        )
