"""The in-memory lifecycle tier: the real supervisors, store (SQLite on a temporary file, or
the run's PostgreSQL database on --database=postgresql), allocators and orchestrator, with the
clock, the launcher and the health probe replaced by the fakes of tests/fakes/memory.py, all
passed in through RunContext.

    async with memory_world(tmp_path) as world:
        await world.add("m")
        await world.run("m")                 # start, answer /health, RUNNING
        world.launcher.latest("m").exit(1)   # the engine crashes
        await world.settle()                 # every supervisor has handled what it was told
        assert world.status("m").state == "failed"

Nothing waits on real time: `settle` returns once every supervisor's inbox is empty and each
has answered a no-op message posted after everything else, and the clock moves only in
`world.advance`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.orchestrator.cluster.gpus import published_gpus
from app.orchestrator.cluster.membership import NodeMembership
from app.orchestrator.cluster.node import ClusterNode
from app.orchestrator.gpu.headroom import GpuAllocator, GpuHold
from app.orchestrator.gpu.simulated import SimulatedGpuProbe
from app.orchestrator.lifecycle import (
    CommandKind,
    CommandResult,
    ModelState,
    RunContext,
    Supervisor,
)
from app.orchestrator.lifecycle.messages import Adopt
from app.orchestrator.logwatch import LogDirWatcher
from app.orchestrator.metrics import Metrics
from app.orchestrator.orchestrator import Orchestrator
from app.orchestrator.ports import PortAllocator
from app.orchestrator.registry import Registry
from app.orchestrator.resolver import ModelResolver
from app.orchestrator.spec import ModelSpec, RestartPolicy
from app.settings import Settings, load_settings
from app.store.db import make_engine, upgrade_to_head
from app.store.tables import EventRow, StatusRow
from tests.fakes.memory import FakeClock, FakeHealth, FakeLauncher, FakeSleep, yield_to_loop
from tests.pg_server import database_url_for

GPU_MIB = 81920
# Readiness is polled at 0.5 s, then at most 1 s: advancing the clock by READY_POLL_S lets at
# least one poll run.
READY_POLL_S = 1.0
SUPERVISOR_LOGGER = "app.orchestrator.lifecycle.supervisor"
_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "oom"


def fixture_log(name: str) -> list[str]:
    """The lines of a captured engine log under tests/fixtures/oom/."""
    return (_FIXTURES / name).read_text(encoding="utf-8").splitlines()


class WatchedPorts(PortAllocator):
    """The real port allocator, also telling which model holds which port (PortAllocator keeps
    that to itself). `acquire` drops the model's earlier port before it looks for one."""

    def __init__(self, host: str, start: int, end: int) -> None:
        super().__init__(host, start, end)
        self.held: dict[str, int] = {}

    def hold(self, model_id: str, port: int) -> None:
        super().hold(model_id, port)
        self.held[model_id] = port

    def release(self, model_id: str) -> None:
        super().release(model_id)
        self.held.pop(model_id, None)

    def acquire(self, model_id: str, wanted: int | None) -> int:
        self.held.pop(model_id, None)
        port = super().acquire(model_id, wanted)
        self.held[model_id] = port
        return port


