"""How one model's engine runs are launched, watched, failed, stopped and adopted.

The EngineDriver belongs to the model's Supervisor and is called only from its message loop, so
it shares the supervisor's one-writer guarantee; it holds the current run, its generation and
the restart timer. Each method is one step of the diagram in `states`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from app.orchestrator.engine_command import engine_lora_limits
from app.orchestrator.failures import FailureKind, failure_message
from app.orchestrator.launchers.base import EngineHandle, EngineRecord, StopError
from app.orchestrator.lifecycle import watchers
from app.orchestrator.lifecycle.context import RunContext
from app.orchestrator.lifecycle.errors import CommandError, CommandResult, ErrorCode
from app.orchestrator.lifecycle.launch import EngineRun, launch_engine
from app.orchestrator.lifecycle.messages import Message
from app.orchestrator.lifecycle.policy import Degrade, decide_after_failure
from app.orchestrator.lifecycle.run_watch import watch_run
from app.orchestrator.lifecycle.states import DesiredState, ModelState
from app.orchestrator.lifecycle.status_writer import StatusWriter
from app.orchestrator.lora import AdapterError, LoraLimits
from app.orchestrator.oom import OomFigures
from app.orchestrator.oom_tracking import OomFound, OomTracker
from app.orchestrator.spec import ModelSpec

CLEARED_ENGINE: dict[str, Any] = {
    "pid": None,
    "pid_create_time": None,
    "launch_token": None,
    "running_since": None,
    "next_attempt_at": None,
}
_FAILURE_KINDS = {kind.value: kind for kind in FailureKind}
Answer = Callable[[CommandResult], None]


class EngineDriver:
    def __init__(
        self,
        model_id: str,
        ctx: RunContext,
        writer: StatusWriter,
        *,
        spec: Callable[[], ModelSpec],
        post: Callable[[Message], None],
    ) -> None:
        self.model_id = model_id
        self.ctx = ctx
        self.writer = writer
        self._spec = spec
        self._post = post
        self.oom = OomTracker(model_id, ctx, writer)
        self.run: EngineRun | None = None
        self.generation = 0
        self.backoff_epoch = 0
        self._timers: list[asyncio.Task[None]] = []

    def is_current(self, generation: int) -> bool:
        return self.run is not None and self.run.generation == generation

    def start_timeout_s(self) -> float:
        return self._spec().start_timeout_s or self.ctx.settings.start_timeout_s

    # -- launching ------------------------------------------------------------------------
    async def launch(
        self, *, reason: str, force: bool, fail_on_refusal: bool
    ) -> CommandError | None:
        """Launch an engine run. A refusal is returned as it is to an operator's command; for a
        start nobody waits on (a restart, adoption, the second half of a restart) it is a
        failure, with its event, backoff and budget."""
        error = await self.clear_recorded_leftovers()
        if error is None:
            self.generation += 1
            outcome = await launch_engine(
                self.ctx,
                self.writer,
                self._spec(),
                generation=self.generation,
                reason=reason,
                force=force,
            )
            if isinstance(outcome, EngineRun):
                self.run = outcome
                self.watch(outcome, ready=False)
                return None
            error = outcome
        if error.code == ErrorCode.LAUNCH_FAILED or fail_on_refusal:
            await self.fail(
                _FAILURE_KINDS.get(error.code.value, FailureKind.LAUNCH_ERROR), error.message
            )
        return error

    def watch(self, run: EngineRun, *, ready: bool) -> None:
        stable_after_s = self._spec().restart_policy.stable_after_s
        watch_run(self.ctx, run, self._post, ready=ready, stable_after_s=stable_after_s)

    def on_ready(self) -> None:
        run = self.run
        assert run is not None
        run.cancel_tasks()
        self.ctx.allocator.mark_running(self.model_id)
        # STARTING -> RUNNING
        self.writer.to(
            ModelState.RUNNING, "engine answered /health", running_since=self.ctx.clock.now()
        )
        self.watch(run, ready=True)

    def apply_start_timeout(self) -> None:
        """start_timeout_s changed: the start under way is judged by the new value, counted from
        its launch."""
        run = self.run
        if run is None or self.writer.state != ModelState.STARTING:
            return
        timeout_s = self.start_timeout_s()
        run.start_deadline += timeout_s - run.start_timeout_s
        run.start_timeout_s = timeout_s

    # -- failures -------------------------------------------------------------------------
    async def on_exit(self, code: int | None) -> None:
        # An OOM printed just before the exit must be attributed to it: read the log to its end.
        await self.read_log()
        run = self.run
        if run is None:
            return  # the OOM in the log already failed this run
        # The kernel's OOM killer leaves no line in the log: what ran the engine may know.
        cause = await self.ctx.launcher.exit_cause(run.handle)
        was = self.writer.status.state
        tail = " | ".join(self.ctx.log_tail(self.model_id, 5))
        detail = f"engine exited with code {code} while {was}; log tail: {tail}"
        if cause is not None and cause.kind == "oom_kill":
            evidence = cause.describe()
            figures = OomFigures(total=cause.memory_limit)
            found = OomFound(FailureKind.HOST_OOM, evidence, figures)
            self.oom.count_exit(found, run_token=run.launch_token)
            await self.fail(
                FailureKind.HOST_OOM, f"{FailureKind.HOST_OOM.value}: {evidence}; {detail}"
            )
            return
        await self.fail(FailureKind.EXIT, detail)

    async def read_log(self) -> None:
        found = await self.oom.read(run_token=self.run.launch_token if self.run else None)
        if found is not None and self.run is not None:
            await self.fail(found.kind, f"{found.kind.value}: {found.evidence_with_figures}")

    async def fail(self, kind: FailureKind, detail: str) -> None:
        run, self.run = self.run, None
        survived = False
        if run is not None:
            run.cancel_tasks()
            try:
                await self._terminate(run.handle)
            except StopError as error:
                survived = True
                detail = f"{detail}; {error}"
        if not survived:
            self.ctx.release(self.model_id)
        # STARTING|RUNNING|STOPPED -> FAILED
        self.writer.fail(kind, failure_message(kind, detail), keep_engine=survived)
        if self.writer.desired != DesiredState.RUNNING:
            return
        decision = decide_after_failure(
            kind, self.writer.status.consecutive_failures, self._spec().restart_policy
        )
        if isinstance(decision, Degrade):
            # FAILED -> DEGRADED
            self.writer.degrade(decision.reason)
            return
        # FAILED -> (backoff) -> STARTING
        self.writer.schedule_restart(decision.delay_s, decision.attempt)
        self._arm_backoff(decision.delay_s)

    async def on_backoff_elapsed(self, epoch: int) -> None:
        if epoch != self.backoff_epoch:
            return  # a timer that a stop or a start has since replaced
        if self.writer.state != ModelState.FAILED or self.writer.desired != DesiredState.RUNNING:
            return
        error = await self.launch(reason="restart after failure", force=False, fail_on_refusal=True)
        if error is None:
            self.writer.count_restart()  # restarts_total counts launches only

    def resume_backoff(self) -> None:
        """Arm the restart timer with what is left of the persisted delay."""
        next_at = self.writer.status.next_attempt_at
        remaining_s = 0.0
        if next_at is not None:
            remaining_s = max(0.0, (next_at - self.ctx.clock.now()).total_seconds())
        self._arm_backoff(remaining_s)

    def cancel_backoff(self) -> None:
        self._cancel_timers()
        self.backoff_epoch += 1

    def _arm_backoff(self, delay_s: float) -> None:
        self.backoff_epoch += 1
        message = watchers.backoff_message(self.backoff_epoch)
        self._timer(watchers.after_delay(self.ctx.clock, delay_s, message, self._post))

    # -- sleeping -------------------------------------------------------------------------
    async def sleep(self, reason: str) -> CommandError | None:
        """RUNNING -> SLEEPING: vLLM's sleep mode frees the GPU, the process stays. Its memory
        is released in the headroom accounting at once."""
        run, level = self.run, self._spec().sleep_level
        if run is None or level is None or self.writer.state != ModelState.RUNNING:
            return CommandError(ErrorCode.SLEEP_FAILED, f"model {self.model_id} cannot sleep")
        problem = await self.ctx.sleep.sleep(run.base_url, level)
        if problem is not None:
            return CommandError(ErrorCode.SLEEP_FAILED, f"sleep failed: {problem}")
        self.ctx.allocator.mark_sleeping(self.model_id)
        # RUNNING -> SLEEPING
        self.writer.to(ModelState.SLEEPING, reason, data={"level": level})
        return None

    async def wake(self, reason: str, *, force: bool) -> CommandError | None:
        """SLEEPING -> RUNNING: the headroom check of a start first (a refusal leaves it
        sleeping), then vLLM's wake-up; a wake that fails is a failure of the run."""
        run, level = self.run, self._spec().sleep_level or 1
        assert run is not None and self.writer.state == ModelState.SLEEPING
        spec = self._spec()
        decision = await self.ctx.allocator.reserve(
            self.model_id,
            gpu_memory_util=spec.gpu_memory_util,
            tensor_parallel_size=spec.tensor_parallel_size,
            force=force,
            # The process is bound to the GPUs it started on: it wakes there or not at all.
            only_gpus=tuple(self.writer.status.gpu_ids),
        )
        if not decision.ok:
            code = ErrorCode(decision.code or ErrorCode.INSUFFICIENT_GPU_MEMORY)
            return CommandError(code, decision.reason, decision.to_dict())
        problem = await self.ctx.sleep.wake(run.base_url, level)
        if problem is not None:
            await self.fail(FailureKind.UNHEALTHY, f"wake-up failed: {problem}")
            return CommandError(ErrorCode.LAUNCH_FAILED, f"wake-up failed: {problem}")
        self.ctx.allocator.mark_running(self.model_id)
        # SLEEPING -> RUNNING
        self.writer.to(ModelState.RUNNING, reason, running_since=self.ctx.clock.now())
        return None

    # -- stopping -------------------------------------------------------------------------
    async def stop(
        self, reason: str, desired: DesiredState, answer: Answer | None = None
    ) -> CommandError | None:
        """Stop what runs. `answer` is told as soon as the stop has begun (a 202 with state
        stopping); the stop itself goes on here."""
        self.cancel_backoff()
        status = self.writer.status
        changed = status.desired_state != desired.value or status.state != ModelState.STOPPED
        self.writer.set_desired(desired)
        run, self.run = self.run, None
        if run is None:
            error = await self._stop_at_rest(reason, answer)
            if answer is not None:
                answer(CommandResult(changed=changed, error=error))
            return error
        run.cancel_tasks()
        if self.writer.state != ModelState.STOPPING:
            # STARTING|RUNNING -> STOPPING
            self.writer.to(ModelState.STOPPING, reason)
        if answer is not None:
            await self.ctx.registry.flush()
            answer(CommandResult(changed=True))
        return await self._finish_stop(run.handle)

    async def _stop_at_rest(self, reason: str, answer: Answer | None) -> CommandError | None:
        """Stop a model with no current run: a failed one may still have processes of its last
        run (a stop that failed, a main process that died): those are stopped first."""
        record = self.record()
        leftovers = record.pid is not None or record.launch_token is not None
        if leftovers and self.writer.state == ModelState.FAILED:
            # FAILED -> STOPPING: what is left of the last run is being terminated.
            self.writer.to(ModelState.STOPPING, reason)
            if answer is not None:
                await self.ctx.registry.flush()
                answer(CommandResult(changed=True))
            error = await self.clear_recorded_leftovers()
            if error is not None:
                # STOPPING -> FAILED: they survived SIGKILL; the status still names them.
                self.writer.fail(FailureKind.STOP_FAILED, error.message, keep_engine=True)
                return error
            # STOPPING -> STOPPED
            self.writer.to(ModelState.STOPPED, "engine stopped", **CLEARED_ENGINE)
            return None
        error = await self.clear_recorded_leftovers()
        if error is None and self.writer.state in (ModelState.FAILED, ModelState.DEGRADED):
            # FAILED|DEGRADED -> STOPPED
            self.writer.to(ModelState.STOPPED, reason, next_attempt_at=None)
        return error

    async def _finish_stop(self, handle: EngineHandle) -> CommandError | None:
        try:
            await self._terminate(handle)
        except StopError as error:
            # STOPPING -> FAILED: the processes are still there; the status keeps their pid.
            message = failure_message(FailureKind.STOP_FAILED, str(error))
            self.writer.fail(FailureKind.STOP_FAILED, message, keep_engine=True)
            return CommandError(ErrorCode.STOP_FAILED, message, {"pids": error.pids})
        self.ctx.release(self.model_id)
        await self.read_log()
        # STOPPING -> STOPPED
        self.writer.to(ModelState.STOPPED, "engine stopped", **CLEARED_ENGINE)
        return None

    async def _terminate(self, handle: EngineHandle) -> None:
        await self.ctx.launcher.stop(handle, grace_s=self.ctx.settings.stop_grace_s)

    def record(self) -> EngineRecord:
        """What the status remembers of the last run."""
        status = self.writer.status
        return EngineRecord(
            pid=status.pid,
            create_time=status.pid_create_time,
            launch_token=status.launch_token,
            launcher=status.launcher,
            unit_name=status.unit_name,
            limits_enforced=bool(status.limits_enforced),
        )

    async def clear_recorded_leftovers(self) -> CommandError | None:
        """Terminate what is left of the last recorded run, if the status still names one (its
        stop failed, or its main process died while the orchestrator was away)."""
        record = self.record()
        if self.run is not None or (record.pid is None and record.launch_token is None):
            return None
        try:
            pids = await self.ctx.launcher.clear_leftovers(
                record, grace_s=self.ctx.settings.stop_grace_s
            )
        except StopError as error:
            message = failure_message(FailureKind.STOP_FAILED, str(error))
            return CommandError(ErrorCode.STOP_FAILED, message, {"pids": error.pids})
        self.ctx.release(self.model_id)
        event = {"kind": "leftovers_cleared", "reason": f"terminated pids {pids}"}
        self.writer.save(event if pids else None, pid=None, pid_create_time=None, launch_token=None)
        return None

    # -- adoption -------------------------------------------------------------------------
    def adopt_alive(self, handle: EngineHandle, *, ready: bool, remaining_s: float) -> EngineRun:
        """Take an engine found alive after an orchestrator restart as the current run."""
        status = self.writer.status
        port = status.port
        assert port is not None
        self.ctx.ports.hold(self.model_id, port)
        if self.writer.state != ModelState.SLEEPING:  # asleep, it holds no GPU memory
            self.ctx.allocator.adopt_gpus(
                self.model_id, tuple(status.gpu_ids), gpu_memory_util=self._spec().gpu_memory_util
            )
        self.generation += 1
        run = EngineRun(
            generation=self.generation,
            handle=handle,
            launch_token=status.launch_token or "",
            base_url=self.ctx.base_url(port),
            start_timeout_s=self.start_timeout_s(),
            start_deadline=self.ctx.clock.monotonic() + remaining_s,
            lora=self._launched_lora_limits(),
        )
        self.writer.save(
            {"kind": "adopted", "reason": f"pid {handle.pid} still alive, adopted"},
            pid=handle.pid,
            pid_create_time=handle.create_time,
        )
        self.run = run
        return run

    def _launched_lora_limits(self) -> LoraLimits | None:
        """The LoRA limits an adopted engine was launched with: those its spec gives (a spec
        edit that would change them needs a restart, so they are the launch's)."""
        spec = self._spec()
        try:
            return engine_lora_limits(spec, self.ctx.resolver.resolve(spec).adapters)
        except AdapterError:
            return None

    # -- tasks ----------------------------------------------------------------------------
    def _timer(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self._timers = [task for task in self._timers if not task.done()]
        self._timers.append(asyncio.create_task(coroutine))

    def _cancel_timers(self) -> None:
        for task in self._timers:
            task.cancel()
        self._timers.clear()

    def cancel_tasks(self) -> None:
        """The supervisor ends: no watcher or timer of this model may outlive it."""
        if self.run is not None:
            self.run.cancel_tasks()
        self._cancel_timers()
