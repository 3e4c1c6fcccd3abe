from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from app.orchestrator.manifests import ConfigLoad, LoadedManifest, ManifestIssue, load_config
from tests.unit.modelstore_factory import ModelStoreFactory

SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "config"
HF_ID = "mistralai/Mistral-7B-Instruct-v0.3"
MANIFEST = """\
apiVersion: gpu-orchestrator/v1
kind: ModelManifest
id: mistral-7b
base_model: mistral
dtype: bfloat16
gpu_memory_util: 0.75
max_model_len: 4096
memory_max: 48G
cpu_quota: 80%
"""


def _adapter(agent: str, name: str, path: str | None = None) -> dict[str, Any]:
    return {
        "base_ref": "mistral",
        "adapter_name": name,
        "adapter_model_store_path": path or f"{agent}/adapters/{name}",
        "variant_preference": "bnb-int8",
    }


def _map(agents: dict[str, Any], vllm_agents: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "base_models": {"mistral": {"hf_id": HF_ID, "model_store_agent": "base_models"}},
        "agents": agents,
        "vllm_agents": vllm_agents or {},
    }


def _config(tmp_path: Path, agent_map: dict[str, Any], manifest: str = MANIFEST) -> Path:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "AGENT_MODEL_MAP.json").write_text(json.dumps(agent_map), encoding="utf-8")
    (config_dir / "mistral.yaml").write_text(manifest, encoding="utf-8")
    return config_dir


def _only(loaded: ConfigLoad) -> LoadedManifest:
    assert len(loaded.manifests) == 1
    return loaded.manifests[0]


@pytest.fixture
def store(tmp_path: Path) -> ModelStoreFactory:
    factory = ModelStoreFactory(tmp_path / "store")
    factory.add_hf_snapshot("base_models", "v1", HF_ID, current=True)
    return factory


def test_loader_adapters_from_map_land_in_spec_in_stable_order(
    tmp_path: Path, store: ModelStoreFactory
) -> None:
    synth = store.add_adapter("synthesizer/adapters/synth_v1")
    critic = store.add_adapter("critic/adapters/critic_v1")
    scout = store.add_adapter("scout/adapters/scout_vllm_v1", rank=16)
    agent_map = _map(
        {
            "synthesizer": [_adapter("synthesizer", "synth_v1")],
            "critic": [_adapter("critic", "critic_v1")],
        },
        {"scout": [_adapter("scout", "scout_vllm_v1")]},
    )

    loaded = _only(load_config(_config(tmp_path, agent_map), store.root))

    assert loaded.issues == ()
    assert loaded.spec is not None
    expected = [str(critic.resolve()), str(synth.resolve()), str(scout.resolve())]
    assert loaded.spec.adapter_paths == expected
    assert all(Path(path).is_absolute() for path in loaded.spec.adapter_paths)
    assert loaded.spec.adapter_names == dict(
        zip(expected, ["critic_v1", "synth_v1", "scout_vllm_v1"], strict=True)
    )
    assert [(r.agent, r.found) for r in loaded.adapters] == [
        ("critic", True),
        ("synthesizer", True),
        ("scout", True),
    ]
    assert loaded.spec.id == "mistral-7b"
    assert loaded.spec.memory_max == "48G"


def test_loader_current_flip_leaves_loaded_spec_on_old_version(
    tmp_path: Path, store: ModelStoreFactory
) -> None:
    old_snapshot = store.version_dir("base_models", "v1").resolve()
    new_snapshot = store.add_hf_snapshot("base_models", "v2", HF_ID)
    config_dir = _config(tmp_path, _map({}))
    before = _only(load_config(config_dir, store.root)).spec
    assert before is not None

    store.set_current("base_models", "v2")

    assert Path(before.model).is_relative_to(old_snapshot)
    assert Path(before.model).is_dir()
    after = _only(load_config(config_dir, store.root)).spec
    assert after is not None
    assert after.model == str(new_snapshot.resolve())


def test_loader_shipped_config_loads_with_only_the_qwen2_issue(tmp_path: Path) -> None:
    store = ModelStoreFactory(tmp_path / "store")
    store.populate_from_agent_map(SHIPPED_CONFIG / "AGENT_MODEL_MAP.json")

    loaded = load_config(SHIPPED_CONFIG, store.root)

    assert [(issue.key, issue.reason) for issue in loaded.all_issues] == [
        ("vllm_agents.synthesizer[0].base_ref", "unknown base model 'qwen2-32b-awq'")
    ]
    manifest = _only(loaded)
    assert manifest.file == str(SHIPPED_CONFIG / "vllm_mistral_7b.yaml")
    assert manifest.model_source == "model_store"
    spec = manifest.spec
    assert spec is not None
    assert spec.id == "mistral-7b"
    expected_root = (store.root / "base_models" / "versions" / "v20251123-mistral-v0.3").resolve()
    assert Path(spec.model).is_relative_to(expected_root)
    assert (spec.dtype, spec.gpu_memory_util, spec.max_model_len) == ("bfloat16", 0.75, 4096)
    assert (spec.memory_max, spec.cpu_quota) == ("48G", "80%")
    assert spec.unit_name == "vllm-mistral-7b.service"
    assert len(spec.adapter_paths) == 8
    assert spec.adapter_names[spec.adapter_paths[0]] == "mistral_analyst_v1"


