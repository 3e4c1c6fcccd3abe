"""Dependency aliases: the orchestrator and settings of this app instance, and the auth check."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.api.auth import CHALLENGE, inference_token_accepted, token_accepted
from app.orchestrator.gateway import Gateway, GatewayError
from app.orchestrator.orchestrator import Orchestrator
from app.orchestrator.wiring import Services
from app.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="GPU_ORCH_API_TOKEN")


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_orchestrator(request: Request) -> Orchestrator:
    return get_services(request).orchestrator


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
OrchestratorDep = Annotated[Orchestrator, Depends(get_orchestrator)]


def get_gateway(request: Request) -> Gateway:
    return get_services(request).gateway


def require_inference_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """On /v1/*: with API_TOKEN or INFERENCE_TOKENS set, one of them (constant-time compare);
    refused in OpenAI's error shape, so SDKs raise AuthenticationError."""
    given = credentials.credentials if credentials is not None else ""
    if not inference_token_accepted(settings, given):
        raise GatewayError(
            401,
            "a valid bearer token is required (an API or inference token)",
            error_type="authentication_error",
            code="invalid_api_key",
            headers=dict(CHALLENGE),
        )


def require_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """With GPU_ORCH_API_TOKEN set, a matching bearer token (compared in constant time)."""
    from app.api.errors import unauthorized

    given = credentials.credentials if credentials is not None else ""
    if not token_accepted(settings, given):
        raise unauthorized()
