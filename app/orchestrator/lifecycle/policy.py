"""Restart policy as pure functions of (failure, count, policy): tested with plain values."""

from __future__ import annotations

from dataclasses import dataclass

from app.orchestrator.failures import DETERMINISTIC_KINDS, REMEDIES, FailureKind
from app.orchestrator.spec import RestartPolicy


@dataclass(frozen=True)
class Restart:
    delay_s: float
    attempt: int


@dataclass(frozen=True)
class Degrade:
    reason: str


def next_backoff(attempt: int, policy: RestartPolicy) -> float:
    """Delay before restart number `attempt` (1-based): initial x factor^(attempt-1), capped."""
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    delay = policy.backoff_initial_s * policy.backoff_factor ** (attempt - 1)
    return float(min(delay, policy.backoff_max_s))


def decide_after_failure(
    kind: FailureKind, consecutive_failures: int, policy: RestartPolicy
) -> Restart | Degrade:
    """What follows a failure, given how many failures in a row there have been (this one too)."""
    # FAILED -> DEGRADED: a restart of the same spec would fail the same way.
    if kind in DETERMINISTIC_KINDS:
        return Degrade(reason=f"{kind.value} cannot be fixed by a restart: {REMEDIES[kind]}")
    # FAILED -> DEGRADED: the budget is spent.
    if consecutive_failures > policy.max_restarts:
        return Degrade(
            reason=f"{consecutive_failures} failures in a row, restart budget of "
            f"{policy.max_restarts} spent"
        )
    # FAILED -> (backoff) -> STARTING
    return Restart(delay_s=next_backoff(consecutive_failures, policy), attempt=consecutive_failures)
