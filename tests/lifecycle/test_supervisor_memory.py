"""The supervisor driven in memory: fake clock, launcher and health probe, real store.

Each test decides every interleaving itself (when an engine exits, when time passes, when a
message arrives) and takes milliseconds: no process is spawned and nothing sleeps.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest

from app.orchestrator.failures import FailureKind
from app.orchestrator.lifecycle import CommandKind, ErrorCode, ModelState
from app.orchestrator.lifecycle.messages import (
    BackoffElapsed,
    EngineExited,
    EngineReady,
    HealthFailed,
    StartTimedOut,
)
from app.orchestrator.orchestrator import ModelRunningError
from app.orchestrator.spec import RestartPolicy
from tests.fakes import free_port
from tests.fakes.memory import LaunchScript
from tests.lifecycle.memory_harness import GPU_MIB, MemoryWorld, fixture_log, memory_world

# Memory that some other process on the node holds, leaving no room for a 30% engine.
FOREIGN = "another-process"
FOREIGN_MIB = GPU_MIB - 10_000


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[MemoryWorld]:
    async with memory_world(tmp_path) as built:
        yield built


def restarts_metric(world: MemoryWorld, model_id: str = "m") -> float | None:
    return world.ctx.metrics.registry.get_sample_value(
        "gpu_orchestrator_vllm_restarts_total", {"model": model_id}
    )


# -- crash, backoff, stop --------------------------------------------------------------------------
async def test_supervisor_crash_relaunches_only_after_the_backoff_delay(
    world: MemoryWorld,
) -> None:
    await world.add("m")
    await world.run("m")
    await world.crash("m")
    assert world.state() == ModelState.FAILED
    assert [event.reason for event in await world.events(kind="restart_scheduled")] == [
        "restart 1 in 10 s"
    ]

    await world.advance(9.9)
    assert len(world.launcher.launched("m")) == 1
    assert world.state() == ModelState.FAILED

    await world.advance(0.2)
    assert len(world.launcher.launched("m")) == 2
    assert world.state() == ModelState.STARTING
    assert world.status().restarts_total == 1
    assert restarts_metric(world) == 1.0


async def test_supervisor_second_crash_waits_twice_as_long(world: MemoryWorld) -> None:
    await world.add("m")
    await world.run("m")
    await world.crash("m")
    await world.advance(10.1)
    await world.crash("m")  # crashed while starting: the second failure in a row
    await world.advance(19.8)
    assert len(world.launcher.launched("m")) == 2
    await world.advance(0.4)
    assert len(world.launcher.launched("m")) == 3


async def test_supervisor_stop_during_backoff_means_no_launch_afterwards(
    world: MemoryWorld,
) -> None:
    await world.add("m")
    await world.run("m")
    await world.crash("m")
    await world.advance(5.0)
    armed_epoch = world.supervisor("m").engine.backoff_epoch

    stopped = await world.command("m", CommandKind.STOP)
    assert stopped.error is None
    assert world.state() == ModelState.STOPPED
    assert world.status().next_attempt_at is None

    await world.advance(10.0)  # the old timer's moment
    # The old timer's message, as if it had fired just before the stop cancelled it.
    world.supervisor("m").post(BackoffElapsed(epoch=armed_epoch))
    await world.settle()
    await world.advance(1000.0)
    assert len(world.launcher.launched("m")) == 1
    assert world.state() == ModelState.STOPPED
    assert world.clock.sleepers() == 0  # no timer of the stopped model is left


async def test_supervisor_stop_of_a_running_engine_stops_it_once(world: MemoryWorld) -> None:
    await world.add("m")
    await world.run("m")
    engine = world.launcher.latest("m")
    await world.command("m", CommandKind.STOP)
    assert world.state() == ModelState.STOPPED
    assert world.launcher.stops() == [engine.pid]
    assert world.launcher.alive("m") == []
    await world.advance(1000.0)
    assert len(world.launcher.launched("m")) == 1


# -- late messages ---------------------------------------------------------------------------------
async def _second_run(world: MemoryWorld) -> int:
    """m crashed once and was relaunched; the generation of the ended first run."""
    await world.add("m")
    await world.run("m")
    await world.crash("m")
    await world.advance(10.1)
    assert len(world.launcher.launched("m")) == 2
    return world.supervisor("m").engine.generation - 1


async def test_supervisor_late_reports_of_an_ended_run_leave_a_running_one_alone(
    world: MemoryWorld,
) -> None:
    old = await _second_run(world)
    await world.ready("m")
    before = world.status()
    failures = len(await world.events(kind="transition"))

    supervisor = world.supervisor("m")
    supervisor.post(EngineExited(generation=old, code=1))
    supervisor.post(StartTimedOut(generation=old))
    supervisor.post(HealthFailed(generation=old, detail="old engine"))
    supervisor.post(EngineReady(generation=old))
    await world.settle()

    after = world.status()
    assert after.state == ModelState.RUNNING
    assert (after.pid, after.consecutive_failures) == (before.pid, before.consecutive_failures)
    assert len(await world.events(kind="transition")) == failures
    assert len(world.launcher.launched("m")) == 2


async def test_supervisor_late_ready_of_an_ended_run_does_not_make_a_start_running(
    world: MemoryWorld,
) -> None:
    old = await _second_run(world)
    assert world.state() == ModelState.STARTING
    world.supervisor("m").post(EngineReady(generation=old))
    await world.settle()
    assert world.state() == ModelState.STARTING
    assert world.holds("m")[0].state == "reserved"  # not placed as if it ran


# -- the restart budget ----------------------------------------------------------------------------
async def test_supervisor_restart_budget_spent_degrades(world: MemoryWorld) -> None:
    policy = RestartPolicy(max_restarts=2, backoff_initial_s=1.0, backoff_max_s=1.0)
    await world.add("m", restart_policy=policy)
    await world.start("m")
    for _restart in range(2):
        await world.crash("m")
        assert world.state() == ModelState.FAILED
        await world.advance(1.1)
        assert world.state() == ModelState.STARTING
    await world.crash("m")

    status = world.status()
    assert status.state == ModelState.DEGRADED
    assert (status.restarts_total, status.consecutive_failures) == (2, 3)
    await world.advance(1000.0)
    assert len(world.launcher.launched("m")) == 3
    degraded = (await world.transitions("m"))[-1]
    assert degraded == ("failed", "degraded")


async def test_supervisor_kv_cache_insufficient_degrades_at_once(world: MemoryWorld) -> None:
    await world.add("m")
    await world.start("m")
    engine = world.launcher.latest("m")
    engine.write_log(fixture_log("kv_cache_max_seq_len.log"))
    await world.crash("m")

    status = world.status()
    assert status.state == ModelState.DEGRADED
    assert status.last_failure_kind == FailureKind.KV_CACHE_INSUFFICIENT
    assert status.last_failure_message is not None
    assert "max_model_len" in status.last_failure_message  # the remedy
    assert status.ooms_total == 1
    assert await world.events(kind="restart_scheduled") == []
    await world.advance(1000.0)
    assert len(world.launcher.launched("m")) == 1


# -- refusals are failures when nobody waits on the start ------------------------------------------
async def test_supervisor_restart_refused_for_headroom_is_a_failure_not_a_restart(
    world: MemoryWorld,
) -> None:
    await world.add("m")
    await world.run("m")
    await world.crash("m")
    world.gpus.engine_placed(FOREIGN, [0], FOREIGN_MIB)

    await world.advance(10.1)  # the restart is refused: no room
    status = world.status()
    assert status.state == ModelState.FAILED
    assert status.last_failure_kind == FailureKind.INSUFFICIENT_GPU_MEMORY
    assert (status.restarts_total, status.consecutive_failures) == (0, 2)
    assert restarts_metric(world) == 0.0
    assert len(world.launcher.launched("m")) == 1
    [failure] = await world.events(kind="failure")
    assert failure.data["kind"] == FailureKind.INSUFFICIENT_GPU_MEMORY
    scheduled = await world.events(kind="restart_scheduled")
    assert [event.data["delay_s"] for event in scheduled] == [10.0, 20.0]
    assert world.holds_nothing("m")

    world.gpus.engine_removed(FOREIGN)
    await world.advance(19.8)
    assert len(world.launcher.launched("m")) == 1
    await world.advance(0.2)
    assert len(world.launcher.launched("m")) == 2
    assert world.status().restarts_total == 1
    assert restarts_metric(world) == 1.0


@pytest.mark.parametrize("recorded_state", [ModelState.STOPPED, ModelState.FAILED])
async def test_supervisor_launch_refused_during_adoption_is_a_failure_with_backoff(
    world: MemoryWorld, recorded_state: ModelState
) -> None:
    """Desired running, recorded stopped (a start accepted, never launched) or failed (its
    restart pending), and no headroom when the supervisor adopts it."""
    policy = RestartPolicy(max_restarts=2, backoff_initial_s=1.0, backoff_max_s=1.0)
    spec = world.spec("m", restart_policy=policy)
    failed = recorded_state == ModelState.FAILED
    status = await world.recorded(
        spec,
        state=recorded_state.value,
        desired_state="running",
        consecutive_failures=1 if failed else 0,
        last_failure_kind="exit" if failed else None,
        next_attempt_at=world.clock.now() + timedelta(seconds=1) if failed else None,
    )
    world.gpus.engine_placed(FOREIGN, [0], FOREIGN_MIB)
    await world.adopt(spec, status)
    if failed:
        await world.advance(1.1)  # the pending restart comes due, and is refused

    status = world.status()
    assert status.state == ModelState.FAILED
    assert status.last_failure_kind == FailureKind.INSUFFICIENT_GPU_MEMORY
    assert status.consecutive_failures == (2 if failed else 1)
    assert status.next_attempt_at is not None
    if failed:  # a failure event, the state unchanged
        [refused] = await world.events(kind="failure")
        assert refused.data["kind"] == FailureKind.INSUFFICIENT_GPU_MEMORY
    else:
        assert await world.transitions("m") == [("stopped", "failed")]
    assert len(await world.events(kind="restart_scheduled")) == 1

    await world.advance(100.0)  # every retry refused too, until the budget is spent
    status = world.status()
    assert status.state == ModelState.DEGRADED
    assert (status.restarts_total, status.consecutive_failures) == (0, 3)
    assert world.launcher.attempts == []
    assert world.holds_nothing("m")


# -- a spec edit during a start --------------------------------------------------------------------
@pytest.mark.parametrize(("first_s", "edited_s"), [(100.0, 30.0), (20.0, 60.0)])
async def test_supervisor_start_timeout_edited_during_a_start_sets_its_deadline(
    world: MemoryWorld, first_s: float, edited_s: float
) -> None:
    await world.add("m", start_timeout_s=first_s)
    await world.start("m")
    await world.advance(10.0)
    changed = await world.orchestrator.update_model(world.spec("m", start_timeout_s=edited_s))
    assert changed
    await world.settle()

    await world.advance(edited_s - 10.0 - 1.5)
    assert world.state() == ModelState.STARTING
    await world.advance(3.0)
    status = world.status()
    assert status.state == ModelState.FAILED
    assert status.last_failure_kind == FailureKind.START_TIMEOUT
    assert status.last_failure_message == f"not ready within {edited_s:g} s"


# -- delete ----------------------------------------------------------------------------------------
async def test_supervisor_delete_of_an_engine_that_survives_sigkill_keeps_the_model(
    world: MemoryWorld,
) -> None:
    orchestrator = world.orchestrator
    world.launcher.script(LaunchScript(survives_kill=True))
    await world.add("m")
    await world.run("m")
    engine = world.launcher.latest("m")

    refused = await orchestrator.delete_model("m", force=True)
    assert refused.error is not None
    assert refused.error.code == ErrorCode.STOP_FAILED
    assert refused.error.figures["pids"] == [engine.pid]
    # The model is as it was: supervised, listed, stored, and it answers.
    assert "m" in orchestrator.supervisors
    assert [spec.id for spec in orchestrator.specs()] == ["m"]
    assert await asyncio.to_thread(world.ctx.registry.spec, "m") is not None
    status = orchestrator.status("m")
    assert (status.state, status.pid) == (ModelState.FAILED, engine.pid)
    # A stop answers at once (stopping) and tries again; the survivors fail it once more.
    stopping = await orchestrator.command("m", CommandKind.STOP)
    assert stopping.error is None and stopping.changed
    await world.settle()
    status = orchestrator.status("m")
    assert (status.state, status.last_failure_kind) == (ModelState.FAILED, "stop_failed")
    started = await orchestrator.command("m", CommandKind.START)
    assert started.error is not None and started.error.code == ErrorCode.STOP_FAILED
    assert len(world.launcher.launched("m")) == 1  # nothing launched beside the survivor

    engine.let_die()
    deleted = await orchestrator.delete_model("m", force=True)
    assert deleted.error is None and deleted.changed
    assert "m" not in orchestrator.supervisors
    assert await asyncio.to_thread(world.ctx.registry.spec, "m") is None
    assert world.launcher.alive() == []
    assert world.holds_nothing("m")


# -- reservations ----------------------------------------------------------------------------------
WayOut = Callable[[MemoryWorld, Path], Awaitable[None]]


async def _no_headroom(world: MemoryWorld, _tmp: Path) -> None:
    await world.add("m")
    world.gpus.engine_placed(FOREIGN, [0], FOREIGN_MIB)
    result = await world.start("m")
    assert result.error is not None
    assert result.error.code == ErrorCode.INSUFFICIENT_GPU_MEMORY


async def _port_unavailable(world: MemoryWorld, _tmp: Path) -> None:
    port = free_port()
    await world.add("other", port=port)
    await world.run("other")
    await world.add("m", port=port)
    result = await world.start("m")
    assert result.error is not None
    assert result.error.code == ErrorCode.PORT_UNAVAILABLE
    assert world.ports.held["other"] == port  # the holder keeps its port


async def _adapter_invalid(world: MemoryWorld, tmp: Path) -> None:
    adapter = tmp / "wide-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 1024}))
    await world.add("m", adapter_paths=[str(adapter)])
    result = await world.start("m")
    assert result.error is not None
    assert result.error.code == ErrorCode.ADAPTER_INVALID
    assert result.error.figures["rank"] == 1024


async def _launch_error(world: MemoryWorld, _tmp: Path) -> None:
    world.launcher.script(LaunchScript(refuse="exec format error"))
    await world.add("m")
    result = await world.start("m")
    assert result.error is not None
    assert result.error.code == ErrorCode.LAUNCH_FAILED
    assert world.state() == ModelState.FAILED


async def _failure_after_launch(world: MemoryWorld, _tmp: Path) -> None:
    await world.add("m")
    await world.start("m")
    assert [hold.state for hold in world.holds("m")] == ["reserved"]
    await world.crash("m")
    assert world.state() == ModelState.FAILED


async def _start_timeout(world: MemoryWorld, _tmp: Path) -> None:
    await world.add("m", start_timeout_s=5.0)
    await world.start("m")
    await world.advance(6.0)
    assert world.status().last_failure_kind == FailureKind.START_TIMEOUT


async def _stop_during_starting(world: MemoryWorld, _tmp: Path) -> None:
    await world.add("m")
    await world.start("m")
    assert world.state() == ModelState.STARTING
    assert "m" in world.ports.held
    await world.command("m", CommandKind.STOP)
    assert world.state() == ModelState.STOPPED


async def _start_despite_a_launcher_bug(world: MemoryWorld) -> None:
    """Start m with a launcher that raises RuntimeError: the start either raises it or answers
    an error, and is over either way."""
    world.launcher.script(LaunchScript(raises=RuntimeError("launcher bug")))
    await world.add("m")
    try:
        result = await world.start("m")
    except RuntimeError as error:
        assert str(error) == "launcher bug"
    else:
        assert result.error is not None
    world.handler_errors()


async def _launcher_raised(world: MemoryWorld, _tmp: Path) -> None:
    await _start_despite_a_launcher_bug(world)


START_EXITS: dict[str, WayOut] = {
    "no_headroom": _no_headroom,
    "port_unavailable": _port_unavailable,
    "adapter_invalid": _adapter_invalid,
    "launch_error": _launch_error,
    "failure_after_launch": _failure_after_launch,
    "start_timeout": _start_timeout,
    "stop_during_starting": _stop_during_starting,
    "launcher_raised": _launcher_raised,
}


@pytest.mark.parametrize("way_out", sorted(START_EXITS))
async def test_supervisor_start_releases_its_reservation_on_every_way_out(
    world: MemoryWorld, tmp_path: Path, way_out: str
) -> None:
    await START_EXITS[way_out](world, tmp_path)
    assert world.holds("m") == []
    assert "m" not in world.ports.held
    # Nothing reserved in vain: a model that needs the whole GPU but the foreign share fits.
    world.gpus.engine_removed(FOREIGN)
    await world.add("big", gpu_memory_util=0.5)
    assert (await world.start("big")).error is None


async def test_supervisor_launcher_exception_leaves_the_model_startable(
    world: MemoryWorld,
) -> None:
    """An exception out of the launcher (not a LaunchError) ends that start; the model must not
    stay `starting` without an engine, and the next start launches."""
    await _start_despite_a_launcher_bug(world)
    assert world.state() != ModelState.STARTING

    result = await world.start("m")
    assert result.error is None
    assert world.handler_errors() == []
    assert len(world.launcher.launched("m")) == 1
    await world.ready("m")
    assert world.state() == ModelState.RUNNING


# -- a PATCH racing a start ------------------------------------------------------------------------
@pytest.mark.parametrize("first", ["patch", "start"])
async def test_orchestrator_patch_racing_a_start_is_applied_or_refused(
    world: MemoryWorld, first: str
) -> None:
    orchestrator = world.orchestrator
    await world.add("m", max_model_len=4096)
    edited = world.spec("m", max_model_len=8192)
    patch = orchestrator.update_model(edited)
    start = orchestrator.command("m", CommandKind.START)
    both = (patch, start) if first == "patch" else (start, patch)
    outcome = await asyncio.gather(*both, return_exceptions=True)
    patched = outcome[0 if first == "patch" else 1]
    await world.settle()

    launched = world.launcher.latest("m").argv_value("--max-model-len")
    stored = await asyncio.to_thread(world.ctx.registry.spec, "m")
    assert stored is not None
    if isinstance(patched, ModelRunningError):
        assert (launched, stored.max_model_len) == ("4096", 4096)
    else:
        assert patched is True
        assert (launched, stored.max_model_len) == ("8192", 8192)
    assert orchestrator.spec("m") == stored
    # Messages are handled in the order sent: an edit before the start applies to it.
    assert isinstance(patched, ModelRunningError) == (first == "start")


async def test_orchestrator_patch_while_a_launch_is_in_flight_is_refused(
    world: MemoryWorld,
) -> None:
    orchestrator = world.orchestrator
    gate = asyncio.Event()
    world.launcher.script(LaunchScript(gate=gate))
    await world.add("m", max_model_len=4096)
    start = asyncio.create_task(orchestrator.command("m", CommandKind.START))
    while not world.launcher.attempts:  # the launch has begun and waits at the gate
        await asyncio.sleep(0)
    patch = asyncio.create_task(orchestrator.update_model(world.spec("m", max_model_len=8192)))
    await asyncio.sleep(0)
    assert not patch.done()  # it waits for the start, never judged beside it
    gate.set()
    assert (await start).error is None
    with pytest.raises(ModelRunningError):
        await patch
    stored = await asyncio.to_thread(world.ctx.registry.spec, "m")
    assert stored is not None and stored.max_model_len == 4096
    assert world.launcher.latest("m").argv_value("--max-model-len") == "4096"


async def test_orchestrator_manifest_edit_racing_a_start_flags_restart_needed(
    world: MemoryWorld,
) -> None:
    orchestrator = world.orchestrator
    await world.add("m", max_model_len=4096)
    start = orchestrator.command("m", CommandKind.START)
    sync = orchestrator.sync_model(world.spec("m", max_model_len=8192), source="manifest")
    _started, synced = await asyncio.gather(start, sync)
    await world.settle()
    assert synced == "updated (restart needed)"
    assert world.status().restart_needed
    assert world.launcher.latest("m").argv_value("--max-model-len") == "4096"
