"""Faults around engines: an unusable log directory, an engine that closes its log."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import MakeSettings, running_app
from tests.lifecycle.helpers import wait_state
from tests.lifecycle.test_engine_lifecycle import spec


async def test_faults_unusable_log_dir_fails_the_start_clearly_and_keeps_serving(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the log directory should be")
    settings = make_settings(log_dir=blocker / "logs")
    async with running_app(settings) as (_app, client):
        await client.post("/models", json=spec("tiny", restart_policy={"max_restarts": 0}))
        response = await client.post("/models/tiny/start")
        assert response.status_code == 503
        detail = response.json()["detail"]
        assert detail["code"] == "launch_failed"
        assert "cannot open engine log" in detail["message"]
        assert (await client.get("/healthz")).status_code == 200
        status = (await client.get("/models/tiny")).json()["status"]
        assert status["last_failure"]["kind"] == "launch_error"
        assert status["pid"] is None


async def test_faults_engine_closing_its_log_keeps_running_and_stops(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings()) as (_app, client):
        await client.post("/models", json=spec("tiny", "--close-log"))
        await client.post("/models/tiny/start")
        await wait_state(client, "tiny", "running")
        stopped = await client.post("/models/tiny/stop?wait=true")
        assert stopped.json()["state"] == "stopped"
