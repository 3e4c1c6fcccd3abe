"""HTTP to the engines: one pooled keep-alive client per engine URL.

One client per engine (not one shared pool): httpcore scans its whole pool on every request, so
a shared pool's cost would grow with the number of engines (bench/scale.py found the same for
health probes). No timeout on reading a response: a long generation is not an error; connect
and write are bounded.

Within one engine's client, httpcore's own pool still walks every connection twice per request
(when it is sent and when its response closes), with a poll(2) on each idle one and a nested
count of the idle ones; after a burst of 64 requests that walk cost more than the rest of the
relay (bench/gateway.py, docs/benchmarks.md "Gateway"). `_StackPool` keeps the idle connections
on a stack instead: a request takes the most recently used one and checks only that one.
"""

from __future__ import annotations

import ssl
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator

import anyio
import httpcore
import httpx

_TIMEOUT = httpx.Timeout(connect=10.0, read=None, write=60.0, pool=60.0)
_MAX_IDLE = 256
_KEEPALIVE_EXPIRY_S = 60.0


class _StackPool(httpcore.AsyncConnectionPool):
    """Idle connections on a stack, last used first; as many in use as requests need."""

    def __init__(self, *, ssl_context: ssl.SSLContext) -> None:
        super().__init__(
            ssl_context=ssl_context,
            max_keepalive_connections=_MAX_IDLE,
            keepalive_expiry=_KEEPALIVE_EXPIRY_S,
        )
        self._idle: deque[httpcore.AsyncConnectionInterface] = deque()

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        connection = await self._take(request.url.origin)
        try:
            response = await connection.handle_async_request(request)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await connection.aclose()
            raise
        assert isinstance(response.stream, AsyncIterable)
        return httpcore.Response(
            status=response.status,
            headers=response.headers,
            content=_ReleasingStream(response.stream, connection, self),
            extensions=response.extensions,
        )

    async def _take(self, origin: httpcore.Origin) -> httpcore.AsyncConnectionInterface:
        while self._idle:
            connection = self._idle.pop()
            # has_expired: past its keep-alive, or the engine closed it (its socket is readable).
            if connection.is_idle() and not connection.has_expired():
                return connection
            await connection.aclose()
        return self.create_connection(origin)

    async def release(self, connection: httpcore.AsyncConnectionInterface) -> None:
        """Back on the stack when it can take another request (its response was read to the
        end), else closed. The oldest idle one is checked too: an engine closes connections
        idle for long (vLLM's uvicorn after 5 s), and the bottom of a stack is reached late."""
        if connection.is_idle() and len(self._idle) < _MAX_IDLE:
            self._idle.append(connection)
        else:
            await connection.aclose()
        if len(self._idle) > 1 and self._idle[0].has_expired():
            await self._idle.popleft().aclose()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, deque()
        for connection in idle:
            await connection.aclose()


class _ReleasingStream:
    """A response body that gives its connection back to the pool once closed."""

    def __init__(
        self,
        stream: AsyncIterable[bytes],
        connection: httpcore.AsyncConnectionInterface,
        pool: _StackPool,
    ) -> None:
        self._stream = stream
        self._connection = connection
        self._pool = pool
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            close = getattr(self._stream, "aclose", None)
            if close is not None:
                await close()
            await self._pool.release(self._connection)


def _transport(tls: ssl.SSLContext) -> httpx.AsyncHTTPTransport:
    transport = httpx.AsyncHTTPTransport(verify=tls)
    # httpx takes no pool argument; its transport only calls the pool's public methods
    # (handle_async_request, aclose), which _StackPool implements.
    transport._pool = _StackPool(ssl_context=tls)
    return transport


class UpstreamPool:
    def __init__(self) -> None:
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._tls = ssl.create_default_context()

    def client(self, base_url: str) -> httpx.AsyncClient:
        client = self._clients.get(base_url)
        if client is None:
            client = httpx.AsyncClient(
                base_url=base_url,
                timeout=_TIMEOUT,
                transport=_transport(self._tls),
                trust_env=False,
            )
            self._clients[base_url] = client
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
