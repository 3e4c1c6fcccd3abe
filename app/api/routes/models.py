"""/models: the registry of model specs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response, status

from app.api.deps import OrchestratorDep, SettingsDep
from app.api.errors import ApiError
from app.api.schemas import ModelCreate, ModelPatch, ModelPublic, ModelReplace, model_public
from app.orchestrator.spec import SLUG_PATTERN, ModelSpec

router = APIRouter(prefix="/models", tags=["models"])
ModelId = Annotated[str, Path(pattern=SLUG_PATTERN, description="The model's id (a slug).")]


def _public(orchestrator: OrchestratorDep, settings: SettingsDep, model_id: str) -> ModelPublic:
    return model_public(
        orchestrator.spec(model_id),
        orchestrator.status(model_id),
        engine_host=settings.engine_host,
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ModelPublic)
async def create_model(
    body: ModelCreate, orchestrator: OrchestratorDep, settings: SettingsDep, response: Response
) -> ModelPublic:
    spec = ModelSpec.model_validate(body.model_dump())
    await orchestrator.create_model(spec)
    response.headers["Location"] = f"/models/{spec.id}"
    return _public(orchestrator, settings, spec.id)


@router.get("", response_model=list[ModelPublic])
async def list_models(orchestrator: OrchestratorDep, settings: SettingsDep) -> list[ModelPublic]:
    statuses = orchestrator.statuses()
    return [
        model_public(spec, statuses[spec.id], engine_host=settings.engine_host)
        for spec in orchestrator.specs()
        if spec.id in statuses
    ]


@router.get("/{model_id}", response_model=ModelPublic)
async def get_model(
    model_id: ModelId, orchestrator: OrchestratorDep, settings: SettingsDep
) -> ModelPublic:
    return _public(orchestrator, settings, model_id)


async def _replace(
    orchestrator: OrchestratorDep, settings: SettingsDep, fields: dict[str, Any]
) -> ModelPublic:
    from pydantic import ValidationError

    try:
        spec = ModelSpec.model_validate(fields)
    except ValidationError as error:
        raise ApiError(
            422,
            "invalid_spec",
            "; ".join(
                f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}" for item in error.errors()
            ),
            errors=[{"loc": list(item["loc"]), "msg": item["msg"]} for item in error.errors()],
        ) from error
    await orchestrator.update_model(spec)
    return _public(orchestrator, settings, spec.id)


@router.put("/{model_id}", response_model=ModelPublic)
async def replace_model(
    model_id: ModelId, body: ModelReplace, orchestrator: OrchestratorDep, settings: SettingsDep
) -> ModelPublic:
    orchestrator.spec(model_id)
    return await _replace(orchestrator, settings, {**body.model_dump(), "id": model_id})


@router.patch("/{model_id}", response_model=ModelPublic)
async def patch_model(
    model_id: ModelId, body: ModelPatch, orchestrator: OrchestratorDep, settings: SettingsDep
) -> ModelPublic:
    current = orchestrator.spec(model_id).model_dump()
    changes = body.model_dump(exclude_unset=True)
    return await _replace(orchestrator, settings, {**current, **changes})


@router.delete("/{model_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_model(
    model_id: ModelId,
    orchestrator: OrchestratorDep,
    force: Annotated[bool, Query(description="Stop a running engine first.")] = False,
) -> Response:
    await orchestrator.delete_model(model_id, force=force)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
