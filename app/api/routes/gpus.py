"""/gpus: what the probe sees, what is reserved and placed, and the low-memory alert."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from app.api.deps import ServicesDep
from app.api.schemas import error_responses
from app.orchestrator.clock import iso_ms

router = APIRouter(tags=["gpus"], responses=error_responses(401))


@router.get("/gpus")
async def list_gpus(services: ServicesDep) -> dict[str, Any]:
    """Backend, per-GPU memory (MiB), reservations, which models sit where, alert state."""
    allocator = services.orchestrator.ctx.allocator
    snapshot = await asyncio.to_thread(services.orchestrator.ctx.gpu_probe.snapshot)
    reserved = allocator.reservations_mib()
    holds = allocator.holds()
    alerts = {alert.gpu: alert for alert in services.monitor.alerts()}
    gpus = []
    for gpu in snapshot.gpus:
        alert = alerts.get(gpu.index)
        gpus.append(
            {
                "index": gpu.index,
                "name": gpu.name,
                "uuid": gpu.uuid,
                "total_mib": gpu.total_mib,
                "free_mib": gpu.free_mib,
                "used_mib": gpu.used_mib,
                "reserved_mib": reserved.get(gpu.index, 0),
                "utilization_pct": gpu.utilization_pct,
                "models": [
                    {"model": hold.model_id, "state": hold.state}
                    for hold in holds
                    if gpu.index in hold.gpu_ids
                ],
                "low_memory_alert": bool(alert and alert.raised),
                "alert_since": iso_ms(alert.since) if alert and alert.since else None,
            }
        )
    return {
        "backend": snapshot.backend,
        "status": "available" if snapshot.available else "unavailable",
        "error": snapshot.error,
        "gpus": gpus,
    }
