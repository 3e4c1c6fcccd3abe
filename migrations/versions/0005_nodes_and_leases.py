"""nodes and leases: the cluster's nodes, who owns each model, node pins and failover

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 12:00:00.000000
"""

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    cluster = op.create_table(
        "cluster",
        sa.Column("id", sa.String(length=36), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.bulk_insert(cluster, [{"id": uuid.uuid4().hex, "created_at": datetime.now(UTC)}])
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(length=253), primary_key=True),
        sa.Column("url", sa.String(), nullable=True),
        sa.Column("instance", sa.String(length=36), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("gpus", sa.JSON(), nullable=False),
    )
    op.create_table(
        "leases",
        sa.Column(
            "model_id",
            sa.String(length=63),
            sa.ForeignKey("models.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("node", sa.String(length=253), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_leases_node", "leases", ["node"])
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("node", sa.String(length=253), nullable=True))
        batch_op.add_column(
            sa.Column("failover", sa.Boolean(), nullable=False, server_default=sa.true())
        )
    with op.batch_alter_table("model_status", schema=None) as batch_op:
        batch_op.add_column(sa.Column("node", sa.String(length=253), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_status", schema=None) as batch_op:
        batch_op.drop_column("node")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("failover")
        batch_op.drop_column("node")
    op.drop_index("ix_leases_node", table_name="leases")
    op.drop_table("leases")
    op.drop_table("nodes")
    op.drop_table("cluster")
