"""Following engine logs as they grow: each line read once, across truncation and rotation.

One inotify watch (watchfiles) covers the whole log directory and wakes the follower of the file
that changed; a follower reads from its persisted offset to the end, so nothing is re-read.

Rotation (docs/operations/logs.md says which styles are safe):

- copytruncate keeps the inode and empties it: reading restarts at offset 0.
- rename + create (logrotate's default) moves the file the engine still writes to (`m.log` ->
  `m.log.1`) and puts an empty file at the name. Like `tail --follow=descriptor`, the follower
  keeps reading the file it has open, so an OOM the running engine prints after the rotation is
  still seen, and moves to the file at the name only once that one receives lines (the next
  engine run opens the name) or the run that wrote the old file has ended. After an orchestrator
  restart the persisted inode is looked up beside the name (`m.log.1`, `m.log-20250710`), so the
  engine's file is found again as long as it is not compressed yet (logrotate's delaycompress).
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

# A line longer than this is handed on in pieces of this size: a runaway engine must not make us
# buffer without bound, and no byte is dropped (the classifier judges adjacent pieces together).
MAX_LINE_BYTES = 64 * 1024
# One read: what a caller holds in memory at once, whatever the backlog. Small on purpose: a
# worker thread classifying a backlog hands the event loop a free turn after each chunk (a few
# ms of work), which kept /healthz under ~70 ms on a loaded 2-core machine where 1 MiB chunks
# let it reach ~150 ms (tests/lifecycle/test_log_backlog.py).
MAX_READ_BYTES = 64 * 1024
# Bytes remembered before the offset, to notice a file truncated and refilled past it.
_SEEN_TAIL_BYTES = 64
# Separators logrotate puts between a log's name and its rotation suffix (`.1`, `-20250710`).
_ROTATION_SEPARATORS = (".", "-")


class LogFollower:
    """Reads the complete lines appended to one engine's log since the last read.

    `offset` and `inode` describe the file being read (persisted with the status); they name the
    rotated file, not the one at `path`, while the engine still writes to the rotated one. Not
    thread-safe: one reader at a time (the model's supervisor), which may run it in a thread.
    """

    def __init__(self, path: Path, *, offset: int = 0, inode: int | None = None) -> None:
        self.path = path
        self.offset = offset
        self.inode = inode
        self._file: int | None = None  # descriptor of `inode`, kept open like `tail -f`
        self._seen_tail = b""  # the last bytes read, just before `offset`

    # -- reading --------------------------------------------------------------------------
    def read_chunk(
        self, *, max_bytes: int = MAX_READ_BYTES, writer_running: bool = True
    ) -> list[str]:
        """The next complete lines, at most about `max_bytes` of them; [] once caught up.

        `writer_running` says whether the engine run that writes the open file may still be
        writing: while it is, a rotated file is kept until a new file at the name has lines.
        """
        while True:
            fd = self._open()
            if fd is None:
                return []
            lines = self._read_from(fd, max_bytes, final=False)
            if lines:
                return lines
            if not self._moved_on(fd, writer_running=writer_running):
                return []
            # The rotated file is done: its unterminated last line, if any, is complete now.
            tail = self._read_from(fd, max_bytes, final=True)
            self._switch_to_path()
            if tail:
                return tail

    def read_new(self, *, writer_running: bool = True) -> list[str]:
        """Everything appended since the last read (tests and small files; the tracker reads
        chunk by chunk)."""
        lines: list[str] = []
        while chunk := self.read_chunk(writer_running=writer_running):
            lines.extend(chunk)
        return lines

    def __del__(self) -> None:
        self.close()

    def pending_bytes(self) -> int | None:
        """Bytes appended to the open file since the last read; None when unknown (no file
        open yet, or the file shrank)."""
        if self._file is None:
            return None
        try:
            pending = os.fstat(self._file).st_size - self.offset
        except OSError:
            return None
        return pending if pending >= 0 else None

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                os.close(self._file)
            self._file = None

    def tail(self, count: int) -> list[str]:
        return tail_lines(self.path, count)

    # -- which file -----------------------------------------------------------------------
    def _open(self) -> int | None:
        """The descriptor to read: the one held, else the recorded file, else the file at the
        name (a recorded file that has vanished is replaced by the name's, read from 0)."""
        if self._file is None:
            if self.inode is not None:
                rotated = self._find_by_inode(self.inode)
                if rotated is not None:
                    self._file = rotated
                    return self._checked(rotated)
            try:
                self._file = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
            inode = os.fstat(self._file).st_ino
            if inode != self.inode:
                self.offset = 0
            self.inode = inode
        return self._checked(self._file)

    def _checked(self, fd: int) -> int:
        if os.fstat(fd).st_size < self.offset or not self._still_before_offset(fd):
            # Truncated in place (copytruncate): start again at the beginning.
            self.offset = 0
            self._seen_tail = b""
        return fd

    def _still_before_offset(self, fd: int) -> bool:
        """Whether the bytes last read still end at the offset. A writer that appends right
        after copytruncate can grow the file past the old offset before we look, so the size
        alone would not show the truncation."""
        if not self._seen_tail or self.offset < len(self._seen_tail):
            return True
        start = self.offset - len(self._seen_tail)
        return os.pread(fd, len(self._seen_tail), start) == self._seen_tail

    def _find_by_inode(self, inode: int) -> int | None:
        """Open the file with this inode: at the name, or a rotated sibling of it."""
        candidates = [self.path]
        with contextlib.suppress(OSError):
            candidates += sorted(
                entry
                for entry in self.path.parent.iterdir()
                if _rotation_of(entry.name) == self.path.name
            )
        for candidate in candidates:
            try:
                if candidate.stat().st_ino != inode:
                    continue
                fd = os.open(candidate, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            if os.fstat(fd).st_ino == inode:
                return fd
            os.close(fd)
        return None

    def _moved_on(self, fd: int, *, writer_running: bool) -> bool:
        """Whether the name now holds another file that reading should move to."""
        try:
            at_name = self.path.stat()
        except OSError:
            # Nothing at the name: keep the open (perhaps deleted) file while its writer runs,
            # then let it go, so a deleted log's space is freed.
            return not writer_running
        if at_name.st_ino == os.fstat(fd).st_ino:
            return False
        # Rotated by rename. The running engine still writes to the old file; the new one gets
        # lines only from the next run (which opens the name), so lines there mean the old
        # writer is done.
        return at_name.st_size > 0 or not writer_running

    def _switch_to_path(self) -> None:
        self.close()
        self.inode = None  # whatever is at the name is new: read it from its start
        self.offset = 0
        self._seen_tail = b""

    # -- bytes to lines -------------------------------------------------------------------
    def _read_from(self, fd: int, max_bytes: int, *, final: bool) -> list[str]:
        data = os.pread(fd, max_bytes, self.offset)
        if not data:
            return []
        end = data.rfind(b"\n")
        if end < 0 and len(data) == max_bytes < MAX_LINE_BYTES:
            # A first line longer than the chunk: read on to its end (or to the piece size)
            # rather than take an unfinished read for a partial line.
            data = os.pread(fd, MAX_LINE_BYTES, self.offset)
            end = data.rfind(b"\n")
        if end >= 0:
            complete = data[: end + 1]
        elif final or len(data) >= MAX_LINE_BYTES:
            complete = data  # a line without its end yet, too long to hold back
        else:
            return []  # a partial line: wait for its end
        self.offset += len(complete)
        self._seen_tail = complete[-_SEEN_TAIL_BYTES:]
        lines: list[str] = []
        for raw in complete.splitlines():
            for start in range(0, max(len(raw), 1), MAX_LINE_BYTES):
                lines.append(raw[start : start + MAX_LINE_BYTES].decode("utf-8", errors="replace"))
        return lines


def _rotation_of(name: str) -> str | None:
    """The log name a rotated file's name derives from (`m.log.1`, `m.log-20250710.gz` ->
    `m.log`); None for a name without a separator. Only a prefix ending at a separator counts."""
    for cut in range(len(name) - 1, 0, -1):
        if name[cut] in _ROTATION_SEPARATORS and name[:cut].endswith(".log"):
            return name[:cut]
    return None


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
    """One task that turns inotify events in the log directory into per-file callbacks.

    A change to a rotated file (`m.log.1`) wakes the subscriber of `m.log`: after a rotation by
    rename the running engine writes there.
    """

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

    def callback_for(self, name: str) -> Callable[[], None] | None:
        """The callback a change to the file `name` wakes, if any."""
        callback = self._callbacks.get(name)
        if callback is None:
            rotated_from = _rotation_of(name)
            if rotated_from is not None:
                callback = self._callbacks.get(rotated_from)
        return callback

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
                callback = self.callback_for(name)
                if callback is not None:
                    with contextlib.suppress(Exception):
                        callback()
