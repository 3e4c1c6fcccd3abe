"""Engines as transient systemd user units, with MemoryMax= and CPUQuota= enforced by systemd.

`systemd-run --user` starts the unit; its output is appended to the same log file the subprocess
launcher uses, so log following and OOM detection do not depend on the launcher.

An engine that the kernel kills at the unit's MemoryMax= prints nothing; systemd records it as
the unit's `Result=oom-kill` (its default OOMPolicy=stop), which `exit_cause` reads.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Mapping

from app.orchestrator.launchers import process
from app.orchestrator.launchers.base import (
    EngineHandle,
    EngineRecord,
    ExitCause,
    LaunchError,
    LaunchRequest,
    memory_size,
)

_COMMAND_TIMEOUT_S = 30.0
# What `exit_cause` reads of the unit. Key=value lines, not --value: with several -p, systemctl
# prints the properties in its own order, not in the order asked.
_EXIT_PROPERTIES = ("Result", "MemoryMax", "ActiveState", "LoadState")
# The unit settles (inactive or failed) once systemd has seen its last process go; the result
# of an OOM kill is set as soon as systemd notices the kill, before that.
_RESULT_WAIT_S = 5.0
_RESULT_POLL_S = 0.05
_UNSETTLED_STATES = frozenset({"active", "activating", "deactivating", "reloading"})


async def _run(*argv: str) -> tuple[int, str]:
    child = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(child.communicate(), _COMMAND_TIMEOUT_S)
    except TimeoutError:
        child.kill()
        await child.wait()
        return 124, f"{argv[0]} timed out"
    return child.returncode or 0, output.decode("utf-8", errors="replace").strip()


async def user_manager_answers(systemctl: str = "systemctl") -> bool:
    """True when `systemctl --user` reaches a user manager (not inside most containers)."""
    if shutil.which(systemctl) is None or shutil.which("systemd-run") is None:
        return False
    code, _output = await _run(systemctl, "--user", "show-environment")
    return code == 0


def systemd_run_argv(
    request: LaunchRequest, *, stop_timeout_s: float, systemd_run: str = "systemd-run"
) -> list[str]:
    log = str(request.log_path)
    argv = [
        systemd_run,
        "--user",
        f"--unit={request.unit_name}",
        # No --collect: it unloads a failed unit at once, and with it the Result (oom-kill) that
        # exit_cause reads; stop resets the failed unit once that has been read.
        "--quiet",
        "-p",
        f"StandardOutput=append:{log}",
        "-p",
        f"StandardError=append:{log}",
        "-p",
        "KillMode=control-group",
        "-p",
        f"TimeoutStopSec={max(1, round(stop_timeout_s))}",
    ]
    if request.memory_max:
        argv += ["-p", f"MemoryMax={request.memory_max}"]
    if request.cpu_quota:
        argv += ["-p", f"CPUQuota={request.cpu_quota}"]
    argv += [f"--setenv={name}={value}" for name, value in sorted(request.env.items())]
    # systemd expands $VAR and ${VAR} in a unit's command line; $$ is a literal $, so every
    # argument reaches the engine exactly as given.
    return [*argv, "--", *(arg.replace("$", "$$") for arg in request.argv)]


def parse_unit_properties(output: str) -> dict[str, str]:
    """`systemctl show -p A -p B UNIT` output (`A=value` lines) as a dict."""
    properties: dict[str, str] = {}
    for line in output.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            properties[name.strip()] = value.strip()
    return properties


def unit_settled(properties: Mapping[str, str]) -> bool:
    """Whether the unit's result is final: it has stopped, is gone, or has a failure result."""
    if properties.get("LoadState") == "not-found" or not properties:
        return True
    return (
        properties.get("ActiveState") not in _UNSETTLED_STATES
        or properties.get("Result", "success") != "success"
    )


def unit_exit_cause(unit: str, properties: Mapping[str, str]) -> ExitCause | None:
    """An OOM kill when systemd says so (`Result=oom-kill`), with the unit's MemoryMax=."""
    if properties.get("Result") != "oom-kill":
        return None
    memory_max = properties.get("MemoryMax", "infinity")
    limit = memory_size(int(memory_max)) if memory_max.isdigit() else None
    return ExitCause(
        kind="oom_kill",
        memory_limit=limit,
        evidence=f"unit {unit} Result=oom-kill, MemoryMax={memory_max}",
    )


