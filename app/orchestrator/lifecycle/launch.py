"""Launching one engine run: adapters, headroom, port, argv, then the launcher.

The run's identity (launch token, port, GPUs) is persisted as `starting` before the process is
spawned, so an orchestrator killed in between can still find the engine by its token. Whatever
was reserved (GPU memory, a port) is released on every way out that does not end in a spawned
engine: a refusal, a bad adapter, a failed spawn, an exception, a cancellation.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from app.orchestrator.cluster.stale import MODEL_ENV
from app.orchestrator.engine_command import EngineCommand, build_engine_command, engine_lora_limits
from app.orchestrator.gpu.headroom import HeadroomDecision
from app.orchestrator.launchers.base import EngineHandle, LaunchError, LaunchRequest
from app.orchestrator.lifecycle.context import RunContext
from app.orchestrator.lifecycle.errors import CommandError, ErrorCode
from app.orchestrator.lifecycle.states import DesiredState, ModelState
from app.orchestrator.lifecycle.status_writer import StatusWriter
from app.orchestrator.lora import AdapterError, LoraLimits
from app.orchestrator.ports import PortUnavailableError
from app.orchestrator.resolver import ResolvedModel
from app.orchestrator.spec import ModelSpec

logger = logging.getLogger(__name__)


@dataclass
class EngineRun:
    generation: int
    handle: EngineHandle
    launch_token: str
    base_url: str
    # The deadline this run's start is judged by (monotonic seconds) and the timeout it came
    # from; a spec edit of start_timeout_s during the start moves both.
    start_timeout_s: float = 0.0
    start_deadline: float = 0.0
    # The LoRA limits the engine was launched with (None: no LoRA; adapters cannot be added live).
    lora: LoraLimits | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(asyncio.create_task(coroutine))

    def cancel_tasks(self) -> None:
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        self.tasks.clear()


def _refusal(decision: HeadroomDecision) -> CommandError:
    # A refused decision always carries its code; the fallback only satisfies the type.
    code = ErrorCode(decision.code or ErrorCode.INSUFFICIENT_GPU_MEMORY)
    return CommandError(code=code, message=decision.reason, figures=decision.to_dict())


def _adapter_refusal(error: AdapterError) -> CommandError:
    return CommandError(ErrorCode.ADAPTER_INVALID, str(error), figures=dict(error.figures))


def _command(
    ctx: RunContext,
    spec: ModelSpec,
    resolved: ResolvedModel,
    *,
    port: int,
    gpu_ids: tuple[int, ...],
    token: str,
) -> EngineCommand:
    return build_engine_command(
        spec,
        base_command=ctx.settings.vllm_command,
        model_path=resolved.model_path,
        host=ctx.settings.engine_host,
        port=port,
        adapters=resolved.adapters,
        parent_env=ctx.parent_env,
        engine_env=ctx.settings.engine_env,
        gpu_ids=gpu_ids,
        launch_token=token,
    )


async def launch_engine(
    ctx: RunContext,
    writer: StatusWriter,
    spec: ModelSpec,
    *,
    generation: int,
    reason: str,
    force: bool,
) -> EngineRun | CommandError:
    """Launch an engine for `spec`; a CommandError when it cannot even begin.

    Refusals (adapters, headroom, port) leave the status untouched; a failure to spawn returns
    code launch_failed after the run was recorded as starting.
    """
    try:
        resolved = ctx.resolver.resolve(spec)
        # The argv is built once before anything is reserved, so an adapter vLLM cannot take
        # is refused here and never holds memory or a port (the real build follows).
        _command(ctx, spec, resolved, port=0, gpu_ids=(), token="")
    except AdapterError as error:
        return _adapter_refusal(error)
    decision = await ctx.allocator.reserve(
        spec.id,
        gpu_memory_util=spec.gpu_memory_util,
        tensor_parallel_size=spec.tensor_parallel_size,
        force=force,
    )
    if not decision.ok:
        return _refusal(decision)
    launched = False
    try:
        outcome = await _reserved_launch(
            ctx, writer, spec, resolved, decision, generation=generation, reason=reason
        )
        launched = isinstance(outcome, EngineRun)
        return outcome
    finally:
        if not launched:
            ctx.release(spec.id)


async def _reserved_launch(
    ctx: RunContext,
    writer: StatusWriter,
    spec: ModelSpec,
    resolved: ResolvedModel,
    decision: HeadroomDecision,
    *,
    generation: int,
    reason: str,
) -> EngineRun | CommandError:
    try:
        port = ctx.ports.acquire(spec.id, spec.port)
    except PortUnavailableError as error:
        return CommandError(ErrorCode.PORT_UNAVAILABLE, str(error), figures={"port": spec.port})
    token = uuid.uuid4().hex
    try:
        command = _command(ctx, spec, resolved, port=port, gpu_ids=decision.gpu_ids, token=token)
        command.env[MODEL_ENV] = spec.id
    except AdapterError as error:
        return _adapter_refusal(error)
    writer.set_desired(DesiredState.RUNNING)
    # STOPPED|FAILED|DEGRADED -> STARTING, recorded (and committed) before the spawn.
    writer.to(
        ModelState.STARTING,
        reason,
        data={"argv": command.argv, "gpu_ids": list(decision.gpu_ids)},
        launch_token=token,
        port=port,
        gpu_ids=list(decision.gpu_ids),
        pid=None,
        pid_create_time=None,
        next_attempt_at=None,
        restart_needed=False,
        node=ctx.settings.node_name,
    )
    await ctx.registry.flush()  # fenced: refused unless this node still holds the lease
    if not ctx.may_launch(spec.id):
        message = f"node {ctx.settings.node_name} cannot renew its lease of {spec.id}"
        return CommandError(ErrorCode.LAUNCH_FAILED, message)
    request = LaunchRequest(
        model_id=spec.id,
        argv=command.argv,
        env=command.env,
        log_path=ctx.log_path(spec.id),
        unit_name=spec.unit_name,
        memory_max=spec.memory_max,
        cpu_quota=spec.cpu_quota,
    )
    try:
        handle = await ctx.launcher.launch(request)
    except LaunchError as error:
        return CommandError(ErrorCode.LAUNCH_FAILED, str(error))
    except Exception as error:
        # A launcher's bug must not leave the model `starting` with no engine: it is a failed
        # launch like any other (failed, backoff, budget), and the log has the traceback.
        logger.exception("launcher %s failed for %s", ctx.launcher.name, spec.id)
        return CommandError(ErrorCode.LAUNCH_FAILED, f"{type(error).__name__}: {error}")
    writer.save(
        {"kind": "launched", "reason": f"pid {handle.pid} via {handle.launcher}"},
        pid=handle.pid,
        pid_create_time=handle.create_time,
        launcher=handle.launcher,
        unit_name=handle.unit_name,
        limits_enforced=handle.limits_enforced,
        notes={**writer.status.notes, **handle.notes},
    )
    timeout_s = spec.start_timeout_s or ctx.settings.start_timeout_s
    return EngineRun(
        generation=generation,
        handle=handle,
        launch_token=token,
        base_url=ctx.base_url(port),
        start_timeout_s=timeout_s,
        start_deadline=ctx.clock.monotonic() + timeout_s,
        lora=engine_lora_limits(spec, resolved.adapters),
    )
