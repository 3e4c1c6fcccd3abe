"""HTTP health probes of engines, behind a Protocol the lifecycle tests can replace."""

from __future__ import annotations

from typing import Protocol

import httpx


class HealthProbe(Protocol):
    async def healthy(self, base_url: str, *, timeout_s: float) -> bool:
        """True when GET {base_url}/health answers 200; refused or slow is False, never raises."""
        ...

    async def aclose(self) -> None: ...


class HttpHealthProbe:
    def __init__(self) -> None:
        # Keep-alive saves a TCP handshake per probe (most of a probe's CPU). A connection left
        # by an engine that restarted on the same port fails one probe, never a run: readiness
        # retries at once, and `unhealthy` needs several failures in a row.
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(max_keepalive_connections=200, keepalive_expiry=30.0),
            trust_env=False,
        )

    async def healthy(self, base_url: str, *, timeout_s: float) -> bool:
        try:
            response = await self._client.get(f"{base_url}/health", timeout=timeout_s)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def aclose(self) -> None:
        await self._client.aclose()
