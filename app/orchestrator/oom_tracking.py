"""Reading a model's log as it grows and counting each out-of-memory failure once.

The read offset is persisted with the status, so lines already seen are never read again, also
across orchestrator restarts; an OOM is counted once per engine run (its launch token), however
many lines of its traceback match and however often the file is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.orchestrator.logwatch import LogFollower
from app.orchestrator.oom import classify_line
from app.orchestrator.states import FailureKind

if TYPE_CHECKING:
    from app.orchestrator.engine_run import RunContext
    from app.orchestrator.transitions import StatusWriter

# Persist the offset at most this often when nothing notable was read: re-reading a minute of
# healthy lines after a restart is harmless, a commit per health-check access line is not.
_OFFSET_SAVE_INTERVAL_S = 60.0


@dataclass(frozen=True)
class OomFound:
    kind: FailureKind
    evidence: str


class OomTracker:
    def __init__(self, model_id: str, ctx: RunContext, writer: StatusWriter) -> None:
        self.model_id = model_id
        self.ctx = ctx
        self.writer = writer
        status = writer.status
        self.follower = LogFollower(
            ctx.log_path(model_id), offset=status.log_offset, inode=status.log_inode
        )
        self._saved_at = ctx.clock.monotonic()
        self._saved = (status.log_offset, status.log_inode)

    def read(self, *, run_token: str | None) -> OomFound | None:
        """Read what was appended; return the first OOM of the current run not yet counted."""
        found: OomFound | None = None
        for line in self.follower.read_new():
            match = classify_line(line)
            if match is None or found is not None or run_token is None:
                continue
            if self.writer.status.notes.get("oom_counted_token") == run_token:
                continue
            found = OomFound(kind=FailureKind(match.kind.value), evidence=match.evidence)
        # Kept in the status in memory, so any status change persists it too.
        status = self.writer.status
        status.log_offset, status.log_inode = self.follower.offset, self.follower.inode
        if found is not None:
            self._count(found, run_token)
        elif self._offset_changed() and self._save_due():
            self._save_offset()
        return found

    def _count(self, found: OomFound, run_token: str | None) -> None:
        self.ctx.metrics.vllm_ooms_total.labels(model=self.model_id).inc()
        status = self.writer.status
        self.writer.save(
            {
                "kind": "oom",
                "reason": found.evidence,
                "data": {"kind": found.kind.value, "evidence": found.evidence},
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
