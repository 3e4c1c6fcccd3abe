"""Which idle engines to unload so that a start fits: a pure plan over the headroom rule.

Candidates are running engines of other models. Only idle ones (no request in flight or
waiting) of priority <= the requester's may go; lowest priority first, least recently used
next, and only as many as needed: the plan frees them one by one until the headroom rule says
the start fits, then drops again any it turns out not to need. A plan that cannot make room
says what stood in the way (busy engines, higher priorities).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from app.orchestrator.gpu.headroom import HeadroomDecision, decide
from app.orchestrator.gpu.probe import GpuSnapshot


@dataclass(frozen=True)
class Candidate:
    model_id: str
    priority: int
    last_used: datetime | None
    busy: bool
    held_mib_by_gpu: Mapping[int, int]


@dataclass(frozen=True)
class Requester:
    model_id: str
    priority: int
    gpu_memory_util: float
    tensor_parallel_size: int


@dataclass(frozen=True)
class EvictionPlan:
    victims: tuple[str, ...]
    fits: bool
    busy: tuple[str, ...] = ()
    higher_priority: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {
            "would_evict": list(self.victims) if self.fits else [],
            "not_evictable": {
                **{model: "busy" for model in self.busy},
                **{model: "higher priority" for model in self.higher_priority},
            },
        }


def _freed(snapshot: GpuSnapshot, freed_mib: Mapping[int, int]) -> GpuSnapshot:
    gpus = tuple(
        replace(gpu, free_mib=gpu.free_mib + freed_mib.get(gpu.index, 0)) for gpu in snapshot.gpus
    )
    return replace(snapshot, gpus=gpus)


def _fits(
    snapshot: GpuSnapshot,
    requester: Requester,
    chosen: Sequence[Candidate],
    *,
    margin_mib: int,
    reserved_mib_by_gpu: Mapping[int, int],
) -> HeadroomDecision:
    freed: dict[int, int] = {}
    for victim in chosen:
        for gpu, mib in victim.held_mib_by_gpu.items():
            freed[gpu] = freed.get(gpu, 0) + mib
    return decide(
        _freed(snapshot, freed),
        gpu_memory_util=requester.gpu_memory_util,
        tensor_parallel_size=requester.tensor_parallel_size,
        margin_mib=margin_mib,
        reserved_mib_by_gpu=reserved_mib_by_gpu,
        low_memory_gpus=frozenset(),
        force=True,
    )


def plan_eviction(
    snapshot: GpuSnapshot,
    requester: Requester,
    candidates: Sequence[Candidate],
    *,
    margin_mib: int,
    reserved_mib_by_gpu: Mapping[int, int],
) -> EvictionPlan:
    others = [c for c in candidates if c.model_id != requester.model_id]
    allowed = [c for c in others if c.priority <= requester.priority]
    eligible = sorted(
        (c for c in allowed if not c.busy),
        key=lambda c: (c.priority, c.last_used.timestamp() if c.last_used else 0.0, c.model_id),
    )
    busy = tuple(sorted(c.model_id for c in allowed if c.busy))
    higher = tuple(sorted(c.model_id for c in others if c.priority > requester.priority))

    def fits(chosen: Sequence[Candidate]) -> bool:
        return _fits(
            snapshot,
            requester,
            chosen,
            margin_mib=margin_mib,
            reserved_mib_by_gpu=reserved_mib_by_gpu,
        ).ok

    chosen: list[Candidate] = []
    for candidate in eligible:
        chosen.append(candidate)
        if fits(chosen):
            break
    else:
        return EvictionPlan((), fits=False, busy=busy, higher_priority=higher)
    # Only as many as needed: drop, newest choice first, any the start fits without.
    for candidate in reversed(chosen[:-1]):
        trial = [c for c in chosen if c is not candidate]
        if fits(trial):
            chosen = trial
    return EvictionPlan(
        tuple(c.model_id for c in chosen), fits=True, busy=busy, higher_priority=higher
    )
