"""Following a log: each line once, partial lines held back, truncation and rotation."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from app.orchestrator.logwatch import MAX_LINE_BYTES, LogDirWatcher, LogFollower, tail_lines


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


def test_logwatch_copytruncate_while_the_writer_appends(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    with log.open("ab", buffering=0) as engine:  # O_APPEND, as the launchers open it
        engine.write(b"before the copy, a long line\n")
        follower = LogFollower(log)
        assert follower.read_new() == ["before the copy, a long line"]
        (tmp_path / "m.log.1").write_bytes(log.read_bytes())
        os.truncate(log, 0)
        engine.write(b"RuntimeError: CUDA error: out of memory\n")
        assert follower.read_new() == ["RuntimeError: CUDA error: out of memory"]


def test_logwatch_survives_rotation(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    log.write_text("before rotation\n")
    follower = LogFollower(log)
    follower.read_new()
    log.rename(tmp_path / "m.log.1")
    log.write_text("after rotation, a longer line than before\n")
    assert follower.read_new() == ["after rotation, a longer line than before"]


def test_logwatch_follows_the_renamed_file_while_its_writer_runs(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    with log.open("ab", buffering=0) as engine:
        engine.write(b"loading\n")
        follower = LogFollower(log)
        assert follower.read_new() == ["loading"]
        log.rename(tmp_path / "m.log.1")  # logrotate's `create`: mv, then a new empty file
        log.touch()
        engine.write(b"torch.OutOfMemoryError: CUDA out of memory.\n")
        assert follower.read_new() == ["torch.OutOfMemoryError: CUDA out of memory."]
        assert follower.inode == (tmp_path / "m.log.1").stat().st_ino
        engine.write(b"unfinished")
    # The run ended: the rest of the old file (its last line without an end) is read, then the
    # file at the name from its start.
    with log.open("ab") as next_run:
        next_run.write(b"second run\n")
    assert follower.read_new(writer_running=False) == ["unfinished", "second run"]
    assert follower.inode == log.stat().st_ino


def test_logwatch_moves_to_the_new_file_once_the_next_run_writes_there(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    log.write_text("first run\n")
    follower = LogFollower(log)
    follower.read_new()
    log.rename(tmp_path / "m.log.1")
    log.touch()
    assert follower.read_new() == []  # nothing new anywhere: keep the engine's file
    assert follower.inode == (tmp_path / "m.log.1").stat().st_ino
    log.write_text("second run\n")
    assert follower.read_new() == ["second run"]


def test_logwatch_finds_the_rotated_file_again_after_a_restart(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    log.write_text("seen\n")
    first = LogFollower(log)
    first.read_new()
    offset, inode = first.offset, first.inode
    first.close()
    # While the orchestrator was down: rotated by rename, and the engine kept writing.
    rotated = tmp_path / "m.log-20250710"
    log.rename(rotated)
    log.touch()
    with rotated.open("a") as engine:
        engine.write("ValueError: No available memory for the cache blocks.\n")
    resumed = LogFollower(log, offset=offset, inode=inode)
    assert resumed.read_new() == ["ValueError: No available memory for the cache blocks."]
    assert resumed.inode == inode


def test_logwatch_reads_a_vanished_recorded_file_from_the_new_start(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    log.write_text("a new file with its own lines\n")
    follower = LogFollower(log, offset=10_000, inode=log.stat().st_ino + 12345)
    assert follower.read_new() == ["a new file with its own lines"]


def test_logwatch_reads_in_bounded_chunks(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    log.write_text("".join(f"line {index:06d}\n" for index in range(10_000)))
    follower = LogFollower(log)
    chunks = []
    while chunk := follower.read_chunk(max_bytes=4096):
        assert sum(len(line) + 1 for line in chunk) <= 4096
        chunks.append(chunk)
    assert len(chunks) > 20
    assert [line for chunk in chunks for line in chunk] == [
        f"line {index:06d}" for index in range(10_000)
    ]


def test_logwatch_hands_an_overlong_line_on_in_pieces(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    long_line = "#" * (MAX_LINE_BYTES * 2 + 10)
    log.write_text(long_line + "\nnext\n")
    lines = LogFollower(log).read_new()
    assert "".join(lines[:-1]) == long_line
    assert all(len(piece) <= MAX_LINE_BYTES for piece in lines)
    assert lines[-1] == "next"


def test_logwatch_tail_returns_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail_lines(log, 3) == ["line 97", "line 98", "line 99"]
    assert tail_lines(tmp_path / "missing.log", 3) == []


def test_logwatch_dir_watcher_wakes_the_log_of_a_rotated_file(tmp_path: Path) -> None:
    watcher = LogDirWatcher(tmp_path)
    calls: list[str] = []
    watcher.subscribe("m.log", lambda: calls.append("m"))
    watcher.subscribe("m.2.log", lambda: calls.append("m.2"))
    for name, expected in [
        ("m.log", "m"),
        ("m.log.1", "m"),
        ("m.log-20250710", "m"),
        ("m.log.2.gz", "m"),
        ("m.2.log", "m.2"),
        ("m.2.log.1", "m.2"),
    ]:
        callback = watcher.callback_for(name)
        assert callback is not None, name
        callback()
        assert calls[-1] == expected, name
    assert watcher.callback_for("other.log") is None
    assert watcher.callback_for("other.log.1") is None
    assert watcher.callback_for("m") is None


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


async def test_logwatch_dir_watcher_wakes_on_writes_to_the_rotated_file(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    rotated = tmp_path / "m.log.1"
    log.write_text("start\n")
    log.rename(rotated)
    watcher = LogDirWatcher(tmp_path)
    woken = asyncio.Event()
    watcher.subscribe("m.log", woken.set)
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))
    await watcher.wait_ready()
    for _attempt in range(50):
        with rotated.open("a") as engine:
            engine.write("still writing to the renamed file\n")
        try:
            await asyncio.wait_for(woken.wait(), 0.2)
            break
        except TimeoutError:
            continue
    assert woken.is_set()
    stop.set()
    await asyncio.wait_for(task, 5)


def test_logwatch_lets_a_deleted_log_go_once_its_writer_is_done(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    log.write_text("first\n")
    follower = LogFollower(log)
    follower.read_new()
    with log.open("a") as engine:
        log.unlink()
        engine.write("Killed\n")
    assert follower.read_new() == ["Killed"]  # the engine's file, though deleted
    assert follower.read_new(writer_running=False) == []
    assert follower.inode is None and follower.offset == 0
    log.write_text("a new log\n")
    assert follower.read_new() == ["a new log"]


def test_logwatch_reads_a_line_longer_than_the_chunk_asked_for(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    long_line = "x" * 10_000
    log.write_text(long_line + "\nnext\n")
    follower = LogFollower(log)
    assert follower.read_chunk(max_bytes=4096) == [long_line, "next"]


def test_logwatch_pending_bytes_counts_what_was_appended(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    log.write_text("one\n")
    follower = LogFollower(log)
    assert follower.pending_bytes() is None  # nothing opened yet
    follower.read_new()
    assert follower.pending_bytes() == 0
    with log.open("a") as handle:
        handle.write("two\n")
    assert follower.pending_bytes() == 4
