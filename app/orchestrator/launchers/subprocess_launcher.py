"""Engines as subprocesses in their own session and process group, output appended to a file.

A file, not a pipe, so the engine outlives an orchestrator restart without blocking on a full
pipe; a session of its own, so a signal to the orchestrator's group never reaches it.

In a container with a memory limit, the kernel's OOM killer ends an engine without a line in
its log. The kernel counts each such kill in the engine's memory cgroup (`oom_kill` in
`memory.events` on cgroup v2, in `memory.oom_control` on v1): the count is taken at launch and
compared after the exit. Parsing is kept apart from reading (tests/fixtures/cgroup/).
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from app.orchestrator.launchers import process
from app.orchestrator.launchers.base import (
    EngineHandle,
    EngineRecord,
    ExitCause,
    LaunchError,
    LaunchRequest,
    memory_size,
)

# The handle's notes (persisted with the status) that carry the count taken at launch.
COUNTER_NOTE = "cgroup_oom_counter"
KILLS_NOTE = "cgroup_oom_kills"
ROOT_NOTE = "cgroup_root"
# cgroup v1 reports "no limit" as the largest page-aligned 64-bit value (9223372036854771712).
_V1_UNLIMITED_BYTES = 2**62
_MOUNTINFO_ESCAPES = (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\"))


@dataclass(frozen=True)
class MemoryCgroup:
    """Where the kernel counts a process's OOM kills: its memory cgroup's directory, the mount
    it lies under, and which cgroup version names the files."""

    directory: PurePosixPath
    root: PurePosixPath
    version: int

    @property
    def counter(self) -> PurePosixPath:
        return self.directory / ("memory.events" if self.version == 2 else "memory.oom_control")

    def limit_files(self) -> list[PurePosixPath]:
        """The limit files of the cgroup and of each ancestor up to the mount: the lowest limit
        set among them is the one in force."""
        name = "memory.max" if self.version == 2 else "memory.limit_in_bytes"
        files, directory = [], self.directory
        while True:
            files.append(directory / name)
            if directory == self.root or directory == directory.parent:
                return files
            directory = directory.parent


def memory_cgroup(proc_cgroup: str, mountinfo: str) -> MemoryCgroup | None:
    """The memory cgroup of a process from its /proc/<pid>/cgroup and /proc/<pid>/mountinfo.

    A v1 `memory` hierarchy, where mounted, holds the controller (a controller lives in one
    hierarchy only, so a hybrid host's cgroup2 mount has no memory files); else the unified one.
    """
    v2_path, v1_path = None, None
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2_path = path
        elif "memory" in controllers.split(","):
            v1_path = path
    v1_mount, v2_mount = None, None
    for line in mountinfo.splitlines():
        fields, _, filesystem = line.partition(" - ")
        parts, fs_parts = fields.split(), filesystem.split()
        if len(parts) < 5 or len(fs_parts) < 3:
            continue
        mount = (PurePosixPath(parts[3]), PurePosixPath(_unescape(parts[4])))
        if fs_parts[0] == "cgroup" and "memory" in fs_parts[2].split(","):
            v1_mount = mount
        elif fs_parts[0] == "cgroup2":
            v2_mount = v2_mount or mount
    if v1_mount is not None and v1_path is not None:
        return _under(v1_mount, v1_path, version=1)
    if v2_mount is not None and v2_path is not None:
        return _under(v2_mount, v2_path, version=2)
    return None


def _unescape(field: str) -> str:
    """mountinfo writes a space in a path as `\\040` (tab, newline, backslash likewise)."""
    for escaped, char in _MOUNTINFO_ESCAPES:
        field = field.replace(escaped, char)
    return field


def _under(mount: tuple[PurePosixPath, PurePosixPath], path: str, *, version: int) -> MemoryCgroup:
    """The directory of cgroup `path` where a mount shows it. A mount may show a subtree only
    (its root field, e.g. a container's cgroup): the path is taken relative to that subtree."""
    mount_root, mount_point = mount
    cgroup = PurePosixPath(path or "/")
    if cgroup.is_relative_to(mount_root):
        cgroup = PurePosixPath("/") / cgroup.relative_to(mount_root)
    return MemoryCgroup(
        directory=mount_point.joinpath(*cgroup.parts[1:]), root=mount_point, version=version
    )


def oom_kill_count(counter_text: str) -> int | None:
    """The `oom_kill N` line of memory.events (v2) or memory.oom_control (v1); None when the
    kernel has no such counter (v1 before Linux 4.13)."""
    for line in counter_text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None


def memory_limit_bytes(limit_text: str) -> int | None:
    """memory.max (`max` or bytes) or memory.limit_in_bytes; None when unlimited."""
    value = limit_text.strip()
    if not value.isdigit():
        return None
    count = int(value)
    return None if count >= _V1_UNLIMITED_BYTES else count


def _read(path: PurePosixPath | Path) -> str | None:
    try:
        return Path(path).read_text(encoding="ascii", errors="replace")
    except OSError:
        return None


def cgroup_notes(pid: int) -> dict[str, str]:
    """The notes that let `exit_cause` compare the engine cgroup's OOM-kill count after the
    exit with the count now; none when the kernel does not say."""
    proc_cgroup = _read(Path(f"/proc/{pid}/cgroup"))
    mountinfo = _read(Path(f"/proc/{pid}/mountinfo"))
    if proc_cgroup is None or mountinfo is None:
        return {}
    cgroup = memory_cgroup(proc_cgroup, mountinfo)
    counter_text = _read(cgroup.counter) if cgroup is not None else None
    kills = oom_kill_count(counter_text) if counter_text is not None else None
    if cgroup is None or kills is None:
        return {}
    return {COUNTER_NOTE: str(cgroup.counter), KILLS_NOTE: str(kills), ROOT_NOTE: str(cgroup.root)}


def cgroup_exit_cause(notes: dict[str, str]) -> ExitCause | None:
    """An OOM kill when the cgroup's count grew since `cgroup_notes` took it."""
    counter, before = notes.get(COUNTER_NOTE), notes.get(KILLS_NOTE)
    if counter is None or before is None or not before.isdigit():
        return None
    counter_path = PurePosixPath(counter)
    counter_text = _read(counter_path)
    after = oom_kill_count(counter_text) if counter_text is not None else None
    if after is None or after <= int(before):
        return None
    cgroup = MemoryCgroup(
        directory=counter_path.parent,
        root=PurePosixPath(notes.get(ROOT_NOTE, "/")),
        version=2 if counter_path.name == "memory.events" else 1,
    )
    limits = [memory_limit_bytes(text) for text in map(_read, cgroup.limit_files()) if text]
    set_limits = [limit for limit in limits if limit is not None]
    limit = memory_size(min(set_limits)) if set_limits else None
    evidence = f"{counter_path.name} oom_kill {before} -> {after} in {counter_path.parent}"
    return ExitCause(kind="oom_kill", memory_limit=limit, evidence=evidence)


class SubprocessLauncher:
    name = "subprocess"

    def __init__(self) -> None:
        # Children we spawned, kept so their exit is reaped and its code known.
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    async def launch(self, request: LaunchRequest) -> EngineHandle:
        try:
            request.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = request.log_path.open("ab")
        except OSError as error:
            raise LaunchError(f"cannot open engine log {request.log_path}: {error}") from error
        with log:
            try:
                # Popen, not asyncio's: fork+exec takes milliseconds, and asyncio's child
                # watcher would reap engines we follow by pidfd (and adopt after restarts).
                child = subprocess.Popen(  # noqa: ASYNC220
                    request.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=request.env,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as error:
                raise LaunchError(f"cannot execute {request.argv[0]!r}: {error}") from error
        started = process.create_time(child.pid)
        if started is None:
            # Exited before it could be looked at; reap it and report what it said.
            code = child.wait()
            raise LaunchError(f"engine exited at once with code {code}")
        self._children[child.pid] = child
        return EngineHandle(
            pid=child.pid,
            create_time=started,
            launcher=self.name,
            limits_enforced=False,
            notes={
                "limits": "memory_max and cpu_quota are not enforced by the subprocess launcher",
                **cgroup_notes(child.pid),
            },
        )

    async def wait_exit(self, handle: EngineHandle) -> int | None:
        await process.wait_pid_exit(handle.pid, handle.create_time)
        child = self._children.pop(handle.pid, None)
        return None if child is None else child.wait()

    async def stop(self, handle: EngineHandle, *, grace_s: float) -> None:
        # The engine leads its own group (start_new_session), so pgid == pid.
        await process.terminate_group(handle.pid, grace_s=grace_s)
        child = self._children.pop(handle.pid, None)
        if child is not None:
            child.wait()

    def is_alive(self, handle: EngineHandle) -> bool:
        return process.is_same_process(handle.pid, handle.create_time)

    async def find(self, record: EngineRecord) -> EngineHandle | None:
        handle = await asyncio.to_thread(process.find_recorded, record, self.name)
        if handle is None:
            return None
        # Adopted after an orchestrator restart: OOM kills are counted from now on.
        return dataclasses.replace(handle, notes={**handle.notes, **cgroup_notes(handle.pid)})

    async def clear_leftovers(self, record: EngineRecord, *, grace_s: float) -> list[int]:
        return await process.terminate_leftovers(record, grace_s=grace_s)

    async def exit_cause(self, handle: EngineHandle) -> ExitCause | None:
        return cgroup_exit_cause(handle.notes)
