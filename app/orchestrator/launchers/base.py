"""The launcher contract: start an engine, learn when it ends, stop its whole process group."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol


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


@dataclass(frozen=True)
class ExitCause:
    """Why an engine ended, as what ran it saw it (systemd's unit result, the kernel's cgroup
    counters): the engine itself prints nothing when the kernel kills it for memory.

    `memory_limit` is the limit in force, as an operator reads it ("48 GiB"), None when there
    was none (then the host itself ran out); `evidence` says where the cause was read.
    """

    kind: Literal["oom_kill"]
    memory_limit: str | None
    evidence: str

    def describe(self) -> str:
        """`killed by the kernel's OOM killer at its memory limit of 48 GiB (unit ...)`."""
        if self.memory_limit is None:
            where = "with no memory limit of its own: the host ran out of memory"
        else:
            where = f"at its memory limit of {self.memory_limit}"
        return f"killed by the kernel's OOM killer {where} ({self.evidence})"


_BINARY_UNITS = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def memory_size(count_bytes: int) -> str:
    """A memory limit as an operator writes it: 51539607552 -> `48 GiB`, 1610612736 ->
    `1.50 GiB`, 4096 -> `4 KiB`."""
    for unit, size in _BINARY_UNITS:
        if count_bytes >= size:
            whole, rest = divmod(count_bytes, size)
            return f"{whole} {unit}" if rest == 0 else f"{count_bytes / size:.2f} {unit}"
    return f"{count_bytes} bytes"


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

    async def exit_cause(self, handle: EngineHandle) -> ExitCause | None:
        """Asked once the engine's main process has ended: what killed it, when the launcher
        can tell (an OOM kill); None when it cannot or nothing did."""
        ...