class _HandlerErrors(logging.Handler):
    """Collects the exceptions a supervisor's message handler raised (it logs and goes on)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info is not None:
            self.records.append(record)


@dataclass
class MemoryWorld:
    ctx: RunContext
    clock: FakeClock
    launcher: FakeLauncher
    health: FakeHealth
    gpus: SimulatedGpuProbe
    ports: WatchedPorts
    orchestrator: Orchestrator
    _errors: _HandlerErrors
    _adopted: dict[str, tuple[Supervisor, asyncio.Task[None]]] = field(default_factory=dict)

    # -- specs and models --------------------------------------------------------------------------
    def spec(self, model_id: str = "m", **fields: Any) -> ModelSpec:
        """A small spec (30% of a GPU, restarts after 10 s, 20 s, ...) with `fields` changed."""
        values: dict[str, Any] = {
            "id": model_id,
            "model": "/models/tiny",
            "gpu_memory_util": 0.3,
            "restart_policy": RestartPolicy(backoff_initial_s=10.0, backoff_max_s=300.0),
        }
        values.update(fields)
        return ModelSpec(**values)

    async def add(self, model_id: str = "m", **fields: Any) -> Supervisor:
        await self.orchestrator.create_model(self.spec(model_id, **fields))
        return self.supervisor(model_id)

    def supervisor(self, model_id: str) -> Supervisor:
        adopted = self._adopted.get(model_id)
        if adopted is not None:
            return adopted[0]
        return self.orchestrator.supervisors[model_id]

    async def recorded(self, spec: ModelSpec, **status_fields: Any) -> StatusRow:
        """A model as a previous orchestrator left it in the store (no supervisor yet)."""
        status = await self.ctx.registry.create(spec, source="test")
        await self.orchestrator.cluster.leases.acquire(spec.id)  # the node's, as before
        for name, value in status_fields.items():
            setattr(status, name, value)
        self.ctx.registry.save_status(status)
        await self.ctx.registry.flush()
        return status

    async def adopt(self, spec: ModelSpec, status: StatusRow) -> Supervisor:
        """A supervisor picking up a recorded model, as after an orchestrator restart."""
        supervisor = Supervisor(spec, status, self.ctx)
        task = asyncio.create_task(supervisor.serve(), name=f"adopted-{spec.id}")
        self._adopted[spec.id] = (supervisor, task)
        supervisor.post(Adopt())
        await self.settle()
        return supervisor

    # -- driving -----------------------------------------------------------------------------------
    async def command(
        self, model_id: str, kind: CommandKind, *, force: bool = False
    ) -> CommandResult:
        result = await self.supervisor(model_id).command(kind, force=force)
        await self.settle()
        return result

    async def start(self, model_id: str = "m") -> CommandResult:
        return await self.command(model_id, CommandKind.START)

    async def ready(self, model_id: str = "m") -> None:
        """The current engine answers /health from now on, and a readiness poll sees it."""
        self.health.set(self.base_url(model_id), healthy=True)
        await self.advance(READY_POLL_S)

    async def run(self, model_id: str = "m") -> None:
        result = await self.start(model_id)
        assert result.error is None, result.error
        await self.ready(model_id)
        assert self.state(model_id) == ModelState.RUNNING, self.status(model_id)

    async def crash(self, model_id: str = "m", code: int = 1) -> None:
        self.launcher.latest(model_id).exit(code)
        await self.settle()

    async def advance(self, seconds: float) -> None:
        await self.clock.advance(seconds)

    async def settle(self) -> None:
        """Return once every live supervisor is idle: its inbox empty after the ready tasks ran,
        and a no-op message (an unchanged spec) posted behind everything else answered."""
        for _round in range(200):
            await yield_to_loop()
            live = self._live()
            quiet = all(supervisor.inbox.empty() for supervisor in live)
            for supervisor in live:
                await supervisor.update(supervisor.spec, source="settle", running_policy="flag")
            await yield_to_loop()
            if quiet and all(supervisor.inbox.empty() for supervisor in self._live()):
                return
        raise AssertionError("the supervisors never went idle")

    def _live(self) -> list[Supervisor]:
        supervisors = list(self.orchestrator.supervisors.values())
        supervisors += [supervisor for supervisor, _task in self._adopted.values()]
        return [supervisor for supervisor in supervisors if not supervisor.closed]

    # -- reading -----------------------------------------------------------------------------------
    def status(self, model_id: str = "m") -> StatusRow:
        return self.supervisor(model_id).status()

    def state(self, model_id: str = "m") -> ModelState:
        return ModelState(self.status(model_id).state)

    def base_url(self, model_id: str = "m") -> str:
        port = self.status(model_id).port
        assert port is not None, f"{model_id} has no port"
        return self.ctx.base_url(port)

    async def stored_status(self, model_id: str = "m") -> StatusRow | None:
        await self.ctx.registry.flush()
        return await asyncio.to_thread(self.ctx.registry.status, model_id)

    async def events(self, model_id: str = "m", kind: str | None = None) -> list[EventRow]:
        """The model's events in the store, oldest first; of one kind if given."""
        await self.ctx.registry.flush()
        events = await asyncio.to_thread(self.ctx.registry.events, model_id, limit=100_000)
        return [event for event in events if kind is None or event.kind == kind]

    async def transitions(self, model_id: str = "m") -> list[tuple[str, str]]:
        return [
            (str(event.from_state), str(event.to_state))
            for event in await self.events(model_id, "transition")
        ]

    def holds(self, model_id: str = "m") -> list[GpuHold]:
        return [hold for hold in self.ctx.allocator.holds() if hold.model_id == model_id]

    def holds_nothing(self, model_id: str = "m") -> bool:
        return not self.holds(model_id) and model_id not in self.ports.held

    def handler_errors(self) -> list[logging.LogRecord]:
        """Exceptions raised by supervisors' message handlers so far; taking them clears them."""
        records, self._errors.records = self._errors.records, []
        return records

    # -- the end -----------------------------------------------------------------------------------
    async def close(self) -> None:
        await self.orchestrator.shutdown()
        for supervisor, task in self._adopted.values():
            await supervisor.close()
            task.cancel()
        await asyncio.gather(
            *(task for _sup, task in self._adopted.values()), return_exceptions=True
        )
        await self.ctx.registry.flush()
        self.ctx.registry.close()
        self.ctx.registry.engine.dispose()


