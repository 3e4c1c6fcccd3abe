"""Following a log: each line once, partial lines held back, truncation and rotation."""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.orchestrator.logwatch import LogDirWatcher, LogFollower, tail_lines


def test_logwatch_reads_each_line_once_and_holds_partial_lines(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    log.write_text("one\ntwo\npart")
    follower = LogFollower(log)
    assert follower.read_new() == ["one", "two"]
    assert follower.read_new() == []
    with log.open("a") as handle:
        handle.write("ial\nthree\n")
    assert follower.read_new() == ["partial", "three"]
    assert follower.offset == log.stat().st_size


def test_logwatch_resumes_from_a_persisted_offset(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    log.write_text("old\nnew\n")
    first = LogFollower(log)
    first.read_new()
    with log.open("a") as handle:
        handle.write("later\n")
    resumed = LogFollower(log, offset=len("old\nnew\n"), inode=first.inode)
    assert resumed.read_new() == ["later"]


def test_logwatch_survives_truncation(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    log.write_text("a long first line\n")
    follower = LogFollower(log)
    follower.read_new()
    log.write_text("x\n")  # copytruncate
    assert follower.read_new() == ["x"]


def test_logwatch_survives_rotation(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    log.write_text("before rotation\n")
    follower = LogFollower(log)
    follower.read_new()
    log.rename(tmp_path / "m.log.1")
    log.write_text("after rotation, a longer line than before\n")
    assert follower.read_new() == ["after rotation, a longer line than before"]


def test_logwatch_tail_returns_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail_lines(log, 3) == ["line 97", "line 98", "line 99"]
    assert tail_lines(tmp_path / "missing.log", 3) == []


async def test_logwatch_dir_watcher_calls_back_on_append(tmp_path: Path) -> None:
    watcher = LogDirWatcher(tmp_path)
    woken = asyncio.Event()
    watcher.subscribe("m.log", woken.set)
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))
    await watcher.wait_ready()
    log = tmp_path / "m.log"
    for _attempt in range(50):  # inotify is armed shortly after run() begins
        with log.open("a") as handle:
            handle.write("CUDA out of memory\n")
        try:
            await asyncio.wait_for(woken.wait(), 0.2)
            break
        except TimeoutError:
            continue
    assert woken.is_set()
    stop.set()
    await asyncio.wait_for(task, 5)
