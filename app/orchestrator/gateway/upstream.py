"""HTTP to the engines: one pooled keep-alive client per engine URL.

One client per engine (not one shared pool): httpcore scans its whole pool on every request, so
a shared pool's cost would grow with the number of engines (bench/scale.py found the same for
health probes). No timeout on reading a response: a long generation is not an error; connect
and write are bounded.
"""

from __future__ import annotations

import ssl

import httpx

_TIMEOUT = httpx.Timeout(connect=10.0, read=None, write=60.0, pool=60.0)
_LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=256, keepalive_expiry=60)


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
                limits=_LIMITS,
                trust_env=False,
                verify=self._tls,
            )
            self._clients[base_url] = client
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
