"""What a command answers: whether it changed anything, or why it was refused."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from app.store.tables import StatusRow


class ErrorCode(StrEnum):
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    MODEL_RUNNING = "model_running"
    INSUFFICIENT_GPU_MEMORY = "insufficient_gpu_memory"
    GPU_UNAVAILABLE = "gpu_unavailable"
    GPU_MEMORY_LOW = "gpu_memory_low"
    PORT_UNAVAILABLE = "port_unavailable"
    ADAPTER_INVALID = "adapter_invalid"
    ADAPTER_NAME_CONFLICT = "adapter_name_conflict"
    ADAPTER_NOT_FOUND = "adapter_not_found"
    RESTART_NEEDED = "restart_needed"
    MODEL_BUSY = "model_busy"
    SLEEP_FAILED = "sleep_failed"
    LAUNCH_FAILED = "launch_failed"
    STOP_FAILED = "stop_failed"


@dataclass(frozen=True)
class CommandError:
    code: ErrorCode
    message: str
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CommandResult:
    changed: bool
    error: CommandError | None = None
    # A spec change accepted while an engine runs that the engine reads only at launch.
    restart_needed: bool = False
    # The committed status when the answer was given (what the caller is told it is).
    status: StatusRow | None = None
