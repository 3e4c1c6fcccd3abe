"""Restart policy as pure functions, with plain values."""

from __future__ import annotations

import pytest

from app.orchestrator.failures import FailureKind
from app.orchestrator.lifecycle.policy import Degrade, Restart, decide_after_failure, next_backoff
from app.orchestrator.lifecycle.states import (
    TRANSITIONS,
    ModelState,
    TransitionError,
    check_transition,
)
from app.orchestrator.spec import RestartPolicy

POLICY = RestartPolicy(
    max_restarts=4, backoff_initial_s=10, backoff_factor=2, backoff_max_s=50, stable_after_s=600
)


def test_policy_backoff_doubles_then_caps() -> None:
    assert [next_backoff(attempt, POLICY) for attempt in range(1, 6)] == [10, 20, 40, 50, 50]


def test_policy_backoff_is_one_based() -> None:
    with pytest.raises(ValueError, match="1-based"):
        next_backoff(0, POLICY)


def test_policy_restarts_until_budget_then_degrades() -> None:
    decisions = [decide_after_failure(FailureKind.GPU_OOM, n, POLICY) for n in range(1, 6)]
    assert decisions[:4] == [
        Restart(delay_s=10, attempt=1),
        Restart(delay_s=20, attempt=2),
        Restart(delay_s=40, attempt=3),
        Restart(delay_s=50, attempt=4),
    ]
    assert isinstance(decisions[4], Degrade) and "budget of 4 spent" in decisions[4].reason


def test_policy_kv_cache_degrades_at_once_with_remedy() -> None:
    decision = decide_after_failure(FailureKind.KV_CACHE_INSUFFICIENT, 1, POLICY)
    assert isinstance(decision, Degrade)
    assert "gpu_memory_util" in decision.reason and "max_model_len" in decision.reason


def test_policy_zero_budget_degrades_on_first_failure() -> None:
    policy = RestartPolicy(max_restarts=0)
    assert isinstance(decide_after_failure(FailureKind.EXIT, 1, policy), Degrade)


def test_policy_defaults_follow_kubelet_shape() -> None:
    policy = RestartPolicy()
    assert (policy.max_restarts, policy.backoff_initial_s, policy.backoff_factor) == (5, 10, 2)
    assert (policy.backoff_max_s, policy.stable_after_s) == (300, 600)


def test_policy_cap_below_initial_is_rejected() -> None:
    with pytest.raises(ValueError, match="backoff_max_s"):
        RestartPolicy(backoff_initial_s=20, backoff_max_s=10)


def test_states_transition_table_allows_and_refuses() -> None:
    check_transition(ModelState.STOPPED, ModelState.STARTING)
    check_transition(ModelState.FAILED, ModelState.DEGRADED)
    with pytest.raises(TransitionError):
        check_transition(ModelState.STOPPED, ModelState.RUNNING)
    with pytest.raises(TransitionError):
        check_transition(ModelState.STOPPING, ModelState.RUNNING)
    assert set(TRANSITIONS) == set(ModelState)
