"""LoRA adapters as vLLM takes them: names, paths and the rank limit it must be told."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# vLLM accepts only these values for --max-lora-rank; one below an adapter's r makes it exit.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class AdapterError(Exception):
    """An adapter vLLM cannot take; `figures` names it and the numbers, for the 422 body."""

    def __init__(self, message: str, *, figures: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.figures = figures or {}


@dataclass(frozen=True)
class Adapter:
    name: str
    path: Path
    rank: int


def read_adapter(name: str, path: Path) -> Adapter:
    """Read an adapter's rank from its adapter_config.json (peft's format)."""
    config_path = path / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise AdapterError(f"adapter {name}: {config_path} not found") from error
    except (OSError, ValueError) as error:
        raise AdapterError(f"adapter {name}: cannot read {config_path}: {error}") from error
    rank = config.get("r") if isinstance(config, dict) else None
    if not isinstance(rank, int) or rank < 1:
        raise AdapterError(f"adapter {name}: {config_path} has no positive integer 'r'")
    return Adapter(name=name, path=path, rank=rank)


def max_lora_rank(adapters: list[Adapter]) -> int:
    """The smallest of vLLM's rank choices that covers every adapter."""
    widest = max(adapters, key=lambda adapter: adapter.rank)
    for choice in VLLM_LORA_RANKS:
        if choice >= widest.rank:
            return choice
    raise AdapterError(
        f"adapter {widest.name}: rank {widest.rank} exceeds the largest vLLM takes "
        f"({VLLM_LORA_RANKS[-1]})",
        figures={"adapter": widest.name, "rank": widest.rank, "max_rank": VLLM_LORA_RANKS[-1]},
    )


def lora_flags(adapters: list[Adapter]) -> list[str]:
    """--enable-lora --lora-modules name=path ... (one token each: the JSON form fails)."""
    if not adapters:
        return []
    modules = [f"{adapter.name}={adapter.path}" for adapter in adapters]
    return [
        "--enable-lora",
        "--lora-modules",
        *modules,
        "--max-lora-rank",
        str(max_lora_rank(adapters)),
        "--max-loras",
        str(len(adapters)),
    ]
