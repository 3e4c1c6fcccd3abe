"""What an orchestrator reads: this node's models from their supervisors (snapshots of what they
committed), the other nodes' from the cluster view (one read of the shared tables). Alone on
SQLite the view is empty and every read is a supervisor's."""

from __future__ import annotations

import asyncio
from typing import Any

from app.orchestrator.cluster.errors import OwnedElsewhereError
from app.orchestrator.cluster.node import ClusterNode
from app.orchestrator.cluster.view import ClusterSnapshot
from app.orchestrator.lifecycle import RunContext, Supervisor
from app.orchestrator.spec import ModelSpec
from app.store.tables import EventRow, StatusRow


class ModelNotFoundError(LookupError):
    pass


class ModelReads:
    """The read half of the Orchestrator (a base class: the Orchestrator sets these)."""

    ctx: RunContext
    cluster: ClusterNode
    node: str
    supervisors: dict[str, Supervisor]
    spec_version: int
    _seen_view: dict[str, ModelSpec]

    def _note_view(self, snapshot: ClusterSnapshot) -> None:
        if snapshot.specs != self._seen_view:
            self._seen_view = snapshot.specs
            self.spec_version += 1

    async def refresh(self) -> None:
        """Read the other nodes' models as they are now (a no-op alone on SQLite): one read of
        the shared tables, shared by the requests that ask at the same time."""
        if self.cluster.shared:
            self._note_view(await self.cluster.view.read(max_age_s=0))

    def owns(self, model_id: str) -> bool:
        """This node supervises the model (holds its lease)."""
        supervisor = self.supervisors.get(model_id)
        return supervisor is not None and not supervisor.closed

    def remote_owner(self, model_id: str) -> OwnedElsewhereError | None:
        """Where the model runs when another live node holds it, as of the view."""
        if self.owns(model_id):
            return None
        snapshot = self.cluster.view.latest
        owner = snapshot.live_owner(model_id)
        if owner is None or owner == self.node:
            return None
        return OwnedElsewhereError(
            model_id, owner, snapshot.url(owner), why="its node holds the model's lease"
        )

    # -- reads (this node's models from their supervisors, the others from the view) -----------
    def spec(self, model_id: str) -> ModelSpec:
        if self.owns(model_id):
            return self.supervisors[model_id].spec
        spec = self.cluster.view.latest.specs.get(model_id)
        if spec is None:
            raise ModelNotFoundError(model_id)
        return spec

    def specs(self) -> list[ModelSpec]:
        merged = dict(self.cluster.view.latest.specs)
        merged.update({model_id: sup.spec for model_id, sup in self.supervisors.items()})
        return [merged[model_id] for model_id in sorted(merged)]

    def spec_data(self, model_id: str) -> dict[str, Any]:
        """The spec as JSON-ready data, id first; built once per change, not per request."""
        if self.owns(model_id):
            return self.supervisors[model_id].spec_data()
        spec = self.spec(model_id)
        return {"id": spec.id, **spec.model_dump(mode="json")}

    def status(self, model_id: str) -> StatusRow:
        if self.owns(model_id):
            return self.supervisors[model_id].status()
        status = self.cluster.view.latest.statuses.get(model_id)
        if status is None:
            raise ModelNotFoundError(model_id)
        return status

    def statuses(self) -> dict[str, StatusRow]:
        merged = dict(self.cluster.view.latest.statuses)
        merged.update({model_id: sup.status() for model_id, sup in self.supervisors.items()})
        return merged

    async def events(self, model_id: str, *, limit: int) -> list[EventRow]:
        self.spec(model_id)
        return await asyncio.to_thread(self.ctx.registry.events, model_id, limit=limit)

    async def log_tail(self, model_id: str, count: int) -> list[str]:
        elsewhere = self.remote_owner(model_id)
        if elsewhere is not None:
            raise elsewhere  # the log is on that node's disk
        self.spec(model_id)
        return await asyncio.to_thread(self.ctx.log_tail, model_id, count)

    async def can_start(self, model_id: str, *, force: bool = False) -> dict[str, object]:
        spec = self.spec(model_id)
        decision = await self.ctx.allocator.check(
            gpu_memory_util=spec.gpu_memory_util,
            tensor_parallel_size=spec.tensor_parallel_size,
            force=force,
        )
        return decision.to_dict()
