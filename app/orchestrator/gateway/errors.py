"""Gateway errors in OpenAI's shape, so OpenAI SDKs raise and show them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class GatewayError(Exception):
    """`{"error": {"message", "type", "param", "code"}}` with an HTTP status (and headers, such
    as Retry-After); extra figures ride along inside `error`."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        error_type: str,
        code: str,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        **figures: Any,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.headers = dict(headers or {})
        self.body = {
            "error": {
                "message": message,
                "type": error_type,
                "param": param,
                "code": code,
                **figures,
            }
        }


def not_found(name: str) -> GatewayError:
    return GatewayError(
        404,
        f"The model `{name}` does not exist.",
        error_type="invalid_request_error",
        code="model_not_found",
        param="model",
    )


def unavailable(
    message: str, *, code: str, retry_after_s: float | None = None, **figures: Any
) -> GatewayError:
    headers = {}
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(retry_after_s)))
    return GatewayError(
        503, message, error_type="service_unavailable_error", code=code, headers=headers, **figures
    )


def bad_request(message: str, *, param: str | None = None) -> GatewayError:
    return GatewayError(
        400, message, error_type="invalid_request_error", code="invalid_request", param=param
    )
