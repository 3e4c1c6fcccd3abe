"""`gpu-orchestrator events --follow`: reading `GET /events` (Server-Sent Events) as it comes.

Parsing is a pure function of the stream's lines; following is a loop over a stream opener that
the CLI hands in, so both are tested without a service. A stream that ends (the service
restarts, or dropped this client for reading too slowly) is opened again with `Last-Event-ID`
set to the last id seen, so nothing is lost or printed twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

DEFAULT_RETRY_S = 2.0


class StreamLost(Exception):
    """The connection failed or broke (not an HTTP error status: that is the caller's)."""


@dataclass
class SseMessage:
    event: str = "message"
    data_lines: list[str] = field(default_factory=list)
    id: str | None = None
    retry_ms: int | None = None

    @property
    def data(self) -> str:
        return "\n".join(self.data_lines)


def parse_sse(lines: Iterable[str]) -> Iterator[SseMessage]:
    """Messages of an event stream, by the HTML spec's rules: `field: value` lines, a blank line
    ends a message, lines starting with `:` are comments (keep-alive pings)."""
    message = SseMessage()
    pending = False
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if pending:
                yield message
            message, pending = SseMessage(), False
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        pending = True
        if name == "data":
            message.data_lines.append(value)
        elif name == "event":
            message.event = value
        elif name == "id":
            message.id = value
        elif name == "retry" and value.isdigit():
            message.retry_ms = int(value)
    if pending:
        yield message


StreamOpener = Callable[[int | None], AbstractContextManager[Iterable[str]]]


@dataclass
class Follower:
    """Follows the stream until `count` events were shown (forever when None)."""

    open_stream: StreamOpener  # called with the id to resume after; raises StreamLost
    on_event: Callable[[dict[str, Any]], None]
    on_note: Callable[[str], None]
    sleep: Callable[[float], None]
    count: int | None = None
    last_id: int | None = None
    shown: int = 0
    retry_s: float = DEFAULT_RETRY_S

    def run(self) -> None:
        """Raises StreamLost only when the very first connection fails."""
        connected = False
        while True:
            try:
                with self.open_stream(self.last_id) as lines:
                    connected = True
                    if self._read(lines):
                        return
                self.on_note(f"the event stream ended; reconnecting in {self.retry_s:g} s")
            except StreamLost as lost:
                if not connected:
                    raise
                self.on_note(f"{lost}; reconnecting in {self.retry_s:g} s")
            self.sleep(self.retry_s)

    def _read(self, lines: Iterable[str]) -> bool:
        """Show the stream's events; True once `count` were shown."""
        for message in parse_sse(lines):
            if message.retry_ms is not None:
                self.retry_s = message.retry_ms / 1000
            if message.id is not None and message.id.isdigit():
                self.last_id = int(message.id)
            if message.event == "dropped":
                self.on_note("the service dropped this stream (it read too slowly)")
                return False
            if message.event != "message" or not message.data_lines:
                continue
            self.on_event(json.loads(message.data))
            self.shown += 1
            if self.count is not None and self.shown >= self.count:
                return True
        return False
