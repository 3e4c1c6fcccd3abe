"""The model manifest: one YAML file per served base model (config/vllm_mistral_7b.yaml).

    apiVersion: gpu-orchestrator/v1
    kind: ModelManifest
    id: mistral-7b                  # ModelSpec.id
    base_model: mistral-7b-v0.3     # a key of AGENT_MODEL_MAP.json base_models
    adapters:
      agents: all                   # or a list of agent names; [] attaches none
    dtype: bfloat16                 # ...and every other ModelSpec field an operator sets:
    gpu_memory_util: 0.75           # service_unit, memory_max, cpu_quota, port, max_model_len,
    max_model_len: 4096             # tensor_parallel_size, extra_args, env, restart_policy,
                                    # start_timeout_s

`model`, `adapter_paths` and `adapter_names` are not written here: the loader derives them from
`base_model` and the agents' adapters in the ModelStore, so the manifest cannot drift from the map.
Every key is checked by a pydantic model with extra="forbid": the envelope keys by ManifestHeader,
the rest by ModelSpec itself, so a typo is an "unknown key" issue rather than a silent default.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.orchestrator.manifests.issues import ManifestIssue, issues_from_validation
from app.orchestrator.spec import ModelSpec

API_VERSION = "gpu-orchestrator/v1"
KIND = "ModelManifest"
HEADER_KEYS = frozenset({"apiVersion", "kind", "base_model", "adapters"})
# ModelSpec fields the loader fills in; naming them in a manifest is refused with the reason.
DERIVED_SPEC_FIELDS: dict[str, str] = {
    "model": "derived from base_model and the ModelStore; set base_model instead",
    "adapter_paths": "derived from AGENT_MODEL_MAP.json; choose agents under adapters.agents",
    "adapter_names": "derived from AGENT_MODEL_MAP.json adapter_name entries",
}
# Stands in for the derived fields while the operator's own fields are validated.
_PLACEHOLDER_MODEL = "unresolved-base-model"


class AdapterSelection(BaseModel):
    """Which agents' adapters on the base model are attached: all of them, or those named."""

    model_config = ConfigDict(extra="forbid")

    agents: Literal["all"] | list[str] = "all"


class ManifestHeader(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api_version: Literal["gpu-orchestrator/v1"] = Field(alias="apiVersion")
    kind: Literal["ModelManifest"]
    base_model: str = Field(min_length=1)
    adapters: AdapterSelection = Field(default_factory=AdapterSelection)


@dataclass(frozen=True)
class ParsedManifest:
    """A manifest read from disk: `header` and `spec_fields` are None/partial when it is invalid."""

    file: str
    header: ManifestHeader | None
    spec_fields: dict[str, Any]
    spec_id: str | None
    issues: tuple[ManifestIssue, ...] = field(default=())

    @property
    def valid(self) -> bool:
        return self.header is not None and self.spec_id is not None and not self.issues


def read_manifest(path: Path) -> ParsedManifest:
    """Parse and validate one manifest file; problems come back as issues, never raised."""
    file = str(path)
    try:
        data = _load_yaml(path)
    except yaml.YAMLError as error:
        return _failed(file, "", _yaml_reason(error))
    except (OSError, UnicodeDecodeError) as error:
        return _failed(file, "", f"cannot be read: {error}")
    if not isinstance(data, dict):
        return _failed(file, "", "top level must be a mapping of manifest keys")
    keys = [key for key in data if not isinstance(key, str)]
    if keys:
        return _failed(file, str(keys[0]), "manifest keys must be strings")
    return _validate(file, data)


def _validate(file: str, data: dict[str, Any]) -> ParsedManifest:
    issues: list[ManifestIssue] = []
    header: ManifestHeader | None = None
    try:
        header = ManifestHeader.model_validate({k: v for k, v in data.items() if k in HEADER_KEYS})
    except ValidationError as error:
        issues.extend(_header_issues(file, error))
    spec_fields = {k: v for k, v in data.items() if k not in HEADER_KEYS}
    for name in sorted(DERIVED_SPEC_FIELDS.keys() & spec_fields.keys()):
        issues.append(ManifestIssue(file, name, f"must not be set: {DERIVED_SPEC_FIELDS[name]}"))
        del spec_fields[name]
    spec_id: str | None = None
    try:
        spec_id = ModelSpec.model_validate({**spec_fields, "model": _PLACEHOLDER_MODEL}).id
    except ValidationError as error:
        issues.extend(issues_from_validation(file, error))
    return ParsedManifest(file, header, spec_fields, spec_id, tuple(issues))


def _header_issues(file: str, error: ValidationError) -> list[ManifestIssue]:
    issues = issues_from_validation(file, error)
    # pydantic reports the alias for apiVersion already; make "Field required" self-explaining.
    return [
        ManifestIssue(issue.file, issue.key, f"{issue.reason} (expected {API_VERSION!r})")
        if issue.key == "apiVersion"
        else ManifestIssue(issue.file, issue.key, f"{issue.reason} (expected {KIND!r})")
        if issue.key == "kind"
        else issue
        for issue in issues
    ]


def _failed(file: str, key: str, reason: str) -> ParsedManifest:
    return ParsedManifest(file, None, {}, None, (ManifestIssue(file, key, reason),))


def _yaml_reason(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    if mark is None:
        return f"malformed YAML: {problem}"
    return f"malformed YAML at line {mark.line + 1} column {mark.column + 1}: {problem}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: PyYAML keeps the last one silently, which turns
    a pasted-twice `gpu_memory_util` into a value nobody reviewed."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Any] = set()
        for key_node, _value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"duplicate key {key!r}",
                    key_node.start_mark,
                )
            if isinstance(key, Hashable):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(path: Path) -> Any:
    # A SafeLoader subclass: no arbitrary object construction, which is what S506 guards against.
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506