def test_loader_shipped_config_without_store_serves_hub_id(tmp_path: Path) -> None:
    manifest = _only(load_config(SHIPPED_CONFIG, None))

    assert manifest.spec is not None
    assert manifest.spec.model == HF_ID
    assert manifest.spec.adapter_paths == []
    assert manifest.model_source == "hf_id"
    assert [issue.key for issue in manifest.issues] == ["adapters"]
    assert all(not r.found and r.error for r in manifest.adapters)


def test_loader_falls_back_to_hub_id_naming_paths_tried(tmp_path: Path) -> None:
    factory = ModelStoreFactory(tmp_path / "store")
    factory.add_version("base_models", "v1", current=True)

    manifest = _only(load_config(_config(tmp_path, _map({})), factory.root))

    assert manifest.spec is not None
    assert manifest.spec.model == HF_ID
    assert manifest.model_source == "hf_id"
    version_dir = factory.version_dir("base_models", "v1").resolve()
    assert str(version_dir / "models--mistralai--Mistral-7B-Instruct-v0.3" / "snapshots") in (
        manifest.model_source_note
    )
    assert str(version_dir / "config.json") in manifest.model_source_note


def test_loader_flat_model_version_is_the_model_dir(tmp_path: Path) -> None:
    factory = ModelStoreFactory(tmp_path / "store")
    flat = factory.add_flat_model("base_models", "v1", current=True)

    manifest = _only(load_config(_config(tmp_path, _map({})), factory.root))

    assert manifest.spec is not None
    assert manifest.spec.model == str(flat.resolve())


def test_loader_malformed_yaml_is_an_issue(tmp_path: Path, store: ModelStoreFactory) -> None:
    config_dir = _config(tmp_path, _map({}), MANIFEST + "env: {unclosed: [\n")

    manifest = _only(load_config(config_dir, store.root))

    assert manifest.spec is None
    assert manifest.model_source == "unresolved"
    assert len(manifest.issues) == 1
    assert manifest.issues[0].file == str(config_dir / "mistral.yaml")
    assert manifest.issues[0].reason.startswith("malformed YAML at line")


def test_loader_malformed_json_map_is_an_issue(tmp_path: Path, store: ModelStoreFactory) -> None:
    config_dir = _config(tmp_path, _map({}))
    (config_dir / "AGENT_MODEL_MAP.json").write_text("{ nope", encoding="utf-8")

    loaded = load_config(config_dir, store.root)

    assert loaded.issues[0].file == str(config_dir / "AGENT_MODEL_MAP.json")
    assert "malformed JSON at line 1 column 3" in loaded.issues[0].reason
    assert _only(loaded).spec is None
    assert [issue.key for issue in _only(loaded).issues] == ["base_model"]


def test_loader_unknown_base_model_names_the_key(tmp_path: Path, store: ModelStoreFactory) -> None:
    manifest_text = MANIFEST.replace("base_model: mistral", "base_model: qwen2-32b-awq")

    manifest = _only(load_config(_config(tmp_path, _map({}), manifest_text), store.root))

    assert manifest.spec is None
    assert manifest.issues[0].key == "base_model"
    assert "unknown base model 'qwen2-32b-awq'" in manifest.issues[0].reason


@pytest.mark.parametrize(
    ("relative_path", "expected"),
    [
        ("../outside/adapter", "escapes the ModelStore root"),
        ("critic/adapters/evil", "escapes the ModelStore root"),
        ("critic/adapters/missing", "does not exist"),
        ("critic/adapters/bare", "has no adapter_config.json"),
    ],
)
def test_loader_bad_adapter_is_reported_and_spec_keeps_the_rest(
    tmp_path: Path, store: ModelStoreFactory, relative_path: str, expected: str
) -> None:
    outside = tmp_path / "store" / ".." / "outside" / "adapter"
    outside.mkdir(parents=True)
    (outside / "adapter_config.json").write_text("{}", encoding="utf-8")
    store.add_symlink("critic/adapters/evil", outside.resolve())
    store.add_adapter("critic/adapters/bare", with_config=False)
    good = store.add_adapter("analyst/adapters/analyst_v1")
    agent_map = _map(
        {
            "analyst": [_adapter("analyst", "analyst_v1")],
            "critic": [_adapter("critic", "critic_v1", relative_path)],
        }
    )
    config_dir = _config(tmp_path, agent_map)

    manifest = _only(load_config(config_dir, store.root))

    assert manifest.spec is not None
    assert manifest.spec.adapter_paths == [str(good.resolve())]
    [issue] = manifest.issues
    assert issue.file == str(config_dir / "AGENT_MODEL_MAP.json")
    assert issue.key == "agents.critic[0].adapter_model_store_path"
    assert expected in issue.reason
    critic = next(r for r in manifest.adapters if r.agent == "critic")
    assert (critic.found, critic.path) == (False, None)
    assert critic.error is not None and expected in critic.error


