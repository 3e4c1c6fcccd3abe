"""What a model's supervisor is told: operator commands, spec changes, and what its watchers
observed.

Observations carry the generation of the engine run they are about; the supervisor drops those of
runs that have already ended, so a late event can never act on a newer engine.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum

from app.orchestrator.lifecycle.errors import CommandResult
from app.orchestrator.spec import ModelSpec


class CommandKind(StrEnum):
    START = "start"
    STOP = "stop"
    RESTART = "restart"
    DELETE = "delete"
    # Stop the engine for an orchestrator shutdown, keeping desired=running so the next
    # orchestrator start brings it back.
    SHUTDOWN = "shutdown"
    # Free the engine's GPU memory (idle unload, eviction): sleep with a sleep_level, else
    # stop with desired stopped; the reason shows in the status. Refused while it is busy.
    UNLOAD = "unload"


@dataclass
class Command:
    kind: CommandKind
    force: bool = False
    # Answer once the command's work is done (a stop: the engine is gone), not as it begins.
    wait: bool = False
    # Why (an unload: "idle", "evicted for m2"), shown with the desired state.
    reason: str = ""
    reply: asyncio.Future[CommandResult] | None = None


@dataclass
class UpdateSpec:
    """Replace the spec. `running_policy` says what a change an engine reads only at launch does
    while one runs: "refuse" (409 model_running, the API's rule) or "flag" (restart_needed, the
    manifests' rule)."""

    spec: ModelSpec
    source: str
    running_policy: str = "refuse"
    reply: asyncio.Future[CommandResult] | None = None


@dataclass
class AdapterChange:
    """Add (`path` given) or remove (`path` None) the adapter `name`, live if the engine runs."""

    name: str
    path: str | None
    source: str = "api"
    reply: asyncio.Future[CommandResult] | None = None


@dataclass(frozen=True)
class Adopt:
    """Sent once at start-up: look at what the store recorded and pick it up. `done` is set once
    the supervisor has (the service is ready when every model's is)."""

    done: asyncio.Event | None = None


@dataclass(frozen=True)
class EngineReady:
    generation: int


@dataclass(frozen=True)
class EngineExited:
    generation: int
    code: int | None


@dataclass(frozen=True)
class StartTimedOut:
    generation: int


@dataclass(frozen=True)
class HealthFailed:
    generation: int
    detail: str


@dataclass(frozen=True)
class BackoffElapsed:
    epoch: int


@dataclass(frozen=True)
class StableElapsed:
    generation: int


@dataclass(frozen=True)
class LogGrew:
    pass


@dataclass(frozen=True)
class IdleCheck:
    """Time to look whether the running engine has been idle for its idle timeout."""

    generation: int


Observation = (
    EngineReady
    | EngineExited
    | StartTimedOut
    | HealthFailed
    | BackoffElapsed
    | StableElapsed
    | LogGrew
    | IdleCheck
)
Message = Command | UpdateSpec | AdapterChange | Adopt | Observation
