"""GET /events: the node's event log as Server-Sent Events, live, with resume by id.

Each event is one SSE message, `id:` the event's id in the log and `data:` its JSON (EVENT
fields below). `?model=` keeps one model's events. A reconnecting client sends `Last-Event-ID`
(browsers do so themselves; `?last_event_id=` does the same for curl), and the stream first
replays what the log holds after that id, then goes on live, without a gap or a repeat.

Each stream has a bounded buffer (EventBus). A client that reads slower than events come is cut
off, never waited for: its stream ends with a `dropped` event when it can still read one, and it
resumes from the log with `Last-Event-ID` like any other reconnect.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.api.deps import ServicesDep
from app.api.errors import ApiError
from app.api.schemas import error_responses
from app.orchestrator.clock import iso_ms
from app.orchestrator.event_bus import OVERFLOW, EventBus, Subscription
from app.orchestrator.registry import Registry
from app.orchestrator.spec import SLUG_PATTERN
from app.store.tables import EventRow

router = APIRouter(tags=["events"], responses=error_responses(401))

REPLAY_PAGE = 500  # events read from the log per query while replaying
RETRY_MS = 2000  # how long an EventSource waits before it reconnects
PING_S = 15  # a comment line this often keeps proxies from closing an idle stream
# A send that the client's socket does not take within this time ends the stream: the bounded
# buffer protects the supervisors, this protects the server from holding a dead connection.
SEND_TIMEOUT_S = 10.0

ModelFilter = Annotated[
    str | None, Query(pattern=SLUG_PATTERN, description="Only this model's events.")
]
LastEventIdQuery = Annotated[
    int | None, Query(ge=0, description="Resume after this event id (as `Last-Event-ID`).")
]
LastEventIdHeader = Annotated[str | None, Header(alias="Last-Event-ID", include_in_schema=False)]


def event_data(row: EventRow) -> dict[str, Any]:
    """One event as the stream's `data:` JSON."""
    return {
        "id": row.id,
        "model_id": row.model_id,
        "at": iso_ms(row.at),
        "kind": row.kind,
        "from_state": row.from_state,
        "to_state": row.to_state,
        "reason": row.reason,
        "data": row.data,
    }


def _message(row: EventRow) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(event_data(row), separators=(",", ":")), id=str(row.id))


def get_event_bus(request: Request, services: ServicesDep) -> EventBus:
    """The app's bus (made by create_app), listening to the registry from the first stream on."""
    bus: EventBus = request.app.state.event_bus
    bus.attach(services.registry)
    return bus


def resume_after(header: str | None, query: int | None) -> int | None:
    """The id to resume after: the header wins (a browser's reconnect), then the query."""
    if header is None or not header.strip():
        return query
    try:
        value = int(header.strip())
    except ValueError:
        value = -1
    if value < 0:
        raise ApiError(
            400, "bad_request", f"Last-Event-ID must be an event id (an integer >= 0): {header!r}"
        )
    return value


async def _replay(
    registry: Registry, after_id: int, model_id: str | None
) -> AsyncIterator[EventRow]:
    while True:
        rows = await asyncio.to_thread(
            registry.events_after, after_id, model_id=model_id, limit=REPLAY_PAGE
        )
        for row in rows:
            yield row
        if len(rows) < REPLAY_PAGE:
            return
        after_id = rows[-1].id or after_id


async def _stream(
    bus: EventBus, registry: Registry, subscription: Subscription, after_id: int | None
) -> AsyncIterator[ServerSentEvent]:
    try:
        yield ServerSentEvent(comment="gpu-orchestrator events", retry=RETRY_MS)
        last_sent = -1
        if after_id is not None:
            async for logged in _replay(registry, after_id, subscription.model_id):
                yield _message(logged)
                last_sent = logged.id or last_sent
        while (live := await subscription.next()) is not None:
            # The registry's one writer thread commits in id order and notifies in that order,
            # so a live event at or below the last replayed id was already sent from the log.
            if live.id is not None and live.id <= last_sent:
                continue
            yield _message(live)
        if subscription.closed_reason == OVERFLOW:
            reason = f"more than {subscription.capacity} events waited for this client"
            yield ServerSentEvent(event="dropped", data=json.dumps({"reason": reason}))
    finally:
        bus.unsubscribe(subscription)


@router.get("/events", response_class=EventSourceResponse, include_in_schema=False)
async def stream_events(
    request: Request,
    services: ServicesDep,
    model: ModelFilter = None,
    last_event_id: LastEventIdQuery = None,
    last_event_id_header: LastEventIdHeader = None,
) -> EventSourceResponse:
    """Server-Sent Events: transitions, failures, restarts, OOMs, alerts, spec changes."""
    after_id = resume_after(last_event_id_header, last_event_id)
    bus = get_event_bus(request, services)
    # Subscribed before the response starts: once a client has the headers, nothing committed
    # later can be missed.
    subscription = bus.subscribe(model_id=model)
    return EventSourceResponse(
        _stream(bus, services.registry, subscription, after_id),
        ping=PING_S,
        send_timeout=SEND_TIMEOUT_S,
    )
