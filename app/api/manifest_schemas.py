"""Response schemas of /manifests and /agents, and their conversion from the sync's report."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.orchestrator.clock import iso_ms
from app.orchestrator.manifest_sync import AgentServing, ManifestReport, SyncReport
from app.orchestrator.manifests import AdapterResolution, ManifestIssue


class IssuePublic(BaseModel):
    """One problem: the file, the dotted key inside it (empty: the whole file), what is wrong."""

    model_config = ConfigDict(extra="forbid")

    file: str
    key: str
    reason: str


class AdapterPublic(BaseModel):
    """One agent's adapter for a manifest; `found` means attached to the manifest's spec."""

    model_config = ConfigDict(extra="forbid")

    agent: str
    section: str = Field(description="The map section: agents or vllm_agents.")
    adapter_name: str
    path: str | None
    found: bool
    error: str | None


class ManifestPublic(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(description="The spec's id; null when no spec could be built.")
    file: str
    base_model: str = Field(description="The manifest's base_model (an AGENT_MODEL_MAP key).")
    action: Literal["created", "updated", "updated (restart needed)", "unchanged", "error"]
    model_source: Literal["model_store", "hf_id", "unresolved"]
    model_source_note: str
    adapters: list[AdapterPublic]
    issues: list[IssuePublic]


class SyncReportPublic(BaseModel):
    """The last sync of the config directory (at start-up or by POST /manifests/reload)."""

    model_config = ConfigDict(extra="forbid")

    config_dir: str
    model_store_root: str | None
    loaded_at: str = Field(description="ISO-8601 UTC with milliseconds.")
    manifests: list[ManifestPublic]
    issues: list[IssuePublic] = Field(description="Every issue, map- and directory-level first.")


class AgentPublic(BaseModel):
    """Where an agent's adapter answers. Simplest: the gateway, `gateway_url` (this service's
    own /v1, whatever the engine's state: it starts the model on demand) with
    "model": `served_model_name`; or the engine itself at `base_url` + /v1/... while it runs.

    `served_model_name` is null unless the adapter is attached to `model_id`'s spec (`found`);
    `base_url` is null unless that model is running. With `restart_needed` the running engine
    still serves the spec it was started with, which may lack an adapter attached since.
    """

    model_config = ConfigDict(extra="forbid")

    agent: str
    section: str = Field(description="The map section: agents or vllm_agents.")
    base_model: str
    model_id: str | None
    adapter_name: str
    adapter_path: str | None
    found: bool
    error: str | None
    served_model_name: str | None
    base_url: str | None
    state: str | None
    restart_needed: bool
    gateway_url: str | None = Field(
        default=None,
        description="This service's OpenAI endpoint: send the agent's requests here with "
        '"model": served_model_name.',
    )


def issue_public(issue: ManifestIssue) -> IssuePublic:
    return IssuePublic(file=issue.file, key=issue.key, reason=issue.reason)


def adapter_public(adapter: AdapterResolution) -> AdapterPublic:
    return AdapterPublic(
        agent=adapter.agent,
        section=adapter.section,
        adapter_name=adapter.adapter_name,
        path=adapter.path,
        found=adapter.found,
        error=adapter.error,
    )


def manifest_public(manifest: ManifestReport) -> ManifestPublic:
    return ManifestPublic(
        id=manifest.id,
        file=manifest.file,
        base_model=manifest.base_model,
        action=manifest.action,
        model_source=manifest.model_source,
        model_source_note=manifest.model_source_note,
        adapters=[adapter_public(adapter) for adapter in manifest.adapters],
        issues=[issue_public(issue) for issue in manifest.issues],
    )


def report_public(report: SyncReport) -> SyncReportPublic:
    return SyncReportPublic(
        config_dir=report.config_dir,
        model_store_root=report.model_store_root,
        loaded_at=iso_ms(report.loaded_at),
        manifests=[manifest_public(manifest) for manifest in report.manifests],
        issues=[issue_public(issue) for issue in report.issues],
    )


def agent_public(
    serving: AgentServing,
    *,
    state: str | None,
    base_url: str | None,
    restart_needed: bool,
    gateway_url: str | None = None,
) -> AgentPublic:
    """`base_url` is given only while the engine is running: a starting one refuses requests."""
    return AgentPublic(
        agent=serving.agent,
        section=serving.section,
        base_model=serving.base_model,
        model_id=serving.model_id,
        adapter_name=serving.adapter_name,
        adapter_path=serving.adapter_path,
        found=serving.found,
        error=serving.error,
        served_model_name=serving.adapter_name if serving.found else None,
        base_url=base_url if state == "running" else None,
        state=state,
        restart_needed=restart_needed,
        gateway_url=gateway_url if serving.found else None,
    )
