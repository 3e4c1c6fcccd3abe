"""HTTP health probes of engines, behind a Protocol the lifecycle tests can replace."""

from __future__ import annotations

import ssl
from typing import Protocol

import httpx


class HealthProbe(Protocol):
    async def healthy(self, base_url: str, *, timeout_s: float) -> bool:
        """True when GET {base_url}/health answers 200; refused or slow is False, never raises."""
        ...

    async def aclose(self) -> None: ...


class HttpHealthProbe:
    """One small keep-alive client per engine URL.

    Keep-alive saves a TCP handshake per probe; one client per engine (not one shared pool)
    because httpcore scans its whole pool on every request, which made a probe's cost grow with
    the number of engines (bench/scale.py). A failed probe drops that engine's client, so an
    engine restarted on the same port is never judged on a stale connection twice.
    """

    def __init__(self) -> None:
        self._clients: dict[str, httpx.AsyncClient] = {}
        # Engines answer plain HTTP on loopback, but each httpx client would build its own TLS
        # context (about 1 MiB each): one shared context keeps 100 clients cheap.
        self._tls = ssl.create_default_context()

    def _client(self, base_url: str) -> httpx.AsyncClient:
        client = self._clients.get(base_url)
        if client is None:
            client = httpx.AsyncClient(
                base_url=base_url,
                limits=httpx.Limits(max_connections=1, keepalive_expiry=30.0),
                trust_env=False,
                verify=self._tls,
            )
            self._clients[base_url] = client
        return client

    async def healthy(self, base_url: str, *, timeout_s: float) -> bool:
        try:
            response = await self._client(base_url).get("/health", timeout=timeout_s)
        except httpx.HTTPError:
            client = self._clients.pop(base_url, None)
            if client is not None:
                await client.aclose()
            return False
        return response.status_code == 200

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
