"""create_app(settings) -> FastAPI. The lifespan opens the store, migrates it to head, re-adopts
the engines recorded in it and starts the GPU monitor; nothing happens at import time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_fastapi_instrumentator import Instrumentator

from app.api.body_limit import BodyLimitMiddleware
from app.api.deps import ServicesDep, require_token
from app.api.errors import install_error_handlers
from app.api.routes import gpus, lifecycle, manifests, models, system
from app.orchestrator.wiring import Overrides, build_services
from app.settings import Settings, load_settings

DESCRIPTION = """
Keeps vLLM model servers running on a GPU node: a registry of model specs, start/stop/restart
with GPU headroom checks, OOM-aware supervision with bounded restarts, and Prometheus metrics.
With `GPU_ORCH_API_TOKEN` set, use the Authorize button with that token.
"""


def create_app(settings: Settings | None = None, overrides: Overrides | None = None) -> FastAPI:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await build_services(settings, overrides)
        app.state.services = services
        await services.orchestrator.start(lambda: asyncio.create_task(services.monitor.run()))
        await manifests.start_manifest_sync(app, services.orchestrator, settings)
        try:
            yield
        finally:
            await services.orchestrator.shutdown()
            await services.monitor.drain()

    app = FastAPI(
        title="gpu-orchestrator",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    protected = [Depends(require_token)]
    app.include_router(system.router)
    app.include_router(models.router, dependencies=protected)
    app.include_router(lifecycle.router, dependencies=protected)
    app.include_router(gpus.router, dependencies=protected)
    app.include_router(manifests.router, dependencies=protected)
    _install_metrics(app, settings)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    return app


def _install_metrics(app: FastAPI, settings: Settings) -> None:
    instrumentator = Instrumentator(excluded_handlers=["/metrics", "/healthz", "/readyz"])
    app.state.instrumentator = instrumentator
    instrumentator.instrument(app)
    metrics_dependencies = [] if settings.metrics_public else [Depends(require_token)]

    @app.get("/metrics", tags=["system"], dependencies=metrics_dependencies)
    async def metrics(services: ServicesDep) -> Response:
        """Prometheus text: the orchestrator's metrics and the HTTP metrics."""
        body = generate_latest(services.metrics.registry) + generate_latest(instrumentator.registry)
        return Response(content=body, media_type=CONTENT_TYPE_LATEST)
