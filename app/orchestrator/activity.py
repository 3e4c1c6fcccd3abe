"""Per-model traffic the gateway sees: requests in flight, waiting, and the last one's time.

Idle unload and eviction read these (an engine with requests in flight is busy). A bounded wait:
at most `max_queue` requests wait for a model (a cold start, a concurrency slot); more are
refused at once with Retry-After rather than piling up.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime


class QueueFullError(Exception):
    pass


@dataclass
class Activity:
    in_flight: int = 0
    waiting: int = 0
    last_request_at: datetime | None = None
    _slot_waiters: deque[asyncio.Future[None]] = field(default_factory=deque)

    @property
    def busy(self) -> bool:
        return self.in_flight > 0 or self.waiting > 0

    def enter_queue(self, max_queue: int) -> None:
        if self.waiting >= max_queue:
            raise QueueFullError
        self.waiting += 1

    def leave_queue(self) -> None:
        self.waiting -= 1

    async def take_slot(self, max_concurrency: int) -> None:
        """Wait until fewer than `max_concurrency` requests are in flight (0: no limit); first
        come, first served."""
        while max_concurrency > 0 and self.in_flight >= max_concurrency:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._slot_waiters:
                    self._slot_waiters.remove(waiter)
        self.in_flight += 1

    def release_slot(self, now: datetime) -> None:
        """Synchronous, so a cancelled stream's cleanup can never be interrupted half-way."""
        self.in_flight -= 1
        self.last_request_at = now
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break


class ActivityBoard:
    """Activity by model id; an entry appears with a model's first request."""

    def __init__(self) -> None:
        self._by_model: dict[str, Activity] = {}

    def of(self, model_id: str) -> Activity:
        activity = self._by_model.get(model_id)
        if activity is None:
            activity = self._by_model[model_id] = Activity()
        return activity

    def peek(self, model_id: str) -> Activity | None:
        return self._by_model.get(model_id)

    def forget(self, model_id: str) -> None:
        self._by_model.pop(model_id, None)
