"""Making room on the GPUs for a start: plan which idle engines to unload, unload them through
their own supervisors, and try the start again, bounded by the requester's start timeout.

Runs outside every supervisor's loop (a supervisor waiting for another's answer while that one
waits for it would deadlock), one start at a time: two cold starts competing for one GPU never
evict for each other at once, and the headroom check under the allocator's lock keeps the GPU
from being overcommitted whatever runs in between.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING

from app.orchestrator.eviction import Candidate, EvictionPlan, Requester, plan_eviction
from app.orchestrator.lifecycle import (
    CommandKind,
    CommandResult,
    ErrorCode,
    ModelState,
    Supervisor,
)

if TYPE_CHECKING:
    from app.orchestrator.orchestrator import Orchestrator

_HEADROOM_CODES = frozenset({ErrorCode.INSUFFICIENT_GPU_MEMORY, ErrorCode.GPU_MEMORY_LOW})
# While the only engines that could make room are busy: how often to look again. Activity has
# no event for "became idle"; a request's end is milliseconds, a start's timeout minutes.
_BUSY_RECHECK_S = 0.05
_UNLOADED = (ModelState.STOPPED, ModelState.SLEEPING, ModelState.FAILED, ModelState.DEGRADED)


class RoomMaker:
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator
        self._one_at_a_time = asyncio.Lock()

    async def plan(self, model_id: str) -> EvictionPlan:
        orchestrator = self.orchestrator
        ctx = orchestrator.ctx
        spec = orchestrator.spec(model_id)
        candidates = []
        holds = {hold.model_id: hold for hold in ctx.allocator.holds()}
        for other in orchestrator.specs():
            hold = holds.get(other.id)
            if other.id == model_id or hold is None:
                continue
            activity = ctx.activity.peek(other.id)
            status = orchestrator.status(other.id)
            last_used = activity.last_request_at if activity else None
            candidates.append(
                Candidate(
                    model_id=other.id,
                    priority=other.priority,
                    last_used=last_used or status.running_since,
                    # An engine still starting is about to serve whoever asked for it.
                    busy=hold.state == "reserved" or bool(activity and activity.busy),
                    held_mib_by_gpu=dict(hold.held_mib_by_gpu),
                )
            )
        snapshot = await asyncio.to_thread(ctx.gpu_probe.snapshot)
        requester = Requester(
            model_id, spec.priority, spec.gpu_memory_util, spec.tensor_parallel_size
        )
        return plan_eviction(
            snapshot,
            requester,
            candidates,
            margin_mib=ctx.allocator.margin_mib,
            reserved_mib_by_gpu=ctx.allocator.reservations_mib(),
        )

    async def start(self, supervisor: Supervisor, *, force: bool, evict: bool) -> CommandResult:
        """START (or wake) the model; refused for room, with `evict` unload idle engines of
        lower or equal priority and try again; without, say what evict=true would unload."""
        orchestrator = self.orchestrator
        model_id = supervisor.model_id
        result = await supervisor.command(CommandKind.START, force=force)
        if not _refused_for_room(result):
            return result
        spec = supervisor.spec
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (spec.start_timeout_s or orchestrator.ctx.settings.start_timeout_s)
        async with self._one_at_a_time:
            while True:
                result = await supervisor.command(CommandKind.START, force=force)
                if not _refused_for_room(result):
                    return result
                plan = await self.plan(model_id)
                if not evict or loop.time() >= deadline or not (plan.fits or plan.busy):
                    return _with_plan(result, plan)
                if not plan.fits:
                    # Only busy engines stand in the way: wait for one to become idle.
                    await asyncio.sleep(_BUSY_RECHECK_S)
                    continue
                await self._unload(model_id, plan.victims, deadline - loop.time())

    async def _unload(self, model_id: str, victims: tuple[str, ...], timeout_s: float) -> None:
        orchestrator = self.orchestrator
        unloaded = []
        for victim in victims:
            answer = await orchestrator.supervisor(victim).command(
                CommandKind.UNLOAD, reason=f"evicted for {model_id}"
            )
            if answer.error is None and answer.changed:
                unloaded.append(victim)
        for victim in unloaded:
            await orchestrator.wait_for_state(victim, _UNLOADED, timeout_s=max(timeout_s, 0.0))
        if unloaded:
            orchestrator.ctx.registry.append_event(
                model_id,
                "evicted_for_start",
                reason=f"unloaded {', '.join(unloaded)} to make room",
                data={"victims": unloaded},
            )


def _refused_for_room(result: CommandResult) -> bool:
    return result.error is not None and result.error.code in _HEADROOM_CODES


def _with_plan(result: CommandResult, plan: EvictionPlan) -> CommandResult:
    assert result.error is not None
    figures = {**result.error.figures, **plan.to_dict()}
    return replace(result, error=replace(result.error, figures=figures))
