"""Which watchers an engine run gets: its exit always, then readiness while it starts, or health
and the stability timer once it runs."""

from __future__ import annotations

from app.orchestrator.lifecycle import watchers
from app.orchestrator.lifecycle.context import RunContext
from app.orchestrator.lifecycle.launch import EngineRun
from app.orchestrator.lifecycle.messages import StableElapsed
from app.orchestrator.lifecycle.watchers import Post


def watch_run(
    ctx: RunContext,
    run: EngineRun,
    post: Post,
    *,
    ready: bool,
    stable_after_s: float,
) -> None:
    run.spawn(watchers.watch_exit(ctx.launcher, run.handle, run.generation, post))
    if ready:
        _watch_running(ctx, run, post, stable_after_s=stable_after_s)
        return
    settings = ctx.settings
    run.spawn(
        watchers.await_ready(
            ctx.health,
            ctx.clock,
            base_url=run.base_url,
            deadline=lambda: run.start_deadline,
            interval_min_s=settings.readiness_interval_min_s,
            interval_max_s=settings.readiness_interval_max_s,
            generation=run.generation,
            post=post,
        )
    )


def _watch_running(ctx: RunContext, run: EngineRun, post: Post, *, stable_after_s: float) -> None:
    settings = ctx.settings
    run.spawn(
        watchers.watch_health(
            ctx.health,
            ctx.clock,
            base_url=run.base_url,
            interval_s=settings.health_interval_s,
            timeout_s=settings.health_timeout_s,
            failures_allowed=settings.health_failures,
            generation=run.generation,
            post=post,
        )
    )
    run.spawn(
        watchers.after_delay(
            ctx.clock, stable_after_s, StableElapsed(generation=run.generation), post
        )
    )
