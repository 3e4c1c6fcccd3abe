"""The README's curl walkthrough, run verbatim (tests/api/readme_walkthrough.py) against a
service started as `make run` starts it on a fresh checkout: each command succeeds, and the
first registration is not refused with already_exists by the manifest shipped in config/."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import kill_engines_of

ROOT = Path(__file__).resolve().parents[2]


def own_network_namespace() -> bool:
    try:
        probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def port_8000_free() -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        return probe.connect_ex(("127.0.0.1", 8000)) != 0


def run_walkthrough(state_dir: Path) -> list[dict[str, Any]]:
    runner = [sys.executable, "-m", "tests.api.readme_walkthrough", str(state_dir)]
    if own_network_namespace():
        command = ["unshare", "--net", "--", *runner]
    elif port_8000_free():
        command = [*runner, "--shared-network"]
    else:
        pytest.skip("port 8000 is taken and no network namespace of our own can be made")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    log = state_dir / "service.log"
    service_log = log.read_text(errors="replace") if log.exists() else ""
    assert done.returncode == 0, f"{done.stderr}\n{service_log}"
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return results


def output_of(results: list[dict[str, Any]], fragment: str) -> str:
    (match,) = [result for result in results if fragment in result["command"]]
    return str(match["out"])


def test_readme_walkthrough_runs_verbatim_on_a_fresh_checkout(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    try:
        results = run_walkthrough(state_dir)
    finally:
        kill_engines_of(state_dir)
    assert len(results) >= 10
    for result in results:
        assert result["code"] == 0, result
        assert result["err"] == "", result
        assert '"detail"' not in result["out"], result  # no command answered an error
    # The shipped manifest's model is there, and the walkthrough's own one registers beside it.
    listed = [model["id"] for model in json.loads(results[0]["out"])]
    assert "mistral-7b" in listed and "qwen2-7b" not in listed
    created = json.loads(output_of(results, "-X POST localhost:8000/models -H"))
    assert created["id"] == "qwen2-7b"
    patched = json.loads(output_of(results, "-X PATCH"))
    assert patched["max_model_len"] == 8192
    assert json.loads(output_of(results, "/can-start"))["ok"] is True
    started = json.loads(output_of(results, "/start"))
    assert started["state"] in ("starting", "running")
    stopped = json.loads(output_of(results, "/stop"))
    assert stopped["state"] == "stopped"
    assert output_of(results, "-X DELETE") == ""  # 204: deleted
    metrics = output_of(results, "/metrics")
    assert "gpu_orchestrator_vllm_status" in metrics
