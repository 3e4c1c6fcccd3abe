"""Failover: which models of lost nodes this node should start. Pure over a snapshot.

A model is orphaned when its lease has expired (its node stopped heartbeating for
NODE_TIMEOUT_S), or no node holds one (a node that took it over could not start it and let it
go), while it is wanted running and allows failover. Every live node runs the same
choice over the same tables; each takes only the models placement gives to itself, and the
lease's row lock settles the rare tie (one node wins, the other finds it held).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.orchestrator.cluster.placement import place
from app.orchestrator.cluster.view import ClusterSnapshot
from app.orchestrator.lifecycle import DesiredState
from app.settings import Placement


@dataclass(frozen=True)
class Orphan:
    model_id: str
    lost_node: str
    reason: str


def orphans_for(
    snapshot: ClusterSnapshot, *, here: str, policy: Placement, margin_mib: int
) -> list[Orphan]:
    """The orphaned models that placement gives to node `here`, by priority (highest first)."""
    chosen = []
    live_nodes = [row for row in snapshot.nodes.values() if row.expires_at > snapshot.now]
    for model_id, spec in snapshot.specs.items():
        lease = snapshot.leases.get(model_id)
        status = snapshot.statuses.get(model_id)
        if status is None or not spec.failover or status.desired_state != DesiredState.RUNNING:
            continue
        if lease is not None and (lease.node == here or lease.expires_at > snapshot.now):
            continue
        lost = lease.node if lease is not None else status.node or "?"
        choice = place(
            spec, live_nodes, here=here, now=snapshot.now, policy=policy, margin_mib=margin_mib
        )
        if choice.node == here:
            chosen.append((spec.priority, Orphan(model_id, lost, choice.reason)))
    chosen.sort(key=lambda item: (-item[0], item[1].model_id))
    return [orphan for _priority, orphan in chosen]
