"""The event bus on its own: fan-out, filters, and bounded buffers that never make the publisher
wait (the supervisors publish through it)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from app.orchestrator.event_bus import CLOSED, OVERFLOW, EventBus, Subscription
from app.store.tables import EventRow


def event(event_id: int, model_id: str | None = "m") -> EventRow:
    return EventRow(id=event_id, model_id=model_id, at=datetime.now(UTC), kind="test")


async def ids(subscription: Subscription, count: int) -> list[int | None]:
    received = []
    for _ in range(count):
        row = await subscription.next()
        assert row is not None
        received.append(row.id)
    return received


class FakeRegistry:
    def __init__(self) -> None:
        self.listeners: list[Callable[[EventRow], None]] = []

    def add_listener(self, listener: Callable[[EventRow], None]) -> None:
        self.listeners.append(listener)

    def remove_listener(self, listener: Callable[[EventRow], None]) -> None:
        self.listeners.remove(listener)

    def commit(self, row: EventRow) -> None:
        for listener in self.listeners:
            listener(row)


async def test_event_bus_delivers_in_order_to_each_matching_subscriber() -> None:
    bus = EventBus()
    everything = bus.subscribe()
    only_a = bus.subscribe(model_id="a")
    for row in (event(1, "a"), event(2, "b"), event(3, None), event(4, "a")):
        bus.publish(row)
    assert await ids(everything, 4) == [1, 2, 3, 4]
    assert await ids(only_a, 2) == [1, 4]
    assert only_a.pending == 0


async def test_event_bus_next_waits_for_the_next_event() -> None:
    bus = EventBus()
    subscription = bus.subscribe()
    waiting = asyncio.create_task(subscription.next())
    await asyncio.sleep(0)
    assert not waiting.done()
    bus.publish(event(7))
    assert (await asyncio.wait_for(waiting, 5)) is not None


async def test_event_bus_overflow_drops_only_the_slow_subscriber() -> None:
    bus = EventBus(capacity=3)
    slow = bus.subscribe()
    fast = bus.subscribe()
    for event_id in range(1, 11):
        bus.publish(event(event_id))  # returns at once: nothing here can wait
        got = await fast.next()
        assert got is not None and got.id == event_id
    assert slow.closed_reason == OVERFLOW
    assert bus.subscribers == 1
    # What the slow one had buffered is gone: it resumes from the event log, by id.
    assert await slow.next() is None


async def test_event_bus_detach_closes_subscriptions_and_stops_listening() -> None:
    registry = FakeRegistry()
    bus = EventBus()
    bus.attach(registry)
    bus.attach(registry)  # idempotent: one listener, events delivered once
    assert len(registry.listeners) == 1
    subscription = bus.subscribe()
    registry.commit(event(1))
    assert (await subscription.next()) is not None
    waiting = asyncio.create_task(subscription.next())
    await asyncio.sleep(0)
    bus.detach()
    assert await asyncio.wait_for(waiting, 5) is None
    assert subscription.closed_reason == CLOSED
    assert registry.listeners == []


def test_event_bus_needs_room_for_one_event() -> None:
    with pytest.raises(ValueError, match="capacity"):
        EventBus(capacity=0)
