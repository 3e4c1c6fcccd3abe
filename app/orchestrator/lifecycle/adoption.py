"""After an orchestrator restart: what to do with each recorded model, as a pure function.

`plan_adoption(facts)` looks at what the store recorded (state, desired state, when the state
began), what the launcher observed (is the recorded engine's main process alive: same pid and
start time, or a group leader carrying the run's launch token) and what the log said while the
orchestrator was away (an OOM of the recorded run), and answers with one plan. The supervisor
carries the plan out; before any plan runs it has already terminated whatever is left of a
recorded engine whose main process died (vLLM's EngineCore and workers outlive the API server),
so nothing new is ever launched beside old processes that still hold GPU memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from app.orchestrator.failures import FailureKind
from app.orchestrator.launchers.base import EngineHandle
from app.orchestrator.lifecycle.states import DesiredState, ModelState


@dataclass(frozen=True)
class AdoptionFacts:
    state: ModelState
    desired: DesiredState
    since: datetime
    now: datetime
    recorded_pid: int | None
    alive: EngineHandle | None
    log_failure: tuple[FailureKind, str] | None
    start_timeout_s: float


@dataclass(frozen=True)
class Watch:
    """The engine lives: pick it up as it was (running, or starting with what is left of its
    start timeout)."""

    handle: EngineHandle
    ready: bool
    remaining_s: float


@dataclass(frozen=True)
class FailAdopted:
    """The engine lives, but its log shows it failed while we were away: adopt, then fail it."""

    handle: EngineHandle
    kind: FailureKind
    detail: str


@dataclass(frozen=True)
class FinishStop:
    """A stop (or the stop half of a restart) was under way: finish it, then start again if the
    operator wants the model running."""

    handle: EngineHandle
    then_start: bool


@dataclass(frozen=True)
class Stopped:
    """What was being stopped is gone: record it stopped, then start if wanted."""

    then_start: bool


@dataclass(frozen=True)
class Lost:
    """The engine died while we were away: a failure like any other (backoff, budget)."""

    kind: FailureKind
    detail: str


@dataclass(frozen=True)
class ResumeBackoff:
    """Failed and wanted running: the restart timer resumes with what is left of its delay."""


@dataclass(frozen=True)
class StartNow:
    """Accepted as wanted running, never launched: launch now (a refusal is a failure)."""


@dataclass(frozen=True)
class Rest:
    """Nothing to do."""


AdoptionPlan = Watch | FailAdopted | FinishStop | Stopped | Lost | ResumeBackoff | StartNow | Rest

_ENGINE_STATES = (
    ModelState.STARTING,
    ModelState.RUNNING,
    ModelState.STOPPING,
    ModelState.SLEEPING,
)


def plan_adoption(facts: AdoptionFacts) -> AdoptionPlan:
    wanted = facts.desired == DesiredState.RUNNING
    if facts.state not in _ENGINE_STATES:
        if facts.state == ModelState.FAILED and wanted:
            return ResumeBackoff()  # FAILED -> (backoff) -> STARTING
        if facts.state == ModelState.STOPPED and wanted:
            return StartNow()  # killed between accepting a start and launching it
        return Rest()
    stopping = facts.state == ModelState.STOPPING or not wanted
    if facts.alive is None:
        if stopping:
            return Stopped(then_start=wanted)  # STOPPING -> STOPPED (-> STARTING)
        detail = f"engine (pid {facts.recorded_pid}) ended while the orchestrator was down"
        if facts.log_failure is not None:
            kind, evidence = facts.log_failure
            return Lost(kind, f"{detail}: {evidence}")
        return Lost(FailureKind.EXIT, detail)
    if stopping:
        return FinishStop(facts.alive, then_start=wanted)
    if facts.log_failure is not None:
        kind, evidence = facts.log_failure
        return FailAdopted(facts.alive, kind, f"{kind.value}: {evidence}")
    if facts.state in (ModelState.RUNNING, ModelState.SLEEPING):
        return Watch(facts.alive, ready=True, remaining_s=0.0)
    elapsed_s = (facts.now - facts.since).total_seconds()
    remaining_s = facts.start_timeout_s - elapsed_s
    return Watch(
        facts.alive,
        ready=False,
        remaining_s=max(0.0, remaining_s if math.isfinite(remaining_s) else 0.0),
    )
