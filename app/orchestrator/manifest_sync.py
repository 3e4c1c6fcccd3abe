"""Manifest sync: the config directory's manifests applied to the registry, with a report.

`sync_manifests(orchestrator, settings)` loads `settings.config_dir` against the ModelStore (in a
worker thread: it walks the file system) and hands each resulting spec to
`Orchestrator.sync_model`, which creates or updates it and flags a running model
`restart_needed` rather than restarting it. Nothing here raises for bad content: every problem,
including one the loader or the registry throws, ends up as a ManifestIssue in the SyncReport, so
a broken file can neither stop the service from starting nor hide the manifests next to it.

`ManifestSync` keeps the last report (for GET /manifests and GET /agents) and runs one sync at a
time, so two reloads in flight cannot interleave their updates.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal, cast

from app.orchestrator.manifests import (
    AdapterResolution,
    AgentAdapter,
    ConfigLoad,
    LoadedManifest,
    ManifestIssue,
    load_config,
)
from app.orchestrator.manifests.resolution import ModelSource
from app.orchestrator.orchestrator import Orchestrator
from app.settings import Settings

logger = logging.getLogger(__name__)

SyncAction = Literal["created", "updated", "updated (restart needed)", "unchanged", "error"]


@dataclass(frozen=True)
class ManifestReport:
    """What one manifest file did. `id` is None when no spec could be built from the file;
    `action` is "error" then, or when the registry refused the spec (see `issues`)."""

    id: str | None
    file: str
    base_model: str
    action: SyncAction
    model_source: ModelSource
    model_source_note: str
    adapters: tuple[AdapterResolution, ...]
    issues: tuple[ManifestIssue, ...]


@dataclass(frozen=True)
class AgentServing:
    """Where one adapter of AGENT_MODEL_MAP.json is served after a sync.

    `found` means attached to the spec registered as `model_id`; `adapter_path` is the real
    directory whenever it was resolved; `error` says why the adapter is not served.
    """

    agent: str
    section: str
    base_model: str
    adapter_name: str
    model_id: str | None
    adapter_path: str | None
    found: bool
    error: str | None


@dataclass(frozen=True)
class SyncReport:
    """One sync. `issues` holds every problem: directory- and map-level ones first, then each
    manifest's in file order (each manifest also lists its own)."""

    config_dir: str
    model_store_root: str | None
    loaded_at: datetime
    manifests: tuple[ManifestReport, ...]
    issues: tuple[ManifestIssue, ...]
    agents: tuple[AgentServing, ...]


async def sync_manifests(orchestrator: Orchestrator, settings: Settings) -> SyncReport:
    """Load the config directory and apply every spec it yields; never raises for bad content."""
    config_dir = settings.config_dir
    store_root = settings.model_store_root
    loaded_at = orchestrator.ctx.clock.now()
    try:
        load = await asyncio.to_thread(
            load_config, config_dir, store_root, strict_adapters=settings.strict_adapters
        )
    except Exception as error:  # the loader reports content problems; this is anything else
        logger.exception("loading manifests from %s failed", config_dir)
        load = ConfigLoad((), None, (ManifestIssue(str(config_dir), "", f"load failed: {error}"),))
    reports = [await _apply(orchestrator, manifest) for manifest in load.manifests]
    report = SyncReport(
        config_dir=str(config_dir),
        model_store_root=str(store_root) if store_root is not None else None,
        loaded_at=loaded_at,
        manifests=tuple(reports),
        issues=load.issues + tuple(issue for r in reports for issue in r.issues),
        agents=_agents(load, reports),
    )
    _record(orchestrator, load, report)
    return report


class ManifestSync:
    """The last SyncReport and the way to make a new one; built by `create`, which syncs once."""

    def __init__(self, orchestrator: Orchestrator, settings: Settings, report: SyncReport) -> None:
        self._orchestrator = orchestrator
        self._settings = settings
        self._report = report
        self._lock = asyncio.Lock()

    @classmethod
    async def create(cls, orchestrator: Orchestrator, settings: Settings) -> ManifestSync:
        """Sync once (at start-up), so the first request already sees what the files describe."""
        return cls(orchestrator, settings, await sync_manifests(orchestrator, settings))

    @property
    def last_report(self) -> SyncReport:
        return self._report

    async def reload(self) -> SyncReport:
        """Sync again; waits for a sync already in flight rather than interleaving with it."""
        async with self._lock:
            self._report = await sync_manifests(self._orchestrator, self._settings)
            actions = [manifest.action for manifest in self._report.manifests]
            counts = {action: actions.count(action) for action in sorted(set(actions))}
            self._orchestrator.ctx.registry.append_event(
                None,
                "manifests_reloaded",
                reason=f"{len(actions)} manifests, {len(self._report.issues)} issues",
                data={"actions": counts, "issues": len(self._report.issues)},
            )
            return self._report


