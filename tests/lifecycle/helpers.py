"""Waiting on the API for a state, with a deadline (never a bare sleep)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx


async def wait_status(
    client: httpx.AsyncClient,
    model_id: str,
    predicate: Callable[[dict[str, Any]], bool],
    *,
    timeout_s: float = 20.0,
    what: str = "",
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = await client.get(f"/models/{model_id}")
        if response.status_code == 200:
            last = response.json()["status"]
            if predicate(last):
                return last
        await asyncio.sleep(0.02)
    raise TimeoutError(f"{model_id}: {what or 'condition'} not reached; last status {last}")


async def wait_state(
    client: httpx.AsyncClient, model_id: str, state: str, *, timeout_s: float = 20.0
) -> dict[str, Any]:
    return await wait_status(
        client, model_id, lambda status: status["state"] == state, timeout_s=timeout_s, what=state
    )


def group_alive(pgid: int) -> list[int]:
    from app.orchestrator.launchers.process import group_members

    return group_members(pgid)
