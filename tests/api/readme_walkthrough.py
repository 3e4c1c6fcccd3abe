"""Runs the README's curl walkthrough verbatim against `gpu-orchestrator serve` on port 8000, as
`make run` starts it, and prints what each command wrote as JSON. Run inside a network namespace
of its own (`unshare --net`), where port 8000 is free whatever runs on the machine:

    unshare --net -- python -m tests.api.readme_walkthrough STATE_DIR

Without `--shared-network` it first brings up the namespace's loopback (which needs the
namespace's CAP_NET_ADMIN, as root or in a user namespace has); with it, it uses the machine's
network as it is, for where port 8000 is free anyway.

The commands come from the README's first ```sh block after "## A walkthrough with curl"; they
are split where bash itself says a command is complete (`bash -n`), so quoting and line
continuations stay as written.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## A walkthrough with curl"
PORT = 8000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def walkthrough_commands(readme: str) -> list[str]:
    section = readme[readme.index(SECTION) :]
    block = section[section.index("```sh\n") + len("```sh\n") :]
    block = block[: block.index("```")]
    commands: list[str] = []
    pending: list[str] = []
    for line in block.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending.append(line)
        text = "\n".join(pending)
        complete = subprocess.run(["bash", "-n", "-c", text], capture_output=True, check=False)
        if complete.returncode == 0 and not line.endswith("\\"):
            commands.append(text)
            pending = []
    if pending:
        raise ValueError(f"an unfinished command at the end of the walkthrough: {pending}")
    return commands


def loopback_up() -> None:
    """A new network namespace starts with `lo` down."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(probe, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(probe, SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))


def service_env(state_dir: Path) -> dict[str, str]:
    # As `make run` on a fresh checkout: the checkout's config/, an empty state directory, the
    # README's simulated GPUs; the fake engine stands in for vLLM. Nothing else of GPU_ORCH_*.
    env = {key: value for key, value in os.environ.items() if not key.startswith("GPU_ORCH_")}
    fake_engine = ROOT / "tests" / "fakes" / "fake_engine.py"
    env.update(
        GPU_ORCH_STATE_DIR=str(state_dir),
        GPU_ORCH_GPU_BACKEND="simulated",
        GPU_ORCH_LAUNCHER="subprocess",
        GPU_ORCH_VLLM_COMMAND=shlex.join([sys.executable, str(fake_engine)]),
        GPU_ORCH_STOP_ENGINES_ON_SHUTDOWN="true",
        GPU_ORCH_ENGINE_ENV=json.dumps({"GPU_ORCH_TEST_RUN": str(state_dir)}),
    )
    return env


def wait_healthy(process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("the service did not answer /healthz")


def main(argv: list[str]) -> int:
    state_dir = Path(argv[1])
    if "--shared-network" not in argv:
        loopback_up()
    commands = walkthrough_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    serve = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(PORT)]
    with (state_dir / "service.log").open("wb") as log:
        service = subprocess.Popen(
            serve, cwd=ROOT, env=service_env(state_dir), stdout=log, stderr=subprocess.STDOUT
        )
    results = []
    try:
        wait_healthy(service)
        for command in commands:
            done = subprocess.run(
                ["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=120
            )
            results.append(
                {
                    "command": command,
                    "code": done.returncode,
                    "out": done.stdout,
                    "err": done.stderr,
                }
            )
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(timeout=60)
        except subprocess.TimeoutExpired:
            service.kill()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
