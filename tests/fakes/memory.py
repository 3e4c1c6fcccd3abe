"""In-memory stand-ins for the outside world, handed to the lifecycle through its constructors.

    clock = FakeClock()
    launcher = FakeLauncher()
    launcher.script(LaunchScript(refuse="exec failed"))  # the next launch raises LaunchError
    health = FakeHealth()
    health.set(base_url, healthy=True)

Time moves only when a test says `await clock.advance(seconds)`; engines exist only as records
of `FakeLauncher`, and end only when a test makes them (`engine.exit(1)`). Nothing here sleeps
or spawns, so a lifecycle test takes milliseconds and every interleaving is the test's choice.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from app.orchestrator.launchers.base import (
    EngineHandle,
    EngineRecord,
    ExitCause,
    LaunchError,
    LaunchRequest,
    StopError,
)

EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
LAUNCHER_NAME = "memory"
# Pending callbacks that one woken task may need before it reaches its next await on a future
# (a health probe, a post to an inbox): generous, and still microseconds.
_YIELDS = 20


async def yield_to_loop(times: int = _YIELDS) -> None:
    """Let every ready task run, `times` rounds over."""
    for _ in range(times):
        await asyncio.sleep(0)


# -- the clock -------------------------------------------------------------------------------------
class FakeClock:
    """A Clock whose time moves only in `advance`.

    `sleep` waits until the fake time reaches its deadline. `advance` wakes sleepers in deadline
    order, each at its own deadline, and after each wake awaits `idle` so that the woken task
    (and whatever it set in motion) runs before the clock moves on. `idle` yields to the loop by
    default; a harness that knows more (the supervisors' inboxes) replaces it.
    """

    def __init__(self, start: datetime = EPOCH) -> None:
        self._start = start
        self._elapsed_s = 0.0
        self._order = itertools.count()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self.idle: Callable[[], Awaitable[None]] = yield_to_loop

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._elapsed_s)

    def monotonic(self) -> float:
        return self._elapsed_s

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._elapsed_s + seconds, next(self._order), wake))
        await wake

    def sleepers(self) -> int:
        """How many sleeps are waiting (cancelled ones not counted)."""
        return sum(1 for _deadline, _order, wake in self._sleepers if not wake.done())

    async def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time never goes back")
        target_s = self._elapsed_s + seconds
        await self.idle()  # work already under way arms its sleeps first
        while self._sleepers and self._sleepers[0][0] <= target_s:
            deadline_s, _order, wake = heapq.heappop(self._sleepers)
            if wake.done():
                continue  # its task was cancelled
            self._elapsed_s = max(self._elapsed_s, deadline_s)
            wake.set_result(None)
            await self.idle()
        self._elapsed_s = target_s
        await self.idle()


# -- the health probe ------------------------------------------------------------------------------
class FakeHealth:
    """A HealthProbe answering from a table: per base_url, healthy or not (default not)."""

    def __init__(self, *, default: bool = False) -> None:
        self.default = default
        self._healthy: dict[str, bool] = {}
        self.probes: list[str] = []

    def set(self, base_url: str, *, healthy: bool) -> None:
        self._healthy[base_url] = healthy

    async def healthy(self, base_url: str, *, timeout_s: float) -> bool:
        self.probes.append(base_url)
        return self._healthy.get(base_url, self.default)

    async def aclose(self) -> None:
        return None


# -- the launcher ----------------------------------------------------------------------------------
@dataclass
class LaunchScript:
    """How one launch behaves. `refuse`: LaunchError with this text; `raises`: any other
    exception out of `launch`; `survives_kill`: its processes outlive SIGKILL (stop and
    clear_leftovers raise StopError) until `FakeEngine.let_die`; `children`: processes that
    outlive the main process when it exits; `gate`: `launch` returns only once it is set;
    `exit_cause`: what `exit_cause` says once the engine has ended (an OOM kill)."""

    refuse: str | None = None
    raises: Exception | None = None
    survives_kill: bool = False
    children: int = 0
    gate: asyncio.Event | None = None
    exit_cause: ExitCause | None = None


@dataclass
class FakeEngine:
    """One launched engine: a main process and, maybe, children that outlive it."""

    pid: int
    request: LaunchRequest
    script: LaunchScript
    handle: EngineHandle
    child_pids: list[int] = field(default_factory=list)
    main_alive: bool = True
    exit_code: asyncio.Future[int | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def model_id(self) -> str:
        return self.request.model_id

    @property
    def launch_token(self) -> str:
        return self.request.env.get("GPU_ORCH_LAUNCH_TOKEN", "")

    def pids(self) -> list[int]:
        """Processes of this engine still there."""
        return ([self.pid] if self.main_alive else []) + self.child_pids

    def argv_value(self, flag: str) -> str | None:
        argv = self.request.argv
        return argv[argv.index(flag) + 1] if flag in argv else None

    def write_log(self, lines: Iterable[str]) -> None:
        """Append lines to the engine's log, as the engine would print them."""
        self.request.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.request.log_path.open("a", encoding="utf-8") as log:
            log.writelines(f"{line}\n" for line in lines)

    def exit(self, code: int | None) -> None:
        """The main process ends (a crash, or its last signal); its children stay."""
        self.main_alive = False
        if not self.exit_code.done():
            self.exit_code.set_result(code)

    def kill_all(self, code: int | None) -> None:
        self.child_pids.clear()
        self.exit(code)

    def let_die(self) -> None:
        """Processes that survived SIGKILL are gone at last (the device let go)."""
        self.script.survives_kill = False
        self.kill_all(-9)


class FakeLauncher:
    """A Launcher over in-memory engines. Each launch takes the next queued `LaunchScript` (a
    plain one when none is queued); `calls` records every launch, stop and clear in order."""

    name = LAUNCHER_NAME

    def __init__(self, *, first_pid: int = 4000) -> None:
        self._pids = itertools.count(first_pid)
        self._scripts: list[LaunchScript] = []
        self.attempts: list[LaunchRequest] = []
        self.engines: list[FakeEngine] = []
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    # -- what a test scripts and reads -------------------------------------------------------------
    def script(self, *scripts: LaunchScript) -> None:
        """Queue how the next launches behave, in order."""
        self._scripts.extend(scripts)

    def launched(self, model_id: str) -> list[FakeEngine]:
        return [engine for engine in self.engines if engine.model_id == model_id]

    def latest(self, model_id: str) -> FakeEngine:
        engines = self.launched(model_id)
        assert engines, f"no engine of {model_id} was launched"
        return engines[-1]

    def stops(self) -> list[int]:
        return [pids[0] for kind, pids in self.calls if kind == "stop"]

    def alive(self, model_id: str | None = None) -> list[int]:
        """Every process of every engine still there (of one model, or all)."""
        engines = self.engines if model_id is None else self.launched(model_id)
        return [pid for engine in engines for pid in engine.pids()]

    # -- the Launcher protocol ---------------------------------------------------------------------
    async def launch(self, request: LaunchRequest) -> EngineHandle:
        self.attempts.append(request)
        script = self._scripts.pop(0) if self._scripts else LaunchScript()
        if script.gate is not None:
            await script.gate.wait()
        if script.refuse is not None:
            self.calls.append(("launch_refused", ()))
            raise LaunchError(script.refuse)
        if script.raises is not None:
            self.calls.append(("launch_raised", ()))
            raise script.raises
        pid = next(self._pids)
        handle = EngineHandle(
            pid=pid, create_time=float(pid), launcher=self.name, unit_name=request.unit_name
        )
        engine = FakeEngine(pid=pid, request=request, script=script, handle=handle)
        engine.child_pids = [next(self._pids) for _ in range(script.children)]
        self.engines.append(engine)
        self.calls.append(("launch", (pid,)))
        return handle

    async def wait_exit(self, handle: EngineHandle) -> int | None:
        # Shielded: a watcher cancelled by the supervisor must not cancel the engine's exit.
        return await asyncio.shield(self._engine(handle.pid).exit_code)

    async def stop(self, handle: EngineHandle, *, grace_s: float) -> None:
        engine = self._engine(handle.pid)
        self.calls.append(("stop", (handle.pid,)))
        self._terminate(engine)

    def is_alive(self, handle: EngineHandle) -> bool:
        return self._engine(handle.pid).main_alive

    async def find(self, record: EngineRecord) -> EngineHandle | None:
        for engine in reversed(self.engines):
            if engine.main_alive and _matches(engine, record):
                return engine.handle
        return None

    async def clear_leftovers(self, record: EngineRecord, *, grace_s: float) -> list[int]:
        engines = [engine for engine in self.engines if _matches(engine, record)]
        pids: list[int] = []
        for engine in engines:
            pids += engine.pids()
            self._terminate(engine)
        self.calls.append(("clear_leftovers", tuple(pids)))
        return pids

    async def exit_cause(self, handle: EngineHandle) -> ExitCause | None:
        """None unless the engine's script names a cause."""
        return self._engine(handle.pid).script.exit_cause

    # -- inside ------------------------------------------------------------------------------------
    def _engine(self, pid: int) -> FakeEngine:
        for engine in self.engines:
            if engine.pid == pid:
                return engine
        raise AssertionError(f"no engine with pid {pid} was launched")

    def _terminate(self, engine: FakeEngine) -> None:
        if engine.script.survives_kill and engine.pids():
            raise StopError(f"pids {engine.pids()} survived SIGKILL", engine.pids())
        engine.kill_all(-15)


def _matches(engine: FakeEngine, record: EngineRecord) -> bool:
    same_pid = record.pid == engine.pid and record.create_time == engine.handle.create_time
    same_run = record.launch_token is not None and record.launch_token == engine.launch_token
    return same_pid or same_run


class FakeSleep:
    """vLLM's sleep mode in memory: which engines (by base URL) sleep, and every call made."""

    def __init__(self) -> None:
        self.asleep: dict[str, int] = {}
        self.calls: list[tuple[str, str]] = []
        self.refuse: str | None = None

    async def sleep(self, base_url: str, level: int) -> str | None:
        self.calls.append(("sleep", base_url))
        if self.refuse is not None:
            return self.refuse
        self.asleep[base_url] = level
        return None

    async def wake(self, base_url: str, level: int) -> str | None:
        self.calls.append(("wake", base_url))
        self.asleep.pop(base_url, None)
        return None

    async def aclose(self) -> None:
        return None
