"""/manifests and /agents: the files teams already have, synced into the registry."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request

from app.api.deps import OrchestratorDep, SettingsDep
from app.api.manifest_schemas import AgentPublic, SyncReportPublic, agent_public, report_public
from app.api.schemas import status_public
from app.orchestrator.manifest_sync import AgentServing, ManifestSync
from app.orchestrator.orchestrator import ModelNotFoundError, Orchestrator
from app.settings import Settings

router = APIRouter(tags=["manifests"])


async def start_manifest_sync(app: FastAPI, orchestrator: Orchestrator, settings: Settings) -> None:
    """Sync the config directory once (at start-up) and keep the sync for these routes."""
    app.state.manifest_sync = await ManifestSync.create(orchestrator, settings)


def get_manifest_sync(request: Request) -> ManifestSync:
    sync: ManifestSync = request.app.state.manifest_sync
    return sync


ManifestSyncDep = Annotated[ManifestSync, Depends(get_manifest_sync)]


@router.post("/manifests/reload")
async def reload_manifests(sync: ManifestSyncDep) -> SyncReportPublic:
    """Read the config directory again and apply it. A changed spec of a running model is
    saved and flagged `restart_needed`; the engine keeps running until you restart it.
    Bad files are issues in the answer, never an error status."""
    return report_public(await sync.reload())


@router.get("/manifests")
async def get_manifests(sync: ManifestSyncDep) -> SyncReportPublic:
    """The report of the last sync (at start-up or the last reload)."""
    return report_public(sync.last_report)


@router.get("/agents")
async def list_agents(
    request: Request,
    sync: ManifestSyncDep,
    orchestrator: OrchestratorDep,
    settings: SettingsDep,
) -> list[AgentPublic]:
    """Every adapter of AGENT_MODEL_MAP.json and where it answers: an agent sends its OpenAI
    requests to `gateway_url` (this service, which starts the model on demand) with
    `"model": served_model_name`; `base_url` is the engine's own address while it runs."""
    gateway_url = str(request.base_url).rstrip("/") + "/v1"
    return [
        _agent(serving, orchestrator, settings, gateway_url) for serving in sync.last_report.agents
    ]


def _agent(
    serving: AgentServing, orchestrator: Orchestrator, settings: Settings, gateway_url: str
) -> AgentPublic:
    if serving.model_id is None:
        return agent_public(serving, state=None, base_url=None, restart_needed=False)
    try:
        status = orchestrator.status(serving.model_id)
    except ModelNotFoundError:  # deleted through the API since the sync
        gone = replace(
            serving,
            model_id=None,
            found=False,
            error=f"model {serving.model_id!r} was deleted after the last manifest sync",
        )
        return agent_public(gone, state=None, base_url=None, restart_needed=False)
    public = status_public(status, engine_host=settings.engine_host)
    return agent_public(
        serving,
        state=public.state,
        base_url=public.base_url,
        restart_needed=public.restart_needed,
        gateway_url=gateway_url,
    )
