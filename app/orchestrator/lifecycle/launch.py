"""Launching one engine run: headroom, port, adapters, argv, then the launcher.

The run's identity (launch token, port, GPUs) is persisted as `starting` before the process is
spawned, so an orchestrator killed in between can still find the engine by its token.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.orchestrator.clock import Clock
from app.orchestrator.engine_command import build_engine_command
from app.orchestrator.gpu.headroom import GpuAllocator, HeadroomDecision
from app.orchestrator.gpu.probe import GpuProbe
from app.orchestrator.health import HealthProbe
from app.orchestrator.launchers.base import EngineHandle, Launcher, LaunchError, LaunchRequest
from app.orchestrator.logwatch import LogDirWatcher, tail_lines
from app.orchestrator.lora import AdapterError
from app.orchestrator.messages import CommandError
from app.orchestrator.metrics import Metrics
from app.orchestrator.ports import PortAllocator, PortUnavailableError
from app.orchestrator.registry import Registry
from app.orchestrator.resolver import ModelResolver
from app.orchestrator.spec import ModelSpec, RestartPolicy
from app.orchestrator.states import DesiredState, ModelState
from app.orchestrator.transitions import StatusWriter
from app.settings import Settings


@dataclass
class RunContext:
    """What every supervisor shares: the outside world, each behind its interface."""

    settings: Settings
    registry: Registry
    launcher: Launcher
    allocator: GpuAllocator
    gpu_probe: GpuProbe
    health: HealthProbe
    clock: Clock
    metrics: Metrics
    ports: PortAllocator
    log_watcher: LogDirWatcher
    resolver: ModelResolver
    parent_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    def spec(self, model_id: str) -> ModelSpec:
        spec = self.registry.spec(model_id)
        if spec is None:
            raise LookupError(model_id)
        return spec

    def policy(self, model_id: str) -> RestartPolicy:
        return self.spec(model_id).restart_policy

    def start_timeout_s(self, model_id: str) -> float:
        return self.spec(model_id).start_timeout_s or self.settings.start_timeout_s

    def log_path(self, model_id: str) -> Path:
        return self.settings.resolved_log_dir / f"{model_id}.log"

    def log_tail(self, model_id: str, count: int) -> list[str]:
        return tail_lines(self.log_path(model_id), count)

    def base_url(self, port: int) -> str:
        return f"http://{self.settings.engine_host}:{port}"

    def release(self, model_id: str) -> None:
        """The engine is gone (or never started): free its GPU memory and port."""
        self.allocator.mark_stopped(model_id)
        self.ports.release(model_id)


@dataclass
class EngineRun:
    generation: int
    handle: EngineHandle
    launch_token: str
    base_url: str
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
    code = decision.code or "insufficient_gpu_memory"
    return CommandError(code=code, message=decision.reason, figures=decision.to_dict())


async def launch_engine(
    ctx: RunContext, writer: StatusWriter, *, generation: int, reason: str, force: bool
) -> EngineRun | CommandError:
    """Launch an engine for the writer's model; a CommandError when it cannot even begin.

    Headroom and port refusals leave the status untouched (the start is refused); a failure to
    spawn returns code launch_failed after the run was recorded as starting.
    """
    spec = ctx.spec(writer.model_id)
    try:
        resolved = ctx.resolver.resolve(spec)
    except AdapterError as error:
        return CommandError(code="adapter_invalid", message=str(error))
    decision = await ctx.allocator.reserve(
        spec.id,
        gpu_memory_util=spec.gpu_memory_util,
        tensor_parallel_size=spec.tensor_parallel_size,
        force=force,
    )
    if not decision.ok:
        return _refusal(decision)
    try:
        port = ctx.ports.acquire(spec.id, spec.port)
    except PortUnavailableError as error:
        ctx.allocator.release(spec.id)
        return CommandError(
            code="port_unavailable", message=str(error), figures={"port": spec.port}
        )
    token = uuid.uuid4().hex
    command = build_engine_command(
        spec,
        base_command=ctx.settings.vllm_command,
        model_path=resolved.model_path,
        host=ctx.settings.engine_host,
        port=port,
        adapters=resolved.adapters,
        parent_env=ctx.parent_env,
        engine_env=ctx.settings.engine_env,
        gpu_ids=decision.gpu_ids,
        launch_token=token,
    )
    writer.set_desired(DesiredState.RUNNING)
    # STOPPED|FAILED|DEGRADED -> STARTING, recorded before the spawn.
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
    )
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
        return CommandError(code="launch_failed", message=str(error))
    writer.save(
        {"kind": "launched", "reason": f"pid {handle.pid} via {handle.launcher}"},
        pid=handle.pid,
        pid_create_time=handle.create_time,
        launcher=handle.launcher,
        unit_name=handle.unit_name,
        limits_enforced=handle.limits_enforced,
        notes={**writer.status.notes, **handle.notes},
    )
    return EngineRun(
        generation=generation, handle=handle, launch_token=token, base_url=ctx.base_url(port)
    )
