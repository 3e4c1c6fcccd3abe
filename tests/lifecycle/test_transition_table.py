"""TRANSITIONS against what the code does: scenarios driven through the in-memory tier produce
transitions, read back from the "transition" events in the store. Together they must produce
every pair the table allows (each row is reachable) and nothing else (the table allows nothing
that no code path produces). A pair the code produces and the table forbids cannot be stored at
all: the StatusWriter raises, which the harness reports as a handler error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from app.orchestrator.lifecycle import TRANSITIONS, CommandKind, ModelState
from app.orchestrator.spec import RestartPolicy
from tests.fakes.memory import LaunchScript
from tests.lifecycle.memory_harness import GPU_MIB, MemoryWorld, memory_world

Pair = tuple[str, str]
Scenario = Callable[[MemoryWorld], Awaitable[None]]

NO_BUDGET = RestartPolicy(max_restarts=0, backoff_initial_s=1.0, backoff_max_s=1.0)
SHORT_BACKOFF = RestartPolicy(max_restarts=5, backoff_initial_s=1.0, backoff_max_s=1.0)


async def start_ready_stop(world: MemoryWorld) -> None:
    await world.add("m")
    await world.run("m")
    await world.command("m", CommandKind.STOP)


async def crash_while_starting_then_backoff(world: MemoryWorld) -> None:
    await world.add("m", restart_policy=SHORT_BACKOFF)
    await world.start("m")
    await world.crash("m")
    await world.advance(1.1)
    assert world.state("m") == ModelState.STARTING


async def crash_running_then_stop(world: MemoryWorld) -> None:
    await world.add("m")
    await world.run("m")
    await world.crash("m")
    await world.command("m", CommandKind.STOP)


async def stop_while_starting(world: MemoryWorld) -> None:
    await world.add("m")
    await world.start("m")
    await world.command("m", CommandKind.STOP)


async def operator_start_after_a_failure(world: MemoryWorld) -> None:
    await world.add("m")
    await world.run("m")
    await world.crash("m")
    await world.start("m")


async def budget_spent_then_stop(world: MemoryWorld) -> None:
    await world.add("m", restart_policy=NO_BUDGET)
    await world.start("m")
    await world.crash("m")
    assert world.state("m") == ModelState.DEGRADED
    await world.command("m", CommandKind.STOP)


async def operator_start_when_degraded(world: MemoryWorld) -> None:
    await world.add("m", restart_policy=NO_BUDGET)
    await world.start("m")
    await world.crash("m")
    await world.start("m")


async def stop_that_survives_sigkill_then_stop_again(world: MemoryWorld) -> None:
    """The stop fails (processes outlive SIGKILL); once they are gone, a second stop ends it."""
    world.launcher.script(LaunchScript(survives_kill=True))
    await world.add("m")
    await world.run("m")
    await world.command("m", CommandKind.STOP)
    assert world.state("m") == ModelState.FAILED
    world.launcher.latest("m").let_die()
    await world.command("m", CommandKind.STOP)


async def stop_of_a_failed_model_with_leftovers(world: MemoryWorld) -> None:
    """Failed with its processes still there (a stop survived SIGKILL while a restart was
    wanted), then stopped by the operator once they can be terminated."""
    world.launcher.script(LaunchScript(survives_kill=True))
    await world.add("m")
    await world.run("m")
    await world.command("m", CommandKind.RESTART)
    assert world.state("m") == ModelState.FAILED
    engine = world.launcher.latest("m")
    engine.script.survives_kill = False
    await world.command("m", CommandKind.STOP)
    assert world.launcher.alive("m") == []


async def sleep_wake_then_stop_while_asleep(world: MemoryWorld) -> None:
    """Unloaded with a sleep_level: asleep, woken by a start, asleep again, then stopped."""
    await world.add("m", sleep_level=1)
    await world.run("m")
    await world.command("m", CommandKind.UNLOAD)
    assert world.state("m") == ModelState.SLEEPING
    await world.start("m")
    assert world.state("m") == ModelState.RUNNING
    await world.command("m", CommandKind.UNLOAD)
    await world.command("m", CommandKind.STOP)


async def crash_while_asleep(world: MemoryWorld) -> None:
    await world.add("m", sleep_level=1)
    await world.run("m")
    await world.command("m", CommandKind.UNLOAD)
    await world.crash("m")
    assert world.state("m") == ModelState.FAILED


async def launch_refused_at_adoption(world: MemoryWorld) -> None:
    spec = world.spec("m")
    status = await world.recorded(spec, state="stopped", desired_state="running")
    world.gpus.engine_placed("another-process", [0], GPU_MIB - 10_000)
    await world.adopt(spec, status)
    assert world.state("m") == ModelState.FAILED


SCENARIOS: dict[Scenario, set[Pair]] = {
    start_ready_stop: {
        ("stopped", "starting"),
        ("starting", "running"),
        ("running", "stopping"),
        ("stopping", "stopped"),
    },
    crash_while_starting_then_backoff: {("starting", "failed"), ("failed", "starting")},
    crash_running_then_stop: {("running", "failed"), ("failed", "stopped")},
    stop_while_starting: {("starting", "stopping")},
    operator_start_after_a_failure: {("failed", "starting")},
    budget_spent_then_stop: {("failed", "degraded"), ("degraded", "stopped")},
    operator_start_when_degraded: {("degraded", "starting")},
    stop_that_survives_sigkill_then_stop_again: {("stopping", "failed"), ("failed", "stopping")},
    stop_of_a_failed_model_with_leftovers: {("failed", "stopping")},
    launch_refused_at_adoption: {("stopped", "failed")},
    sleep_wake_then_stop_while_asleep: {
        ("running", "sleeping"),
        ("sleeping", "running"),
        ("sleeping", "stopping"),
    },
    crash_while_asleep: {("sleeping", "failed")},
}


def allowed_pairs() -> set[Pair]:
    return {(start.value, end.value) for start, ends in TRANSITIONS.items() for end in ends}


async def produced_by(scenario: Scenario, tmp_path: Path) -> set[Pair]:
    async with memory_world(tmp_path / scenario.__name__) as world:
        await scenario(world)
        return set(await world.transitions("m"))


@pytest.mark.parametrize("scenario", list(SCENARIOS), ids=lambda scenario: scenario.__name__)
async def test_transition_table_scenario_produces_its_pairs(
    scenario: Scenario, tmp_path: Path
) -> None:
    produced = await produced_by(scenario, tmp_path)
    assert SCENARIOS[scenario] <= produced, f"missing {SCENARIOS[scenario] - produced}"


async def test_transition_table_allows_exactly_what_the_code_produces(tmp_path: Path) -> None:
    produced: set[Pair] = set()
    for scenario in SCENARIOS:
        produced |= await produced_by(scenario, tmp_path)
    allowed = allowed_pairs()
    assert produced - allowed == set(), "produced, but the table forbids them"
    assert allowed - produced == set(), "allowed by the table, but no scenario produces them"


def test_transition_table_scenarios_claim_only_allowed_pairs() -> None:
    claimed = set().union(*SCENARIOS.values())
    assert claimed == allowed_pairs()
