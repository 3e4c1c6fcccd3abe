"""Events other nodes commit, told to this node's listeners (its `/events` streams and console):
on a shared database each node reads the event table every half second.

Event ids come from one sequence, but transactions commit in their own order: an id can become
visible after a larger one. So each read goes back a margin of ids below the highest seen, and
the registry tells each id once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from app.orchestrator.registry import Registry

logger = logging.getLogger(__name__)

INTERVAL_S = 0.5
MARGIN_IDS = 200
BATCH = 1000


async def relay_events(registry: Registry, stop: asyncio.Event, *, after_id: int) -> None:
    """Until `stop`: read the events above `after_id` (less the margin), hand them over."""
    highest = after_id
    while not stop.is_set():
        try:
            rows = await asyncio.to_thread(
                registry.events_after, max(highest - MARGIN_IDS, 0), limit=BATCH
            )
        except Exception as error:  # the database is away: the heartbeat says so already
            logger.debug("event relay: %s", error)
            rows = []
        fresh = [row for row in rows if row.id is not None and row.id > after_id]
        if fresh:
            registry.deliver(fresh)
            highest = max(highest, max(row.id or 0 for row in fresh))
        if len(rows) < BATCH:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), INTERVAL_S)
