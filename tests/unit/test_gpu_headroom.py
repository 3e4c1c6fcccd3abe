"""Headroom: the pure rule, placement, and the allocator's reservations under concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pynvml
import pytest

from app.orchestrator.gpu.headroom import (
    GpuAllocator,
    HeadroomDecision,
    decide,
    held_mib,
    required_mib,
)
from app.orchestrator.gpu.nvml import NvmlProbe
from app.orchestrator.gpu.probe import GpuInfo, GpuSnapshot
from app.orchestrator.gpu.simulated import SimulatedGpuProbe

GIB_80_MIB = 81920


class FixedProbe:
    """A probe whose GPUs have fixed free memory; records what the allocator tells it."""

    backend = "fake"

    def __init__(self, free_mib: Sequence[int], total_mib: int = GIB_80_MIB) -> None:
        self.gpus = tuple(
            GpuInfo(i, "Fake GPU", f"GPU-fake-{i}", total_mib, free, total_mib - free, 0)
            for i, free in enumerate(free_mib)
        )
        self.placed: dict[str, tuple[tuple[int, ...], int]] = {}

    def snapshot(self) -> GpuSnapshot:
        return GpuSnapshot(self.backend, True, None, self.gpus)

    def engine_placed(self, model_id: str, gpu_ids: Sequence[int], held_mib: int) -> None:
        self.placed[model_id] = (tuple(gpu_ids), held_mib)

    def engine_removed(self, model_id: str) -> None:
        self.placed.pop(model_id, None)


class BrokenNvml:
    """A pynvml stand-in whose library cannot be loaded."""

    NVMLError = pynvml.NVMLError

    def nvmlInit(self) -> None:
        raise pynvml.NVMLError_LibraryNotFound()

    def nvmlDeviceGetCount(self) -> int:
        raise AssertionError("not initialised")

    def nvmlDeviceGetHandleByIndex(self, index: int) -> object:
        raise AssertionError("not initialised")

    def nvmlDeviceGetName(self, handle: object) -> str:
        raise AssertionError("not initialised")

    def nvmlDeviceGetUUID(self, handle: object) -> str:
        raise AssertionError("not initialised")

    def nvmlDeviceGetMemoryInfo(self, handle: object) -> object:
        raise AssertionError("not initialised")

    def nvmlDeviceGetUtilizationRates(self, handle: object) -> object:
        raise AssertionError("not initialised")


def snapshot_of(*free_mib: int, total_mib: int = GIB_80_MIB) -> GpuSnapshot:
    return FixedProbe(free_mib, total_mib).snapshot()


def decide_on(
    snapshot: GpuSnapshot,
    *,
    util: float = 0.9,
    tp: int = 1,
    reserved: dict[int, int] | None = None,
    low: frozenset[int] = frozenset(),
    force: bool = False,
) -> HeadroomDecision:
    return decide(
        snapshot,
        gpu_memory_util=util,
        tensor_parallel_size=tp,
        margin_mib=1024,
        reserved_mib_by_gpu=reserved or {},
        low_memory_gpus=low,
        force=force,
    )


def test_required_mib_is_util_times_total_plus_margin() -> None:
    assert required_mib(0.9, GIB_80_MIB, 1024) == 73728 + 1024
    assert required_mib(0.75, GIB_80_MIB, 1024) == 62464
    assert required_mib(0.3, GIB_80_MIB, 0) == 24576  # float noise does not add a MiB
    assert required_mib(0.5, 81559, 0) == 40780  # 40779.5 rounds up


async def test_allocator_seed_enough_headroom_places_the_engine() -> None:
    probe = FixedProbe([80000])
    allocator = GpuAllocator(probe, margin_mib=1024)

    decision = await allocator.reserve("mistral-7b", gpu_memory_util=0.9, tensor_parallel_size=1)

    assert decision.ok and decision.code is None
    assert decision.gpu_ids == (0,)
    assert decision.required_mib == 74752
    assert allocator.reservations_mib() == {0: 73728}
    assert allocator.placements() == {"mistral-7b": (0,)}


async def test_allocator_seed_low_memory_refuses_with_figures() -> None:
    allocator = GpuAllocator(FixedProbe([20000, 30000]), margin_mib=1024)

    decision = await allocator.reserve("mistral-7b", gpu_memory_util=0.75, tensor_parallel_size=1)

    assert not decision.ok
    assert decision.code == "insufficient_gpu_memory"
    assert decision.required_mib == 62464
    assert decision.gpu_ids == ()
    assert decision.reason == (
        "needs 62464 MiB on 1 GPU; GPU 0: 20000 MiB free, 0 MiB reserved; "
        "GPU 1: 30000 MiB free, 0 MiB reserved"
    )
    assert decision.to_dict()["gpus"] == [
        {"index": 0, "total_mib": GIB_80_MIB, "free_mib": 20000, "reserved_mib": 0},
        {"index": 1, "total_mib": GIB_80_MIB, "free_mib": 30000, "reserved_mib": 0},
    ]
    assert allocator.reservations_mib() == {} and allocator.placements() == {}


def test_decide_refuses_800_mib_free_on_an_80_gib_gpu() -> None:
    decision = decide_on(snapshot_of(800), util=0.9)

    assert not decision.ok
    assert decision.code == "insufficient_gpu_memory"
    assert "GPU 0: 800 MiB free" in decision.reason


def test_decide_just_enough_and_one_mib_short() -> None:
    assert decide_on(snapshot_of(74752)).ok
    assert not decide_on(snapshot_of(74751)).ok
    assert not decide_on(snapshot_of(80000), reserved={0: 5249}).ok
    assert decide_on(snapshot_of(80000), reserved={0: 5248}).ok


async def test_allocator_nvml_unavailable_refuses_without_counting_zero_free() -> None:
    allocator = GpuAllocator(NvmlProbe(BrokenNvml()), margin_mib=1024)

    decision = await allocator.reserve("mistral-7b", gpu_memory_util=0.5, tensor_parallel_size=1)

    assert decision.code == "gpu_unavailable"
    assert decision.reason == "GPU probe (nvml) unavailable: NVML: NVML Shared Library Not Found"
    assert decision.gpus == () and decision.required_mib is None
    assert "0 MiB free" not in decision.reason
    assert allocator.placements() == {}


def test_decide_no_gpu_at_all_is_unavailable() -> None:
    decision = decide_on(GpuSnapshot("nvml", True, None, ()))

    assert decision.code == "gpu_unavailable"


def test_decide_picks_most_free_gpu_ties_by_lowest_index() -> None:
    assert decide_on(snapshot_of(75000, 80000, 78000), util=0.5).gpu_ids == (1,)
    assert decide_on(snapshot_of(80000, 60000, 80000), util=0.5).gpu_ids == (0,)
    # Reservations count: GPU 1 has more free memory but less left after what is reserved.
    assert decide_on(snapshot_of(70000, 80000), util=0.5, reserved={1: 20000}).gpu_ids == (0,)


def test_decide_tensor_parallel_two_takes_two_gpus_or_refuses() -> None:
    both = decide_on(snapshot_of(80000, 79000), util=0.9, tp=2)
    assert both.ok and both.gpu_ids == (0, 1)

    one_short = decide_on(snapshot_of(80000, 50000), util=0.9, tp=2)
    assert not one_short.ok and one_short.code == "insufficient_gpu_memory"
    assert one_short.reason.startswith("needs 74752 MiB on each of 2 GPUs;")

    best_two = decide_on(snapshot_of(76000, 50000, 80000), util=0.9, tp=2)
    assert best_two.gpu_ids == (0, 2)


def test_decide_tensor_parallel_three_on_two_gpus_is_refused() -> None:
    decision = decide_on(snapshot_of(81920, 81920), util=0.1, tp=3)

    assert not decision.ok
    assert decision.code == "insufficient_gpu_memory"
    assert "on each of 3 GPUs, the node has 2" in decision.reason


def test_decide_gpus_of_different_sizes_need_different_amounts() -> None:
    small = GpuInfo(0, "NVIDIA L4", "GPU-a", 23034, 20000, 3034, 0)
    large = GpuInfo(1, "NVIDIA H100 80GB HBM3", "GPU-b", 81559, 20000, 61559, 0)
    snapshot = GpuSnapshot("nvml", True, None, (small, large))

    decision = decide_on(snapshot, util=0.8)

    # 0.8 x 23034 + 1024 = 19452 fits in 20000 on the L4, 0.8 x 81559 + 1024 does not.
    assert decision.ok and decision.gpu_ids == (0,)
    assert decision.required_mib == 19452
    refused = decide_on(snapshot, util=0.8, tp=2)
    assert "GPU 1: 20000 MiB free, 0 MiB reserved, needs 66272 MiB" in refused.reason


def test_decide_low_memory_alert_gates_unless_forced() -> None:
    snapshot = snapshot_of(80000, 20000)

    gated = decide_on(snapshot, util=0.5, low=frozenset({0}))
    assert not gated.ok and gated.code == "gpu_memory_low"
    assert "GPU 0: 80000 MiB free, 0 MiB reserved, low-memory alert" in gated.reason

    forced = decide_on(snapshot, util=0.5, low=frozenset({0}), force=True)
    assert forced.ok and forced.gpu_ids == (0,)

    # Memory is short as well as gated: memory is the reason given.
    both = decide_on(snapshot_of(20000), util=0.5, low=frozenset({0}))
    assert both.code == "insufficient_gpu_memory"
    # Only the gated GPU would fit: the alert is the reason.
    gated_fit = decide_on(snapshot_of(20000, 80000), util=0.5, low=frozenset({1}))
    assert gated_fit.code == "gpu_memory_low"

    other_gpu = decide_on(snapshot_of(80000, 79000), util=0.5, low=frozenset({0}))
    assert other_gpu.ok and other_gpu.gpu_ids == (1,)


def test_decide_rejects_nonsense_arguments() -> None:
    with pytest.raises(ValueError, match="gpu_memory_util"):
        decide_on(snapshot_of(80000), util=0)
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        decide_on(snapshot_of(80000), tp=0)


async def test_allocator_counts_reservations_and_replaces_its_own() -> None:
    allocator = GpuAllocator(FixedProbe([81920]), margin_mib=1024)

    first = await allocator.reserve("a", gpu_memory_util=0.5, tensor_parallel_size=1)
    second = await allocator.reserve("b", gpu_memory_util=0.5, tensor_parallel_size=1)
    again = await allocator.reserve("a", gpu_memory_util=0.6, tensor_parallel_size=1)

    assert first.ok
    assert not second.ok
    assert "GPU 0: 81920 MiB free, 40960 MiB reserved" in second.reason
    assert second.gpus[0].reserved_mib == 40960
    assert again.ok  # a's earlier reservation does not count against itself
    assert allocator.reservations_mib() == {0: 49152}


async def test_allocator_check_is_a_dry_run() -> None:
    allocator = GpuAllocator(FixedProbe([81920]), margin_mib=1024)
    await allocator.reserve("a", gpu_memory_util=0.5, tensor_parallel_size=1)

    assert not (await allocator.check(gpu_memory_util=0.5, tensor_parallel_size=1)).ok
    assert (await allocator.check(gpu_memory_util=0.4, tensor_parallel_size=1)).ok
    assert allocator.reservations_mib() == {0: 40960}


async def test_allocator_low_memory_callable_gates_reserve() -> None:
    low: set[int] = {0}
    allocator = GpuAllocator(FixedProbe([81920]), margin_mib=1024, low_memory=lambda: low)

    gated = await allocator.reserve("a", gpu_memory_util=0.5, tensor_parallel_size=1)
    forced = await allocator.reserve("a", gpu_memory_util=0.5, tensor_parallel_size=1, force=True)
    low.clear()
    allowed = await allocator.reserve("b", gpu_memory_util=0.3, tensor_parallel_size=1)

    assert gated.code == "gpu_memory_low"
    assert forced.ok and allowed.ok


async def test_allocator_release_frees_the_reservation() -> None:
    allocator = GpuAllocator(FixedProbe([81920]), margin_mib=1024)
    await allocator.reserve("a", gpu_memory_util=0.9, tensor_parallel_size=1)

    allocator.release("a")

    assert allocator.reservations_mib() == {}
    assert (await allocator.reserve("b", gpu_memory_util=0.9, tensor_parallel_size=1)).ok


async def test_allocator_running_and_stopped_move_memory_to_the_probe() -> None:
    probe = FixedProbe([81920, 81920])
    allocator = GpuAllocator(probe, margin_mib=1024)
    await allocator.reserve("tp2", gpu_memory_util=0.4, tensor_parallel_size=2)

    allocator.mark_running("tp2")

    assert probe.placed == {"tp2": ((0, 1), 32768)}
    assert allocator.reservations_mib() == {}
    assert [(h.model_id, h.state, h.gpu_ids) for h in allocator.holds()] == [
        ("tp2", "running", (0, 1))
    ]
    allocator.mark_stopped("tp2")
    assert probe.placed == {} and allocator.placements() == {}


def assert_within_totals(allocator: GpuAllocator, totals_mib: Sequence[int]) -> None:
    held = [0] * len(totals_mib)
    for hold in allocator.holds():
        for gpu, mib in hold.held_mib_by_gpu.items():
            held[gpu] += mib
    for gpu, total in enumerate(totals_mib):
        assert held[gpu] <= total, f"GPU {gpu}: {held[gpu]} MiB held of {total}"


async def test_allocator_storm_never_over_commits() -> None:
    totals_mib = [GIB_80_MIB, GIB_80_MIB]
    probe = SimulatedGpuProbe(totals_mib)
    allocator = GpuAllocator(probe, margin_mib=1024)
    utils = [round(0.3 + 0.6 * i / 19, 3) for i in range(20)]

    decisions = await asyncio.gather(
        *(
            allocator.reserve(f"m{i}", gpu_memory_util=util, tensor_parallel_size=1)
            for i, util in enumerate(utils)
        )
    )

    accepted = [(f"m{i}", d) for i, d in enumerate(decisions) if d.ok]
    refused = [d for d in decisions if not d.ok]
    assert 2 <= len(accepted) <= 4  # at least one per GPU; 0.3-0.9 of 80 GiB cannot fit more
    assert_within_totals(allocator, totals_mib)
    for decision in refused:
        assert decision.code == "insufficient_gpu_memory"
        assert decision.required_mib is not None and len(decision.gpus) == 2
        assert "MiB free" in decision.reason and "MiB reserved" in decision.reason

    # Reservation -> placement: the simulated free memory drops by exactly what was held.
    running_model, running_decision = accepted[0]
    gpu = running_decision.gpu_ids[0]
    share_mib = held_mib(utils[int(running_model[1:])], GIB_80_MIB)
    free_before = probe.snapshot().gpus[gpu].free_mib
    allocator.mark_running(running_model)
    assert probe.snapshot().gpus[gpu].free_mib == free_before - share_mib
    assert_within_totals(allocator, totals_mib)

    # Stopped engines and released reservations give everything back.
    for model_id, _ in accepted[1:]:
        allocator.release(model_id)
    allocator.mark_stopped(running_model)
    assert [g.free_mib for g in probe.snapshot().gpus] == totals_mib
    assert allocator.holds() == []

    # A second storm after the first placements behaves the same way.
    await allocator.reserve("big", gpu_memory_util=0.9, tensor_parallel_size=1)
    allocator.mark_running("big")
    second = await asyncio.gather(
        *(allocator.reserve(f"n{i}", gpu_memory_util=0.3, tensor_parallel_size=1) for i in range(8))
    )
    assert_within_totals(allocator, totals_mib)
    # 0.3 x 80 GiB + margin: three fit on the empty GPU, none beside the 0.9 engine.
    assert sum(d.ok for d in second) == 3
