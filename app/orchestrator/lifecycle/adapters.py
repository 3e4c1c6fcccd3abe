"""LoRA adapters of one model, live on its running engine: add, remove, and reconcile.

The spec's adapter list is the single truth. Adding or removing one changes the spec, and on a
running engine loads or unloads it first (same pid: no restart). After every start, adoption or
spec edit the engine's `/v1/models` is compared with the spec and the difference is loaded or
unloaded, so an adapter added at runtime is there again after a restart. Called only from the
model's supervisor (one writer), so adapter changes never interleave with starts and stops.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from app.orchestrator.lifecycle.context import RunContext
from app.orchestrator.lifecycle.errors import CommandError, CommandResult, ErrorCode
from app.orchestrator.lifecycle.launch import EngineRun
from app.orchestrator.lifecycle.states import ModelState
from app.orchestrator.lora import Adapter, AdapterError, read_adapter
from app.orchestrator.spec import ModelSpec


@dataclass(frozen=True)
class AdapterView:
    name: str
    path: str
    rank: int | None
    loaded: bool
    since: datetime | None


@dataclass(frozen=True)
class AdapterOutcome:
    result: CommandResult
    spec: ModelSpec | None = None  # the spec to persist, when it changed


def _refused(code: ErrorCode, message: str, **figures: Any) -> AdapterOutcome:
    return AdapterOutcome(CommandResult(changed=False, error=CommandError(code, message, figures)))


def with_adapter(spec: ModelSpec, name: str, path: str) -> ModelSpec:
    data = spec.model_dump()
    data["adapter_paths"] = [*spec.adapter_paths, path]
    data["adapter_names"] = {**spec.adapter_names, path: name}
    return ModelSpec.model_validate(data)


def without_adapter(spec: ModelSpec, name: str) -> ModelSpec:
    data = spec.model_dump()
    data["adapter_paths"] = [p for p in spec.adapter_paths if spec.adapter_name(p) != name]
    data["adapter_names"] = {
        p: n for p, n in spec.adapter_names.items() if p in data["adapter_paths"]
    }
    return ModelSpec.model_validate(data)


class AdapterSteps:
    def __init__(self, model_id: str, ctx: RunContext) -> None:
        self.model_id = model_id
        self.ctx = ctx
        # name -> when the current run began serving it; cleared with each new run.
        self._loaded: dict[str, datetime] = {}
        self._loaded_generation = -1

    def _loaded_for(self, run: EngineRun | None) -> dict[str, datetime]:
        generation = run.generation if run is not None else -1
        if generation != self._loaded_generation:
            self._loaded, self._loaded_generation = {}, generation
        return self._loaded

    def _count(self, result: str, loaded: int) -> None:
        metrics = self.ctx.metrics
        metrics.adapter_loads_total.labels(model=self.model_id, result=result).inc()
        metrics.adapters_loaded.labels(model=self.model_id).set(loaded)

    # -- reading ------------------------------------------------------------------------------
    async def views(
        self, spec: ModelSpec, run: EngineRun | None, state: ModelState
    ) -> list[AdapterView]:
        loaded = self._loaded_for(run) if state == ModelState.RUNNING else {}
        views = []
        for path in spec.adapter_paths:
            name = spec.adapter_name(path)
            adapter = await asyncio.to_thread(self._read, name, path)
            rank = adapter.rank if isinstance(adapter, Adapter) else None
            views.append(AdapterView(name, path, rank, name in loaded, loaded.get(name)))
        return views

    def _read(self, name: str, path: str) -> Adapter | AdapterError:
        try:
            return read_adapter(name, self.ctx.resolver.adapter_dir(path))
        except AdapterError as error:
            return error

    # -- changing -----------------------------------------------------------------------------
    async def add(
        self, spec: ModelSpec, run: EngineRun | None, state: ModelState, name: str, path: str
    ) -> AdapterOutcome:
        current = {spec.adapter_name(p): p for p in spec.adapter_paths}
        if current.get(name) == path:
            return AdapterOutcome(CommandResult(changed=False))  # already there: 200
        if name in current or path in spec.adapter_paths:
            taken = name if name in current else spec.adapter_name(path)
            return _refused(
                ErrorCode.ADAPTER_NAME_CONFLICT,
                f"model {spec.id} already has adapter {taken} ({current.get(taken, path)})",
                name=taken,
            )
        try:
            new_spec = with_adapter(spec, name, path)
        except ValidationError as error:
            return _refused(ErrorCode.ADAPTER_INVALID, _first_error(error), name=name)
        adapter = await asyncio.to_thread(self._read, name, path)
        if isinstance(adapter, AdapterError):
            return _refused(ErrorCode.ADAPTER_INVALID, str(adapter), **adapter.figures)
        if run is None:
            return AdapterOutcome(CommandResult(changed=True), new_spec)  # applied at launch
        refusal = _beyond_engine(spec.id, run, adapter)
        if refusal is not None:
            return refusal
        if state == ModelState.RUNNING:
            reason = await self.ctx.adapters.load(run.base_url, name, str(adapter.path))
            loaded = self._loaded_for(run)
            if reason is not None:
                self._count("error", len(loaded))
                return _refused(ErrorCode.ADAPTER_INVALID, f"adapter {name}: {reason}", name=name)
            loaded[name] = self.ctx.clock.now()
            self._count("ok", len(loaded))
        # A starting engine gets it when it is ready (reconcile).
        return AdapterOutcome(CommandResult(changed=True), new_spec)

    async def remove(
        self, spec: ModelSpec, run: EngineRun | None, state: ModelState, name: str
    ) -> AdapterOutcome:
        if name not in {spec.adapter_name(p) for p in spec.adapter_paths}:
            return _refused(
                ErrorCode.ADAPTER_NOT_FOUND, f"model {spec.id} has no adapter {name}", name=name
            )
        if run is not None and state == ModelState.RUNNING:
            reason = await self.ctx.adapters.unload(run.base_url, name)
            loaded = self._loaded_for(run)
            if reason is not None:
                self._count("error", len(loaded))
                return _refused(ErrorCode.ADAPTER_INVALID, f"adapter {name}: {reason}", name=name)
            loaded.pop(name, None)
            self._count("unloaded", len(loaded))
        return AdapterOutcome(CommandResult(changed=True), without_adapter(spec, name))

    async def reconcile(self, spec: ModelSpec, run: EngineRun) -> list[str]:
        """Make the engine serve exactly the spec's adapters. Returns the adapters that could not
        be loaded, each with its reason: a restart is needed for those."""
        served = await self.ctx.adapters.served(run.base_url)
        if served is None or run.lora is None:
            return []
        wanted = {spec.adapter_name(path): path for path in spec.adapter_paths}
        loaded = self._loaded_for(run)
        problems: dict[str, str] = {}
        for name in sorted(set(wanted) - served):
            reason = await self._load_for_reconcile(spec.id, run, name, wanted[name])
            self._count("error" if reason else "ok", len(loaded))
            if reason is not None:
                problems[name] = reason
        for name in sorted(served - set(wanted) - {spec.id}):
            if await self.ctx.adapters.unload(run.base_url, name) is None:
                self._count("unloaded", len(loaded))
        now = self.ctx.clock.now()
        kept = {name: loaded.get(name, now) for name in wanted if name not in problems}
        loaded.clear()
        loaded.update(kept)
        self.ctx.metrics.adapters_loaded.labels(model=self.model_id).set(len(loaded))
        return [f"{name}: {reason}" for name, reason in problems.items()]

    async def _load_for_reconcile(
        self, model_id: str, run: EngineRun, name: str, path: str
    ) -> str | None:
        adapter = await asyncio.to_thread(self._read, name, path)
        if isinstance(adapter, AdapterError):
            return str(adapter)
        refusal = _beyond_engine(model_id, run, adapter)
        if refusal is not None and refusal.result.error is not None:
            return refusal.result.error.message
        return await self.ctx.adapters.load(run.base_url, name, str(adapter.path))


def _beyond_engine(model_id: str, run: EngineRun, adapter: Adapter) -> AdapterOutcome | None:
    """A live add the running engine cannot take: no LoRA at launch, or a rank above its limit.
    Said with the figures and restart_needed, never done by a silent restart."""
    if run.lora is None:
        return _refused(
            ErrorCode.RESTART_NEEDED,
            f"the engine of {model_id} was started without LoRA: restart it to add adapters "
            "(set max_loras to have it started with LoRA)",
            restart_needed=True,
        )
    if adapter.rank > run.lora.max_lora_rank:
        return _refused(
            ErrorCode.RESTART_NEEDED,
            f"adapter {adapter.name}: rank {adapter.rank} exceeds the running engine's "
            f"max_lora_rank {run.lora.max_lora_rank}; raise max_lora_rank and restart",
            restart_needed=True,
            rank=adapter.rank,
            max_lora_rank=run.lora.max_lora_rank,
        )
    return None


def _first_error(error: ValidationError) -> str:
    item = error.errors(include_url=False)[0]
    where = ".".join(str(part) for part in item["loc"])
    return f"{where}: {item['msg']}"


__all__ = ["AdapterOutcome", "AdapterSteps", "AdapterView"]
