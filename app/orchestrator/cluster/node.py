"""This node's part of the cluster, in one object the orchestrator holds: its membership (name,
heartbeat, self-fencing), the leases it holds, and its view of the other nodes' models."""

from __future__ import annotations

from dataclasses import dataclass

from app.orchestrator.cluster.leases import LeaseBook
from app.orchestrator.cluster.membership import NodeMembership
from app.orchestrator.cluster.view import ClusterView
from app.orchestrator.registry import Registry
from app.settings import Settings


@dataclass
class ClusterNode:
    name: str
    leases: LeaseBook
    view: ClusterView
    # None for a node alone on its own database (SQLite): no heartbeat, no other nodes.
    membership: NodeMembership | None
    settings: Settings

    @property
    def shared(self) -> bool:
        """The store is shared with other nodes (PostgreSQL)."""
        return self.membership is not None

    @property
    def cluster_id(self) -> str:
        return self.membership.cluster_id if self.membership is not None else ""

    @classmethod
    def alone(cls, registry: Registry, settings: Settings) -> ClusterNode:
        """A node that is the whole cluster: its leases never need renewing."""
        return cls(
            name=settings.node_name,
            leases=LeaseBook(
                registry.engine, settings.node_name, ttl_s=10 * 365 * 86400.0, valid=lambda: True
            ),
            view=ClusterView(registry, max_age_s=0.5),
            membership=None,
            settings=settings,
        )

    @classmethod
    def member(
        cls, registry: Registry, settings: Settings, membership: NodeMembership
    ) -> ClusterNode:
        return cls(
            name=settings.node_name,
            leases=LeaseBook(
                registry.engine,
                settings.node_name,
                ttl_s=settings.node_timeout_s,
                valid=membership.valid,
            ),
            view=ClusterView(registry, max_age_s=min(0.5, membership.interval_s)),
            membership=membership,
            settings=settings,
        )
