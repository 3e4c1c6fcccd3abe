"""What this node knows of the rest of the cluster: every spec, status, lease and node, as one
read of the shared store, at most `max_age_s` old. Models this node owns are read from their
supervisors instead; the view answers for the others (their node writes them)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from app.orchestrator.registry import Registry, StoredSpecInvalidError, spec_from_row
from app.orchestrator.spec import ModelSpec
from app.store import cluster as store
from app.store import repository
from app.store.db import session_scope
from app.store.tables import LeaseRow, ModelRow, NodeRow, StatusRow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterSnapshot:
    now: datetime
    read_at: float = 0.0  # monotonic
    specs: dict[str, ModelSpec] = field(default_factory=dict)
    statuses: dict[str, StatusRow] = field(default_factory=dict)
    leases: dict[str, LeaseRow] = field(default_factory=dict)
    nodes: dict[str, NodeRow] = field(default_factory=dict)

    def alive(self, node: str) -> bool:
        row = self.nodes.get(node)
        return row is not None and row.expires_at > self.now

    def live_owner(self, model_id: str) -> str | None:
        """The node holding a live lease of the model, if any."""
        lease = self.leases.get(model_id)
        if lease is None or lease.expires_at <= self.now:
            return None
        return lease.node

    def url(self, node: str) -> str | None:
        row = self.nodes.get(node)
        return None if row is None else row.url


SpecCache = dict[str, tuple[datetime, ModelSpec]]


_CACHE_LOCK = threading.Lock()  # reads may overlap (ClusterView.read): one at a time in here


def read_snapshot(registry: Registry, cache: SpecCache | None = None) -> ClusterSnapshot:
    """One transaction over the shared tables (blocking: run it off the loop). A spec whose
    row has not changed since the last read (`cache`, by updated_at) is not validated again."""
    cache = {} if cache is None else cache
    started = time.monotonic()  # a snapshot is as new as the moment its read began
    with session_scope(registry.engine) as session:
        now = store.db_now(session)
        rows = repository.list_models(session=session)
        statuses = repository.list_statuses(session=session)
        leases = store.list_leases(session)
        nodes = store.list_nodes(session)
    with _CACHE_LOCK:
        specs = _specs_of(rows, cache)
    return ClusterSnapshot(
        now=now,
        read_at=started,
        specs=specs,
        statuses={row.model_id: row for row in statuses},
        leases={row.model_id: row for row in leases},
        nodes={row.name: row for row in nodes},
    )


def _specs_of(rows: list[ModelRow], cache: SpecCache) -> dict[str, ModelSpec]:
    specs: dict[str, ModelSpec] = {}
    for row in rows:
        cached = cache.get(row.id)
        if cached is not None and cached[0] == row.updated_at:
            specs[row.id] = cached[1]
            continue
        try:
            specs[row.id] = spec_from_row(row)
        except StoredSpecInvalidError as error:
            logger.error("%s", error)
            continue
        cache[row.id] = (row.updated_at, specs[row.id])
    for gone in set(cache) - set(specs):
        del cache[gone]
    return specs


class ClusterView:
    def __init__(self, registry: Registry, *, max_age_s: float) -> None:
        self.registry = registry
        self.max_age_s = max_age_s
        self.latest = ClusterSnapshot(now=datetime.now(UTC))
        self._reading: asyncio.Task[ClusterSnapshot] | None = None
        self._specs: SpecCache = {}
        self._reading_since = 0.0

    def forget(self, model_id: str) -> None:
        """This node deleted the model: the view stops showing it before its next read."""
        latest = self.latest
        self.latest = replace(
            latest,
            specs={k: v for k, v in latest.specs.items() if k != model_id},
            statuses={k: v for k, v in latest.statuses.items() if k != model_id},
            leases={k: v for k, v in latest.leases.items() if k != model_id},
        )

    async def read(self, *, max_age_s: float | None = None) -> ClusterSnapshot:
        """A snapshot no older than `max_age_s` (default the view's); concurrent callers share
        one read."""
        limit = self.max_age_s if max_age_s is None else max_age_s
        asked_at = time.monotonic()
        if asked_at - self.latest.read_at <= limit:
            return self.latest
        # A read under way is shared only if it began recently enough: one that began before
        # this call may miss what the caller has just committed (a model it just created).
        reading = self._reading
        if reading is None or reading.done() or self._reading_since < asked_at - limit:
            reading = asyncio.create_task(
                asyncio.to_thread(read_snapshot, self.registry, self._specs)
            )
            self._reading, self._reading_since = reading, asked_at
        snapshot = await asyncio.shield(reading)
        if snapshot.read_at >= self.latest.read_at:
            self.latest = snapshot
        return self.latest
