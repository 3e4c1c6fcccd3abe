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


def max_lora_rank_of(adapters: list[Adapter]) -> int:
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


# Room an engine keeps for adapters added while it runs (a rank vLLM takes; most agents' LoRAs
# are r=8..64). LoRA slots hold GPU memory (max_loras x max_lora_rank per layer), so the default
# is modest and the spec's fields say more when a team needs it.
DEFAULT_RUNTIME_LORA_RANK = 64
DEFAULT_RUNTIME_LORAS = 4


@dataclass(frozen=True)
class LoraLimits:
    """What an engine is launched with: adapters live-added later must fit these."""

    max_loras: int
    max_lora_rank: int


def rank_choice(rank: int) -> int:
    """The smallest of vLLM's --max-lora-rank choices that covers `rank`."""
    for choice in VLLM_LORA_RANKS:
        if choice >= rank:
            return choice
    raise AdapterError(
        f"rank {rank} exceeds the largest vLLM takes ({VLLM_LORA_RANKS[-1]})",
        figures={"rank": rank, "max_rank": VLLM_LORA_RANKS[-1]},
    )


def lora_limits(
    adapters: list[Adapter], *, max_loras: int | None, max_lora_rank: int | None
) -> LoraLimits | None:
    """The limits an engine of this spec is launched with; None when the spec uses no LoRA (no
    adapter and no max_loras). Defaults fit the declared adapters, with room for more."""
    if not adapters and max_loras is None and max_lora_rank is None:
        return None
    needed_rank = max_lora_rank_of(adapters) if adapters else 1
    rank = (
        max_lora_rank if max_lora_rank is not None else max(needed_rank, DEFAULT_RUNTIME_LORA_RANK)
    )
    if rank < needed_rank:
        widest = max(adapters, key=lambda adapter: adapter.rank)
        raise AdapterError(
            f"adapter {widest.name}: rank {widest.rank} exceeds max_lora_rank {rank}",
            figures={"adapter": widest.name, "rank": widest.rank, "max_lora_rank": rank},
        )
    slots = max_loras if max_loras is not None else max(len(adapters), DEFAULT_RUNTIME_LORAS)
    return LoraLimits(max_loras=slots, max_lora_rank=rank)


def lora_flags(adapters: list[Adapter], limits: LoraLimits | None) -> list[str]:
    """--enable-lora --lora-modules name=path ... (one token each: the JSON form fails)."""
    if limits is None:
        return []
    flags = ["--enable-lora"]
    if adapters:
        flags += ["--lora-modules", *(f"{adapter.name}={adapter.path}" for adapter in adapters)]
    return [
        *flags,
        "--max-lora-rank",
        str(limits.max_lora_rank),
        "--max-loras",
        str(limits.max_loras),
    ]
