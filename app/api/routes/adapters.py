"""/models/{id}/adapters: a model's LoRA adapters, added and removed live on a running engine."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import OrchestratorDep
from app.api.errors import from_command_error
from app.api.routes.models import ModelId
from app.api.schemas import error_responses
from app.orchestrator.clock import iso_ms

router = APIRouter(prefix="/models", tags=["adapters"], responses=error_responses(401, 404))
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
AdapterName = Annotated[str, Path(pattern=_NAME, description="The adapter's name.")]


class AdapterCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "sql_agent", "path": "adapters/sql_agent_v2"}]},
    )
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", description="As vLLM serves it."
    )
    path: str = Field(min_length=1, max_length=1024, description="Adapter dir (peft format).")


class AdapterPublic(BaseModel):
    name: str
    path: str
    rank: int | None = Field(description="LoRA rank from adapter_config.json (null: unreadable).")
    loaded: bool = Field(description="The running engine serves it.")
    since: str | None = Field(description="Since when the running engine serves it.")


@router.get("/{model_id}/adapters", response_model=list[AdapterPublic])
async def list_adapters(model_id: ModelId, orchestrator: OrchestratorDep) -> list[AdapterPublic]:
    return [
        AdapterPublic(
            name=view.name,
            path=view.path,
            rank=view.rank,
            loaded=view.loaded,
            since=iso_ms(view.since) if view.since else None,
        )
        for view in await orchestrator.adapters(model_id)
    ]


@router.post(
    "/{model_id}/adapters",
    status_code=status.HTTP_201_CREATED,
    response_model=list[AdapterPublic],
    responses={
        200: {"description": "Already there, with this path."},
        **error_responses(400, 409, 413, 422),
    },
)
async def add_adapter(
    model_id: ModelId, body: AdapterCreate, orchestrator: OrchestratorDep, response: Response
) -> list[AdapterPublic]:
    """Adds the adapter to the spec; on a running engine it is loaded live (same pid). 422
    `adapter_invalid`: not a LoRA adapter, or vLLM refused it; 409 `adapter_name_conflict`: the
    name is taken on the node; 409 `restart_needed` (with the figures): the running engine was
    started without LoRA or with a smaller max_lora_rank."""
    result = await orchestrator.add_adapter(model_id, body.name, body.path)
    if result.error is not None:
        raise from_command_error(result.error)
    response.status_code = 201 if result.changed else 200
    return await list_adapters(model_id, orchestrator)


@router.delete(
    "/{model_id}/adapters/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(409),
)
async def remove_adapter(
    model_id: ModelId, name: AdapterName, orchestrator: OrchestratorDep
) -> Response:
    """Removes the adapter from the spec; a running engine unloads it live."""
    result = await orchestrator.remove_adapter(model_id, name)
    if result.error is not None:
        raise from_command_error(result.error)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
