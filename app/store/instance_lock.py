"""One orchestrator per SQLite database: an exclusive lock that the kernel drops with its holder.

Two orchestrators on one database both supervise: each adopts the other's engines, a stop on one
makes the other relaunch, and a model ends up with two engines. So `serve` takes
`flock(LOCK_EX | LOCK_NB)` on `<database>.lock` before anything reads the store, and holds it for
the life of the process. The kernel releases a flock when the last descriptor of it closes, which
a process's death does however it dies (SIGKILL and OOM kill included): a crashed orchestrator
never blocks its successor, and there is no stale-pid check to get wrong.

The holder writes its pid, host and start time into the file, so the refusal names it. The lock
sits beside the database, not on it: SQLite locks byte ranges of its own file with fcntl, and the
two kinds of lock must not meet. The file is truncated on release but never deleted: unlinking a
lock file lets a newcomer lock a new inode while an older process still holds the old one.

The descriptor is opened close-on-exec (Python's default, spelled out): an engine the orchestrator
spawns must not inherit it, or the engine, which outlives its orchestrator, would hold the lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url

LOCK_SUFFIX = ".lock"
_HOLDER_MAX_BYTES = 4096


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock, as its holder wrote it; None for what could not be read."""

    pid: int | None
    host: str | None
    since: str | None

    def describe(self) -> str:
        if self.pid is None:
            # Locked, but the holder has not written itself down yet (it is starting).
            return "a process that has not recorded itself yet"
        return f"pid {self.pid} on host {self.host or '?'} since {self.since or '?'}"


class InstanceLockError(Exception):
    """The lock could not be taken; the message says why and what to do."""


class InstanceLockHeld(InstanceLockError):
    """Another orchestrator holds the database."""

    def __init__(self, lock_path: Path, holder: LockHolder) -> None:
        self.lock_path = lock_path
        self.holder = holder
        database = lock_path.with_name(lock_path.name.removesuffix(LOCK_SUFFIX))
        super().__init__(
            f"another gpu-orchestrator uses the database {database}: {holder.describe()} "
            f"(lock {lock_path}). Only one orchestrator may supervise a database: stop that one "
            "first, or give this one its own GPU_ORCH_STATE_DIR or GPU_ORCH_DATABASE_URL."
        )


class InstanceLock:
    """An exclusive, non-blocking flock on one file, held until `release` or process exit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock and record this process in it; a no-op when this object holds it.

        Raises InstanceLockHeld when another open of the file holds it (another process, or
        another InstanceLock in this one), InstanceLockError when the file cannot be locked."""
        if self._fd is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise InstanceLockError(f"cannot open the lock file {self.path}: {error}") from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _read_holder(fd)
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise InstanceLockHeld(self.path, holder) from None
            raise InstanceLockError(f"cannot lock {self.path}: {error}") from error
        self._fd = fd
        _write_holder(fd)

    def release(self) -> None:
        """Drop the lock (closing the file releases it); a no-op when not held."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # a reader between here and the close sees "not recorded"
        finally:
            os.close(fd)


def lock_path_for(database_url: str) -> Path | None:
    """`<database file>.lock` for a SQLite file URL; None when there is no file to guard.

    In-memory SQLite lives and dies with its process. Other databases (PostgreSQL) are shared by
    design: nodes there own models through leases in the database (a later issue), and a file on
    one host would say nothing about another."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if database.startswith("file:"):  # a SQLite URI filename (`?uri=true`)
        parts = urlsplit(database)
        if "mode=memory" in parts.query or url.query.get("mode") == "memory":
            return None
        database = parts.path
    if database in ("", ":memory:"):
        return None
    # Resolved, so two spellings of one file (relative, through a symlink) share one lock.
    resolved = Path(database).resolve()
    return resolved.with_name(resolved.name + LOCK_SUFFIX)


def instance_lock_for(database_url: str) -> InstanceLock | None:
    """The (not yet acquired) lock guarding `database_url`, or None where none applies."""
    path = lock_path_for(database_url)
    return None if path is None else InstanceLock(path)


def _write_holder(fd: int) -> None:
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    data = json.dumps(holder).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _read_holder(fd: int) -> LockHolder:
    try:
        data = json.loads(os.pread(fd, _HOLDER_MAX_BYTES, 0) or b"{}")
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    pid, host, since = data.get("pid"), data.get("host"), data.get("since")
    return LockHolder(
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        host=host if isinstance(host, str) else None,
        since=since if isinstance(since, str) else None,
    )
