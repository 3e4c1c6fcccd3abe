"""Liveness and readiness, open without a token so orchestrators and load balancers can probe."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import ServicesDep
from app.store.db import at_head

router = APIRouter(tags=["system"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(services: ServicesDep) -> JSONResponse | dict[str, str]:
    """The store is reachable, its schema is at the newest migration, and every recorded model
    has been re-adopted (until then a status may still be the one recorded before a restart)."""
    try:
        ready = await asyncio.to_thread(at_head, services.registry.engine)
    except Exception as error:
        body = {"status": "unavailable", "reason": f"store unreachable: {error}"}
        return JSONResponse(status_code=503, content=body)
    if not ready:
        body = {"status": "unavailable", "reason": "migrations are not at head"}
        return JSONResponse(status_code=503, content=body)
    if not services.orchestrator.adopted.is_set():
        body = {"status": "unavailable", "reason": "re-adopting the recorded engines"}
        return JSONResponse(status_code=503, content=body)
    return {"status": "ready"}
