"""Engine states, their groups and the allowed transitions. No project imports.

    stopped --start--> starting --ready--> running
    starting|running --failure--> failed --backoff elapsed--> starting
    failed --budget spent, or a failure no restart can fix--> degraded
    starting|running|failed|degraded --stop--> stopping --> stopped
    failed|degraded --operator start--> starting

Desired state (what the operator asked: running or stopped) is stored apart from these.
"""

from __future__ import annotations

from enum import StrEnum


class ModelState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    FAILED = "failed"
    DEGRADED = "degraded"


class DesiredState(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"


class FailureKind(StrEnum):
    GPU_OOM = "gpu_oom"
    KV_CACHE_INSUFFICIENT = "kv_cache_insufficient"
    HOST_OOM = "host_oom"
    EXIT = "exit"
    START_TIMEOUT = "start_timeout"
    UNHEALTHY = "unhealthy"
    LAUNCH_ERROR = "launch_error"
    INSUFFICIENT_GPU_MEMORY = "insufficient_gpu_memory"
    GPU_UNAVAILABLE = "gpu_unavailable"
    GPU_MEMORY_LOW = "gpu_memory_low"


OOM_KINDS = frozenset(
    {FailureKind.GPU_OOM, FailureKind.KV_CACHE_INSUFFICIENT, FailureKind.HOST_OOM}
)
# A restart of the same spec cannot fix these: the engine would fail the same way.
DETERMINISTIC_KINDS = frozenset({FailureKind.KV_CACHE_INSUFFICIENT})

# A process exists (or may) for a model in these states.
ENGINE_STATES = frozenset({ModelState.STARTING, ModelState.RUNNING, ModelState.STOPPING})
# No process exists in these.
AT_REST_STATES = frozenset({ModelState.STOPPED, ModelState.FAILED, ModelState.DEGRADED})

TRANSITIONS: dict[ModelState, frozenset[ModelState]] = {
    ModelState.STOPPED: frozenset({ModelState.STARTING, ModelState.FAILED}),
    ModelState.STARTING: frozenset(
        {ModelState.RUNNING, ModelState.FAILED, ModelState.STOPPING, ModelState.DEGRADED}
    ),
    ModelState.RUNNING: frozenset({ModelState.FAILED, ModelState.STOPPING, ModelState.DEGRADED}),
    ModelState.STOPPING: frozenset({ModelState.STOPPED}),
    ModelState.FAILED: frozenset(
        {ModelState.STARTING, ModelState.DEGRADED, ModelState.STOPPED, ModelState.STOPPING}
    ),
    ModelState.DEGRADED: frozenset({ModelState.STARTING, ModelState.STOPPED}),
}

# gpu_orchestrator_vllm_status encoding: the seed's 0-3, then the states it did not have.
STATUS_CODES: dict[ModelState, int] = {
    ModelState.STOPPED: 0,
    ModelState.STARTING: 1,
    ModelState.RUNNING: 2,
    ModelState.DEGRADED: 3,
    ModelState.STOPPING: 4,
    ModelState.FAILED: 5,
}


class TransitionError(Exception):
    def __init__(self, current: ModelState, target: ModelState) -> None:
        super().__init__(f"transition {current} -> {target} is not allowed")
        self.current = current
        self.target = target


def check_transition(current: ModelState, target: ModelState) -> None:
    if target not in TRANSITIONS[current]:
        raise TransitionError(current, target)
