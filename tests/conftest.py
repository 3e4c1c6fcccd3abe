"""Shared fixtures: an app on a temporary SQLite file, driven through httpx.

`--database=postgresql` (or GPU_ORCH_TEST_DATABASE=postgresql) runs the same tests on a real
PostgreSQL server the session starts (tests/pg_server.py): every state directory a test uses
(`make_settings`, a `serve` subprocess, the in-memory tier) gets a fresh database of its own,
dropped when the test ends. Tests marked `sqlite_only` are skipped then. `pg_server` and
`pg_url` give a test PostgreSQL whatever the run chose.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.main import create_app
from app.orchestrator.wiring import Overrides
from app.settings import Settings, load_settings
from tests.fakes import fake_engine_command
from tests.pg_server import PgServer, StateDirDatabases, database_url_for, use_databases

MakeSettings = Callable[..., Settings]
TEST_MARKER = "GPU_ORCH_TEST_RUN"
DATABASES = ("sqlite", "postgresql")
DATABASE_ENV = "GPU_ORCH_TEST_DATABASE"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--database",
        choices=DATABASES,
        default=os.environ.get(DATABASE_ENV, "sqlite"),
        help=f"the store the tests run on (default ${DATABASE_ENV}, else sqlite)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only(reason): the test is about SQLite itself; skipped on PostgreSQL"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--database") != "postgresql":
        return
    for item in items:
        marker = item.get_closest_marker("sqlite_only")
        if marker is not None:
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
            item.add_marker(pytest.mark.skip(reason=f"SQLite only: {reason}".rstrip(": ")))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server for the session, started the first time a test asks for it."""
    server = PgServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL database, dropped after the test."""
    url = pg_server.create_database()
    yield url
    pg_server.drop_database(url.rsplit("/", 1)[1])


@pytest.fixture(autouse=True)
def _test_database(request: pytest.FixtureRequest) -> Iterator[None]:
    """With --database=postgresql, a database per state directory for this test."""
    if request.config.getoption("--database") != "postgresql":
        yield
        return
    databases = StateDirDatabases(request.getfixturevalue("pg_server"))
    use_databases(databases)
    try:
        yield
    finally:
        use_databases(None)
        databases.drop_all()


@pytest.fixture
def make_settings(tmp_path: Path) -> MakeSettings:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "state_dir": tmp_path / "state",
            "config_dir": tmp_path / "config",
            "gpu_backend": "simulated",
            "simulated_gpus": [81920, 81920],
            "launcher": "subprocess",
            "vllm_command": fake_engine_command(),
            "port_range_start": 20000 + (os.getpid() % 200) * 50,
            "port_range_end": 20000 + (os.getpid() % 200) * 50 + 49,
            "stop_grace_s": 5.0,
            "monitor_interval_s": 3600.0,
            # A failing test must not leave engines behind: shutdown stops them here.
            "stop_engines_on_shutdown": True,
            "engine_env": {TEST_MARKER: str(tmp_path)},
        }
        values.update(overrides)
        if "database_url" not in overrides:
            values["database_url"] = database_url_for(Path(values["state_dir"]))
        return load_settings(**values)

    return make


@asynccontextmanager
async def running_app(
    settings: Settings, overrides: Overrides | None = None
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings, overrides)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield app, client


@pytest.fixture
async def client(make_settings: MakeSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(make_settings()) as (_app, http):
        yield http


def live_engines_of(marker: str | Path) -> list[int]:
    """Live engine main processes started with GPU_ORCH_TEST_RUN=marker."""
    found = []
    for process in psutil.process_iter(["pid", "status"]):
        try:
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            environ = process.environ()
            if environ.get(TEST_MARKER) != str(marker) or "GPU_ORCH_LAUNCH_TOKEN" not in environ:
                continue
            if os.getpgid(process.pid) == process.pid:  # a group leader: an engine, not its child
                found.append(process.pid)
        except (psutil.Error, ProcessLookupError):
            continue
    return found


def kill_engines_of(root: str | Path) -> int:
    """Test hygiene: SIGKILL every engine group of a test: started with GPU_ORCH_TEST_RUN set
    to `root` or a parent of it, or writing its log under `root`."""
    root_text = str(root)
    killed = 0
    for process in psutil.process_iter(["pid"]):
        try:
            environ = process.environ()
            if "GPU_ORCH_LAUNCH_TOKEN" not in environ:
                continue
            marker = environ.get(TEST_MARKER)
            ours = marker is not None and (root_text + "/").startswith(marker.rstrip("/") + "/")
            ours = ours or any(f.path.startswith(root_text) for f in process.open_files())
            if ours:
                os.killpg(os.getpgid(process.pid), signal.SIGKILL)
                killed += 1
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return killed


@pytest.fixture(autouse=True)
def _no_engine_left_behind(tmp_path: Path) -> Iterator[None]:
    yield
    kill_engines_of(str(tmp_path))
