"""Fan-out of committed events to live subscribers (the `/events` streams), each with a bounded
buffer of its own.

The registry calls `EventBus.publish` on the event loop once an event row is committed. Publishing
never waits: an event is appended to each matching subscriber's buffer, and a subscriber whose
buffer is full is closed on the spot (reason `overflow`) and forgotten. A slow reader therefore
costs the supervisors nothing; it loses its stream, and resumes from the event log by id.

    bus = EventBus(capacity=1024)
    bus.attach(registry)                  # idempotent
    subscription = bus.subscribe(model_id="mistral-7b")
    event = await subscription.next()     # None once closed
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol

from app.store.tables import EventRow

DEFAULT_CAPACITY = 1024
OVERFLOW = "overflow"
CLOSED = "closed"

__all__ = ["CLOSED", "DEFAULT_CAPACITY", "OVERFLOW", "EventBus", "EventSource", "Subscription"]


class EventSource(Protocol):
    """What the bus listens to: the registry's listener hook."""

    def add_listener(self, listener: Callable[[EventRow], None]) -> None: ...

    def remove_listener(self, listener: Callable[[EventRow], None]) -> None: ...


class Subscription:
    """One reader's view of the bus: events of one model (or all, with `model_id=None`), in
    commit order, at most `capacity` of them waiting."""

    def __init__(self, model_id: str | None, capacity: int) -> None:
        self.model_id = model_id
        self.capacity = capacity
        self.closed_reason: str | None = None
        self._pending: deque[EventRow] = deque()
        self._ready = asyncio.Event()

    def wants(self, event: EventRow) -> bool:
        return self.model_id is None or event.model_id == self.model_id

    def offer(self, event: EventRow) -> bool:
        """Queue `event`; False (and the subscription closed) when the buffer is full."""
        if self.closed_reason is not None:
            return False
        if len(self._pending) >= self.capacity:
            self.close(OVERFLOW)
            return False
        self._pending.append(event)
        self._ready.set()
        return True

    def close(self, reason: str = CLOSED) -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
        self._pending.clear()
        self._ready.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def next(self) -> EventRow | None:
        """The next event; None once the subscription is closed (what is buffered then is
        dropped: the reader resumes from the event log)."""
        while True:
            if self.closed_reason is not None:
                return None
            if self._pending:
                return self._pending.popleft()
            self._ready.clear()
            await self._ready.wait()


class EventBus:
    def __init__(self, *, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._subscriptions: list[Subscription] = []
        self._sources: list[EventSource] = []

    def attach(self, source: EventSource) -> None:
        """Listen to `source` (the registry); a second call for the same source does nothing."""
        if any(known is source for known in self._sources):
            return
        source.add_listener(self.publish)
        self._sources.append(source)

    def detach(self) -> None:
        """Stop listening and close every subscription (the service shuts down)."""
        for source in self._sources:
            source.remove_listener(self.publish)
        self._sources.clear()
        for subscription in self._subscriptions:
            subscription.close()
        self._subscriptions.clear()

    def subscribe(self, *, model_id: str | None = None) -> Subscription:
        subscription = Subscription(model_id, self.capacity)
        self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscription.close()
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    def publish(self, event: EventRow) -> None:
        """Hand `event` to every matching subscriber; never waits. Subscribers that cannot take
        it are closed and removed here."""
        overflowed = [
            subscription
            for subscription in self._subscriptions
            if subscription.wants(event) and not subscription.offer(event)
        ]
        for subscription in overflowed:
            self._subscriptions.remove(subscription)
