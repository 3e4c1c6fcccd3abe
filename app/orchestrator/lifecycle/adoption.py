"""After an orchestrator restart: pick up engines that are still alive, fail the ones that died.

An engine is ours only when its pid is alive with the recorded create time (a reused pid is a
stranger), or, if the orchestrator died between spawn and record, when a process carries the
run's launch token in its environment. Nothing is ever looked up or killed by name.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from app.orchestrator.engine_run import EngineRun
from app.orchestrator.gpu.headroom import held_mib
from app.orchestrator.launchers import process
from app.orchestrator.launchers.base import EngineHandle
from app.orchestrator.oom_tracking import OomFound
from app.orchestrator.states import DesiredState, FailureKind, ModelState

if TYPE_CHECKING:
    from app.orchestrator.supervisor import Supervisor


def _recorded_handle(supervisor: Supervisor) -> EngineHandle | None:
    status = supervisor.writer.status
    pid, started = status.pid, status.pid_create_time
    if pid is None and status.launch_token:
        pid = process.find_by_launch_token(status.launch_token)
        started = process.create_time(pid) if pid is not None else None
    if pid is None or started is None or not process.is_same_process(pid, started):
        return None
    return EngineHandle(
        pid=pid,
        create_time=started,
        launcher=status.launcher or supervisor.ctx.launcher.name,
        unit_name=status.unit_name,
        limits_enforced=bool(status.limits_enforced),
    )


async def adopt(supervisor: Supervisor) -> None:
    writer = supervisor.writer
    status = writer.status
    state = writer.state
    engine_state = state in (ModelState.STARTING, ModelState.RUNNING, ModelState.STOPPING)
    # Catch up on lines written while we were away: an OOM of the recorded run counts now.
    found = supervisor.oom.read(run_token=status.launch_token if engine_state else None)
    if engine_state:
        handle = _recorded_handle(supervisor)
        if handle is None:
            await _engine_lost(supervisor, state, found)
            return
        await _adopt_alive(supervisor, handle)
        if found is not None and supervisor.run is not None:
            await supervisor._fail(found.kind, f"{found.kind.value}: {found.evidence}")
        return
    if state == ModelState.FAILED and status.desired_state == DesiredState.RUNNING:
        # FAILED -> (backoff) -> STARTING, with what is left of the delay.
        supervisor.resume_backoff()
    elif state == ModelState.STOPPED and status.desired_state == DesiredState.RUNNING:
        # Killed between accepting a start and launching it: carry the start out now.
        await supervisor._launch(
            reason="start accepted before an orchestrator restart", force=False
        )


async def _engine_lost(supervisor: Supervisor, state: ModelState, found: OomFound | None) -> None:
    writer = supervisor.writer
    if state == ModelState.STOPPING or writer.status.desired_state == DesiredState.STOPPED:
        # STOPPING -> STOPPED: what we were stopping is gone.
        if state != ModelState.STOPPING:
            writer.to(ModelState.STOPPING, "engine gone while the orchestrator was down")
        writer.to(ModelState.STOPPED, "engine gone while the orchestrator was down", pid=None)
        supervisor.ctx.release(supervisor.model_id)
        if writer.status.desired_state == DesiredState.RUNNING:
            await supervisor._launch(reason="finishing a restart begun before", force=False)
        return
    detail = f"engine (pid {writer.status.pid}) ended while the orchestrator was down"
    if found is not None:
        await supervisor._fail(found.kind, f"{detail}: {found.evidence}")
        return
    await supervisor._fail(FailureKind.EXIT, detail)


async def _adopt_alive(supervisor: Supervisor, handle: EngineHandle) -> None:
    ctx, writer = supervisor.ctx, supervisor.writer
    status = writer.status
    spec = ctx.spec(supervisor.model_id)
    port = status.port
    assert port is not None
    ctx.ports.hold(supervisor.model_id, port)
    snapshot = ctx.gpu_probe.snapshot()
    totals = {gpu.index: gpu.total_mib for gpu in snapshot.gpus}
    gpu_ids = tuple(status.gpu_ids)
    if gpu_ids and all(gpu in totals for gpu in gpu_ids):
        held = max(held_mib(spec.gpu_memory_util, totals[gpu]) for gpu in gpu_ids)
        ctx.allocator.adopt(supervisor.model_id, gpu_ids, held_mib=held)
    supervisor.generation += 1
    run = EngineRun(
        generation=supervisor.generation,
        handle=handle,
        launch_token=status.launch_token or "",
        base_url=ctx.base_url(port),
    )
    writer.save(
        {"kind": "adopted", "reason": f"pid {handle.pid} still alive, adopted"},
        pid=handle.pid,
        pid_create_time=handle.create_time,
    )
    if writer.state == ModelState.STOPPING or status.desired_state == DesiredState.STOPPED:
        # A stop (or the stop half of a restart) was under way: finish it, then honour what
        # the operator asked.
        desired = DesiredState(status.desired_state)
        supervisor.run = run
        await supervisor._stop_engine("finishing a stop begun before the restart", desired=desired)
        if desired == DesiredState.RUNNING:
            await supervisor._launch(reason="finishing a restart begun before", force=False)
        return
    supervisor.run = run
    if writer.state == ModelState.RUNNING:
        supervisor._watch(run, ready=True)
        return
    elapsed_s = (ctx.clock.now() - status.since).total_seconds()
    remaining_s = max(0.0, ctx.start_timeout_s(supervisor.model_id) - elapsed_s)
    deadline = ctx.clock.monotonic() + (remaining_s if math.isfinite(remaining_s) else 0.0)
    supervisor._watch(run, ready=False, deadline=deadline)
