"""The launcher contract: start an engine, learn when it ends, stop its whole process group."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class LaunchError(Exception):
    """The engine could not be started at all (exec failed, log not writable, unit refused)."""


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


class Launcher(Protocol):
    name: str

    async def launch(self, request: LaunchRequest) -> EngineHandle: ...

    async def wait_exit(self, handle: EngineHandle) -> int | None:
        """Return when the engine's main process has ended: its exit code, None if unknown."""
        ...

    async def stop(self, handle: EngineHandle, *, grace_s: float) -> None:
        """SIGTERM the engine's group, SIGKILL what is left after grace_s; return once none is."""
        ...

    def is_alive(self, handle: EngineHandle) -> bool: ...
