"""The OpenAI-compatible gateway on the service's own port: `POST /v1/*` routed by the body's
`model` (a spec id or an adapter name), `GET /v1/models`.

The body goes to the engine unchanged; the answer comes back unchanged, streamed chunk by chunk
when the request asked for `stream`. Errors are OpenAI's shape, so OpenAI SDKs raise them.
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict

from app.api.deps import get_services, require_inference_token
from app.api.forwarding import MAX_HOPS, NODE_HEADER, forward_headers, hops, placed_here
from app.api.relay import RelayResponse
from app.orchestrator.cluster.errors import OwnedElsewhereError
from app.orchestrator.gateway import GatewayError, adapter_names
from app.orchestrator.gateway.errors import bad_request, unavailable
from app.orchestrator.gateway.upstream import UpstreamError, UpstreamResponse
from app.orchestrator.wiring import Services


class OpenAIErrorBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorPublic(BaseModel):
    """OpenAI's error shape, which OpenAI SDKs raise as their exceptions."""

    error: OpenAIErrorBody


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIErrorPublic, "description": description}
    for status, description in {
        400: "The body is not a JSON object with a `model`.",
        401: "A token is configured and the request has none of them.",
        404: "No model or adapter has that name.",
        502: "The engine did not answer.",
        503: "The model cannot serve now (queue full, degraded, failed, refused): see `code`.",
        504: "The engine was not ready within the model's start timeout.",
    }.items()
}

_FORWARD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The engine's answer, unchanged (streamed with `stream`)."},
    **{code: spec for code, spec in _ERRORS.items() if code != 401},
}

# The same scheme as app/api/deps.py's, so the OpenAPI schema names one bearer scheme.
_bearer = HTTPBearer(auto_error=False, description="GPU_ORCH_API_TOKEN")


# The dependencies of /v1/* are coroutines on purpose: FastAPI runs a plain `def` dependency on a
# worker thread, and each such hand-off waits for the GIL behind the busy event loop. As
# coroutines, 445 -> 569 req/s at 32 clients and 1.7 -> 1.3 ms at one (bench/gateway.py).
async def _inference_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    require_inference_token(request.app.state.settings, credentials)


async def _services(request: Request) -> Services:
    return get_services(request)


ServicesDep = Annotated[Services, Depends(_services)]

router = APIRouter(
    prefix="/v1",
    tags=["gateway"],
    dependencies=[Depends(_inference_token)],
    responses={401: _ERRORS[401]},
)

# Request headers an engine may use; the rest (the caller's token above all) stay here.
_FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "user-agent", "x-request-id")
_RESPONSE_HEADERS = ("content-type", "x-request-id", "retry-after", NODE_HEADER)


def _request_headers(request: Request) -> dict[str, str]:
    return {
        name: value
        for name in _FORWARDED_REQUEST_HEADERS
        if (value := request.headers.get(name)) is not None
    }


def _model_of(body: bytes) -> tuple[str, bool]:
    try:
        payload = json.loads(body)
    except ValueError:
        raise bad_request("the request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise bad_request("the request body must be a JSON object")
    name = payload.get("model")
    if not isinstance(name, str) or not name:
        raise bad_request("`model` is required: a model id or an adapter name", param="model")
    return name, payload.get("stream") is True


@router.get("/models")
async def list_models(services: ServicesDep) -> dict[str, Any]:
    """Every registered model and adapter in OpenAI's list shape, each with its state (of the
    whole cluster: any node's gateway serves every model)."""
    orchestrator = services.orchestrator
    await orchestrator.refresh()
    statuses = orchestrator.statuses()
    data: list[dict[str, Any]] = []
    for spec in orchestrator.specs():
        status = statuses.get(spec.id)
        state = status.state if status is not None else "unknown"
        card = {"object": "model", "owned_by": "gpu-orchestrator", "state": state}
        data.append({"id": spec.id, **card, "root": spec.model, "parent": None})
        data += [
            {"id": name, **card, "root": path, "parent": spec.id}
            for name, path in zip(adapter_names(spec), spec.adapter_paths, strict=True)
        ]
    return {"object": "list", "data": data}


@router.post(
    "/{path:path}",
    response_model=None,
    responses=_FORWARD_RESPONSES,
)
async def forward(path: str, request: Request, services: ServicesDep) -> Response:
    """Any OpenAI call that carries a JSON `model`: chat/completions, completions, embeddings...
    A model another node serves (or a cold start placed there) is sent to that node's gateway."""
    body = await request.body()
    name, stream = _model_of(body)
    gateway, upstream_pool = services.gateway, services.upstream
    metrics = gateway.metrics
    here = placed_here(request, services.orchestrator.node)
    stack = AsyncExitStack()
    try:
        lease = await stack.enter_async_context(gateway.lease(name, placed_here=here))
    except OwnedElsewhereError as elsewhere:
        return await _to_node(elsewhere, f"/v1/{path}", body, stream, request, services)
    except GatewayError as error:
        model_id = route.model_id if (route := gateway.route(name)) else "unknown"
        metrics.gateway_requests_total.labels(model=model_id, code=error.status_code).inc()
        raise
    try:
        upstream = await upstream_pool.send(
            lease.base_url, f"/v1/{path}", body=body, headers=_request_headers(request)
        )
    except UpstreamError as error:
        await stack.aclose()
        metrics.gateway_requests_total.labels(model=lease.model_id, code=502).inc()
        raise GatewayError(
            502,
            f"the engine of {lease.model_id} did not answer: {error}",
            error_type="api_error",
            code="engine_unreachable",
        ) from None
    stack.push_async_callback(upstream.aclose)
    metrics.gateway_requests_total.labels(model=lease.model_id, code=upstream.status_code).inc()
    return await _relay(upstream, stream, stack, {})


async def _to_node(
    elsewhere: OwnedElsewhereError,
    path: str,
    body: bytes,
    stream: bool,
    request: Request,
    services: Services,
) -> Response:
    """Send the request to the gateway of the node that serves the model; relay its answer."""
    if elsewhere.url is None or hops(request) >= MAX_HOPS:
        raise unavailable(str(elsewhere), code="node_unavailable", node=elsewhere.node)
    headers = {**_request_headers(request), **forward_headers(request, elsewhere)}
    try:
        upstream = await services.upstream.send(
            elsewhere.url.rstrip("/"), path, body=body, headers=headers
        )
    except UpstreamError as error:
        raise GatewayError(
            502,
            f"node {elsewhere.node}, which serves {elsewhere.model_id}, did not answer: {error}",
            error_type="api_error",
            code="node_unreachable",
        ) from None
    stack = AsyncExitStack()
    stack.push_async_callback(upstream.aclose)
    return await _relay(upstream, stream, stack, {NODE_HEADER: elsewhere.node})


async def _relay(
    upstream: UpstreamResponse, stream: bool, stack: AsyncExitStack, extra: dict[str, str]
) -> Response:
    headers = {name: value for name in _RESPONSE_HEADERS if (value := upstream.headers.get(name))}
    headers.update(extra)
    if not stream:
        try:
            content = await upstream.read()
        finally:
            await stack.aclose()
        return Response(content, status_code=upstream.status_code, headers=headers)
    headers["X-Accel-Buffering"] = "no"  # nginx in front must not buffer the stream either
    headers["Cache-Control"] = "no-cache"
    return RelayResponse(
        upstream.chunks(),
        status_code=upstream.status_code,
        headers=headers,
        cleanup=stack.aclose,
    )
