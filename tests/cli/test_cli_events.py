"""`gpu-orchestrator events`: the SSE parser on captured stream text, the follow loop on fake
streams (reconnects, resume ids, drops), and the command against a real service."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager

import httpx
import pytest

from app.cli import main
from app.client_cli import EXIT_FAILURE, EXIT_OK, EXIT_UNREACHABLE
from app.client_events import Follower, StreamLost, parse_sse
from app.client_format import event_line
from app.main import create_app
from tests.api.live_server import LiveServer, live_server
from tests.conftest import MakeSettings
from tests.fakes import free_port, wait_until

# What GET /events sent (sse-starlette's CRLF framing, a keep-alive ping, the `dropped` end).
CAPTURED = (
    ": gpu-orchestrator events\r\n"
    "retry: 2000\r\n"
    "\r\n"
    "id: 41\r\n"
    'data: {"id":41,"model_id":"m","kind":"created"}\r\n'
    "\r\n"
    ": ping - 2026-12-01 08:53:11.000000+00:00\r\n"
    "\r\n"
    "id: 42\r\n"
    "data: first\r\n"
    "data: second\r\n"
    "\r\n"
    "event: dropped\r\n"
    'data: {"reason":"slow"}\r\n'
    "\r\n"
)


def test_cli_events_parse_sse_reads_fields_comments_and_multiline_data() -> None:
    messages = list(parse_sse(CAPTURED.splitlines(keepends=True)))
    assert [(m.event, m.id, m.retry_ms) for m in messages] == [
        ("message", None, 2000),
        ("message", "41", None),
        ("message", "42", None),
        ("dropped", None, None),
    ]
    assert json.loads(messages[1].data)["kind"] == "created"
    assert messages[2].data == "first\nsecond"


def event_text(event_id: int, kind: str = "transition") -> list[str]:
    body = {"id": event_id, "model_id": "m", "kind": kind, "at": "2026-12-01T00:00:00.000Z"}
    return [f"id: {event_id}", f"data: {json.dumps(body)}", ""]


class FakeStreams:
    """Hands out prepared streams in turn and records the id each was opened after; a stream
    given as an exception fails to open."""

    def __init__(self, *streams: list[str] | Exception) -> None:
        self.streams = list(streams)
        self.opened_after: list[int | None] = []

    def __call__(self, after_id: int | None) -> AbstractContextManager[Iterable[str]]:
        self.opened_after.append(after_id)
        stream = self.streams.pop(0)

        @contextmanager
        def opened() -> Iterator[Iterable[str]]:
            if isinstance(stream, Exception):
                raise stream
            yield iter(stream)

        return opened()


def follower(
    streams: FakeStreams, count: int | None, since: int | None = None
) -> tuple[Follower, list[int], list[str]]:
    """A follower of `streams`, the ids it showed and the notes it gave (filled as it runs)."""
    shown: list[int] = []
    notes: list[str] = []
    follow = Follower(
        open_stream=streams,
        on_event=lambda event: shown.append(event["id"]),
        on_note=notes.append,
        sleep=lambda _seconds: None,
        count=count,
        last_id=since,
    )
    return follow, shown, notes


def test_cli_events_follow_resumes_after_the_last_id_when_a_stream_ends() -> None:
    streams = FakeStreams(
        ["retry: 500", "", *event_text(1), *event_text(2)],
        StreamLost("lost the connection"),
        [*event_text(3), "event: dropped", 'data: {"reason": "slow"}', ""],
        [*event_text(4), *event_text(5)],
    )
    follow, shown, notes = follower(streams, count=5, since=None)
    follow.run()
    assert shown == [1, 2, 3, 4, 5]
    assert streams.opened_after == [None, 2, 2, 3]
    assert follow.retry_s == 0.5
    said = " / ".join(notes)
    assert "ended" in said and "lost the connection" in said and "dropped" in said


def test_cli_events_follow_fails_when_the_first_connection_does() -> None:
    follow, _shown, _notes = follower(FakeStreams(StreamLost("cannot reach")), count=1)
    with pytest.raises(StreamLost, match="cannot reach"):
        follow.run()


def test_cli_events_line_shows_the_transition_and_node_events() -> None:
    transition = {
        "at": "2026-12-01T08:00:00.000Z",
        "model_id": "m",
        "kind": "transition",
        "from_state": "stopped",
        "to_state": "starting",
        "reason": "operator start\nmore",
    }
    assert event_line(transition) == (
        "2026-12-01T08:00:00.000Z  m  transition  stopped -> starting  operator start"
    )
    alert = {"at": "2026-12-01T08:00:00.000Z", "model_id": None, "kind": "gpu_memory_low"}
    assert event_line(alert) == "2026-12-01T08:00:00.000Z  node  gpu_memory_low"


@pytest.fixture
def server(make_settings: MakeSettings) -> Iterator[LiveServer]:
    with live_server(create_app(make_settings())) as running:
        yield running


def create_models(server: LiveServer, *model_ids: str) -> None:
    with httpx.Client(base_url=server.url, timeout=20) as http:
        for model_id in model_ids:
            spec = {"id": model_id, "model": "/models/tiny", "gpu_memory_util": 0.3}
            assert http.post("/models", json=spec).status_code == 201


def test_cli_events_follow_replays_since_an_id_then_prints_live_events(
    server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    create_models(server, "cli-a", "cli-b")
    with httpx.Client(base_url=server.url, timeout=20) as http:
        first_id = http.get("/models/cli-a/events").json()[0]["id"]
    bus = server.app.state.event_bus
    # A model created once the CLI listens arrives live, after the two replayed from the log.

    def create_once_followed() -> None:
        wait_until(lambda: bus.subscribers == 1, 20, what="the CLI subscribed")
        create_models(server, "cli-c")

    late = threading.Thread(target=create_once_followed)
    late.start()
    since = str(first_id - 1)
    code = main(["events", "--follow", "--since", since, "--count", "3", "--url", server.url])
    late.join(timeout=30)
    out = capsys.readouterr().out.splitlines()
    assert code == EXIT_OK
    assert [line.split("  ")[1:3] for line in out] == [
        ["cli-a", "created"],
        ["cli-b", "created"],
        ["cli-c", "created"],
    ]


def test_cli_events_follow_json_filters_by_model(
    server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    create_models(server, "one", "two")
    argv = ["events", "two", "--follow", "--since", "0", "--count", "1", "--json"]
    assert main([*argv, "--url", server.url]) == EXIT_OK
    (line,) = capsys.readouterr().out.splitlines()
    event = json.loads(line)
    assert (event["model_id"], event["kind"]) == ("two", "created")


def test_cli_events_without_follow_lists_a_models_events(
    server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    create_models(server, "listed")
    assert main(["events", "listed", "--url", server.url]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["AT", "KIND", "FROM", "TO", "REASON"]
    assert lines[1].split()[1] == "created"
    assert main(["events", "--url", server.url]) == EXIT_FAILURE
    assert "--follow" in capsys.readouterr().err


def test_cli_events_follow_names_an_unreachable_service(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["events", "--follow", "--url", url]) == EXIT_UNREACHABLE
    err = capsys.readouterr().err
    assert url in err and "Traceback" not in err
