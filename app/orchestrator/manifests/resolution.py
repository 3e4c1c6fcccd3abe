"""Resolve a manifest's base model and its agents' adapters against the ModelStore."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.orchestrator.manifests.agent_map import AgentAdapter, AgentModelMap, BaseModelEntry
from app.orchestrator.manifests.issues import ManifestIssue, join_key
from app.orchestrator.manifests.model_store import ModelStore, ModelStoreError

ModelSource = Literal["model_store", "hf_id", "unresolved"]
NO_STORE_REASON = "no ModelStore root is configured (MODEL_STORE_ROOT)"


@dataclass(frozen=True)
class BaseModelResolution:
    model: str
    source: ModelSource
    note: str


@dataclass(frozen=True)
class AdapterResolution:
    """One agent's adapter for a manifest.

    `found` means resolved and attached to the spec; `path` is the real absolute directory when
    it was resolved (also when it was then refused for a name clash), `error` says why not attached.
    """

    agent: str
    adapter_name: str
    path: str | None
    found: bool
    error: str | None
    section: str = "agents"
    key: str = ""


def resolve_base_model(store: ModelStore | None, entry: BaseModelEntry) -> BaseModelResolution:
    """The base model's real directory in the store, else its hub id with a note of what was tried.

    Looked for, in order: the hub id's subdirectory or Hugging Face cache snapshot inside the
    version (`model_store_version`, else `current`), then the version directory itself when it
    holds a config.json (a model published flat).
    """
    where = f"{entry.model_store_agent}/" + (
        f"versions/{entry.model_store_version}" if entry.model_store_version else "current"
    )
    if store is None:
        return BaseModelResolution(entry.hf_id, "hf_id", f"{NO_STORE_REASON}; serving hub id")
    try:
        model_dir = store.resolve_model_store_path(
            entry.model_store_agent, entry.hf_id, entry.model_store_version
        )
    except ModelStoreError as nested_error:
        try:
            version_dir = store.resolve_model_store_path(
                entry.model_store_agent, version=entry.model_store_version
            )
        except ModelStoreError as version_error:
            return _hub_fallback(entry, str(version_error))
        if not (version_dir / "config.json").is_file():
            reason = f"{nested_error}; {version_dir / 'config.json'} does not exist either"
            return _hub_fallback(entry, reason)
        model_dir = version_dir
    return BaseModelResolution(str(model_dir), "model_store", f"ModelStore {where} -> {model_dir}")


def _hub_fallback(entry: BaseModelEntry, reason: str) -> BaseModelResolution:
    return BaseModelResolution(
        entry.hf_id, "hf_id", f"not in the ModelStore ({reason}); serving hub id {entry.hf_id}"
    )


def select_adapters(
    agent_map: AgentModelMap, base_ref: str, wanted: list[str] | None
) -> tuple[list[AgentAdapter], list[str]]:
    """The adapters on `base_ref` in stable order, limited to `wanted` agents when given.

    Also returns the wanted agents that have no adapter on `base_ref`.
    """
    adapters = agent_map.adapters_for(base_ref)
    if wanted is None:
        return adapters, []
    chosen = [adapter for adapter in adapters if adapter.agent in wanted]
    present = {adapter.agent for adapter in adapters}
    return chosen, [agent for agent in wanted if agent not in present]


def resolve_adapters(
    store: ModelStore | None, adapters: list[AgentAdapter], map_file: str
) -> tuple[list[AdapterResolution], list[ManifestIssue]]:
    """Resolve each adapter; one issue per adapter that cannot be attached, keyed in the map."""
    resolutions: list[AdapterResolution] = []
    issues: list[ManifestIssue] = []
    names_by_path: dict[str, str] = {}
    paths_by_name: dict[str, str] = {}
    for adapter in adapters:
        path_key = join_key([adapter.section, adapter.agent, adapter.position])
        if store is None:
            resolutions.append(_missing(adapter, None, NO_STORE_REASON))
            continue
        try:
            real = str(store.resolve_adapter(adapter.adapter_model_store_path))
        except ModelStoreError as error:
            resolutions.append(_missing(adapter, None, str(error)))
            key = f"{path_key}.adapter_model_store_path"
            reason = f"adapter {adapter.adapter_name!r}: {error}"
            issues.append(ManifestIssue(map_file, key, reason))
            continue
        clash = _name_clash(adapter.adapter_name, real, names_by_path, paths_by_name)
        if clash is not None:
            resolutions.append(_missing(adapter, real, clash))
            issues.append(ManifestIssue(map_file, f"{path_key}.adapter_name", clash))
            continue
        names_by_path[real] = adapter.adapter_name
        paths_by_name[adapter.adapter_name] = real
        resolutions.append(
            AdapterResolution(
                adapter.agent, adapter.adapter_name, real, True, None, adapter.section, path_key
            )
        )
    return resolutions, issues


def _name_clash(
    name: str, real: str, names_by_path: dict[str, str], paths_by_name: dict[str, str]
) -> str | None:
    # vLLM serves each adapter under one name: one directory cannot take two names, and one name
    # cannot mean two directories. The same directory under the same name is simply shared.
    if real in names_by_path and names_by_path[real] != name:
        return f"{real} is already attached as {names_by_path[real]!r}; not attached as {name!r}"
    if name in paths_by_name and paths_by_name[name] != real:
        used_by = paths_by_name[name]
        return f"adapter name {name!r} is already used by {used_by}; {real} not attached"
    return None


def _missing(adapter: AgentAdapter, path: str | None, error: str) -> AdapterResolution:
    key = join_key([adapter.section, adapter.agent, adapter.position])
    return AdapterResolution(
        adapter.agent, adapter.adapter_name, path, False, error, adapter.section, key
    )
