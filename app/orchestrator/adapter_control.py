"""Adapters on a running vLLM engine: load, unload, and what it serves, over its HTTP API.

vLLM takes `POST /v1/load_lora_adapter {"lora_name", "lora_path"}` and
`POST /v1/unload_lora_adapter {"lora_name"}` when started with
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` (vllm/entrypoints/serve/lora/api_router.py); `GET
/v1/models` lists the base model and every adapter it serves. Tests hand in a fake.
"""

from __future__ import annotations

from typing import Protocol

import httpx

# Loading reads the adapter's weights from disk into the engine: seconds for a big one.
_LOAD_TIMEOUT_S = 300.0


class AdapterControl(Protocol):
    async def load(self, base_url: str, name: str, path: str) -> str | None:
        """Load an adapter; None when done, else the engine's reason."""
        ...

    async def unload(self, base_url: str, name: str) -> str | None:
        """Unload an adapter; None when done or when the engine did not have it."""
        ...

    async def served(self, base_url: str) -> set[str] | None:
        """The model names the engine serves (base and adapters); None when unreadable."""
        ...

    async def aclose(self) -> None: ...


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:500]}"
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return f"HTTP {response.status_code}: {message or str(body)[:500]}"


class HttpAdapterControl:
    def __init__(self) -> None:
        self._client = httpx.AsyncClient(timeout=_LOAD_TIMEOUT_S, trust_env=False)

    async def load(self, base_url: str, name: str, path: str) -> str | None:
        body = {"lora_name": name, "lora_path": path}
        try:
            response = await self._client.post(f"{base_url}/v1/load_lora_adapter", json=body)
        except httpx.HTTPError as error:
            return f"the engine did not answer: {error!r}"
        return None if response.status_code == 200 else _reason(response)

    async def unload(self, base_url: str, name: str) -> str | None:
        try:
            response = await self._client.post(
                f"{base_url}/v1/unload_lora_adapter", json={"lora_name": name}
            )
        except httpx.HTTPError as error:
            return f"the engine did not answer: {error!r}"
        return None if response.status_code in (200, 404) else _reason(response)

    async def served(self, base_url: str) -> set[str] | None:
        try:
            response = await self._client.get(f"{base_url}/v1/models", timeout=30.0)
            cards = response.json().get("data", []) if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        if not isinstance(cards, list):
            return None
        return {card["id"] for card in cards if isinstance(card, dict) and "id" in card}

    async def aclose(self) -> None:
        await self._client.aclose()
