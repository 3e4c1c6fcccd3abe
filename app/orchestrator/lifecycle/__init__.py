"""The lifecycle of one model's engine: its contract.

A `Supervisor` per model is the only writer of that model's spec and status. Others talk to it
through `command`, `update` and `wait_for`, and read `spec`, `spec_data()` and `status()`
(snapshots). Its states and their allowed transitions are in `states`; the restart policy is
pure functions in `policy`; what to do after an orchestrator restart is the pure
`adoption.plan_adoption`; a spec edit against a running engine is judged by the pure
`spec_change.judge_spec_change`. Everything outside the process (spawning, signals, health
probes, GPUs, the clock) comes in through `RunContext`, so tests hand in fakes.
"""

from app.orchestrator.lifecycle.context import RunContext
from app.orchestrator.lifecycle.errors import CommandError, CommandResult, ErrorCode
from app.orchestrator.lifecycle.messages import CommandKind
from app.orchestrator.lifecycle.states import (
    AT_REST_STATES,
    ENGINE_STATES,
    STATUS_CODES,
    TRANSITIONS,
    DesiredState,
    ModelState,
)
from app.orchestrator.lifecycle.supervisor import Supervisor

__all__ = [
    "AT_REST_STATES",
    "ENGINE_STATES",
    "STATUS_CODES",
    "TRANSITIONS",
    "CommandError",
    "CommandKind",
    "CommandResult",
    "DesiredState",
    "ErrorCode",
    "ModelState",
    "RunContext",
    "Supervisor",
]
