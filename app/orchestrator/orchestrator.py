"""The orchestrator as the API sees it: the registry plus one supervisor task per model.

Reads come from the store (or a supervisor's in-memory copy of its status); every change to a
model's engine goes to that model's supervisor as a command.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from app.orchestrator.engine_run import RunContext
from app.orchestrator.messages import Adopt, CommandKind, CommandResult
from app.orchestrator.registry import AlreadyExistsError
from app.orchestrator.spec import ModelSpec
from app.orchestrator.states import AT_REST_STATES, ModelState
from app.orchestrator.supervisor import Supervisor
from app.store.tables import EventRow, StatusRow

logger = logging.getLogger(__name__)

__all__ = ["AlreadyExistsError", "ModelNotFoundError", "ModelRunningError", "Orchestrator"]

# Fields an engine reads only at launch are safe to change while it runs only if they are these.
_LIVE_FIELDS = frozenset({"restart_policy", "start_timeout_s"})


class ModelNotFoundError(LookupError):
    pass


class ModelRunningError(Exception):
    def __init__(self, model_id: str, state: str, action: str) -> None:
        super().__init__(f"model {model_id} is {state}: stop it before you {action}")
        self.model_id = model_id
        self.state = state


class Orchestrator:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.supervisors: dict[str, Supervisor] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stop_watching = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._locks: dict[str, asyncio.Lock] = {}
        # Specs change only through this object, so reads are served from memory; the store
        # is written first, the cache after, under the model's lock.
        self._specs: dict[str, ModelSpec] = {}
        self._spec_data: dict[str, dict[str, Any]] = {}

    # -- life of the service ----------------------------------------------------------------
    async def start(self, *extra_tasks: Callable[[], asyncio.Task[None]]) -> None:
        """Watch the log directory, then re-adopt or recover every recorded model."""
        watcher = self.ctx.log_watcher
        self._background.append(asyncio.create_task(watcher.run(self._stop_watching)))
        await watcher.wait_ready()
        self._specs = {spec.id: spec for spec in self.ctx.registry.specs()}
        for spec in self._specs.values():
            self._spawn(spec.id).post(Adopt())
        for make_task in extra_tasks:
            self._background.append(make_task())

    async def shutdown(self) -> None:
        """Leave engines running (upgrades without downtime) unless the setting says stop."""
        if self.ctx.settings.stop_engines_on_shutdown:
            await asyncio.gather(
                *(sup.command(CommandKind.SHUTDOWN) for sup in self.supervisors.values()),
                return_exceptions=True,
            )
        for supervisor in self.supervisors.values():
            supervisor.oom.flush()
            await supervisor.close()
        for task in self._tasks.values():
            task.cancel()
        self._stop_watching.set()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._tasks.values(), *self._background, return_exceptions=True)
        await self.ctx.health.aclose()

    def _spawn(self, model_id: str) -> Supervisor:
        supervisor = Supervisor(model_id, self.ctx)
        self.supervisors[model_id] = supervisor
        self._tasks[model_id] = asyncio.create_task(supervisor.serve(), name=f"sup-{model_id}")
        return supervisor

    def _lock(self, model_id: str) -> asyncio.Lock:
        return self._locks.setdefault(model_id, asyncio.Lock())

    # -- registry ---------------------------------------------------------------------------
    def spec(self, model_id: str) -> ModelSpec:
        spec = self._specs.get(model_id)
        if spec is None:
            raise ModelNotFoundError(model_id)
        return spec

    def specs(self) -> list[ModelSpec]:
        return [self._specs[model_id] for model_id in sorted(self._specs)]

    def spec_data(self, model_id: str) -> dict[str, Any]:
        """The spec as JSON-ready data, id first; built once per change, not per request."""
        data = self._spec_data.get(model_id)
        if data is None:
            spec = self.spec(model_id)
            data = {"id": spec.id, **spec.model_dump(mode="json")}
            self._spec_data[model_id] = data
        return data

    def _remember(self, spec: ModelSpec) -> None:
        self._specs[spec.id] = spec
        self._spec_data.pop(spec.id, None)

    def status(self, model_id: str) -> StatusRow:
        supervisor = self.supervisors.get(model_id)
        if supervisor is not None:
            return supervisor.writer.status
        status = self.ctx.registry.status(model_id)
        if status is None:
            raise ModelNotFoundError(model_id)
        return status

    def statuses(self) -> dict[str, StatusRow]:
        """Each model's status as its supervisor holds it (the store's copy is the same)."""
        return {model_id: sup.writer.status for model_id, sup in self.supervisors.items()}

    def events(self, model_id: str, *, limit: int) -> list[EventRow]:
        self.spec(model_id)
        return self.ctx.registry.events(model_id, limit=limit)

    def log_tail(self, model_id: str, count: int) -> list[str]:
        self.spec(model_id)
        return self.ctx.log_tail(model_id, count)

    async def create_model(self, spec: ModelSpec, *, source: str = "api") -> None:
        async with self._lock(spec.id):
            self.ctx.registry.create(spec, source=source)
            self._remember(spec)
            self._spawn(spec.id)

    async def update_model(self, spec: ModelSpec, *, source: str = "api") -> bool:
        """Replace a spec. Changes an engine reads at launch need it stopped (ModelRunningError);
        restart_policy and start_timeout_s apply to a running engine at once."""
        async with self._lock(spec.id):
            current = self.spec(spec.id)
            changed = {
                name
                for name in ModelSpec.model_fields
                if getattr(current, name) != getattr(spec, name)
            }
            if not changed:
                return False
            state = ModelState(self.status(spec.id).state)
            if state not in AT_REST_STATES and changed - _LIVE_FIELDS:
                raise ModelRunningError(
                    spec.id, state.value, "change " + ", ".join(sorted(changed))
                )
            self.ctx.registry.update(spec, source=source)
            self._remember(spec)
            return True

    async def sync_model(self, spec: ModelSpec, *, source: str) -> str:
        """Create or update from a manifest; a running model is flagged, never restarted."""
        async with self._lock(spec.id):
            current = self._specs.get(spec.id)
            if current is None:
                self.ctx.registry.create(spec, source=source)
                self._remember(spec)
                self._spawn(spec.id)
                return "created"
            if current == spec:
                return "unchanged"
            self.ctx.registry.update(spec, source=source)
            self._remember(spec)
            supervisor = self.supervisors.get(spec.id)
            if supervisor is not None and supervisor.writer.state not in AT_REST_STATES:
                supervisor.writer.save(
                    {"kind": "restart_needed", "reason": f"spec changed by {source}"},
                    restart_needed=True,
                )
                return "updated (restart needed)"
            return "updated"

    async def delete_model(self, model_id: str, *, force: bool) -> None:
        async with self._lock(model_id):
            self.spec(model_id)
            state = ModelState(self.status(model_id).state)
            if state not in AT_REST_STATES and not force:
                raise ModelRunningError(model_id, state.value, "delete it (or use force=true)")
            supervisor = self.supervisors.pop(model_id, None)
            if supervisor is not None:
                await supervisor.command(CommandKind.DELETE)
                task = self._tasks.pop(model_id)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self.ctx.registry.delete(model_id)
            self._specs.pop(model_id, None)
            self._spec_data.pop(model_id, None)

    # -- lifecycle --------------------------------------------------------------------------
    async def command(
        self, model_id: str, kind: CommandKind, *, force: bool = False
    ) -> CommandResult:
        self.spec(model_id)
        supervisor = self.supervisors.get(model_id)
        if supervisor is None:
            raise ModelNotFoundError(model_id)
        return await supervisor.command(kind, force=force)

    def can_start(self, model_id: str, *, force: bool = False) -> dict[str, object]:
        spec = self.spec(model_id)
        decision = self.ctx.allocator.check(
            gpu_memory_util=spec.gpu_memory_util,
            tensor_parallel_size=spec.tensor_parallel_size,
            force=force,
        )
        return decision.to_dict()
