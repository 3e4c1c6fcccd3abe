"""Manifests: the config files teams already keep, resolved into ModelSpecs.

`load_config(config_dir, store_root)` reads `config/*.yaml` model manifests and
`config/AGENT_MODEL_MAP.json`, resolves base models and adapters in the ModelStore, and returns
specs plus every problem as a ManifestIssue (file, key, reason). Pure domain code: no HTTP, no SQL.
"""

from app.orchestrator.manifests.agent_map import (
    AgentAdapter,
    AgentModelMap,
    BaseModelEntry,
    load_agent_model_map,
)
from app.orchestrator.manifests.issues import ManifestIssue
from app.orchestrator.manifests.loader import ConfigLoad, LoadedManifest, load_config
from app.orchestrator.manifests.manifest import read_manifest
from app.orchestrator.manifests.model_store import ModelStore, ModelStoreError
from app.orchestrator.manifests.resolution import AdapterResolution

__all__ = [
    "AdapterResolution",
    "AgentAdapter",
    "AgentModelMap",
    "BaseModelEntry",
    "ConfigLoad",
    "LoadedManifest",
    "ManifestIssue",
    "ModelStore",
    "ModelStoreError",
    "load_agent_model_map",
    "load_config",
    "read_manifest",
]
