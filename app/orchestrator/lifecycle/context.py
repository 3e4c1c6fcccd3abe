"""What every supervisor shares: the outside world, each part behind its interface."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from app.orchestrator.activity import ActivityBoard
from app.orchestrator.adapter_control import AdapterControl, HttpAdapterControl
from app.orchestrator.clock import Clock
from app.orchestrator.gpu.headroom import GpuAllocator
from app.orchestrator.gpu.probe import GpuProbe
from app.orchestrator.health import HealthProbe
from app.orchestrator.launchers.base import Launcher
from app.orchestrator.logwatch import LogDirWatcher, tail_lines
from app.orchestrator.metrics import Metrics
from app.orchestrator.ports import PortAllocator
from app.orchestrator.registry import Registry
from app.orchestrator.resolver import ModelResolver
from app.orchestrator.sleep_control import HttpSleepControl, SleepControl
from app.settings import Settings


@dataclass
class RunContext:
    settings: Settings
    registry: Registry
    launcher: Launcher
    allocator: GpuAllocator
    gpu_probe: GpuProbe
    health: HealthProbe
    clock: Clock
    metrics: Metrics
    ports: PortAllocator
    log_watcher: LogDirWatcher
    resolver: ModelResolver
    parent_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    adapters: AdapterControl = field(default_factory=HttpAdapterControl)
    sleep: SleepControl = field(default_factory=HttpSleepControl)
    # Requests in flight and the last one's time, per model: the gateway writes them, idle
    # unload and eviction read them.
    activity: ActivityBoard = field(default_factory=ActivityBoard)
    # Whether this node may launch the model's engine now (holds its lease, heartbeat current).
    may_launch: Callable[[str], bool] = field(default=lambda _model_id: True)

    def log_path(self, model_id: str) -> Path:
        return self.settings.resolved_log_dir / f"{model_id}.log"

    def log_tail(self, model_id: str, count: int) -> list[str]:
        return tail_lines(self.log_path(model_id), count)

    def base_url(self, port: int) -> str:
        return f"http://{self.settings.engine_host}:{port}"

    def release(self, model_id: str) -> None:
        """The engine is gone (or never started): free its GPU memory and port."""
        self.allocator.mark_stopped(model_id)
        self.ports.release(model_id)
