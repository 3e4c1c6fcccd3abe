"""The cluster's tables: nodes (who holds each node name, its GPUs, its heartbeat) and leases
(which node may act on a model). Every function runs in the caller's transaction.

Times are the database's own clock (`now()` on PostgreSQL), so nodes whose clocks disagree still
agree on when a lease expires; SQLite, one node by construction, uses this process's clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import delete, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from app.store.repository import utc
from app.store.tables import ClusterRow, LeaseRow, ModelRow, NodeRow

T = TypeVar("T")

__all__ = [
    "LeaseHeldError",
    "LeaseLostError",
    "NodeClaim",
    "NodeNameHeldError",
    "acquire_lease",
    "check_lease",
    "cluster_id",
    "db_now",
    "heartbeat",
    "leave_node",
    "list_leases",
    "list_nodes",
    "register_node",
    "release_lease",
]


class LeaseHeldError(Exception):
    """Another live node holds the model's lease."""

    def __init__(self, model_id: str, node: str, expires_at: datetime) -> None:
        super().__init__(f"model {model_id} is owned by node {node} (lease until {expires_at})")
        self.model_id = model_id
        self.node = node
        self.expires_at = expires_at


class LeaseLostError(Exception):
    """This node no longer holds the lease it acts under: the write is refused."""


class NodeNameHeldError(Exception):
    """A live orchestrator holds this node name already."""

    def __init__(self, row: NodeRow) -> None:
        super().__init__(
            f"another gpu-orchestrator is node {row.name}: pid {row.pid} on host {row.host} "
            f"since {utc(row.started_at)}, heartbeat until {utc(row.expires_at)}. One "
            "orchestrator per node name: stop that one first, or give this one its own "
            "GPU_ORCH_NODE_NAME."
        )
        self.row = row


