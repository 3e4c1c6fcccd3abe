"""The store on both backends, in every run: SQLite on a temporary file and PostgreSQL on the
session's server (tests/pg_server.py). Migrations up to head, down to base and up again, one
step at a time too; the Registry's round trips of specs, statuses and events, with their
timezone-aware datetimes and JSON columns. The PostgreSQL server runs in a zone that is not UTC,
so a datetime read back in the server's zone would show."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.engine import make_url
from sqlmodel import Session, SQLModel, col

from app.orchestrator.registry import Registry
from app.orchestrator.spec import ModelSpec, RestartPolicy
from app.store.db import (
    alembic_config,
    at_head,
    downgrade_to_base,
    make_engine,
    session_scope,
    upgrade_to_head,
)
from app.store.repository import create_model
from app.store.tables import ModelRow, StatusRow
from tests.fakes import wait_until
from tests.fakes.memory import FakeClock
from tests.pg_server import PgServer

TABLES = set(SQLModel.metadata.tables)  # every table app/store/tables.py declares
# Microseconds, and a moment whose wall time differs in most zones' calendars from UTC's.
T0 = datetime(2026, 3, 29, 23, 45, 1, 123456, tzinfo=UTC)
MIGRATION_LOCK_KEY = 0x6770755F6F7263  # migrations/env.py's PG_MIGRATION_LOCK_KEY
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    built = make_engine(database_url)
    yield built
    built.dispose()


@pytest.fixture
def registry(engine: Engine) -> Iterator[Registry]:
    upgrade_to_head(engine)
    store = Registry(engine, FakeClock(start=T0))
    yield store
    store.close()


def tables_of(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def revisions(engine: Engine) -> list[str]:
    """Every revision, oldest first."""
    script = ScriptDirectory.from_config(alembic_config(engine))
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def spec(model_id: str = "m", **fields: Any) -> ModelSpec:
    values: dict[str, Any] = {
        "id": model_id,
        "model": "/models/tiny",
        "gpu_memory_util": 0.3,
        "adapter_paths": ["/adapters/sql", "/adapters/ünïcode"],
        "adapter_names": {"/adapters/sql": "sql", "/adapters/ünïcode": "uni"},
        "extra_args": ["--enforce-eager", "--max-num-seqs", "8"],
        "env": {"VLLM_LOGGING_LEVEL": "DEBUG", "QUOTE": 'it\'s "quoted"'},
        "restart_policy": RestartPolicy(max_restarts=3, backoff_initial_s=1.5),
    }
    values.update(fields)
    return ModelSpec(**values)


# -- migrations ------------------------------------------------------------------------------------
def test_store_backends_upgrade_downgrade_and_upgrade_again(engine: Engine) -> None:
    assert not at_head(engine)  # an empty database
    upgrade_to_head(engine)
    assert at_head(engine)
    assert tables_of(engine) == TABLES

    downgrade_to_base(engine)
    assert not at_head(engine)
    assert tables_of(engine) == set()

    upgrade_to_head(engine)
    assert at_head(engine)
    assert tables_of(engine) == TABLES
    with engine.connect() as connection:
        clusters = connection.execute(text("SELECT id, created_at FROM cluster")).all()
    assert len(clusters) == 1  # 0005's row, inserted again by the second upgrade


def test_store_backends_every_migration_goes_up_and_down_one_step(engine: Engine) -> None:
    config = alembic_config(engine)
    steps = revisions(engine)
    assert steps[0] == "0001" and len(steps) >= 5
    for revision in steps:
        command.upgrade(config, revision)
        assert at_head(engine) == (revision == steps[-1])
    for _revision in reversed(steps):
        command.downgrade(config, "-1")
    assert tables_of(engine) == set()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 0


def test_store_backends_column_defaults_fill_rows_stored_before_them(engine: Engine) -> None:
    """A model stored at 0001 gets the server defaults of the columns added after it: booleans
    true (on_demand, failover), integers 0 (max_concurrency, priority)."""
    command.upgrade(alembic_config(engine), "0001")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO models (id, model, dtype, gpu_memory_util, tensor_parallel_size,"
                " adapter_paths, adapter_names, extra_args, env, restart_policy, source,"
                " created_at, updated_at) VALUES ('old', '/m', 'auto', 0.5, 1, '[]', '{}', '[]',"
                " '{}', '{}', 'api', :at, :at)"
            ),
            {"at": T0},
        )
    upgrade_to_head(engine)
    columns = [ModelRow.on_demand, ModelRow.failover, ModelRow.max_concurrency, ModelRow.priority]
    with engine.connect() as connection:
        row = connection.execute(select(*(col(c) for c in columns), col(ModelRow.node))).one()
    assert tuple(row) == (True, True, 0, 0, None)
    assert row[0] is True and row[1] is True  # booleans, not 1 / "true"


def test_store_backends_at_head_is_false_one_migration_behind(engine: Engine) -> None:
    steps = revisions(engine)
    command.upgrade(alembic_config(engine), steps[-2])
    assert not at_head(engine)
    upgrade_to_head(engine)
    assert at_head(engine)


# -- the registry ----------------------------------------------------------------------------------
async def test_store_backends_registry_spec_create_update_delete(registry: Registry) -> None:
    created = await registry.create(spec("m"), source="test")
    assert (created.model_id, created.state, created.desired_state) == ("m", "stopped", "stopped")
    assert registry.spec("m") == spec("m")

    changed = spec("m", max_model_len=8192, env={"A": "1"}, on_demand=False, node="gpu-2")
    assert await registry.update(changed, source="manifest:a.yaml")
    assert registry.spec("m") == changed
    assert not await registry.update(spec("absent"))

    await registry.create(spec("a-first"))
    assert [stored.id for stored in registry.specs()] == ["a-first", "m"]

    assert await registry.delete("m")
    assert registry.spec("m") is None
    assert registry.status("m") is None
    assert not await registry.delete("m")
    # The event log outlives the model.
    kinds = [(event.kind, event.reason) for event in registry.events("m", limit=10)]
    assert kinds == [("created", "test"), ("updated", "manifest:a.yaml"), ("deleted", "")]


async def test_store_backends_registry_status_round_trip(registry: Registry) -> None:
    status = await registry.create(spec("m"))
    assert status.since == T0 and status.since.utcoffset() == timedelta(0)

    status.state = "failed"
    status.desired_state = "running"
    status.pid = 4242
    status.pid_create_time = 1_700_000_000.25
    status.gpu_ids = [1, 0]
    status.limits_enforced = False
    status.restart_needed = True
    status.last_failure_kind = "oom"
    status.last_failure_message = "CUDA out of memory: needed 2.00 GiB, 1.5 GiB free ✗"
    status.last_failure_at = T0 + timedelta(seconds=1)
    status.next_attempt_at = T0 + timedelta(hours=1, microseconds=1)
    status.running_since = None
    status.log_offset = 123_456
    status.log_inode = 5_308_697
    status.notes = {"adapters": {"sql": [1, 2.5, None, True]}, "text": "ünï"}
    committed: list[StatusRow] = []
    registry.save_status(
        status,
        event={"kind": "transition", "from_state": "stopped", "to_state": "failed"},
        on_commit=committed.append,
    )
    await registry.flush()

    stored = registry.status("m")
    assert stored is not None
    assert stored.model_dump() == status.model_dump()
    for moment in (stored.since, stored.last_failure_at, stored.next_attempt_at):
        assert moment is not None and moment.utcoffset() == timedelta(0), moment
    assert stored.next_attempt_at == T0 + timedelta(hours=1, microseconds=1)
    assert registry.statuses() == {"m": stored}

    status.state = "stopped"  # the second save of one row updates it
    status.gpu_ids = []
    status.notes = {}
    registry.save_status(status)
    await registry.flush()
    again = registry.status("m")
    assert again is not None
    assert (again.state, again.gpu_ids, again.notes) == ("stopped", [], {})
    assert [snapshot.state for snapshot in committed] == ["failed"]


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
async def test_store_backends_status_keeps_64_bit_log_offset_and_inode(
    registry: Registry,
) -> None:
    status = await registry.create(spec("m"))
    status.log_offset = 2**40  # a log past 4 GiB
    status.log_inode = 2**33 + 7  # XFS inode numbers pass 32 bits
    registry.save_status(status)
    await registry.flush()
    stored = registry.status("m")
    assert stored is not None
    assert (stored.log_offset, stored.log_inode) == (2**40, 2**33 + 7)


async def test_store_backends_registry_events_keep_data_time_and_order(
    registry: Registry,
) -> None:
    await registry.create(spec("m"))
    data = {"argv": ["vllm", "serve", "--port", "20001"], "figures": {"needed_mib": 2048.5}}
    registry.append_event("m", "launched", reason="pid 4242", data=data)
    registry.append_event(None, "alert", reason="gpu 0 low", data={"gpu": 0, "ok": False})
    registry.save_status(
        StatusRow(model_id="m", since=T0, state="starting"),
        event={"kind": "transition", "from_state": "stopped", "to_state": "starting"},
    )
    await registry.flush()

    events = registry.events("m", limit=10)
    assert [event.kind for event in events] == ["created", "launched", "transition"]
    launched = events[1]
    assert launched.data == data and launched.reason == "pid 4242"
    assert launched.at == T0 and launched.at.utcoffset() == timedelta(0)
    assert (events[2].from_state, events[2].to_state) == ("stopped", "starting")
    assert [event.kind for event in registry.events("m", limit=2)] == ["launched", "transition"]

    first = events[0].id
    assert first is not None
    after = registry.events_after(first)
    assert [(event.model_id, event.kind) for event in after] == [
        ("m", "launched"),
        (None, "alert"),
        ("m", "transition"),
    ]
    assert after[1].data == {"gpu": 0, "ok": False}
    assert [event.kind for event in registry.events_after(first, model_id="m")] == [
        "launched",
        "transition",
    ]


# -- PostgreSQL only -------------------------------------------------------------------------------
def _advisory_waiters(admin: psycopg.Connection[Any]) -> int:
    row = admin.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    ).fetchone()
    return 0 if row is None else int(row[0])


def test_store_backends_postgresql_concurrent_upgrades_wait_for_each_other(
    pg_server: PgServer, pg_url: str
) -> None:
    """Two orchestrators starting at once on one empty database: the second migration waits for
    the first to commit, then finds the schema at head (no "relation already exists"). Two
    processes, as two nodes would be: Alembic's context is one per process."""
    database = make_url(pg_url).database
    assert database is not None
    upgrade = (
        "import sys; from app.store import db; db.upgrade_to_head(db.make_engine(sys.argv[1]))"
    )
    with psycopg.connect(pg_server.conninfo(database), autocommit=True) as holder:
        # Hold the migrations' lock, so both upgrades queue behind it, then let go.
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        upgrades = [
            subprocess.Popen(
                [sys.executable, "-c", upgrade, pg_url],
                cwd=REPO_ROOT,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        try:
            wait_until(lambda: _advisory_waiters(holder) == 2, 60, what="both upgrades waiting")
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
            outcomes = [
                (process.wait(timeout=60), process.communicate()[1]) for process in upgrades
            ]
    assert [code for code, _stderr in outcomes] == [0, 0], outcomes
    engine = make_engine(pg_url)
    try:
        assert at_head(engine)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM cluster")).scalar() == 1
    finally:
        engine.dispose()


def test_store_backends_postgresql_url_forms(pg_server: PgServer, pg_url: str) -> None:
    """`postgresql://` means psycopg 3 (psycopg2 is not installed); a password with URL escapes
    (here `p@ss%`, written `p%40ss%25`) survives Alembic's config. Trust auth takes any."""
    database = make_url(pg_url).database
    plain = make_engine(f"postgresql://postgres:p%40ss%25@127.0.0.1:{pg_server.port}/{database}")
    try:
        assert plain.dialect.driver == "psycopg"
        assert plain.url.password == "p@ss%"
        upgrade_to_head(plain)
        assert at_head(plain)
        with plain.connect() as connection:
            assert connection.execute(text("SHOW timezone")).scalar() == "UTC"
    finally:
        plain.dispose()


def test_store_backends_a_postgresql_deadlock_is_retried(pg_url: str) -> None:
    """Two transactions that lock two lease rows in opposite orders: PostgreSQL aborts one of
    them (deadlock detected), and the Registry runs that one again instead of losing it."""
    engine = make_engine(pg_url)
    upgrade_to_head(engine)
    registry = Registry(engine, FakeClock())
    with session_scope(engine) as session:
        for model_id in ("m1", "m2"):
            fields = {"id": model_id, "model": "/m", "dtype": "auto", "gpu_memory_util": 0.5}
            create_model(session=session, fields=fields, source="test", now=datetime.now(UTC))
    barrier = threading.Barrier(2)
    attempts: list[str] = []
    lock = text("SELECT 1 FROM models WHERE id = :id FOR UPDATE")

    def lock_both(first: str, second: str) -> str:
        def work(session: Session) -> str:
            attempts.append(first)
            session.execute(lock, {"id": first})
            if attempts.count(first) == 1:
                barrier.wait(timeout=10)  # both hold their first row now: a cycle
            session.execute(lock, {"id": second})
            return first

        return registry._run(work)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lock_both, ("m1", "m2"), ("m2", "m1")))
    assert sorted(results) == ["m1", "m2"]
    assert len(attempts) == 3  # one of the two ran twice
    registry.close()
    engine.dispose()
