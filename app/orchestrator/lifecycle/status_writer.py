"""The one place a model's status changes: validate, persist, append an event, stamp `since`,
and update the status gauge, all together."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any

from app.orchestrator.clock import Clock
from app.orchestrator.metrics import Metrics
from app.orchestrator.registry import Registry
from app.orchestrator.states import (
    OOM_KINDS,
    STATUS_CODES,
    DesiredState,
    FailureKind,
    ModelState,
    check_transition,
)
from app.store.tables import StatusRow


class StatusWriter:
    """Holds the supervisor's copy of the status; every change goes through here to the store."""

    def __init__(self, model_id: str, registry: Registry, metrics: Metrics, clock: Clock) -> None:
        self.model_id = model_id
        self.registry = registry
        self.metrics = metrics
        self.clock = clock
        status = registry.status(model_id)
        if status is None:
            raise LookupError(model_id)
        self.status: StatusRow = status
        metrics.vllm_status.labels(model=model_id).set(STATUS_CODES[ModelState(status.state)])
        # Counters start from the persisted totals: a scrape after a restart never goes back.
        metrics.vllm_restarts_total.labels(model=model_id).inc(status.restarts_total)
        metrics.vllm_ooms_total.labels(model=model_id).inc(status.ooms_total)

    def forget_metrics(self) -> None:
        for family in (
            self.metrics.vllm_status,
            self.metrics.vllm_restarts_total,
            self.metrics.vllm_ooms_total,
        ):
            with contextlib.suppress(KeyError):
                family.remove(self.model_id)

    @property
    def state(self) -> ModelState:
        return ModelState(self.status.state)

    def save(self, event: dict[str, Any] | None = None, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self.status, name, value)
        self.registry.save_status(self.status, event=event)

    def to(
        self, target: ModelState, reason: str, *, data: dict[str, Any] | None = None, **changes: Any
    ) -> None:
        current = self.state
        check_transition(current, target)
        event = {
            "kind": "transition",
            "from_state": current.value,
            "to_state": target.value,
            "reason": reason,
            "data": data or {},
        }
        self.save(event, state=target.value, since=self.clock.now(), **changes)
        self.metrics.vllm_status.labels(model=self.model_id).set(STATUS_CODES[target])

    def set_desired(self, desired: DesiredState) -> None:
        if self.status.desired_state != desired.value:
            self.save(
                {"kind": "desired", "reason": f"desired state {desired.value}"},
                desired_state=desired.value,
            )

    def fail(self, kind: FailureKind, message: str) -> None:
        changes: dict[str, Any] = {
            "last_failure_kind": kind.value,
            "last_failure_message": message,
            "last_failure_at": self.clock.now(),
            "consecutive_failures": self.status.consecutive_failures + 1,
            "pid": None,
            "pid_create_time": None,
            "launch_token": None,
            "running_since": None,
        }
        data = {"kind": kind.value, "message": message, "oom": kind in OOM_KINDS}
        if self.state == ModelState.FAILED:
            # A restart that could not even launch: a failure, but no state change.
            self.save({"kind": "failure", "reason": message, "data": data}, **changes)
            return
        self.to(ModelState.FAILED, message, data=data, **changes)

    def degrade(self, reason: str) -> None:
        self.to(ModelState.DEGRADED, reason, next_attempt_at=None)

    def schedule_restart(self, delay_s: float, attempt: int) -> None:
        at = self.clock.now() + timedelta(seconds=delay_s)
        self.save(
            {
                "kind": "restart_scheduled",
                "reason": f"restart {attempt} in {delay_s:g} s",
                "data": {"delay_s": delay_s, "attempt": attempt},
            },
            next_attempt_at=at,
        )

    def count_restart(self) -> None:
        self.metrics.vllm_restarts_total.labels(model=self.model_id).inc()
        self.save(
            {"kind": "restart", "reason": "restarting after failure"},
            restarts_total=self.status.restarts_total + 1,
            next_attempt_at=None,
        )

    def reset_failures(self, reason: str) -> None:
        if self.status.consecutive_failures:
            self.save({"kind": "budget_reset", "reason": reason}, consecutive_failures=0)