def db_now(session: Session) -> datetime:
    """The database's time (PostgreSQL's clock); this process's clock on SQLite."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        value = session.execute(text("SELECT clock_timestamp()")).scalar_one()
        assert isinstance(value, datetime)
        return value.astimezone(UTC)
    return datetime.now(UTC)


def _insert(session: Session) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def cluster_id(session: Session) -> str:
    row = session.exec(select(ClusterRow)).first()
    if row is None:  # a database migrated by hand without the seed row
        raise LookupError("the cluster table is empty: run the migrations (0005 seeds it)")
    return row.id


# The instance of a node row whose process exited cleanly.
DEPARTED = ""


# -- nodes --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeClaim:
    name: str
    url: str | None
    instance: str
    pid: int
    host: str


def register_node(
    session: Session,
    claim: NodeClaim,
    *,
    ttl_s: float,
    gpus: list[dict[str, Any]],
    holder_alive: Callable[[NodeRow], bool],
) -> NodeRow:
    """Take the node name for `claim`'s process. A name whose heartbeat is still live is
    refused unless `holder_alive(row)` says its holder is gone (a crashed predecessor)."""
    now = db_now(session)
    row = session.exec(
        select(NodeRow).where(col(NodeRow.name) == claim.name).with_for_update()
    ).first()
    if row is not None and row.instance not in (claim.instance, DEPARTED):
        live = (utc(row.expires_at) or now) > now
        if live and holder_alive(row):
            raise NodeNameHeldError(row)
    if row is None:
        row = NodeRow(
            name=claim.name,
            instance=claim.instance,
            pid=claim.pid,
            host=claim.host,
            started_at=now,
            heartbeat_at=now,
            expires_at=now,
        )
    row.url = claim.url
    row.instance = claim.instance
    row.pid = claim.pid
    row.host = claim.host
    row.started_at = row.heartbeat_at = now
    row.expires_at = now + timedelta(seconds=ttl_s)
    row.gpus = gpus
    session.add(row)
    session.flush()
    return row


def heartbeat(
    session: Session, claim: NodeClaim, *, ttl_s: float, gpus: list[dict[str, Any]]
) -> datetime | None:
    """Renew the node's row and every lease it holds in one step; the new expiry, or None when
    another process holds the node name now (this one must stop acting)."""
    now = db_now(session)
    expires = now + timedelta(seconds=ttl_s)
    renewed = session.execute(
        update(NodeRow)
        .where(col(NodeRow.name) == claim.name, col(NodeRow.instance) == claim.instance)
        .values(heartbeat_at=now, expires_at=expires, gpus=gpus, url=claim.url)
    )
    if renewed.rowcount != 1:  # type: ignore[attr-defined]
        return None
    session.execute(
        update(LeaseRow).where(col(LeaseRow.node) == claim.name).values(expires_at=expires)
    )
    return expires


def leave_node(session: Session, claim: NodeClaim) -> None:
    """A clean exit: the name is free for a successor at once (a replaced pod has another
    hostname), while the node's leases run to their expiry, so a successor that comes within
    NODE_TIMEOUT_S takes its models back instead of other nodes failing them over."""
    session.execute(
        update(NodeRow)
        .where(col(NodeRow.name) == claim.name, col(NodeRow.instance) == claim.instance)
        .values(instance=DEPARTED)
    )


def _detached(session: Session, rows: list[T], *times: str) -> list[T]:
    """The rows out of the session, their datetime fields in UTC (SQLite returns them naive)."""
    for row in rows:
        session.expunge(row)
        for name in times:
            setattr(row, name, utc(getattr(row, name)))
    return rows


def list_nodes(session: Session) -> list[NodeRow]:
    rows = list(session.exec(select(NodeRow).order_by(col(NodeRow.name))).all())
    return _detached(session, rows, "started_at", "heartbeat_at", "expires_at")


# -- leases -------------------------------------------------------------------------------------
def acquire_lease(session: Session, model_id: str, node: str, *, ttl_s: float) -> LeaseRow:
    """Take (or keep) the model's lease for `node`: free, expired, or already this node's.
    Raises LeaseHeldError when another node's lease is live; LookupError when there is no
    such model. The row lock makes two takers wait for each other: one wins."""
    now = db_now(session)
    expires = now + timedelta(seconds=ttl_s)
    if session.get(ModelRow, model_id) is None:
        raise LookupError(model_id)
    inserted = session.execute(
        _insert(session)(LeaseRow)
        .values(model_id=model_id, node=node, epoch=1, acquired_at=now, expires_at=expires)
        .on_conflict_do_nothing(index_elements=["model_id"])
        .returning(col(LeaseRow.model_id))
    ).first()
    row = session.exec(
        select(LeaseRow).where(col(LeaseRow.model_id) == model_id).with_for_update()
    ).one()
    if inserted is not None:
        session.expunge(row)
        return row
    if row.node != node and (utc(row.expires_at) or now) > now:
        raise LeaseHeldError(model_id, row.node, utc(row.expires_at) or now)
    # Free to take: expired, or held under this node's name by its previous process. A new
    # epoch, so whatever the previous holder still tries to write is refused (check_lease).
    row.node = node
    row.epoch += 1
    row.acquired_at = now
    row.expires_at = expires
    session.add(row)
    session.flush()
    session.expunge(row)
    return row


def check_lease(session: Session, model_id: str, node: str, epoch: int) -> None:
    """Refuse (LeaseLostError) unless `node` still holds the model's lease at `epoch`. The row
    stays locked to the end of the caller's transaction, so no takeover slips in between."""
    row = session.exec(
        select(LeaseRow).where(col(LeaseRow.model_id) == model_id).with_for_update()
    ).first()
    if row is None or row.node != node or row.epoch != epoch:
        holder = "nobody" if row is None else f"node {row.node} (epoch {row.epoch})"
        raise LeaseLostError(
            f"node {node} no longer holds the lease of model {model_id} at epoch {epoch}: "
            f"{holder} does"
        )


def release_lease(session: Session, model_id: str, node: str, epoch: int) -> bool:
    released = session.execute(
        delete(LeaseRow).where(
            col(LeaseRow.model_id) == model_id,
            col(LeaseRow.node) == node,
            col(LeaseRow.epoch) == epoch,
        )
    )
    return bool(released.rowcount)  # type: ignore[attr-defined]


def list_leases(session: Session) -> list[LeaseRow]:
    rows = list(session.exec(select(LeaseRow).order_by(col(LeaseRow.model_id))).all())
    return _detached(session, rows, "acquired_at", "expires_at")
