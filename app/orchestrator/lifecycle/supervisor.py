"""One supervisor per model: the only writer of its spec and its status.

API handlers send it messages (commands, spec updates) and read snapshots; watchers post what
they observe. Messages are handled one at a time, so two concurrent starts can never spawn two
engines, an edit can never race a start, and a watcher's late report about an ended run (an old
generation) is dropped instead of acting on the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any, assert_never

from app.orchestrator.failures import FailureKind
from app.orchestrator.lifecycle.adapters import AdapterSteps, AdapterView
from app.orchestrator.lifecycle.adopt import adopt
from app.orchestrator.lifecycle.context import RunContext
from app.orchestrator.lifecycle.engine_driver import EngineDriver
from app.orchestrator.lifecycle.errors import CommandError, CommandResult, ErrorCode
from app.orchestrator.lifecycle.messages import (
    AdapterChange,
    Adopt,
    BackoffElapsed,
    Command,
    CommandKind,
    EngineExited,
    EngineReady,
    HealthFailed,
    IdleCheck,
    LogGrew,
    Message,
    Observation,
    StableElapsed,
    StartTimedOut,
    UpdateSpec,
)
from app.orchestrator.lifecycle.sharing import GpuSharing
from app.orchestrator.lifecycle.spec_change import judge_spec_change
from app.orchestrator.lifecycle.states import AT_REST_STATES, DesiredState, ModelState
from app.orchestrator.lifecycle.status_writer import StatusTest, StatusWriter
from app.orchestrator.spec import ModelSpec
from app.store.tables import StatusRow

logger = logging.getLogger(__name__)


_ANSWERED = (Command, UpdateSpec, AdapterChange)
Answered = Command | UpdateSpec | AdapterChange


class Supervisor:
    def __init__(self, spec: ModelSpec, status: StatusRow, context: RunContext) -> None:
        self.model_id = spec.id
        self.ctx = context
        self._spec = spec
        self._spec_data: dict[str, Any] | None = None
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.writer = StatusWriter(status, context.registry, context.metrics, context.clock)
        self.engine = EngineDriver(
            self.model_id, context, self.writer, spec=lambda: self._spec, post=self.post
        )
        self.oom = self.engine.oom
        self.adapter_steps = AdapterSteps(self.model_id, context)
        self.sharing = GpuSharing(
            self.model_id, context, self.engine, spec=lambda: self._spec, post=self.post
        )
        self._answers: list[tuple[Answered, CommandResult]] = []
        self.closed = False

    # -- what others may read and send ------------------------------------------------------
    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def spec_data(self) -> dict[str, Any]:
        """The spec as JSON-ready data, id first; built once per change, not per request."""
        if self._spec_data is None:
            self._spec_data = {"id": self._spec.id, **self._spec.model_dump(mode="json")}
        return self._spec_data

    def status(self) -> StatusRow:
        """The status as committed to the store: a snapshot, never changed afterwards."""
        return self.writer.committed

    def post(self, message: Message) -> None:
        self.inbox.put_nowait(message)

    async def command(
        self, kind: CommandKind, *, force: bool = False, wait: bool = False, reason: str = ""
    ) -> CommandResult:
        reply: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self.post(Command(kind=kind, force=force, wait=wait, reason=reason, reply=reply))
        return await reply

    async def update(self, spec: ModelSpec, *, source: str, running_policy: str) -> CommandResult:
        reply: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self.post(UpdateSpec(spec=spec, source=source, running_policy=running_policy, reply=reply))
        return await reply

    async def change_adapter(self, name: str, path: str | None, *, source: str) -> CommandResult:
        reply: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self.post(AdapterChange(name=name, path=path, source=source, reply=reply))
        return await reply

    async def adapters(self) -> list[AdapterView]:
        """Each adapter of the spec, and whether the running engine serves it (a read)."""
        return await self.adapter_steps.views(self._spec, self.engine.run, self.writer.state)

    async def wait_for(self, test: StatusTest, *, timeout_s: float) -> bool:
        return await self.writer.wait_for(test, timeout_s=timeout_s)

    # -- the loop -------------------------------------------------------------------------
    async def serve(self) -> None:
        self.ctx.log_watcher.subscribe(self.ctx.log_path(self.model_id).name, self._log_grew)
        try:
            while not self.closed:
                message = await self.inbox.get()
                try:
                    await self._handle(message)
                    # Nothing is answered before it is on disk: the answers wait for the writes.
                    await self.ctx.registry.flush()
                except Exception as error:  # one bad message must not kill the model's loop
                    logger.exception("supervisor %s failed on %r", self.model_id, message)
                    self._answers.clear()
                    reply = message.reply if isinstance(message, _ANSWERED) else None
                    if reply is not None and not reply.done():
                        reply.set_exception(error)
                    continue
                if isinstance(message, _ANSWERED):
                    self._reply(message, CommandResult(changed=False))  # no-op if answered
                self._send_answers()
                self.writer.wake_waiters()
        finally:
            self.ctx.log_watcher.unsubscribe(self.ctx.log_path(self.model_id).name)
            self.engine.cancel_tasks()
            self._refuse_pending()

    def _refuse_pending(self) -> None:
        """Commands that arrived after a delete: the model is gone, say so instead of hanging."""
        while not self.inbox.empty():
            message = self.inbox.get_nowait()
            reply = message.reply if isinstance(message, _ANSWERED) else None
            if reply is not None and not reply.done():
                reply.set_exception(LookupError(self.model_id))

    def _log_grew(self) -> None:
        self.post(LogGrew())

    async def _handle(self, message: Message) -> None:
        match message:
            case Command():
                await self._on_command(message)
            case UpdateSpec():
                await self._on_update(message)
            case AdapterChange():
                await self._on_adapter(message)
            case Adopt(done=done):
                try:
                    await adopt(self.engine)
                    await self._reconcile_adapters()
                finally:
                    if done is not None:
                        # Adopted means its status is committed: /readyz promises that a read
                        # shows the adopted state, not a step on the way to it.
                        with contextlib.suppress(Exception):  # the loop logs a failed write
                            await self.ctx.registry.flush()
                        done.set()
            case _:
                await self._observe(message)

    async def _observe(self, message: Observation) -> None:
        engine = self.engine
        match message:
            case LogGrew():
                await engine.read_log()
            case EngineReady(generation=gen) if engine.is_current(gen):
                engine.on_ready()
                await self._reconcile_adapters()
                self.sharing.arm_idle_check()
            case EngineExited(generation=gen, code=code) if engine.is_current(gen):
                await engine.on_exit(code)
            case StartTimedOut(generation=gen) if engine.is_current(gen) and engine.run:
                timeout_s = engine.run.start_timeout_s
                await engine.fail(FailureKind.START_TIMEOUT, f"not ready within {timeout_s:g} s")
            case HealthFailed(generation=gen, detail=detail) if engine.is_current(gen):
                await engine.fail(FailureKind.UNHEALTHY, detail)
            case BackoffElapsed(epoch=epoch):
                await engine.on_backoff_elapsed(epoch)
            case StableElapsed(generation=gen) if engine.is_current(gen):
                self.writer.reset_failures("ran stable")
            case IdleCheck(generation=gen) if engine.is_current(gen):
                await self.sharing.on_idle_check()
            case _:
                pass  # about an engine run that has already ended

    # -- commands -------------------------------------------------------------------------
    async def _on_command(self, command: Command) -> None:
        engine = self.engine
        match command.kind:
            case CommandKind.START if self.writer.state == ModelState.SLEEPING:
                self._reply(command, await self.sharing.wake("woken", force=command.force))
            case CommandKind.START:
                if self.writer.desired == DesiredState.RUNNING and engine.run is not None:
                    self._reply(command, CommandResult(changed=False))  # starting or running
                    return
                self._reply(command, await self._start("operator start", force=command.force))
            case CommandKind.RESTART:
                await self._restart(command)
            case CommandKind.STOP:
                await self._stop(command)
            case CommandKind.SHUTDOWN:
                if engine.run is not None:
                    await engine.stop("orchestrator shutdown", self.writer.desired)
                    self._reply(command, CommandResult(changed=True))
            case CommandKind.DELETE:
                await self._delete(command)
            case CommandKind.UNLOAD:
                self._reply(command, await self.sharing.unload(command.reason))
            case _:
                assert_never(command.kind)

    async def _restart(self, command: Command) -> None:
        if self.engine.run is None:
            self._reply(command, await self._start("operator restart", force=command.force))
            return
        # Answered at once (202, stopping); the start follows the stop, and a refusal then is
        # a failure like any refused restart.
        await self.engine.stop("operator restart", DesiredState.RUNNING, self._answer(command))
        started = CommandResult(changed=True)
        if self.writer.state == ModelState.STOPPED:
            started = await self._start("operator restart", force=command.force, fail=True)
        self._reply(command, started)

    async def _stop(self, command: Command) -> None:
        status = self.writer.status
        changed = status.desired_state != "stopped" or status.state != "stopped"
        answer = self._answer(command)
        error = await self.engine.stop("operator stop", DesiredState.STOPPED, answer)
        self._reply(command, CommandResult(changed=changed, error=error))

    async def _delete(self, command: Command) -> None:
        state = self.writer.state
        if state not in AT_REST_STATES and not command.force:
            message = f"model {self.model_id} is {state.value}: stop it before you delete it"
            error = CommandError(ErrorCode.MODEL_RUNNING, message, {"state": state.value})
            self._reply(command, CommandResult(changed=False, error=error))
            return
        stop_error = await self.engine.stop("model deleted", DesiredState.STOPPED)
        if stop_error is not None:
            self._reply(command, CommandResult(changed=False, error=stop_error))
            return  # the model stays as it is, with its supervisor
        await self.ctx.registry.delete(self.model_id)
        self.writer.forget_metrics()
        self.closed = True
        self._reply(command, CommandResult(changed=True))

    async def _on_update(self, update: UpdateSpec) -> None:
        run = self.engine.run
        engine_up = run is not None or self.writer.state not in AT_REST_STATES
        change = judge_spec_change(
            self._spec,
            update.spec,
            engine_up=engine_up,
            running_policy=update.running_policy,
            live_adapters=run is not None and run.lora is not None,
        )
        if change.error is not None or not change.fields:
            self._reply(update, CommandResult(changed=False, error=change.error))
            return
        await self.ctx.registry.update(update.spec, source=update.source)
        self._spec, self._spec_data = update.spec, None
        if "start_timeout_s" in change.fields:
            self.engine.apply_start_timeout()
        if change.live_adapters:
            await self._reconcile_adapters()  # loads and unloads on the running engine
        if change.restart_needed:
            fields = ", ".join(sorted(change.fields))
            self.writer.flag_restart_needed(f"spec changed by {update.source}: {fields}")
        self._reply(update, CommandResult(changed=True, restart_needed=change.restart_needed))

    async def _on_adapter(self, change: AdapterChange) -> None:
        steps, run, state = self.adapter_steps, self.engine.run, self.writer.state
        if change.path is None:
            outcome = await steps.remove(self._spec, run, state, change.name)
        else:
            outcome = await steps.add(self._spec, run, state, change.name, change.path)
        if outcome.spec is not None:
            await self.ctx.registry.update(outcome.spec, source=change.source)
            self._spec, self._spec_data = outcome.spec, None
        self._reply(change, outcome.result)

    async def _reconcile_adapters(self) -> None:
        """The running engine serves exactly the spec's adapters (after a start, an adoption,
        an edit); one it cannot take flags restart_needed with the reason."""
        run = self.engine.run
        if run is None or self.writer.state != ModelState.RUNNING:
            return
        problems = await self.adapter_steps.reconcile(self._spec, run)
        if problems:
            self.writer.flag_restart_needed("adapters not loaded: " + "; ".join(problems))

    async def _start(self, reason: str, *, force: bool, fail: bool = False) -> CommandResult:
        # An operator's start clears degraded and the restart budget.
        self.sharing.clear_desired_reason()
        self.engine.cancel_backoff()
        self.writer.reset_failures(reason)
        error = await self.engine.launch(reason=reason, force=force, fail_on_refusal=fail)
        if error is not None and error.code != ErrorCode.LAUNCH_FAILED and not fail:
            self._after_refused_start()
            return CommandResult(changed=False, error=error)
        return CommandResult(changed=True, error=error)

    def _after_refused_start(self) -> None:
        """A refused operator start changes nothing: a stopped model stays wanted stopped, and a
        model waiting for its restart keeps waiting."""
        status = self.writer.status
        if status.state == ModelState.STOPPED:
            self.writer.set_desired(DesiredState.STOPPED)
        elif status.state == ModelState.FAILED and status.desired_state == DesiredState.RUNNING:
            self.engine.resume_backoff()

    def _reply(self, command: Answered, result: CommandResult) -> None:
        """Answer once the message's writes are committed (the first answer counts)."""
        if not any(queued is command for queued, _result in self._answers):
            self._answers.append((command, result))

    def _send_answers(self) -> None:
        for command, result in self._answers:
            self._resolve(command, result)
        self._answers.clear()

    def _resolve(self, command: Answered, result: CommandResult) -> None:
        if command.reply is not None and not command.reply.done():
            command.reply.set_result(replace(result, status=self.writer.committed))

    def _answer(self, command: Command) -> Callable[[CommandResult], None] | None:
        """The early answer of a command that does not wait for its end (None if it waits);
        the driver calls it once what it answers (stopping) is committed."""
        if command.wait:
            return None
        return lambda result: self._resolve(command, result)

    async def close(self) -> None:
        self.closed = True
        self.engine.cancel_tasks()
        self.inbox.put_nowait(LogGrew())  # wakes the loop, which then sees `closed`
