"""Following engine logs as they grow: each line read once, across truncation and rotation.

One inotify watch (watchfiles) covers the whole log directory and wakes the follower of the file
that changed; a follower reads from its persisted offset to the end, so nothing is re-read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from watchfiles import awatch

logger = logging.getLogger(__name__)

# A line longer than this is cut: a runaway engine must not make us buffer without bound.
MAX_LINE_BYTES = 64 * 1024
MAX_READ_BYTES = 4 * 1024 * 1024


class LogFollower:
    """Reads the complete lines appended to one file since the last read."""

    def __init__(self, path: Path, *, offset: int = 0, inode: int | None = None) -> None:
        self.path = path
        self.offset = offset
        self.inode = inode

    def read_new(self) -> list[str]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return []
        if self.inode is not None and stat.st_ino != self.inode:
            # Rotated: a new file took the name; read it from its start.
            self.offset = 0
        elif stat.st_size < self.offset:
            # Truncated in place (copytruncate): start again at the beginning.
            self.offset = 0
        self.inode = stat.st_ino
        lines: list[str] = []
        while chunk := self._read_chunk():
            lines.extend(chunk)
        return lines

    def _read_chunk(self) -> list[str]:
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read(MAX_READ_BYTES)
        end = data.rfind(b"\n")
        if end < 0:
            if len(data) < MAX_LINE_BYTES:
                return []  # a partial line: wait for its end
            end = len(data) - 1
        complete = data[: end + 1]
        self.offset += len(complete)
        return [
            raw[:MAX_LINE_BYTES].decode("utf-8", errors="replace") for raw in complete.splitlines()
        ]

    def tail(self, count: int) -> list[str]:
        return tail_lines(self.path, count)


def tail_lines(path: Path, count: int, *, max_bytes: int = 1024 * 1024) -> list[str]:
    """The last `count` lines of a file, reading at most max_bytes from its end."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-count:] if count > 0 else []


class LogDirWatcher:
    """One task that turns inotify events in the log directory into per-file callbacks."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._callbacks: dict[str, Callable[[], None]] = {}
        self._ready = asyncio.Event()

    def subscribe(self, filename: str, callback: Callable[[], None]) -> None:
        self._callbacks[filename] = callback

    def unsubscribe(self, filename: str) -> None:
        self._callbacks.pop(filename, None)

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            # The service keeps serving; starts will fail with this reason until it is fixed.
            logger.error("cannot watch engine logs in %s: %s", self.directory, error)
            self._ready.set()
            return
        self._ready.set()
        # step/debounce in ms: deliver a change within ~20 ms, not watchfiles' default 1.6 s;
        # a 2 ms step cost ~1% of a core idle, 20 ms ~0.1% (bench/scale.py).
        async for changes in awatch(
            self.directory, stop_event=stop, debounce=50, step=20, recursive=False
        ):
            for name in {Path(path).name for _change, path in changes}:
                callback = self._callbacks.get(name)
                if callback is not None:
                    with contextlib.suppress(Exception):
                        callback()
