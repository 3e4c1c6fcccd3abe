"""From a spec to what the engine is given: the model's path and its adapters, checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.orchestrator.lora import Adapter, AdapterError, read_adapter
from app.orchestrator.spec import ModelSpec


@dataclass(frozen=True)
class ResolvedModel:
    model_path: str
    adapters: tuple[Adapter, ...]


class ModelResolver:
    """Relative model and adapter paths are taken inside the ModelStore root, never outside."""

    def __init__(self, store_root: Path | None) -> None:
        self.store_root = store_root.resolve() if store_root is not None else None

    def _inside_store(self, relative: str) -> Path | None:
        if self.store_root is None:
            return None
        candidate = (self.store_root / relative).resolve()
        if not candidate.is_relative_to(self.store_root):
            raise AdapterError(f"{relative} resolves outside MODEL_STORE_ROOT ({self.store_root})")
        return candidate

    def model_path(self, spec: ModelSpec) -> str:
        if Path(spec.model).is_absolute():
            return spec.model
        in_store = self._inside_store(spec.model)
        if in_store is not None and in_store.exists():
            return str(in_store)
        return spec.model  # a hub id, which vLLM resolves itself

    def adapter_dir(self, path: str) -> Path:
        if Path(path).is_absolute():
            return Path(path)
        in_store = self._inside_store(path)
        if in_store is None:
            raise AdapterError(f"adapter path {path!r} is relative but MODEL_STORE_ROOT is not set")
        return in_store

    def resolve(self, spec: ModelSpec) -> ResolvedModel:
        adapters = tuple(
            read_adapter(spec.adapter_name(path), self.adapter_dir(path))
            for path in spec.adapter_paths
        )
        return ResolvedModel(model_path=self.model_path(spec), adapters=adapters)
