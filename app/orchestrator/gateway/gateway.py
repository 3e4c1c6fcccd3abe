"""The gateway's domain half: from a request's `model` to an engine that is ready for it.

    async with gateway.lease("sql-agent") as lease:   # routes, starts on demand, admits
        ... send the request to lease.base_url ...     # in flight until the block ends

A stopped model with `on_demand` is started through its supervisor, so concurrent requests for
it share the one start (the supervisor answers every start after the first with "already
starting") and wait, bounded by the queue and by the start timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from app.orchestrator.activity import ActivityBoard, QueueFullError
from app.orchestrator.clock import Clock
from app.orchestrator.gateway.errors import GatewayError, not_found, unavailable
from app.orchestrator.lifecycle import ModelState
from app.orchestrator.metrics import Metrics
from app.orchestrator.model_names import Route, build_routes
from app.orchestrator.orchestrator import Orchestrator
from app.settings import Settings
from app.store.tables import StatusRow

# The states a waiting request stops waiting in: served, or refused with the reason.
_SETTLED = (ModelState.RUNNING, ModelState.FAILED, ModelState.DEGRADED, ModelState.STOPPED)


@dataclass(frozen=True)
class Lease:
    model_id: str
    adapter: str | None
    base_url: str


class Gateway:
    def __init__(
        self, orchestrator: Orchestrator, settings: Settings, metrics: Metrics, clock: Clock
    ) -> None:
        self.orchestrator = orchestrator
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.activity: ActivityBoard = orchestrator.activity
        self._routes: dict[str, Route] = {}
        self._routes_version = -1

    def route(self, name: str) -> Route | None:
        version = self.orchestrator.spec_version
        if version != self._routes_version:
            self._routes = build_routes(self.orchestrator.specs())
            self._routes_version = version
        return self._routes.get(name)

    async def _route_or_wait(self, name: str) -> Route:
        """The route of `name`; an adapter being added right now is waited for (its load), and
        a name this node has not heard of is looked up in the cluster's tables first."""
        route = self.route(name)
        if route is None and self.orchestrator.cluster.shared:
            await self.orchestrator.refresh()
            route = self.route(name)
        loading = self.orchestrator.loading_adapters.get(name)
        if route is None and loading is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(loading.wait(), self.settings.start_timeout_s)
            route = self.route(name)
        if route is None:
            raise not_found(name)
        return route

    @asynccontextmanager
    async def lease(self, name: str, *, placed_here: bool = False) -> AsyncIterator[Lease]:
        """Raises OwnedElsewhereError when another node serves the model (or a cold start is
        placed on one): the caller sends the request there."""
        route = await self._route_or_wait(name)
        # A request another node placed here comes with the lease just released to this node:
        # the view may still name its old holder.
        elsewhere = None if placed_here else self.orchestrator.remote_owner(route.model_id)
        if elsewhere is not None:
            raise elsewhere
        activity = self.activity.of(route.model_id)
        try:
            activity.enter_queue(self.settings.gateway_max_queue)
        except QueueFullError:
            raise unavailable(
                f"model {route.model_id} has {activity.waiting} requests waiting already",
                code="queue_full",
                retry_after_s=1,
                waiting=activity.waiting,
            ) from None
        waited_from = time.monotonic()
        try:
            base_url = await self._ready(route.model_id, placed_here=placed_here)
            spec = self.orchestrator.spec(route.model_id)
            await activity.take_slot(spec.max_concurrency)
        finally:
            activity.leave_queue()
        self.metrics.gateway_queue_wait_seconds.observe(time.monotonic() - waited_from)
        in_flight = self.metrics.gateway_in_flight.labels(model=route.model_id)
        in_flight.inc()
        try:
            yield Lease(route.model_id, route.adapter, base_url)
        finally:
            in_flight.dec()
            activity.release_slot(self.clock.now())

    async def _ready(self, model_id: str, *, placed_here: bool) -> str:
        """The base URL of the model's running engine, starting it on demand."""
        status = self.orchestrator.status(model_id)
        local = self.orchestrator.owns(model_id)
        if local and status.state == ModelState.RUNNING and status.port is not None:
            return self.orchestrator.ctx.base_url(status.port)
        spec = self.orchestrator.spec(model_id)
        _refuse_if_unservable(model_id, status, on_demand=spec.on_demand, clock=self.clock)
        if not local or status.state not in (ModelState.STARTING, ModelState.RUNNING):
            result = await self.orchestrator.start_model(
                model_id, evict=True, placed_here=placed_here
            )
            if result.error is not None:
                raise unavailable(
                    f"model {model_id} cannot start: {result.error.message}",
                    code=str(result.error.code),
                    **_figures(result.error.figures),
                )
            if result.changed:
                self.metrics.gateway_cold_starts_total.labels(model=model_id).inc()
        timeout_s = spec.start_timeout_s or self.settings.start_timeout_s
        settled = await self.orchestrator.wait_for_state(model_id, _SETTLED, timeout_s=timeout_s)
        status = self.orchestrator.status(model_id)
        timed_out = status.last_failure_kind == "start_timeout" and status.state != "running"
        if not settled or timed_out:
            raise GatewayError(
                504,
                f"model {model_id} was not ready within its start timeout ({timeout_s:g} s)",
                error_type="timeout_error",
                code="start_timeout",
            )
        if status.state == ModelState.RUNNING and status.port is not None:
            return self.orchestrator.ctx.base_url(status.port)
        raise unavailable(
            f"model {model_id} failed to start: {status.last_failure_message or status.state}",
            code=status.last_failure_kind or "start_failed",
            state=status.state,
        )


def _refuse_if_unservable(
    model_id: str, status: StatusRow, *, on_demand: bool, clock: Clock
) -> None:
    if status.state == ModelState.DEGRADED:
        raise unavailable(
            f"model {model_id} is degraded: {status.last_failure_message}",
            code="model_degraded",
            state=status.state,
            last_failure_kind=status.last_failure_kind,
        )
    if status.state == ModelState.FAILED:
        retry_s = None
        if status.next_attempt_at is not None:
            retry_s = max(1.0, (status.next_attempt_at - clock.now()).total_seconds())
        raise unavailable(
            f"model {model_id} failed and waits for its restart: {status.last_failure_message}",
            code="model_failed",
            retry_after_s=retry_s,
            state=status.state,
            last_failure_kind=status.last_failure_kind,
        )
    if status.state in (ModelState.STOPPED, ModelState.STOPPING) and not on_demand:
        raise unavailable(
            f"model {model_id} is {status.state} and not started on demand (on_demand: false)",
            code="model_stopped",
            state=status.state,
        )


def _figures(figures: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in figures.items() if key not in ("ok", "reason", "code")}
