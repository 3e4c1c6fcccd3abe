"""Idle unload as a pure rule: when has a running engine been idle for its timeout.

llama-swap calls it `ttl`, Ollama `keep_alive`: an engine with no request in flight and none
for `idle_timeout_s` gives its GPU memory back (stopped, or asleep with a sleep_level). Idle is
counted from the end of the last request, or from when the engine began running if none came.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from app.orchestrator.activity import Activity


@dataclass(frozen=True)
class Unload:
    idle_s: float


@dataclass(frozen=True)
class CheckAgain:
    delay_s: float


def idle_decision(
    *,
    now: datetime,
    timeout_s: float | None,
    activity: Activity | None,
    running_since: datetime | None,
) -> Unload | CheckAgain | None:
    """None: never (no timeout). A busy engine is checked again a full timeout later."""
    if timeout_s is None:
        return None
    if activity is not None and activity.busy:
        return CheckAgain(timeout_s)
    marks = [mark for mark in (activity and activity.last_request_at, running_since) if mark]
    if not marks:
        return CheckAgain(timeout_s)
    idle_s = (now - max(marks)).total_seconds()
    if idle_s >= timeout_s:
        return Unload(idle_s)
    return CheckAgain(timeout_s - idle_s)
