"""One supervisor per model: the only writer of its status.

API handlers send it commands and read the store; watchers post what they observe. Messages are
handled one at a time, so two concurrent starts can never spawn two engines, and a watcher's late
report about an ended run (an old generation) is dropped instead of acting on the new one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from app.orchestrator import watchers
from app.orchestrator.adoption import adopt
from app.orchestrator.engine_run import EngineRun, RunContext, launch_engine
from app.orchestrator.launchers import process
from app.orchestrator.launchers.base import EngineHandle
from app.orchestrator.messages import (
    Adopt,
    BackoffElapsed,
    Command,
    CommandError,
    CommandKind,
    CommandResult,
    EngineExited,
    EngineReady,
    HealthFailed,
    LogGrew,
    Message,
    StableElapsed,
    StartTimedOut,
)
from app.orchestrator.oom_tracking import OomTracker
from app.orchestrator.policy import Degrade, decide_after_failure, failure_message
from app.orchestrator.run_watch import watch_run
from app.orchestrator.states import DesiredState, FailureKind, ModelState
from app.orchestrator.transitions import StatusWriter

logger = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, model_id: str, context: RunContext) -> None:
        self.model_id = model_id
        self.ctx = context
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.writer = StatusWriter(model_id, context.registry, context.metrics, context.clock)
        self.run: EngineRun | None = None
        self.generation = 0
        self.backoff_epoch = 0
        self._timers: list[asyncio.Task[None]] = []
        self.oom = OomTracker(model_id, context, self.writer)
        self.closed = False

    # -- API side -------------------------------------------------------------------------
    def post(self, message: Message) -> None:
        self.inbox.put_nowait(message)

    async def command(self, kind: CommandKind, *, force: bool = False) -> CommandResult:
        reply: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self.post(Command(kind=kind, force=force, reply=reply))
        return await reply

    # -- the loop -------------------------------------------------------------------------
    async def serve(self) -> None:
        self.ctx.log_watcher.subscribe(self.ctx.log_path(self.model_id).name, self._log_grew)
        try:
            while not self.closed:
                message = await self.inbox.get()
                try:
                    await self._handle(message)
                except Exception as error:  # one bad message must not kill the model's loop
                    logger.exception("supervisor %s failed on %r", self.model_id, message)
                    if isinstance(message, Command) and message.reply and not message.reply.done():
                        message.reply.set_exception(error)
        finally:
            self.ctx.log_watcher.unsubscribe(self.ctx.log_path(self.model_id).name)
            self._cancel_run_tasks()
            self._cancel_timers()
            self._refuse_pending()

    def _refuse_pending(self) -> None:
        """Commands that arrived after a delete: the model is gone, say so instead of hanging."""
        while not self.inbox.empty():
            message = self.inbox.get_nowait()
            if isinstance(message, Command) and message.reply and not message.reply.done():
                message.reply.set_exception(LookupError(self.model_id))

    def _log_grew(self) -> None:
        self.post(LogGrew())

    async def _handle(self, message: Message) -> None:
        match message:
            case Command():
                result = await self._on_command(message)
                if message.reply is not None and not message.reply.done():
                    message.reply.set_result(result)
            case Adopt():
                await self._adopt()
            case LogGrew():
                await self._read_log()
            case _:
                await self._observe(message)

    async def _observe(self, message: Message) -> None:
        match message:
            case EngineReady(generation=gen) if self._current(gen):
                self._on_ready()
            case EngineExited(generation=gen, code=code) if self._current(gen):
                await self._on_exit(code)
            case StartTimedOut(generation=gen) if self._current(gen):
                timeout_s = self.ctx.start_timeout_s(self.model_id)
                await self._fail(FailureKind.START_TIMEOUT, f"not ready within {timeout_s:g} s")
            case HealthFailed(generation=gen, detail=detail) if self._current(gen):
                await self._fail(FailureKind.UNHEALTHY, detail)
            case BackoffElapsed(epoch=epoch) if epoch == self.backoff_epoch:
                await self._on_backoff_elapsed()
            case StableElapsed(generation=gen) if self._current(gen):
                self.writer.reset_failures("ran stable")
            case _:
                pass  # about an engine run that has already ended

    def _current(self, generation: int) -> bool:
        return self.run is not None and self.run.generation == generation

    # -- commands -------------------------------------------------------------------------
    async def _on_command(self, command: Command) -> CommandResult:
        status = self.writer.status
        if command.kind is CommandKind.START:
            if status.desired_state == DesiredState.RUNNING and self.run is not None:
                return CommandResult(changed=False)  # starting or running: nothing to do
            return await self._start(reason="operator start", force=command.force)
        if command.kind is CommandKind.RESTART:
            await self._stop_engine("operator restart", desired=DesiredState.RUNNING)
            return await self._start(reason="operator restart", force=command.force)
        if command.kind is CommandKind.STOP:
            changed = status.desired_state != DesiredState.STOPPED or self.run is not None
            await self._stop_engine("operator stop", desired=DesiredState.STOPPED)
            return CommandResult(changed=changed or status.state != ModelState.STOPPED)
        if command.kind is CommandKind.SHUTDOWN:
            if self.run is None:
                return CommandResult(changed=False)  # failed, degraded, stopped stay as they are
            desired = DesiredState(status.desired_state)
            await self._stop_engine("orchestrator shutdown", desired=desired)
            return CommandResult(changed=True)
        # DELETE: stop what runs, then this supervisor ends; the manager deletes the rows.
        await self._stop_engine("model deleted", desired=DesiredState.STOPPED)
        self.writer.forget_metrics()
        self.closed = True
        return CommandResult(changed=True)

    async def _start(self, *, reason: str, force: bool) -> CommandResult:
        # An operator's start clears degraded and the restart budget.
        self._cancel_timers()
        self.backoff_epoch += 1
        self.writer.reset_failures(reason)
        error = await self._launch(reason=reason, force=force)
        if error is not None and error.code != "launch_failed":
            self._after_refused_start()
            return CommandResult(changed=False, error=error)
        return CommandResult(changed=True, error=error)

    def _after_refused_start(self) -> None:
        """A refused start changes nothing: a stopped model stays wanted stopped (a refused
        restart included), and a model waiting for its restart keeps waiting."""
        status = self.writer.status
        if status.state == ModelState.STOPPED:
            self.writer.set_desired(DesiredState.STOPPED)
        elif status.state == ModelState.FAILED and status.desired_state == DesiredState.RUNNING:
            self.resume_backoff()

    def resume_backoff(self) -> None:
        """Arm the restart timer with what is left of the persisted delay."""
        next_at = self.writer.status.next_attempt_at
        remaining_s = 0.0
        if next_at is not None:
            remaining_s = max(0.0, (next_at - self.ctx.clock.now()).total_seconds())
        self.backoff_epoch += 1
        self._timer(
            watchers.after_delay(
                self.ctx.clock,
                remaining_s,
                watchers.backoff_message(self.backoff_epoch),
                self.post,
            )
        )

    # -- launching ------------------------------------------------------------------------
    async def _launch(self, *, reason: str, force: bool) -> CommandError | None:
        self.generation += 1
        outcome = await launch_engine(
            self.ctx, self.writer, generation=self.generation, reason=reason, force=force
        )
        if isinstance(outcome, CommandError):
            if outcome.code == "launch_failed":
                await self._fail(FailureKind.LAUNCH_ERROR, outcome.message)
            return outcome
        self.run = outcome
        self._watch(outcome, ready=False)
        return None

    def _watch(self, run: EngineRun, *, ready: bool, deadline: float | None = None) -> None:
        watch_run(self.ctx, run, self.post, model_id=self.model_id, ready=ready, deadline=deadline)

    def _on_ready(self) -> None:
        run = self.run
        assert run is not None
        run.cancel_tasks()
        self.ctx.allocator.mark_running(self.model_id)
        # STARTING -> RUNNING
        self.writer.to(
            ModelState.RUNNING, "engine answered /health", running_since=self.ctx.clock.now()
        )
        self._watch(run, ready=True)

    # -- failures -------------------------------------------------------------------------
    async def _on_exit(self, code: int | None) -> None:
        # An OOM printed just before the exit must be attributed to it: read the log to its end.
        await self._read_log()
        if self.run is None:
            return  # the OOM in the log already failed this run
        was = self.writer.status.state
        tail = " | ".join(self.ctx.log_tail(self.model_id, 5))
        detail = f"engine exited with code {code} while {was}; log tail: {tail}"
        await self._fail(FailureKind.EXIT, detail)

    async def _read_log(self) -> None:
        found = self.oom.read(run_token=self.run.launch_token if self.run else None)
        if found is not None and self.run is not None:
            await self._fail(found.kind, f"{found.kind.value}: {found.evidence}")

    async def _fail(self, kind: FailureKind, detail: str) -> None:
        run, self.run = self.run, None
        if run is not None:
            run.cancel_tasks()
            if self.ctx.launcher.is_alive(run.handle) or process.group_members(run.handle.pid):
                await self._terminate(run.handle)
        self.ctx.release(self.model_id)
        message = failure_message(kind, detail)
        # STARTING|RUNNING -> FAILED
        self.writer.fail(kind, message)
        if self.writer.status.desired_state != DesiredState.RUNNING:
            return
        decision = decide_after_failure(
            kind, self.writer.status.consecutive_failures, self.ctx.policy(self.model_id)
        )
        if isinstance(decision, Degrade):
            # FAILED -> DEGRADED
            self.writer.degrade(decision.reason)
            return
        # FAILED -> (backoff) -> STARTING
        self.backoff_epoch += 1
        self.writer.schedule_restart(decision.delay_s, decision.attempt)
        self._timer(
            watchers.after_delay(
                self.ctx.clock,
                decision.delay_s,
                watchers.backoff_message(self.backoff_epoch),
                self.post,
            )
        )

    async def _on_backoff_elapsed(self) -> None:
        status = self.writer.status
        if status.state != ModelState.FAILED or status.desired_state != DesiredState.RUNNING:
            return
        self.writer.count_restart()
        error = await self._launch(reason="restart after failure", force=False)
        if error is not None and error.code != "launch_failed":
            kind = _FAILURE_KINDS.get(error.code, FailureKind.LAUNCH_ERROR)
            await self._fail(kind, error.message)

    # -- stopping -------------------------------------------------------------------------
    async def _stop_engine(self, reason: str, *, desired: DesiredState) -> None:
        self._cancel_timers()
        self.backoff_epoch += 1
        self.writer.set_desired(desired)
        run, self.run = self.run, None
        status = self.writer.status
        if run is None:
            if status.state in (ModelState.FAILED, ModelState.DEGRADED):
                # FAILED|DEGRADED -> STOPPED
                self.writer.to(ModelState.STOPPED, reason, next_attempt_at=None)
            return
        run.cancel_tasks()
        if self.writer.state != ModelState.STOPPING:  # already so when a stop is resumed
            # STARTING|RUNNING -> STOPPING
            self.writer.to(ModelState.STOPPING, reason)
        await self._terminate(run.handle)
        self.ctx.release(self.model_id)
        await self._read_log()
        # STOPPING -> STOPPED
        self.writer.to(ModelState.STOPPED, "engine stopped", **_CLEARED_ENGINE)

    async def _terminate(self, handle: EngineHandle) -> None:
        await self.ctx.launcher.stop(handle, grace_s=self.ctx.settings.stop_grace_s)

    # -- adoption after an orchestrator restart -------------------------------------------
    async def _adopt(self) -> None:
        await adopt(self)

    # -- tasks ----------------------------------------------------------------------------
    def _timer(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self._timers = [task for task in self._timers if not task.done()]
        self._timers.append(asyncio.create_task(coroutine))

    def _cancel_timers(self) -> None:
        for task in self._timers:
            task.cancel()
        self._timers.clear()

    def _cancel_run_tasks(self) -> None:
        if self.run is not None:
            self.run.cancel_tasks()

    async def close(self) -> None:
        self.closed = True
        self._cancel_run_tasks()
        self._cancel_timers()
        self.inbox.put_nowait(LogGrew())  # wakes the loop, which then sees `closed`


_FAILURE_KINDS = {kind.value: kind for kind in FailureKind}
_CLEARED_ENGINE: dict[str, Any] = {
    "pid": None,
    "pid_create_time": None,
    "launch_token": None,
    "running_since": None,
    "next_attempt_at": None,
}
