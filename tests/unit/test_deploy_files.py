"""The deployment files: docker compose, Dockerfile, systemd units, mk/deploy.mk, check-deploy.sh.

Structure is asserted here with plain parsers; scripts/check-deploy.sh adds the real tools (Compose
schema and `docker compose config`, `systemd-analyze verify`, hadolint) and is run as a whole.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_PATH = ROOT / "docker-compose.yml"
DOCKERFILE_PATH = ROOT / "Dockerfile"
SYSTEMD_DIR = ROOT / "infrastructure" / "systemd"
ORCHESTRATOR_UNIT = SYSTEMD_DIR / "gpu-orchestrator.service"
VLLM_UNIT = SYSTEMD_DIR / "vllm-mistral-7b.service.example"
CHECK_SCRIPT = ROOT / "scripts" / "check-deploy.sh"
SHELL_SYNTAX = re.compile(r"\$\{|\$\(|`|\||;|&&|>|<|\*")

Unit = dict[str, dict[str, list[str]]]


def load_compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_PATH.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def orchestrator_service() -> dict[str, Any]:
    service = load_compose()["services"]["orchestrator"]
    assert isinstance(service, dict)
    return service


def parse_unit(path: Path) -> Unit:
    """Sections -> key -> every value in order (systemd keys such as Environment= repeat)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for raw_line in path.read_text(encoding="utf-8").splitlines():
        line = raw_line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"{path.name}: key outside a section: {line}"
        assert not line.endswith("\\"), f"{path.name}: keep each setting on one line: {line}"
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def only(unit: Unit, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}= set {len(values)} times"
    return values[0]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line, continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw_line in DOCKERFILE_PATH.read_text(encoding="utf-8").splitlines():
        line = raw_line.strip()
        if line.startswith("#") or not line:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def run_check_deploy(**overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable, **overrides}
    return subprocess.run(
        ["bash", str(CHECK_SCRIPT)], env=env, capture_output=True, text=True, timeout=300
    )


