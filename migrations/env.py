"""Alembic environment: runs against the engine the service hands in (config.attributes)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, Engine, engine_from_config, pool, text
from sqlmodel import SQLModel

import app.store.tables  # noqa: F401  (registers the tables on SQLModel.metadata)

config = context.config
target_metadata = SQLModel.metadata
# pg_advisory_xact_lock's key for "migrating this database" (any constant all versions share).
PG_MIGRATION_LOCK_KEY = 0x6770755F6F7263  # "gpu_orc"


def _serialise_migrations(connection: Connection) -> None:
    """On PostgreSQL, several orchestrators (nodes) may start at once on one database: each
    waits here until the one migrating has committed, then finds the schema at head. A SQLite
    file has one orchestrator at most (app/store/instance_lock.py)."""
    if connection.dialect.name == "postgresql":
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK_KEY}
        )


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    if not isinstance(engine, Engine):
        engine = engine_from_config(
            config.get_section(config.config_ini_section, {}),
            prefix="sqlalchemy.",
            poolclass=pool.NullPool,
        )
    with engine.connect() as connection:
        context.configure(
            connection=connection, target_metadata=target_metadata, render_as_batch=True
        )
        with context.begin_transaction():
            _serialise_migrations(connection)  # held until this transaction ends
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
