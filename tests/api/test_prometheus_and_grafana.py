"""What Prometheus and Grafana get: a live /metrics without `_created` series that passes
`promtool check metrics`, alert rules that pass `promtool check rules` and fire in
`promtool test rules`, and a dashboard whose every query parses and names metrics the service
exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from app.main import create_app
from app.settings import Settings, load_settings
from tests.api.live_server import live_server
from tests.conftest import TEST_MARKER, kill_engines_of
from tests.fakes import fake_engine_command, wait_until

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "gpu-orchestrator.json"
METRIC_NAME = re.compile(r"\b((?:gpu_orchestrator|http)_[a-z0-9_]+)\b")
# Prometheus makes `up` itself; the rest must come from the service's /metrics.
SCRAPE_METRICS = {"up"}
DASHBOARD_VARIABLES = {"$__rate_interval": "5m", "$job": ".*", "$instance": ".*", "$model": ".*"}


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        message = "promtool is missing: run scripts/test-deps.sh (apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return subprocess.run(
        [binary, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def live_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """/metrics of a real service with a model that ran, as Prometheus would scrape it."""
    root = tmp_path_factory.mktemp("metrics")
    settings = make_module_settings(root)
    try:
        with (
            live_server(create_app(settings)) as server,
            httpx.Client(base_url=server.url, timeout=20) as http,
        ):
            spec = {"id": "metered", "model": "/models/tiny", "gpu_memory_util": 0.3}
            assert http.post("/models", json=spec).status_code == 201
            assert http.post("/models/metered/start").status_code == 202

            def running() -> bool:
                return bool(http.get("/models/metered").json()["status"]["state"] == "running")

            wait_until(running, 20, what="metered running")
            http.get("/models/nonexistent")  # a 4xx in the HTTP metrics too
            answer = http.get("/metrics")
            assert answer.status_code == 200
            yield answer.text
    finally:
        kill_engines_of(root)


def make_module_settings(root: Path) -> Settings:
    # make_settings is function-scoped; this module scrapes one service for all its tests.
    ports_start = 34700 + (os.getpid() % 20) * 10
    return load_settings(
        state_dir=root / "state",
        config_dir=root / "config",
        gpu_backend="simulated",
        simulated_gpus=[81920],
        launcher="subprocess",
        vllm_command=fake_engine_command(),
        port_range_start=ports_start,
        port_range_end=ports_start + 9,
        stop_grace_s=5.0,
        stop_engines_on_shutdown=True,
        engine_env={TEST_MARKER: str(root)},
    )


def exported_names(metrics_text: str) -> set[str]:
    return {
        line.split("{")[0].split(" ")[0] for line in metrics_text.splitlines() if line[:1] != "#"
    }


def test_metrics_export_no_created_series(live_metrics: str) -> None:
    assert "_created" not in live_metrics
    assert 'gpu_orchestrator_vllm_restarts_total{model="metered"} 0.0' in live_metrics
    assert 'gpu_orchestrator_vllm_status{model="metered"} 2.0' in live_metrics
    assert "http_requests_total{" in live_metrics


def test_metrics_pass_promtool_check_metrics(live_metrics: str) -> None:
    checked = promtool("check", "metrics", stdin=live_metrics)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == ""


def test_alert_rules_pass_promtool_check_and_fire_in_its_tests() -> None:
    checked = promtool("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(ALERT_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(ALERTS.read_text())["groups"]
        for rule in group["rules"]
    }
    assert {"VllmModelDegraded", "VllmRestartStorm", "GpuLowMemory"} <= alerts


def test_alert_rules_name_only_exported_metrics(live_metrics: str) -> None:
    used = set(METRIC_NAME.findall(ALERTS.read_text()))
    assert used and used <= exported_names(live_metrics), used - exported_names(live_metrics)


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def concrete(expr: str) -> str:
    for variable, value in DASHBOARD_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr.replace('gpu=~"$gpu"', 'gpu=~".*"')


def test_dashboard_queries_parse_and_name_exported_metrics(
    live_metrics: str, tmp_path: Path
) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 12
    # promtool has no query linter; recording rules made of the queries get their PromQL parsed.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{index}", "expr": concrete(expr)}
                    for index, expr in enumerate(queries)
                ],
            }
        ]
    }
    rules_file = tmp_path / "dashboard-queries.yml"
    rules_file.write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", str(rules_file))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    used = {name for expr in queries for name in METRIC_NAME.findall(expr)}
    missing = used - exported_names(live_metrics) - SCRAPE_METRICS
    assert not missing, missing


def test_dashboard_covers_models_gpus_and_traffic() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert variables == {"datasource", "job", "instance", "model", "gpu"}
    text = DASHBOARD.read_text()
    for metric in (
        "gpu_orchestrator_vllm_status",
        "gpu_orchestrator_vllm_restarts_total",
        "gpu_orchestrator_vllm_ooms_total",
        "gpu_orchestrator_gpu_memory_free_bytes",
        "gpu_orchestrator_gpu_low_memory_alert",
        'handler=~\\"/v1/.*\\"',
    ):
        assert metric in text, metric