async def _apply(orchestrator: Orchestrator, manifest: LoadedManifest) -> ManifestReport:
    spec = manifest.spec
    issues = manifest.issues
    action: SyncAction = "error"
    if spec is not None:
        try:
            result = await orchestrator.sync_model(
                spec, source=f"manifest:{Path(manifest.file).name}"
            )
            action = cast(SyncAction, result)
        except Exception as error:  # a store failure must not stop the other manifests
            logger.exception("applying %s failed", manifest.file)
            issues = (*issues, ManifestIssue(manifest.file, "", f"not applied: {error}"))
    return ManifestReport(
        id=spec.id if spec is not None else None,
        file=manifest.file,
        base_model=manifest.base_model,
        action=action,
        model_source=manifest.model_source,
        model_source_note=manifest.model_source_note,
        adapters=manifest.adapters,
        issues=issues,
    )


def _agents(load: ConfigLoad, reports: list[ManifestReport]) -> tuple[AgentServing, ...]:
    if load.agent_map is None:
        return ()
    adapters = sorted(load.agent_map.adapters, key=lambda adapter: adapter.sort_key)
    return tuple(_serving(adapter, reports) for adapter in adapters)


def _serving(adapter: AgentAdapter, reports: list[ManifestReport]) -> AgentServing:
    on_base = [report for report in reports if report.base_model == adapter.base_ref]
    selected = [
        (report, resolution)
        for report in on_base
        for resolution in report.adapters
        if resolution.key == adapter.key
    ]
    # Two manifests may serve one base model: the first (file order) that attached it wins.
    for report, resolution in selected:
        if report.action != "error" and resolution.found:
            return _answer(adapter, report.id, resolution, None)
    for report, resolution in selected:
        if report.action != "error":
            return _answer(adapter, report.id, resolution, resolution.error)
    if selected:
        report, resolution = selected[0]
        reason = f"{report.file} was not applied (see its issues)"
        return _answer(adapter, None, resolution, reason)
    if on_base:
        files = ", ".join(report.file for report in on_base)
        return _answer(adapter, None, None, f"not selected by adapters.agents in {files}")
    return _answer(adapter, None, None, f"no manifest serves base model {adapter.base_ref!r}")


def _answer(
    adapter: AgentAdapter,
    model_id: str | None,
    resolution: AdapterResolution | None,
    error: str | None,
) -> AgentServing:
    return AgentServing(
        agent=adapter.agent,
        section=adapter.section,
        base_model=adapter.base_ref,
        adapter_name=adapter.adapter_name,
        model_id=model_id,
        adapter_path=resolution.path if resolution is not None else None,
        found=model_id is not None and resolution is not None and resolution.found,
        error=error,
    )


def _record(orchestrator: Orchestrator, load: ConfigLoad, report: SyncReport) -> None:
    """Leave the problems in the event log (and the service log), where operators look later."""
    registry = orchestrator.ctx.registry
    try:
        if load.issues:
            registry.append_event(
                None,
                "manifest_issues",
                reason=f"{len(load.issues)} issue(s) in {report.config_dir}",
                data={"file": report.config_dir, "issues": [asdict(i) for i in load.issues]},
            )
        for manifest in report.manifests:
            if manifest.issues:
                registry.append_event(
                    manifest.id,
                    "manifest_issues",
                    reason=f"{len(manifest.issues)} issue(s) in {manifest.file}",
                    data={
                        "file": manifest.file,
                        "action": manifest.action,
                        "issues": [asdict(issue) for issue in manifest.issues],
                    },
                )
            for adapter in manifest.adapters:
                if not adapter.found:
                    registry.append_event(
                        manifest.id,
                        "adapter_missing",
                        reason=adapter.error or "",
                        data={"file": manifest.file, **asdict(adapter)},
                    )
    except Exception:  # the event log is a record; losing it must not lose the sync
        logger.exception("recording manifest issues failed")
    for issue in report.issues:
        logger.warning("manifest issue: %s", issue)
    logger.info(
        "manifests synced from %s: %s",
        report.config_dir,
        ", ".join(f"{m.file}={m.action}" for m in report.manifests) or "none found",
    )