def test_loader_strict_adapters_refuses_the_manifest(
    tmp_path: Path, store: ModelStoreFactory
) -> None:
    store.add_adapter("analyst/adapters/analyst_v1")
    agent_map = _map(
        {"analyst": [_adapter("analyst", "analyst_v1")], "critic": [_adapter("critic", "gone")]}
    )

    manifest = _only(load_config(_config(tmp_path, agent_map), store.root, strict_adapters=True))

    assert manifest.spec is None
    assert [issue.key for issue in manifest.issues] == [
        "agents.critic[0].adapter_model_store_path",
        "adapters",
    ]
    assert "critic:gone" in manifest.issues[1].reason


def test_loader_unknown_and_derived_keys_are_issues(
    tmp_path: Path, store: ModelStoreFactory
) -> None:
    text = MANIFEST + "gpu_memory_utilisation: 0.5\nadapter_paths: [/tmp/x]\n"
    config_dir = _config(tmp_path, _map({}), text)

    manifest = _only(load_config(config_dir, store.root))

    assert manifest.spec is None
    file = str(config_dir / "mistral.yaml")
    assert ManifestIssue(file, "gpu_memory_utilisation", "unknown key") in manifest.issues
    assert any(i.key == "adapter_paths" and "must not be set" in i.reason for i in manifest.issues)


def test_loader_invalid_spec_values_name_their_keys(
    tmp_path: Path, store: ModelStoreFactory
) -> None:
    text = MANIFEST.replace("0.75", "1.5") + "restart_policy:\n  max_restarts: -1\n"
    text = text.replace("kind: ModelManifest", "kind: Model")

    manifest = _only(load_config(_config(tmp_path, _map({}), text), store.root))

    assert manifest.spec is None
    keys = {issue.key: issue.reason for issue in manifest.issues}
    assert set(keys) == {"kind", "gpu_memory_util", "restart_policy.max_restarts"}
    assert "less than or equal to 1" in keys["gpu_memory_util"]
    assert "'ModelManifest'" in keys["kind"]


def test_loader_duplicate_yaml_key_is_an_issue(tmp_path: Path, store: ModelStoreFactory) -> None:
    manifest = _only(
        load_config(_config(tmp_path, _map({}), MANIFEST + "dtype: float16\n"), store.root)
    )

    assert manifest.spec is None
    assert "duplicate key 'dtype'" in manifest.issues[0].reason


def test_loader_duplicate_ids_refuse_the_second_file(
    tmp_path: Path, store: ModelStoreFactory
) -> None:
    config_dir = _config(tmp_path, _map({}))
    shutil.copy(config_dir / "mistral.yaml", config_dir / "mistral_copy.yml")

    first, second = load_config(config_dir, store.root).manifests

    assert first.spec is not None
    assert second.spec is None
    assert second.issues[-1].key == "id"
    assert str(config_dir / "mistral.yaml") in second.issues[-1].reason


def test_loader_agent_selection_limits_adapters(tmp_path: Path, store: ModelStoreFactory) -> None:
    analyst = store.add_adapter("analyst/adapters/analyst_v1")
    store.add_adapter("critic/adapters/critic_v1")
    agent_map = _map(
        {
            "analyst": [_adapter("analyst", "analyst_v1")],
            "critic": [_adapter("critic", "critic_v1")],
        }
    )
    text = MANIFEST + "adapters:\n  agents: [analyst, planner]\n"

    manifest = _only(load_config(_config(tmp_path, agent_map, text), store.root))

    assert manifest.spec is not None
    assert manifest.spec.adapter_paths == [str(analyst.resolve())]
    [issue] = manifest.issues
    assert issue.key == "adapters.agents"
    assert "'planner' has no adapter" in issue.reason


def test_loader_adapter_name_clash_attaches_the_first(
    tmp_path: Path, store: ModelStoreFactory
) -> None:
    first = store.add_adapter("analyst/adapters/shared_v1")
    store.add_adapter("critic/adapters/shared_v1")
    agent_map = _map(
        {"analyst": [_adapter("analyst", "shared_v1")], "critic": [_adapter("critic", "shared_v1")]}
    )

    manifest = _only(load_config(_config(tmp_path, agent_map), store.root))

    assert manifest.spec is not None
    assert manifest.spec.adapter_paths == [str(first.resolve())]
    [issue] = manifest.issues
    assert issue.key == "agents.critic[0].adapter_name"


def test_loader_missing_config_dir_and_map(tmp_path: Path) -> None:
    missing = load_config(tmp_path / "nowhere", None)
    assert [issue.reason for issue in missing.all_issues] == ["config directory does not exist"]

    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "m.yaml").write_text(MANIFEST, encoding="utf-8")
    manifest = _only(load_config(config_dir, None))
    assert manifest.spec is None
    assert manifest.issues[0].key == "base_model"
    assert "AGENT_MODEL_MAP.json does not exist" in manifest.issues[0].reason
