#!/usr/bin/env python3
"""A stand-in for `systemd-run --user` and `systemctl --user`, for launcher tests.

Invoked as `fake_systemd.py run ARGS...` or `fake_systemd.py ctl ARGS...`. It records each argv
(one JSON line per call) in $FAKE_SYSTEMD_DIR/calls.jsonl, starts the command after `--` in its
own session with its output appended where StandardOutput=append: says, and keeps unit -> pid
and the unit's MemoryMax= (in bytes, as systemd shows it).

`fake_systemd.py oom-kill UNIT` does what the kernel and systemd do when the unit reaches its
MemoryMax=: the unit's Result becomes `oom-kill` and its processes are SIGKILLed. `systemctl
show -p NAME ...` (without --value) then answers `Result=oom-kill`, `ActiveState=failed`, until
`reset-failed`. Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ["FAKE_SYSTEMD_DIR"])
_SIZE_SUFFIXES = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def record(argv: list[str]) -> None:
    with (STATE / "calls.jsonl").open("a") as calls:
        calls.write(json.dumps(argv) + "\n")


def run(args: list[str]) -> int:
    split = args.index("--")
    options, command = args[:split], args[split + 1 :]
    unit, log, env = "", "/dev/null", {"PATH": os.environ.get("PATH", "")}
    for index, option in enumerate(options):
        if option.startswith("--unit="):
            unit = option.split("=", 1)[1]
        elif option.startswith("--setenv="):
            name, value = option.split("=", 2)[1:]
            env[name] = value
        elif option == "-p" and options[index + 1].startswith("StandardOutput=append:"):
            log = options[index + 1].split(":", 1)[1]
        elif option == "-p" and options[index + 1].startswith("MemoryMax="):
            (STATE / f"{unit}.memory_max").write_text(memory_bytes(options[index + 1][10:]))
    if (STATE / f"{unit}.refuse").exists():
        print(f"Failed to start transient service unit: Unit {unit} already exists.")
        return 1
    with open(log, "ab") as output:
        child = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    (STATE / f"{unit}.pid").write_text(str(child.pid))
    return 0


def memory_bytes(value: str) -> str:
    """MemoryMax= as `systemctl show` prints it: `48G` -> `51539607552`, else `infinity`."""
    size = value[:-1] if value[-1:].upper() in _SIZE_SUFFIXES else value
    if not size.isdigit():
        return "infinity"
    return str(int(size) * _SIZE_SUFFIXES.get(value[-1:].upper(), 1))


def alive(pid_file: Path) -> bool:
    """Whether the unit's main process runs (a zombie, which nobody here reaps, does not)."""
    if not pid_file.exists():
        return False
    try:
        stat = Path(f"/proc/{pid_file.read_text()}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def show(unit: str, names: list[str]) -> None:
    """`Name=value` lines for the properties asked, as `systemctl show -p ...` prints them."""
    result_file, memory_file = STATE / f"{unit}.result", STATE / f"{unit}.memory_max"
    result = result_file.read_text() if result_file.exists() else "success"
    if alive(STATE / f"{unit}.pid"):
        active = "active"
    else:
        active = "inactive" if result == "success" else "failed"
    values = {
        "Result": result,
        "MemoryMax": memory_file.read_text() if memory_file.exists() else "infinity",
        "ActiveState": active,
        "LoadState": "loaded",
    }
    for name in sorted(names):  # systemd's order, not the order asked
        print(f"{name}={values.get(name, '')}")


def oom_kill(unit: str) -> int:
    """The kernel kills the unit at its MemoryMax=; systemd records Result=oom-kill."""
    pid = int((STATE / f"{unit}.pid").read_text())
    (STATE / f"{unit}.result").write_text("oom-kill")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return 0


def ctl(args: list[str]) -> int:
    args = [arg for arg in args if arg != "--user"]
    verb, unit = args[0], args[-1]
    pid_file = STATE / f"{unit}.pid"
    if verb == "reset-failed":
        (STATE / f"{unit}.result").unlink(missing_ok=True)
        return 0
    if verb in ("show-environment", "daemon-reload"):
        return 0
    if verb == "show" and "--value" not in args:
        show(unit, [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "-p"])
        return 0
    if verb == "show":
        print(pid_file.read_text() if pid_file.exists() else "0")
        return 0
    if verb == "stop" and pid_file.exists():
        pid = int(pid_file.read_text())
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return 0
            time.sleep(0.02)
        os.killpg(pid, signal.SIGKILL)
        return 0
    return 0


def main() -> int:
    mode, args = sys.argv[1], sys.argv[2:]
    record([mode, *args])
    if mode == "oom-kill":
        return oom_kill(args[0])
    return run(args) if mode == "run" else ctl(args)


if __name__ == "__main__":
    sys.exit(main())
