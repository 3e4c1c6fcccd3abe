"""The one place a model's status changes: validate, persist, append an event, stamp `since`,
and update the status gauge, all together. Only the model's supervisor holds a StatusWriter."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from app.orchestrator.clock import Clock
from app.orchestrator.failures import OOM_KINDS, FailureKind
from app.orchestrator.lifecycle.states import (
    STATUS_CODES,
    DesiredState,
    ModelState,
    check_transition,
)
from app.orchestrator.metrics import Metrics
from app.orchestrator.registry import Registry
from app.store.tables import StatusRow

StatusTest = Callable[[StatusRow], bool]


class StatusWriter:
    """Holds the supervisor's copy of the status; every change goes through here to the store."""

    def __init__(
        self, status: StatusRow, registry: Registry, metrics: Metrics, clock: Clock
    ) -> None:
        self.model_id = status.model_id
        self.registry = registry
        self.metrics = metrics
        self.clock = clock
        self.status: StatusRow = status
        # What the store holds: reads and waits see only this, so what anyone was told (an
        # answer, a status) survives the orchestrator's death a moment later.
        self.committed: StatusRow = StatusRow(**status.model_dump())
        self._waiters: list[tuple[StatusTest, asyncio.Future[None]]] = []
        metrics.vllm_status.labels(model=self.model_id).set(STATUS_CODES[ModelState(status.state)])
        # Counters start from the persisted totals: a scrape after a restart never goes back.
        metrics.vllm_restarts_total.labels(model=self.model_id).inc(status.restarts_total)
        metrics.vllm_ooms_total.labels(model=self.model_id).inc(status.ooms_total)

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

    @property
    def desired(self) -> DesiredState:
        return DesiredState(self.status.desired_state)

    # -- waiting for a state (?wait=true) -------------------------------------------------
    async def wait_for(self, test: StatusTest, *, timeout_s: float) -> bool:
        """Wait until `test(status)` holds of the committed status; False at the timeout."""
        if test(self.committed):
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (test, future)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            return False
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
        return True

    def _on_commit(self, snapshot: StatusRow) -> None:
        self.committed = snapshot

    def wake_waiters(self) -> None:
        """Called by the supervisor once a message is handled and its writes committed, so a
        waiter sees where the message left the model (degraded), not a step on the way
        (failed)."""
        for test, future in list(self._waiters):
            if not future.done() and test(self.committed):
                future.set_result(None)

    # -- changes ----------------------------------------------------------------------------
    def save(self, event: dict[str, Any] | None = None, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self.status, name, value)
        self.registry.save_status(self.status, event=event, on_commit=self._on_commit)

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
        self.metrics.vllm_status.labels(model=self.model_id).set(STATUS_CODES[target])
        self.save(event, state=target.value, since=self.clock.now(), **changes)

    def set_desired(self, desired: DesiredState) -> None:
        if self.status.desired_state != desired.value:
            self.save(
                {"kind": "desired", "reason": f"desired state {desired.value}"},
                desired_state=desired.value,
            )

    def fail(self, kind: FailureKind, message: str, *, keep_engine: bool = False) -> None:
        """Record a failure. `keep_engine` keeps the run's pid and token in the status: its
        processes survived, and the next stop or start must find them again."""
        changes: dict[str, Any] = {
            "last_failure_kind": kind.value,
            "last_failure_message": message,
            "last_failure_at": self.clock.now(),
            "consecutive_failures": self.status.consecutive_failures + 1,
            "running_since": None,
        }
        if not keep_engine:
            changes.update(pid=None, pid_create_time=None, launch_token=None)
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
        """A restart after a failure launched an engine (refused attempts are not counted)."""
        self.metrics.vllm_restarts_total.labels(model=self.model_id).inc()
        self.save(
            {"kind": "restart", "reason": "restarted after failure"},
            restarts_total=self.status.restarts_total + 1,
        )

    def reset_failures(self, reason: str) -> None:
        if self.status.consecutive_failures:
            self.save({"kind": "budget_reset", "reason": reason}, consecutive_failures=0)

    def flag_restart_needed(self, reason: str) -> None:
        self.save({"kind": "restart_needed", "reason": reason}, restart_needed=True)
