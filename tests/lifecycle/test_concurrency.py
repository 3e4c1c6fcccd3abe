"""Races and crashes: concurrent commands on one model, many models at once, a locked SQLite
file, and an orchestrator SIGKILLed in the middle of a start, a stop or a restart."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import threading
from pathlib import Path

import httpx
import pytest

from app.orchestrator.launchers.process import group_members
from tests.conftest import MakeSettings, live_engines_of, running_app
from tests.fakes import wait_until
from tests.lifecycle.helpers import wait_status
from tests.lifecycle.orchestrator_process import orchestrator_process
from tests.lifecycle.test_engine_lifecycle import spec


def _engine_pids_of(events: list[dict[str, object]]) -> list[int]:
    return [int(str(e["reason"]).split()[1]) for e in events if e["kind"] == "launched"]


async def test_concurrency_mixed_start_stop_delete_end_consistent(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    async with running_app(make_settings()) as (_app, client):
        await client.post("/models", json=spec("tiny", "--ready-delay-s", "0.05"))
        chooser = random.Random(7)
        calls = [chooser.choice(["start", "stop", "restart", "start", "stop"]) for _ in range(60)]
        responses = await asyncio.gather(
            *(client.post(f"/models/tiny/{verb}") for verb in calls),
            client.delete("/models/tiny?force=true"),
        )
        assert all(r.status_code in (200, 202, 204, 404) for r in responses), [
            (r.status_code, r.text) for r in responses if r.status_code not in (200, 202, 204, 404)
        ]
        assert any(r.status_code == 202 for r in responses[:-1])  # engines were launched
        assert (await client.get("/models/tiny")).status_code == 404
        events = (await client.get("/models/tiny/events")).status_code
        assert events == 404
        # Whatever the interleaving, no engine of the deleted model is left.
        assert live_engines_of(tmp_path) == []


async def test_concurrency_stop_start_storm_leaves_at_most_one_engine(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings()) as (_app, client):
        await client.post("/models", json=spec("tiny", "--ready-delay-s", "0.05"))
        verbs = ["start", "stop"] * 20 + ["start"]
        for batch in range(0, len(verbs), 8):
            await asyncio.gather(
                *(client.post(f"/models/tiny/{v}") for v in verbs[batch : batch + 8])
            )
        status = await wait_status(
            client, "tiny", lambda s: s["state"] in ("running", "stopped"), what="settled"
        )
        events = (await client.get("/models/tiny/events", params={"limit": 1000})).json()
        pids = _engine_pids_of(events)
        alive = [pid for pid in pids if group_members(pid)]
        assert len(alive) <= 1
        if status["state"] == "running":
            assert alive == [status["pid"]]
        await client.post("/models/tiny/stop?wait=true")
        assert [pid for pid in pids if group_members(pid)] == []


async def test_concurrency_parallel_creates_and_deletes_of_many_models(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings()) as (_app, client):
        ids = [f"m{i:02d}" for i in range(40)]
        created = await asyncio.gather(*(client.post("/models", json=spec(i)) for i in ids))
        assert [r.status_code for r in created] == [201] * 40
        deleted = await asyncio.gather(*(client.delete(f"/models/{i}") for i in ids[::2]))
        assert [r.status_code for r in deleted] == [204] * 20
        listed = [item["id"] for item in (await client.get("/models")).json()]
        assert listed == ids[1::2]


@pytest.mark.sqlite_only(reason="holds the SQLite file's write lock with sqlite3")
async def test_concurrency_locked_database_is_waited_for_not_a_500(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings()
    async with running_app(settings) as (_app, client):
        database = Path(settings.resolved_database_url.removeprefix("sqlite:///"))
        holder = sqlite3.connect(database, timeout=30, check_same_thread=False)
        holder.execute("BEGIN EXCLUSIVE")
        release = threading.Timer(1.0, holder.rollback)
        release.start()
        try:
            response = await client.post("/models", json=spec("locked"))
        finally:
            release.join()
            holder.close()
        assert response.status_code == 201, response.text
        assert (await client.get("/models/locked")).status_code == 200


def _kill_mid(state_dir: Path, fake_flags: str, verb: str, mid_state: str) -> None:
    policy = {"max_restarts": 3, "backoff_initial_s": 0.1}
    with orchestrator_process(state_dir, GPU_ORCH_STOP_GRACE_S="30") as first:
        body = {**spec("tiny", restart_policy=policy), "env": {"FAKE_ENGINE_ARGS": fake_flags}}
        first.client.post("/models", json=body)
        if verb != "start":
            first.client.post("/models/tiny/start")
            first.wait_state("tiny", "running")

        def send() -> None:
            with contextlib.suppress(httpx.HTTPError):  # the orchestrator is killed under it
                first.client.post(f"/models/tiny/{verb}", timeout=60)

        sender = threading.Thread(target=send)
        sender.start()

        def mid() -> bool:
            # Killed mid-start means after the spawn: the engine exists and is recorded.
            status = first.status("tiny")
            return bool(status["state"] == mid_state and status["pid"] is not None)

        wait_until(mid, 20, what=mid_state)
        first.kill()
        sender.join()


def _all_engines(client: httpx.Client) -> list[int]:
    events = client.get("/models/tiny/events", params={"limit": 1000}).json()
    return [pid for pid in _engine_pids_of(events) if group_members(pid)]


def test_concurrency_sigkill_mid_start_adopts_the_starting_engine(tmp_path: Path) -> None:
    _kill_mid(tmp_path, "--ready-delay-s 1.5", "start", "starting")
    with orchestrator_process(tmp_path) as second:
        status = second.wait_state("tiny", "running")
        assert _all_engines(second.client) == [status["pid"]]
        assert status["restarts_total"] == 0
        second.client.post("/models/tiny/stop?wait=true")
        assert _all_engines(second.client) == []


def test_concurrency_sigkill_mid_stop_finishes_the_stop(tmp_path: Path) -> None:
    _kill_mid(tmp_path, "--ignore-sigterm", "stop", "stopping")
    with orchestrator_process(tmp_path, GPU_ORCH_STOP_GRACE_S="0.5") as second:
        status = second.wait_state("tiny", "stopped")
        assert status["desired_state"] == "stopped"
        assert _all_engines(second.client) == []


def test_concurrency_sigkill_mid_restart_ends_with_one_engine(tmp_path: Path) -> None:
    _kill_mid(tmp_path, "--ignore-sigterm", "restart", "stopping")
    with orchestrator_process(tmp_path, GPU_ORCH_STOP_GRACE_S="0.5") as second:
        status = second.wait_state("tiny", "running")
        assert status["desired_state"] == "running"
        assert _all_engines(second.client) == [status["pid"]]
        second.client.post("/models/tiny/stop?wait=true")
        assert _all_engines(second.client) == []
