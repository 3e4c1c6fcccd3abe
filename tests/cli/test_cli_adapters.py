"""`gpu-orchestrator adapters list|add|remove` against a real service (`serve` in a subprocess,
the fake engine with vLLM's runtime LoRA routes standing in for vLLM)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli import main
from app.client_format import adapter_added_line, adapters_table
from tests.cli.test_cli_client import (
    TOKEN,
    CliResult,
    Service,
    create,
    run_cli,
    service,
    table_rows,
    write_spec,
)
from tests.fakes import free_port
from tests.gateway.conftest import make_adapter

__all__ = ["service"]  # the module-scoped service of the client tests, one per module

HEADER = ["NAME", "PATH", "RANK", "LOADED", "SINCE"]


def _api(service: Service) -> httpx.Client:
    return httpx.Client(
        base_url=service.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    )


def _adapters(capsys: pytest.CaptureFixture[str], service: Service, *argv: str) -> CliResult:
    return run_cli(capsys, service, "adapters", *argv)


def _start(capsys: pytest.CaptureFixture[str], service: Service, model_id: str) -> int:
    started = run_cli(
        capsys, service, "models", "start", model_id, "--wait", "--wait-timeout", "30"
    )
    assert started.code == 0, started.err
    with _api(service) as api:
        pid: int = api.get(f"/models/{model_id}").json()["status"]["pid"]
    return pid


def _served(service: Service, model_id: str) -> set[str]:
    with _api(service) as api:
        base_url = api.get(f"/models/{model_id}").json()["status"]["base_url"]
    cards = httpx.get(f"{base_url}/v1/models", timeout=10).json()["data"]
    return {card["id"] for card in cards}


def test_cli_adapters_add_list_remove_live_on_the_same_engine(
    capsys: pytest.CaptureFixture[str], service: Service, tmp_path: Path
) -> None:
    first = make_adapter(tmp_path, "cli_synth")
    second = make_adapter(tmp_path, "cli_critic", rank=16)
    create(capsys, service, write_spec(tmp_path, "lora-live", adapter_paths=[first]))
    pid = _start(capsys, service, "lora-live")

    listed = _adapters(capsys, service, "list", "lora-live")
    assert listed.code == 0, listed.err
    assert listed.out.splitlines()[0].split() == HEADER
    [row] = table_rows(listed.out)
    assert row[:4] == ["cli_synth", first, "8", "yes"] and row[4].endswith("Z")

    added = _adapters(capsys, service, "add", "lora-live", "cli_critic", second)
    assert added.code == 0, added.err
    assert added.out.strip() == (
        f"lora-live: added adapter cli_critic ({second}), loaded on the running engine"
    )
    assert _served(service, "lora-live") == {"lora-live", "cli_synth", "cli_critic"}
    again = _adapters(capsys, service, "add", "lora-live", "cli_critic", second)
    assert again.code == 0 and again.out.strip() == (
        f"lora-live: adapter cli_critic ({second}) already there"
    )
    rows = {row[0]: row for row in table_rows(_adapters(capsys, service, "list", "lora-live").out)}
    assert rows["cli_critic"][1:4] == [second, "16", "yes"]

    removed = _adapters(capsys, service, "remove", "lora-live", "cli_critic")
    assert removed.code == 0 and removed.out.strip() == "lora-live: removed adapter cli_critic"
    assert _served(service, "lora-live") == {"lora-live", "cli_synth"}
    listed = _adapters(capsys, service, "list", "lora-live", "--json")
    assert [adapter["name"] for adapter in json.loads(listed.out)] == ["cli_synth"]
    with _api(service) as api:
        assert api.get("/models/lora-live").json()["status"]["pid"] == pid
    assert run_cli(capsys, service, "models", "stop", "lora-live", "--wait").code == 0


def test_cli_adapters_on_a_stopped_model_change_the_spec_only(
    capsys: pytest.CaptureFixture[str], service: Service, tmp_path: Path
) -> None:
    path = make_adapter(tmp_path, "cli_scout")
    create(capsys, service, write_spec(tmp_path, "lora-stopped"))
    added = _adapters(capsys, service, "add", "lora-stopped", "cli_scout", path, "--json")
    assert added.code == 0, added.err
    assert json.loads(added.out) == [
        {"name": "cli_scout", "path": path, "rank": 8, "loaded": False, "since": None}
    ]
    listed = _adapters(capsys, service, "list", "lora-stopped")
    assert table_rows(listed.out) == [["cli_scout", path, "8", "no", "-"]]
    other = make_adapter(tmp_path, "cli_scout2")
    text = _adapters(capsys, service, "add", "lora-stopped", "cli_scout2", other)
    assert text.out.strip() == (
        f"lora-stopped: added adapter cli_scout2 ({other}) to the spec; loaded once the engine runs"
    )
    removed = _adapters(capsys, service, "remove", "lora-stopped", "cli_scout", "--json")
    assert json.loads(removed.out) == {
        "id": "lora-stopped",
        "adapter": "cli_scout",
        "removed": True,
    }
    with _api(service) as api:
        spec = api.get("/models/lora-stopped").json()
    assert spec["adapter_paths"] == [other]


def test_cli_adapters_refusals_print_the_api_code_and_exit_1(
    capsys: pytest.CaptureFixture[str], service: Service, tmp_path: Path
) -> None:
    taken = make_adapter(tmp_path, "cli_taken")
    create(capsys, service, write_spec(tmp_path, "lora-owner", adapter_paths=[taken]))
    create(capsys, service, write_spec(tmp_path, "lora-other"))
    not_an_adapter = tmp_path / "empty"
    not_an_adapter.mkdir()

    invalid = _adapters(capsys, service, "add", "lora-other", "cli_empty", str(not_an_adapter))
    assert invalid.code == 1 and invalid.out == ""
    assert invalid.err.startswith("error [adapter_invalid] (HTTP 422): ")
    assert "adapter_config.json not found" in invalid.err

    conflict = _adapters(capsys, service, "add", "lora-other", "cli_taken", taken)
    assert conflict.code == 1
    assert conflict.err.startswith("error [adapter_name_conflict] (HTTP 409): ")

    missing = _adapters(capsys, service, "remove", "lora-other", "cli_nobody")
    assert missing.code == 1
    assert missing.err.startswith("error [adapter_not_found] (HTTP 404): ")
    assert "cli_nobody" in missing.err

    unknown = _adapters(capsys, service, "list", "nobody")
    assert unknown.code == 1 and "[not_found]" in unknown.err


def test_cli_adapters_add_beyond_the_running_engine_is_restart_needed_with_figures(
    capsys: pytest.CaptureFixture[str], service: Service, tmp_path: Path
) -> None:
    small = make_adapter(tmp_path, "cli_small")
    wide = make_adapter(tmp_path, "cli_wide", rank=64)
    spec = write_spec(tmp_path, "lora-narrow", adapter_paths=[small], max_lora_rank=16)
    create(capsys, service, spec)
    _start(capsys, service, "lora-narrow")
    refused = _adapters(capsys, service, "add", "lora-narrow", "cli_wide", wide)
    assert refused.code == 1
    first, figures = refused.err.strip().splitlines()
    assert first.startswith("error [restart_needed] (HTTP 409): adapter cli_wide: rank 64")
    assert figures.strip().split(", ") == ["restart_needed=True", "rank=64", "max_lora_rank=16"]
    rows = table_rows(_adapters(capsys, service, "list", "lora-narrow").out)
    assert [row[0] for row in rows] == ["cli_small"]
    assert run_cli(capsys, service, "models", "stop", "lora-narrow", "--wait").code == 0


def test_cli_adapters_usage_error_exits_2_and_unreachable_exits_3(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as usage:
        main(["adapters", "add", "tiny", "only-a-name"])
    assert usage.value.code == 2
    assert "PATH" in capsys.readouterr().err
    url = f"http://127.0.0.1:{free_port()}"
    result = run_cli(capsys, Service(url=url, root=Path()), "adapters", "list", "tiny")
    assert result.code == 3 and f"cannot reach the service at {url}" in result.err


def test_cli_format_adapters_table_and_added_line() -> None:
    adapters: list[dict[str, Any]] = [
        {"name": "a", "path": "/x/a", "rank": 8, "loaded": True, "since": "2026-01-01T00:00:00Z"},
        {"name": "bb", "path": "rel/bb", "rank": None, "loaded": False, "since": None},
    ]
    assert adapters_table(adapters).splitlines() == [
        "NAME  PATH    RANK  LOADED  SINCE",
        "a     /x/a    8     yes     2026-01-01T00:00:00Z",
        "bb    rel/bb  -     no      -",
    ]
    assert adapter_added_line("m", "bb", adapters, created=True) == (
        "m: added adapter bb (rel/bb) to the spec; loaded once the engine runs"
    )
