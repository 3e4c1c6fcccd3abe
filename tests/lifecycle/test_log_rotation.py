"""The shipped logrotate rules (deploy/logrotate/gpu-orchestrator), run by the real logrotate on
the log directory of a running service: an OOM the engine prints after its log was rotated is
still detected, for rotation by rename (the rules as shipped) and by copytruncate."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.settings import Settings
from tests.conftest import MakeSettings, running_app
from tests.lifecycle.helpers import wait_state, wait_status

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "logrotate" / "gpu-orchestrator"
SIGNAL_ENGINE = Path(__file__).resolve().parent / "signal_engine.py"
POLICY = {"max_restarts": 3, "backoff_initial_s": 0.1, "backoff_factor": 1.0}
SPEC = {"id": "tiny", "model": "/models/tiny", "gpu_memory_util": 0.3, "restart_policy": POLICY}


def _logrotate_binary() -> str:
    binary = shutil.which("logrotate") or shutil.which("logrotate", path="/usr/sbin:/sbin")
    if binary is None:
        message = "logrotate is missing: run scripts/test-deps.sh (apt-get install logrotate)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


def _rules_for(log_dir: Path, *, style: str) -> str:
    """The shipped rules, their path pointed at `log_dir`; `copytruncate` swaps the style."""
    text, count = re.subn(
        r"^/\S+/\*\.log(?= \{)", f"{log_dir}/*.log", RULES.read_text(), flags=re.M
    )
    assert count == 1, "the rules name one log path"
    if style == "copytruncate":
        text, count = re.subn(r"^\s*create\b.*$", "    copytruncate", text, flags=re.M)
        assert count == 1
    return text


def _rotate(tmp_path: Path, log_dir: Path, *, style: str) -> None:
    config = tmp_path / f"logrotate-{style}.conf"
    config.write_text(_rules_for(log_dir, style=style))
    config.chmod(0o644)  # logrotate ignores a config file others may write
    command = [_logrotate_binary(), "--force", "--state", str(tmp_path / "logrotate.state")]
    done = subprocess.run([*command, str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _settings(make_settings: MakeSettings) -> Settings:
    return make_settings(vllm_command=[sys.executable, str(SIGNAL_ENGINE)])


async def _running(client: httpx.AsyncClient, *, restarts: int) -> int:
    status = await wait_status(
        client,
        "tiny",
        lambda s: s["state"] == "running" and s["restarts_total"] == restarts,
        what=f"running after {restarts} restarts",
    )
    pid: int = status["pid"]
    return pid


async def _oom_counted(client: httpx.AsyncClient, count: int) -> dict[str, Any]:
    # The count and the failure it belongs to are two writes of one step: wait for both.
    status = await wait_status(
        client,
        "tiny",
        lambda s: s["ooms_total"] == count and s["last_failure"] is not None,
        what=f"{count} OOMs counted",
    )
    assert status["last_failure"]["kind"] == "gpu_oom", status["last_failure"]
    return status


def test_log_rotation_rules_are_accepted_by_logrotate(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    (log_dir / "tiny.log").write_text("INFO engine started\n")
    config = tmp_path / "logrotate.conf"
    config.write_text(_rules_for(log_dir, style="create"))
    config.chmod(0o644)
    command = [_logrotate_binary(), "--debug", "--state", str(tmp_path / "state"), str(config)]

    done = subprocess.run(command, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert "error" not in done.stderr.lower(), done.stderr


async def test_log_rotation_by_rename_keeps_detecting_the_running_engines_oom(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    settings = _settings(make_settings)
    log = settings.resolved_log_dir / "tiny.log"
    rotated = log.with_name("tiny.log.1")
    async with running_app(settings) as (_app, client):
        assert (await client.post("/models", json=SPEC)).status_code == 201
        await client.post("/models/tiny/start")
        first_pid = await _running(client, restarts=0)
        engine_inode = log.stat().st_ino

        _rotate(tmp_path, settings.resolved_log_dir, style="create")
        assert rotated.stat().st_ino == engine_inode and log.stat().st_size == 0

        # The engine still writes to its open file, now tiny.log.1.
        os.kill(first_pid, signal.SIGUSR1)
        await _oom_counted(client, 1)
        assert "OutOfMemoryError" in rotated.read_text()
        assert "OutOfMemoryError" not in log.read_text()

        # The restarted engine opens tiny.log: its OOM is read there.
        second_pid = await _running(client, restarts=1)
        assert second_pid != first_pid
        os.kill(second_pid, signal.SIGUSR1)
        await _oom_counted(client, 2)
        assert "OutOfMemoryError" in log.read_text()
        await client.post("/models/tiny/stop?wait=true")


async def test_log_rotation_by_copytruncate_keeps_detecting_the_running_engines_oom(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    settings = _settings(make_settings)
    log = settings.resolved_log_dir / "tiny.log"
    async with running_app(settings) as (_app, client):
        assert (await client.post("/models", json=SPEC)).status_code == 201
        await client.post("/models/tiny/start")
        pid = await _running(client, restarts=0)
        inode = log.stat().st_ino

        _rotate(tmp_path, settings.resolved_log_dir, style="copytruncate")
        assert log.stat().st_ino == inode and log.with_name("tiny.log.1").exists()

        os.kill(pid, signal.SIGUSR1)
        status = await _oom_counted(client, 1)
        assert "CUDA out of memory" in str(status["last_failure"]["message"])
        await wait_state(client, "tiny", "running")
        await client.post("/models/tiny/stop?wait=true")
