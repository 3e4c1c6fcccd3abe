"""Sharing the GPU between more models than fit, for one model: idle unload, unloads asked by
an eviction, and vLLM's sleep mode. Run by the model's supervisor (one writer)."""

from __future__ import annotations

from collections.abc import Callable

from app.orchestrator.lifecycle import watchers
from app.orchestrator.lifecycle.context import RunContext
from app.orchestrator.lifecycle.engine_driver import EngineDriver
from app.orchestrator.lifecycle.errors import CommandError, CommandResult, ErrorCode
from app.orchestrator.lifecycle.idle import CheckAgain, Unload, idle_decision
from app.orchestrator.lifecycle.messages import IdleCheck, Message
from app.orchestrator.lifecycle.states import DesiredState, ModelState
from app.orchestrator.spec import ModelSpec


class GpuSharing:
    def __init__(
        self,
        model_id: str,
        ctx: RunContext,
        engine: EngineDriver,
        *,
        spec: Callable[[], ModelSpec],
        post: Callable[[Message], None],
    ) -> None:
        self.model_id = model_id
        self.ctx = ctx
        self.engine = engine
        self.writer = engine.writer
        self._spec = spec
        self._post = post

    def idle_timeout_s(self) -> float | None:
        return self._spec().idle_timeout_s or self.ctx.settings.idle_timeout_s

    def arm_idle_check(self, delay_s: float | None = None) -> None:
        """Look again after `delay_s` (default: the idle timeout) while this run lasts."""
        run, timeout_s = self.engine.run, self.idle_timeout_s()
        if run is None or timeout_s is None:
            return
        message = IdleCheck(generation=run.generation)
        run.spawn(watchers.after_delay(self.ctx.clock, delay_s or timeout_s, message, self._post))

    async def on_idle_check(self) -> None:
        if self.writer.state != ModelState.RUNNING:
            return
        decision = idle_decision(
            now=self.ctx.clock.now(),
            timeout_s=self.idle_timeout_s(),
            activity=self.ctx.activity.peek(self.model_id),
            running_since=self.writer.status.running_since,
        )
        match decision:
            case Unload(idle_s=idle_s):
                await self.unload("idle", idle_s=idle_s)
            case CheckAgain(delay_s=delay_s):
                self.arm_idle_check(delay_s)
            case None:
                pass

    async def unload(self, reason: str, *, idle_s: float | None = None) -> CommandResult:
        """Free the GPU memory of an idle engine: asleep with a sleep_level (desired stays
        running: the next request wakes it), else stopped with desired stopped and the reason.
        Refused while a request is in flight or waiting: a busy engine is never evicted."""
        activity = self.ctx.activity.peek(self.model_id)
        if self.engine.run is None or self.writer.state != ModelState.RUNNING:
            return CommandResult(changed=False)
        if activity is not None and activity.busy:
            message = f"model {self.model_id} has {activity.in_flight} requests in flight"
            figures = {"in_flight": activity.in_flight, "waiting": activity.waiting}
            return CommandResult(False, CommandError(ErrorCode.MODEL_BUSY, message, figures))
        label = "idle" if reason == "idle" else "make_room"
        why = f"idle for {idle_s:.0f} s" if idle_s is not None else reason
        self.writer.save(notes={**self.writer.status.notes, "desired_reason": reason})
        self.ctx.metrics.evictions_total.labels(model=self.model_id, reason=label).inc()
        if self._spec().sleep_level is not None and await self.engine.sleep(why) is None:
            return CommandResult(changed=True)
        error = await self.engine.stop(why, DesiredState.STOPPED)
        return CommandResult(changed=True, error=error)

    async def wake(self, reason: str, *, force: bool) -> CommandResult:
        error = await self.engine.wake(reason, force=force)
        if error is not None:
            return CommandResult(changed=False, error=error)
        self.clear_desired_reason()
        self.arm_idle_check()
        return CommandResult(changed=True)

    def clear_desired_reason(self) -> None:
        notes = self.writer.status.notes
        if "desired_reason" in notes:
            rest = {key: value for key, value in notes.items() if key != "desired_reason"}
            self.writer.save(notes=rest)
