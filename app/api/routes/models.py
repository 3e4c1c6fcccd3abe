"""/models: the registry of model specs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from app.api.deps import OrchestratorDep, SettingsDep
from app.api.errors import from_command_error
from app.api.schemas import (
    ModelCreate,
    ModelPatch,
    ModelPublic,
    ModelReplace,
    error_responses,
    model_public_data,
)
from app.orchestrator.spec import SLUG_PATTERN, ModelSpec

router = APIRouter(prefix="/models", tags=["models"], responses=error_responses(401))
ModelId = Annotated[str, Path(pattern=SLUG_PATTERN, description="The model's id (a slug).")]


def _public(
    orchestrator: OrchestratorDep,
    settings: SettingsDep,
    model_id: str,
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    """A model as GET /models/{id} shows it (the ModelPublic schema), serialised once."""
    data = model_public_data(
        orchestrator.spec_data(model_id),
        orchestrator.status(model_id),
        engine_host=settings.engine_host,
        activity=orchestrator.activity.peek(model_id),
    )
    return JSONResponse(data, status_code=status_code, headers=headers)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ModelPublic,
    responses=error_responses(400, 409, 413),
)
async def create_model(
    body: ModelCreate, orchestrator: OrchestratorDep, settings: SettingsDep
) -> Response:
    spec = ModelSpec.model_validate(body.model_dump())
    await orchestrator.create_model(spec)
    location = {"Location": f"/models/{spec.id}"}
    return _public(orchestrator, settings, spec.id, status_code=201, headers=location)


@router.get("", response_model=list[ModelPublic])
async def list_models(orchestrator: OrchestratorDep, settings: SettingsDep) -> Response:
    """Every spec with its status. Built as plain data (the same shape as GET /models/{id}):
    validating a list of hundreds twice per request cost most of this route's time. With
    other nodes, every model of the cluster, each with its `status.node`."""
    await orchestrator.refresh()
    statuses = orchestrator.statuses()
    payload = [
        model_public_data(
            orchestrator.spec_data(spec.id),
            statuses[spec.id],
            engine_host=settings.engine_host,
            activity=orchestrator.activity.peek(spec.id),
        )
        for spec in orchestrator.specs()
        if spec.id in statuses
    ]
    return JSONResponse(payload)


@router.get("/{model_id}", response_model=ModelPublic, responses=error_responses(404))
async def get_model(
    model_id: ModelId, orchestrator: OrchestratorDep, settings: SettingsDep
) -> Response:
    if not orchestrator.owns(model_id):
        await orchestrator.refresh()  # another node's model: as of its latest write
    return _public(orchestrator, settings, model_id)


async def _replace(
    orchestrator: OrchestratorDep, settings: SettingsDep, fields: dict[str, Any]
) -> Response:
    try:
        spec = ModelSpec.model_validate(fields)
    except ValidationError as error:
        # The merged spec failed a rule that spans fields (or a null for a required one): answer
        # in the same shape as a body that failed on its own, with the field under "body".
        raise RequestValidationError(
            [{**item, "loc": ("body", *item["loc"])} for item in error.errors(include_url=False)]
        ) from error
    await orchestrator.update_model(spec)
    return _public(orchestrator, settings, spec.id)


_CHANGE_ERRORS = error_responses(400, 404, 409, 413)


@router.put("/{model_id}", response_model=ModelPublic, responses=_CHANGE_ERRORS)
async def replace_model(
    model_id: ModelId, body: ModelReplace, orchestrator: OrchestratorDep, settings: SettingsDep
) -> Response:
    orchestrator.spec(model_id)
    return await _replace(orchestrator, settings, {**body.model_dump(), "id": model_id})


@router.patch("/{model_id}", response_model=ModelPublic, responses=_CHANGE_ERRORS)
async def patch_model(
    model_id: ModelId, body: ModelPatch, orchestrator: OrchestratorDep, settings: SettingsDep
) -> Response:
    current = orchestrator.spec(model_id).model_dump()
    changes = body.model_dump(exclude_unset=True)
    return await _replace(orchestrator, settings, {**current, **changes})


@router.delete(
    "/{model_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404, 409)
)
async def delete_model(
    model_id: ModelId,
    orchestrator: OrchestratorDep,
    force: Annotated[bool, Query(description="Stop a running engine first.")] = False,
) -> Response:
    result = await orchestrator.delete_model(model_id, force=force)
    if result.error is not None:
        # The engine would not stop: the model stays registered, as it was, and this says why.
        raise from_command_error(result.error)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
