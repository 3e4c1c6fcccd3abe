"""Process facts and signals by pid and process group, shared by the launchers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping

import psutil

from app.orchestrator.launchers.base import EngineHandle, EngineRecord, StopError

# create_time is a float from /proc; two reads of one process agree to well under this.
_CREATE_TIME_TOLERANCE_S = 0.05
_GROUP_POLL_S = 0.02
_SIGKILL_WAIT_S = 10.0


def create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def is_same_process(pid: int, expected_create_time: float) -> bool:
    """True while `pid` is the process that was recorded (not a later one given the same pid)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(process.create_time() - expected_create_time) < _CREATE_TIME_TOLERANCE_S
    except psutil.Error:
        return False


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    members = []
    for process in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(process.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


async def wait_group_gone(pgid: int, timeout_s: float) -> bool:
    """Wait until no live member of the group is left; False at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    # The walk of /proc that finds the members takes milliseconds (more on a busy node): it
    # runs in a worker thread, never on the loop every supervisor and request shares.
    while await asyncio.to_thread(group_members, pgid):
        if loop.time() >= deadline:
            return False
        # Members other than our child give no exit event to wait on: poll, briefly.
        await asyncio.sleep(_GROUP_POLL_S)
    return True


async def terminate_group(pgid: int, *, grace_s: float) -> None:
    """SIGTERM the group, SIGKILL it after grace_s, and return only once it is empty.

    The whole group, never the main pid alone: vLLM's EngineCore and workers share the group,
    and killing only the API server orphans them with their GPU memory (vLLM issue 55510).
    """
    signal_group(pgid, signal.SIGTERM)
    if await wait_group_gone(pgid, grace_s):
        return
    signal_group(pgid, signal.SIGKILL)
    if not await wait_group_gone(pgid, _SIGKILL_WAIT_S):
        survivors = await asyncio.to_thread(group_members, pgid)
        raise StopError(f"process group {pgid} survived SIGKILL: pids {survivors}", survivors)


async def wait_pid_exit(pid: int, expected_create_time: float) -> None:
    """Return when the process ends, woken by a pidfd (no polling) where the kernel has them."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:
        # No pidfd (an old kernel): fall back to polling.
        while is_same_process(pid, expected_create_time):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        return
    loop = asyncio.get_running_loop()
    ended = loop.create_future()
    try:
        # The pid may have been reused before the pidfd was opened: check identity after.
        if not is_same_process(pid, expected_create_time):
            return

        def _readable() -> None:
            if not ended.done():
                ended.set_result(None)

        loop.add_reader(pidfd, _readable)
        try:
            await ended
        finally:
            loop.remove_reader(pidfd)
    finally:
        os.close(pidfd)


def find_by_launch_token(token: str) -> int | None:
    """The main process of an engine started with GPU_ORCH_LAUNCH_TOKEN=token, if alive."""
    for process in psutil.process_iter(["pid"]):
        try:
            if process.environ().get("GPU_ORCH_LAUNCH_TOKEN") != token:
                continue
            if os.getpgid(process.pid) == process.pid:
                return process.pid
        except (psutil.Error, ProcessLookupError):
            continue
    return None


def engines_with_env(wanted: Mapping[str, str]) -> list[tuple[int, dict[str, str]]]:
    """Engine main processes (group leaders carrying a launch token) whose environment holds
    every item of `wanted`: (pid, environment) each."""
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            environ = process.environ()
            if "GPU_ORCH_LAUNCH_TOKEN" not in environ:
                continue
            if any(environ.get(name) != value for name, value in wanted.items()):
                continue
            if os.getpgid(process.pid) == process.pid:
                found.append((process.pid, environ))
        except (psutil.Error, ProcessLookupError):
            continue
    return found


def processes_with_token(token: str) -> list[int]:
    """Live processes whose environment carries GPU_ORCH_LAUNCH_TOKEN=token: an engine and every
    child it forked or spawned (they inherit the environment, whatever group they moved to)."""
    found = []
    for process in psutil.process_iter(["pid", "status"]):
        try:
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if process.environ().get("GPU_ORCH_LAUNCH_TOKEN") == token:
                found.append(process.pid)
        except psutil.Error:
            continue
    return found


def find_recorded(record: EngineRecord, launcher: str) -> EngineHandle | None:
    """Blocking (scans /proc): call it from a thread."""
    pid, started = record.pid, record.create_time
    if pid is None and record.launch_token:
        pid = find_by_launch_token(record.launch_token)
        started = create_time(pid) if pid is not None else None
    if pid is None or started is None or not is_same_process(pid, started):
        return None
    return EngineHandle(
        pid=pid,
        create_time=started,
        launcher=record.launcher or launcher,
        unit_name=record.unit_name,
        limits_enforced=record.limits_enforced,
    )


def leftovers(record: EngineRecord) -> list[int]:
    """Blocking (scans /proc): the live members of the recorded group and the processes that
    carry the run's token. The recorded group id is safe to signal while it has members: Linux
    never hands out a pid that is still some group's id."""
    pids = set(group_members(record.pid)) if record.pid else set()
    if record.launch_token:
        pids.update(processes_with_token(record.launch_token))
    pids.discard(os.getpid())
    return sorted(pids)


def _signal_all(pids: list[int], signum: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


async def terminate_leftovers(record: EngineRecord, *, grace_s: float) -> list[int]:
    """SIGTERM what is left of a recorded run, SIGKILL it after grace_s; StopError if any lives
    on. Returns the pids found."""
    found = await asyncio.to_thread(leftovers, record)
    if not found:
        return []
    _signal_all(found, signal.SIGTERM)
    if record.pid is not None:
        signal_group(record.pid, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    for signum, wait_s in ((signal.SIGKILL, grace_s), (None, _SIGKILL_WAIT_S)):
        deadline = loop.time() + wait_s
        while remaining := await asyncio.to_thread(leftovers, record):
            if loop.time() >= deadline:
                break
            await asyncio.sleep(_GROUP_POLL_S)
        if not remaining:
            return found
        if signum is None:
            raise StopError(
                f"leftovers of pid {record.pid} survived SIGKILL: {remaining}", remaining
            )
        _signal_all(remaining, signum)
        if record.pid is not None:
            signal_group(record.pid, signum)
    return found
