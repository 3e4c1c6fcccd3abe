"""Background watchers of one engine run. Each only observes and posts a message; the
supervisor alone acts on it."""

from __future__ import annotations

from collections.abc import Callable

from app.orchestrator.clock import Clock
from app.orchestrator.health import HealthProbe
from app.orchestrator.launchers.base import EngineHandle, Launcher
from app.orchestrator.lifecycle.messages import (
    BackoffElapsed,
    EngineExited,
    EngineReady,
    HealthFailed,
    Message,
    StartTimedOut,
)

Post = Callable[[Message], None]


async def watch_exit(launcher: Launcher, handle: EngineHandle, generation: int, post: Post) -> None:
    code = await launcher.wait_exit(handle)
    post(EngineExited(generation=generation, code=code))


async def await_ready(
    health: HealthProbe,
    clock: Clock,
    *,
    base_url: str,
    deadline: Callable[[], float],
    interval_min_s: float,
    interval_max_s: float,
    generation: int,
    post: Post,
) -> None:
    """Poll /health from launch: a short interval that backs off slowly, so the lag between the
    engine's first 200 and `running` stays in tens of milliseconds for fast and slow loads alike.
    Connection refused is normal while the engine loads. `deadline` is read on every poll: a
    spec edit of start_timeout_s moves it for the start under way."""
    interval = interval_min_s
    while True:
        if await health.healthy(base_url, timeout_s=max(interval_max_s, 1.0)):
            post(EngineReady(generation=generation))
            return
        if clock.monotonic() >= deadline():
            post(StartTimedOut(generation=generation))
            return
        await clock.sleep(interval)
        interval = min(interval * 1.25, interval_max_s)


async def watch_health(
    health: HealthProbe,
    clock: Clock,
    *,
    base_url: str,
    interval_s: float,
    timeout_s: float,
    failures_allowed: int,
    generation: int,
    post: Post,
) -> None:
    failures = 0
    while True:
        await clock.sleep(interval_s)
        if await health.healthy(base_url, timeout_s=timeout_s):
            failures = 0
            continue
        failures += 1
        if failures >= failures_allowed:
            post(
                HealthFailed(
                    generation=generation,
                    detail=f"GET {base_url}/health failed {failures} times in a row",
                )
            )
            return


async def after_delay(clock: Clock, delay_s: float, message: Message, post: Post) -> None:
    await clock.sleep(delay_s)
    post(message)


def backoff_message(epoch: int) -> BackoffElapsed:
    return BackoffElapsed(epoch=epoch)
