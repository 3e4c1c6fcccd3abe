"""vLLM's sleep mode on a running engine, over its HTTP API.

With `--enable-sleep-mode` and `VLLM_SERVER_DEV_MODE=1` vLLM serves `POST /sleep?level=N`,
`POST /wake_up[?tags=...]`, `GET /is_sleeping`, `POST /collective_rpc` and
`POST /reset_prefix_cache` (vllm/entrypoints/serve/dev/). Level 1 offloads the weights to host
memory and drops the KV cache: `/wake_up` brings both back. Level 2 drops the weights too: the
wake is `/wake_up?tags=weights`, `collective_rpc reload_weights` (from disk), `/wake_up?tags=
kv_cache`, then `/reset_prefix_cache` (the cached prefixes were computed before the sleep). vLLM's
CPU build has no sleep mode (`Platform.is_sleep_mode_available` is CUDA/ROCm/XPU only).
"""

from __future__ import annotations

from typing import Protocol

import httpx

# Offloading or reloading the weights of a big model takes seconds; never minutes.
_TIMEOUT_S = 120.0


class SleepControl(Protocol):
    async def sleep(self, base_url: str, level: int) -> str | None:
        """Put the engine to sleep; None when done, else the reason."""
        ...

    async def wake(self, base_url: str, level: int) -> str | None:
        """Wake an engine put to sleep at `level`; None when it serves again."""
        ...

    async def aclose(self) -> None: ...


class HttpSleepControl:
    def __init__(self) -> None:
        self._client = httpx.AsyncClient(timeout=_TIMEOUT_S, trust_env=False)

    async def _post(self, url: str, **kwargs: object) -> str | None:
        try:
            response = await self._client.post(url, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as error:
            return f"POST {url}: {error!r}"
        if response.status_code != 200:
            return f"POST {url}: HTTP {response.status_code} {response.text[:300]}"
        return None

    async def sleep(self, base_url: str, level: int) -> str | None:
        return await self._post(f"{base_url}/sleep", params={"level": str(level)})

    async def wake(self, base_url: str, level: int) -> str | None:
        if level == 1:
            return await self._post(f"{base_url}/wake_up")
        steps = [
            (f"{base_url}/wake_up", {"params": {"tags": "weights"}}),
            (f"{base_url}/collective_rpc", {"json": {"method": "reload_weights"}}),
            (f"{base_url}/wake_up", {"params": {"tags": "kv_cache"}}),
            (f"{base_url}/reset_prefix_cache", {}),
        ]
        for url, kwargs in steps:
            error = await self._post(url, **kwargs)
            if error is not None:
                return error
        return None

    async def aclose(self) -> None:
        await self._client.aclose()
