"""Shared fixtures: an app on a temporary SQLite file, driven through httpx."""

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

MakeSettings = Callable[..., Settings]
TEST_MARKER = "GPU_ORCH_TEST_RUN"


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
