"""Process facts and signals by pid and process group, shared by the launchers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import psutil

# create_time is a float from /proc; two reads of one process agree to well under this.
_CREATE_TIME_TOLERANCE_S = 0.05
_GROUP_POLL_S = 0.02


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
    while group_members(pgid):
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
    if not await wait_group_gone(pgid, 10.0):
        raise RuntimeError(f"process group {pgid} survived SIGKILL: {group_members(pgid)}")


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
