"""Which models this node acts on, and how one becomes this node's.

A node runs a supervisor for a model only while it holds the model's lease (cluster/leases.py):
at start-up it takes back the leases it held, on a write it takes the lease of a model nobody
holds, on a start it may place the model on another node and hand the lease over, after a
heartbeat it takes the orphans of lost nodes that placement gives it (failover), and when its
own heartbeat lapses it stops every engine and lets go (self-fencing). Alone on a SQLite
database, a node holds every model's lease and nothing here ever hands one over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from app.orchestrator.cluster.errors import OwnedElsewhereError
from app.orchestrator.cluster.failover import orphans_for
from app.orchestrator.cluster.gpus import published_gpus
from app.orchestrator.cluster.leases import LeaseHeldError
from app.orchestrator.cluster.node import ClusterNode
from app.orchestrator.cluster.placement import place
from app.orchestrator.cluster.stale import stop_stale_engines
from app.orchestrator.cluster.view import ClusterSnapshot
from app.orchestrator.failures import FailureKind
from app.orchestrator.lifecycle import (
    AT_REST_STATES,
    ENGINE_STATES,
    DesiredState,
    ModelState,
    Supervisor,
)
from app.orchestrator.lifecycle.messages import Adopt
from app.orchestrator.spec import ModelSpec
from app.store.tables import LeaseRow, NodeRow, StatusRow

if TYPE_CHECKING:
    from app.orchestrator.orchestrator import Orchestrator

logger = logging.getLogger(__name__)


_REFUSALS = frozenset(
    {
        FailureKind.INSUFFICIENT_GPU_MEMORY,
        FailureKind.GPU_MEMORY_LOW,
        FailureKind.GPU_UNAVAILABLE,
    }
)


def at_rest(status: StatusRow) -> bool:
    return status.desired_state == DesiredState.STOPPED and status.state in AT_REST_STATES


class Ownership:
    def __init__(self, orchestrator: Orchestrator, cluster: ClusterNode) -> None:
        self.orchestrator = orchestrator
        self.cluster = cluster
        self.node = cluster.name
        self._taking = asyncio.Lock()

    # -- taking a model ---------------------------------------------------------------------
    def _ours_at_start(self, status: StatusRow, lease: LeaseRow | None) -> bool:
        if not self.cluster.shared:
            return True  # alone: every model is this node's
        if lease is not None:
            return lease.node == self.node  # even expired: nobody has taken it since
        # No lease (a database from before leases): what this node ran, or what no node did.
        return status.node in (None, self.node) and not at_rest(status)

    async def claim_at_start(self) -> list[tuple[ModelSpec, StatusRow]]:
        """Take the leases of the models this node should supervise now; their spec and the
        status to adopt them from."""
        snapshot = await self.cluster.view.read(max_age_s=0)
        claimed = []
        for model_id, spec in sorted(snapshot.specs.items()):
            status = snapshot.statuses.get(model_id)
            if status is None or model_id in self.orchestrator.supervisors:
                continue
            if not self._ours_at_start(status, snapshot.leases.get(model_id)):
                continue
            try:
                await self.cluster.leases.acquire(model_id)
            except (LeaseHeldError, LookupError):
                continue  # another node took it meanwhile, or it was deleted
            claimed.append((spec, self._claimed(status)))
        return claimed

    def _claimed(self, status: StatusRow, *, failover: bool = True) -> StatusRow:
        """The status as this node takes it: another node's engine is not this node's to adopt
        (its pid means nothing here), so its run is recorded as ended. A failover keeps it
        wanted running (and starts it); a model taken for an operator's command (its node is
        lost and it allows no failover) is wanted stopped until that command says otherwise."""
        if status.node in (None, self.node):
            return status
        taken = StatusRow(**status.model_dump())
        if taken.state in ENGINE_STATES or taken.state == ModelState.FAILED:
            # (A failure there waited out its backoff there: here the model starts afresh.)
            taken.state = "stopped"
            taken.next_attempt_at = None
        if not failover:
            taken.desired_state = DesiredState.STOPPED
        taken.pid = taken.pid_create_time = taken.launch_token = taken.port = None
        taken.unit_name = None
        taken.gpu_ids = []
        taken.node = self.node
        event = {
            "kind": "taken_over",
            "reason": f"from node {status.node}",
            "from_state": status.state,
            "to_state": taken.state,
            "data": {"from_node": status.node, "to_node": self.node},
        }
        self.orchestrator.ctx.registry.save_status(taken, event=event)
        return taken

    async def _url(self, node: str) -> str | None:
        snapshot = await self.cluster.view.read()
        return snapshot.url(node)

    async def own(self, model_id: str) -> Supervisor:
        """This node's supervisor of the model, taking its lease if no live node holds it;
        OwnedElsewhereError names the node that does."""
        supervisor = self.orchestrator.supervisors.get(model_id)
        if supervisor is not None and not supervisor.closed:
            return supervisor
        async with self._taking:
            supervisor = self.orchestrator.supervisors.get(model_id)
            if supervisor is not None and not supervisor.closed:
                return supervisor
            try:
                await self.cluster.leases.acquire(model_id)
            except LeaseHeldError as held:
                url = await self._url(held.node)
                raise OwnedElsewhereError(
                    model_id, held.node, url, why="its node holds the model's lease"
                ) from None
            registry = self.orchestrator.ctx.registry
            spec = await asyncio.to_thread(registry.spec, model_id)
            status = await asyncio.to_thread(registry.status, model_id)
            if spec is None or status is None:
                self.cluster.leases.forget(model_id)
                raise LookupError(model_id)
            return await self.adopt(spec, self._claimed(status, failover=False))

    async def adopt(self, spec: ModelSpec, status: StatusRow) -> Supervisor:
        """Spawn the model's supervisor here and wait for it to adopt (or start) its engine."""
        supervisor = self.orchestrator.spawn(spec, status)
        done = asyncio.Event()
        supervisor.post(Adopt(done=done))
        await done.wait()
        return supervisor

    # -- starting somewhere -----------------------------------------------------------------
    async def for_start(self, model_id: str, *, placed_here: bool) -> Supervisor:
        """The supervisor a start goes to: this node's, or OwnedElsewhereError naming the node
        the model runs on or is placed on (the API sends the request there)."""
        supervisor = self.orchestrator.supervisors.get(model_id)
        if supervisor is not None and supervisor.closed:
            supervisor = None
        if supervisor is not None and (
            not self.cluster.shared or not at_rest(supervisor.writer.status)
        ):
            return supervisor  # alone, or it runs (or wants to) here
        if not self.cluster.shared:
            return await self.own(model_id)
        snapshot = await self.cluster.view.read(max_age_s=0)
        owner = snapshot.live_owner(model_id)
        if owner is not None and owner != self.node:
            why = "its node holds the model's lease"
            raise OwnedElsewhereError(model_id, owner, snapshot.url(owner), why=why)
        spec = supervisor.spec if supervisor is not None else snapshot.specs.get(model_id)
        if spec is None:
            raise LookupError(model_id)
        here_allowed = spec.node in (None, self.node)
        if placed_here and here_allowed:
            return await self.own(model_id)
        target = await self._placement(spec, snapshot)
        if target is None or target[0] == self.node:
            if here_allowed:  # nothing fits anywhere: try here, where eviction can make room
                return await self.own(model_id)
            raise OwnedElsewhereError(
                model_id, spec.node or "?", None, why=f"pinned to node {spec.node}, which is down"
            )
        node, reason = target
        if supervisor is not None:
            await self.hand_over(model_id)
        raise OwnedElsewhereError(model_id, node, snapshot.url(node), why=reason, placed=True)

    async def _placement(
        self, spec: ModelSpec, snapshot: ClusterSnapshot
    ) -> tuple[str, str] | None:
        settings = self.cluster.settings
        nodes = dict(snapshot.nodes)
        mine = nodes.get(self.node)
        if mine is not None:  # this node's own figures as of now, not of its last heartbeat
            ctx = self.orchestrator.ctx
            gpus = await asyncio.to_thread(published_gpus, ctx.gpu_probe, ctx.allocator)
            nodes[self.node] = NodeRow(**{**mine.model_dump(), "gpus": gpus})
        choice = place(
            spec,
            list(nodes.values()),
            here=self.node,
            now=snapshot.now,
            policy=settings.placement,
            margin_mib=settings.headroom_margin_mib,
        )
        return None if choice.node is None else (choice.node, choice.reason)

    async def hand_over(self, model_id: str) -> None:
        """Let a model at rest go: close its supervisor here and release its lease."""
        await self.orchestrator.drop(model_id)
        await self.cluster.leases.release(model_id)

    # -- losing and regaining the cluster ---------------------------------------------------
    async def fence(self) -> None:
        """The leases can no longer be trusted: stop every engine here, writing nothing (the
        store would refuse it), and hold no model until the heartbeat is back."""
        orchestrator = self.orchestrator
        ctx = orchestrator.ctx
        for model_id in list(orchestrator.supervisors):
            supervisor = orchestrator.supervisors[model_id]
            run = supervisor.engine.run
            await orchestrator.drop(model_id)
            self.cluster.leases.forget(model_id)
            if run is not None:
                try:
                    await ctx.launcher.stop(run.handle, grace_s=ctx.settings.stop_grace_s)
                except Exception:
                    logger.exception(
                        "node %s: could not stop the engine of %s", self.node, model_id
                    )
            ctx.release(model_id)

    async def recover(self) -> None:
        """The heartbeat is back: take back what is still this node's, stop what is not."""
        for spec, status in await self.claim_at_start():
            await self.adopt(spec, status)
        await self.clear_stale()

    async def clear_stale(self) -> None:
        """Stop engines this node started for models it no longer owns."""
        if not self.cluster.shared:
            return
        tokens = {
            token
            for supervisor in self.orchestrator.supervisors.values()
            if (token := supervisor.writer.status.launch_token) is not None
        }
        ctx = self.orchestrator.ctx
        stale = await stop_stale_engines(
            ctx.launcher,
            cluster_id=self.cluster.cluster_id,
            node=self.node,
            current_tokens=tokens,
            grace_s=ctx.settings.stop_grace_s,
        )
        for engine in stale:
            ctx.registry.append_event(
                engine.model_id,
                "stale_engine_stopped",
                reason=f"node {self.node} stopped pid {engine.pid}: the model is owned elsewhere",
                data={"node": self.node, "pid": engine.pid},
            )

    async def take_orphans(self, snapshot: ClusterSnapshot) -> None:
        """Failover: start here the orphans of lost nodes that placement gives this node."""
        settings = self.cluster.settings
        orphans = orphans_for(
            snapshot,
            here=self.node,
            policy=settings.placement,
            margin_mib=settings.headroom_margin_mib,
        )
        ctx = self.orchestrator.ctx
        for orphan in orphans:
            with contextlib.suppress(LeaseHeldError, LookupError):
                await self.cluster.leases.acquire(orphan.model_id)
                spec = snapshot.specs[orphan.model_id]
                status = snapshot.statuses[orphan.model_id]
                ctx.metrics.failovers_total.labels(
                    model=orphan.model_id, from_node=orphan.lost_node
                ).inc()
                ctx.registry.append_event(
                    orphan.model_id,
                    "failover",
                    reason=f"node {orphan.lost_node} stopped heartbeating; {orphan.reason}",
                    data={"from_node": orphan.lost_node, "to_node": self.node},
                )
                supervisor = await self.adopt(spec, self._claimed(status))
                await self._let_go_if_refused(supervisor)

    async def _let_go_if_refused(self, supervisor: Supervisor) -> None:
        """A failover this node's GPUs refused (the figures it was placed by were a heartbeat
        old): give the model up, wanted running, for the next node placement picks."""
        status = supervisor.writer.status
        if status.state != ModelState.FAILED or status.last_failure_kind not in _REFUSALS:
            return
        model_id = supervisor.model_id
        reason = f"node {self.node} has no room: {status.last_failure_message}"
        self.orchestrator.ctx.registry.append_event(model_id, "failover_refused", reason=reason)
        await self.orchestrator.ctx.registry.flush()
        await self.orchestrator.drop(model_id)
        await self.cluster.leases.release(model_id)