def memory_settings(tmp_path: Path, **overrides: Any) -> Settings:
    port_base = 30000 + (os.getpid() % 200) * 50
    values: dict[str, Any] = {
        "state_dir": tmp_path / "state",
        "config_dir": tmp_path / "config",
        "gpu_backend": "simulated",
        "simulated_gpus": [GPU_MIB],
        "launcher": "subprocess",
        "port_range_start": port_base,
        "port_range_end": port_base + 49,
        "start_timeout_s": 60.0,
        "stop_grace_s": 5.0,
        "readiness_interval_min_s": 0.5,
        "readiness_interval_max_s": READY_POLL_S,
        "health_interval_s": 10.0,
        "health_failures": 3,
    }
    values.update(overrides)
    if "database_url" not in overrides:
        values["database_url"] = database_url_for(Path(values["state_dir"]))
    return load_settings(**values)


@asynccontextmanager
async def memory_world(
    tmp_path: Path,
    *,
    gpus_mib: tuple[int, ...] = (GPU_MIB,),
    node: str | None = None,
    **settings: Any,
) -> AsyncIterator[MemoryWorld]:
    """Build the parts as wiring.build_services does, the outside world replaced by fakes.
    With `node` (and a shared `database_url`), the world is that node of a cluster: registered,
    its heartbeat trusted by the fake clock and renewed only when the test says so
    (`world.orchestrator.cluster.membership.beat_once()`)."""
    config = memory_settings(tmp_path, simulated_gpus=list(gpus_mib), **settings)
    config.resolved_log_dir.mkdir(parents=True, exist_ok=True)
    clock = FakeClock()
    engine = make_engine(config.resolved_database_url)
    upgrade_to_head(engine)
    registry = Registry(engine, clock)
    gpus = SimulatedGpuProbe(gpus_mib)
    ports = WatchedPorts(config.engine_host, config.port_range_start, config.port_range_end)
    launcher = FakeLauncher()
    health = FakeHealth()
    ctx = RunContext(
        settings=config,
        registry=registry,
        launcher=launcher,
        allocator=GpuAllocator(gpus, margin_mib=config.headroom_margin_mib),
        gpu_probe=gpus,
        health=health,
        clock=clock,
        metrics=Metrics(),
        ports=ports,
        log_watcher=LogDirWatcher(config.resolved_log_dir),
        resolver=ModelResolver(config.model_store_root),
        parent_env={},
        sleep=FakeSleep(),
    )
    errors = _HandlerErrors()
    logging.getLogger(SUPERVISOR_LOGGER).addHandler(errors)
    world = MemoryWorld(
        ctx=ctx,
        clock=clock,
        launcher=launcher,
        health=health,
        gpus=gpus,
        ports=ports,
        orchestrator=Orchestrator(ctx, _cluster_node(ctx, node, clock) if node else None),
        _errors=errors,
    )
    clock.idle = world.settle
    try:
        yield world
        unexpected = world.handler_errors()
        assert not unexpected, f"supervisor handlers raised: {[r.getMessage() for r in unexpected]}"
    finally:
        logging.getLogger(SUPERVISOR_LOGGER).removeHandler(errors)
        await world.close()


def _cluster_node(ctx: RunContext, name: str, clock: FakeClock) -> ClusterNode:
    settings = ctx.settings.model_copy(update={"node_name": name})
    ctx.settings = settings
    membership = NodeMembership(
        ctx.registry.engine,
        settings,
        gpus=lambda: published_gpus(ctx.gpu_probe, ctx.allocator),
        monotonic=clock.monotonic,
    )
    membership.register()
    return ClusterNode.member(ctx.registry, settings, membership)
