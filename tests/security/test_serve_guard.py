"""`gpu-orchestrator serve` refuses a non-loopback address without a token, unless told --insecure
(then it says so loudly); loopback addresses need no token. Run as real subprocesses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from app.cli import is_loopback

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def serve_env(tmp_path: Path, token: str | None = None) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("GPU_ORCH_")}
    env.update(
        GPU_ORCH_STATE_DIR=str(tmp_path / "state"),
        GPU_ORCH_CONFIG_DIR=str(tmp_path / "config"),
        GPU_ORCH_GPU_BACKEND="simulated",
        GPU_ORCH_LAUNCHER="subprocess",
        GPU_ORCH_MONITOR_INTERVAL_S="3600",
    )
    if token is not None:
        env["GPU_ORCH_API_TOKEN"] = token
    return env


def serve_argv(host: str, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", "serve", "--host", host, "--port", str(port), *extra]


def healthz_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310 (http only)
            return int(response.status)
    except (urllib.error.URLError, OSError):
        return None


@contextmanager
def serving(argv: list[str], env: dict[str, str], *urls: str) -> Iterator[subprocess.Popen[str]]:
    """Start the server, wait until /healthz answers 200 at one of `urls` (failing early if it
    exits), stop it."""
    process = subprocess.Popen(
        argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while all(healthz_status(url) != 200 for url in urls):
            if process.poll() is not None:
                _out, err = process.communicate()
                pytest.fail(f"serve exited {process.returncode} before answering:\n{err}")
            if time.monotonic() >= deadline:
                pytest.fail(f"serve did not answer {urls} within {START_TIMEOUT_S} s")
            time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.org", "LOCALHOST"])
@pytest.mark.parametrize("token", [None, ""], ids=["unset", "empty"])
def test_serve_guard_refuses_non_loopback_without_token(
    tmp_path: Path, host: str, token: str | None
) -> None:
    result = subprocess.run(
        serve_argv(host, 8000),
        cwd=REPO_ROOT,
        env=serve_env(tmp_path, token),
        capture_output=True,
        text=True,
        timeout=20,  # refused at once, before the app is even imported
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert f"refusing to listen on {host} without GPU_ORCH_API_TOKEN" in result.stderr
    assert "--insecure" in result.stderr


def test_serve_guard_insecure_starts_and_warns_on_stderr(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    argv = serve_argv("0.0.0.0", port, "--insecure")
    with serving(argv, serve_env(tmp_path), f"http://127.0.0.1:{port}/healthz") as process:
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
    assert "WARNING: INSECURE: serving on 0.0.0.0 without GPU_ORCH_API_TOKEN" in err


def test_serve_guard_non_loopback_with_token_starts(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    argv = serve_argv("0.0.0.0", port)
    with serving(argv, serve_env(tmp_path, "s3cret"), f"http://127.0.0.1:{port}/healthz"):
        pass


@pytest.mark.parametrize(
    ("host", "url_hosts"),
    [
        ("127.0.0.2", ["127.0.0.2"]),
        ("localhost", ["127.0.0.1", "[::1]"]),  # whichever the resolver gives uvicorn
        ("::1", ["[::1]"]),
    ],
)
def test_serve_guard_loopback_needs_no_token(
    tmp_path: Path, host: str, url_hosts: list[str]
) -> None:
    port = free_port(host if host != "localhost" else "127.0.0.1")
    urls = [f"http://{url_host}:{port}/healthz" for url_host in url_hosts]
    with serving(serve_argv(host, port), serve_env(tmp_path), *urls):
        pass


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("[::1]", False),  # not an address as given; refusing is the safe reading
        ("127.1", False),
        ("localhost.example.org", False),
    ],
)
def test_serve_guard_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
