"""Engines as subprocesses in their own session and process group, output appended to a file.

A file, not a pipe, so the engine outlives an orchestrator restart without blocking on a full
pipe; a session of its own, so a signal to the orchestrator's group never reaches it.
"""

from __future__ import annotations

import asyncio
import subprocess

from app.orchestrator.launchers import process
from app.orchestrator.launchers.base import (
    EngineHandle,
    EngineRecord,
    LaunchError,
    LaunchRequest,
)


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
                "limits": "memory_max and cpu_quota are not enforced by the subprocess launcher"
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
        return await asyncio.to_thread(process.find_recorded, record, self.name)

    async def clear_leftovers(self, record: EngineRecord, *, grace_s: float) -> list[int]:
        return await process.terminate_leftovers(record, grace_s=grace_s)
