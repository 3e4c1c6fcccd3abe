"""Helpers for tests that run the fake vLLM engine (`tests/fakes/fake_engine.py`) as a real process.

    with run_fake_engine("--ready-delay-s", "0.2", lora_modules={"sql": "/a/sql"}) as engine:
        engine.wait_ready(timeout_s=5)
        status, body = http_json("GET", engine.url("/v1/models"))

`fake_engine_command()` gives the engine-command prefix that the orchestrator's `VLLM_COMMAND`
setting takes; the orchestrator then appends the model and vLLM's flags, as for `vllm serve`.
Everything waits on a state with a deadline (`wait_until`), never on a bare sleep.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any, Final

FAKE_ENGINE_PATH: Final = Path(__file__).resolve().parent / "fake_engine.py"
DEFAULT_MODEL: Final = "facebook/opt-125m"
DEFAULT_SERVED_NAME: Final = "fake-model"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the OS picks it; a race remains possible)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def wait_until(
    predicate: Callable[[], object], timeout_s: float, *, interval_s: float = 0.01, what: str = ""
) -> None:
    """Poll `predicate` every `interval_s` until truthy; raise TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"not true within {timeout_s} s: {what or predicate!r}")
        time.sleep(interval_s)


async def wait_until_async(
    predicate: Callable[[], object], timeout_s: float, *, interval_s: float = 0.01, what: str = ""
) -> None:
    """`wait_until` for async tests: polls without blocking the event loop."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"not true within {timeout_s} s: {what or predicate!r}")
        await asyncio.sleep(interval_s)


def fake_engine_command(
    *fake_flags: str, interpreter: Sequence[str] = (sys.executable,)
) -> list[str]:
    """The engine-command prefix (`python fake_engine.py FLAGS`) that stands in for `vllm serve`."""
    return [*interpreter, str(FAKE_ENGINE_PATH), *fake_flags]


def vllm_args(
    *,
    port: int,
    model: str = DEFAULT_MODEL,
    served_model_name: str = DEFAULT_SERVED_NAME,
    lora_modules: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The model and the vLLM flags the orchestrator appends to the engine command."""
    args = [model, "--host", "127.0.0.1", "--port", str(port)]
    args += ["--served-model-name", served_model_name, "--dtype", "auto"]
    args += ["--gpu-memory-utilization", "0.5", "--max-model-len", "4096"]
    if lora_modules:
        args += ["--enable-lora", "--lora-modules"]
        args += [f"{name}={path}" for name, path in lora_modules.items()]
        args += ["--max-lora-rank", "16", "--max-loras", str(len(lora_modules))]
    return [*args, *extra_args]


def http_json(
    method: str, url: str, body: object = None, timeout_s: float = 2.0
) -> tuple[int | None, Any]:
    """(status, decoded JSON body or None); status None when nothing answered (refused, reset)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 (http only)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            status, raw = int(response.status), response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    except (urllib.error.URLError, OSError, HTTPException):
        return None, None
    return status, json.loads(raw) if raw else None


def http_status(url: str, timeout_s: float = 2.0) -> int | None:
    """The status of GET `url`, or None when nothing answered (e.g. connection refused)."""
    return http_json("GET", url, timeout_s=timeout_s)[0]


def kill_process_group(pgid: int) -> None:
    """SIGKILL every process in the group; a group that is already gone is fine."""
    with suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


@dataclass
class RunningFakeEngine:
    """A fake engine process (leader of its own process group) and where it answers and logs."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log_text(self) -> str:
        """Everything it wrote to stdout and stderr so far (one file, as the orchestrator has)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Wait until GET /health answers 200; fail early if the process exits meanwhile."""

        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"fake engine exited {self.process.returncode}:\n{self.log_text()}"
                )
            return http_status(self.url("/health")) == 200

        wait_until(ready, timeout_s, what="fake engine /health == 200")

    def wait_exit(self, timeout_s: float = 10.0) -> int:
        """Wait for the leader to exit and return its code (negative: killed by that signal)."""
        return self.process.wait(timeout=timeout_s)

    def wait_log(self, text: str, timeout_s: float = 10.0) -> None:
        """Wait until the log contains `text`."""
        wait_until(lambda: text in self.log_text(), timeout_s, what=f"log contains {text!r}")

    def state(self) -> dict[str, Any]:
        """GET /fake/state."""
        status, body = http_json("GET", self.url("/fake/state"))
        assert status == 200, f"/fake/state answered {status}"
        return dict(body)


@contextmanager
def run_fake_engine(
    *fake_flags: str,
    port: int | None = None,
    model: str = DEFAULT_MODEL,
    served_model_name: str = DEFAULT_SERVED_NAME,
    lora_modules: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    interpreter: Sequence[str] = (sys.executable,),
) -> Iterator[RunningFakeEngine]:
    """Start the fake engine in its own session, as the orchestrator does, and SIGKILL its whole
    process group on exit, whatever the test did (forked children included).

    `env` is added to this process's environment; output goes to `log_path` (a temporary file
    when None).
    """
    chosen_port = port if port is not None else free_port()
    argv = fake_engine_command(*fake_flags, interpreter=interpreter)
    argv += vllm_args(
        port=chosen_port,
        model=model,
        served_model_name=served_model_name,
        lora_modules=lora_modules,
        extra_args=extra_args,
    )
    with tempfile.TemporaryDirectory(prefix="fake-engine-") as scratch_dir:
        path = log_path if log_path is not None else Path(scratch_dir) / "engine.log"
        with path.open("ab") as log_file:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        try:
            yield RunningFakeEngine(process=process, port=chosen_port, log_path=path)
        finally:
            # The group outlives its leader while a forked child lives, so kill it even then.
            kill_process_group(process.pid)
            process.wait(timeout=10)
