from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.orchestrator.manifests.agent_map import ManifestIssue, load_agent_model_map

SHIPPED_MAP = Path(__file__).resolve().parents[2] / "config" / "AGENT_MODEL_MAP.json"
MISTRAL = {
    "hf_id": "mistralai/Mistral-7B-Instruct-v0.3",
    "model_store_agent": "base_models",
    "model_store_version": "v1",
}


def _adapter(base_ref: str, name: str, agent: str) -> dict[str, Any]:
    return {
        "base_ref": base_ref,
        "adapter_name": name,
        "adapter_model_store_path": f"{agent}/adapters/{name}",
        "variant_preference": "bnb-int8",
    }


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "AGENT_MODEL_MAP.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_agent_map_shipped_file_loads_with_only_the_qwen2_issue() -> None:
    loaded = load_agent_model_map(SHIPPED_MAP)

    assert loaded.issues == [
        ManifestIssue(
            str(SHIPPED_MAP),
            "vllm_agents.synthesizer[0].base_ref",
            "unknown base model 'qwen2-32b-awq'",
        )
    ]
    mistral = loaded.base_models["mistral-7b-v0.3"]
    assert mistral.hf_id == "mistralai/Mistral-7B-Instruct-v0.3"
    assert mistral.model_store_version == "v20251123-mistral-v0.3"
    assert mistral.peft_support is True
    on_mistral = loaded.adapters_for("mistral-7b-v0.3")
    assert len({adapter.agent for adapter in on_mistral}) == 8
    assert all(adapter.section == "agents" for adapter in on_mistral)


def test_agent_map_malformed_json_gives_one_issue_with_position(tmp_path: Path) -> None:
    path = tmp_path / "AGENT_MODEL_MAP.json"
    path.write_text('{\n  "base_models": {\n    "x": {,\n  }\n}\n', encoding="utf-8")

    loaded = load_agent_model_map(path)

    assert loaded.base_models == {}
    assert loaded.adapters == []
    assert len(loaded.issues) == 1
    assert loaded.issues[0].file == str(path)
    assert "malformed JSON at line 3 column 11" in loaded.issues[0].reason


def test_agent_map_unknown_base_ref_is_reported_and_the_rest_kept(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "base_models": {"mistral": MISTRAL},
            "agents": {"critic": [_adapter("mistral", "critic_v1", "critic")]},
            "vllm_agents": {"scout": [_adapter("qwen2-32b-awq", "scout_v1", "scout")]},
        },
    )

    loaded = load_agent_model_map(path)

    assert [str(issue) for issue in loaded.issues] == [
        f"{path}: vllm_agents.scout[0].base_ref: unknown base model 'qwen2-32b-awq'"
    ]
    assert [adapter.adapter_name for adapter in loaded.adapters] == ["critic_v1"]


def test_agent_map_bad_entries_name_their_keys(tmp_path: Path) -> None:
    missing_name = _adapter("mistral", "x", "critic")
    del missing_name["adapter_name"]
    typo = {**_adapter("mistral", "ok_v1", "analyst"), "adapter_pth": "oops"}
    path = _write(
        tmp_path,
        {
            "base_models": {"mistral": MISTRAL, "broken": {"model_store_agent": "base_models"}},
            "agents": {
                "critic": [missing_name, _adapter("mistral", "critic_v2", "critic")],
                "analyst": [typo],
                "planner": [_adapter("broken", "planner_v1", "planner")],
            },
            "extra_section": {},
        },
    )

    loaded = load_agent_model_map(path)

    reasons = {issue.key: issue.reason for issue in loaded.issues}
    assert reasons == {
        "extra_section": "unknown key",
        "base_models.broken.hf_id": "Field required",
        "agents.critic[0].adapter_name": "Field required",
        "agents.analyst[0].adapter_pth": "unknown key",
        "agents.planner[0].base_ref": ("base model 'broken' is invalid (see base_models.broken)"),
    }
    assert list(loaded.base_models) == ["mistral"]
    assert [adapter.key for adapter in loaded.adapters] == ["agents.critic[1]"]


def test_agent_map_adapters_for_orders_by_section_agent_position(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "base_models": {"mistral": MISTRAL},
            "vllm_agents": {"analyst": [_adapter("mistral", "v_analyst", "analyst")]},
            "agents": {
                "synthesizer": [
                    _adapter("mistral", "synth_a", "synthesizer"),
                    _adapter("mistral", "synth_b", "synthesizer"),
                ],
                "critic": [_adapter("mistral", "critic_v1", "critic")],
            },
        },
    )

    ordered = load_agent_model_map(path).adapters_for("mistral")

    assert [adapter.adapter_name for adapter in ordered] == [
        "critic_v1",
        "synth_a",
        "synth_b",
        "v_analyst",
    ]


def test_agent_map_top_level_not_an_object(tmp_path: Path) -> None:
    loaded = load_agent_model_map(_write(tmp_path, ["not", "a", "map"]))

    assert [issue.reason for issue in loaded.issues] == ["top level must be a JSON object"]
