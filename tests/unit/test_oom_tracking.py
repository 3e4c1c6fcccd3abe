"""OomTracker with an in-memory status and clock: each OOM counted once per run, a backlog read
off the event loop in bounded chunks, the engine's file followed across a rename rotation."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from app.orchestrator.failures import FailureKind
from app.orchestrator.oom_tracking import OomTracker

OOM_LINE = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.\n"


@dataclass
class FakeStatus:
    log_offset: int = 0
    log_inode: int | None = None
    ooms_total: int = 0
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class FakeWriter:
    status: FakeStatus = field(default_factory=FakeStatus)
    saved_events: list[dict[str, Any] | None] = field(default_factory=list)

    def save(self, event: dict[str, Any] | None = None, **changes: Any) -> None:
        self.saved_events.append(event)
        for name, value in changes.items():
            setattr(self.status, name, value)


class FakeCounter:
    def __init__(self) -> None:
        self.count = 0

    def labels(self, **_labels: str) -> FakeCounter:
        return self

    def inc(self) -> None:
        self.count += 1


@dataclass
class FakeMetrics:
    vllm_ooms_total: FakeCounter = field(default_factory=FakeCounter)


class FakeClock:
    def monotonic(self) -> float:
        return 0.0


@dataclass
class FakeContext:
    log_dir: Path
    metrics: FakeMetrics = field(default_factory=FakeMetrics)
    clock: FakeClock = field(default_factory=FakeClock)

    def log_path(self, model_id: str) -> Path:
        return self.log_dir / f"{model_id}.log"


def _tracker(tmp_path: Path) -> tuple[OomTracker, FakeWriter, FakeContext]:
    ctx = FakeContext(tmp_path)
    writer = FakeWriter()
    return OomTracker("m", cast(Any, ctx), cast(Any, writer)), writer, ctx


async def test_oom_tracking_counts_an_oom_once_per_run(tmp_path: Path) -> None:
    tracker, writer, ctx = _tracker(tmp_path)
    log = ctx.log_path("m")
    log.write_text("INFO start\n" + OOM_LINE + OOM_LINE)

    found = await tracker.read(run_token="run-1")
    with log.open("a") as engine:
        engine.write(OOM_LINE)
    again = await tracker.read(run_token="run-1")

    assert found is not None and found.kind is FailureKind.GPU_OOM
    assert found.figures.needed == "2.00 GiB"
    assert again is None
    assert writer.status.ooms_total == 1 and ctx.metrics.vllm_ooms_total.count == 1
    event = writer.saved_events[-1]
    assert event is not None and event["data"]["figures"]["needed"] == "2.00 GiB"
    assert writer.status.log_offset == log.stat().st_size


async def test_oom_tracking_judges_no_run_when_none_runs(tmp_path: Path) -> None:
    tracker, writer, ctx = _tracker(tmp_path)
    ctx.log_path("m").write_text(OOM_LINE)

    assert await tracker.read(run_token=None) is None
    assert writer.status.ooms_total == 0


async def test_oom_tracking_reads_a_backlog_off_the_loop_in_bounded_chunks(
    tmp_path: Path,
) -> None:
    tracker, _writer, ctx = _tracker(tmp_path)
    block = ('INFO:     127.0.0.1:51734 - "GET /health HTTP/1.1" 200 OK\n' * 16_000).encode()
    with ctx.log_path("m").open("wb") as log:
        for _block in range(40):  # about 40 MB
            log.write(block)
        log.write(OOM_LINE.encode())
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    found = await tracker.read(run_token="run-1")
    done.set()
    await ticking

    assert found is not None and found.evidence == OOM_LINE.strip()
    assert len(gaps) > 10, "the loop ran while the backlog was read"
    assert max(gaps) < 0.1, f"the loop stalled {max(gaps) * 1000:.0f} ms"


async def test_oom_tracking_follows_the_engines_file_after_a_rename(tmp_path: Path) -> None:
    tracker, writer, ctx = _tracker(tmp_path)
    log = ctx.log_path("m")
    with log.open("a") as engine:
        engine.write("INFO serving\n")
        engine.flush()
        assert await tracker.read(run_token="run-1") is None
        log.rename(tmp_path / "m.log.1")
        log.touch()
        engine.write(OOM_LINE)
    found = await tracker.read(run_token="run-1")

    assert found is not None and found.kind is FailureKind.GPU_OOM
    assert writer.status.log_inode == (tmp_path / "m.log.1").stat().st_ino
    # The run has ended: the next read moves to the file at the name.
    assert await tracker.read(run_token=None) is None
    assert writer.status.log_inode == log.stat().st_ino
