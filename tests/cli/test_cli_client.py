"""The runbook CLI against a real service: `gpu-orchestrator serve` in a subprocess, with the fake
engine standing in for vLLM, driven through `app.cli.main` (and once through the console script)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app import client_format
from app.cli import main
from app.client_format import api_error_message, render_table
from tests.conftest import kill_engines_of
from tests.fakes import fake_engine_command, free_port, http_status, wait_until

TOKEN = "secret"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Service:
    url: str
    root: Path


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def _serve_command() -> list[str]:
    script = Path(sys.executable).parent / "gpu-orchestrator"
    return [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]


def _service_env(root: Path) -> dict[str, str]:
    # Nothing of the caller's GPU_ORCH_* may leak in (a database URL would be shared).
    env = {name: value for name, value in os.environ.items() if not name.startswith("GPU_ORCH_")}
    # The checkout's packages (migrations/ included) whatever the venv's install maps.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    # Below the ephemeral range (32768+), apart from tests/conftest.py's 20000-29999.
    engine_ports_start = 30000 + (os.getpid() % 50) * 50
    config_dir = root / "config"
    config_dir.mkdir()
    env.update(
        GPU_ORCH_STATE_DIR=str(root / "state"),
        GPU_ORCH_GPU_BACKEND="simulated",
        GPU_ORCH_SIMULATED_GPUS="81920",
        GPU_ORCH_LAUNCHER="subprocess",
        GPU_ORCH_VLLM_COMMAND=shlex.join(fake_engine_command()),
        GPU_ORCH_CONFIG_DIR=str(config_dir),
        GPU_ORCH_API_TOKEN=TOKEN,
        GPU_ORCH_STOP_GRACE_S="5",
        GPU_ORCH_PORT_RANGE_START=str(engine_ports_start),
        GPU_ORCH_PORT_RANGE_END=str(engine_ports_start + 49),
    )
    return env


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("cli-service")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = root / "service.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*_serve_command(), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=_service_env(root),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"service exited {process.returncode}:\n{log_path.read_text()}")
        return http_status(f"{url}/healthz") == 200

    try:
        wait_until(healthy, 60, interval_s=0.05, what="service /healthz == 200")
        yield Service(url=url, root=root)
    finally:
        _stop_every_model(url)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        kill_engines_of(root)


def _stop_every_model(url: str) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            for model in http.get("/models").json():
                http.post(f"/models/{model['id']}/stop?wait=true")
    except httpx.HTTPError:
        pass  # the service died; kill_engines_of still cleans up


def run_cli(
    capsys: pytest.CaptureFixture[str], service: Service, *argv: str, token: str = TOKEN
) -> CliResult:
    capsys.readouterr()
    code = main([*argv, "--url", service.url, "--token", token])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return CliResult(code, captured.out, captured.err)


def write_spec(directory: Path, model_id: str, *fake_flags: str, **fields: Any) -> Path:
    spec: dict[str, Any] = {"id": model_id, "model": "/models/tiny", "gpu_memory_util": 0.3}
    if fake_flags:
        spec["env"] = {"FAKE_ENGINE_ARGS": " ".join(fake_flags)}
    spec.update(fields)
    path = directory / f"{model_id}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def create(capsys: pytest.CaptureFixture[str], service: Service, path: Path) -> CliResult:
    result = run_cli(capsys, service, "models", "create", "-f", str(path))
    assert result.code == 0, result.err
    return result


def table_rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()[1:]]


def test_cli_models_create_from_yaml_then_list_shows_it(
    capsys: pytest.CaptureFixture[str], service: Service, tmp_path: Path
) -> None:
    created = create(capsys, service, write_spec(tmp_path, "listed"))
    assert created.out.strip() == "created listed"
    listed = run_cli(capsys, service, "models", "list")
    assert listed.code == 0
    header = listed.out.splitlines()[0]
    assert header.split("  ")[0] == "ID" and "LAST FAILURE" in header
    row = next(row for row in table_rows(listed.out) if row[0] == "listed")
    assert row[1:3] == ["stopped", "stopped"]


def test_cli_models_show_aligns_spec_and_status(
    capsys: pytest.CaptureFixture[str], service: Service, tmp_path: Path
) -> None:
    create(capsys, service, write_spec(tmp_path, "shown", restart_policy={"max_restarts": 2}))
    shown = run_cli(capsys, service, "models", "show", "shown")
    assert shown.code == 0
    lines = dict(line.split(":", 1) for line in shown.out.splitlines())
    assert shown.out.splitlines()[0].split() == ["id:", "shown"]
    assert lines["gpu_memory_util"].strip() == "0.3"
    assert lines["restart_policy.max_restarts"].strip() == "2"
    assert lines["status.state"].strip() == "stopped"
    value_columns = {  # where each value starts: the same column on every line
        len(line) - len(line.split(":", 1)[1].lstrip())
        for line in shown.out.splitlines()
        if line.split(":", 1)[1].strip()
    }
    assert len(value_columns) == 1


def test_cli_start_wait_runs_then_events_logs_and_stop(
    capsys: pytest.CaptureFixture[str], service: Service, tmp_path: Path
) -> None:
    create(capsys, service, write_spec(tmp_path, "served", "--ready-delay-s", "0.8"))
    started = run_cli(
        capsys, service, "models", "start", "served", "--wait", "--wait-timeout", "30"
    )
    assert started.code == 0, started.err
    progress = started.out.splitlines()
    assert progress[0].startswith("served: starting")
    assert progress[-1].startswith("served: running at http://127.0.0.1:")

    events = run_cli(capsys, service, "models", "events", "served")
    assert events.code == 0
    assert events.out.splitlines()[0].split() == ["AT", "KIND", "FROM", "TO", "REASON"]
    transitions = [row[2:4] for row in table_rows(events.out) if row[1] == "transition"]
    assert transitions == [["stopped", "starting"], ["starting", "running"]]

    logs = run_cli(capsys, service, "models", "logs", "served", "--tail", "50")
    assert logs.code == 0
    assert "vLLM API server version" in logs.out

    refused = run_cli(capsys, service, "models", "delete", "served")
    assert refused.code == 1 and "[model_running]" in refused.err

    stopping = run_cli(capsys, service, "models", "stop", "served")  # answered at once
    assert stopping.code == 0 and stopping.out.strip() == "served: stopping"
    stopped = run_cli(capsys, service, "models", "stop", "served", "--wait")
    assert stopped.code == 0 and stopped.out.strip() == "served: stopped"
    shown = run_cli(capsys, service, "models", "show", "served", "--json")
    assert json.loads(shown.out)["status"]["state"] == "stopped"


def test_cli_start_wait_exits_1_with_the_failure_when_engine_dies(
    capsys: pytest.CaptureFixture[str], service: Service, tmp_path: Path
) -> None:
    spec = write_spec(
        tmp_path, "dies", "--exit-during-start", "3", restart_policy={"max_restarts": 0}
    )
    create(capsys, service, spec)
    started = run_cli(capsys, service, "models", "start", "dies", "--wait", "--wait-timeout", "30")
    assert started.code == 1
    assert started.err.startswith(("dies: failed: exit:", "dies: degraded: exit:"))
    assert "code 3" in started.err


def test_cli_start_wait_exits_2_when_not_running_in_time(
    capsys: pytest.CaptureFixture[str], service: Service, tmp_path: Path
) -> None:
    create(capsys, service, write_spec(tmp_path, "slow", "--ready-delay-s", "60"))
    started = run_cli(capsys, service, "models", "start", "slow", "--wait", "--wait-timeout", "1")
    assert started.code == 2
    assert "slow: still starting after 1 s" in started.err
    assert run_cli(capsys, service, "models", "stop", "slow").code == 0


def test_cli_create_twice_prints_the_api_message_and_exits_1(
    capsys: pytest.CaptureFixture[str], service: Service, tmp_path: Path
) -> None:
    path = write_spec(tmp_path, "twice")
    create(capsys, service, path)
    again = run_cli(capsys, service, "models", "create", "-f", str(path))
    assert again.code == 1 and again.out == ""
    assert again.err.strip() == "error [already_exists] (HTTP 409): model 'twice' already exists"


def test_cli_unknown_model_prints_not_found(
    capsys: pytest.CaptureFixture[str], service: Service
) -> None:
    shown = run_cli(capsys, service, "models", "show", "nobody")
    assert shown.code == 1 and "[not_found]" in shown.err and "'nobody'" in shown.err


def test_cli_wrong_or_missing_token_exits_1_and_says_so(
    capsys: pytest.CaptureFixture[str], service: Service
) -> None:
    wrong = run_cli(capsys, service, "models", "list", token="wrong")
    assert wrong.code == 1 and "rejected the API token" in wrong.err
    missing = run_cli(capsys, service, "models", "list", token="")
    assert missing.code == 1 and "requires an API token and none was given" in missing.err


def test_cli_unreachable_url_exits_3_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run_cli(capsys, Service(url=url, root=Path()), "gpus")
    assert result.code == 3
    assert f"cannot reach the service at {url}" in result.err


def test_cli_json_output_parses_as_the_api_document(
    capsys: pytest.CaptureFixture[str], service: Service, tmp_path: Path
) -> None:
    create(capsys, service, write_spec(tmp_path, "jsonned"))
    listed = run_cli(capsys, service, "models", "list", "--json")
    assert "jsonned" in [model["id"] for model in json.loads(listed.out)]
    gpus = json.loads(run_cli(capsys, service, "gpus", "--json").out)
    assert gpus["backend"] == "simulated" and gpus["gpus"][0]["total_mib"] == 81920


def test_cli_console_script_creates_from_stdin_with_json_output(service: Service) -> None:
    spec = json.dumps({"id": "piped", "model": "/models/tiny", "gpu_memory_util": 0.2})
    env = {**os.environ, "GPU_ORCH_URL": service.url, "GPU_ORCH_API_TOKEN": TOKEN}
    env["PYTHONPATH"] = str(REPO_ROOT)
    completed = subprocess.run(
        [*_serve_command(), "models", "create", "-f", "-", "--json"],
        input=spec,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["status"]["state"] == "stopped"


def test_cli_gpus_prints_backend_line_and_table(
    capsys: pytest.CaptureFixture[str], service: Service
) -> None:
    gpus = run_cli(capsys, service, "gpus")
    assert gpus.code == 0
    lines = gpus.out.splitlines()
    assert lines[0] == "backend: simulated  status: available"
    assert lines[1].split("  ")[0] == "INDEX" and "RESERVED MiB" in lines[1]
    assert lines[2].split()[0] == "0" and "81920" in lines[2].split()


def test_cli_can_start_reports_the_headroom_figures(
    capsys: pytest.CaptureFixture[str], service: Service, tmp_path: Path
) -> None:
    create(capsys, service, write_spec(tmp_path, "roomy"))
    answer = run_cli(capsys, service, "models", "can-start", "roomy")
    assert answer.code == 0, answer.err
    lines = dict(line.split(":", 1) for line in answer.out.splitlines())
    assert lines["ok"].strip() == "yes"
    assert int(lines["required_mib"]) == -(-81920 * 3 // 10) + 1024


def test_cli_agents_lists_or_names_the_missing_route(
    capsys: pytest.CaptureFixture[str], service: Service
) -> None:
    agents = run_cli(capsys, service, "agents")
    if agents.code == 0:
        assert agents.out.splitlines()[0].split("  ")[0] == "AGENT"
    else:
        assert agents.code == 1 and f"{service.url} has no /agents route" in agents.err


def test_cli_format_table_pads_columns() -> None:
    text = render_table(("ID", "STATE"), [("a-long-id", "running"), ("b", None)])
    assert text.splitlines() == ["ID         STATE", "a-long-id  running", "b          -"]


def test_cli_format_validation_errors_name_the_field() -> None:
    body = {"detail": [{"loc": ["body", "gpu_memory_util"], "msg": "Input should be <= 1"}]}
    response = httpx.Response(422, json=body)
    assert api_error_message(response) == (
        "error [invalid_request] (HTTP 422): body.gpu_memory_util: Input should be <= 1"
    )
    proxy = httpx.Response(502, text="<html>Bad Gateway</html>")
    assert api_error_message(proxy) == "error (HTTP 502): <html>Bad Gateway</html>"


def test_cli_status_line_says_sleeping_and_why_the_service_stopped_a_model() -> None:
    asleep = {"state": "sleeping", "pid": 42}
    assert client_format.status_line("m", asleep) == (
        "m: sleeping (pid 42; the next request wakes it)"
    )
    idle = {"state": "stopped", "desired_reason": "idle"}
    assert client_format.status_line("m", idle) == "m: stopped (idle)"
