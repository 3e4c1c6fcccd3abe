"""Node to node: a request for a model another node owns is sent to that node, and its answer
relayed unchanged (streamed, so a followed log or a long `?wait=true` works the same).

Headers: `X-GPU-Orch-Hops` counts the hops (a request is forwarded at most MAX_HOPS times, so a
view that is a moment stale costs one more hop, never a loop); `X-GPU-Orch-Placed` names the
node a start was placed on, which then starts it without placing it again; `X-GPU-Orch-Node`
on the answer names the node that answered. The caller's Authorization header goes along:
every node of a cluster shares the API token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from app.orchestrator.cluster.errors import OwnedElsewhereError

HOPS_HEADER = "x-gpu-orch-hops"
PLACED_HEADER = "x-gpu-orch-placed"
NODE_HEADER = "x-gpu-orch-node"
MAX_HOPS = 2
_REQUEST_HEADERS = ("authorization", "content-type", "accept", "last-event-id", "x-request-id")
_RESPONSE_HEADERS = ("content-type", "retry-after", "location", NODE_HEADER, "x-request-id")


def hops(request: Request) -> int:
    try:
        return int(request.headers.get(HOPS_HEADER, "0"))
    except ValueError:
        return MAX_HOPS  # a mangled header is not trusted to bound anything


def placed_here(request: Request, node: str) -> bool:
    """Another node placed this start on this node."""
    return request.headers.get(PLACED_HEADER) == node


def forward_headers(request: Request, error: OwnedElsewhereError) -> dict[str, str]:
    headers = {
        name: value for name in _REQUEST_HEADERS if (value := request.headers.get(name)) is not None
    }
    headers[HOPS_HEADER] = str(hops(request) + 1)
    if error.placed:
        headers[PLACED_HEADER] = error.node
    return headers


def unreachable(error: OwnedElsewhereError, message: str) -> JSONResponse:
    detail = {"code": "node_unavailable", "message": message, "node": error.node}
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "1"})


class NodeForwarder:
    def __init__(self, node: str, *, timeout_s: float) -> None:
        self.node = node
        # Reads wait as long as the longest answer may take (a start's `?wait=true`).
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=5.0))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def forward(self, request: Request, error: OwnedElsewhereError) -> Response:
        if error.url is None:
            return unreachable(error, f"{error} (the node has no GPU_ORCH_NODE_URL recorded)")
        if hops(request) >= MAX_HOPS:
            return unreachable(error, f"{error} (not forwarded again after {MAX_HOPS} hops)")
        url = error.url.rstrip("/") + request.url.path
        outgoing = self._client.build_request(
            request.method,
            url,
            params=request.query_params,
            headers=forward_headers(request, error),
            content=await request.body(),
        )
        try:
            upstream = await self._client.send(outgoing, stream=True)
        except httpx.HTTPError as failure:
            return unreachable(error, f"{error}; node {error.node} did not answer: {failure}")
        headers = {
            name: value for name in _RESPONSE_HEADERS if (value := upstream.headers.get(name))
        }
        headers.setdefault(NODE_HEADER, error.node)

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()

        return StreamingResponse(body(), status_code=upstream.status_code, headers=headers)
