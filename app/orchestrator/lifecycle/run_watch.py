"""Which watchers an engine run gets: its exit always, then readiness while it starts, or health
and the stability timer once it runs."""

from __future__ import annotations

from app.orchestrator import watchers
from app.orchestrator.engine_run import EngineRun, RunContext
from app.orchestrator.messages import StableElapsed
from app.orchestrator.watchers import Post


def watch_run(
    ctx: RunContext,
    run: EngineRun,
    post: Post,
    *,
    model_id: str,
    ready: bool,
    deadline: float | None = None,
) -> None:
    run.spawn(watchers.watch_exit(ctx.launcher, run.handle, run.generation, post))
    if ready:
        _watch_running(ctx, run, post, model_id=model_id)
        return
    settings = ctx.settings
    if deadline is None:
        deadline = ctx.clock.monotonic() + ctx.start_timeout_s(model_id)
    run.spawn(
        watchers.await_ready(
            ctx.health,
            ctx.clock,
            base_url=run.base_url,
            deadline=deadline,
            interval_min_s=settings.readiness_interval_min_s,
            interval_max_s=settings.readiness_interval_max_s,
            generation=run.generation,
            post=post,
        )
    )


def _watch_running(ctx: RunContext, run: EngineRun, post: Post, *, model_id: str) -> None:
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
    stable_s = ctx.policy(model_id).stable_after_s
    run.spawn(
        watchers.after_delay(ctx.clock, stable_s, StableElapsed(generation=run.generation), post)
    )
