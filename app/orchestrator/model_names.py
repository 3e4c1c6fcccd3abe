"""Which engine serves a request's `model`: a spec id, or the name of one of its adapters.

Adapter names are unique across the node, and no adapter may be named like another model: a
name then always means one engine (`adapter_name_conflict` is refused where specs change).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from app.orchestrator.spec import ModelSpec


@dataclass(frozen=True)
class Route:
    model_id: str
    adapter: str | None  # the adapter's name as the engine serves it, or None for the base


def adapter_names(spec: ModelSpec) -> list[str]:
    return [spec.adapter_name(path) for path in spec.adapter_paths]


def build_routes(specs: Iterable[ModelSpec]) -> dict[str, Route]:
    routes: dict[str, Route] = {}
    for spec in specs:
        routes[spec.id] = Route(spec.id, None)
    for spec in specs:
        for name in adapter_names(spec):
            routes.setdefault(name, Route(spec.id, name))
    return routes


def name_conflicts(spec: ModelSpec, others: Iterable[ModelSpec]) -> list[str]:
    """Names `spec` would make ambiguous: its adapters named like another model or another
    model's adapter, or its id taken by another model's adapter."""
    taken: dict[str, str] = {}
    for other in others:
        if other.id == spec.id:
            continue
        taken[other.id] = other.id
        for name in adapter_names(other):
            taken[name] = other.id
    mine = adapter_names(spec)
    conflicts = [name for name in mine if name in taken or name == spec.id]
    if spec.id in taken and taken[spec.id] != spec.id:
        conflicts.append(spec.id)
    return sorted(set(conflicts))
