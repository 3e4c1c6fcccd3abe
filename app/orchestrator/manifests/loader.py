"""load_config: the config directory (manifests + AGENT_MODEL_MAP.json) turned into ModelSpecs.

Reads files and the ModelStore tree, writes nothing, and never raises for bad content: every
problem is a ManifestIssue naming the file and key, and each manifest that can be served still
yields its spec. Whoever syncs specs into the registry decides what to do with the issues.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from app.orchestrator.manifests.agent_map import AgentModelMap, load_agent_model_map
from app.orchestrator.manifests.issues import ManifestIssue, issues_from_validation
from app.orchestrator.manifests.manifest import ParsedManifest, read_manifest
from app.orchestrator.manifests.model_store import ModelStore
from app.orchestrator.manifests.resolution import (
    NO_STORE_REASON,
    AdapterResolution,
    ModelSource,
    resolve_adapters,
    resolve_base_model,
    select_adapters,
)
from app.orchestrator.spec import ModelSpec

AGENT_MODEL_MAP_FILE = "AGENT_MODEL_MAP.json"
MANIFEST_PATTERNS = ("*.yaml", "*.yml")


@dataclass(frozen=True)
class LoadedManifest:
    """One manifest file: its spec (None when it cannot be served) and how it was resolved.

    `model_source` is "model_store" (spec.model is a real directory under the store root),
    "hf_id" (the store lacks it; spec.model is the hub id, `model_source_note` says what was
    tried) or "unresolved" (no base model could be determined; spec is None).
    """

    file: str
    spec: ModelSpec | None
    base_model: str
    model_source: ModelSource
    model_source_note: str
    adapters: tuple[AdapterResolution, ...]
    issues: tuple[ManifestIssue, ...]


@dataclass(frozen=True)
class ConfigLoad:
    """Everything in a config directory. `issues` are directory- and map-level problems; each
    manifest carries its own; `all_issues` is both, in file order."""

    manifests: tuple[LoadedManifest, ...]
    agent_map: AgentModelMap | None
    issues: tuple[ManifestIssue, ...]

    @property
    def all_issues(self) -> tuple[ManifestIssue, ...]:
        return self.issues + tuple(i for manifest in self.manifests for i in manifest.issues)

    @property
    def specs(self) -> tuple[ModelSpec, ...]:
        return tuple(m.spec for m in self.manifests if m.spec is not None)


def load_config(
    config_dir: Path, store_root: Path | None, *, strict_adapters: bool = False
) -> ConfigLoad:
    """Load every `*.yaml`/`*.yml` manifest in `config_dir` against its AGENT_MODEL_MAP.json.

    With `strict_adapters`, a manifest with any adapter that cannot be attached yields no spec
    (and an issue) instead of a spec carrying only the adapters that were found.
    """
    if not config_dir.is_dir():
        issue = ManifestIssue(str(config_dir), "", "config directory does not exist")
        return ConfigLoad((), None, (issue,))
    map_path = config_dir / AGENT_MODEL_MAP_FILE
    agent_map = load_agent_model_map(map_path) if map_path.exists() else None
    store = ModelStore(store_root) if store_root is not None else None
    manifest_files = sorted({p for pattern in MANIFEST_PATTERNS for p in config_dir.glob(pattern)})
    loaded: list[LoadedManifest] = []
    seen_ids: dict[str, str] = {}
    for path in manifest_files:
        manifest = _load_one(path, agent_map, map_path, store, strict_adapters)
        if manifest.spec is not None and manifest.spec.id in seen_ids:
            reason = f"id {manifest.spec.id!r} is already defined in {seen_ids[manifest.spec.id]}"
            manifest = _refused(manifest, ManifestIssue(manifest.file, "id", reason))
        elif manifest.spec is not None:
            seen_ids[manifest.spec.id] = manifest.file
        loaded.append(manifest)
    map_issues = tuple(agent_map.issues) if agent_map is not None else ()
    return ConfigLoad(tuple(loaded), agent_map, map_issues)


def _load_one(
    path: Path,
    agent_map: AgentModelMap | None,
    map_path: Path,
    store: ModelStore | None,
    strict_adapters: bool,
) -> LoadedManifest:
    parsed = read_manifest(path)
    base_model = parsed.header.base_model if parsed.header is not None else ""
    issues = list(parsed.issues)
    if parsed.header is None:
        return LoadedManifest(parsed.file, None, base_model, "unresolved", "", (), tuple(issues))
    if agent_map is None or base_model not in agent_map.base_models:
        issues.append(_unknown_base_issue(parsed.file, base_model, agent_map, map_path))
        return LoadedManifest(parsed.file, None, base_model, "unresolved", "", (), tuple(issues))
    base = resolve_base_model(store, agent_map.base_models[base_model])
    wanted = parsed.header.adapters.agents
    chosen, absent = select_adapters(agent_map, base_model, None if wanted == "all" else wanted)
    for agent in absent:
        reason = f"agent {agent!r} has no adapter on base model {base_model!r} in {map_path}"
        issues.append(ManifestIssue(parsed.file, "adapters.agents", reason))
    resolutions, adapter_issues = resolve_adapters(store, chosen, agent_map.file)
    issues.extend(adapter_issues)
    unattached = [r for r in resolutions if not r.found]
    if store is None and unattached:
        reason = f"{len(unattached)} adapter(s) not resolved: {NO_STORE_REASON}"
        issues.append(ManifestIssue(parsed.file, "adapters", reason))
    spec = None
    if strict_adapters and unattached:
        names = ", ".join(f"{r.agent}:{r.adapter_name}" for r in unattached)
        reason = f"strict adapters: {len(unattached)} of {len(resolutions)} not attached ({names})"
        issues.append(ManifestIssue(parsed.file, "adapters", reason))
    elif parsed.valid:
        spec = _build_spec(parsed, base.model, resolutions, issues)
    return LoadedManifest(
        parsed.file,
        spec,
        base_model,
        base.source,
        base.note,
        tuple(resolutions),
        tuple(issues),
    )


def _build_spec(
    parsed: ParsedManifest,
    model: str,
    resolutions: list[AdapterResolution],
    issues: list[ManifestIssue],
) -> ModelSpec | None:
    adapter_names: dict[str, str] = {}
    for resolution in resolutions:
        if resolution.found and resolution.path is not None:
            adapter_names.setdefault(resolution.path, resolution.adapter_name)
    fields = {
        **parsed.spec_fields,
        "model": model,
        "adapter_paths": list(adapter_names),
        "adapter_names": adapter_names,
    }
    try:
        return ModelSpec.model_validate(fields)
    except ValidationError as error:
        # The operator's fields were valid on their own, so what fails here is what was derived
        # (e.g. a store path with ':' that VLLM_ADAPTER_PATHS cannot carry).
        issues.extend(issues_from_validation(parsed.file, error))
        return None


def _unknown_base_issue(
    file: str, base_model: str, agent_map: AgentModelMap | None, map_path: Path
) -> ManifestIssue:
    if agent_map is None:
        return ManifestIssue(file, "base_model", f"{map_path} does not exist")
    known = ", ".join(sorted(agent_map.base_models)) or "none"
    reason = f"unknown base model {base_model!r} (base_models in {map_path}: {known})"
    return ManifestIssue(file, "base_model", reason)


def _refused(manifest: LoadedManifest, issue: ManifestIssue) -> LoadedManifest:
    return LoadedManifest(
        manifest.file,
        None,
        manifest.base_model,
        manifest.model_source,
        manifest.model_source_note,
        manifest.adapters,
        (*manifest.issues, issue),
    )
