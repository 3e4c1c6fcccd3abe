"""`gpu-orchestrator oom-scan FILE...`: one JSON object per file, exit 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "oom"


def test_cli_oom_scan_prints_one_object_per_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = json.loads((FIXTURES / "expected.json").read_text())
    oom_name = next(name for name, item in expected.items() if item["kind"] == "gpu_oom")
    healthy = tmp_path / "healthy.log"
    healthy.write_text("INFO Available KV cache memory: 2.30 GiB\n")
    missing = tmp_path / "missing.log"
    assert main(["oom-scan", str(FIXTURES / oom_name), str(healthy), str(missing)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["file"] for line in lines] == [
        str(FIXTURES / oom_name),
        str(healthy),
        str(missing),
    ]
    assert lines[0]["kind"] == "gpu_oom" and lines[0]["line"] == expected[oom_name]["line"]
    assert lines[0]["evidence"]
    assert lines[1] == {"file": str(healthy), "kind": None, "line": None, "evidence": None}
    assert lines[2]["kind"] is None and "error" in lines[2]
