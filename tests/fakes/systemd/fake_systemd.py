#!/usr/bin/env python3
"""A stand-in for `systemd-run --user` and `systemctl --user`, for launcher tests.

Invoked as `fake_systemd.py run ARGS...` or `fake_systemd.py ctl ARGS...`. It records each argv
(one JSON line per call) in $FAKE_SYSTEMD_DIR/calls.jsonl, starts the command after `--` in its
own session with its output appended where StandardOutput=append: says, and keeps unit -> pid.
Standard library only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ["FAKE_SYSTEMD_DIR"])


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
    if (STATE / f"{unit}.refuse").exists():
        print(f"Failed to start transient service unit: Unit {unit} already exists.")
        return 1
    with open(log, "ab") as output:
        child = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    (STATE / f"{unit}.pid").write_text(str(child.pid))
    return 0


def ctl(args: list[str]) -> int:
    args = [arg for arg in args if arg != "--user"]
    verb, unit = args[0], args[-1]
    pid_file = STATE / f"{unit}.pid"
    if verb in ("show-environment", "reset-failed", "daemon-reload"):
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
    return run(args) if mode == "run" else ctl(args)


if __name__ == "__main__":
    sys.exit(main())
