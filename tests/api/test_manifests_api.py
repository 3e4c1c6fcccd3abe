"""/manifests and /agents: config files and a ModelStore in tmp_path, synced through the app."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.settings import Settings
from tests.conftest import MakeSettings, kill_engines_of, running_app
from tests.lifecycle.helpers import wait_state
from tests.unit.modelstore_factory import ModelStoreFactory

SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "config"
HF_ID = "mistralai/Mistral-7B-Instruct-v0.3"
MODEL_ID = "mistral-7b"
MANIFEST = """\
apiVersion: gpu-orchestrator/v1
kind: ModelManifest
id: mistral-7b
base_model: mistral
adapters:
  agents: all
dtype: bfloat16
gpu_memory_util: 0.75
max_model_len: 4096
memory_max: 48G
cpu_quota: 80%
"""
# (section, agent, adapter_name) in the order the map lists them; served in sorted order.
ADAPTERS = [
    ("agents", "synthesizer", "synth_v1"),
    ("agents", "critic", "critic_v1"),
    ("vllm_agents", "scout", "scout_vllm_v1"),
]
SERVED_ORDER = ["critic_v1", "synth_v1", "scout_vllm_v1"]
ISO_MS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def _agent_map() -> dict[str, Any]:
    data: dict[str, Any] = {
        "base_models": {"mistral": {"hf_id": HF_ID, "model_store_agent": "base_models"}},
        "agents": {},
        "vllm_agents": {},
    }
    for section, agent, name in ADAPTERS:
        entry = {
            "base_ref": "mistral",
            "adapter_name": name,
            "adapter_model_store_path": f"{agent}/adapters/{name}",
        }
        data[section][agent] = [entry]
    return data


class Setup:
    """A config directory and a ModelStore holding the base model and the named adapters."""

    def __init__(self, tmp_path: Path, *, missing: tuple[str, ...] = ()) -> None:
        self.config_dir = tmp_path / "config"
        self.config_dir.mkdir()
        self.map_file = self.config_dir / "AGENT_MODEL_MAP.json"
        self.map_file.write_text(json.dumps(_agent_map()), encoding="utf-8")
        self.manifest = self.config_dir / "mistral.yaml"
        self.manifest.write_text(MANIFEST, encoding="utf-8")
        self.store = ModelStoreFactory(tmp_path / "store")
        self.snapshot = self.store.add_hf_snapshot("base_models", "v1", HF_ID, current=True)
        self.adapter_dirs: dict[str, str] = {}
        for _section, agent, name in ADAPTERS:
            if agent not in missing:
                directory = self.store.add_adapter(f"{agent}/adapters/{name}")
                self.adapter_dirs[name] = str(directory.resolve())

    def settings(self, make_settings: MakeSettings, **overrides: Any) -> Settings:
        return make_settings(
            config_dir=self.config_dir, model_store_root=self.store.root, **overrides
        )

    def edit_manifest(self, old: str, new: str) -> None:
        text = self.manifest.read_text(encoding="utf-8")
        assert old in text
        self.manifest.write_text(text.replace(old, new), encoding="utf-8")


async def _json(client: httpx.AsyncClient, method: str, url: str) -> Any:
    response = await client.request(method, url)
    assert response.status_code == 200, response.text
    return response.json()


async def test_manifests_startup_registers_model_with_store_paths(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    setup = Setup(tmp_path)
    async with running_app(setup.settings(make_settings)) as (_app, client):
        model = await _json(client, "GET", f"/models/{MODEL_ID}")
        report = await _json(client, "GET", "/manifests")

    assert model["model"] == str(setup.snapshot.resolve())
    expected_paths = [setup.adapter_dirs[name] for name in SERVED_ORDER]
    assert model["adapter_paths"] == expected_paths
    assert all(Path(path).is_absolute() for path in model["adapter_paths"])
    assert model["adapter_names"] == dict(zip(expected_paths, SERVED_ORDER, strict=True))
    assert (model["gpu_memory_util"], model["memory_max"]) == (0.75, "48G")
    assert report["issues"] == []
    assert re.fullmatch(ISO_MS, report["loaded_at"])
    [manifest] = report["manifests"]
    assert manifest["id"] == MODEL_ID and manifest["action"] == "created"
    assert manifest["file"] == str(setup.manifest)
    assert manifest["model_source"] == "model_store"
    assert [(a["agent"], a["found"]) for a in manifest["adapters"]] == [
        ("critic", True),
        ("synthesizer", True),
        ("scout", True),
    ]


async def test_manifests_restart_of_service_reports_unchanged(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    setup = Setup(tmp_path)
    settings = setup.settings(make_settings)
    async with running_app(settings) as (_app, client):
        first = await _json(client, "GET", "/manifests")
    async with running_app(settings) as (_app, client):
        second = await _json(client, "GET", "/manifests")
    assert first["manifests"][0]["action"] == "created"
    assert second["manifests"][0]["action"] == "unchanged"


async def test_agents_lists_every_adapter_with_name_and_path_while_stopped(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    setup = Setup(tmp_path)
    async with running_app(setup.settings(make_settings)) as (_app, client):
        agents = await _json(client, "GET", "/agents")

    assert [(a["section"], a["agent"]) for a in agents] == [
        ("agents", "critic"),
        ("agents", "synthesizer"),
        ("vllm_agents", "scout"),
    ]
    for agent, name in zip(agents, SERVED_ORDER, strict=True):
        assert agent["adapter_name"] == name
        assert agent["served_model_name"] == name
        assert agent["adapter_path"] == setup.adapter_dirs[name]
        assert agent["found"] is True and agent["error"] is None
        assert agent["base_model"] == "mistral" and agent["model_id"] == MODEL_ID
        assert agent["state"] == "stopped" and agent["base_url"] is None
        # The gateway serves every agent by its adapter's name, stopped or not.
        assert agent["gateway_url"] == "http://test/v1"


async def test_manifests_missing_adapter_reported_and_model_keeps_the_rest(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    setup = Setup(tmp_path, missing=("critic",))
    async with running_app(setup.settings(make_settings)) as (_app, client):
        model = await _json(client, "GET", f"/models/{MODEL_ID}")
        agents = {a["agent"]: a for a in await _json(client, "GET", "/agents")}
        report = await _json(client, "GET", "/manifests")
        events = await _json(client, "GET", f"/models/{MODEL_ID}/events")

    assert model["adapter_paths"] == [
        setup.adapter_dirs["synth_v1"],
        setup.adapter_dirs["scout_vllm_v1"],
    ]
    critic = agents["critic"]
    assert critic["found"] is False and critic["served_model_name"] is None
    assert critic["adapter_path"] is None
    assert "critic/adapters/critic_v1" in critic["error"] and "does not exist" in critic["error"]
    assert agents["synthesizer"]["found"] is True
    [issue] = report["issues"]
    assert issue["file"] == str(setup.map_file)
    assert issue["key"] == "agents.critic[0].adapter_model_store_path"
    assert report["manifests"][0]["action"] == "created"
    kinds = [event["kind"] for event in events]
    assert kinds.count("manifest_issues") == 1 and kinds.count("adapter_missing") == 1
    missing = next(event for event in events if event["kind"] == "adapter_missing")
    assert missing["data"]["agent"] == "critic" and missing["data"]["found"] is False


async def test_manifests_malformed_yaml_is_an_issue_and_never_a_500(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    setup = Setup(tmp_path)
    broken = setup.config_dir / "broken.yaml"
    broken.write_text("id: [unclosed\n", encoding="utf-8")
    async with running_app(setup.settings(make_settings)) as (_app, client):
        at_start = await _json(client, "GET", "/manifests")
        broken.write_text("apiVersion: gpu-orchestrator/v1\n  kind: : x\n", encoding="utf-8")
        reloaded = await client.post("/manifests/reload")
        model = await _json(client, "GET", f"/models/{MODEL_ID}")

    assert reloaded.status_code == 200, reloaded.text
    for report in (at_start, reloaded.json()):
        by_file = {m["file"]: m for m in report["manifests"]}
        assert by_file[str(broken)]["action"] == "error" and by_file[str(broken)]["id"] is None
        [issue] = report["issues"]
        assert issue["file"] == str(broken) and issue["reason"].startswith("malformed YAML at line")
    assert {m["action"] for m in reloaded.json()["manifests"]} == {"error", "unchanged"}
    assert model["id"] == MODEL_ID


async def test_manifests_missing_config_dir_is_an_issue_and_startup_works(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    settings = make_settings(config_dir=tmp_path / "absent")
    async with running_app(settings) as (_app, client):
        report = await _json(client, "POST", "/manifests/reload")
        agents = await _json(client, "GET", "/agents")
    assert report["manifests"] == [] and agents == []
    assert report["issues"] == [
        {"file": str(tmp_path / "absent"), "key": "", "reason": "config directory does not exist"}
    ]


async def test_manifests_reload_after_edit_updates_the_spec(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    setup = Setup(tmp_path)
    async with running_app(setup.settings(make_settings)) as (_app, client):
        setup.edit_manifest("gpu_memory_util: 0.75", "gpu_memory_util: 0.5")
        updated = await _json(client, "POST", "/manifests/reload")
        model = await _json(client, "GET", f"/models/{MODEL_ID}")
        again = await _json(client, "POST", "/manifests/reload")
        last = await _json(client, "GET", "/manifests")

    assert updated["manifests"][0]["action"] == "updated"
    assert model["gpu_memory_util"] == 0.5 and model["status"]["restart_needed"] is False
    assert again["manifests"][0]["action"] == "unchanged"
    assert last == again


async def test_manifests_reload_while_running_flags_restart_needed_and_keeps_engine(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    setup = Setup(tmp_path)
    settings = setup.settings(make_settings)
    try:
        async with running_app(settings) as (_app, client):
            started = await client.post(f"/models/{MODEL_ID}/start")
            assert started.status_code == 202, started.text
            running = await wait_state(client, MODEL_ID, "running")
            agents = await _json(client, "GET", "/agents")
            served = httpx.get(f"{running['base_url']}/v1/models", timeout=5).json()

            setup.edit_manifest("gpu_memory_util: 0.75", "gpu_memory_util: 0.6")
            report = await _json(client, "POST", "/manifests/reload")
            after = await _json(client, "GET", f"/models/{MODEL_ID}")
            flagged = await _json(client, "GET", "/agents")
            await client.post(f"/models/{MODEL_ID}/stop?wait=true")
    finally:
        kill_engines_of(settings.state_dir)

    assert all(a["base_url"] == running["base_url"] for a in agents)
    assert all(a["state"] == "running" and a["restart_needed"] is False for a in agents)
    served_ids = {card["id"] for card in served["data"]}
    assert {a["served_model_name"] for a in agents} <= served_ids
    assert report["manifests"][0]["action"] == "updated (restart needed)"
    assert after["gpu_memory_util"] == 0.6
    assert after["status"]["restart_needed"] is True
    assert after["status"]["state"] == "running" and after["status"]["pid"] == running["pid"]
    assert all(a["restart_needed"] is True for a in flagged)


async def test_manifests_shipped_config_loads_with_only_the_qwen2_issue(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    store = ModelStoreFactory(tmp_path / "store")
    store.populate_from_agent_map(SHIPPED_CONFIG / "AGENT_MODEL_MAP.json")
    settings = make_settings(config_dir=SHIPPED_CONFIG, model_store_root=store.root)
    async with running_app(settings) as (_app, client):
        report = await _json(client, "GET", "/manifests")
        agents = await _json(client, "GET", "/agents")

    assert [(i["key"], i["reason"]) for i in report["issues"]] == [
        ("vllm_agents.synthesizer[0].base_ref", "unknown base model 'qwen2-32b-awq'")
    ]
    [manifest] = report["manifests"]
    assert (manifest["id"], manifest["action"]) == ("mistral-7b", "created")
    assert manifest["model_source"] == "model_store"
    assert len(agents) == 8 and all(a["found"] and a["model_id"] == "mistral-7b" for a in agents)
    assert agents[0]["served_model_name"] == "mistral_analyst_v1"


async def test_manifests_shipped_config_without_store_notes_hub_id_fallback(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(config_dir=SHIPPED_CONFIG)
    async with running_app(settings) as (_app, client):
        report = await _json(client, "GET", "/manifests")
        model = await _json(client, "GET", "/models/mistral-7b")
        agents = await _json(client, "GET", "/agents")

    [manifest] = report["manifests"]
    assert manifest["model_source"] == "hf_id"
    assert "MODEL_STORE_ROOT" in manifest["model_source_note"]
    assert model["model"] == HF_ID and model["adapter_paths"] == []
    assert [i["key"] for i in report["issues"]] == [
        "vllm_agents.synthesizer[0].base_ref",
        "adapters",
    ]
    assert all(not a["found"] and a["served_model_name"] is None and a["error"] for a in agents)


@pytest.mark.parametrize(
    ("method", "url"), [("GET", "/manifests"), ("POST", "/manifests/reload"), ("GET", "/agents")]
)
async def test_manifests_routes_require_the_token(
    make_settings: MakeSettings, method: str, url: str
) -> None:
    async with running_app(make_settings(api_token="secret")) as (_app, client):
        refused = await client.request(method, url)
        allowed = await client.request(method, url, headers={"Authorization": "Bearer secret"})
    assert refused.status_code == 401
    assert allowed.status_code == 200


async def test_manifests_reload_gaining_and_losing_an_agent_changes_adapters_live(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    """AGENT_MODEL_MAP.json gains an agent's adapter, then loses one: the running engine loads
    and unloads them (same pid) and nothing needs a restart."""
    setup = Setup(tmp_path)
    settings = setup.settings(make_settings)
    try:
        async with running_app(settings) as (app, client):
            await client.post(f"/models/{MODEL_ID}/start")
            running = await wait_state(client, MODEL_ID, "running")
            setup.store.add_adapter("planner/adapters/planner_v1")
            agent_map = json.loads(setup.map_file.read_text(encoding="utf-8"))
            agent_map["agents"]["planner"] = [
                {
                    "base_ref": "mistral",
                    "adapter_name": "planner_v1",
                    "adapter_model_store_path": "planner/adapters/planner_v1",
                }
            ]
            del agent_map["agents"]["critic"]
            setup.map_file.write_text(json.dumps(agent_map), encoding="utf-8")
            report = await _json(client, "POST", "/manifests/reload")
            after = await _json(client, "GET", f"/models/{MODEL_ID}")
            served = httpx.get(f"{running['base_url']}/v1/models", timeout=5).json()
            await app.state.services.registry.flush()
            reloads = [
                event
                for event in app.state.services.registry.events_after(0, limit=1000)
                if event.kind == "manifests_reloaded"
            ]
            reloads = [{"data": event.data} for event in reloads]
            await client.post(f"/models/{MODEL_ID}/stop?wait=true")
    finally:
        kill_engines_of(settings.state_dir)

    assert report["manifests"][0]["action"] == "updated"
    assert after["status"]["restart_needed"] is False
    assert reloads and reloads[-1]["data"]["actions"] == {"updated": 1}
    assert after["status"]["pid"] == running["pid"]
    assert {card["id"] for card in served["data"]} == {
        MODEL_ID,
        "synth_v1",
        "scout_vllm_v1",
        "planner_v1",
    }
