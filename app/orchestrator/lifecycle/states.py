"""Engine states, their groups and the allowed transitions. No project imports.

    stopped --start--> starting --ready--> running
    starting|running --failure--> failed --backoff elapsed--> starting
    stopped --a start that is not an operator's (adoption, on demand) refused--> failed
    failed --budget spent, or a failure no restart can fix--> degraded
    starting|running --stop--> stopping --> stopped
    stopping --the engine survived SIGKILL--> failed
    failed --stop, leftovers of the engine to terminate--> stopping
    failed|degraded --stop, nothing left--> stopped
    failed|degraded --operator start--> starting
    running --idle or evicted, with sleep_level--> sleeping --woken--> running
    sleeping --exit--> failed;  sleeping --stop--> stopping

Desired state (what the operator asked: running or stopped) is stored apart from these.
Every pair in TRANSITIONS is produced by some code path; tests/lifecycle/test_transition_table.py
drives them all and fails when the table allows a pair nothing produces.
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
    # vLLM's sleep mode: the process lives, its GPU memory is released (idle unload, eviction).
    SLEEPING = "sleeping"


class DesiredState(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"


# A process exists (or may) for a model in these states.
ENGINE_STATES = frozenset(
    {ModelState.STARTING, ModelState.RUNNING, ModelState.STOPPING, ModelState.SLEEPING}
)
# No process exists in these (unless a stop failed: then the status still names it).
AT_REST_STATES = frozenset({ModelState.STOPPED, ModelState.FAILED, ModelState.DEGRADED})

TRANSITIONS: dict[ModelState, frozenset[ModelState]] = {
    ModelState.STOPPED: frozenset({ModelState.STARTING, ModelState.FAILED}),
    ModelState.STARTING: frozenset({ModelState.RUNNING, ModelState.FAILED, ModelState.STOPPING}),
    ModelState.RUNNING: frozenset({ModelState.FAILED, ModelState.STOPPING, ModelState.SLEEPING}),
    ModelState.SLEEPING: frozenset({ModelState.RUNNING, ModelState.FAILED, ModelState.STOPPING}),
    ModelState.STOPPING: frozenset({ModelState.STOPPED, ModelState.FAILED}),
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
    ModelState.SLEEPING: 6,
}


class TransitionError(Exception):
    def __init__(self, current: ModelState, target: ModelState) -> None:
        super().__init__(f"transition {current} -> {target} is not allowed")
        self.current = current
        self.target = target


def check_transition(current: ModelState, target: ModelState) -> None:
    if target not in TRANSITIONS[current]:
        raise TransitionError(current, target)
