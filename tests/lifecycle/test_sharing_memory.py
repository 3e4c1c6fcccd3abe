"""Idle unload and unload refusals, in memory with a fake clock (milliseconds per case)."""

from __future__ import annotations

from pathlib import Path

from app.orchestrator.lifecycle import CommandKind, ErrorCode, ModelState
from tests.lifecycle.memory_harness import memory_world


async def test_sharing_idle_unload_waits_for_the_full_timeout(tmp_path: Path) -> None:
    async with memory_world(tmp_path) as world:
        await world.add("m", idle_timeout_s=60.0)
        await world.run("m")
        await world.advance(59.0)
        assert world.state("m") == ModelState.RUNNING
        await world.advance(2.0)
        await world.settle()
        status = world.status("m")
        assert (status.state, status.desired_state) == ("stopped", "stopped")
        assert status.notes["desired_reason"] == "idle"
        assert world.holds_nothing("m")


async def test_sharing_a_request_restarts_the_idle_count(tmp_path: Path) -> None:
    async with memory_world(tmp_path) as world:
        await world.add("m", idle_timeout_s=60.0)
        await world.run("m")
        await world.advance(50.0)
        activity = world.ctx.activity.of("m")
        activity.in_flight += 1
        activity.release_slot(world.clock.now())  # a request ended at t=50
        await world.advance(15.0)  # t=65: idle for 15 s only
        assert world.state("m") == ModelState.RUNNING
        await world.advance(50.0)  # t=115: idle for 65 s
        await world.settle()
        assert world.state("m") == ModelState.STOPPED


async def test_sharing_an_unload_of_a_busy_engine_is_refused(tmp_path: Path) -> None:
    async with memory_world(tmp_path) as world:
        await world.add("m", sleep_level=1)
        await world.run("m")
        world.ctx.activity.of("m").in_flight = 1  # a request is being served
        refused = await world.command("m", CommandKind.UNLOAD)
        assert refused.error is not None and refused.error.code == ErrorCode.MODEL_BUSY
        assert world.state("m") == ModelState.RUNNING
        world.ctx.activity.of("m").in_flight = 0
        slept = await world.command("m", CommandKind.UNLOAD)
        assert slept.error is None and world.state("m") == ModelState.SLEEPING
        assert world.holds("m") == []  # asleep: no GPU memory counted (its port stays)
        assert world.status("m").desired_state == "running"  # the next request wakes it


async def test_sharing_a_wake_passes_the_headroom_check_like_a_start(tmp_path: Path) -> None:
    async with memory_world(tmp_path) as world:
        await world.add("m", sleep_level=1, gpu_memory_util=0.6)
        await world.run("m")
        await world.command("m", CommandKind.UNLOAD)
        world.gpus.engine_placed("another-process", [0], 60_000)
        refused = await world.start("m")
        assert refused.error is not None
        assert refused.error.code == ErrorCode.INSUFFICIENT_GPU_MEMORY
        assert world.state("m") == ModelState.SLEEPING  # still asleep, nothing reserved
        assert world.holds("m") == []
        world.gpus.engine_removed("another-process")
        woken = await world.start("m")
        assert woken.error is None and world.state("m") == ModelState.RUNNING
