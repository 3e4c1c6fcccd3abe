"""/nodes: the cluster's nodes, each with its GPUs, free memory, models and last heartbeat."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from app.api.deps import ServicesDep
from app.api.schemas import error_responses
from app.orchestrator.clock import iso_ms
from app.orchestrator.cluster.gpus import published_gpus

router = APIRouter(tags=["nodes"], responses=error_responses(401))


@router.get("/nodes")
async def list_nodes(services: ServicesDep) -> list[dict[str, Any]]:
    """Every node that has joined the cluster: `alive` while its heartbeat is current (a node
    silent for GPU_ORCH_NODE_TIMEOUT_S loses its models to failover), its GPUs as it last
    published them, and the models it owns with their states. Alone on SQLite: this node."""
    orchestrator = services.orchestrator
    cluster = orchestrator.cluster
    if not cluster.shared:
        return [await _this_node(services)]
    snapshot = await cluster.view.read(max_age_s=0)
    owned: dict[str, list[dict[str, Any]]] = {}
    for model_id, lease in sorted(snapshot.leases.items()):
        status = snapshot.statuses.get(model_id)
        owned.setdefault(lease.node, []).append(
            {
                "id": model_id,
                "state": status.state if status is not None else "unknown",
                "desired_state": status.desired_state if status is not None else "unknown",
                "lease_expires_at": iso_ms(lease.expires_at),
            }
        )
    return [
        {
            "name": row.name,
            "url": row.url,
            "alive": row.expires_at > snapshot.now,
            "this_node": row.name == orchestrator.node,
            "host": row.host,
            "pid": row.pid,
            "started_at": iso_ms(row.started_at),
            "last_heartbeat_at": iso_ms(row.heartbeat_at),
            "expires_at": iso_ms(row.expires_at),
            "gpus": row.gpus,
            "free_mib": sum(int(gpu.get("free_mib", 0)) for gpu in row.gpus),
            "models": owned.get(row.name, []),
        }
        for row in snapshot.nodes.values()
    ]


async def _this_node(services: ServicesDep) -> dict[str, Any]:
    orchestrator = services.orchestrator
    ctx = orchestrator.ctx
    gpus = await asyncio.to_thread(published_gpus, ctx.gpu_probe, ctx.allocator)
    statuses = orchestrator.statuses()
    return {
        "name": orchestrator.node,
        "url": ctx.settings.node_url,
        "alive": True,
        "this_node": True,
        "gpus": gpus,
        "free_mib": sum(gpu["free_mib"] for gpu in gpus),
        "models": [
            {"id": model_id, "state": status.state, "desired_state": status.desired_state}
            for model_id, status in sorted(statuses.items())
        ],
    }
