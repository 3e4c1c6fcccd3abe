"""The eviction plan as a pure function of the GPUs, the requester and the candidates."""

from __future__ import annotations

from datetime import UTC, datetime

from app.orchestrator.eviction import Candidate, Requester, plan_eviction
from app.orchestrator.gpu.probe import GpuInfo, GpuSnapshot


def _snapshot(*free_mib: int, total_mib: int = 81920) -> GpuSnapshot:
    gpus = tuple(
        GpuInfo(index, "sim", f"GPU-{index}", total_mib, free, total_mib - free, None)
        for index, free in enumerate(free_mib)
    )
    return GpuSnapshot("simulated", True, None, gpus)


def _at(minute: int) -> datetime:
    return datetime(2026, 1, 1, 0, minute, tzinfo=UTC)


def _held(gpu: int, mib: int = 49152) -> dict[int, int]:
    return {gpu: mib}


NEW = Requester("new", priority=1, gpu_memory_util=0.6, tensor_parallel_size=1)


def _plan(free: tuple[int, ...], *candidates: Candidate) -> tuple[tuple[str, ...], bool]:
    plan = plan_eviction(
        _snapshot(*free), NEW, list(candidates), margin_mib=1024, reserved_mib_by_gpu={}
    )
    return plan.victims, plan.fits


def test_eviction_lowest_priority_then_least_recently_used() -> None:
    old = Candidate("old", 0, _at(1), busy=False, held_mib_by_gpu=_held(0))
    recent = Candidate("recent", 0, _at(5), busy=False, held_mib_by_gpu=_held(1))
    low = Candidate("low", -1, _at(9), busy=False, held_mib_by_gpu=_held(2))
    assert _plan((32768, 32768, 32768), old, recent, low) == (("low",), True)
    assert _plan((32768, 32768), old, recent) == (("old",), True)


def test_eviction_only_as_many_as_needed() -> None:
    # Freeing "a" alone does not fit (GPU 0 keeps "b"); freeing "c" alone fits on GPU 1.
    a = Candidate("a", 0, _at(1), busy=False, held_mib_by_gpu={0: 10000})
    c = Candidate("c", 0, _at(2), busy=False, held_mib_by_gpu={1: 49152})
    assert _plan((20000, 32768), a, c) == (("c",), True)


def test_eviction_never_busy_nor_higher_priority_and_says_so() -> None:
    busy = Candidate("busy", 0, _at(1), busy=True, held_mib_by_gpu=_held(0))
    vip = Candidate("vip", 9, _at(1), busy=False, held_mib_by_gpu=_held(1))
    plan = plan_eviction(
        _snapshot(32768, 32768), NEW, [busy, vip], margin_mib=1024, reserved_mib_by_gpu={}
    )
    assert not plan.fits and plan.victims == ()
    assert plan.to_dict()["not_evictable"] == {"busy": "busy", "vip": "higher priority"}
