"""Two nodes in one process, on one real PostgreSQL database, with the in-memory tier's fake
clock, launcher and health probe: fencing, failover, handover and forwarding decisions, each in
milliseconds, the heartbeat renewed only when the test says so."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import col

from app.orchestrator.cluster.errors import OwnedElsewhereError
from app.orchestrator.cluster.leases import LeaseLostError
from app.orchestrator.lifecycle import CommandKind, ModelState
from app.store.db import session_scope
from app.store.tables import LeaseRow, NodeRow
from tests.lifecycle.memory_harness import MemoryWorld, memory_world


@asynccontextmanager
async def two_nodes(tmp_path: Path, pg_url: str) -> AsyncIterator[tuple[MemoryWorld, MemoryWorld]]:
    async with (
        memory_world(tmp_path / "a", node="a", database_url=pg_url) as a,
        memory_world(tmp_path / "b", node="b", database_url=pg_url) as b,
    ):
        yield a, b


def _expire_lease(world: MemoryWorld, model_id: str) -> None:
    """The holder stopped heartbeating NODE_TIMEOUT_S ago (as the database's clock says)."""
    past = datetime.now(UTC) - timedelta(seconds=1)
    with session_scope(world.ctx.registry.engine) as session:
        session.execute(
            update(LeaseRow).where(col(LeaseRow.model_id) == model_id).values(expires_at=past)
        )


async def test_a_node_whose_renewals_stop_stops_its_engines_and_writes_nothing(
    tmp_path: Path, pg_url: str
) -> None:
    async with two_nodes(tmp_path, pg_url) as (a, b):
        await a.add("m")
        await a.run("m")
        [engine] = a.launcher.alive("m")
        membership = a.orchestrator.cluster.membership
        assert membership is not None and membership.valid()
        # No renewal for 2/3 of NODE_TIMEOUT_S by a's own clock: its leases are not trusted.
        await a.advance(membership.trust_s + 0.01)
        assert not membership.valid()
        assert not a.orchestrator.cluster.leases.holds("m")  # no launch under it either
        await a.orchestrator.ownership.fence()
        assert a.launcher.alive("m") == [] and engine in a.launcher.stops()
        assert "m" not in a.orchestrator.supervisors and a.holds_nothing("m")
        # The store still says running on a: nothing was written while the leases were in doubt.
        await b.orchestrator.refresh()
        assert b.orchestrator.status("m").state == ModelState.RUNNING
        assert b.orchestrator.status("m").node == "a"


async def test_failover_takes_the_orphan_and_fences_the_old_holders_writes(
    tmp_path: Path, pg_url: str
) -> None:
    async with two_nodes(tmp_path, pg_url) as (a, b):
        await a.add("m")
        await a.run("m")
        old = a.supervisor("m")
        _expire_lease(a, "m")
        snapshot = await b.orchestrator.cluster.view.read(max_age_s=0)
        await b.orchestrator.ownership.take_orphans(snapshot)
        await b.settle()
        [launched] = b.launcher.launched("m")
        await b.ready("m")
        assert b.state("m") == ModelState.RUNNING and b.status("m").node == "b"
        kinds = [event.kind for event in await b.events("m")]
        assert "failover" in kinds and "taken_over" in kinds
        sample = b.ctx.metrics.failovers_total.labels(model="m", from_node="a")
        assert sample._value.get() == 1

        # a still believes it holds m: its next write is refused by the store, under the lock.
        old.writer.save({"kind": "note", "reason": "late write from the old holder"})
        with pytest.raises(LeaseLostError, match="node b"):
            await a.ctx.registry.flush()
        await a.orchestrator.ownership.fence()  # what a does once it learns (its heartbeat)
        a.ctx.registry.append_event(None, "note")  # the next write goes through again
        await a.ctx.registry.flush()
        recorded = await b.orchestrator.cluster.view.read(max_age_s=0)
        assert recorded.statuses["m"].node == "b"
        assert recorded.statuses["m"].pid == launched.pid
        assert recorded.leases["m"].epoch == 2


async def test_a_start_placed_elsewhere_hands_the_lease_over(tmp_path: Path, pg_url: str) -> None:
    async with two_nodes(tmp_path, pg_url) as (a, b):
        await a.add("big", gpu_memory_util=0.8)
        await a.run("big")
        await a.add("m", gpu_memory_util=0.5)
        with pytest.raises(OwnedElsewhereError) as placed:
            await a.orchestrator.start_model("m")
        assert placed.value.node == "b" and placed.value.placed
        assert "m" not in a.orchestrator.supervisors
        assert a.orchestrator.cluster.leases.epoch("m") is None
        result = await b.orchestrator.start_model("m", placed_here=True)
        assert result.error is None and result.changed
        await b.ready("m")
        assert b.state("m") == ModelState.RUNNING and b.status("m").node == "b"
        assert a.launcher.launched("m") == []


async def test_a_command_for_another_live_nodes_model_names_that_node(
    tmp_path: Path, pg_url: str
) -> None:
    async with two_nodes(tmp_path, pg_url) as (a, b):
        await a.add("m")
        await a.run("m")
        with pytest.raises(OwnedElsewhereError) as elsewhere:
            await b.orchestrator.command("m", CommandKind.STOP)
        assert elsewhere.value.node == "a" and not elsewhere.value.placed
        assert a.state("m") == ModelState.RUNNING and b.launcher.launched("m") == []


async def test_a_failover_this_node_has_no_room_for_goes_on_to_the_next(
    tmp_path: Path, pg_url: str
) -> None:
    """Placement went by a's figures of its last heartbeat, from before `big` started there:
    a's own allocator refuses the orphan, a lets it go, and b takes it at its next pass."""
    async with (
        two_nodes(tmp_path, pg_url) as (a, b),
        memory_world(tmp_path / "c", node="c", database_url=pg_url) as c,
    ):
        await c.add("m", gpu_memory_util=0.5)
        await c.run("m")
        await a.add("big", gpu_memory_util=0.8)
        await a.run("big")
        await c.orchestrator.ownership.fence()  # c is lost: its engine gone, its lease lapsed
        _expire_lease(c, "m")
        with session_scope(c.ctx.registry.engine) as session:
            past = datetime.now(UTC) - timedelta(seconds=1)
            session.execute(update(NodeRow).where(col(NodeRow.name) == "c").values(expires_at=past))

        snapshot = await a.orchestrator.cluster.view.read(max_age_s=0)
        await a.orchestrator.ownership.take_orphans(snapshot)
        assert "m" not in a.orchestrator.supervisors and a.launcher.launched("m") == []
        assert "failover_refused" in [event.kind for event in await a.events("m")]

        snapshot = await b.orchestrator.cluster.view.read(max_age_s=0)
        await b.orchestrator.ownership.take_orphans(snapshot)
        await b.settle()
        await b.ready("m")
        assert b.state("m") == ModelState.RUNNING and b.status("m").node == "b"