def test_compose_reserves_all_nvidia_gpus() -> None:
    devices = orchestrator_service()["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def test_compose_healthcheck_probes_healthz_without_curl() -> None:
    healthcheck = orchestrator_service()["healthcheck"]
    test = healthcheck["test"]
    assert test[0] == "CMD" and test[1] == "python3"
    assert "http://127.0.0.1:8000/healthz" in test[-1]
    assert {"interval", "timeout", "retries", "start_period"} <= healthcheck.keys()


def test_compose_restarts_unless_stopped_and_shares_memory() -> None:
    service = orchestrator_service()
    assert service["restart"] == "unless-stopped"
    assert service.get("ipc") == "host" or "shm_size" in service


def test_compose_env_file_is_required_and_token_template_is_empty() -> None:
    env_files = orchestrator_service()["env_file"]
    assert env_files == [{"path": "${GPU_ORCH_ENV_FILE:-deploy/.env}", "required": True}]
    template = (ROOT / "deploy" / ".env.example").read_text(encoding="utf-8")
    # An example token copied unchanged to every node would be a shared secret.
    assert re.search(r"^GPU_ORCH_API_TOKEN=$", template, flags=re.MULTILINE)


def test_compose_mounts_state_logs_and_read_only_model_store() -> None:
    service = orchestrator_service()
    mounts = {volume["target"]: volume for volume in service["volumes"]}
    assert mounts["/var/lib/gpu-orchestrator"]["type"] == "volume"
    assert mounts["/var/log/gpu-orchestrator"]["type"] == "volume"
    assert mounts["/models"]["read_only"] is True
    assert mounts["/models"]["bind"]["create_host_path"] is False
    environment = service["environment"]
    assert environment["MODEL_STORE_ROOT"] == "/models"
    assert environment["GPU_ORCH_LAUNCHER"] == "subprocess"


def test_compose_publishes_api_on_loopback_by_default() -> None:
    assert orchestrator_service()["ports"] == [
        "${GPU_ORCH_BIND_ADDRESS:-127.0.0.1}:${GPU_ORCH_HOST_PORT:-8000}:8000"
    ]


def test_compose_prometheus_is_optional_and_sends_the_token() -> None:
    compose = load_compose()
    prometheus = compose["services"]["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    assert prometheus["secrets"] == ["orchestrator_token"]
    assert "orchestrator_token" in compose["secrets"]
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text(encoding="utf-8"))
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["orchestrator:8000"]
    assert job["authorization"] == {
        "type": "Bearer",
        "credentials_file": "/run/secrets/orchestrator_token",
    }


def test_dockerfile_pins_vllm_base_image_by_release_tag() -> None:
    instructions = dockerfile_instructions()
    arg_default = next(
        value.split("=", 1)[1]
        for name, value in instructions
        if name == "ARG" and value.startswith("VLLM_IMAGE_TAG=")
    )
    assert re.fullmatch(r"v\d+\.\d+\.\d+", arg_default)
    bases = [value.split()[0] for name, value in instructions if name == "FROM"]
    assert bases and all(base == "vllm/vllm-openai:${VLLM_IMAGE_TAG}" for base in bases)
    # docker compose builds with its own default; both must name the same release.
    build_arg = orchestrator_service()["build"]["args"]["VLLM_IMAGE_TAG"]
    assert build_arg == f"${{VLLM_IMAGE_TAG:-{arg_default}}}"


def test_dockerfile_runs_non_root_with_healthcheck_and_serve_command() -> None:
    instructions = dict(dockerfile_instructions())  # the last of each instruction wins
    assert instructions["USER"] not in {"root", "0", "0:0"}
    assert "/healthz" in instructions["HEALTHCHECK"]
    assert instructions["EXPOSE"] == "8000"
    assert instructions["ENTRYPOINT"] == '["gpu-orchestrator"]'
    assert instructions["CMD"] == '["serve", "--host", "0.0.0.0", "--port", "8000"]'
    for path in ("/var/lib/gpu-orchestrator", "/var/log/gpu-orchestrator", "/models"):
        assert path in instructions["VOLUME"]


def test_dockerignore_keeps_secrets_and_venv_out_of_the_context() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*"
    assert not any(pattern.startswith(("!deploy", "!.venv", "!var")) for pattern in patterns)


@pytest.mark.parametrize("path", [ORCHESTRATOR_UNIT, VLLM_UNIT], ids=lambda path: path.name)
def test_units_exec_start_is_absolute_without_shell_syntax(path: Path) -> None:
    exec_start = only(parse_unit(path), "Service", "ExecStart")
    executable, *_ = exec_start.split()
    assert executable.startswith(("/", "%h/")), executable
    assert not SHELL_SYNTAX.search(exec_start), exec_start
    assert Path(executable).name not in {"sh", "bash", "env"}


def test_vllm_unit_has_limits_backoff_and_restart_budget() -> None:
    unit = parse_unit(VLLM_UNIT)
    assert only(unit, "Service", "MemoryMax") == "48G"
    assert only(unit, "Service", "CPUQuota") == "80%"
    assert only(unit, "Service", "Restart") == "on-failure"
    assert only(unit, "Service", "RestartSec") == "10s"
    for key in ("RestartSteps", "RestartMaxDelaySec", "TimeoutStopSec"):
        assert only(unit, "Service", key)
    assert only(unit, "Service", "KillMode") == "control-group"
    assert only(unit, "Unit", "StartLimitIntervalSec")
    assert int(only(unit, "Unit", "StartLimitBurst")) > 0


def test_vllm_unit_matches_the_canonical_manifest() -> None:
    manifest = yaml.safe_load((ROOT / "config" / "vllm_mistral_7b.yaml").read_text("utf-8"))
    unit = parse_unit(VLLM_UNIT)
    argv = only(unit, "Service", "ExecStart").split()
    flags = dict(zip(argv[3::2], argv[4::2], strict=False))
    assert argv[1:3] == ["serve", "mistralai/Mistral-7B-Instruct-v0.3"]
    assert flags["--host"] == "127.0.0.1"
    assert flags["--port"] == "8001"
    assert flags["--served-model-name"] == manifest["id"]
    assert flags["--dtype"] == manifest["dtype"]
    assert float(flags["--gpu-memory-utilization"]) == manifest["gpu_memory_util"]
    assert int(flags["--max-model-len"]) == manifest["max_model_len"]
    assert only(unit, "Service", "MemoryMax") == manifest["memory_max"]
    assert only(unit, "Service", "CPUQuota") == manifest["cpu_quota"]


def test_orchestrator_unit_leaves_engines_running_on_stop() -> None:
    unit = parse_unit(ORCHESTRATOR_UNIT)
    assert only(unit, "Service", "KillMode") == "process"
    assert only(unit, "Service", "Restart") == "on-failure"
    assert only(unit, "Service", "EnvironmentFile") == "-%h/.config/gpu-orchestrator/env"
    argv = only(unit, "Service", "ExecStart").split()
    assert argv[0] == "%h/.local/share/gpu-orchestrator/venv/bin/gpu-orchestrator"
    assert argv[1:] == ["serve", "--host", "127.0.0.1", "--port", "8000"]
    # Subprocess engines share this cgroup: a limit here would throttle or OOM-kill them.
    assert "MemoryMax" not in unit["Service"] and "CPUQuota" not in unit["Service"]
    assert only(unit, "Install", "WantedBy") == "default.target"


def make_deploy(home: Path, target: str) -> subprocess.CompletedProcess[str]:
    overrides = [f"HOME={home}", "SYSTEMCTL=echo systemctl", "DEPLOY_PIP=echo pip"]
    return subprocess.run(
        ["make", "--no-print-directory", "-f", str(ROOT / "mk" / "deploy.mk"), target, *overrides],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_deploy_mk_monitor_install_lays_out_home_and_keeps_edits(tmp_path: Path) -> None:
    venv_python = tmp_path / ".local/share/gpu-orchestrator/venv/bin/python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text("#!/bin/sh\n")  # an existing venv is reused, not recreated
    venv_python.chmod(0o755)

    first = make_deploy(tmp_path, "monitor-install")

    assert first.returncode == 0, first.stderr
    assert f"pip install --quiet --upgrade {ROOT}" in first.stdout
    assert "systemctl --user daemon-reload" in first.stdout
    installed_unit = tmp_path / ".config/systemd/user/gpu-orchestrator.service"
    assert installed_unit.read_text() == ORCHESTRATOR_UNIT.read_text()
    env_file = tmp_path / ".config/gpu-orchestrator/env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert (tmp_path / ".config/gpu-orchestrator/config/vllm_mistral_7b.yaml").is_file()
    assert (tmp_path / ".local/state/gpu-orchestrator/logs").is_dir()

    env_file.write_text("GPU_ORCH_API_TOKEN=operator-set\n")
    second = make_deploy(tmp_path, "monitor-install")

    assert second.returncode == 0, second.stderr
    assert env_file.read_text() == "GPU_ORCH_API_TOKEN=operator-set\n"


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_deploy_mk_monitor_enable_starts_unit_and_hints_linger(tmp_path: Path) -> None:
    result = make_deploy(tmp_path, "monitor-enable")

    assert result.returncode == 0, result.stderr
    assert "systemctl --user enable --now gpu-orchestrator.service" in result.stdout
    assert "loginctl enable-linger" in result.stdout


def test_check_deploy_passes_on_repository_files() -> None:
    result = run_check_deploy()

    skipped = [line for line in result.stdout.splitlines() if line.startswith("SKIP ")]
    for line in skipped:
        print(f"check-deploy sub-check skipped, tool missing: {line}")
    assert result.returncode == 0, result.stdout + result.stderr
    # The schema check never depends on an optional tool.
    assert "PASS compose-schema" in result.stdout.splitlines()


def test_check_deploy_rejects_an_invalid_compose_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  orchestrator:\n    image: x\n    restart: [always]\n")

    result = run_check_deploy(CHECK_DEPLOY_COMPOSE_FILE=str(broken))

    assert result.returncode == 1
    assert "FAIL compose-schema" in result.stdout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_check_deploy_rejects_a_unit_with_a_mistyped_key(tmp_path: Path) -> None:
    broken = tmp_path / "broken.service"
    broken.write_text(
        VLLM_UNIT.read_text(encoding="utf-8").replace("MemoryMax=48G", "MemoryMaximum=48G")
    )

    result = run_check_deploy(CHECK_DEPLOY_UNITS=str(broken))

    assert result.returncode == 1
    assert "FAIL systemd-units" in result.stdout
    assert "MemoryMaximum" in result.stdout
