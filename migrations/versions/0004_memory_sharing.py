"""sharing the GPU: idle_timeout_s, priority, sleep_level

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 09:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idle_timeout_s", sa.Float(), nullable=True))
        batch_op.add_column(
            sa.Column("priority", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("sleep_level", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("sleep_level")
        batch_op.drop_column("priority")
        batch_op.drop_column("idle_timeout_s")
