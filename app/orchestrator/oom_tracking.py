"""Reading a model's log as it grows and counting each out-of-memory failure once.

The read offset is persisted with the status, so lines already seen are never read again, also
across orchestrator restarts; an OOM is counted once per engine run (its launch token), however
many lines of its traceback match and however often the file is read.

Reading a backlog never runs on the event loop: after downtime it may be hundreds of MB, and one
blocking read would stall every supervisor, health probe and request of the service. Each step
reads and classifies one bounded chunk in a worker thread (`asyncio.to_thread`) and keeps only
the first OOM found, so memory does not grow with the backlog and the loop runs between chunks.
What a running engine appends between two wakes (a health probe's access line) is a few hundred
bytes: that is read on the loop, where it costs microseconds and a thread hop would cost more.

A model never judges lines written before it existed. A deleted model leaves its log at the
path a new model of the same id will use; the tracker of a model that has neither launched nor
read its log moves such a file aside (`<id>.log.deleted-<time of its last line>`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from app.orchestrator.failures import FailureKind
from app.orchestrator.logwatch import MAX_READ_BYTES, LogFollower
from app.orchestrator.oom import LogScanner, OomFigures, OomMatch

if TYPE_CHECKING:
    from app.orchestrator.lifecycle.context import RunContext
    from app.orchestrator.lifecycle.status_writer import StatusWriter
    from app.store.tables import StatusRow

logger = logging.getLogger(__name__)

# Appended bytes read on the event loop itself; more go to a worker thread, chunk by chunk.
_INLINE_READ_BYTES = 16 * 1024
# Persist the offset at most this often when nothing notable was read: re-reading a minute of
# healthy lines after a restart is harmless, a commit per health-check access line is not.
_OFFSET_SAVE_INTERVAL_S = 60.0


@dataclass(frozen=True)
class OomFound:
    kind: FailureKind
    evidence: str
    figures: OomFigures = field(default_factory=OomFigures)

    @property
    def evidence_with_figures(self) -> str:
        """The evidence line, followed by the figures it states (`[needed 2.00 GiB, ...]`)."""
        summary = self.figures.summary()
        return f"{self.evidence} [{summary}]" if summary else self.evidence


@dataclass(frozen=True)
class _Chunk:
    """What one step in the worker thread read: whether there was anything, the first match."""

    read_any: bool
    match: OomMatch | None


class OomTracker:
    def __init__(self, model_id: str, ctx: RunContext, writer: StatusWriter) -> None:
        self.model_id = model_id
        self.ctx = ctx
        self.writer = writer
        status = writer.status
        path = ctx.log_path(model_id)
        if _has_lines(path) and _never_read(status):
            _claim(path, status)
        self.follower = LogFollower(path, offset=status.log_offset, inode=status.log_inode)
        self.scanner = LogScanner()
        self._saved_at = ctx.clock.monotonic()
        self._saved = (status.log_offset, status.log_inode)

    async def read(self, *, run_token: str | None) -> OomFound | None:
        """Read what was appended; return the first OOM of the current run not yet counted.

        `run_token` is the launch token of the run that writes the log now, None when no run
        does: then a file rotated away from under the engine is finished and left.
        """
        first: OomMatch | None = None
        writer_running = run_token is not None
        while True:
            pending = self.follower.pending_bytes()
            if pending is not None and pending <= _INLINE_READ_BYTES:
                chunk = self._read_chunk(_INLINE_READ_BYTES, writer_running=writer_running)
            else:
                chunk = await asyncio.to_thread(
                    self._read_chunk, MAX_READ_BYTES, writer_running=writer_running
                )
            if first is None:
                first = chunk.match
            if not chunk.read_any:
                break
        # Kept in the status in memory, so any status change persists it too.
        status = self.writer.status
        status.log_offset, status.log_inode = self.follower.offset, self.follower.inode
        found = self._countable(first, run_token)
        if found is not None:
            self._count(found, run_token)
        elif self._offset_changed() and self._save_due():
            self._save_offset()
        return found

    def _read_chunk(self, max_bytes: int, *, writer_running: bool) -> _Chunk:
        """One bounded step: read up to `max_bytes` of whole lines, classify them."""
        lines = self.follower.read_chunk(max_bytes=max_bytes, writer_running=writer_running)
        first: OomMatch | None = None
        for line in lines:
            match = self.scanner.feed(line)
            if first is None:
                first = match
        return _Chunk(read_any=bool(lines), match=first)

    def count_exit(self, found: OomFound, *, run_token: str) -> None:
        """Count an OOM that the log cannot show (the kernel's OOM killer leaves no line), once
        per run like one found in the log."""
        if self.writer.status.notes.get("oom_counted_token") != run_token:
            self._count(found, run_token)

    def _countable(self, match: OomMatch | None, run_token: str | None) -> OomFound | None:
        if match is None or run_token is None:
            return None
        if self.writer.status.notes.get("oom_counted_token") == run_token:
            return None
        return OomFound(kind=match.kind, evidence=match.evidence, figures=match.figures)

    def _count(self, found: OomFound, run_token: str | None) -> None:
        self.ctx.metrics.vllm_ooms_total.labels(model=self.model_id).inc()
        status = self.writer.status
        self.writer.save(
            {
                "kind": "oom",
                "reason": found.evidence,
                "data": {
                    "kind": found.kind.value,
                    "evidence": found.evidence,
                    "figures": found.figures.as_dict(),
                },
            },
            ooms_total=status.ooms_total + 1,
            notes={**status.notes, "oom_counted_token": run_token},
        )
        self._mark_saved()

    def _offset_changed(self) -> bool:
        return self._saved != (self.follower.offset, self.follower.inode)

    def _save_due(self) -> bool:
        return self.ctx.clock.monotonic() - self._saved_at >= _OFFSET_SAVE_INTERVAL_S

    def _save_offset(self) -> None:
        self.writer.save()
        self._mark_saved()

    def _mark_saved(self) -> None:
        self._saved = (self.follower.offset, self.follower.inode)
        self._saved_at = self.ctx.clock.monotonic()

    def flush(self) -> None:
        if self._offset_changed():
            self._save_offset()


def _has_lines(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def _never_read(status: StatusRow) -> bool:
    """A model that has neither launched an engine nor read its log (a new one): whatever is
    at its log path was written before it existed."""
    return (
        status.launch_token is None
        and status.pid is None
        and status.log_inode is None
        and status.log_offset == 0
    )


def _claim(path: Path, status: StatusRow) -> None:
    """Keep a new model from judging an earlier model's log: a deleted model of the same id
    left `m.log` (its OOM traceback) behind. It is moved aside, still readable; where it cannot
    be, reading starts at its end instead."""
    try:
        moved = set_aside(path)
    except OSError as error:
        try:
            found = path.stat()
        except OSError:
            return
        logger.warning("%s: reading from its end, cannot move it aside: %s", path, error)
        status.log_offset, status.log_inode = found.st_size, found.st_ino
        return
    if moved is not None:
        logger.info("%s was written before this model existed: moved to %s", path, moved)


def set_aside(path: Path) -> Path | None:
    """Move a log left by an earlier model of the same id (deleted, then created again) out of
    the new model's way, to `<name>.deleted-<UTC time of its last line>`: still there to read,
    never judged as the new model's. Returns where it went; None when there was nothing to move
    (no file, an empty one). OSError when it cannot be moved."""
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    if found.st_size == 0:
        return None
    stamp = datetime.fromtimestamp(found.st_mtime, UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.deleted-{stamp}")
    copy = 1
    while target.exists():  # a second earlier model whose last line fell in the same second
        copy += 1
        target = path.with_name(f"{path.name}.deleted-{stamp}-{copy}")
    os.rename(path, target)
    return target
