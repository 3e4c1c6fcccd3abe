"""The OpenAI-compatible gateway's domain: routing a request's `model` to its engine, starting
it on demand, admitting requests (bounded queue, per-model concurrency) and tracking activity.
The HTTP half is app/api/routes/gateway.py."""

from app.orchestrator.activity import Activity, ActivityBoard
from app.orchestrator.gateway.errors import GatewayError
from app.orchestrator.gateway.gateway import Gateway, Lease
from app.orchestrator.gateway.upstream import UpstreamPool
from app.orchestrator.model_names import Route, adapter_names, name_conflicts

__all__ = [
    "Activity",
    "ActivityBoard",
    "Gateway",
    "GatewayError",
    "Lease",
    "Route",
    "UpstreamPool",
    "adapter_names",
    "name_conflicts",
]
