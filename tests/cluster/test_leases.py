"""Leases and node names in the store, on SQLite and on a real PostgreSQL server: one holder at
a time, takeover only after expiry, every takeover a new epoch that fences the old holder."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, update
from sqlmodel import col

from app.store import cluster as store
from app.store.cluster import LeaseHeldError, LeaseLostError, NodeClaim, NodeNameHeldError
from app.store.db import session_scope
from app.store.repository import create_model
from app.store.tables import LeaseRow, NodeRow

TTL_S = 30.0


def _model(engine: Engine, model_id: str = "m") -> None:
    fields = {"id": model_id, "model": "/models/tiny", "dtype": "auto", "gpu_memory_util": 0.5}
    with session_scope(engine) as session:
        create_model(session=session, fields=fields, source="test", now=datetime.now(UTC))


def _acquire(engine: Engine, node: str, model_id: str = "m") -> LeaseRow:
    with session_scope(engine) as session:
        return store.acquire_lease(session, model_id, node, ttl_s=TTL_S)


def _expire(engine: Engine, model_id: str = "m") -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    with session_scope(engine) as session:
        session.execute(
            update(LeaseRow).where(col(LeaseRow.model_id) == model_id).values(expires_at=past)
        )


def test_a_live_lease_has_one_holder(store_engine: Engine) -> None:
    _model(store_engine)
    first = _acquire(store_engine, "a")
    assert (first.node, first.epoch) == ("a", 1)
    with pytest.raises(LeaseHeldError) as held:
        _acquire(store_engine, "b")
    assert held.value.node == "a"
    assert _acquire(store_engine, "a").epoch == 2  # a's next process takes it back, anew


def test_an_expired_lease_is_taken_with_a_new_epoch_that_fences_the_old_holder(
    store_engine: Engine,
) -> None:
    _model(store_engine)
    old = _acquire(store_engine, "a")
    _expire(store_engine)
    new = _acquire(store_engine, "b")
    assert (new.node, new.epoch) == ("b", old.epoch + 1)
    with session_scope(store_engine) as session:
        store.check_lease(session, "m", "b", new.epoch)
    with pytest.raises(LeaseLostError, match="node b"), session_scope(store_engine) as session:
        store.check_lease(session, "m", "a", old.epoch)


def test_a_lease_of_no_model_is_refused(store_engine: Engine) -> None:
    with pytest.raises(LookupError):
        _acquire(store_engine, "a", "missing")


def test_release_needs_the_holders_epoch(store_engine: Engine) -> None:
    _model(store_engine)
    lease = _acquire(store_engine, "a")
    with session_scope(store_engine) as session:
        assert not store.release_lease(session, "m", "a", lease.epoch + 5)
        assert store.release_lease(session, "m", "a", lease.epoch)
    assert _acquire(store_engine, "b").node == "b"


def _claim(name: str, instance: str, *, pid: int = 1, host: str = "h1") -> NodeClaim:
    return NodeClaim(name=name, url=f"http://{name}:8000", instance=instance, pid=pid, host=host)


def test_the_heartbeat_renews_the_node_and_all_its_leases(store_engine: Engine) -> None:
    for model_id in ("m1", "m2"):
        _model(store_engine, model_id)
    claim = _claim("a", "i1")
    with session_scope(store_engine) as session:
        store.register_node(session, claim, ttl_s=TTL_S, gpus=[], holder_alive=lambda _r: True)
    _acquire(store_engine, "a", "m1")
    _acquire(store_engine, "a", "m2")
    _expire(store_engine, "m1")
    gpus = [{"index": 0, "total_mib": 100, "free_mib": 60}]
    with session_scope(store_engine) as session:
        expires = store.heartbeat(session, claim, ttl_s=TTL_S, gpus=gpus)
    assert expires is not None
    with session_scope(store_engine) as session:
        leases = store.list_leases(session)
        [node] = store.list_nodes(session)
    assert {lease.model_id: lease.expires_at for lease in leases} == {"m1": expires, "m2": expires}
    assert node.gpus == gpus and node.expires_at == expires
    with session_scope(store_engine) as session:  # another process holds the name now
        assert store.heartbeat(session, _claim("a", "i2"), ttl_s=TTL_S, gpus=[]) is None


def test_a_live_node_name_is_refused_unless_its_holder_is_gone_or_left(
    store_engine: Engine,
) -> None:
    with session_scope(store_engine) as session:
        store.register_node(
            session, _claim("a", "i1"), ttl_s=TTL_S, gpus=[], holder_alive=lambda _r: True
        )
    refused = pytest.raises(NodeNameHeldError, match="pid 1 on host h1")
    with refused, session_scope(store_engine) as session:
        store.register_node(
            session, _claim("a", "i2"), ttl_s=TTL_S, gpus=[], holder_alive=lambda _r: True
        )
    with session_scope(store_engine) as session:  # its holder crashed on this host
        row = store.register_node(
            session, _claim("a", "i2"), ttl_s=TTL_S, gpus=[], holder_alive=lambda _r: False
        )
    assert row.instance == "i2"
    with session_scope(store_engine) as session:  # a clean exit frees the name at once
        store.leave_node(session, _claim("a", "i2"))
    with session_scope(store_engine) as session:
        row = store.register_node(
            session,
            _claim("a", "i3", host="h2"),
            ttl_s=TTL_S,
            gpus=[],
            holder_alive=lambda _r: True,
        )
    assert (row.instance, row.host) == ("i3", "h2")


def test_of_many_nodes_taking_one_expired_lease_at_once_exactly_one_wins(
    pg_engine: Engine,
) -> None:
    """Real PostgreSQL transactions from eight threads, as eight nodes."""
    _model(pg_engine)
    _acquire(pg_engine, "lost")
    _expire(pg_engine)
    barrier = threading.Barrier(8)
    winners: list[str] = []
    refused: list[str] = []

    def take(node: str) -> None:
        barrier.wait()
        try:
            winners.append(_acquire(pg_engine, node).node)
        except LeaseHeldError:
            refused.append(node)

    threads = [threading.Thread(target=take, args=(f"n{index}",)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(winners) == 1 and len(refused) == 7
    with session_scope(pg_engine) as session:
        [lease] = store.list_leases(session)
    assert (lease.node, lease.epoch) == (winners[0], 2)


def test_a_free_lease_raced_by_many_nodes_has_one_holder(pg_engine: Engine) -> None:
    _model(pg_engine)
    barrier = threading.Barrier(6)
    results: list[str] = []

    def take(node: str) -> None:
        barrier.wait()
        try:
            results.append(_acquire(pg_engine, node).node)
        except LeaseHeldError:
            results.append("refused")

    threads = [threading.Thread(target=take, args=(f"n{index}",)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results.count("refused") == 5, results
    with session_scope(pg_engine) as session:
        assert session.get(NodeRow, "n0") is None  # nodes are not created by leases
        [lease] = store.list_leases(session)
    assert lease.epoch == 1 and lease.node in results
