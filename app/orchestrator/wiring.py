"""Building the orchestrator from settings; every outside-world part can be handed in instead."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from app.orchestrator.clock import Clock, SystemClock
from app.orchestrator.cluster.gpus import published_gpus
from app.orchestrator.cluster.membership import NodeMembership
from app.orchestrator.cluster.node import ClusterNode
from app.orchestrator.cluster.stale import CLUSTER_ENV, NODE_ENV
from app.orchestrator.gateway import Gateway, UpstreamPool
from app.orchestrator.gpu.headroom import GpuAllocator
from app.orchestrator.gpu.monitor import GpuMonitor, WebhookSink
from app.orchestrator.gpu.nvml import NvmlProbe
from app.orchestrator.gpu.probe import GpuProbe
from app.orchestrator.gpu.simulated import SimulatedGpuProbe
from app.orchestrator.health import HealthProbe, HttpHealthProbe
from app.orchestrator.launchers.base import Launcher
from app.orchestrator.launchers.subprocess_launcher import SubprocessLauncher
from app.orchestrator.launchers.systemd_launcher import SystemdLauncher, user_manager_answers
from app.orchestrator.lifecycle import RunContext
from app.orchestrator.logwatch import LogDirWatcher
from app.orchestrator.metrics import Metrics
from app.orchestrator.orchestrator import Orchestrator
from app.orchestrator.ports import PortAllocator
from app.orchestrator.registry import Registry
from app.orchestrator.resolver import ModelResolver
from app.settings import GpuBackend, LauncherChoice, Settings
from app.store.db import is_shared, make_engine, upgrade_to_head

logger = logging.getLogger(__name__)


@dataclass
class Overrides:
    """Parts a test (or an embedding program) supplies instead of the real ones."""

    launcher: Launcher | None = None
    health: HealthProbe | None = None
    gpu_probe: GpuProbe | None = None
    clock: Clock | None = None
    # This node's membership, already registered (`serve` registers it before the app runs).
    membership: NodeMembership | None = None


@dataclass
class Services:
    orchestrator: Orchestrator
    monitor: GpuMonitor
    metrics: Metrics
    registry: Registry
    gateway: Gateway
    upstream: UpstreamPool


def make_gpu_probe(settings: Settings) -> GpuProbe:
    if settings.gpu_backend is GpuBackend.SIMULATED:
        return SimulatedGpuProbe(settings.simulated_gpus)
    return NvmlProbe()


async def choose_launcher(settings: Settings) -> Launcher:
    if settings.launcher is LauncherChoice.SUBPROCESS:
        return SubprocessLauncher()
    if settings.launcher is LauncherChoice.SYSTEMD or await user_manager_answers():
        return SystemdLauncher(stop_timeout_s=settings.stop_grace_s)
    logger.info("no systemd user manager answers: engines run as subprocesses")
    return SubprocessLauncher()


def register_node(settings: Settings) -> NodeMembership:
    """Migrate the shared database and take this node's name in it (NodeNameHeldError when a
    live orchestrator has it). Blocking."""
    engine = make_engine(settings.resolved_database_url)
    upgrade_to_head(engine)
    membership = NodeMembership(engine, settings, gpus=list)
    membership.register()
    return membership


async def build_services(settings: Settings, overrides: Overrides | None = None) -> Services:
    overrides = overrides or Overrides()
    clock = overrides.clock or SystemClock()
    membership = overrides.membership
    if membership is None and is_shared(settings.resolved_database_url):
        membership = await asyncio.to_thread(register_node, settings)
    if membership is not None:
        # Engines carry the cluster and the node, so a node finds its own stale ones.
        cluster_env = {CLUSTER_ENV: membership.cluster_id, NODE_ENV: settings.node_name}
        settings = settings.model_copy(
            update={"engine_env": {**settings.engine_env, **cluster_env}}
        )
    engine = make_engine(settings.resolved_database_url)
    upgrade_to_head(engine)
    registry = Registry(engine, clock)
    metrics = Metrics()
    probe = overrides.gpu_probe or make_gpu_probe(settings)
    monitor_ref: list[GpuMonitor] = []
    allocator = GpuAllocator(
        probe,
        margin_mib=settings.headroom_margin_mib,
        low_memory=lambda: monitor_ref[0].low_memory_gpus() if monitor_ref else frozenset(),
    )
    sinks = []
    if settings.alert_webhook_url:
        sinks.append(
            WebhookSink(settings.alert_webhook_url, timeout_s=settings.alert_webhook_timeout_s)
        )
    monitor = GpuMonitor(
        probe,
        metrics=metrics,
        clock=clock,
        interval_s=settings.monitor_interval_s,
        threshold_mib=settings.low_memory_threshold_mib,
        threshold_pct=settings.low_memory_threshold_pct,
        samples=settings.low_memory_samples,
        sinks=sinks,
        on_event=lambda kind, data: registry.append_event(None, kind, data=data),
        allocator=allocator,
    )
    monitor_ref.append(monitor)
    log_dir = settings.resolved_log_dir
    ctx = RunContext(
        settings=settings,
        registry=registry,
        launcher=overrides.launcher or await choose_launcher(settings),
        allocator=allocator,
        gpu_probe=probe,
        health=overrides.health or HttpHealthProbe(),
        clock=clock,
        metrics=metrics,
        ports=PortAllocator(
            settings.engine_host, settings.port_range_start, settings.port_range_end
        ),
        log_watcher=LogDirWatcher(log_dir),
        resolver=ModelResolver(settings.model_store_root),
    )
    if membership is None:
        cluster = ClusterNode.alone(registry, settings)
    else:
        membership.gpus = lambda: published_gpus(probe, allocator)
        allocator.on_change = membership.publish_soon
        cluster = ClusterNode.member(registry, settings, membership)
    orchestrator = Orchestrator(ctx, cluster)
    return Services(
        orchestrator=orchestrator,
        monitor=monitor,
        metrics=metrics,
        registry=registry,
        gateway=Gateway(orchestrator, settings, metrics, clock),
        upstream=UpstreamPool(),
    )
