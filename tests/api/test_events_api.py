"""GET /events against a real uvicorn (a stream is read as it comes, which an in-process ASGI
transport does not do), with the fake engine standing in for vLLM."""

from __future__ import annotations

import functools
import json
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from app.client_events import SseMessage, parse_sse
from app.main import create_app
from app.orchestrator.event_bus import EventBus
from app.store.tables import EventRow
from tests.api.live_server import LiveServer, live_server, sse_headers
from tests.conftest import MakeSettings
from tests.fakes import wait_until

TOKEN = "events-token"
SPEC: dict[str, Any] = {"model": "/models/tiny", "gpu_memory_util": 0.3}


@pytest.fixture
def server(make_settings: MakeSettings) -> Iterator[LiveServer]:
    with live_server(create_app(make_settings())) as running:
        yield running


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=20) as client:
        yield client


def events_of(
    messages: Iterator[SseMessage], until: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """Events (the `data:` JSON of plain messages) until `until(events)` holds; each event's
    SSE id is its id in the log."""
    events: list[dict[str, Any]] = []
    for message in messages:
        if message.event != "message" or not message.data_lines:
            continue  # the stream's opening `retry:` has no data
        event = json.loads(message.data)
        assert message.id == str(event["id"])
        events.append(event)
        if until(events):
            return events
    raise AssertionError(f"the stream ended after {events}")


def has(
    kind: str, model_id: str | None = None, to_state: str | None = None
) -> Callable[[list[dict[str, Any]]], bool]:
    def check(events: list[dict[str, Any]]) -> bool:
        last = events[-1]
        return (
            last["kind"] == kind
            and (model_id is None or last["model_id"] == model_id)
            and (to_state is None or last["to_state"] == to_state)
        )

    return check


def test_events_stream_shows_a_start_as_transitions_with_increasing_ids(
    http: httpx.Client,
) -> None:
    with http.stream("GET", "/events", headers=sse_headers()) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        messages = parse_sse(response.iter_lines())
        assert http.post("/models", json={**SPEC, "id": "live-a"}).status_code == 201
        assert http.post("/models/live-a/start").status_code == 202
        events = events_of(messages, has("transition", "live-a", "running"))
    kinds = [event["kind"] for event in events]
    assert kinds[0] == "created"
    transitions = [(e["from_state"], e["to_state"]) for e in events if e["kind"] == "transition"]
    assert transitions == [("stopped", "starting"), ("starting", "running")]
    ids = [event["id"] for event in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(event["at"].endswith("Z") for event in events)


def test_events_model_filter_keeps_only_that_model(http: httpx.Client) -> None:
    params = {"model": "wanted"}
    with http.stream("GET", "/events", params=params, headers=sse_headers()) as response:
        messages = parse_sse(response.iter_lines())
        assert http.post("/models", json={**SPEC, "id": "other"}).status_code == 201
        assert http.patch("/models/other", json={"max_model_len": 2048}).status_code == 200
        assert http.post("/models", json={**SPEC, "id": "wanted"}).status_code == 201
        events = events_of(messages, has("created", "wanted"))
    assert [(event["model_id"], event["kind"]) for event in events] == [("wanted", "created")]


def test_events_last_event_id_resumes_without_loss_or_repeat(http: httpx.Client) -> None:
    with http.stream("GET", "/events", headers=sse_headers()) as response:
        messages = parse_sse(response.iter_lines())
        assert http.post("/models", json={**SPEC, "id": "resume-a"}).status_code == 201
        last_seen = events_of(messages, has("created", "resume-a"))[-1]["id"]
    # Disconnected: these happen while nobody listens.
    assert http.patch("/models/resume-a", json={"max_model_len": 2048}).status_code == 200
    assert http.post("/models", json={**SPEC, "id": "resume-b"}).status_code == 201
    assert http.delete("/models/resume-b").status_code == 204
    missed = [("resume-a", "updated"), ("resume-b", "created"), ("resume-b", "deleted")]

    def first_three(events: list[dict[str, Any]]) -> bool:
        return len(events) == 3

    headers = sse_headers(last_event_id=last_seen)
    with http.stream("GET", "/events", headers=headers) as response:
        messages = parse_sse(response.iter_lines())
        replayed = events_of(messages, first_three)
        assert [(event["model_id"], event["kind"]) for event in replayed] == missed
        # Then live, after the replay, without repeating it.
        assert http.patch("/models/resume-a", json={"max_model_len": 1024}).status_code == 200
        live = events_of(messages, has("updated", "resume-a"))
    assert len(live) == 1 and live[0]["id"] > replayed[-1]["id"]
    ids = [event["id"] for event in replayed]
    assert ids == sorted(ids) and ids[0] > last_seen

    # The query parameter does the same for clients that cannot set the header (curl scripts).
    params = {"last_event_id": last_seen}
    with http.stream("GET", "/events", params=params, headers=sse_headers()) as response:
        again = events_of(parse_sse(response.iter_lines()), first_three)
    assert [event["id"] for event in again] == ids


def test_events_need_the_token(make_settings: MakeSettings) -> None:
    with (
        live_server(create_app(make_settings(api_token=TOKEN))) as server,
        httpx.Client(base_url=server.url, timeout=20) as http,
    ):
        refused = http.get("/events", headers=sse_headers())
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["detail"]["code"] == "unauthorized"
        # Not a 422 that would tell a caller without the token about the parameters.
        assert http.get("/events", params={"model": "NOT A SLUG"}).status_code == 401
        assert http.get("/events", headers=sse_headers("wrong")).status_code == 401
        with http.stream("GET", "/events", headers=sse_headers(TOKEN)) as accepted:
            assert accepted.status_code == 200


def test_events_refuse_a_malformed_last_event_id(http: httpx.Client) -> None:
    answer = http.get("/events", headers={"Last-Event-ID": "yesterday"})
    assert answer.status_code == 400
    assert answer.json()["detail"]["code"] == "bad_request"
    assert http.get("/events", params={"last_event_id": -1}).status_code == 422


def synthetic_event(event_id: int, payload_bytes: int = 0) -> EventRow:
    return EventRow(
        id=event_id,
        model_id="synthetic",
        at=datetime.now(UTC),
        kind="test",
        data={"padding": "x" * payload_bytes},
    )


def test_events_slow_client_is_dropped_and_never_holds_up_the_others(
    server: LiveServer, http: httpx.Client
) -> None:
    bus = EventBus(capacity=8)
    server.app.state.event_bus = bus
    received: list[int] = []
    arrived = threading.Condition()

    def read_fast() -> None:
        with http.stream("GET", "/events", headers=sse_headers()) as response:
            for message in parse_sse(response.iter_lines()):
                if message.event == "message" and message.data_lines:
                    with arrived:
                        received.append(int(message.id or 0))
                        arrived.notify_all()

    fast = threading.Thread(target=read_fast, daemon=True)
    fast.start()
    # The slow client asks for the stream and never reads it; a small receive window makes the
    # server's socket (and then its writes) back up soon.
    slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = server.url.removeprefix("http://").split(":")
    slow.connect((host, int(port)))
    try:
        slow.sendall(f"GET /events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        wait_until(lambda: bus.subscribers == 2, 10, what="both clients subscribed")

        def publish_and_wait(event_id: int, payload_bytes: int) -> None:
            server.on_loop(functools.partial(bus.publish, synthetic_event(event_id, payload_bytes)))
            with arrived:  # the fast client keeps pace with every event
                assert arrived.wait_for(lambda: len(received) >= event_id, timeout=10), received

        sent = 0
        while bus.subscribers == 2:
            assert sent < 2000, "the slow client was never dropped"
            sent += 1
            publish_and_wait(sent, 32_768)
        # The fast client still gets everything, in order, after the slow one is gone.
        for _ in range(5):
            sent += 1
            publish_and_wait(sent, 0)
        assert received == list(range(1, sent + 1))
        assert bus.subscribers == 1
    finally:
        slow.close()
        server.on_loop(bus.detach)
        fast.join(timeout=10)


def test_events_a_stream_that_overflowed_ends_with_a_dropped_event(
    server: LiveServer, http: httpx.Client
) -> None:
    bus = EventBus(capacity=2)
    server.app.state.event_bus = bus
    with http.stream("GET", "/events", headers=sse_headers()) as response:
        wait_until(lambda: bus.subscribers == 1, 10, what="subscribed")

        def burst() -> None:  # all at once: the stream cannot take one before the next
            for event_id in range(1, 6):
                bus.publish(synthetic_event(event_id))

        server.on_loop(burst)
        messages = [m for m in parse_sse(response.iter_lines()) if m.data_lines]
    assert [message.event for message in messages] == ["dropped"]
    assert "more than 2 events" in json.loads(messages[0].data)["reason"]
    assert bus.subscribers == 0