class SystemdLauncher:
    name = "systemd"

    def __init__(
        self,
        *,
        stop_timeout_s: float,
        systemd_run: str = "systemd-run",
        systemctl: str = "systemctl",
    ) -> None:
        self.stop_timeout_s = stop_timeout_s
        self.systemd_run = systemd_run
        self.systemctl = systemctl

    async def launch(self, request: LaunchRequest) -> EngineHandle:
        try:
            request.log_path.parent.mkdir(parents=True, exist_ok=True)
            request.log_path.touch()
        except OSError as error:
            raise LaunchError(f"cannot open engine log {request.log_path}: {error}") from error
        # A failed unit of the same name from an earlier run would make systemd-run refuse.
        await _run(self.systemctl, "--user", "reset-failed", request.unit_name)
        argv = systemd_run_argv(
            request, stop_timeout_s=self.stop_timeout_s, systemd_run=self.systemd_run
        )
        code, output = await _run(*argv)
        if code != 0:
            raise LaunchError(f"systemd-run failed ({code}): {output}")
        code, output = await _run(
            self.systemctl, "--user", "show", "-p", "MainPID", "--value", request.unit_name
        )
        pid = int(output) if code == 0 and output.isdigit() else 0
        started = process.create_time(pid) if pid > 0 else None
        if started is None:
            raise LaunchError(f"unit {request.unit_name} has no main process: {output!r}")
        return EngineHandle(
            pid=pid,
            create_time=started,
            launcher=self.name,
            unit_name=request.unit_name,
            limits_enforced=True,
        )

    async def wait_exit(self, handle: EngineHandle) -> int | None:
        # Not our child: the exit code belongs to systemd; the unit is collected on exit.
        await process.wait_pid_exit(handle.pid, handle.create_time)
        return None

    async def stop(self, handle: EngineHandle, *, grace_s: float) -> None:
        if handle.unit_name:
            await _run(self.systemctl, "--user", "stop", handle.unit_name)
        # Whatever systemd did, confirm the group is empty (and finish the job if not).
        await process.terminate_group(handle.pid, grace_s=grace_s)
        if handle.unit_name:
            await self._forget(handle.unit_name)

    async def _forget(self, unit: str) -> None:
        """Unload a unit that failed (an OOM kill, a crash): what --collect did at once, done
        once exit_cause has had its chance to read the unit's Result."""
        await _run(self.systemctl, "--user", "reset-failed", unit)

    def is_alive(self, handle: EngineHandle) -> bool:
        return process.is_same_process(handle.pid, handle.create_time)

    async def find(self, record: EngineRecord) -> EngineHandle | None:
        return await asyncio.to_thread(process.find_recorded, record, self.name)

    async def clear_leftovers(self, record: EngineRecord, *, grace_s: float) -> list[int]:
        # The unit's control group holds every process the engine started: stopping the unit
        # ends them all; the scan after it catches any that left the cgroup.
        if record.unit_name:
            await _run(self.systemctl, "--user", "stop", record.unit_name)
        pids = await process.terminate_leftovers(record, grace_s=grace_s)
        if record.unit_name:
            await self._forget(record.unit_name)
        return pids

    async def exit_cause(self, handle: EngineHandle) -> ExitCause | None:
        """The unit's result once systemd has settled it (the main process may end before
        systemd has seen the rest of the unit go): `oom-kill` is an OOM kill."""
        unit = handle.unit_name
        if not unit:
            return None
        argv = [self.systemctl, "--user", "show"]
        for name in _EXIT_PROPERTIES:
            argv += ["-p", name]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _RESULT_WAIT_S
        while True:
            try:
                code, output = await _run(*argv, unit)
            except OSError:
                return None  # systemctl gone: nothing to say, the exit stays a plain exit
            properties = parse_unit_properties(output) if code == 0 else {}
            if unit_settled(properties) or loop.time() >= deadline:
                break
            # systemd gives no event to wait on here, and this lasts milliseconds.
            await asyncio.sleep(_RESULT_POLL_S)
        return unit_exit_cause(unit, properties)
