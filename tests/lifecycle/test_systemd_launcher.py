"""The systemd launcher against fake systemd-run/systemctl executables that record their argv
and really run the engine."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.orchestrator.launchers.process import group_members
from app.orchestrator.launchers.systemd_launcher import SystemdLauncher
from app.orchestrator.wiring import Overrides
from tests.conftest import MakeSettings, running_app
from tests.lifecycle.helpers import wait_state, wait_status

FAKE = Path(__file__).resolve().parents[1] / "fakes" / "systemd" / "fake_systemd.py"


@pytest.fixture
def fake_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, SystemdLauncher]:
    state = tmp_path / "systemd"
    state.mkdir()
    monkeypatch.setenv("FAKE_SYSTEMD_DIR", str(state))
    scripts = {}
    for name, mode in (("systemd-run", "run"), ("systemctl", "ctl")):
        script = tmp_path / name
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" {mode} "$@"\n')
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
        scripts[name] = str(script)
    launcher = SystemdLauncher(
        stop_timeout_s=5, systemd_run=scripts["systemd-run"], systemctl=scripts["systemctl"]
    )
    return state, launcher


def _calls(state: Path) -> list[list[str]]:
    return [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]


async def test_systemd_launcher_runs_transient_unit_with_limits(
    make_settings: MakeSettings, fake_systemd: tuple[Path, SystemdLauncher]
) -> None:
    state, launcher = fake_systemd
    settings = make_settings(launcher="systemd")
    async with running_app(settings, Overrides(launcher=launcher)) as (_app, client):
        body = {
            "id": "tiny",
            "model": "/models/tiny",
            "gpu_memory_util": 0.3,
            "memory_max": "48G",
            "cpu_quota": "400%",
        }
        await client.post("/models", json=body)
        await client.post("/models/tiny/start")
        status = await wait_state(client, "tiny", "running")
        assert status["launcher"] == "systemd" and status["limits_enforced"] is True
        assert status["unit_name"] == "vllm-tiny.service"
        run_call = next(call for call in _calls(state) if call[0] == "run")
        options = run_call[1 : run_call.index("--")]
        assert "--user" in options and "--unit=vllm-tiny.service" in options
        # Not collected: a failed unit's Result (oom-kill) must outlive it for exit_cause.
        assert "--collect" not in options
        properties = [options[i + 1] for i, option in enumerate(options) if option == "-p"]
        log = settings.resolved_log_dir / "tiny.log"
        assert "MemoryMax=48G" in properties and "CPUQuota=400%" in properties
        assert f"StandardOutput=append:{log}" in properties
        assert f"StandardError=append:{log}" in properties
        assert any(option.startswith("--setenv=GPU_ORCH_LAUNCH_TOKEN=") for option in options)
        command = run_call[run_call.index("--") + 1 :]
        assert command[command.index("--port") + 1] == str(status["port"])
        assert "Application startup complete" in log.read_text()
        pid = status["pid"]
        stopped = await client.post("/models/tiny/stop?wait=true")
        assert stopped.json()["state"] == "stopped"
        assert ["ctl", "--user", "stop", "vllm-tiny.service"] in _calls(state)
        assert group_members(pid) == []


async def test_systemd_launcher_refusal_is_a_launch_failure(
    make_settings: MakeSettings, fake_systemd: tuple[Path, SystemdLauncher]
) -> None:
    state, launcher = fake_systemd
    (state / "vllm-tiny.service.refuse").touch()
    async with running_app(make_settings(), Overrides(launcher=launcher)) as (_app, client):
        body = {
            "id": "tiny",
            "model": "/m",
            "gpu_memory_util": 0.3,
            "restart_policy": {"max_restarts": 0},
        }
        await client.post("/models", json=body)
        refused = await client.post("/models/tiny/start")
        assert refused.status_code == 503
        assert refused.json()["detail"]["code"] == "launch_failed"
        assert "already exists" in refused.json()["detail"]["message"]
        status = (await client.get("/models/tiny")).json()["status"]
        assert status["state"] == "degraded"
        assert status["last_failure"]["kind"] == "launch_error"
        assert os.environ["FAKE_SYSTEMD_DIR"] == str(state)


def _oom_kill(unit: str) -> None:
    """The kernel kills the unit at its MemoryMax=, systemd records it (the fake does both)."""
    done = subprocess.run(
        [sys.executable, str(FAKE), "oom-kill", unit], capture_output=True, timeout=30
    )
    assert done.returncode == 0, done.stderr


def _failure_kind(status: dict[str, Any]) -> str | None:
    failure = status["last_failure"] or {}
    return failure.get("kind")


async def test_systemd_launcher_oom_kill_at_memory_max_is_host_oom_with_the_limit(
    make_settings: MakeSettings, fake_systemd: tuple[Path, SystemdLauncher]
) -> None:
    state, launcher = fake_systemd
    async with running_app(make_settings(), Overrides(launcher=launcher)) as (_app, client):
        body = {
            "id": "tiny",
            "model": "/models/tiny",
            "gpu_memory_util": 0.3,
            "memory_max": "48G",
            "restart_policy": {"max_restarts": 0},
        }
        await client.post("/models", json=body)
        await client.post("/models/tiny/start")
        await wait_state(client, "tiny", "running")

        _oom_kill("vllm-tiny.service")
        status = await wait_status(
            client, "tiny", lambda s: _failure_kind(s) == "host_oom", what="host_oom"
        )

        message = status["last_failure"]["message"]
        assert "killed by the kernel's OOM killer at its memory limit of 48 GiB" in message
        assert "unit vllm-tiny.service Result=oom-kill, MemoryMax=51539607552" in message
        assert status["ooms_total"] == 1
        # Read, then let go, as --collect would have.
        calls = _calls(state)
        read = max(index for index, call in enumerate(calls) if "Result" in call)
        assert ["ctl", "--user", "reset-failed", "vllm-tiny.service"] in calls[read:]


async def test_systemd_launcher_engine_that_dies_otherwise_is_a_plain_exit(
    make_settings: MakeSettings, fake_systemd: tuple[Path, SystemdLauncher]
) -> None:
    _state, launcher = fake_systemd
    async with running_app(make_settings(), Overrides(launcher=launcher)) as (_app, client):
        body = {
            "id": "tiny",
            "model": "/models/tiny",
            "gpu_memory_util": 0.3,
            "memory_max": "48G",
            "restart_policy": {"max_restarts": 0},
        }
        await client.post("/models", json=body)
        await client.post("/models/tiny/start")
        pid = (await wait_state(client, "tiny", "running"))["pid"]

        os.killpg(pid, signal.SIGKILL)
        status = await wait_status(client, "tiny", lambda s: _failure_kind(s) is not None)

        assert _failure_kind(status) == "exit" and status["ooms_total"] == 0
