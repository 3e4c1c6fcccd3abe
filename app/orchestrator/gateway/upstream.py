"""HTTP to the engines: one pooled keep-alive aiohttp session per engine URL.

aiohttp's client, not httpx's, on the relay path: its C HTTP parser and its connector keep the
gateway's own share of a request near a millisecond (bench/gateway.py, docs/benchmarks.md
"Gateway"), where httpx and httpcore spent most of it building and parsing messages and walking
their pool. One session per engine, so one engine's connections never slow another's. Bodies
pass through unchanged (no decompression, no re-encoding); no timeout on reading a response, since
a long generation is not an error; connecting is bounded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import aiohttp

_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10.0, sock_connect=10.0, sock_read=None)
_KEEPALIVE_S = 60.0


class UpstreamError(Exception):
    """The engine did not answer (refused, reset, unreachable)."""


class UpstreamResponse:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status_code = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        return await self._response.read()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as the engine sends it, each piece as soon as it arrives."""
        async for chunk in self._response.content.iter_any():
            yield chunk

    async def aclose(self) -> None:
        # A body read to its end leaves the connection for the next request; a cut one closes it,
        # which tells the engine to stop generating.
        self._response.release()


class UpstreamPool:
    def __init__(self) -> None:
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def _session(self, base_url: str) -> aiohttp.ClientSession:
        session = self._sessions.get(base_url)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=_KEEPALIVE_S)
            session = aiohttp.ClientSession(
                base_url=base_url,
                connector=connector,
                timeout=_TIMEOUT,
                auto_decompress=False,
                trust_env=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
            self._sessions[base_url] = session
        return session

    async def send(
        self, base_url: str, path: str, *, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamResponse:
        try:
            response = await self._session(base_url).post(path, data=body, headers=dict(headers))
        except (aiohttp.ClientError, OSError) as error:
            raise UpstreamError(repr(error)) from error
        return UpstreamResponse(response)

    async def aclose(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
