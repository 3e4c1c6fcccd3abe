"""Error bodies: {"detail": {"code", "message", ...figures}}, with stable codes."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.orchestrator.manager import AlreadyExistsError, ModelNotFoundError, ModelRunningError
from app.orchestrator.messages import CommandError

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
}


class ApiError(Exception):
    def __init__(self, status_code: int, code: str, message: str, **figures: Any) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = {"code": code, "message": message, **figures}


def not_found(model_id: str) -> ApiError:
    return ApiError(404, "not_found", f"model {model_id!r} is not registered", model_id=model_id)


def from_command_error(error: CommandError) -> ApiError:
    figures = {key: value for key, value in error.figures.items() if key not in ("code", "reason")}
    return ApiError(STATUS_BY_CODE.get(error.code, 409), error.code, error.message, **figures)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(status_code=error.status_code, content={"detail": error.body})

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

    @app.exception_handler(ModelRunningError)
    async def _running(_request: Request, error: ModelRunningError) -> JSONResponse:
        body = {
            "code": "model_running",
            "message": str(error),
            "model_id": error.model_id,
            "state": error.state,
        }
        return JSONResponse(status_code=409, content={"detail": body})
