"""AGENT_MODEL_MAP.json: which base models exist and which agents' adapters sit on each.

The file is the one the agents' teams already maintain:

    {"base_models": {name: {hf_id, model_store_agent, model_store_version, ...}},
     "agents":      {agent: [{base_ref, adapter_name, adapter_model_store_path, ...}]},
     "vllm_agents": {agent: [... the same shape, for vLLM-served variants ...]}}

Loading never raises: a malformed file yields an empty map with one issue, a bad entry yields an
issue naming its key while the good entries around it are kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.orchestrator.manifests.issues import ManifestIssue, issues_from_validation, join_key

__all__ = [
    "ADAPTER_SECTIONS",
    "AgentAdapter",
    "AgentModelMap",
    "BaseModelEntry",
    "ManifestIssue",
    "load_agent_model_map",
]

AdapterSection = Literal["agents", "vllm_agents"]
# The order adapters are attached in: the primary section first, then the vLLM-only variants.
ADAPTER_SECTIONS: tuple[AdapterSection, ...] = ("agents", "vllm_agents")
_TOP_LEVEL_KEYS = frozenset({"base_models", *ADAPTER_SECTIONS})
# vLLM's --lora-modules name: the same rule ModelSpec.adapter_names enforces.
_ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


@dataclass(frozen=True)
class BaseModelEntry:
    """One `base_models` entry; `model_store_version` None means the agent's `current`."""

    name: str
    hf_id: str
    model_store_agent: str = "base_models"
    model_store_version: str | None = None
    variant_preference: str | None = None
    quantized_variants: tuple[str, ...] = ()
    approx_vram_mb: int | None = None
    peft_support: bool = False
    inference_mode: str | None = None
    vllm_endpoint: str | None = None


@dataclass(frozen=True)
class AgentAdapter:
    """One adapter of one agent, as listed under `section.agent[position]`."""

    agent: str
    base_ref: str
    adapter_name: str
    adapter_model_store_path: str
    variant_preference: str | None
    section: AdapterSection
    position: int = 0
    inference_mode: str | None = None

    @property
    def key(self) -> str:
        return join_key([self.section, self.agent, self.position])

    @property
    def sort_key(self) -> tuple[int, str, int]:
        return (ADAPTER_SECTIONS.index(self.section), self.agent, self.position)


@dataclass
class AgentModelMap:
    file: str
    base_models: dict[str, BaseModelEntry] = field(default_factory=dict)
    adapters: list[AgentAdapter] = field(default_factory=list)
    issues: list[ManifestIssue] = field(default_factory=list)
    # Names present in the file whose entries failed validation: an adapter on one of them is
    # reported as referring to an invalid entry, not to a model nobody declared.
    invalid_base_models: set[str] = field(default_factory=set)

    def adapters_for(self, base_ref: str) -> list[AgentAdapter]:
        """The adapters on `base_ref`, in the stable order: section, agent name, position."""
        return sorted(
            (a for a in self.adapters if a.base_ref == base_ref), key=lambda a: a.sort_key
        )


class _BaseModelSchema(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    hf_id: str = Field(min_length=1)
    model_store_agent: str = Field(default="base_models", min_length=1)
    model_store_version: str | None = Field(default=None, min_length=1)
    variant_preference: str | None = None
    quantized_variants: list[str] = Field(default_factory=list)
    approx_vram_mb: int | None = Field(default=None, ge=0)
    peft_support: bool = False
    inference_mode: str | None = None
    vllm_endpoint: str | None = None


class _AdapterSchema(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    base_ref: str = Field(min_length=1)
    adapter_name: str = Field(pattern=_ADAPTER_NAME_PATTERN)
    adapter_model_store_path: str = Field(min_length=1)
    variant_preference: str | None = None
    inference_mode: str | None = None


def load_agent_model_map(path: Path) -> AgentModelMap:
    """Read and validate the map; every problem becomes an issue on the returned map."""
    file = str(path)
    result = AgentModelMap(file=file)
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        reason = f"malformed JSON at line {error.lineno} column {error.colno}: {error.msg}"
        result.issues.append(ManifestIssue(file, "", reason))
        return result
    except (OSError, UnicodeDecodeError) as error:
        result.issues.append(ManifestIssue(file, "", f"cannot be read: {error}"))
        return result
    if not isinstance(data, dict):
        result.issues.append(ManifestIssue(file, "", "top level must be a JSON object"))
        return result
    for unknown in sorted(set(data) - _TOP_LEVEL_KEYS):
        result.issues.append(ManifestIssue(file, unknown, "unknown key"))
    _load_base_models(result, data.get("base_models", {}))
    for section in ADAPTER_SECTIONS:
        _load_adapters(result, section, data.get(section, {}))
    return result


def _load_base_models(result: AgentModelMap, section: Any) -> None:
    if not isinstance(section, dict):
        result.issues.append(ManifestIssue(result.file, "base_models", "must be an object"))
        return
    for name, raw in section.items():
        try:
            entry = _BaseModelSchema.model_validate(raw)
        except ValidationError as error:
            result.issues.extend(issues_from_validation(result.file, error, ("base_models", name)))
            result.invalid_base_models.add(name)
            continue
        result.base_models[name] = BaseModelEntry(
            name=name,
            hf_id=entry.hf_id,
            model_store_agent=entry.model_store_agent,
            model_store_version=entry.model_store_version,
            variant_preference=entry.variant_preference,
            quantized_variants=tuple(entry.quantized_variants),
            approx_vram_mb=entry.approx_vram_mb,
            peft_support=entry.peft_support,
            inference_mode=entry.inference_mode,
            vllm_endpoint=entry.vllm_endpoint,
        )


def _load_adapters(result: AgentModelMap, section: AdapterSection, agents: Any) -> None:
    if not isinstance(agents, dict):
        result.issues.append(ManifestIssue(result.file, section, "must be an object"))
        return
    for agent, entries in agents.items():
        if not isinstance(entries, list):
            reason = "must be a list of adapter entries"
            result.issues.append(ManifestIssue(result.file, join_key([section, agent]), reason))
            continue
        for position, raw in enumerate(entries):
            adapter = _load_adapter(result, section, agent, position, raw)
            if adapter is not None:
                result.adapters.append(adapter)


def _load_adapter(
    result: AgentModelMap, section: AdapterSection, agent: str, position: int, raw: Any
) -> AgentAdapter | None:
    prefix = (section, agent, position)
    try:
        entry = _AdapterSchema.model_validate(raw)
    except ValidationError as error:
        result.issues.extend(issues_from_validation(result.file, error, prefix))
        return None
    if entry.base_ref not in result.base_models:
        reason = f"unknown base model {entry.base_ref!r}"
        if entry.base_ref in result.invalid_base_models:
            reason = f"base model {entry.base_ref!r} is invalid (see base_models.{entry.base_ref})"
        result.issues.append(ManifestIssue(result.file, join_key([*prefix, "base_ref"]), reason))
        return None
    return AgentAdapter(
        agent=agent,
        base_ref=entry.base_ref,
        adapter_name=entry.adapter_name,
        adapter_model_store_path=entry.adapter_model_store_path,
        variant_preference=entry.variant_preference,
        section=section,
        position=position,
        inference_mode=entry.inference_mode,
    )
