"""The launcher contract: start an engine, learn when it ends, stop its whole process group."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class LaunchError(Exception):
    """The engine could not be started at all (exec failed, log not writable, unit refused)."""


class StopError(Exception):
    """Processes of an engine survived SIGKILL; `pids` names them."""

    def __init__(self, message: str, pids: list[int]) -> None:
        super().__init__(message)
        self.pids = pids


@dataclass(frozen=True)
class LaunchRequest:
    model_id: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    unit_name: str
    memory_max: str | None = None
    cpu_quota: str | None = None


@dataclass(frozen=True)
class EngineHandle:
    """Identifies a running engine across orchestrator restarts (pid + its start time)."""

    pid: int
    create_time: float
    launcher: str
    unit_name: str | None = None
    limits_enforced: bool = False
    notes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineRecord:
    """What the store remembers of an engine run: enough to find it after an orchestrator
    restart, or to find what is left of it (children that outlived their main process)."""

    pid: int | None
    create_time: float | None
    launch_token: str | None
    launcher: str | None = None
    unit_name: str | None = None
    limits_enforced: bool = False


class Launcher(Protocol):
    """Every process and unit the orchestrator touches goes through here; tests hand in an
    in-memory one (tests/fakes/memory.py)."""

    name: str

    async def launch(self, request: LaunchRequest) -> EngineHandle: ...

    async def wait_exit(self, handle: EngineHandle) -> int | None:
        """Return when the engine's main process has ended: its exit code, None if unknown."""
        ...

    async def stop(self, handle: EngineHandle, *, grace_s: float) -> None:
        """SIGTERM the engine's group, SIGKILL what is left after grace_s; return once none is."""
        ...

    def is_alive(self, handle: EngineHandle) -> bool: ...

    async def find(self, record: EngineRecord) -> EngineHandle | None:
        """The recorded engine's main process if it still lives: the recorded pid with its start
        time (a reused pid is a stranger), else a group leader carrying the run's launch token
        (the orchestrator died between spawn and record)."""
        ...

    async def clear_leftovers(self, record: EngineRecord, *, grace_s: float) -> list[int]:
        """Terminate whatever is left of a recorded run (its group, its unit, processes carrying
        its launch token) and return their pids; StopError when some survive SIGKILL."""
        ...
