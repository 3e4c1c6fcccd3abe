"""An orchestrator killed with SIGKILL and started again re-adopts its engines: no duplicate,
no orphan, no lost counters."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from app.orchestrator.launchers.process import group_members
from tests.fakes import wait_until
from tests.lifecycle.orchestrator_process import orchestrator_process

SPEC = {"id": "tiny", "model": "/models/tiny", "gpu_memory_util": 0.3}


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


def _engines_of(token_pids: list[int]) -> list[int]:
    return [pid for pid in token_pids if group_members(pid)]


def test_adoption_after_sigkill_keeps_the_engine_and_starts_no_second(state_dir: Path) -> None:
    with orchestrator_process(state_dir) as first:
        assert (
            first.client.post(
                "/models", json={**SPEC, "env": {"FAKE_ENGINE_ARGS": "--fork-child"}}
            ).status_code
            == 201
        )
        assert first.client.post("/models/tiny/start").status_code == 202
        running = first.wait_state("tiny", "running")
        first.kill()
    pid = running["pid"]
    assert len(group_members(pid)) == 2, "the engine outlives its orchestrator"
    with orchestrator_process(state_dir) as second:
        status = second.status("tiny")
        assert status["state"] == "running" and status["pid"] == pid
        assert second.client.post("/models/tiny/start").status_code == 200
        events = second.client.get("/models/tiny/events").json()
        assert [e["kind"] for e in events].count("launched") == 1
        assert any(e["kind"] == "adopted" for e in events)
        stopped = second.client.post("/models/tiny/stop?wait=true").json()
        assert stopped["state"] == "stopped"
    assert group_members(pid) == []


def test_adoption_engine_died_while_down_is_a_failure_and_restarts(state_dir: Path) -> None:
    policy = {"max_restarts": 3, "backoff_initial_s": 0.1, "backoff_factor": 2.0}
    with orchestrator_process(state_dir) as first:
        first.client.post("/models", json={**SPEC, "restart_policy": policy})
        first.client.post("/models/tiny/start")
        old_pid = first.wait_state("tiny", "running")["pid"]
        first.kill()
    os.killpg(old_pid, signal.SIGKILL)
    wait_until(lambda: not group_members(old_pid), 10, what="old engine gone")
    with orchestrator_process(state_dir) as second:
        wait_until(
            lambda: (
                second.status("tiny")["state"] == "running"
                and second.status("tiny")["pid"] != old_pid
            ),
            20,
            what="restarted engine",
        )
        status = second.status("tiny")
        trail = [
            (e["kind"], e.get("from_state"), e.get("to_state"), e["reason"][:100])
            for e in second.client.get("/models/tiny/events").json()
        ]
        assert status["restarts_total"] == 1, (status, trail)
        assert status["last_failure"]["kind"] == "exit"
        assert "while the orchestrator was down" in status["last_failure"]["message"]
        second.client.post("/models/tiny/stop?wait=true")


def test_adoption_sigterm_leaves_engines_running_and_recorded(state_dir: Path) -> None:
    with orchestrator_process(state_dir) as first:
        first.client.post("/models", json=SPEC)
        first.client.post("/models/tiny/start")
        pid = first.wait_state("tiny", "running")["pid"]
        assert first.terminate() in (0, -15)  # uvicorn re-raises SIGTERM after a clean shutdown
    assert group_members(pid), "a graceful shutdown leaves engines running by default"
    with orchestrator_process(state_dir) as second:
        assert second.status("tiny")["pid"] == pid
        second.client.post("/models/tiny/stop?wait=true")
    assert group_members(pid) == []


def test_adoption_shutdown_setting_stops_engines_and_restarts_them(state_dir: Path) -> None:
    env = {"GPU_ORCH_STOP_ENGINES_ON_SHUTDOWN": "true"}
    with orchestrator_process(state_dir, **env) as first:
        first.client.post("/models", json=SPEC)
        first.client.post("/models/tiny/start")
        pid = first.wait_state("tiny", "running")["pid"]
        assert first.terminate() in (0, -15)  # uvicorn re-raises SIGTERM after a clean shutdown
    assert group_members(pid) == []
    with orchestrator_process(state_dir, **env) as second:
        status = second.wait_state("tiny", "running")
        assert status["pid"] != pid and status["desired_state"] == "running"
        second.client.post("/models/tiny/stop?wait=true")


def test_adoption_oom_while_down_is_counted_once_and_classified(state_dir: Path) -> None:
    policy = {"max_restarts": 3, "backoff_initial_s": 0.1}
    with orchestrator_process(state_dir) as first:
        first.client.post("/models", json={**SPEC, "restart_policy": policy})
        first.client.post("/models/tiny/start")
        old_pid = first.wait_state("tiny", "running")["pid"]
        first.kill()
    log = state_dir / "logs" / "tiny.log"
    with log.open("a") as handle:
        handle.write("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.\n")
    os.killpg(old_pid, signal.SIGKILL)
    wait_until(lambda: not group_members(old_pid), 10, what="old engine gone")
    for _round in range(2):  # a second restart must not count the same line again
        with orchestrator_process(state_dir) as again:
            status = again.wait_state("tiny", "running")
            assert status["ooms_total"] == 1 and status["restarts_total"] == 1
            assert status["last_failure"]["kind"] == "gpu_oom"
    with orchestrator_process(state_dir) as last:
        last.client.post("/models/tiny/stop?wait=true")
