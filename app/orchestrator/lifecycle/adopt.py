"""Carrying out `plan_adoption` for one model, through its EngineDriver's public steps."""

from __future__ import annotations

from typing import assert_never

from app.orchestrator.lifecycle.adoption import (
    AdoptionFacts,
    AdoptionPlan,
    FailAdopted,
    FinishStop,
    Lost,
    Rest,
    ResumeBackoff,
    StartNow,
    Stopped,
    Watch,
    plan_adoption,
)
from app.orchestrator.lifecycle.engine_driver import CLEARED_ENGINE, EngineDriver
from app.orchestrator.lifecycle.states import ENGINE_STATES, ModelState


async def adopt(driver: EngineDriver) -> None:
    """Gather the facts (is the recorded engine alive; what did its log say while we were
    away), terminate what is left of a dead engine, then carry out the plan."""
    writer = driver.writer
    status = writer.status
    record = driver.record()
    alive = None
    if record.pid is not None or record.launch_token is not None:
        alive = await driver.ctx.launcher.find(record)
    # Catch up on lines written while we were away: an OOM of the recorded run counts now.
    in_engine_state = writer.state in ENGINE_STATES
    found = await driver.oom.read(run_token=status.launch_token if in_engine_state else None)
    if alive is None:
        # Before anything is launched: children of a dead main process still hold GPU memory.
        await driver.clear_recorded_leftovers()
    facts = AdoptionFacts(
        state=writer.state,
        desired=writer.desired,
        since=status.since,
        now=driver.ctx.clock.now(),
        recorded_pid=record.pid,
        alive=alive,
        log_failure=(found.kind, found.evidence_with_figures) if found is not None else None,
        start_timeout_s=driver.start_timeout_s(),
    )
    await carry_out(driver, plan_adoption(facts))


async def carry_out(driver: EngineDriver, plan: AdoptionPlan) -> None:
    writer = driver.writer
    match plan:
        case Watch(handle=handle, ready=ready, remaining_s=remaining_s):
            run = driver.adopt_alive(handle, ready=ready, remaining_s=remaining_s)
            driver.watch(run, ready=ready)
        case FailAdopted(handle=handle, kind=kind, detail=detail):
            driver.adopt_alive(handle, ready=True, remaining_s=0.0)
            await driver.fail(kind, detail)
        case FinishStop(handle=handle, then_start=then_start):
            driver.adopt_alive(handle, ready=True, remaining_s=0.0)
            await driver.stop("finishing a stop begun before", writer.desired)
            if then_start and writer.state == ModelState.STOPPED:
                await _start(driver, "finishing a restart begun before")
        case Stopped(then_start=then_start):
            await _record_stopped(driver, then_start=then_start)
        case Lost(kind=kind, detail=detail):
            await driver.fail(kind, detail)
        case ResumeBackoff():
            driver.resume_backoff()
        case StartNow():
            await _start(driver, "start accepted before an orchestrator restart")
        case Rest():
            pass
        case _:
            assert_never(plan)


async def _record_stopped(driver: EngineDriver, *, then_start: bool) -> None:
    writer = driver.writer
    reason = "engine gone while the orchestrator was down"
    if writer.state != ModelState.STOPPING:
        # RUNNING|STARTING -> STOPPING: a stop was asked for, the engine is gone.
        writer.to(ModelState.STOPPING, reason)
    driver.ctx.release(driver.model_id)
    # STOPPING -> STOPPED
    writer.to(ModelState.STOPPED, reason, **CLEARED_ENGINE)
    if then_start:
        await _start(driver, "finishing a restart begun before")


async def _start(driver: EngineDriver, reason: str) -> None:
    # Nobody waits on this start: a refusal (no headroom now) is a failure with a backoff.
    await driver.launch(reason=reason, force=False, fail_on_refusal=True)
