"""Start, stop and restart a model's engine; its logs, events and headroom dry run."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import PlainTextResponse

from app.api.deps import OrchestratorDep, SettingsDep
from app.api.errors import from_command_error
from app.api.forwarding import placed_here
from app.api.routes.models import ModelId
from app.api.schemas import (
    CanStartPublic,
    EventPublic,
    StatusPublic,
    error_responses,
    event_public,
    status_public,
)
from app.orchestrator.lifecycle import CommandKind, ModelState
from app.orchestrator.orchestrator import ModelNotFoundError
from app.orchestrator.spec import ModelSpec

router = APIRouter(prefix="/models", tags=["lifecycle"], responses=error_responses(401, 404))
Force = Annotated[bool, Query(description="Start even while the low-memory alert is raised.")]
Wait = Annotated[
    bool,
    Query(
        description="Answer once the engine has reached its end state (stopped; running or "
        "failed for a restart) instead of at once; bounded by the stop grace or start timeout."
    ),
]
# The end states a waiting stop or restart returns in.
_START_END = (ModelState.RUNNING, ModelState.FAILED, ModelState.DEGRADED, ModelState.STOPPED)

_ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {"description": "Accepted: the engine is being started or stopped."},
    **error_responses(409, 503),
}
# A start resolves the spec's adapters first; one that cannot be read is 422 adapter_invalid.
_STARTS = {**_ACCEPTED, **error_responses(422)}


async def _command(
    model_id: str,
    kind: CommandKind,
    orchestrator: OrchestratorDep,
    settings: SettingsDep,
    response: Response,
    force: bool = False,
    wait: bool = False,
) -> StatusPublic:
    try:
        result = await orchestrator.command(model_id, kind, force=force, wait=wait)
    except LookupError:
        raise ModelNotFoundError(model_id) from None
    if result.error is not None:
        raise from_command_error(result.error)
    response.status_code = 202 if result.changed else 200
    status = result.status or orchestrator.status(model_id)
    if wait and result.changed and kind is CommandKind.RESTART:
        # The stop has been waited for and the start launched: wait for how the start ends.
        spec = orchestrator.spec(model_id)
        timeout_s = spec.start_timeout_s or settings.start_timeout_s
        await orchestrator.wait_for_state(model_id, _START_END, timeout_s=timeout_s)
        status = orchestrator.status(model_id)
    return status_public(
        status, engine_host=settings.engine_host, activity=orchestrator.activity.peek(model_id)
    )


@router.post("/{model_id}/start", response_model=StatusPublic, responses=_STARTS)
async def start_model(
    model_id: ModelId,
    orchestrator: OrchestratorDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
    force: Force = False,
    evict: Annotated[
        bool,
        Query(
            description="Make room by stopping (or putting to sleep) idle engines of lower or "
            "equal priority when the GPUs lack it."
        ),
    ] = False,
) -> StatusPublic:
    """202 when a start (or a wake from sleep) begins, 200 when the engine is already starting
    or running. Refused for room (409 with the figures), the answer lists what `evict=true`
    would unload (`would_evict`) and what it could not (`not_evictable`: busy, higher
    priority). With other nodes, a model at rest is placed first (GPU_ORCH_PLACEMENT) and the
    request goes to the node chosen; the answer's `node` and X-GPU-Orch-Node say which."""
    here = placed_here(request, orchestrator.node)
    try:
        result = await orchestrator.start_model(
            model_id, force=force, evict=evict, placed_here=here
        )
    except LookupError:
        raise ModelNotFoundError(model_id) from None
    if result.error is not None:
        raise from_command_error(result.error)
    response.status_code = 202 if result.changed else 200
    return status_public(
        result.status or orchestrator.status(model_id),
        engine_host=settings.engine_host,
        activity=orchestrator.activity.peek(model_id),
    )


@router.post("/{model_id}/stop", response_model=StatusPublic, responses=_ACCEPTED)
async def stop_model(
    model_id: ModelId,
    orchestrator: OrchestratorDep,
    settings: SettingsDep,
    response: Response,
    wait: Wait = False,
) -> StatusPublic:
    """202 at once with state `stopping` while the engine's whole process group is stopped
    (SIGTERM, SIGKILL after the grace period); with `wait=true` it answers once the engine is
    stopped. 200 when it was already stopped."""
    return await _command(model_id, CommandKind.STOP, orchestrator, settings, response, wait=wait)


@router.post("/{model_id}/restart", response_model=StatusPublic, responses=_STARTS)
async def restart_model(
    model_id: ModelId,
    orchestrator: OrchestratorDep,
    settings: SettingsDep,
    response: Response,
    force: Force = False,
    wait: Wait = False,
) -> StatusPublic:
    """Stops the engine if it runs, then starts it; clears degraded and the restart budget.
    202 at once (state `stopping` when an engine ran); with `wait=true` it answers once the new
    engine runs (or the start failed: the status says why)."""
    return await _command(
        model_id, CommandKind.RESTART, orchestrator, settings, response, force, wait=wait
    )


@router.get("/{model_id}/logs", response_class=PlainTextResponse)
async def model_logs(
    model_id: ModelId,
    orchestrator: OrchestratorDep,
    tail: Annotated[int, Query(ge=1, le=10000, description="How many lines, from the end.")] = 100,
) -> PlainTextResponse:
    lines = await orchestrator.log_tail(model_id, tail)
    return PlainTextResponse("".join(f"{line}\n" for line in lines))


@router.get("/{model_id}/events", response_model=list[EventPublic])
async def model_events(
    model_id: ModelId,
    orchestrator: OrchestratorDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[EventPublic]:
    return [event_public(row) for row in await orchestrator.events(model_id, limit=limit)]


@router.get("/{model_id}/can-start", response_model=CanStartPublic)
async def can_start(
    model_id: ModelId, orchestrator: OrchestratorDep, force: Force = False
) -> CanStartPublic:
    """Dry run of the headroom check a start would make, with its figures."""
    return CanStartPublic.model_validate(await orchestrator.can_start(model_id, force=force))


__all__ = ["ModelSpec", "router"]
