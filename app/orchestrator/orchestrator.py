"""The orchestrator as the API sees it: one supervisor task per model, and the ways in.

Every change to a model (its spec, its engine, its deletion) is a message to that model's
supervisor, its only writer; this object never reads a state and then acts on it. Reads return
snapshots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Coroutine
from typing import Any

from pydantic import ValidationError

from app.orchestrator.activity import ActivityBoard
from app.orchestrator.cluster.errors import OwnedElsewhereError
from app.orchestrator.cluster.event_relay import relay_events
from app.orchestrator.cluster.node import ClusterNode
from app.orchestrator.lifecycle import (
    CommandKind,
    CommandResult,
    ErrorCode,
    ModelState,
    RunContext,
    Supervisor,
)
from app.orchestrator.lifecycle.adapters import AdapterView, with_adapter
from app.orchestrator.lifecycle.messages import Adopt
from app.orchestrator.model_names import name_conflicts
from app.orchestrator.ownership import Ownership
from app.orchestrator.reads import ModelNotFoundError, ModelReads
from app.orchestrator.registry import AlreadyExistsError
from app.orchestrator.room import RoomMaker
from app.orchestrator.spec import ModelSpec
from app.store.tables import StatusRow

logger = logging.getLogger(__name__)

__all__ = [
    "AdapterNameConflictError",
    "AlreadyExistsError",
    "ModelNotFoundError",
    "ModelRunningError",
    "Orchestrator",
    "OwnedElsewhereError",
]


class AdapterNameConflictError(Exception):
    """A spec would make a name the gateway routes by (a model id, an adapter name) ambiguous."""

    def __init__(self, model_id: str, names: list[str]) -> None:
        super().__init__(
            f"model {model_id}: {', '.join(names)} already name another model or its adapter "
            "on this node; adapter names must be unique"
        )
        self.model_id = model_id
        self.names = names


class ModelRunningError(Exception):
    def __init__(self, model_id: str, message: str, figures: dict[str, Any]) -> None:
        super().__init__(message)
        self.model_id = model_id
        self.figures = figures


class Orchestrator(ModelReads):
    def __init__(self, ctx: RunContext, cluster: ClusterNode | None = None) -> None:
        self.ctx = ctx
        self.cluster = cluster or ClusterNode.alone(ctx.registry, ctx.settings)
        self.node = self.cluster.name
        # Every write of a model's spec or status is fenced by this node's lease of it, and a
        # launch needs the lease with a current heartbeat.
        ctx.registry.fence = self.cluster.leases.fence
        ctx.may_launch = self.cluster.leases.holds
        self.ownership = Ownership(self, self.cluster)
        self.supervisors: dict[str, Supervisor] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stop_watching = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        # Spec changes of all models, one at a time: one id is inserted once, and a name the
        # gateway routes by is checked against every other spec and taken in one step.
        self._changing = asyncio.Lock()
        self._room = RoomMaker(self)
        # Set once every recorded model has been adopted: until then a status may still be the
        # one recorded before the restart, and /readyz says so.
        self.adopted = asyncio.Event()
        # Requests in flight and the last one's time, per model (the gateway writes them).
        self.activity: ActivityBoard = ctx.activity
        # Adapters being added right now, by name: the gateway waits for them to load.
        self.loading_adapters: dict[str, asyncio.Event] = {}
        # Bumped by every spec change, so readers (the gateway's routes) rebuild only then.
        self.spec_version = 0
        self._seen_view: dict[str, ModelSpec] = {}

    # -- life of the service ----------------------------------------------------------------
    async def start(self, *extra_tasks: Callable[[], asyncio.Task[None]]) -> None:
        """Watch the log directory, then re-adopt or recover every recorded model."""
        watcher = self.ctx.log_watcher
        self._background.append(asyncio.create_task(watcher.run(self._stop_watching)))
        await watcher.wait_ready()
        claimed = await self.ownership.claim_at_start()
        self._note_view(self.cluster.view.latest)
        await self.ctx.allocator.refresh()
        adoptions: list[Coroutine[Any, Any, Any]] = []
        for spec, status in claimed:
            done = asyncio.Event()
            self.spawn(spec, status).post(Adopt(done=done))
            adoptions.append(done.wait())
        self._background.append(asyncio.create_task(self._mark_adopted(adoptions)))
        membership = self.cluster.membership
        if membership is not None:
            heartbeat = membership.run(
                self._stop_watching,
                fenced=self.ownership.fence,
                recovered=self.ownership.recover,
                beat=self._after_heartbeat,
            )
            self._background.append(asyncio.create_task(heartbeat))
            # Other nodes' events reach this node's listeners (its /events streams) too.
            after_id = await asyncio.to_thread(self.ctx.registry.last_event_id)
            relay = relay_events(self.ctx.registry, self._stop_watching, after_id=after_id)
            self._background.append(asyncio.create_task(relay))
        for make_task in extra_tasks:
            self._background.append(make_task())

    async def _mark_adopted(self, adoptions: list[Coroutine[Any, Any, Any]]) -> None:
        await asyncio.gather(*adoptions)
        # Only now are this node's current engines known: what else it runs is stale.
        await self.ownership.clear_stale()
        self.adopted.set()

    async def _after_heartbeat(self) -> None:
        snapshot = await self.cluster.view.read(max_age_s=0)
        self._note_view(snapshot)
        if self.adopted.is_set():
            await self.ownership.take_orphans(snapshot)

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
        await self.ctx.registry.flush()
        if self.cluster.membership is not None:
            if self.ctx.settings.stop_engines_on_shutdown:
                await asyncio.to_thread(self.cluster.membership.stop_watchdog)
            try:
                await asyncio.to_thread(self.cluster.membership.leave)
            except Exception:  # the database is gone: the name frees itself at its expiry
                logger.warning("node %s: could not record its exit", self.node, exc_info=True)
        await self.ctx.health.aclose()
        await self.ctx.adapters.aclose()
        await self.ctx.sleep.aclose()

    def spawn(self, spec: ModelSpec, status: StatusRow) -> Supervisor:
        """Run a supervisor for the model here (the caller holds its lease)."""
        supervisor = Supervisor(spec, status, self.ctx)
        self.supervisors[spec.id] = supervisor
        self._tasks[spec.id] = asyncio.create_task(supervisor.serve(), name=f"sup-{spec.id}")
        self.spec_version += 1
        return supervisor

    async def drop(self, model_id: str) -> None:
        """Stop supervising the model here (its lease is being given up or is lost)."""
        supervisor = self.supervisors.pop(model_id, None)
        task = self._tasks.pop(model_id, None)
        if supervisor is not None:
            await supervisor.close()
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.spec_version += 1

    async def _own(self, model_id: str) -> Supervisor:
        """The model's supervisor for a write: this node's, taking the lease if free."""
        try:
            return await self.ownership.own(model_id)
        except LookupError:
            raise ModelNotFoundError(model_id) from None

    def supervisor(self, model_id: str) -> Supervisor:
        """The model's supervisor, to send it messages (ModelNotFoundError if none)."""
        return self._supervisor(model_id)

    def _supervisor(self, model_id: str) -> Supervisor:
        supervisor = self.supervisors.get(model_id)
        if supervisor is None or supervisor.closed:
            raise ModelNotFoundError(model_id)
        return supervisor

    # -- the registry -------------------------------------------------------------------------
    def _check_names(self, spec: ModelSpec) -> None:
        conflicts = name_conflicts(spec, self.specs())
        if conflicts:
            raise AdapterNameConflictError(spec.id, conflicts)

    async def create_model(self, spec: ModelSpec, *, source: str = "api") -> None:
        async with self._changing:
            await self._create(spec, source=source)

    async def _create(self, spec: ModelSpec, *, source: str) -> None:
        if spec.id in self.supervisors:
            raise AlreadyExistsError(spec.id)  # another node's model: the insert says so
        self._check_names(spec)
        # The node that creates a model holds it until a start places it elsewhere: the lease
        # is taken in the insert's transaction, and the supervisor runs before any await, so a
        # reader told of the new model (its `created` event) always finds it here.
        leases = self.cluster.leases
        try:
            status = await self.ctx.registry.create(spec, source=source, claim=leases.claim_new)
        except BaseException:
            leases.forget(spec.id)
            raise
        self.spawn(spec, status)

    async def update_model(self, spec: ModelSpec, *, source: str = "api") -> bool:
        """Replace a spec. Changes an engine reads at launch need it stopped (ModelRunningError);
        restart_policy and start_timeout_s apply to a running engine at once."""
        async with self._changing:
            supervisor = await self._own(spec.id)
            self._check_names(spec)
            result = await supervisor.update(spec, source=source, running_policy="refuse")
            if result.error is not None:
                raise ModelRunningError(spec.id, result.error.message, result.error.figures)
            self.spec_version += result.changed
            return result.changed

    async def sync_model(self, spec: ModelSpec, *, source: str) -> str:
        """Create or update from a manifest; a running model is flagged, never restarted."""
        async with self._changing:
            if spec.id not in self.supervisors:
                with contextlib.suppress(AlreadyExistsError):  # known to another node
                    await self._create(spec, source=source)
                    return "created"
                # Every node may load the same manifests (one ConfigMap): a spec as stored
                # needs no lease, and another node's model is that node's to update.
                await self.refresh()
                with contextlib.suppress(ModelNotFoundError):
                    if self.spec(spec.id) == spec:
                        return "unchanged"
                if self.remote_owner(spec.id) is not None:
                    return "unchanged"
            supervisor = await self._own(spec.id)
            self._check_names(spec)
            result = await supervisor.update(spec, source=source, running_policy="flag")
            if not result.changed:
                return "unchanged"
            self.spec_version += 1
            return "updated (restart needed)" if result.restart_needed else "updated"

    async def delete_model(self, model_id: str, *, force: bool) -> CommandResult:
        """Stop the engine (force) and delete. A refused or failed delete leaves the model as it
        was, with its supervisor, and says why."""
        supervisor = await self._own(model_id)
        result = await supervisor.command(CommandKind.DELETE, force=force)
        if result.error is not None:
            if result.error.code == ErrorCode.MODEL_RUNNING:
                raise ModelRunningError(model_id, result.error.message, result.error.figures)
            return result
        self.supervisors.pop(model_id, None)
        self.cluster.leases.forget(model_id)  # deleted with its model
        self.cluster.view.forget(model_id)
        self.activity.forget(model_id)
        self.spec_version += 1
        task = self._tasks.pop(model_id)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return result

    # -- adapters -----------------------------------------------------------------------------
    async def adapters(self, model_id: str) -> list[AdapterView]:
        return await (await self._own(model_id)).adapters()

    async def add_adapter(
        self, model_id: str, name: str, path: str, *, source: str = "api"
    ) -> CommandResult:
        """Add an adapter to the spec, and load it live on a running engine. Its name is taken
        node-wide in the same step; requests for it wait while it loads."""
        async with self._changing:
            supervisor = await self._own(model_id)
            spec = supervisor.spec
            if spec.adapter_names.get(path, None) != name or path not in spec.adapter_paths:
                try:
                    candidate = with_adapter(spec, name, path)
                except ValidationError:
                    candidate = None  # the supervisor says what is wrong with it
                if candidate is not None:
                    self._check_names(candidate)
            loading = self.loading_adapters.setdefault(name, asyncio.Event())
            try:
                result = await supervisor.change_adapter(name, path, source=source)
                self.spec_version += result.changed
            finally:
                self.loading_adapters.pop(name, None)
                loading.set()
            return result

    async def remove_adapter(
        self, model_id: str, name: str, *, source: str = "api"
    ) -> CommandResult:
        async with self._changing:
            supervisor = await self._own(model_id)
            result = await supervisor.change_adapter(name, None, source=source)
            self.spec_version += result.changed
            return result

    # -- lifecycle ----------------------------------------------------------------------------
    async def command(
        self, model_id: str, kind: CommandKind, *, force: bool = False, wait: bool = False
    ) -> CommandResult:
        supervisor = await self._own(model_id)
        try:
            return await supervisor.command(kind, force=force, wait=wait)
        except LookupError:
            raise ModelNotFoundError(model_id) from None

    async def start_model(
        self,
        model_id: str,
        *,
        force: bool = False,
        evict: bool = False,
        placed_here: bool = False,
    ) -> CommandResult:
        """Start (or wake) a model; with `evict`, make room by unloading idle engines of lower
        or equal priority (RoomMaker). A refusal lists what evict=true would unload. With other
        nodes, a start of a model at rest is placed first (OwnedElsewhereError: it goes
        there), unless another node already placed it here (`placed_here`)."""
        try:
            supervisor = await self.ownership.for_start(model_id, placed_here=placed_here)
            return await self._room.start(supervisor, force=force, evict=evict)
        except LookupError:
            raise ModelNotFoundError(model_id) from None

    async def wait_for_state(
        self, model_id: str, states: Collection[ModelState], *, timeout_s: float
    ) -> bool:
        """Wait until the model's state is one of `states`; False at the timeout."""
        wanted = {state.value for state in states}
        return await (await self._own(model_id)).wait_for(
            lambda status: status.state in wanted, timeout_s=timeout_s
        )
