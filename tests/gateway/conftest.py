"""Gateway tests: the service with the fake engine, called with the official `openai` SDK."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

Spec = Callable[..., dict[str, Any]]


def spec(model_id: str = "tiny", *fake_flags: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": model_id, "model": "/models/tiny", "gpu_memory_util": 0.3}
    if fake_flags:
        body["env"] = {"FAKE_ENGINE_ARGS": " ".join(fake_flags)}
    body.update(fields)
    return body


def make_adapter(root: Path, name: str, rank: int = 8) -> str:
    path = root / name
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA"}))
    return str(path)


def sdk(client: httpx.AsyncClient, api_key: str = "unused") -> openai.AsyncOpenAI:
    """The official SDK, pointed at the gateway through the app's own transport."""
    return openai.AsyncOpenAI(
        base_url=str(client.base_url).rstrip("/") + "/v1",
        api_key=api_key,
        # The SDK types its client as its own httpx fork's; an httpx client works the same.
        http_client=client,  # type: ignore[arg-type]
        max_retries=0,
    )


@pytest.fixture
async def adapters_root(tmp_path: Path) -> AsyncIterator[Path]:
    root = tmp_path / "adapters"
    root.mkdir()
    yield root
