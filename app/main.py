"""create_app(settings) -> FastAPI. The lifespan takes the database's single-instance lock, opens
the store, migrates it to head, re-adopts the engines recorded in it and starts the GPU monitor;
nothing happens at import time."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_fastapi_instrumentator import Instrumentator

from app.api.body_limit import BodyLimitMiddleware
from app.api.deps import ServicesDep, require_token
from app.api.errors import install_error_handlers
from app.api.forwarding import NodeForwarder
from app.api.routes import (
    adapters,
    docs,
    events,
    gateway,
    gpus,
    lifecycle,
    manifests,
    models,
    nodes,
    system,
    ui,
)
from app.orchestrator.event_bus import EventBus
from app.orchestrator.wiring import Overrides, build_services
from app.settings import Settings, load_settings
from app.store.instance_lock import InstanceLock, instance_lock_for

DESCRIPTION = """
Keeps vLLM model servers running on a GPU node: a registry of model specs, start/stop/restart
with GPU headroom checks, OOM-aware supervision with bounded restarts, and Prometheus metrics.
With `GPU_ORCH_API_TOKEN` set, use the Authorize button with that token.

Also here: the operator console at [/ui](/ui), live events as Server-Sent Events at `GET /events`
(`?model=ID`, `Last-Event-ID` to resume; `curl -N`), and this API as [ReDoc](/redoc).
"""
# Long-lived streams and static pages would only blur the HTTP metrics of the API itself
# (regular expressions, searched in the route's path).
_UNMEASURED = ["/metrics", "/healthz", "/readyz", "^/events$", "^/$", "^/ui", "^/docs", "^/redoc$"]


def create_app(
    settings: Settings | None = None,
    overrides: Overrides | None = None,
    *,
    instance_lock: InstanceLock | None = None,
) -> FastAPI:
    """The app. `instance_lock` is the database's lock when the caller (`serve`) already took it;
    otherwise the lifespan takes it itself."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One orchestrator per database, decided before the store is even opened: a second one
        # must neither migrate it nor adopt the first one's engines (docs/design.md).
        lock = instance_lock or instance_lock_for(settings.resolved_database_url)
        if lock is not None:
            lock.acquire()  # raises InstanceLockHeld, naming the holder; a no-op if held
        try:
            services = await build_services(settings, overrides)
            app.state.services = services
            await services.orchestrator.start(lambda: asyncio.create_task(services.monitor.run()))
            await manifests.start_manifest_sync(app, services.orchestrator, settings)
            # What start-up built lives as long as the service: out of the collector's way, so
            # its full collections walk only what requests create (a 70-120 ms pause otherwise,
            # measured on a cluster node listing its models: docs/benchmarks.md "Cluster").
            gc.freeze()
            try:
                yield
            finally:
                await services.orchestrator.shutdown()
                await services.monitor.drain()
                await services.upstream.aclose()
                await app.state.forwarder.aclose()
        finally:
            if lock is not None:
                lock.release()

    app = FastAPI(
        title="gpu-orchestrator",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # Served from packaged assets by app/api/routes/docs.py: FastAPI's pages use a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.event_bus = EventBus()
    # Requests for models another node owns go there; a forwarded `?wait=true` may take a
    # whole start timeout.
    app.state.forwarder = NodeForwarder(
        settings.node_name, timeout_s=settings.start_timeout_s + settings.stop_grace_s + 60
    )
    install_error_handlers(app)
    protected = [Depends(require_token)]
    app.include_router(system.router)
    app.include_router(models.router, dependencies=protected)
    app.include_router(lifecycle.router, dependencies=protected)
    app.include_router(adapters.router, dependencies=protected)
    app.include_router(gpus.router, dependencies=protected)
    app.include_router(nodes.router, dependencies=protected)
    app.include_router(manifests.router, dependencies=protected)
    app.include_router(events.router, dependencies=protected)
    app.include_router(gateway.router)  # its own token rule: API or inference tokens
    app.include_router(docs.router)
    app.mount(docs.ASSETS_URL, StaticFiles(directory=docs.ASSETS_DIR), name="docs-assets")
    app.include_router(ui.router)
    app.mount(ui.ASSETS_URL, StaticFiles(directory=ui.CONSOLE_DIR), name="console-assets")
    _install_metrics(app, settings)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    return app


def _install_metrics(app: FastAPI, settings: Settings) -> None:
    # A registry per app: on the process-wide default one, a second app in the same process
    # (tests, an embedding program) would find the HTTP metrics taken and record nothing.
    instrumentator = Instrumentator(excluded_handlers=_UNMEASURED, registry=CollectorRegistry())
    app.state.instrumentator = instrumentator
    instrumentator.instrument(app)
    metrics_dependencies = [] if settings.metrics_public else [Depends(require_token)]

    @app.get("/metrics", tags=["system"], dependencies=metrics_dependencies)
    async def metrics(services: ServicesDep) -> Response:
        """Prometheus text: the orchestrator's metrics and the HTTP metrics."""
        body = generate_latest(services.metrics.registry) + generate_latest(instrumentator.registry)
        return Response(content=body, media_type=CONTENT_TYPE_LATEST)
