"""The leases this node holds, and the fence every write of a model goes through.

A node acts on a model (launches its engine, writes its status or spec) only while it holds the
model's lease row. Taking one is a row-locked transaction (app/store/cluster.py), so of two nodes
trying at once exactly one wins. Each take bumps the lease's epoch; `fence` checks, inside the
write's own transaction and under the row's lock, that this node still holds the epoch it took.
A node that lost its lease while it was cut off therefore cannot overwrite what the new holder
wrote, whatever it still believes: the store refuses the write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sqlalchemy import Engine
from sqlmodel import Session

from app.store import cluster as store
from app.store.cluster import LeaseHeldError, LeaseLostError
from app.store.db import session_scope

__all__ = ["LeaseBook", "LeaseHeldError", "LeaseLostError"]


class LeaseBook:
    def __init__(
        self, engine: Engine, node: str, *, ttl_s: float, valid: Callable[[], bool]
    ) -> None:
        self.engine = engine
        self.node = node
        self.ttl_s = ttl_s
        self._valid = valid  # this node's heartbeat is current (NodeMembership.valid)
        self._epochs: dict[str, int] = {}

    def holds(self, model_id: str) -> bool:
        """This node holds the lease and its heartbeat is current: it may launch."""
        return model_id in self._epochs and self._valid()

    def epoch(self, model_id: str) -> int | None:
        return self._epochs.get(model_id)

    async def acquire(self, model_id: str) -> int:
        """Take the model's lease (LeaseHeldError: a live node has it; LookupError: no model)."""
        if model_id in self._epochs:
            return self._epochs[model_id]

        def take() -> int:
            with session_scope(self.engine) as session:
                return store.acquire_lease(session, model_id, self.node, ttl_s=self.ttl_s).epoch

        epoch = await asyncio.to_thread(take)
        self._epochs[model_id] = epoch
        return epoch

    def claim_new(self, session: Session, model_id: str) -> None:
        """In the transaction that creates the model: take its lease with it. Recorded here at
        once; if that transaction fails, the model does not exist and the record is dropped."""
        lease = store.acquire_lease(session, model_id, self.node, ttl_s=self.ttl_s)
        self._epochs[model_id] = lease.epoch

    async def release(self, model_id: str) -> None:
        """Give the lease up (the model is at rest here and goes elsewhere)."""
        epoch = self._epochs.pop(model_id, None)
        if epoch is None:
            return

        def drop() -> None:
            with session_scope(self.engine) as session:
                store.release_lease(session, model_id, self.node, epoch)

        await asyncio.to_thread(drop)

    def forget(self, model_id: str) -> None:
        """The lease is gone (lost, or deleted with its model): stop claiming it."""
        self._epochs.pop(model_id, None)

    def fence(self, session: Session, model_id: str) -> None:
        """Inside a write's transaction: refuse it unless this node still holds the lease."""
        epoch = self._epochs.get(model_id)
        if epoch is None:
            raise LeaseLostError(f"node {self.node} holds no lease of model {model_id}")
        store.check_lease(session, model_id, self.node, epoch)
