"""One orchestrator per database: a second `serve` on the same SQLite file refuses to start (exit
4, naming the holder) and changes nothing; a SIGKILLed orchestrator never blocks its successor.
The in-process app takes the same lock before it opens the store."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import psutil
import pytest

from app.store.instance_lock import InstanceLock, InstanceLockHeld, lock_path_for
from tests.conftest import MakeSettings, running_app
from tests.fakes import free_port
from tests.lifecycle.orchestrator_process import (
    SERVE,
    orchestrator_env,
    orchestrator_process,
)

pytestmark = pytest.mark.sqlite_only(
    reason="one orchestrator per SQLite file: PostgreSQL has no instance lock"
)

SPEC = {"id": "tiny", "model": "/models/tiny", "gpu_memory_util": 0.3}
REPO_ROOT = Path(__file__).resolve().parents[2]
EXIT_DATABASE_HELD = 4


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


def serve_once(state_dir: Path) -> subprocess.CompletedProcess[str]:
    """A second `serve` on `state_dir`, run to its end."""
    return subprocess.run(
        [*SERVE, "--port", str(free_port()), "--log-level", "warning"],
        env=orchestrator_env(state_dir),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,  # refused before uvicorn even starts
        check=False,
    )


def test_single_instance_second_serve_refuses_naming_the_holder(state_dir: Path) -> None:
    with orchestrator_process(state_dir) as first:
        assert first.client.post("/models", json=SPEC).status_code == 201
        assert first.client.post("/models/tiny/start").status_code == 202
        running = first.wait_state("tiny", "running")
        events_before = first.client.get("/models/tiny/events").json()

        second = serve_once(state_dir)

        assert second.returncode == EXIT_DATABASE_HELD, second.stderr
        assert f"pid {first.process.pid} on host {socket.gethostname()} since " in second.stderr
        assert str(state_dir / "gpu-orchestrator.db") in second.stderr
        assert "Traceback" not in second.stderr
        # The second one adopted nothing and wrote nothing: the first still supervises alone.
        assert first.status("tiny")["pid"] == running["pid"]
        assert first.client.get("/models/tiny/events").json() == events_before
        assert first.client.post("/models/tiny/stop").status_code in (200, 202)
        first.wait_state("tiny", "stopped")


def test_single_instance_successor_starts_after_sigkill(state_dir: Path) -> None:
    with orchestrator_process(state_dir) as first:
        assert first.client.post("/models", json=SPEC).status_code == 201
        assert first.client.post("/models/tiny/start").status_code == 202
        pid = first.wait_state("tiny", "running")["pid"]
        first.kill()
    # The engine lives on and must not hold the lock it could have inherited.
    assert psutil.pid_exists(pid)
    with orchestrator_process(state_dir) as second:
        status = second.wait_state("tiny", "running")
        assert status["pid"] == pid  # adopted, not relaunched
        assert second.client.post("/models/tiny/stop").status_code in (200, 202)
        second.wait_state("tiny", "stopped")


async def test_single_instance_app_refuses_before_opening_the_store(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings()
    lock_path = lock_path_for(settings.resolved_database_url)
    assert lock_path is not None
    holder = InstanceLock(lock_path)
    holder.acquire()
    try:
        with pytest.raises(InstanceLockHeld, match=f"pid {os.getpid()} on host"):
            async with running_app(settings):
                pytest.fail("a second orchestrator started")
        database = lock_path.with_name(lock_path.name.removesuffix(".lock"))
        assert not database.exists()  # neither created nor migrated
    finally:
        holder.release()
    async with running_app(settings) as (_app, client):
        assert (await client.get("/readyz")).status_code == 200


async def test_single_instance_two_apps_in_one_process_cannot_overlap(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings()
    async with running_app(settings) as (_app, client):
        with pytest.raises(InstanceLockHeld):
            async with running_app(settings):
                pytest.fail("a second orchestrator started")
        assert (await client.get("/readyz")).status_code == 200
    async with running_app(settings) as (_app, client):  # released on shutdown
        assert (await client.get("/readyz")).status_code == 200
