"""SQLModel tables. Created only by Alembic migrations (migrations/versions), never create_all."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index
from sqlmodel import Field, SQLModel


class ModelRow(SQLModel, table=True):
    """A registered ModelSpec: scalar fields as columns, lists and dicts as JSON."""

    __tablename__ = "models"

    id: str = Field(primary_key=True, max_length=63)
    model: str
    dtype: str
    gpu_memory_util: float
    service_unit: str | None = None
    memory_max: str | None = None
    cpu_quota: str | None = None
    port: int | None = None
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    start_timeout_s: float | None = None
    adapter_paths: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    adapter_names: dict[str, str] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    extra_args: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    env: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    restart_policy: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    on_demand: bool = True
    max_concurrency: int = 0
    max_loras: int | None = None
    max_lora_rank: int | None = None
    idle_timeout_s: float | None = None
    priority: int = 0
    sleep_level: int | None = None
    node: str | None = Field(default=None, max_length=253)
    failover: bool = True
    source: str = Field(default="api", description="api, or manifest:<file>")
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class StatusRow(SQLModel, table=True):
    """Runtime status of one model; written only by that model's supervisor."""

    __tablename__ = "model_status"

    model_id: str = Field(primary_key=True, foreign_key="models.id", ondelete="CASCADE")
    desired_state: str = "stopped"
    state: str = "stopped"
    since: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    pid: int | None = None
    pid_create_time: float | None = None
    launch_token: str | None = None
    port: int | None = None
    gpu_ids: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    launcher: str | None = None
    unit_name: str | None = None
    limits_enforced: bool | None = None
    restarts_total: int = 0
    ooms_total: int = 0
    consecutive_failures: int = 0
    last_failure_kind: str | None = None
    last_failure_message: str | None = None
    last_failure_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    next_attempt_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    running_since: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    # 64-bit: inode numbers (XFS) and long logs pass 2**31, PostgreSQL's integer.
    log_offset: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    log_inode: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    restart_needed: bool = False
    # The node whose engine this status describes (where it runs, or last ran).
    node: str | None = Field(default=None, max_length=253)
    notes: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class EventRow(SQLModel, table=True):
    """Append-only log of transitions, failures, restarts and alerts."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_model_id_id", "model_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: str | None = Field(default=None, max_length=63)
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    kind: str
    from_state: str | None = None
    to_state: str | None = None
    reason: str = ""
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class ClusterRow(SQLModel, table=True):
    """The one row naming this database's cluster (engines carry it, to be told apart)."""

    __tablename__ = "cluster"

    id: str = Field(primary_key=True, max_length=36)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class NodeRow(SQLModel, table=True):
    """One orchestrator per node: who holds the node's name, its GPUs and its heartbeat."""

    __tablename__ = "nodes"

    name: str = Field(primary_key=True, max_length=253)
    url: str | None = None
    instance: str = Field(max_length=36, description="the process holding the name")
    pid: int
    host: str
    started_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    heartbeat_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    gpus: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class LeaseRow(SQLModel, table=True):
    """Which node may act on a model: launch its engine, write its status and spec."""

    __tablename__ = "leases"
    __table_args__ = (Index("ix_leases_node", "node"),)

    model_id: str = Field(primary_key=True, foreign_key="models.id", ondelete="CASCADE")
    node: str = Field(max_length=253)
    epoch: int = Field(description="bumped by every change of holder: a fencing token")
    acquired_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
