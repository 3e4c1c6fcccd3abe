"""Error bodies: {"detail": {"code", "message", ...figures}}, with stable codes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.auth import CHALLENGE, rejects_token
from app.api.forwarding import NodeForwarder
from app.orchestrator.gateway import GatewayError
from app.orchestrator.lifecycle import CommandError
from app.orchestrator.orchestrator import (
    AdapterNameConflictError,
    AlreadyExistsError,
    ModelNotFoundError,
    ModelRunningError,
    OwnedElsewhereError,
)

# HTTP status per orchestrator error code.
STATUS_BY_CODE = {
    "not_found": 404,
    "already_exists": 409,
    "model_running": 409,
    "insufficient_gpu_memory": 409,
    "gpu_unavailable": 409,
    "gpu_memory_low": 409,
    "port_unavailable": 409,
    "adapter_invalid": 422,
    "launch_failed": 503,
    "stop_failed": 409,
    "adapter_name_conflict": 409,
    "adapter_not_found": 404,
    "restart_needed": 409,
}


# Framework errors (unknown path, wrong method, unreadable body) get the same body shape.
_CODE_BY_HTTP_STATUS = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
}


class ApiError(Exception):
    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        **figures: Any,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.headers = headers
        self.body = {"code": code, "message": message, **figures}


def json_safe(value: Any) -> Any:
    """`value` as strict JSON can carry it, so echoing a client's input back in a 422 never turns
    into a 500: NaN and the infinities as strings (JSON has no literal for them), and a lone
    surrogate (`"\\ud800"` in the request, which JSON's grammar allows but UTF-8 cannot encode)
    as the escape the client sent, in values and keys (a field name is echoed in `loc`) alike."""
    if isinstance(value, str):
        return _without_lone_surrogates(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {json_safe(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def _without_lone_surrogates(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # "\ud800" becomes the six characters `\ud800`; every other character is kept.
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def not_found(model_id: str) -> ApiError:
    return ApiError(404, "not_found", f"model {model_id!r} is not registered", model_id=model_id)


def from_command_error(error: CommandError) -> ApiError:
    figures = {key: value for key, value in error.figures.items() if key not in ("code", "reason")}
    code = str(error.code)
    return ApiError(STATUS_BY_CODE.get(code, 409), code, error.message, **figures)


def unauthorized() -> ApiError:
    return ApiError(
        401, "unauthorized", "a valid bearer token is required", headers=dict(CHALLENGE)
    )


def _response(error: ApiError) -> JSONResponse:
    return JSONResponse(
        status_code=error.status_code,
        content={"detail": json_safe(error.body)},
        headers=error.headers,
    )


async def _gateway_error(_request: Request, error: GatewayError) -> JSONResponse:
    # /v1/* speaks OpenAI's error shape: {"error": {"message", "type", "param", "code"}}.
    return JSONResponse(error.body, status_code=error.status_code, headers=error.headers)


async def _name_conflict(_request: Request, error: AdapterNameConflictError) -> JSONResponse:
    body = {
        "code": "adapter_name_conflict",
        "message": str(error),
        "model_id": error.model_id,
        "names": error.names,
    }
    return JSONResponse(status_code=409, content={"detail": body})


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, error: ApiError) -> JSONResponse:
        return _response(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        if rejects_token(request):
            return _response(unauthorized())
        # FastAPI's own shape (a list of {type, loc, msg, input}), made JSON-safe.
        content = {"detail": json_safe(jsonable_encoder(error.errors()))}
        return JSONResponse(status_code=422, content=content)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        # A body that is not even UTF-8 is refused with 400 before the route's dependencies run.
        if error.status_code == 400 and rejects_token(request):
            return _response(unauthorized())
        code = _CODE_BY_HTTP_STATUS.get(error.status_code, "http_error")
        message = str(error.detail)
        return _response(ApiError(error.status_code, code, message, headers=error.headers))

    @app.exception_handler(OwnedElsewhereError)
    async def _elsewhere(request: Request, error: OwnedElsewhereError) -> Response:
        # Another node owns the model: the request goes there, its answer comes back as it is.
        forwarder: NodeForwarder = request.app.state.forwarder
        return await forwarder.forward(request, error)

    @app.exception_handler(ModelNotFoundError)
    async def _not_found(_request: Request, error: ModelNotFoundError) -> JSONResponse:
        body = not_found(str(error.args[0]) if error.args else "").body
        return JSONResponse(status_code=404, content={"detail": body})

    @app.exception_handler(AlreadyExistsError)
    async def _exists(_request: Request, error: AlreadyExistsError) -> JSONResponse:
        model_id = str(error.args[0]) if error.args else ""
        body = {
            "code": "already_exists",
            "message": f"model {model_id!r} already exists",
            "model_id": model_id,
        }
        return JSONResponse(status_code=409, content={"detail": body})

    app.add_exception_handler(GatewayError, _gateway_error)  # type: ignore[arg-type]
    app.add_exception_handler(AdapterNameConflictError, _name_conflict)  # type: ignore[arg-type]

    @app.exception_handler(ModelRunningError)
    async def _running(_request: Request, error: ModelRunningError) -> JSONResponse:
        body = {
            "code": "model_running",
            "message": str(error),
            "model_id": error.model_id,
            **error.figures,
        }
        return JSONResponse(status_code=409, content={"detail": body})
